"""Face detection behind one interface, and the square (optionally eye-aligned) crops fed to the classifier.

Every detector has ``detect(image_bgr) -> [(x, y, w, h)]`` and ``detect_faces(image_bgr) -> [Detection]``
(box, score and, where the detector finds them, eye landmarks). ``create_detector(name)`` builds one by name;
``"auto"`` is the best detector installed, falling back to OpenCV's Haar cascade, which ships with OpenCV.
Crops go through :func:`emolens.preprocess.preprocess`, the one preprocessing every path shares.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .preprocess import INPUT_SIZE, preprocess, to_gray

Box = tuple[int, int, int, int]


class DetectorError(ValueError):
    """An unknown detector name, or one whose package is not installed."""


@dataclass
class Detection:
    """One face: ``box`` (x, y, w, h) in pixels of the image given, ``score`` (detector-specific, higher is
    surer), ``landmarks`` name -> (x, y), with at least ``left_eye`` and ``right_eye`` (the eyes as they appear
    in the image: left_eye has the smaller x on an upright face) when the detector finds them."""

    box: Box
    score: float = 1.0
    landmarks: dict[str, tuple[float, float]] | None = field(default=None)


class FaceDetector:
    """Base class: subclasses implement ``detect_faces``. ``margin``: the crop margin (see :func:`square_crop`)
    that best reproduces FER2013's framing from this detector's boxes (detectors draw boxes of different
    extent; measured by classifying FER2013 PublicTest faces re-found in 640x480 frames)."""

    name: str = ""
    margin: float = 0.2

    def detect_faces(self, image: np.ndarray) -> list[Detection]:  # pragma: no cover - abstract
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Box]:
        """(H, W, 3) BGR or (H, W) gray uint8 -> face boxes (x, y, w, h)."""
        return [d.box for d in self.detect_faces(image)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _clip_box(x: float, y: float, w: float, h: float, width: int, height: int) -> Box | None:
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(width, int(round(x + w))), min(height, int(round(y + h)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return (x0, y0, x1 - x0, y1 - y0)


# ---------------------------------------------------------------------------------------------- Haar


class HaarDetector(FaceDetector):
    """OpenCV's frontal-face Haar cascade (ships inside opencv-python-headless<5).

    Tuned for speed: the frame is first shrunk so its longer side is at most ``max_side`` pixels (the cascade
    cost grows with pixel count and its smallest window is 24 px anyway), faces smaller than ``min_face`` of
    the shorter side are not searched for, and eyes are looked for (only inside each face's upper half) when
    ``eyes`` is true, for alignment.
    """

    name = "haar"
    margin = 0.1  # Haar boxes reach higher up the forehead than dlib's

    def __init__(self, max_side: int = 480, min_face: float = 0.06, scale_factor: float = 1.1,
                 min_neighbors: int = 5, eyes: bool = True, cascade: str = "haarcascade_frontalface_default.xml"):
        import cv2

        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + cascade)
        if self.cascade.empty():
            raise DetectorError(f"OpenCV has no {cascade}: install opencv-python-headless<5 (OpenCV 5 dropped it)")
        self.eye_cascade = _eye_cascade() if eyes else None
        self.max_side, self.min_face = max_side, min_face
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        import cv2

        gray = to_gray(image, "bgr")
        height, width = gray.shape
        scale = min(1.0, self.max_side / max(height, width))
        small = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA) if scale < 1 else gray
        small = cv2.equalizeHist(small)
        side = max(20, int(self.min_face * min(small.shape)))
        found = self.cascade.detectMultiScale3(small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                               minSize=(side, side), outputRejectLevels=True)
        rects, weights = found[0], found[2]
        out = []
        for (x, y, w, h), score in zip(rects, weights, strict=False):
            box = _clip_box(x / scale, y / scale, w / scale, h / scale, width, height)
            if box is None:
                continue
            marks = find_eyes(self.eye_cascade, gray, box) if self.eye_cascade is not None else None
            out.append(Detection(box, float(score), marks))
        return out


def _eye_cascade():
    import cv2

    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")


def find_eyes(eye_cascade, gray: np.ndarray, box: Box) -> dict[str, tuple[float, float]] | None:
    """Eye centres from OpenCV's eye cascade inside the face's upper half, one per side, or None: landmarks
    for detectors that give none, used to level the eyes."""
    import cv2

    x, y, w, h = box
    roi = gray[y:y + h // 2 + h // 10, x:x + w]
    scale = min(1.0, 160 / max(1, w))  # eyes are found as well at 160 px face width, much faster
    if scale < 1:
        roi = cv2.resize(roi, (max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    side = max(8, int(0.15 * w * scale))
    eyes = eye_cascade.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=5, minSize=(side, side),
                                        maxSize=(int(0.45 * w * scale) + 1,) * 2)
    left = [e for e in eyes if e[0] + e[2] / 2 < roi.shape[1] / 2]
    right = [e for e in eyes if e[0] + e[2] / 2 >= roi.shape[1] / 2]
    if not left or not right:
        return None
    le, re = max(left, key=lambda e: e[2]), max(right, key=lambda e: e[2])
    centre = lambda e: (x + (e[0] + e[2] / 2) / scale, y + (e[1] + e[3] / 2) / scale)
    (lx, ly), (rx, ry) = centre(le), centre(re)
    # two boxes that are not at a plausible eye distance are a mis-detection (eyebrow, nostril)
    if not 0.25 * w <= math.hypot(rx - lx, ry - ly) <= 0.75 * w:
        return None
    return {"left_eye": (float(lx), float(ly)), "right_eye": (float(rx), float(ry))}


# ---------------------------------------------------------------------------------------------- dlib


class DlibDetector(FaceDetector):
    """dlib's HOG + linear SVM face detector (``pip install dlib-bin``; the model is compiled into dlib, nothing
    to download): five filters (frontal, turned left/right, tilted left/right), so it also finds heads tilted by
    30 degrees, which Haar misses, with fewer false alarms. Faces from about 64 px at the working size are found
    (``upsample=1``: from about 32 px, 4x slower). The working size: the longer side at most ``max_side``, the
    shorter at least ``min_side`` (small frames are enlarged). Hits scoring below ``verify_below`` are kept only
    when OpenCV's eye cascade finds two eyes in them: that removes the false hits seen (the astronaut's round suit
    patch scored 0.035-0.14, no eyes) and keeps 96.5% of the true faces (of 548 on test frames, vs 96.9% for a
    plain 0.1 score threshold, which let the patch through at one scale). Eyes also give the alignment."""

    name = "dlib"

    def __init__(self, max_side: int = 1024, min_side: int = 480, upsample: int = 0, threshold: float = 0.0,
                 verify_below: float = 0.2, eyes: bool = True, box_scale: float = 1.0):
        try:
            import dlib
        except ImportError:
            raise DetectorError("face detector 'dlib' needs dlib: pip install \"emolens[dlib]\" (or dlib-bin)") \
                from None
        self.detector = dlib.get_frontal_face_detector()
        self.eye_cascade = _eye_cascade()
        self.max_side, self.min_side, self.upsample, self.threshold = max_side, min_side, upsample, threshold
        self.verify_below, self.eyes, self.box_scale = verify_below, eyes, box_scale

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        import cv2

        gray = to_gray(image, "bgr")
        height, width = gray.shape
        scale = min(self.max_side / max(height, width), max(1.0, self.min_side / min(height, width)))
        work = gray if abs(scale - 1) < 1e-3 else cv2.resize(
            gray, (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        rects, scores, _ = self.detector.run(np.ascontiguousarray(work), self.upsample, self.threshold)
        out = []
        for r, score in zip(rects, scores, strict=True):
            w, h = (r.right() - r.left()) * self.box_scale, (r.bottom() - r.top()) * self.box_scale
            cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
            box = _clip_box((cx - w / 2) / scale, (cy - h / 2) / scale, w / scale, h / scale, width, height)
            if box is None:
                continue
            marks = find_eyes(self.eye_cascade, gray, box) if self.eyes or score < self.verify_below else None
            if score < self.verify_below and marks is None:
                continue
            out.append(Detection(box, float(score), marks if self.eyes else None))
        return out


# ---------------------------------------------------------------------------------------------- BlazeFace


class BlazeFaceDetector(FaceDetector):
    """MediaPipe's BlazeFace CNN on ONNX Runtime (the models ship inside emolens: nothing to download; see
    :mod:`emolens.blazeface`). The short-range model sees the whole image (faces filling 15-100 % of it); the
    full-range one sees an image pyramid from the whole image at 192 px up to the scale where ``min_face``
    pixels (default 24) are the smallest face it finds, so faces from ``min_face`` to frame-filling are found
    in images of any size (a scale never makes the longer side exceed ``max_side``). Each face comes with its
    eye, nose and mouth keypoints: the alignment uses the eyes, no second pass. Score thresholds: ``min_score``
    0.5 (MediaPipe's) for the full-range model, ``short_min_score`` 0.65 for the short-range one, whose hits
    below that were the benchmark's false faces on face-free photos (a colour wheel at 0.63); measured by
    ``emolens bench predict --detector-quality``: 100/100 synthetic faces and 72.8 % of FER2013 faces found,
    1 false hit in 100 synthetic frames, none in 17 face-free photos (0.65 for both: FER2013 recall 54 %)."""

    name = "blazeface"
    margin = 0.15  # its boxes sit a little lower and tighter than FER2013's crops (emolens bench predict
    # --detector-quality: mean IoU with the FER2013 crop 0.747 at 0.15, 0.742 at 0.2, 0.738 at 0.1)

    def __init__(self, min_face: float = 24.0, min_score: float = 0.5, short_min_score: float = 0.65,
                 short_range: bool = True, threads: int = 0, max_side: int = 2048):
        from .blazeface import BlazeFace

        if not min_face > 0:
            raise DetectorError(f"min_face must be positive, not {min_face}")
        try:
            self.full = BlazeFace("full", min_score, threads=threads)
            self.short = BlazeFace("short", short_min_score, threads=threads) if short_range else None
        except FileNotFoundError as e:
            raise DetectorError(str(e)) from None
        self.min_face, self.max_side = float(min_face), max_side

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        import cv2

        if image.ndim == 2:
            rgb = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        extra = self.short.run(rgb) if self.short is not None else None
        boxes, keypoints, scores = self.full.detect(rgb, self.min_face, self.max_side, extra)
        out = []
        for (x0, y0, x1, y1), kp, score in zip(boxes, keypoints, scores, strict=True):
            box = _clip_box(x0, y0, x1 - x0, y1 - y0, width, height)
            if box is None:
                continue
            # the model's first eye is the subject's right one, on the image's left
            marks = {name: (float(kp[i, 0]), float(kp[i, 1])) for i, name in
                     enumerate(("left_eye", "right_eye", "nose", "mouth"))}
            out.append(Detection(box, float(score), marks))
        return out


# ---------------------------------------------------------------------------------------------- registry

#: name -> (factory, one-line description); "auto" picks the first available of AUTO_ORDER.
_DETECTORS: dict[str, tuple[Callable[..., FaceDetector], str]] = {
    "blazeface": (BlazeFaceDetector, "MediaPipe BlazeFace CNN on ONNX Runtime (shipped): faces from 24 px to "
                                     "frame-filling, any image size, eye keypoints"),
    "haar": (HaarDetector, "OpenCV Haar cascade (frontal faces), ships with opencv-python-headless<5"),
    "dlib": (DlibDetector, "dlib HOG + SVM, faces from ~64 px, heads tilted up to 30 degrees (dlib-bin)"),
    "dlib-small": (functools.partial(DlibDetector, upsample=1), "dlib on a 2x enlarged frame: faces from ~32 px, "
                                                                "4x slower"),
}
AUTO_ORDER: tuple[str, ...] = ("blazeface", "dlib", "haar")


def list_detectors() -> list[str]:
    """Detector names ``create_detector`` knows (installed or not), plus ``auto``."""
    return ["auto", *_DETECTORS]


def available_detectors() -> list[str]:
    """Detector names whose packages are installed and load."""
    names = []
    for name in _DETECTORS:
        try:
            create_detector(name)
        except DetectorError:
            continue
        names.append(name)
    return names


def create_detector(name: str = "auto", **kwargs) -> FaceDetector:
    """A detector by name: ``auto`` (best installed), or one of :func:`list_detectors`."""
    if isinstance(name, FaceDetector):
        return name
    if name == "auto":
        errors = []
        for candidate in AUTO_ORDER:
            try:
                return create_detector(candidate, **kwargs)
            except DetectorError as e:
                errors.append(str(e))
        raise DetectorError("no face detector available: " + "; ".join(errors))
    if name not in _DETECTORS:
        raise DetectorError(f"unknown face detector {name!r}: use one of {', '.join(list_detectors())}")
    try:
        det = _DETECTORS[name][0](**kwargs)
    except ImportError as e:
        raise DetectorError(f"face detector {name!r} needs a package that is not installed ({e})") from None
    det.name = name
    return det


# ---------------------------------------------------------------------------------------------- crops


def eye_angle(landmarks: dict[str, tuple[float, float]] | None) -> float:
    """Degrees to rotate the face by so the eyes are level (0 when the eyes are unknown)."""
    if not landmarks or "left_eye" not in landmarks or "right_eye" not in landmarks:
        return 0.0
    (lx, ly), (rx, ry) = landmarks["left_eye"], landmarks["right_eye"]
    return math.degrees(math.atan2(ry - ly, rx - lx))


def square_crop(image: np.ndarray, box: Box, margin: float = 0.2, angle: float = 0.0) -> np.ndarray:
    """The square of side ``max(w, h) * (1 + margin)`` centred on ``box``, rotated by ``angle`` degrees about
    the box centre (counter-clockwise, as OpenCV). Pixels outside the image repeat the border. Native
    resolution: :func:`preprocess` does the one resize."""
    import cv2

    x, y, w, h = box
    side = max(2, int(round(max(w, h) * (1 + margin))))
    cx, cy = x + w / 2, y + h / 2
    if abs(angle) < 0.5:  # plain slicing: exact pixels, no interpolation
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        height, width = image.shape[:2]
        pads = (max(0, -y0), max(0, y0 + side - height), max(0, -x0), max(0, x0 + side - width))
        crop = image[max(0, y0):min(height, y0 + side), max(0, x0):min(width, x0 + side)]
        if any(pads):
            crop = cv2.copyMakeBorder(np.ascontiguousarray(crop), *pads, cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(crop)
    m = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    m[:, 2] += (side / 2 - cx, side / 2 - cy)
    return cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


#: Eye angles (degrees) below this are left as they are, not levelled. FER2013's own faces are not aligned, so
#: the model learnt their natural tilts. Measured by `emolens bench predict --detector-quality` (blazeface at its
#: 0.15 margin, shipped model, no TTA, 600 PublicTest faces re-found upright / tilted 10-25 degrees): never
#: levelling 67.0 / 56.6 %, levelling every face 64.7 / 61.7 %, from 12 degrees 65.6 / 62.8 %, from 18 degrees
#: 66.5 / 61.2 %, from 26 degrees 67.0 / 58.8 %. 18 keeps upright faces within two faces of unlevelled and buys
#: 4.5 points on tilted heads.
ALIGN_MIN_DEG: float = 18.0


def crop_face(image: np.ndarray, box: Sequence[float], margin: float = 0.2, angle: float = 0.0,
              size: int = INPUT_SIZE, min_tilt: float = ALIGN_MIN_DEG) -> np.ndarray:
    """The one crop of the package: (H, W, 3) BGR or (H, W) gray image + a face box (x, y, w, h) -> the
    (size, size) uint8 classifier input (:func:`square_crop`, then :func:`preprocess`). Photos, video frames,
    the live stream and sequence training all cut faces here, so the same face gives the same crop. ``angle``
    (the eye angle, :func:`eye_angle`) is corrected only when it is at least ``min_tilt`` degrees
    (:data:`ALIGN_MIN_DEG`: small tilts are part of what the model learnt)."""
    angle = angle if abs(angle) >= min_tilt else 0.0
    return preprocess(square_crop(image, tuple(int(round(v)) for v in box), margin, angle), "bgr", size)


def face_crops(image: np.ndarray, detections: list[Detection], margin: float = 0.2, align: bool = True,
               size: int = INPUT_SIZE, min_tilt: float = ALIGN_MIN_DEG) -> np.ndarray:
    """(H, W, 3) BGR image + detections -> (N, size, size) uint8 classifier input (:func:`crop_face` each;
    ``align``: level the eyes of faces tilted by ``min_tilt`` degrees or more)."""
    crops = [crop_face(image, d.box, margin, eye_angle(d.landmarks) if align else 0.0, size, min_tilt)
             for d in detections]
    return np.stack(crops) if crops else np.zeros((0, size, size), np.uint8)
