"""Video in and out: opening files, URLs and cameras (:func:`open_capture`, :func:`read_frames`), the codecs each
container is written with (:func:`open_video_writer`, :func:`video_codec`), atomic writing (a reader never sees
half a file), the timeline CSV (:data:`CSV_COLUMNS`) and a synthetic test clip."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import DataError
from ..preprocess import CLASSES

if TYPE_CHECKING:
    from ..predict import Face


class VideoError(DataError):
    """A video or stream that cannot be read (missing, not a video, truncated, empty)."""


def _is_url(source: str) -> bool:
    return "://" in source


def open_capture(source: str | int):
    """``cv2.VideoCapture`` for a file, URL or camera index; VideoError when it does not open."""
    # FFmpeg's own messages ("moov atom not found") would follow our one-line error; quiet unless the user
    # asked for a level (read once, when OpenCV first loads FFmpeg)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    if isinstance(source, str) and not _is_url(source) and not source.isdigit():
        p = Path(source)
        if not p.exists():
            raise VideoError(f"{source}: no such file")
        if p.is_dir():
            raise VideoError(f"{source}: is a folder, not a video")
        if p.stat().st_size == 0:
            raise VideoError(f"{source}: empty file (zero bytes)")
    src = int(source) if isinstance(source, str) and source.isdigit() else source
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        cap.release()
        what = f"camera {src}" if isinstance(src, int) else str(source)
        raise VideoError(f"{what}: cannot open as a video (not a format FFmpeg reads, a truncated file, or an "
                         "unreachable stream)" if not isinstance(src, int) else f"{what}: cannot open the camera")
    return cap


def _fps_of(cap, default: float = 30.0) -> tuple[float, bool]:
    import cv2

    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
    if not (math.isfinite(fps) and 1 <= fps <= 240):
        return default, False
    return fps, True


def read_frames(source: str | Path, max_frames: int = 0) -> list[np.ndarray]:
    """All frames (BGR) of a video file, up to ``max_frames`` (0 = all)."""
    cap = open_capture(str(source))
    frames = []
    try:
        while not max_frames or len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise VideoError(f"{source}: no frames could be read (a zero-length or damaged video)")
    return frames


#: the fast, widely decoded codec of each container: what ``codec=None`` (test clips) and ``--codec fast`` write
_FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID", ".webm": "VP80"}
#: ``--codec`` names -> FourCC. h264 needs an FFmpeg with an H.264 encoder (the opencv-python wheels have none)
CODECS = {"h264": "avc1", "vp9": "vp09", "vp8": "VP80", "mp4v": "mp4v", "mjpg": "MJPG", "xvid": "XVID"}
#: ``--codec auto``: what each container tries, in order. Browsers play H.264 or VP9 in .mp4 and VP8/VP9 in .webm,
#: not MPEG-4 Part 2 (mp4v), which is the last resort; .avi and .mkv keep their fast codecs.
AUTO_CODECS = {".mp4": ("h264", "vp9", "mp4v"), ".m4v": ("h264", "vp9", "mp4v"), ".mov": ("h264", "mp4v"),
               ".webm": ("vp8", "vp9"), ".avi": ("mjpg",), ".mkv": ("xvid",)}
#: codecs a browser's <video> plays (in a container it accepts)
BROWSER_CODECS = ("h264", "vp9", "vp8")


def open_video_writer(path: str | Path, fps: float, size: tuple[int, int], codec: str | None = "auto",
                      label: str | Path | None = None):
    """(cv2.VideoWriter, codec name) for ``path``: ``codec`` "auto" (the first of :data:`AUTO_CODECS` this
    OpenCV can encode, or the codec named by $EMOLENS_VIDEO_CODEC), a name from :data:`CODECS`, "fast" or None
    (the container's fast codec, mp4v for .mp4). VideoError (naming ``label``, default ``path``) when none
    opens. Read a file's codec back with :func:`video_codec`."""
    import cv2

    from ..data import _quiet_opencv

    if codec == "auto" and os.environ.get("EMOLENS_VIDEO_CODEC"):
        codec = os.environ["EMOLENS_VIDEO_CODEC"]
    suffix = Path(path).suffix.lower()
    if codec in (None, "fast"):
        names = [next(n for n, cc in CODECS.items() if cc == _FOURCC[suffix])]
    elif codec == "auto":
        names = list(AUTO_CODECS[suffix])
    elif codec in CODECS:
        names = [codec]
    else:
        raise VideoError(f"unknown codec {codec!r}: use auto, fast or one of {', '.join(CODECS)} (also for "
                         "$EMOLENS_VIDEO_CODEC)")
    for name in names:
        # an encoder this build lacks logs an error before isOpened() says False, and FFmpeg's WebM muxer,
        # which has no FourCC table, prints "tag ... is not supported" for every tag: neither is the user's news
        with _quiet_opencv(), _quiet_stderr():
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*CODECS[name]), fps, size)
        if writer.isOpened():
            return writer, name
        writer.release()
        Path(path).unlink(missing_ok=True)
    raise VideoError(f"{label or path}: this OpenCV cannot write {' or '.join(names)} into {suffix} files; try another "
                     f"--codec or container (.webm: vp8, .avi: mjpg)")


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a moment: OpenCV's FFmpeg backend prints with fprintf(stderr)."""
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to silence
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def video_codec(path: str | Path) -> str:
    """The codec of a video file as its decoder names it (FourCC: ``avc1``/``h264``, ``VP90``, ``VP80``,
    ``FMP4``, ``MJPG``...); VideoError when it does not open."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(f"{path}: not a readable video")
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
    finally:
        cap.release()
    return code.to_bytes(4, "little").decode("latin-1").strip("\x00 ")


class _AtomicVideoWriter:
    """cv2.VideoWriter to a hidden temp file beside ``path``, renamed to ``path`` by :meth:`close`."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], codec: str | None = "auto"):
        if path.suffix.lower() not in _FOURCC:
            raise VideoError(f"{path}: output must be one of {', '.join(_FOURCC)}")
        if codec not in (None, "auto", "fast", *CODECS):
            raise VideoError(f"unknown codec {codec!r}: use auto, fast or one of {', '.join(CODECS)}")
        from ..outputs import remove_stale_temp_files, temp_name

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        for leftover in (path, path.with_name(path.stem)):  # .<name>.<pid>.partial.mp4 (older: .<stem>.<pid>.)
            remove_stale_temp_files(leftover)
        self.tmp = temp_name(path, f"partial{path.suffix}")
        self.writer, self.codec = open_video_writer(self.tmp, fps, size, codec, label=path)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(frame)
        self.frames += 1

    def close(self, keep: bool = True) -> bool:
        """Release the writer (which finishes the container) and rename; False when nothing was kept."""
        self.writer.release()
        if keep and self.frames > 0:
            os.replace(self.tmp, self.path)
            return True
        self.tmp.unlink(missing_ok=True)
        return False


