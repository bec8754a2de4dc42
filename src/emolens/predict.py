"""The Python API for photos: find every face, say its emotion.

    from emolens import EmotionRecognizer
    rec = EmotionRecognizer()                    # the shipped model, ONNX Runtime, best installed detector
    faces = rec.predict("photo.jpg")             # [Face(box, emotion, confidence, probabilities, landmarks)]
    cv2.imwrite("out.jpg", rec.draw("photo.jpg", faces))

Images are handled as BGR uint8 numpy arrays inside. Inputs: a path, encoded bytes, a PIL image (its mode says
the channels, EXIF orientation applied) or a numpy array, which is taken as BGR (OpenCV's order) unless
``channel_order="rgb"`` is given; gray arrays are fine. Images above ``MAX_PIXELS`` are refused before they are
decoded (a decompression bomb costs nothing to send and gigabytes to decode).
"""

from __future__ import annotations

import functools
import io
import math
import os
import reprlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .annotate import COLORS, FaceLayout, annotation_layout, draw_faces, draw_no_face  # noqa: F401 (re-exported)
from .decode import IMAGE_SUFFIXES, MAX_PIXELS, ImageError, decode_bytes, read_image  # noqa: F401 (re-exported)
from .decode import check_size as _check_size
from .decode import pil_to_array as _pil_to_array
from .faces import Box, Detection, FaceDetector, create_detector, face_crops
from .outputs import new_run_folder  # noqa: F401 (re-exported: emolens.predict.new_run_folder)
from .preprocess import INPUT_SIZE, preprocess
from .results import Face  # noqa: F401 (re-exported)
from .runtime import DEFAULT_TTA, TTA_CHOICES, load_classifier

ImageInput = Any  # str | Path | bytes | PIL.Image.Image | np.ndarray


class NoFaceError(ImageError):
    """The one-line helpers found no face in the image."""


class BoxError(ValueError):
    """User-given face boxes that are not boxes inside the image (malformed, negative, empty, outside)."""


def _finite(v: Any) -> bool:
    """True for a number that is finite as a float (an int of 400 digits overflows float())."""
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def check_boxes(boxes: Any, width: int, height: int) -> list[Box]:
    """User-given face boxes -> [(x, y, w, h)] ints, each inside the ``width`` x ``height`` image with a width
    and height of at least 1 px; BoxError naming the first bad one otherwise. Whole numbers as floats (12.0)
    are fine; fractions are rounded.

    >>> check_boxes([(10, 20, 30, 40)], 100, 100)
    [(10, 20, 30, 40)]
    """
    if isinstance(boxes, str | bytes) or not isinstance(boxes, Sequence | np.ndarray):
        raise BoxError(f"boxes must be a list of [x, y, w, h], not {type(boxes).__name__}")
    out: list[Box] = []
    for i, b in enumerate(boxes):
        what = f"box {i} ({reprlib.repr(b)})"
        if isinstance(b, str | bytes) or not isinstance(b, Sequence | np.ndarray) or len(b) != 4:
            raise BoxError(f"{what}: expected 4 numbers x, y, w, h")
        if not all(isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) for v in b):
            raise BoxError(f"{what}: x, y, w, h must be numbers")
        if not all(_finite(v) for v in b):
            raise BoxError(f"{what}: x, y, w, h must be finite numbers that fit a float")
        x, y, w, h = (int(round(float(v))) for v in b)
        if x < 0 or y < 0:
            raise BoxError(f"{what}: negative x or y; boxes are (x, y, w, h) from the image's top-left corner")
        if w < 1 or h < 1:
            raise BoxError(f"{what}: empty box (width and height must be at least 1 px)")
        if x + w > width or y + h > height:
            raise BoxError(f"{what}: reaches outside the {width}x{height} image (x + w <= {width}, "
                           f"y + h <= {height})")
        out.append((x, y, w, h))
    return out


# ---------------------------------------------------------------------------------------------- image input


