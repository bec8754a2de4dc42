"""FER2013 in its three real forms -> one in-memory dataset of 48x48 uint8 faces.

Forms read by :func:`load_dataset`:

* the Kaggle layout ``train/<class>/*.jpg``, ``test/<class>/*.jpg`` (also ``val/`` or ``validation/``),
  as a folder or straight from its ``.zip``; the standard split comes from the file-name prefix
  (``Training_``, ``PublicTest_``, ``PrivateTest_``), else from the top folder's name;
* the original ``fer2013.csv`` (``emotion,pixels,Usage``);
* any ``<class>/`` folder of images of any size or colour (all one split, ``train`` by default).

Every image goes through :func:`emolens.preprocess.preprocess`. Decoded datasets are cached as uint8
arrays keyed by the source's content, so a second load of the full dataset takes well under a second.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .preprocess import CLASSES, INPUT_SIZE, preprocess

#: Split names used everywhere: Training, PublicTest (validation, used for model selection), PrivateTest (test).
SPLITS: tuple[str, ...] = ("train", "public", "private")

#: Accepted spellings of each split (``--split``, folder names, the CSV's Usage column), lower case.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "public": "public", "publictest": "public", "val": "public", "valid": "public", "validation": "public",
    "private": "private", "privatetest": "private", "test": "private",
}

#: Label order of the original fer2013.csv (0..6), which differs from the alphabetical ``CLASSES``.
CSV_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Folder names seen in FER datasets and their class, lower case.
CLASS_ALIASES: dict[str, str] = {
    **{c: c for c in CLASSES},
    "anger": "angry", "disgusted": "disgust", "fearful": "fear", "scared": "fear", "afraid": "fear",
    "happiness": "happy", "joy": "happy", "sadness": "sad", "surprised": "surprise", "neutrality": "neutral",
    "contempt": "", "calm": "neutral",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
CACHE_VERSION = 1


class DataError(ValueError):
    """Bad or unreadable data; the message names the file and what is wrong."""


@dataclass
class FERDataset:
    """Faces with labels and splits. ``images`` (N, 48, 48) uint8; ``labels`` (N,) int64 index into
    ``CLASSES``; ``splits`` (N,) int8 index into ``SPLITS``; ``sources`` names each image's origin."""

    images: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    sources: list[str]
    origin: str = ""
    skipped: list[str] = field(default_factory=list)
    classes: tuple[str, ...] = CLASSES

    def __len__(self) -> int:
        return len(self.labels)

    def split(self, name: str) -> FERDataset:
        """The subset of one split (``train``, ``public``/``val``, ``private``/``test``) or ``all``."""
        if name == "all":
            return self
        key = resolve_split(name)
        mask = self.splits == SPLITS.index(key)
        return self.subset(mask)

    def subset(self, mask: np.ndarray) -> FERDataset:
        idx = np.flatnonzero(mask)
        return FERDataset(self.images[idx], self.labels[idx], self.splits[idx],
                          [self.sources[i] for i in idx], self.origin, self.skipped, self.classes)

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {class: count}} for the splits present."""
        out: dict[str, dict[str, int]] = {}
        for s, name in enumerate(SPLITS):
            m = self.splits == s
            if m.any():
                bins = np.bincount(self.labels[m], minlength=len(self.classes))
                out[name] = {c: int(n) for c, n in zip(self.classes, bins)}
        return out


def resolve_split(name: str) -> str:
    key = SPLIT_ALIASES.get(name.strip().lower())
    if key is None:
        raise DataError(f"unknown split {name!r}: expected one of train, public (val), private (test), all")
    return key


def resolve_class(name: str, where: str = "") -> int:
    key = CLASS_ALIASES.get(name.strip().lower())
    if not key:
        at = f" in {where}" if where else ""
        raise DataError(f"unknown class folder {name!r}{at}: expected one of {', '.join(CLASSES)} "
                        f"(or an alias such as anger, happiness, sadness, surprised)")
    return CLASSES.index(key)


def default_data_path() -> Path:
    """Where tests and examples look for FER2013: ``$EMOLENS_FER2013``, else ../shared/data/fer2013.zip."""
    env = os.environ.get("EMOLENS_FER2013")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents]:
        cand = parent.parent / "shared" / "data" / "fer2013.zip"
        if cand.exists():
            return cand
    return Path("../shared/data/fer2013.zip")


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> 48x48 uint8 gray via the shared preprocess; DataError when undecodable."""
    import cv2

    if not data:
        raise DataError(f"{name}: empty file (0 bytes)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{name}: not a readable image (truncated or not an image file)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    return preprocess(img, "bgr")


# ----------------------------------------------------------------------------------------------------
# sources


def _split_of(relpath: str, default: str) -> str:
    """Split from the file-name prefix, else from the first folder named like a split, else default."""
    base = relpath.rsplit("/", 1)[-1]
    for prefix, split in (("Training_", "train"), ("PublicTest_", "public"), ("PrivateTest_", "private")):
        if base.startswith(prefix):
            return split
    for part in relpath.split("/")[:-2]:
        if part.lower() in SPLIT_ALIASES:
            return SPLIT_ALIASES[part.lower()]
    return default


def _entries(names: Iterable[str], where: str) -> Iterator[tuple[str, str]]:
    """(relpath, class folder) for image paths laid out as [split/]class/file."""
    for rel in names:
        if rel.endswith("/") or not rel.lower().endswith(IMAGE_SUFFIXES):
            continue
        parts = rel.split("/")
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if len(parts) < 2:
            raise DataError(f"{where}: image {rel!r} is not inside a <class>/ folder")
        yield rel, parts[-2]


def _read_images(items: Iterable[tuple[str, str, bytes | None]], reader, where: str, skip_bad: bool,
                 default_split: str, progress: bool) -> FERDataset:
    items = list(items)
    images = np.empty((len(items), INPUT_SIZE, INPUT_SIZE), np.uint8)
    labels, splits, sources, skipped = [], [], [], []
    label_of: dict[str, int] = {}
    it = items
    if progress and len(items) > 2000:
        from tqdm import tqdm

        it = tqdm(items, desc=f"decoding {Path(where).name}", unit="img", leave=False)
    n = 0
    for rel, cls, _ in it:
        if cls not in label_of:
            label_of[cls] = resolve_class(cls, where)
        try:
            images[n] = decode_image(reader(rel), f"{where}/{rel}" if not where.endswith(".zip") else f"{where}:{rel}")
        except DataError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        labels.append(label_of[cls])
        splits.append(SPLITS.index(_split_of(rel, default_split)))
        sources.append(rel)
        n += 1
    if n == 0:
        raise DataError(f"{where}: no readable images found")
    return FERDataset(images[:n].copy(), np.asarray(labels, np.int64), np.asarray(splits, np.int8),
                      sources, where, skipped)


def _load_zip(path: Path, skip_bad: bool, progress: bool) -> FERDataset:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a valid zip file ({e})") from None
    with zf:
        names = [n for n in zf.namelist()]
        csvs = [n for n in names if n.lower().endswith(".csv") and "__MACOSX" not in n]
        entries = list(_entries(names, str(path)))
        if not entries and csvs:
            with zf.open(csvs[0]) as f:
                return _load_csv_stream(io.TextIOWrapper(f, "utf-8"), f"{path}:{csvs[0]}", skip_bad)
        if not entries:
            raise DataError(f"{path}: no images in <class>/ folders and no fer2013.csv inside the zip")
        return _read_images(((r, c, None) for r, c in entries), zf.read, str(path), skip_bad, "train", progress)


def _load_folder(path: Path, skip_bad: bool, progress: bool) -> FERDataset:
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    entries = list(_entries(files, str(path)))
    if not entries:
        csvs = [f for f in files if f.lower().endswith(".csv")]
        if csvs:
            return _load_csv(path / csvs[0], skip_bad)
        raise DataError(f"{path}: no images found; expected <class>/*.jpg, train/<class>/*.jpg "
                        f"or a fer2013.csv (classes: {', '.join(CLASSES)})")
    return _read_images(((r, c, None) for r, c in entries), lambda r: (path / r).read_bytes(), str(path),
                        skip_bad, "train", progress)


def _load_csv(path: Path, skip_bad: bool) -> FERDataset:
    with open(path, newline="", encoding="utf-8") as f:
        return _load_csv_stream(f, str(path), skip_bad)


def _load_csv_stream(stream, where: str, skip_bad: bool) -> FERDataset:
    reader = csv.reader(stream)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{where}: empty CSV file")
    cols = [h.strip().lower() for h in header]
    if "emotion" not in cols or "pixels" not in cols:
        raise DataError(f"{where}: CSV header must have 'emotion' and 'pixels' columns (and optionally 'Usage'), "
                        f"got {header}")
    ie, ip = cols.index("emotion"), cols.index("pixels")
    iu = cols.index("usage") if "usage" in cols else None
    images, labels, splits, sources, skipped = [], [], [], [], []
    npix = INPUT_SIZE * INPUT_SIZE
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            if len(row) <= max(ie, ip, iu or 0):
                raise DataError(f"{where} line {lineno}: expected {len(cols)} fields, got {len(row)}")
            try:
                e = int(row[ie])
            except ValueError:
                raise DataError(f"{where} line {lineno}: emotion {row[ie]!r} is not an integer 0..6") from None
            if not 0 <= e < len(CSV_LABELS):
                raise DataError(f"{where} line {lineno}: emotion {e} is out of range 0..6")
            try:
                px = np.array(row[ip].split(), dtype=np.int64)
            except ValueError:
                raise DataError(f"{where} line {lineno}: pixels must be space-separated integers") from None
            if px.size != npix:
                raise DataError(f"{where} line {lineno}: expected {npix} pixels (48x48), got {px.size}")
            if px.min() < 0 or px.max() > 255:
                raise DataError(f"{where} line {lineno}: pixel values must be in 0..255")
            split = resolve_split(row[iu]) if iu is not None else "train"
        except DataError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            continue
        images.append(px.astype(np.uint8).reshape(INPUT_SIZE, INPUT_SIZE))
        labels.append(CLASSES.index(CSV_LABELS[e]))
        splits.append(SPLITS.index(split))
        sources.append(f"line {lineno}")
    if not images:
        raise DataError(f"{where}: no valid rows")
    return FERDataset(np.stack(images), np.asarray(labels, np.int64), np.asarray(splits, np.int8), sources,
                      where, skipped)


# ----------------------------------------------------------------------------------------------------
# cache and entry point


def cache_dir() -> Path:
    return Path(os.environ.get("EMOLENS_CACHE", Path.home() / ".cache" / "emolens"))


def source_key(path: Path, skip_bad: bool = False) -> str:
    """Content key of a data source: sha256 of a file's bytes; for a folder, of every file's path,
    size and modification time (hashing 35k small files' bytes would cost more than decoding them)."""
    h = hashlib.sha256(f"v{CACHE_VERSION}:{INPUT_SIZE}:{skip_bad}".encode())
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _save_cache(ds: FERDataset, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=ds.images, labels=ds.labels, splits=ds.splits,
                     sources=np.asarray(ds.sources), skipped=np.asarray(ds.skipped, dtype=str))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(target: Path, origin: str) -> FERDataset | None:
    try:
        with np.load(target) as z:
            return FERDataset(z["images"], z["labels"], z["splits"], z["sources"].tolist(), origin,
                              z["skipped"].tolist())
    except Exception:  # a damaged cache file is rebuilt, never trusted
        return None


def load_dataset(path: str | os.PathLike, skip_bad: bool = False, cache: bool = True,
                 progress: bool = True) -> FERDataset:
    """Load FER data from a Kaggle folder or zip, a fer2013.csv, or a ``<class>/`` image folder.

    ``skip_bad`` skips unreadable images or malformed CSV rows (listed in ``dataset.skipped``) instead
    of raising :class:`DataError`. Example: ``load_dataset("fer2013.zip").split("public")``.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    target = None
    if cache:
        target = cache_dir() / f"dataset-{source_key(path, skip_bad)}.npz"
        if target.exists():
            ds = _read_cache(target, str(path))
            if ds is not None:
                return ds
    suffix = path.suffix.lower()
    if path.is_dir():
        ds = _load_folder(path, skip_bad, progress)
    elif suffix == ".zip":
        ds = _load_zip(path, skip_bad, progress)
    elif suffix == ".csv":
        ds = _load_csv(path, skip_bad)
    else:
        raise DataError(f"{path}: unknown data layout; give a folder, a .zip or a fer2013.csv")
    if target is not None:
        try:
            _save_cache(ds, target)
        except OSError:
            pass  # a read-only cache folder only costs speed
    return ds
