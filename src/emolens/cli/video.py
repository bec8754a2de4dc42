"""``emolens video`` (one file or many, locally or on Ray) and ``emolens webcam``."""

from __future__ import annotations

import argparse

from .common import (
    UsageError,
    _add_codec_option,
    _add_engine_options,
    _add_video_options,
    _check_engine_options,
    _connect_ray,
    _video_kwargs,
)


def _add_video(sub) -> None:
    p = sub.add_parser("video", help="track and label faces in a video file or stream",
                       description="Follow every face of a video (any file or URL OpenCV/FFmpeg opens) and label "
                                   "its emotion frame by frame. Writes an annotated video (-o), a CSV with one row "
                                   "per (frame, track) (--csv) and a timeline plot (--plot); with none of them, "
                                   "all three go to runs/video/<name>/ (annotated.webm: VP8, plays in browsers).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", nargs="+", metavar="INPUT",
                   help="video file(s) or URL (rtsp://, http://...); several: see --out-dir")
    p.add_argument("-o", "--output", default=None, help="annotated video (.webm, .mp4, .m4v, .mov, .mkv, .avi)")
    p.add_argument("--csv", default=None,
                   help="timeline CSV: frame, time_s, track_id, x, y, w, h, detected, emotion, confidence, p_<class>")
    p.add_argument("--plot", default=None, help="timeline plot (.png, .pdf, .svg)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = all)")
    p.add_argument("--no-bars", action="store_true", help="draw boxes and labels only, no probability bars")
    _add_codec_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_video_options(p)
    _add_engine_options(p, "videos (one task per video)")
    g = p.add_argument_group("several videos (or --engine ray)")
    g.add_argument("--out-dir", default="runs/video", metavar="DIR",
                   help="each video's timeline.csv, timeline.png and summary.json go to DIR/<name>/; a video whose "
                        "folder is complete for the same options is skipped (delete the folder to redo it); a folder "
                        "holding other files (an `emolens video` run's) is left alone for DIR/<name>-2/")
    g.add_argument("--annotate", action="store_true", help="also write DIR/<name>/annotated.mp4 for each video")


def _cmd_video(args) -> int:
    import contextlib
    import re
    from pathlib import Path

    from ..outputs import check_new_files, check_outputs, fresh_folder
    from ..video import process_video

    if len(args.input) > 1 or args.engine == "ray":
        return _cmd_video_batch(args)
    _check_engine_options(args)
    args.input = args.input[0]
    out, csv_path, plot = args.output, args.csv, args.plot
    folder = None
    if not (out or csv_path or plot):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(args.input.split("?")[0]).stem) or "stream"
        # runs/video/<name>/, or <name>-2/... when a previous run's outputs are there: a re-run never replaces them
        folder = fresh_folder(Path("runs/video") / stem)
        out, csv_path, plot = folder / "annotated.webm", folder / "timeline.csv", folder / "timeline.png"
    else:  # files the user named: an existing one is refused before any frame, never replaced
        check_outputs([args.input], files=[out, csv_path, plot])  # first: "this is the input" says more
        check_new_files([out, csv_path, plot])
    if args.max_frames < 0:
        raise UsageError("--max-frames must be 0 or more")
    try:
        res = process_video(args.input, out, csv_path, plot, max_frames=args.max_frames,
                            progress=not args.no_progress, draw_bars=not args.no_bars, codec=args.codec,
                            **_video_kwargs(args))
    except BaseException:
        if folder is not None:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a failed run leaves no empty default folder
        raise
    print(f"{res.frames} frames, {res.tracks} track(s), {res.rows} rows; {res.processing_fps:.1f} fps "
          f"({res.realtime_ratio:.2f}x real time at {res.fps:g} fps); smoothing: {res.smoothing}")
    for kind, path in res.outputs.items():
        print(f"{kind}: {path}")
    return 0


def _cmd_video_batch(args) -> int:
    """Several videos, or ``--engine ray``: one job per video, each into its own folder (emolens.cluster)."""
    from rich.console import Console

    from ..cluster import SUMMARY, VIDEO_OUTPUTS, run_video_jobs, video_jobs
    from ..outputs import check_outputs

    _check_engine_options(args)
    if args.output or args.csv or args.plot:
        raise UsageError("-o, --csv and --plot name one video's outputs; with several videos or --engine ray each "
                         "video gets its own folder under --out-dir")
    if args.max_frames < 0:
        raise UsageError("--max-frames must be 0 or more")
    settings = {**_video_kwargs(args), "annotate": args.annotate, "max_frames": args.max_frames,
                "draw_bars": not args.no_bars}
    jobs = video_jobs(args.input, args.out_dir)
    check_outputs(args.input, files=[j.folder / name for j in jobs for name in (*VIDEO_OUTPUTS.values(), SUMMARY)],
                  folders=[j.folder for j in jobs])
    err = Console(stderr=True)
    progress = None
    counts = {"done": 0, "skipped": 0, "failed": 0}

    def report(r: dict) -> None:
        counts[r["status"]] += 1
        out = progress.console if progress is not None else err
        if r["status"] == "failed":
            msg = str(r["error"])  # most errors name their video already: "a.mp4: a.mp4: ..." said it twice
            msg = msg if msg.startswith(f"{r['source']}:") else f"{r['source']}: {msg}"
            out.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
        elif r["status"] == "skipped":
            out.print(f"{r['source']}: skipped, already complete in {r['folder']}/", markup=False, highlight=False,
                      soft_wrap=True)
        else:
            partial = "" if r["complete"] else " (stream ended early)"
            out.print(f"{r['source']}: {r['frames']} frames{partial}, {r['tracks']} track(s), {r['rows']} rows, "
                      f"{r['processing_fps']:.1f} fps -> {r['folder']}/", markup=False, highlight=False, soft_wrap=True)
        if progress is not None:
            progress.advance(task)

    started = _connect_ray(args) if args.engine == "ray" else False
    try:
        if not args.no_progress and err.is_terminal:
            from rich.progress import Progress

            progress = Progress(console=err, transient=True)
            task = progress.add_task(f"video ({args.engine})", total=len(jobs))
            progress.start()
        run_video_jobs(jobs, settings, engine=args.engine, workers=args.workers, on_result=report)
    finally:
        if progress is not None:
            progress.stop()
        if started:
            import ray

            ray.shutdown()
    err.print(f"{len(jobs)} video(s): {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
              f"(engine: {args.engine}); outputs: {args.out_dir}/", markup=False, highlight=False, soft_wrap=True)
    return 1 if counts["failed"] else 0


# ---------------------------------------------------------------------------------------------- webcam


def _add_webcam(sub) -> None:
    p = sub.add_parser("webcam", help="live emotion overlay from a camera",
                       description="Live window with boxes, track ids and emotions; q quits. Frames stay in memory "
                                   "and are never stored unless --record is given. Without a display (or with "
                                   "opencv-python-headless) use `emolens serve` for a live view in the browser.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default="0", help="camera index, video file or stream URL")
    p.add_argument("--record", default=None, help="also save the annotated frames to this video file")
    _add_codec_option(p)
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = until q)")
    _add_video_options(p)


def _cmd_webcam(args) -> int:
    from ..outputs import check_new_files
    from ..video import run_webcam

    check_new_files([args.record])  # a recording never replaces an existing file
    n = run_webcam(args.source, record=args.record, max_frames=args.max_frames, codec=args.codec,
                   **_video_kwargs(args))
    print(f"{n} frames")
    return 0


