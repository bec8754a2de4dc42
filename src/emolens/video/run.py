"""Running the pipeline on a whole source: :func:`process_video` (``emolens video``) writes an annotated video, a CSV
timeline and a plot; :func:`run_webcam` (``emolens webcam``) shows a live window; :func:`bench_video` measures
speed. Outputs are written to a temporary file and renamed when done; a stream that stops early keeps what was
processed. Frames are never stored unless an output is asked for."""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..results import Result
from .drawing import draw_tracks, plot_timeline
from .io import CSV_COLUMNS, VideoError, _AtomicVideoWriter, _csv_rows, _fps_of, open_capture, synthetic_face_video
from .processor import VideoProcessor


@dataclass
class VideoResult:
    """What :func:`process_video` did."""

    frames: int  # frames processed
    expected_frames: int  # frame count the container announced (0 = unknown, e.g. a stream)
    fps: float  # the video's frame rate
    seconds: float  # processing wall time
    tracks: int  # distinct track ids
    rows: int  # (frame, track) rows
    complete: bool  # False when the stream ended before the announced frame count
    smoothing: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)  # ms per detection round / face / frame, by stage

    @property
    def processing_fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def realtime_ratio(self) -> float:
        """Processing fps / video fps: above 1 is faster than real time."""
        return self.processing_fps / self.fps if self.fps else float("nan")


#: timeline plot formats (matplotlib writes each without extra packages)
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp")


def check_plot_format(plot_path: str | Path | None) -> None:
    """OutputError, before any frame is processed, for a plot name matplotlib cannot write (``--plot p.txt``)."""
    from ..outputs import OutputError

    if plot_path and Path(plot_path).suffix.lower() not in PLOT_SUFFIXES:
        raise OutputError(f"--plot {plot_path}: a plot is written as {', '.join(PLOT_SUFFIXES)}; "
                          "give a name ending in one of them")


def process_video(source: str, output: str | Path | None = None, csv_path: str | Path | None = None,
                  plot_path: str | Path | None = None, *, processor: VideoProcessor | None = None,
                  max_frames: int = 0, progress: bool = True, draw_bars: bool = True,
                  log: Callable[[str], None] | None = None, codec: str | None = "auto",
                  **processor_kwargs) -> VideoResult:
    """Track and label every face of ``source`` (a file or anything OpenCV opens); write the annotated
    video to ``output``, one CSV row per (frame, track) to ``csv_path``, a timeline plot to ``plot_path``.
    ``codec``: see :func:`open_video_writer` (auto: one a browser plays, H.264 or VP9 in .mp4, VP8 in .webm).

    A stream that stops early ends the run cleanly and keeps what was written (``complete`` False); SIGTERM
    stops it like Ctrl-C. An output that is the input (or another output) is refused before any work
    (``emolens.outputs.OutputError``)."""
    from ..outputs import check_outputs, sigterm_as_interrupt

    log = log or (lambda m: print(m, file=sys.stderr))
    check_outputs([source], files=[output, csv_path, plot_path])  # before any work: never replace the input
    check_plot_format(plot_path)
    with sigterm_as_interrupt():  # kill (SIGTERM) cleans up like Ctrl-C: no hidden partial files left
        return _process_video(source, output, csv_path, plot_path, processor=processor, max_frames=max_frames,
                              progress=progress, draw_bars=draw_bars, log=log, codec=codec, **processor_kwargs)