CSV_COLUMNS = ["frame", "time_s", "track_id", "x", "y", "w", "h", "detected", "emotion", "confidence",
               *[f"p_{c}" for c in CLASSES]]


def _csv_rows(index: int, t: float, faces: list[Face]) -> list[list[Any]]:
    return [[index, f"{t:.3f}", f.track_id, *f.box, int(f.detected), f.emotion, f"{f.confidence:.4f}",
             *[f"{f.probabilities[c]:.4f}" for c in CLASSES]] for f in faces]


def synthetic_face_video(path: str | Path, photo: np.ndarray | None = None, frames: int = 90,
                         size: tuple[int, int] = (640, 480), fps: float = 30.0) -> Path:
    """A test video: a BGR ``photo`` (default: the bundled astronaut photo, one face) panned and zoomed across
    a ``size`` frame (one sway every 4 s, as a person moves). Written as MJPG .avi or mp4v .mp4 by extension."""
    import cv2

    if photo is None:
        photo = cv2.imread(str(Path(__file__).parent.parent / "assets" / "astronaut.jpg"), cv2.IMREAD_COLOR)
        if photo is None:
            raise VideoError("the bundled test photo (emolens/assets/astronaut.jpg) is missing; give a video")
    img = np.ascontiguousarray(photo)
    w, h = size
    writer = _AtomicVideoWriter(Path(path), fps, (w, h), codec=None)  # a test clip: the fast codec
    try:
        for i in range(frames):
            s = i / (fps * 4.0)  # one sway every 4 s, whatever the length: a person's pace, not the clip's
            zoom = 1.0 + 0.25 * math.sin(math.pi * s)
            side = img.shape[0] / zoom
            cx = img.shape[1] / 2 + 0.12 * img.shape[1] * math.sin(2 * math.pi * s)
            cy = img.shape[0] / 2 + 0.05 * img.shape[0] * math.cos(2 * math.pi * s)
            src = np.float32([[cx - side * w / h / 2, cy - side / 2], [cx + side * w / h / 2, cy - side / 2],
                              [cx - side * w / h / 2, cy + side / 2]])
            m = cv2.getAffineTransform(src, np.float32([[0, 0], [w, 0], [0, h]]))
            writer.write(cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_CONSTANT, borderValue=(40, 40, 40)))
    finally:
        writer.close()
    return Path(path)
