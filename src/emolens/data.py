"""FER2013 in its three real forms -> one in-memory dataset of 48x48 uint8 faces.

Forms read by :func:`load_dataset`:

* the Kaggle layout ``train/<class>/*.jpg``, ``test/<class>/*.jpg`` (also ``val/`` or ``validation/``),
  as a folder or straight from its ``.zip``; the standard split comes from the file-name prefix
  (``Training_``, ``PublicTest_``, ``PrivateTest_``), else from the top folder's name;
* the original ``fer2013.csv`` (``emotion,pixels,Usage``);
* any ``<class>/`` folder of images of any size or colour (all one split: the folder's own name when it
  names a split, such as ``val/``, else ``train``).

Every image goes through :func:`emolens.preprocess.preprocess`. Decoded datasets are cached as uint8
arrays keyed by the source's content, so a second load of the full dataset takes well under a second.
:func:`dataset_stats` (``emolens data stats``) reports counts, charts, samples and exact duplicates.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import reprlib
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .decode import IMAGE_SUFFIXES  # noqa: F401 (the one suffix list; re-exported)
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
#: Bump when decoding or the cache layout changes: old cache files are then never read.
CACHE_VERSION = 3  # 3: decoded by emolens.decode (PIL) rather than cv2.imdecode


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
    cached: bool = False  # True when read from the decoded-dataset cache rather than decoded now

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
                out[name] = {c: int(n) for c, n in zip(self.classes, bins, strict=True)}
        return out


def resolve_split(name: str) -> str:
    """Any accepted spelling (``val``, ``PublicTest``, ``test``, ...) -> one of ``SPLITS``; DataError otherwise."""
    key = SPLIT_ALIASES.get(name.strip().lower())
    if key is None:
        raise DataError(f"unknown split {name!r}: expected one of train, public (val), private (test), all")
    return key


_CLASS_HINT = f"expected one of {', '.join(CLASSES)} (or an alias such as anger, happiness, sadness, surprised)"


def resolve_class(name: str, where: str = "") -> int:
    """A class folder name or alias -> index into ``CLASSES``; DataError that lists the expected names."""
    key = CLASS_ALIASES.get(name.strip().lower())
    if not key:
        at = f" in {where}" if where else ""
        raise DataError(f"unknown class folder {name!r}{at}: {_CLASS_HINT}")
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
    return FALLBACK_DATA


#: The development checkout's copy, where :func:`default_data_path` looks last; missing on a user's machine.
FALLBACK_DATA = Path("../shared/data/fer2013.zip")


# ----------------------------------------------------------------------------------------------------
# decoding


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Encoded image bytes -> (48, 48) uint8 gray: the package's one decoder (:func:`emolens.decode.decode_bytes`,
    as photos and the API use it), then the shared preprocess.

    Raises DataError naming ``name`` and the fault: empty file, bytes that are no image format, a truncated
    JPEG (some libjpeg builds silently fill the missing part with gray), or data that cannot be decoded.
    """
    from .decode import ImageError, decode_bytes

    try:
        img = decode_bytes(data, name)
    except ImageError as e:
        raise DataError(str(e)) from None
    try:
        return preprocess(img, "bgr")
    except ValueError as e:
        raise DataError(f"{name}: {e}") from None


@contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's own log while decoding a dataset: a bad file gets one DataError line, not libpng chatter."""
    try:
        from cv2.utils import logging as cvlog

        old = cvlog.getLogLevel()
        cvlog.setLogLevel(cvlog.LOG_LEVEL_SILENT)
    except (ImportError, AttributeError):
        yield
        return
    try:
        yield
    finally:
        cvlog.setLogLevel(old)


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


def _folder_split(path: Path) -> str:
    """Split of images that name none themselves: the folder's own name when it is a split (``val/``), else train."""
    return SPLIT_ALIASES.get(path.resolve().name.lower(), "train")


