"""User sequence data: ``<class>/<clip>/*.png`` frame folders or ``<class>/*.mp4`` clips, one label per clip.
Each clip's main face is found and followed at the frames' own size (:func:`emolens.video.crops.clip_face_crops`)
and cut as photos are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .sequences import progress_bar

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif")


def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES


def is_sequence_folder(path: str | Path) -> bool:
    """True for a folder of ``<class>/<clip>/`` frame folders or ``<class>/*.mp4`` clips."""
    from ..data import CLASS_ALIASES

    p = Path(path)
    if not p.is_dir():
        return False
    for cls in p.iterdir():
        if cls.is_dir() and cls.name.lower() in CLASS_ALIASES and CLASS_ALIASES[cls.name.lower()]:
            if any(c.is_dir() or _is_video(c) for c in cls.iterdir()):
                return True
    return False


def read_frame_folder(folder: str | Path, max_frames: int = 600) -> list[np.ndarray]:
    """The frames of a ``<clip>/`` folder (image files in name order, up to ``max_frames``) at their own size,
    (H, W, 3) BGR as a video's frames are read, so the face is found as it is in an .mp4 clip. DataError naming
    the file when one is not a readable image."""
    import cv2

    from ..data import IMAGE_SUFFIXES, DataError
    from ..decode import ImageError, read_image

    files = sorted(f for f in Path(folder).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:max_frames]
    frames = []
    for f in files:
        try:
            img = read_image(f)
        except ImageError as e:
            raise DataError(str(e)) from None
        frames.append(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img)
    return frames


def load_sequence_folder(path: str | Path, face_crops=None, max_frames: int = 600,
                         progress: bool = True) -> list[tuple[str, np.ndarray, int]]:
    """[(clip name, (n, 48, 48) uint8 face frames, class index)] from ``<class>/<clip>/`` or ``<class>/*.mp4``.

    ``face_crops(frames_bgr) -> (n, 48, 48)`` finds and follows the face in a clip (default
    :func:`emolens.video.crops.clip_face_crops`: the detector + tracker; frames that are already face crops
    are used whole). Frame folders and video files both reach it at full size, BGR."""
    from ..data import DataError, resolve_class

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of <class>/<clip>/ frames or <class>/*.mp4 clips")
    if face_crops is None:
        import functools

        from ..faces import create_detector
        from ..video.crops import clip_face_crops

        # one detector for every clip: loading a cascade takes longer than detecting in a short clip
        face_crops = functools.partial(clip_face_crops, detector=create_detector("auto"))
    items: list[tuple[str, Path, int]] = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        label = resolve_class(cls.name, str(root))
        for clip in sorted(cls.iterdir()):
            if clip.is_dir() or _is_video(clip):
                items.append((f"{cls.name}/{clip.name}", clip, label))
    if not items:
        raise DataError(f"{root}: no clips found (expected <class>/<clip>/ frame folders or <class>/*.mp4)")
    out = []
    bar = progress_bar(len(items), "clips", progress)
    for name, clip, label in items:
        if clip.is_dir():
            frames = read_frame_folder(clip, max_frames)
        else:
            from ..video.io import read_frames

            frames = read_frames(clip, max_frames)
        if len(frames) < 2:
            raise DataError(f"{clip}: a clip needs at least 2 frames, found {len(frames)}")
        out.append((name, face_crops(frames), label))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out
