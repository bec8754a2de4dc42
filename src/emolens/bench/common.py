"""What every ``emolens bench`` measurement shares: the timer (median of repeated calls) and the sample inputs
(a 640x480 frame of the bundled photo, noisy copies of its face, int8 calibration faces)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: the package's bundled photos (src/emolens/assets)
ASSETS = Path(__file__).resolve().parent.parent / "assets"


def time_call(fn: Callable[[], Any], min_time: float = 1.0, min_repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds per call of ``fn`` over at least ``min_repeats`` calls and ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sample_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """A (height, width, 3) BGR frame with the bundled astronaut photo (one face) scaled to the frame height."""
    import cv2

    from ..predict import read_image

    photo = read_image(ASSETS / "astronaut.jpg")
    photo = cv2.resize(photo, (height * photo.shape[1] // photo.shape[0], height), interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 96, np.uint8)
    x = max(0, (width - photo.shape[1]) // 2)
    frame[:, x:x + photo.shape[1]] = photo[:, :width]
    return frame


def sample_faces(n: int, seed: int = 0) -> np.ndarray:
    """(n, 48, 48) uint8: the astronaut's face crop with noise, so every input differs a little."""
    from ..faces import create_detector, face_crops

    frame = sample_frame()
    dets = create_detector("haar").detect_faces(frame)[:1]
    base = face_crops(frame, dets)[0] if dets else np.full((48, 48), 128, np.uint8)
    noise = np.random.default_rng(seed).integers(-8, 9, (n, 48, 48))
    return np.clip(base[None].astype(np.int16) + noise, 0, 255).astype(np.uint8)


def calibration_faces(n: int = 512) -> np.ndarray:
    """int8 calibration faces: FER2013 training faces when the data is there, else noisy copies of the sample
    face (speed is the same; only accuracy would suffer)."""
    from ..data import DataError, default_data_path, load_dataset

    try:
        train = load_dataset(default_data_path()).split("train")
    except (DataError, OSError):
        return sample_faces(n)
    return train.images[np.random.default_rng(0).choice(len(train.images), min(n, len(train.images)), False)]