def to_bgr(image: ImageInput, channel_order: str = "bgr", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any supported input -> uint8 numpy, (H, W, 3) BGR or (H, W) gray (gray stays gray so a 48x48 face
    crop can be recognised as one)."""
    if isinstance(image, str | os.PathLike):
        return read_image(image, max_pixels)
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_bytes(bytes(image), "image", max_pixels)
    if type(image).__module__.startswith("PIL."):
        from PIL import ImageOps

        _check_size(image.width, image.height, "image", max_pixels)
        try:
            return _pil_to_array(ImageOps.exif_transpose(image))
        except (OSError, ValueError) as e:  # a lazily opened PIL image decodes here: truncated data shows now
            raise ImageError(f"image: unreadable image ({str(e).splitlines()[0][:160]})") from None
    if isinstance(image, np.ndarray):
        return _array_to_bgr(image, channel_order, max_pixels)
    raise ImageError(f"unsupported image type {type(image).__name__}: give a path, bytes, a PIL image or a "
                     "numpy array")


def _array_to_bgr(image: np.ndarray, channel_order: str, max_pixels: int) -> np.ndarray:
    import cv2

    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"channel_order must be 'bgr' or 'rgb', not {channel_order!r}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)) or 0 in image.shape:
        raise ImageError(f"expected an image array of shape (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    _check_size(image.shape[1], image.shape[0], "image", max_pixels)
    if image.dtype != np.uint8:
        if image.dtype == np.uint16:
            image = (image >> 8).astype(np.uint8)
        elif np.issubdtype(image.dtype, np.floating):
            scale = 255.0 if image.size and float(np.nanmax(image)) <= 1.0 else 1.0
            image = np.clip(np.nan_to_num(image * scale), 0, 255).astype(np.uint8)
        else:
            image = np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.shape[2] == 4:
        code = cv2.COLOR_RGBA2BGR if channel_order == "rgb" else cv2.COLOR_BGRA2BGR
        return cv2.cvtColor(np.ascontiguousarray(image), code)
    return np.ascontiguousarray(image[:, :, ::-1] if channel_order == "rgb" else image)


def _as_color(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def is_face_crop(image: np.ndarray) -> bool:
    """A 48x48 gray image is a face crop already (FER2013 form): no detection."""
    return image.ndim == 2 and image.shape == (INPUT_SIZE, INPUT_SIZE)


# ---------------------------------------------------------------------------------------------- recognizer


class EmotionRecognizer:
    """Face detector + emotion classifier.

    ``model``: None (the shipped model), an ``.onnx`` file or a ``.pt`` checkpoint; ``runtime``: onnx (default,
    no torch needed), torch or auto (by file suffix); ``detector``: a name from
    :func:`emolens.faces.list_detectors` or a ``FaceDetector``; ``tta``: none, flip, shift or crops (averaged views,
    see :mod:`emolens.runtime`); ``detect=False`` treats every whole image as one face crop; ``margin``: the
    square crop's side is the detected box's longer side times (1 + margin), None = the detector's own
    (``FaceDetector.margin``, measured to match FER2013's framing); ``align``: rotate so the eyes are level when
    the detector finds them.
    """

    def __init__(self, model: str | Path | None = None, runtime: str = "onnx", detector: str | FaceDetector = "auto",
                 tta: str = DEFAULT_TTA, detect: bool = True, margin: float | None = None, align: bool = True,
                 threads: int = 0,
                 device: str = "cpu", max_pixels: int = MAX_PIXELS):
        if tta not in TTA_CHOICES:
            raise ValueError(f"unknown TTA mode {tta!r}: use one of {', '.join(TTA_CHOICES)}")
        self.classifier = load_classifier(model, runtime, threads=threads, device=device)
        self.classes: tuple[str, ...] = tuple(self.classifier.classes)
        self.tta, self.detect_faces_default = tta, detect
        self.margin, self.align, self.max_pixels = margin, align, max_pixels
        self._detectors: dict[str, FaceDetector] = {}
        self.detector_name = detector if isinstance(detector, str) else detector.name
        if isinstance(detector, FaceDetector):
            self._detectors[detector.name] = detector
        elif detect:
            self._detector(detector)  # fail now, not at the first image, on a bad name

    def _detector(self, name: str | None = None) -> FaceDetector:
        name = name or self.detector_name
        if name not in self._detectors:
            self._detectors[name] = create_detector(name)
        return self._detectors[name]

    @property
    def detector(self) -> FaceDetector:
        """The default face detector."""
        return self._detector()

    # -- pieces

    def load(self, image: ImageInput, channel_order: str = "bgr") -> np.ndarray:
        """Any input -> (H, W, 3) BGR or (H, W) gray uint8."""
        return to_bgr(image, channel_order, self.max_pixels)

    def detect_detailed(self, image: ImageInput, detector: str | None = None,
                        channel_order: str = "bgr") -> list[Detection]:
        """Detections (box, score, landmarks) sorted left to right."""
        img = self.load(image, channel_order)
        return sorted(self._detector(detector).detect_faces(img), key=lambda d: (d.box[0], d.box[1]))

    def detect(self, image: ImageInput, detector: str | None = None, channel_order: str = "bgr") -> list[Box]:
        """Face boxes (x, y, w, h), left to right."""
        return [d.box for d in self.detect_detailed(image, detector, channel_order)]

    def predict_faces(self, crops: np.ndarray | Sequence[np.ndarray], tta: str | None = None,
                      channel_order: str = "bgr") -> np.ndarray:
        """Face crops -> (N, 7) probabilities in ``self.classes`` order. (N, 48, 48) uint8 goes straight to the
        classifier; any other crops (a list of arrays of any size/colour) go through ``preprocess`` first."""
        if isinstance(crops, np.ndarray) and crops.ndim == 3 and crops.shape[1:] == (INPUT_SIZE, INPUT_SIZE) \
                and crops.dtype == np.uint8:
            faces = crops
        elif isinstance(crops, np.ndarray) and crops.ndim == 2:
            faces = preprocess(crops, channel_order)[None]
        else:
            faces = np.stack([preprocess(np.asarray(c), channel_order) for c in crops]) if len(crops) else \
                np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
        return self.classifier.predict_proba(faces, tta=tta or self.tta)

    def _faces(self, probs: np.ndarray, detections: Sequence[Detection]) -> list[Face]:
        out = []
        for p, d in zip(probs, detections, strict=True):
            i = int(np.argmax(p))
            out.append(Face(tuple(int(v) for v in d.box), self.classes[i], float(p[i]),
                            {c: float(v) for c, v in zip(self.classes, p, strict=True)}, d.landmarks))
        return out

    def _prepare(self, image: ImageInput, detector: str | None, detect: bool | None,
                 channel_order: str, boxes: Sequence[Sequence[float]] | None = None
                 ) -> tuple[list[Detection], np.ndarray]:
        """(detections left to right, (N, 48, 48) uint8 crops) of one image; ``boxes``: the user's own, in
        their order, instead of detection."""
        img = self.load(image, channel_order)
        if boxes is not None:
            dets = [Detection(b) for b in check_boxes(boxes, img.shape[1], img.shape[0])]
            return dets, face_crops(_as_color(img), dets, 0.2 if self.margin is None else self.margin, False)
        detect = self.detect_faces_default if detect is None else detect
        if not detect or is_face_crop(img):
            h, w = img.shape[:2]
            return [Detection((0, 0, w, h))], preprocess(img, "bgr")[None]
        color = _as_color(img)
        det = self._detector(detector)
        dets = sorted(det.detect_faces(color), key=lambda d: (d.box[0], d.box[1]))
        return dets, face_crops(color, dets, det.margin if self.margin is None else self.margin, self.align)

    # -- the API

    def predict(self, image: ImageInput, tta: str | None = None, detector: str | None = None,
                detect: bool | None = None, channel_order: str = "bgr",
                boxes: Sequence[Sequence[float]] | None = None) -> list[Face]:
        """Every face in ``image`` with its emotion, left to right (an empty list when there is none).

        ``boxes``: faces found by your own detector, ``[(x, y, w, h), ...]`` in pixels of the image; they are
        classified as given, in that order, with no detection (cropped with ``margin``, default 0.2, not
        rotated); a box that is not inside the image is a :class:`BoxError`."""
        dets, crops = self._prepare(image, detector, detect, channel_order, boxes)
        return self._faces(self.predict_faces(crops, tta), dets)

    def predict_batch(self, images: Iterable[ImageInput], tta: str | None = None, detector: str | None = None,
                      detect: bool | None = None, channel_order: str = "bgr") -> list[list[Face]]:
        """``predict`` for many images; the face crops of all of them go through the classifier in batches."""
        prepared = [self._prepare(im, detector, detect, channel_order) for im in images]
        if not prepared:
            return []
        crops = np.concatenate([c for _, c in prepared])
        probs = self.predict_faces(crops, tta)
        out, i = [], 0
        for dets, c in prepared:
            out.append(self._faces(probs[i:i + len(c)], dets))
            i += len(c)
        return out

    def draw(self, image: ImageInput, faces: Sequence[Face], channel_order: str = "bgr", bars: bool = True,
             mark_empty: bool = True):
        """A copy of ``image`` with each face's box, label and (``bars``) probability bars, or, with no face and
        ``mark_empty``, a "no face found" banner. Returns the same kind as given for numpy (same channel order)
        and PIL inputs; a BGR array for paths and bytes."""
        img = _as_color(self.load(image, channel_order)).copy()
        if faces:
            draw_faces(img, faces, self.classes, bars)
        elif mark_empty:
            draw_no_face(img)
        if isinstance(image, np.ndarray) and channel_order == "rgb":
            return np.ascontiguousarray(img[:, :, ::-1])
        if type(image).__module__.startswith("PIL."):
            from PIL import Image

            return Image.fromarray(np.ascontiguousarray(img[:, :, ::-1]))
        return img

    def top_emotion(self, image: ImageInput, channel_order: str = "bgr") -> tuple[str | None, float | None]:
        """(emotion, confidence 0-1) of the largest face, e.g. ``("happy", 0.93)``; ``(None, None)`` when the
        image has no face (as fer's ``FER.top_emotion``)."""
        faces = self.predict(image, channel_order=channel_order)
        if not faces:
            return None, None
        face = max(faces, key=lambda f: f.box[2] * f.box[3])
        return face.emotion, face.confidence

    def info(self) -> dict[str, Any]:
        """Model identity plus the detector and TTA in use."""
        return {**self.classifier.info(), "detector": self.detector_name, "tta": self.tta}


# ---------------------------------------------------------------------------------------------- one-liners


@functools.lru_cache(maxsize=1)
def _default_recognizer() -> EmotionRecognizer:
    return EmotionRecognizer()


def _largest_face(path: ImageInput) -> Face:
    faces = _default_recognizer().predict(path)
    if not faces:
        raise NoFaceError(f"{path if isinstance(path, str | os.PathLike) else 'image'}: no face found")
    return max(faces, key=lambda f: f.box[2] * f.box[3])


def predict_emotion(path: ImageInput) -> str:
    """The emotion of the largest face in an image, e.g. ``"happy"``; NoFaceError when there is none."""
    return _largest_face(path).emotion


def detect_emotion(path: ImageInput) -> tuple[str, float]:
    """(emotion, confidence in percent) of the largest face, e.g. ``("happy", 93.4)``; NoFaceError when none."""
    face = _largest_face(path)
    return face.emotion, round(100 * face.confidence, 2)


# ---------------------------------------------------------------------------------------------- files

def expand_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files, folders (searched recursively for images) and glob patterns -> (image files in order, messages
    for arguments that matched nothing). A missing file is kept as a file so that reading it reports it."""
    import glob

    files: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                problems.append(f"{p}: no image files in this folder")
            files += found
        elif p.exists() or not glob.has_magic(str(raw)):
            files.append(p)
        else:
            found = sorted(Path(f) for f in glob.glob(str(raw), recursive=True) if Path(f).is_file())
            if not found:
                problems.append(f"{raw}: no file matches")
            files += found
    seen: set[Path] = set()
    unique = [f for f in files if not (f in seen or seen.add(f))]
    return unique, problems


def load_boxes_file(path: str | Path) -> dict[str | None, list[list[float]]]:
    """Face boxes from a user's ``.json`` or ``.csv`` file -> {image path or name: [[x, y, w, h], ...]}, the key
    None standing for every image. JSON: ``[[x, y, w, h], ...]`` (every image) or ``{"photo.jpg": [[x, y, w,
    h], ...], ...}``. CSV: columns ``x, y, w, h`` and optionally ``path`` (one row per face; the
    ``predictions.csv`` that ``emolens predict`` writes is such a file). Boxes are checked against each image
    later (:func:`check_boxes`); a file that is not of this form is a BoxError."""
    import csv
    import json

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise BoxError(f"{p}: cannot read the boxes file ({e.strerror if isinstance(e, OSError) else e})") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise BoxError(f"{p}: not valid JSON ({str(e)[:80]})") from None
        if isinstance(data, list):
            return {None: data}
        if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
            return {str(k): v for k, v in data.items()}
        raise BoxError(f'{p}: expected [[x, y, w, h], ...] or {{"image.jpg": [[x, y, w, h], ...]}}')
    if p.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        cols = set(rows[0]) if rows else set()
        if not {"x", "y", "w", "h"} <= cols:
            raise BoxError(f"{p}: a boxes CSV needs the columns x, y, w, h (and path for several images)")
        out: dict[str | None, list[list[float]]] = {}
        for i, r in enumerate(rows, 2):
            try:
                box = [float(r[k]) for k in ("x", "y", "w", "h")]
            except (TypeError, ValueError):
                raise BoxError(f"{p}, line {i}: x, y, w, h must be numbers") from None
            out.setdefault(r.get("path") or None, []).append(box)
        return out
    raise BoxError(f"{p}: a boxes file must be .json or .csv")


def boxes_for(table: dict[str | None, list[list[float]]], path: str | Path) -> list[list[float]] | None:
    """The boxes of one image in a :func:`load_boxes_file` table: by the path as given, its resolved path or
    its file name; the None entry otherwise; None when the table has nothing for it."""
    p = Path(path)
    for key in (str(path), str(p.resolve()), p.name):
        if key in table:
            return table[key]
    for key in table:
        if key is not None and Path(key).resolve() == p.resolve():
            return table[key]
    return table.get(None)


@dataclass
class FileResult:
    """One input file of :func:`predict_files` (and of the Ray engine's ``cluster.predict_files``): its faces,
    or why it could not be read."""

    path: str
    faces: list[Face]
    error: str = ""
    size: tuple[int, int] = (0, 0)  # the image's width and height

    def to_dict(self) -> dict[str, Any]:
        """The JSON line ``emolens predict --json`` prints for this file."""
        if self.error:
            return {"path": self.path, "error": self.error, "faces": []}
        return {"path": self.path, "width": self.size[0], "height": self.size[1],
                "faces": [f.to_dict() for f in self.faces]}


def predict_files(recognizer: EmotionRecognizer, files: Iterable[str | Path], *,
                  boxes: dict[str | None, list[list[float]]] | None = None, annotate_dir: str | Path | None = None,
                  annotated_names: dict[Any, str] | None = None, bars: bool = True) -> Iterator[FileResult]:
    """``emolens predict`` on files, one :class:`FileResult` per file as it is done (a bad file is a result with
    ``error`` set, never an exception that stops the others). ``boxes``: a table from :func:`load_boxes_file`
    (the user's own face boxes instead of detection). ``annotate_dir``: also write each image with its faces drawn
    to ``annotate_dir / annotated_names[path]`` (atomically; ``bars``: with probability panels)."""
    from .checkpoint import atomic_write_bytes

    for path in files:
        try:
            img = to_bgr(path, max_pixels=recognizer.max_pixels)
            faces = recognizer.predict(img, boxes=None if boxes is None else boxes_for(boxes, path) or [])
        except (ImageError, BoxError) as e:
            yield FileResult(str(path), [], str(e))
            continue
        except Exception as e:  # one bad file must not stop the others, nor print a traceback
            yield FileResult(str(path), [], f"{path}: {type(e).__name__}: {e}")
            continue
        if annotate_dir is not None and annotated_names is not None:
            import cv2

            name = annotated_names[path]
            ok, enc = cv2.imencode(Path(name).suffix, recognizer.draw(img, faces, bars=bars))
            if ok:
                atomic_write_bytes(Path(annotate_dir) / name, enc.tobytes())
        yield FileResult(str(path), faces, "", (img.shape[1], img.shape[0]))


CSV_FIELDS = ("path", "face", "x", "y", "w", "h", "emotion", "confidence")


def predictions_csv(rows: Iterable[tuple[str, Sequence[Face]]], classes: Sequence[str]) -> str:
    """CSV text, one row per face: path, face index, box, emotion, confidence, p_<class>..."""
    import csv

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*CSV_FIELDS, *(f"p_{c}" for c in classes)])
    for path, faces in rows:
        for i, f in enumerate(faces):
            w.writerow([path, i, *f.box, f.emotion, f"{f.confidence:.6f}",
                        *(f"{f.probabilities[c]:.6f}" for c in classes)])
    return buf.getvalue()


def to_dataframe(results: Iterable[tuple[Any, Sequence[Face]]] | Sequence[Sequence[Face]],
                 classes: Sequence[str] | None = None):
    """Results as a pandas DataFrame, one row per face, with the columns of predictions.csv: ``path``, ``face``,
    ``x``, ``y``, ``w``, ``h``, ``emotion``, ``confidence``, ``p_<class>``. ``results``: ``(path, faces)`` pairs,
    or the lists of ``predict_batch`` (then ``path`` is the image's index). Needs pandas (not a dependency)::

        paths = ["a.jpg", "b.jpg"]
        df = to_dataframe(zip(paths, rec.predict_batch(paths)))
        df.groupby("emotion").size()
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_dataframe needs pandas, which emolens does not install: pip install pandas") from None
    pairs = [(r if isinstance(r, tuple) and len(r) == 2 and not isinstance(r[0], Face) else (i, r))
             for i, r in enumerate(results)]
    names = list(classes) if classes is not None else \
        next((list(fs[0].probabilities) for _, fs in pairs if fs), [])
    rows = [{"path": path, "face": k, "x": f.box[0], "y": f.box[1], "w": f.box[2], "h": f.box[3],
             "emotion": f.emotion, "confidence": f.confidence,
             **{f"p_{c}": f.probabilities.get(c, 0.0) for c in names}}
            for path, faces in pairs for k, f in enumerate(faces)]
    return pd.DataFrame(rows, columns=[*CSV_FIELDS, *(f"p_{c}" for c in names)])
