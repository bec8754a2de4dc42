"""Face crops of a clip: :func:`clip_face_crops` follows the main face of a short clip (detector + tracker) and cuts
it as photos are cut. A leaf of the video package (tracking, faces, preprocess), so the temporal model's clip
loader (:mod:`emolens.temporal.clips`) imports it without importing the video pipeline."""

from __future__ import annotations

import numpy as np

from ..preprocess import preprocess
from .tracking import Tracker


def clip_box(box: np.ndarray, w: int, h: int) -> np.ndarray:
    """(x, y, w, h) ``box`` cut to a ``w`` x ``h`` frame (float; zero width or height when it lies outside)."""
    x0, y0 = max(box[0], 0.0), max(box[1], 0.0)
    x1, y1 = min(box[0] + box[2], float(w)), min(box[1] + box[3], float(h))
    return np.array([x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)])


def clip_face_crops(frames: list[np.ndarray], detector=None, detect_width: int = 0,
                    margin: float | None = None) -> np.ndarray:
    """(n, 48, 48) uint8 crops of the main face of a clip (its longest track), one per frame, cut as photos
    are (square, ``margin`` (default: the detector's), eyes level where found).

    Frames where that face was not found take the nearest frame's box; a clip where no face is found at
    all is taken to be face crops already, and used whole. ``detector``: a FaceDetector or a name."""
    import cv2

    from ..faces import create_detector, crop_face, eye_angle

    det = create_detector(detector or "auto")
    margin = det.margin if margin is None else margin
    tracker = Tracker(max_misses=len(frames))
    per_frame: list[dict[int, tuple[np.ndarray, float]]] = []
    for f in frames:
        h, w = f.shape[:2]
        scale = min(1.0, detect_width / w) if detect_width else 1.0
        small = cv2.resize(f, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else f
        found = det.detect_faces(small)
        tracker.step(np.asarray([d.box for d in found], np.float64).reshape(-1, 4) / scale)
        per_frame.append({tid: (clip_box(t.box, w, h), eye_angle(d.landmarks))
                          for tid, d in zip(tracker.last_ids, found, strict=True) if tid is not None
                          for t in tracker.tracks if t.id == tid})
    counts: dict[int, int] = {}
    for d in per_frame:
        for k in d:
            counts[k] = counts.get(k, 0) + 1
    if not counts:
        return np.stack([preprocess(f, "bgr") for f in frames])
    main = max(counts, key=lambda k: counts[k])
    have = [i for i, d in enumerate(per_frame) if main in d]
    out = []
    for i, f in enumerate(frames):
        box, angle = per_frame[min(have, key=lambda k: abs(k - i))][main]
        out.append(crop_face(f, box, margin, angle))
    return np.stack(out)