def _process_video(source: str, output: str | Path | None, csv_path: str | Path | None,
                   plot_path: str | Path | None, *, processor: VideoProcessor | None, max_frames: int,
                   progress: bool, draw_bars: bool, log: Callable[[str], None], codec: str | None = "auto",
                   **processor_kwargs) -> VideoResult:
    import cv2

    from ..outputs import remove_stale_temp_files, temp_name

    cap = open_capture(source)
    writer = None
    csv_tmp = None
    rows: list[dict[str, Any]] = []
    index = 0
    t_start = time.perf_counter()
    t_write = 0.0
    bar = None
    try:
        fps, fps_known = _fps_of(cap)
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        expected = expected if expected > 0 else 0
        if max_frames:
            expected = min(expected, max_frames) if expected else 0
        ok, frame = cap.read()
        if not ok or frame is None:
            raise VideoError(f"{source}: no frames could be read (a zero-length, damaged or unsupported video)")
        proc = processor or VideoProcessor.create(warn=log, **processor_kwargs)
        t_start = time.perf_counter()  # processing speed: model loading is not part of it
        if not fps_known:
            log(f"note: {source} does not state a usable frame rate; assuming {fps:g} fps for times")
        h, w = frame.shape[:2]
        if output:
            writer = _AtomicVideoWriter(Path(output), fps, (w, h), codec)
        csv_file = None
        if csv_path:
            csv_path = Path(csv_path)
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(csv_path)
            csv_tmp = temp_name(csv_path, "tmp")
            csv_file = open(csv_tmp, "w", newline="")  # noqa: SIM115 - closed in finally
            csv_out = csv.writer(csv_file)
            csv_out.writerow(CSV_COLUMNS)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=expected or None, unit="frame", desc=Path(str(source)).name[:30], dynamic_ncols=True,
                       file=sys.stderr, leave=False)
        try:
            while ok and frame is not None:
                if frame.shape[:2] != (h, w):  # a stream that changes size mid-way: keep the output's size
                    frame = cv2.resize(frame, (w, h))
                faces = proc.process(frame)
                t = index / fps
                for r in _csv_rows(index, t, faces):
                    rows.append(dict(zip(CSV_COLUMNS, r, strict=True)))
                    if csv_file is not None:
                        csv_out.writerow(r)
                if writer is not None:
                    t_w = time.perf_counter()
                    writer.write(draw_tracks(frame, faces, draw_bars))
                    t_write += time.perf_counter() - t_w
                index += 1
                if bar is not None:
                    bar.update(1)
                    if index % 15 == 0:
                        bar.set_postfix_str(f"{index / fps / max(time.perf_counter() - t_start, 1e-9):.1f}x real time")
                if max_frames and index >= max_frames:
                    break
                ok, frame = cap.read()
        finally:
            if csv_file is not None:
                csv_file.close()
    except BaseException:
        if writer is not None:
            kept = writer.close(keep=index > 0)
            if kept:
                log(f"kept the {index} frames processed so far in {writer.path}")
            writer = None
        if csv_tmp is not None and index > 0:
            os.replace(csv_tmp, csv_path)
        elif csv_tmp is not None:
            csv_tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
        cap.release()
    seconds = time.perf_counter() - t_start
    outputs: dict[str, str] = {}
    if writer is not None:
        writer.close()
        outputs["video"] = str(writer.path)
    if csv_tmp is not None:
        os.replace(csv_tmp, csv_path)
        outputs["csv"] = str(csv_path)
    complete = not expected or index >= expected - 1  # containers often announce one frame too many
    if not complete:
        log(f"warning: {source} ended after {index} of {expected} frames (truncated file or dropped stream); "
            "kept what was read")
    tracks = len({r["track_id"] for r in rows})
    if plot_path:
        name = Path(str(source)).name
        plot_timeline(rows, plot_path, f"{name}: {tracks} track(s), {index} frames, smoothing "
                                       f"{proc.smoother.name}")
        outputs["plot"] = str(plot_path)
    if not rows:
        log(f"note: no faces found in {index} frames of {source}")
    tm = proc.timing
    timing = {"detect_ms_per_round": 1000 * tm["detect"] / max(tm["detect_rounds"], 1),
              "classify_ms_per_face": 1000 * tm["classify"] / max(tm["faces"], 1),
              "smooth_ms_per_face": 1000 * tm["smooth"] / max(tm["faces"], 1),
              "draw_write_ms_per_frame": 1000 * t_write / max(index, 1),
              "total_ms_per_frame": 1000 * seconds / max(index, 1)}
    return VideoResult(index, expected, fps, seconds, tracks, len(rows), complete, proc.smoother.name, outputs,
                       timing)


def gui_available() -> tuple[bool, str]:
    """(True, "") when OpenCV can open a window here, else (False, why)."""
    import cv2

    info = cv2.getBuildInformation()
    gui_line = next((ln for ln in info.splitlines() if ln.strip().startswith("GUI:")), "")
    if "NONE" in gui_line.upper():
        return False, ("this OpenCV build has no GUI support (opencv-python-headless). For a window, swap in "
                       "the GUI build: pip uninstall -y opencv-python-headless && pip install --force-reinstall "
                       "--no-deps \"opencv-python>=4.8,<5\"")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    try:
        cv2.namedWindow("emolens", cv2.WINDOW_NORMAL)
    except cv2.error as e:
        return False, f"OpenCV cannot open a window ({str(e).strip().splitlines()[-1][:120]})"
    return True, ""


