"""Shared test fixtures: the real FER2013 zip (skipped when absent), tiny synthetic datasets made in the test,
and a private decoded-dataset cache.

Plain helpers (``face``, ``make_kaggle_tree``) can be imported by test modules: ``from conftest import face``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from emolens.data import default_data_path
from emolens.preprocess import CLASSES

# Videos in tests are written with each container's fast codec (mp4v for .mp4): the browser-playable default,
# VP9 in .mp4, encodes at 1-4 frames/s on a 2-core machine. tests/test_video_codec.py checks that default.
os.environ.setdefault("EMOLENS_VIDEO_CODEC", "fast")

#: Kaggle folder, file-name prefix and (in ``make_kaggle_tree``'s prefix-less form) folder of each split.
KAGGLE_LAYOUT = {"train": ("train", "Training", "train"), "public": ("test", "PublicTest", "val"),
                 "private": ("test", "PrivateTest", "test")}


def face(seed: int, size: int | tuple[int, int] = 48, color: bool = False) -> np.ndarray:
    """A random uint8 image, distinct for every seed: (size, size) gray or (h, w, 3) BGR. Random pixels, not
    faces: the data layer never looks at content, and distinct images keep duplicate counts exact."""
    h, w = (size, size) if isinstance(size, int) else size
    shape = (h, w, 3) if color else (h, w)
    return np.random.default_rng(10_000 + seed).integers(0, 256, shape, dtype=np.uint8)


def make_kaggle_tree(root: Path, per_split: dict[str, int] | None = None, prefixes: bool = True, ext: str = ".png",
                     classes: tuple[str, ...] = CLASSES) -> Path:
    """Write a tiny FER2013 tree of 48x48 gray images under ``root`` and return ``root``.

    ``prefixes=True``: the Kaggle layout, ``train/<class>/Training_<n>.png`` and ``test/<class>/PublicTest_<n>``
    / ``PrivateTest_<n>``. ``prefixes=False``: plain names in ``train/``, ``val/`` and ``test/``, so the split
    comes from the folder. ``per_split`` is images per class and split (default train 2, public 1, private 1).
    PNG by default: lossless, so tests can compare pixels exactly.
    """
    import cv2

    per_split = {"train": 2, "public": 1, "private": 1} if per_split is None else per_split
    n = 0
    for split, count in per_split.items():
        kaggle_dir, prefix, plain_dir = KAGGLE_LAYOUT[split]
        for c in classes:
            folder = root / (kaggle_dir if prefixes else plain_dir) / c
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                name = f"{prefix}_{n}{ext}" if prefixes else f"img{n}{ext}"
                if not cv2.imwrite(str(folder / name), face(n)):
                    raise OSError(f"could not write {folder / name}")
                n += 1
    return root


@pytest.fixture(scope="session")
def fer_zip_path() -> Path:
    """The real FER2013 Kaggle zip ($EMOLENS_FER2013, else ../shared/data/fer2013.zip); skips when absent."""
    path = default_data_path()
    if not path.is_file():
        pytest.skip(f"real FER2013 not found at {path} (set EMOLENS_FER2013)")
    return path


@pytest.fixture
def synthetic_kaggle_tree(tmp_path) -> Path:
    """A Kaggle-layout folder made by :func:`make_kaggle_tree`: per class 2 train, 1 public, 1 private
    (14 / 7 / 7 images), 48x48 gray PNGs."""
    return make_kaggle_tree(tmp_path / "fer")


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    """Point EMOLENS_CACHE at an empty folder of this test, so no test reads or writes the user's cache."""
    path = tmp_path / "emolens-cache"
    monkeypatch.setenv("EMOLENS_CACHE", str(path))
    return path