def _hidden(rel: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/"))


def _entries(names: Iterable[str], where: str) -> Iterator[tuple[str, str]]:
    """(relpath, class folder) for image paths laid out as [split/]class/file."""
    for rel in names:
        if rel.endswith("/") or not rel.lower().endswith(IMAGE_SUFFIXES) or _hidden(rel):
            continue
        parts = rel.split("/")
        if len(parts) < 2:
            raise DataError(f"{where}: image {rel!r} is not inside a <class>/ folder; expected <class>/*.jpg or "
                            f"train/<class>/*.jpg ({_CLASS_HINT})")
        yield rel, parts[-2]


def _class_labels(entries: list[tuple[str, str]], where: str) -> dict[str, int]:
    """Resolve every class folder before decoding anything, so a wrong layout fails at once and names them all."""
    example: dict[str, str] = {}
    for rel, cls in entries:
        example.setdefault(cls, rel)
    labels, unknown = {}, []
    for cls, rel in sorted(example.items()):
        key = CLASS_ALIASES.get(cls.strip().lower())
        if key:
            labels[cls] = CLASSES.index(key)
        else:
            unknown.append(f"{cls!r} (e.g. {rel})")
    if unknown:
        hint = ""
        if any(CLASS_ALIASES.get(c.lower()) == "" for c in example):
            hint = "; contempt is not one of the 7 FER2013 classes"
        elif any(c.lower() in SPLIT_ALIASES for c in example if c not in labels):
            hint = "; images in a split folder must sit in <class>/ folders, e.g. train/happy/*.jpg"
        raise DataError(f"{where}: unknown class folder{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: "
                        f"{_CLASS_HINT}{hint}; rename or remove {'them' if len(unknown) > 1 else 'it'}")
    return labels


def _read_images(entries: list[tuple[str, str]], reader: Callable[[str], bytes], where: str, sep: str,
                 skip_bad: bool, default_split: str, progress: bool) -> FERDataset:
    label_of = _class_labels(entries, where)
    images = np.empty((len(entries), INPUT_SIZE, INPUT_SIZE), np.uint8)
    labels, splits, sources, skipped = [], [], [], []
    it: Iterable[tuple[str, str]] = entries
    if progress and len(entries) > 2000:
        from tqdm import tqdm

        it = tqdm(entries, desc=f"decoding {Path(where).name}", unit="img", leave=False)
    n = 0
    with _quiet_opencv():
        for rel, cls in it:
            try:
                images[n] = decode_image(reader(rel), f"{where}{sep}{rel}")
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
        raise DataError(f"{where}: none of the {len(entries)} images is readable (first: {skipped[0]})")
    return FERDataset(images[:n].copy(), np.asarray(labels, np.int64), np.asarray(splits, np.int8),
                      sources, where, skipped)


def _pick_csv(names: list[str], where: str) -> str | None:
    """The CSV to read when a source holds no images: fer2013.csv if present, else the only CSV."""
    names = [n for n in names if n.lower().endswith(".csv") and not _hidden(n)]
    if not names:
        return None
    named = [n for n in names if n.rsplit("/", 1)[-1].lower() == "fer2013.csv"]
    if named:
        return named[0]
    if len(names) > 1:
        raise DataError(f"{where}: no images and several CSV files ({', '.join(names)}); give the path of the one "
                        f"to load")
    return names[0]


_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError)


def _load_zip(path: Path, skip_bad: bool, progress: bool) -> FERDataset:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a valid zip file ({e})") from None
    with zf:
        names = sorted(zf.namelist())
        entries = list(_entries(names, str(path)))
        if not entries:
            name = _pick_csv(names, str(path))
            if name is None:
                raise DataError(f"{path}: no images in <class>/ folders and no fer2013.csv inside the zip "
                                f"(classes: {', '.join(CLASSES)})")
            try:
                with zf.open(name) as f:
                    return _load_csv_stream(io.TextIOWrapper(f, "utf-8-sig", newline=""), f"{path}:{name}", skip_bad)
            except _ZIP_ERRORS as e:
                raise DataError(f"{path}:{name}: cannot be read from the zip ({e})") from None

        def read(rel: str) -> bytes:
            try:
                return zf.read(rel)
            except _ZIP_ERRORS as e:
                raise DataError(f"{path}:{rel}: cannot be read from the zip ({e})") from None

        return _read_images(entries, read, str(path), ":", skip_bad, "train", progress)