def run_webcam(source: str | int = 0, record: str | Path | None = None, max_frames: int = 0,
               window: bool | None = None, log: Callable[[str], None] | None = None, codec: str | None = "auto",
               **processor_kwargs) -> int:
    """Live overlay from a camera (index), file or URL; ``q`` or Esc quits. Frames are kept only in memory,
    never stored, unless ``record`` names a file. Without a display it records only (with ``record``), or
    says how to get a live view. Returns the number of frames processed."""
    import cv2

    from ..outputs import check_outputs, sigterm_as_interrupt

    log = log or (lambda m: print(m, file=sys.stderr))
    check_outputs([str(source)], files=[record])  # --record must not replace the source video
    if window is None:
        window, why = gui_available()
        if not window and not record:
            raise VideoError(f"no live window possible: {why}. For a live view in the browser run `emolens serve` "
                             "and open http://127.0.0.1:8000; to save an annotated video use `emolens webcam "
                             "--record out.mp4` or `emolens video SOURCE -o out.mp4`")
        if not window:
            log(f"note: {why}; recording to {record} without a window (Ctrl-C to stop)")
    cap = open_capture(str(source))
    proc = VideoProcessor.create(warn=log, **processor_kwargs)
    writer = None
    n = 0
    t0 = time.perf_counter()
    fps_live = 0.0
    stop = sigterm_as_interrupt().__enter__()  # kill stops a recording like q or Ctrl-C: the file is finished
    try:
        fps, _ = _fps_of(cap)
        while not max_frames or n < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                if n == 0:
                    raise VideoError(f"{source}: no frames could be read")
                break
            faces = proc.process(frame)
            draw_tracks(frame, faces)
            n += 1
            fps_live = 0.9 * fps_live + 0.1 / max(time.perf_counter() - t0, 1e-6) if n > 1 else 0.0
            t0 = time.perf_counter()
            if record:
                if writer is None:
                    writer = _AtomicVideoWriter(Path(record), fps, (frame.shape[1], frame.shape[0]), codec)
                writer.write(frame)
            if window:
                cv2.putText(frame, f"{fps_live:.0f} fps  q: quit", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                            (255, 255, 255), 1, cv2.LINE_AA)
                cv2.imshow("emolens", frame)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    except KeyboardInterrupt:
        pass
    finally:
        stop.__exit__(None, None, None)
        cap.release()
        if writer is not None and writer.close():
            log(f"recorded {writer.frames} frames to {writer.path}")
        if window:
            cv2.destroyAllWindows()
    return n


@dataclass
class VideoBench(Result):
    """Speed of the video pipeline on one clip: frames/s processed against the clip's own rate
    (``realtime_ratio`` > 1 keeps up with it), and where the time goes (``timing``: total_ms_per_frame,
    detect_ms_per_round, classify_ms_per_face, smooth_ms_per_face, draw_write_ms_per_frame)."""

    source: str
    frames: int
    tracks: int
    video_fps: float
    processing_fps: float
    realtime_ratio: float
    smoothing: str
    write_output: bool
    cpus: int
    timing: dict[str, float]


def bench_video(source: str | None = None, frames: int = 300, repeats: int = 1, write_output: bool = True,
                progress: bool = False, **processor_kwargs) -> VideoBench:
    """Processing speed of the video pipeline (the best of ``repeats`` runs), see :class:`VideoBench`.

    Without ``source``, a 640x480 30 fps clip of the bundled photo (one face) is made first."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            source = str(synthetic_face_video(Path(tmp) / "bench.avi", frames=frames))
        best = None
        for _ in range(max(repeats, 1)):
            out = Path(tmp) / "out.mp4" if write_output else None
            res = process_video(source, out, max_frames=frames, progress=progress, log=lambda m: None,
                                **processor_kwargs)
            if best is None or res.seconds < best.seconds:
                best = res
    assert best is not None
    return VideoBench(str(source), best.frames, best.tracks, best.fps, round(best.processing_fps, 1),
                      round(best.realtime_ratio, 2), best.smoothing, write_output, os.cpu_count() or 0,
                      {k: round(v, 2) for k, v in best.timing.items()})


def format_bench_video(rows: list[VideoBench]) -> str:
    """Markdown table of :func:`bench_video` results."""
    src = rows[0]["source"] if rows else ""
    lines = [f"Video pipeline on {Path(str(src)).name if src else 'a synthetic clip'} ({rows[0]['frames']} frames at "
             f"{rows[0]['video_fps']:g} fps, {rows[0]['tracks']} track(s), smoothing {rows[0]['smoothing']}, "
             f"{rows[0]['cpus']} CPUs)" if rows else "", "",
             "| output video | processing fps | x real time | ms/frame | detect ms/round | classify ms/face "
             "| smooth ms/face | draw+encode ms/frame |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        t = r.timing
        lines.append(f"| {'written' if r.write_output else 'none'} | {r.processing_fps:.1f} | "
                     f"{r.realtime_ratio:.2f} | {t['total_ms_per_frame']:.1f} | {t['detect_ms_per_round']:.1f} | "
                     f"{t['classify_ms_per_face']:.2f} | {t['smooth_ms_per_face']:.2f} | "
                     f"{t['draw_write_ms_per_frame']:.1f} |")
    return "\n".join(lines)
