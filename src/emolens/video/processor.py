"""The frame pipeline: :class:`VideoProcessor` detects faces every ``detect_every`` frames, moves the tracks with
their motion model in between, classifies every tracked face on every frame and smooths the labels per track."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..predict import Face
from ..preprocess import CLASSES
from .crops import clip_box
from .smoothing import Smoother, encoder_for_classifier, make_smoother
from .tracking import Tracker


class VideoProcessor:
    """Frames in, :class:`~emolens.predict.Face` lists out, each with its ``track_id`` (one call per frame, in order).

    Detection runs every ``detect_every`` frames (the detector is by far the slowest part, and a tracked face
    moves little in a tenth of a second) on the frame as it is: the detector scales it to its own input
    (``detect_width`` > 0 shrinks it to that width first, faster but small faces are lost). Every tracked
    face is classified on every frame (the temporal model needs each frame).

    ``classifier``: an image classifier (:func:`emolens.runtime.load_classifier`); ``face_detector``: a
    :class:`emolens.faces.FaceDetector`; crops are cut as photos are: square, ``margin`` (None: the detector's
    own), eyes level when ``align``. ``smoother`` (a :class:`Smoother`, e.g. another stream's ``.new()``) replaces
    the one ``smooth`` / ``temporal_model`` / ``ema`` would choose. Build one from an
    :class:`emolens.predict.EmotionRecognizer` with :meth:`from_recognizer` (passing the recognizer as
    ``classifier`` does the same), or from model and detector names with :meth:`create`."""

    def __init__(self, classifier, face_detector, *, margin: float | None = None, align: bool = True,
                 smooth: str = "auto", temporal_model: str | None = None, ema: float = 0.3, detect_every: int = 3,
                 detect_width: int = 0, max_misses: int = 5, min_hits: int = 3, max_faces: int = 20,
                 reid_frames: int = 30, smoother: Smoother | None = None, warn: Callable[[str], None] | None = None):
        if detect_every < 1:
            raise ValueError("detect_every must be at least 1")
        if not hasattr(face_detector, "detect_faces"):
            raise TypeError("VideoProcessor needs a classifier and a face_detector; from an EmotionRecognizer: "
                            "VideoProcessor.from_recognizer(rec)")
        self.classifier = classifier
        self.face_detector = face_detector
        self.margin = face_detector.margin if margin is None else margin  # the detector's matches FER2013 framing
        self.align = align
        self.encoder = encoder_for_classifier(classifier)
        self.smoother = smoother if smoother is not None else make_smoother(
            smooth, self.encoder, temporal_model, ema, warn, getattr(classifier, "path", None))
        self.tracker = Tracker(max_misses=max_misses, min_hits=min_hits, reid_frames=reid_frames)
        self.detect_every = detect_every
        self.detect_width = detect_width
        self.max_faces = max_faces
        self.frame_index = 0
        self.angles: dict[int, float] = {}  # per track: the last eye angle seen, for aligned crops
        self.timing = {"detect": 0.0, "classify": 0.0, "smooth": 0.0, "detect_rounds": 0, "faces": 0}

    @classmethod
    def from_recognizer(cls, recognizer, **settings: Any) -> VideoProcessor:
        """The recognizer's classifier, default detector and crop settings (margin, align); ``settings``: the
        keyword options of the constructor."""
        return cls(recognizer.classifier, recognizer.detector, margin=recognizer.margin, align=recognizer.align,
                   **settings)

    @classmethod
    def create(cls, *, model: str | Path | None = None, runtime: str = "auto", detector: str = "auto",
               **settings: Any) -> VideoProcessor:
        """A processor over a new recognizer (``model`` None: the shipped one; no TTA, as video runs per frame)."""
        from ..predict import EmotionRecognizer

        return cls.from_recognizer(EmotionRecognizer(model=model, runtime=runtime, detector=detector, tta="none"),
                                   **settings)

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) face boxes in ``frame``'s pixels, largest first, and (N,) eye angles in degrees (NaN where
        the detector found no eyes)."""
        import cv2

        from ..faces import eye_angle

        h, w = frame.shape[:2]
        scale = min(1.0, self.detect_width / w) if self.detect_width else 1.0
        small = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else frame
        dets = sorted(self.face_detector.detect_faces(small), key=lambda d: -d.box[2] * d.box[3])
        dets = dets[:self.max_faces]
        boxes = np.asarray([d.box for d in dets], np.float64).reshape(-1, 4) / scale
        angles = np.array([eye_angle(d.landmarks) if d.landmarks else np.nan for d in dets], np.float64)
        return boxes, angles

    def classify(self, frame: np.ndarray, boxes: np.ndarray, angles: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 7) probabilities and (N, D) embeddings (or None) of the faces in ``boxes``."""
        from ..runtime import softmax

        crops = self.crops(frame, boxes, angles)
        if self.encoder is not None:
            logits, emb = self.encoder.encode(crops)
            return softmax(logits), emb
        return self.classifier.predict_proba(crops, tta="none"), None

    def crops(self, frame: np.ndarray, boxes: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        """(N, 48, 48) uint8 face crops, cut as the photo path cuts them (square, margin, eyes level)."""
        from ..faces import crop_face

        out = []
        for i, b in enumerate(boxes):
            a = float(angles[i]) if self.align and angles is not None else 0.0
            out.append(crop_face(frame, b, self.margin, a))
        return np.stack(out) if out else np.zeros((0, 48, 48), np.uint8)

    def process(self, frame: np.ndarray) -> list[Face]:
        """Track and label the faces of the next frame (BGR)."""
        h, w = frame.shape[:2]
        if frame.ndim == 2:
            import cv2

            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        t0 = time.perf_counter()
        if self.frame_index % self.detect_every == 0:
            boxes, angles = self.detect(frame)
            self.timing["detect"] += time.perf_counter() - t0
            self.timing["detect_rounds"] += 1
            tracks = self.tracker.step(boxes)
            for tid, a in zip(self.tracker.last_ids, angles, strict=True):
                if tid is not None and np.isfinite(a):  # eyes not found: keep the track's last angle
                    self.angles[tid] = a
        else:
            tracks = self.tracker.step(None)
        for tid in self.tracker.ended:
            self.smoother.drop(tid)
            self.angles.pop(tid, None)
        # a face carried out of the picture by its velocity is gone, not a crop of the border
        tracks = [t for t in tracks if min(clip_box(t.box, w, h)[2:]) >= 4]
        self.frame_index += 1
        if not tracks:
            return []
        boxes = np.stack([clip_box(t.box, w, h) for t in tracks])
        t1 = time.perf_counter()
        probs, emb = self.classify(frame, boxes, np.array([self.angles.get(t.id, 0.0) for t in tracks]))
        t2 = time.perf_counter()
        out = []
        for i, t in enumerate(tracks):
            p = np.asarray(self.smoother.update(t.id, probs[i], None if emb is None else emb[i]), np.float64)
            out.append(Face(tuple(int(round(v)) for v in boxes[i]), CLASSES[int(p.argmax())], float(p.max()),
                            {c: float(v) for c, v in zip(CLASSES, p, strict=True)}, track_id=int(t.id),
                            detected=bool(t.detected)))
        self.timing["classify"] += t2 - t1
        self.timing["smooth"] += time.perf_counter() - t2
        self.timing["faces"] += len(tracks)
        return out