def _load_folder(path: Path, skip_bad: bool, progress: bool) -> FERDataset:
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    entries = list(_entries(files, str(path)))
    if not entries:
        name = _pick_csv(files, str(path))
        if name is not None:
            return _load_csv(path / name, skip_bad)
        what = "is empty" if not files else f"has {len(files)} files but no images and no .csv"
        raise DataError(f"{path}: folder {what}; expected <class>/*.jpg, train/<class>/*.jpg or a fer2013.csv "
                        f"({_CLASS_HINT})")

    def read(rel: str) -> bytes:
        try:
            return (path / rel).read_bytes()
        except OSError as e:
            raise DataError(f"{path}/{rel}: cannot be read ({e.strerror or e})") from None

    return _read_images(entries, read, str(path), "/", skip_bad, _folder_split(path), progress)


def _load_csv(path: Path, skip_bad: bool) -> FERDataset:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return _load_csv_stream(f, str(path), skip_bad)


def _csv_rows(reader, where: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields); a file that cannot be parsed at all (bad encoding, NUL bytes) is a DataError."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"{where} near line {reader.line_num + 1}: not a readable CSV ({e})") from None
        yield reader.line_num, row


def _parse_pixels(text: str, at: str) -> np.ndarray:
    """The CSV's ``pixels`` field, 2304 space-separated integers 0..255 -> (48, 48) uint8. NumPy's C parser
    reads the usual row (5x faster than splitting: 35,887 rows); a row it rejects is parsed again the slow way
    to say exactly what is wrong."""
    npix = INPUT_SIZE * INPUT_SIZE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # NumPy < 2.? warns and returns a partial array
            px = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        px = None
    if px is None or px.size != npix:
        try:
            px = np.array(text.split(), dtype=np.int64)
        except (ValueError, OverflowError):
            raise DataError(f"{at}: pixels must be space-separated integers 0..255") from None
        if px.size != npix:
            raise DataError(f"{at}: expected {npix} pixels (48x48), got {px.size}")
    lo, hi = int(px.min()), int(px.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{at}: pixel value {lo if lo < 0 else hi} is out of range 0..255")
    return px.astype(np.uint8).reshape(INPUT_SIZE, INPUT_SIZE)


def _load_csv_stream(stream, where: str, skip_bad: bool) -> FERDataset:
    reader = csv.reader(stream)
    rows = _csv_rows(reader, where)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{where}: empty CSV file")
    header = first[1]
    cols = [h.strip().lower() for h in header]
    if "emotion" not in cols or "pixels" not in cols:
        # a header-less file's first row is 2304 pixel values: show the start of it, not 8 KB
        shorten = reprlib.Repr()
        shorten.maxlist, shorten.maxstring = 6, 60
        short = shorten.repr(header)
        raise DataError(f"{where}: CSV header must have 'emotion' and 'pixels' columns (and optionally 'Usage'), "
                        f"got {short}")
    ie, ip = cols.index("emotion"), cols.index("pixels")
    iu = cols.index("usage") if "usage" in cols else None
    images, labels, splits, sources, skipped = [], [], [], [], []
    for lineno, row in rows:
        if not row or all(not c.strip() for c in row):
            continue
        at = f"{where} line {lineno}"
        try:
            if len(row) != len(cols):
                raise DataError(f"{at}: expected {len(cols)} fields ({', '.join(h.strip() for h in header)}), "
                                f"got {len(row)}")
            try:
                e = int(row[ie])
            except ValueError:
                raise DataError(f"{at}: emotion {row[ie]!r} is not an integer 0..6") from None
            if not 0 <= e < len(CSV_LABELS):
                raise DataError(f"{at}: emotion {e} is out of range 0..6")
            px = _parse_pixels(row[ip], at)
            split = "train"
            if iu is not None:
                split = SPLIT_ALIASES.get(row[iu].strip().lower(), "")
                if not split:
                    raise DataError(f"{at}: Usage {row[iu]!r} is not Training, PublicTest or PrivateTest")
        except DataError as err:
            if not skip_bad:
                raise
            skipped.append(str(err))
            continue
        images.append(px)
        labels.append(CLASSES.index(CSV_LABELS[e]))
        splits.append(SPLITS.index(split))
        sources.append(f"line {lineno}")
    if not images:
        first_bad = f" (first: {skipped[0]})" if skipped else ""
        raise DataError(f"{where}: no valid rows{first_bad}")
    return FERDataset(np.stack(images), np.asarray(labels, np.int64), np.asarray(splits, np.int8), sources,
                      where, skipped)


# ----------------------------------------------------------------------------------------------------
# cache and entry point


def cache_dir() -> Path:
    """Where decoded datasets are kept: ``$EMOLENS_CACHE``, else ~/.cache/emolens."""
    return Path(os.environ.get("EMOLENS_CACHE", Path.home() / ".cache" / "emolens"))


def source_key(path: Path, skip_bad: bool = False) -> str:
    """Content key of a data source: sha256 of a file's bytes; for a folder, of every file's path,
    size and modification time (hashing 35k small files' bytes would cost more than decoding them)
    and of the split its unprefixed images get from the folder's name."""
    path = Path(path)
    h = hashlib.sha256(f"v{CACHE_VERSION}:{INPUT_SIZE}:{skip_bad}".encode())
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    else:
        h.update(f"default split {_folder_split(path)}\n".encode())
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _save_cache(ds: FERDataset, target: Path) -> None:
    """Temp file + fsync + rename: a crash leaves the old cache or none, never half of one."""
    from .outputs import atomic_writer

    with atomic_writer(target) as f:
        np.savez(f, images=ds.images, labels=ds.labels, splits=ds.splits,
                 sources=np.asarray(ds.sources, dtype=str), skipped=np.asarray(ds.skipped, dtype=str))


def _read_cache(target: Path, origin: str) -> FERDataset | None:
    """The cached dataset, or None when the file is damaged or inconsistent (it is then rebuilt, never trusted)."""
    try:
        with np.load(target, allow_pickle=False) as z:
            images, labels, splits = z["images"], z["labels"], z["splits"]
            sources, skipped = z["sources"].tolist(), z["skipped"].tolist()
    except Exception:
        return None
    n = len(labels)
    if (images.dtype != np.uint8 or images.shape != (n, INPUT_SIZE, INPUT_SIZE) or labels.dtype != np.int64
            or splits.shape != (n,) or len(sources) != n or n == 0
            or labels.min() < 0 or labels.max() >= len(CLASSES) or splits.min() < 0 or splits.max() >= len(SPLITS)):
        return None
    return FERDataset(images, labels, splits.astype(np.int8), sources, origin, skipped, cached=True)


def load_dataset(path: str | os.PathLike, skip_bad: bool = False, cache: bool = True,
                 progress: bool = True) -> FERDataset:
    """Load FER data from a Kaggle folder or zip, a fer2013.csv, or a ``<class>/`` image folder.

    ``skip_bad`` skips unreadable images or malformed CSV rows (listed in ``dataset.skipped``) instead
    of raising :class:`DataError`. Example: ``load_dataset("fer2013.zip").split("public")``.
    """
    path = Path(path)
    if not path.exists():
        if path == FALLBACK_DATA and not os.environ.get("EMOLENS_FER2013"):  # nothing was given
            raise DataError("no FER data given: pass --data PATH (the Kaggle fer2013 folder or .zip, fer2013.csv or "
                            "a <class>/ image folder) or set EMOLENS_FER2013 to it")
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    suffix = path.suffix.lower()
    if not path.is_dir() and suffix not in (".zip", ".csv"):
        raise DataError(f"{path}: unknown data layout; give a Kaggle folder or .zip (train/<class>/*.jpg), "
                        f"a fer2013.csv, or a folder of <class>/ image folders")
    target = None
    if cache:
        target = cache_dir() / f"dataset-{source_key(path, skip_bad)}.npz"
        if target.exists():
            ds = _read_cache(target, str(path))
            if ds is not None:
                return ds
    if path.is_dir():
        ds = _load_folder(path, skip_bad, progress)
    elif suffix == ".zip":
        ds = _load_zip(path, skip_bad, progress)
    else:
        ds = _load_csv(path, skip_bad)
    if target is not None:
        try:
            _save_cache(ds, target)
        except OSError:
            pass  # a read-only cache folder only costs speed
    return ds
