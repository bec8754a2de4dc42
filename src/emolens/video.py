"""Video, camera and stream input: follow each face and label it over time.

* :class:`Tracker` links the faces found in successive frames into tracks with stable ids: greedy matching
  on IoU and centre distance against a constant-velocity prediction; a track survives ``max_misses``
  detection rounds without a match (a turned head, a hand in front).
* :class:`VideoProcessor` detects faces on a downscaled frame every ``detect_every`` frames, moves the
  tracks with their motion model in between, classifies every tracked face on every frame and smooths
  the labels per track: the temporal LSTM over the last frames (``emolens.temporal``), an exponential
  moving average, or none.
* :func:`process_video` (``emolens video``) writes an annotated video, a CSV timeline and a plot;
  :func:`run_webcam` (``emolens webcam``) shows a live window; :func:`bench_video` measures speed.

Outputs are written to a temporary file and renamed when done, so a reader never sees half a file; a
stream that stops early keeps what was processed. Frames are never stored unless an output is asked for.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError
from .preprocess import CLASSES, preprocess


class VideoError(DataError):
    """A video or stream that cannot be read (missing, not a video, truncated, empty)."""


# ----------------------------------------------------------------------------------------------------
# tracking


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in (N, 4) ``a`` with every box in (M, 4) ``b``, boxes as (x, y, w, h) -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax2[:, None], bx2[None]) - np.maximum(a[:, 0:1], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(ay2[:, None], by2[None]) - np.maximum(a[:, 1:2], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


@dataclass
class Track:
    """One followed face. ``box`` (x, y, w, h) float, smoothed; ``velocity`` of its centre, px per frame."""

    id: int
    box: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    hits: int = 1  # detection rounds matched
    misses: int = 0  # detection rounds in a row without a match
    age: int = 0  # frames since it started
    detected: bool = True  # matched on the current frame's detection round
    confirmed: bool = True  # seen on min_hits detection rounds in a row (tentative tracks are not shown)
    last_center: np.ndarray = field(default_factory=lambda: np.zeros(2))
    frames_since_update: int = 0

    @property
    def center(self) -> np.ndarray:
        return self.box[:2] + self.box[2:] / 2


class Tracker:
    """Faces per frame -> tracks with stable ids.

    Call :meth:`step` once per frame with that frame's boxes, or ``None`` on frames where the detector
    did not run (the tracks then move with their velocity). A detection joins the track whose predicted
    box it overlaps most (IoU) or, failing overlap, whose centre is nearest within ``max_distance`` box
    sizes; pairs are taken best first. A track unmatched for more than ``max_misses`` detection rounds ends.
    A new track is tentative until matched on ``min_hits`` rounds in a row, and a tentative track that misses
    a round ends: a detector's one-off false positive never shows (faces found on the first round are
    shown at once).

    An ended confirmed track is kept aside for ``reid_frames`` frames since it was last seen (30: one second
    at 30 fps): a new face of about its size (``reid_size`` times at most) within ``reid_distance`` of its
    sizes from where it was last seen takes its id back, so a face that leaves the picture or is hidden for
    a moment keeps its one track (and its one timeline).

    >>> t = Tracker(); [tr.id for tr in t.step([(10, 10, 50, 50)])]
    [1]
    """

    def __init__(self, max_misses: int = 5, iou_threshold: float = 0.1, max_distance: float = 1.0,
                 velocity_smoothing: float = 0.5, size_smoothing: float = 0.4, min_hits: int = 1,
                 reid_frames: int = 30, reid_distance: float = 4.0, reid_size: float = 1.6):
        self.max_misses = max_misses
        self.iou_threshold = iou_threshold
        self.max_distance = max_distance
        self.velocity_smoothing = velocity_smoothing
        self.size_smoothing = size_smoothing
        self.min_hits = min_hits
        self.reid_frames, self.reid_distance, self.reid_size = reid_frames, reid_distance, reid_size
        self.tracks: list[Track] = []
        self.lost: list[Track] = []  # ended confirmed tracks that a returning face may take back
        self.next_id = 1
        self.ended: list[int] = []  # ids of tracks ended for good on the last step (not coming back)
        self.last_ids: list[int | None] = []  # the track id of each detection of the last update
        self.rounds = 0  # detection rounds so far

    def predict(self) -> None:
        """Advance every track one frame along its velocity; lost tracks stay where they were last seen."""
        for t in self.tracks:
            t.box = t.box.copy()
            t.box[:2] += t.velocity
            t.age += 1
            t.frames_since_update += 1
        for t in self.lost:
            t.frames_since_update += 1
        expired = [t for t in self.lost if t.frames_since_update > self.reid_frames]
        self.ended += [t.id for t in expired]
        self.lost = [t for t in self.lost if t not in expired]

    def update(self, boxes: Sequence[Sequence[float]] | np.ndarray) -> list[int | None]:
        """Match this frame's detections (N, 4) to the (already predicted) tracks; returns the track id
        each detection went to (None for an empty box)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        valid = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        ids: list[int | None] = [None] * len(boxes)
        pairs: list[tuple[float, int, int]] = []
        if self.tracks and len(boxes):
            tb = np.stack([t.box for t in self.tracks])
            iou = iou_matrix(tb, boxes)
            tc = tb[:, :2] + tb[:, 2:] / 2
            bc = boxes[:, :2] + boxes[:, 2:] / 2
            size = (np.sqrt(tb[:, 2] * tb[:, 3])[:, None] + np.sqrt(boxes[:, 2] * boxes[:, 3])[None]) / 2
            dist = np.linalg.norm(tc[:, None] - bc[None], axis=2) / np.maximum(size, 1e-6)
            near = ((iou >= self.iou_threshold) | (dist <= self.max_distance)) & valid[None]
            for i, j in zip(*np.nonzero(near), strict=True):
                pairs.append((float(iou[i, j] + 0.5 * max(0.0, 1 - dist[i, j] / self.max_distance)), int(i), int(j)))
        pairs.sort(reverse=True)
        used_t, used_b = set(), set()
        for _, i, j in pairs:
            if i in used_t or j in used_b:
                continue
            used_t.add(i)
            used_b.add(j)
            self._match(self.tracks[i], boxes[j])
            ids[j] = self.tracks[i].id
        for i, t in enumerate(self.tracks):
            if i not in used_t:
                t.misses += 1
                t.detected = False
                t.velocity *= 0.8  # an unseen face is more likely to stop than to keep going
        gone = [t for t in self.tracks if t.misses > self.max_misses or (t.misses and not t.confirmed)]
        for t in gone:
            if t.confirmed and self.reid_frames > 0:
                t.box = np.concatenate([t.last_center - t.box[2:] / 2, t.box[2:]])  # where it was last seen
                t.velocity = np.zeros(2)
                self.lost.append(t)
            else:
                self.ended.append(t.id)
        self.tracks = [t for t in self.tracks if t not in gone]
        self.rounds += 1
        for j, b in enumerate(boxes):
            if j not in used_b and valid[j]:
                back = self._take_back(b)
                if back is not None:
                    self._match(back, b)
                    self.tracks.append(back)
                    ids[j] = back.id
                    continue
                self.tracks.append(Track(self.next_id, b.copy(), last_center=b[:2] + b[2:] / 2,
                                         confirmed=self.min_hits <= 1 or self.rounds == 1))
                ids[j] = self.next_id
                self.next_id += 1
        self.last_ids = ids
        return ids

    def _take_back(self, b: np.ndarray) -> Track | None:
        """The lost track nearest to box ``b`` that is about its size and near where it was last seen."""
        best, best_d = None, float("inf")
        size = math.sqrt(b[2] * b[3])
        for t in self.lost:
            t_size = math.sqrt(t.box[2] * t.box[3])
            if not 1 / self.reid_size <= size / max(t_size, 1e-6) <= self.reid_size:
                continue
            d = float(np.linalg.norm(b[:2] + b[2:] / 2 - t.last_center)) / max((size + t_size) / 2, 1e-6)
            if d <= self.reid_distance and d < best_d:
                best, best_d = t, d
        if best is not None:
            self.lost.remove(best)
            best.misses, best.frames_since_update = 0, 1
            best.last_center = b[:2] + b[2:] / 2  # no velocity from the jump across the gap
        return best

    def _match(self, t: Track, b: np.ndarray) -> None:
        c_new = b[:2] + b[2:] / 2
        v_meas = (c_new - t.last_center) / max(t.frames_since_update, 1)
        a = self.velocity_smoothing if t.hits > 1 else 1.0
        t.velocity = a * v_meas + (1 - a) * t.velocity
        size = (1 - self.size_smoothing) * b[2:] + self.size_smoothing * t.box[2:]  # steadier crops
        t.box = np.concatenate([c_new - size / 2, size])
        t.last_center = c_new
        t.frames_since_update = 0
        t.hits += 1
        t.misses = 0
        t.detected = True
        t.confirmed = t.confirmed or t.hits >= self.min_hits

    def step(self, boxes: Sequence[Sequence[float]] | np.ndarray | None) -> list[Track]:
        """One frame: predict, match ``boxes`` if the detector ran, return the visible tracks (matched on
        the latest detection round and confirmed by ``min_hits``)."""
        self.ended = []
        self.predict()
        if boxes is not None:
            self.update(boxes)
        else:
            for t in self.tracks:
                t.detected = False
        return self.visible()

    def visible(self) -> list[Track]:
        return [t for t in self.tracks if t.misses == 0 and t.confirmed]


class StreamTracker:
    """Track ids for per-frame face dicts (as the HTTP API returns them): ``update(faces)`` adds
    ``track_id`` to each ``{"box": [x, y, w, h], ...}``, and with ``smoothing`` > 0 an EMA of
    ``probabilities`` per track (``emotion``/``confidence`` follow it)."""

    def __init__(self, max_misses: int = 5, smoothing: float = 0.0, reid_frames: int = 30):
        self.tracker = Tracker(max_misses=max_misses, reid_frames=reid_frames)
        self.alpha = 1.0 - smoothing
        self.state: dict[int, np.ndarray] = {}

    def update(self, faces: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.tracker.step([f["box"] for f in faces])
        ids = self.tracker.last_ids
        for tid in self.tracker.ended:
            self.state.pop(tid, None)
        out = []
        for f, tid in zip(faces, ids, strict=True):
            f = {"track_id": tid, **f}
            probs = f.get("probabilities")
            if self.alpha < 1.0 and isinstance(probs, dict) and tid is not None:
                p = np.array([probs[c] for c in CLASSES], np.float64)
                q = self.state.get(tid)
                q = p if q is None else self.alpha * p + (1 - self.alpha) * q
                self.state[tid] = q
                f["probabilities"] = {c: round(float(v), 4) for c, v in zip(CLASSES, q, strict=True)}
                f["emotion"], f["confidence"] = CLASSES[int(q.argmax())], round(float(q.max()), 4)
            out.append(f)
        return out


# ----------------------------------------------------------------------------------------------------
# per-track smoothing


class Smoother:
    """Per-track label smoothing: ``update(track_id, probs (7,), emb (D,)) -> probs (7,)``."""

    name = "none"

    def update(self, track_id: int, probs: np.ndarray, emb: np.ndarray | None) -> np.ndarray:
        return probs

    def drop(self, track_id: int) -> None:
        pass


class EmaSmoother(Smoother):
    """q_t = alpha p_t + (1 - alpha) q_{t-1} per track."""

    def __init__(self, alpha: float = 0.3):
        if not 0 < alpha <= 1:
            raise ValueError("EMA alpha must be in (0, 1]")
        self.alpha = alpha
        self.name = f"ema {alpha:g}"
        self.state: dict[int, np.ndarray] = {}

    def update(self, track_id: int, probs: np.ndarray, emb: np.ndarray | None) -> np.ndarray:
        q = self.state.get(track_id)
        q = probs if q is None else self.alpha * probs + (1 - self.alpha) * q
        self.state[track_id] = q
        return q

    def drop(self, track_id: int) -> None:
        self.state.pop(track_id, None)


class TemporalSmoother(Smoother):
    """The temporal LSTM over each track's last ``head.window`` frame embeddings (the frame being labelled
    last), as in training (:meth:`emolens.temporal.TemporalHead.predict_windowed`)."""

    name = "temporal"

    def __init__(self, head):
        self.head = head
        self.state: dict[int, deque] = {}

    def update(self, track_id: int, probs: np.ndarray, emb: np.ndarray | None) -> np.ndarray:
        from .runtime import softmax

        if emb is None:
            return probs
        buf = self.state.setdefault(track_id, deque(maxlen=self.head.window))
        buf.append(np.asarray(emb, np.float32))
        logits = self.head.logits(np.stack(buf)[None])[0, -1]
        return softmax(logits[None])[0]

    def drop(self, track_id: int) -> None:
        self.state.pop(track_id, None)


# ----------------------------------------------------------------------------------------------------
# the frame pipeline


@dataclass
class TrackedFace:
    """One face on one frame: track id, box (x, y, w, h) ints, smoothed emotion and probabilities."""

    track_id: int
    box: tuple[int, int, int, int]
    emotion: str
    confidence: float
    probabilities: dict[str, float]
    detected: bool = True  # box from this frame's detector (else moved by the tracker)

    def to_dict(self) -> dict[str, Any]:
        return {"track_id": self.track_id, "box": list(self.box), "emotion": self.emotion,
                "confidence": round(self.confidence, 4),
                "probabilities": {k: round(v, 4) for k, v in self.probabilities.items()}, "detected": self.detected}


def _recognizer(model: str | None, runtime: str, detector: str):
    from .predict import EmotionRecognizer

    return EmotionRecognizer(model=model, runtime=runtime, detector=detector, tta="none")


def frame_encoder_for(recognizer) -> Any:
    """A :class:`emolens.temporal.FrameEncoder` over the recognizer's classifier, or None when the model
    gives no embeddings (an ONNX file exported without the ``embedding`` output)."""
    from .runtime import ModelError
    from .temporal import OnnxFrameEncoder, TorchFrameEncoder

    clf = recognizer.classifier
    if getattr(clf, "runtime", "") == "torch":
        return TorchFrameEncoder(clf.model, getattr(clf, "device", "cpu"))
    try:
        return OnnxFrameEncoder.from_classifier(clf)
    except ModelError:
        return None


def make_smoother(smooth: str, encoder, temporal_model: str | None = None, ema: float = 0.3,
                  warn: Callable[[str], None] | None = None, image_model: str | Path | None = None) -> Smoother:
    """``smooth`` temporal | ema | none | auto (temporal when a temporal model fits the image model, else EMA).
    ``image_model``: the image checkpoint a ``.pt`` temporal model is loaded with (the encoder's file)."""
    from .checkpoint import CheckpointError
    from .runtime import ModelError
    from .temporal import OnnxTemporalHead, TorchTemporalHead, check_probe, default_temporal_path

    if smooth not in ("auto", "temporal", "ema", "none"):
        raise ValueError(f"unknown smoothing {smooth!r}: use auto, temporal, ema or none")
    if smooth == "none":
        return Smoother()
    if smooth == "ema":
        return EmaSmoother(ema)
    try:
        if encoder is None:
            raise ModelError("the image model gives no embeddings (export it again with `emolens export`)")
        path = Path(temporal_model) if temporal_model else default_temporal_path("onnx")
        if smooth == "auto" and not temporal_model and not path.is_file():
            return EmaSmoother(ema)  # no temporal model shipped: the summary line says which smoothing ran
        if path.suffix == ".pt":
            from .temporal import load_temporal_model

            model, ckpt = load_temporal_model(path, image_model if Path(str(image_model)).suffix == ".pt" else None)
            head = TorchTemporalHead(model, meta=ckpt)
            probe = ckpt["encoder"]["probe"]
        else:
            head = OnnxTemporalHead(path)
            probe = head.meta.get("encoder", {}).get("probe", [])
        if head.dim != encoder.dim:
            raise ModelError(f"{path}: reads {head.dim}-d embeddings, the image model gives {encoder.dim}-d")
        if len(probe):
            check_probe(encoder, np.asarray(probe, np.float32), str(path))
        return TemporalSmoother(head)
    except (ModelError, CheckpointError) as e:
        if smooth == "temporal":
            raise
        if warn:
            warn(f"note: temporal model not used ({e}); smoothing with an EMA of probabilities instead")
        return EmaSmoother(ema)


class VideoProcessor:
    """Frames in, :class:`TrackedFace` lists out (one call per frame, in order).

    Detection runs every ``detect_every`` frames (the detector is by far the slowest part, and a tracked face
    moves little in a tenth of a second) on the frame as it is: the detector scales it to its own input
    (``detect_width`` > 0 shrinks it to that width first, faster but small faces are lost). Every tracked
    face is classified on every frame (the temporal model needs each frame)."""

    def __init__(self, recognizer=None, *, model: str | None = None, runtime: str = "auto", detector: str = "auto",
                 smooth: str = "auto", temporal_model: str | None = None, ema: float = 0.3, detect_every: int = 3,
                 detect_width: int = 0, max_misses: int = 5, min_hits: int = 3, max_faces: int = 20,
                 reid_frames: int = 30, warn: Callable[[str], None] | None = None):
        if detect_every < 1:
            raise ValueError("detect_every must be at least 1")
        self.recognizer = recognizer if recognizer is not None else _recognizer(model, runtime, detector)
        self.encoder = frame_encoder_for(self.recognizer)
        self.smoother = make_smoother(smooth, self.encoder, temporal_model, ema, warn,
                                      getattr(self.recognizer.classifier, "path", None))
        self.tracker = Tracker(max_misses=max_misses, min_hits=min_hits, reid_frames=reid_frames)
        self.detect_every = detect_every
        self.detect_width = detect_width
        self.max_faces = max_faces
        self.frame_index = 0
        self.angles: dict[int, float] = {}  # per track: the last eye angle seen, for aligned crops
        self.timing = {"detect": 0.0, "classify": 0.0, "smooth": 0.0, "detect_rounds": 0, "faces": 0}

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) face boxes in ``frame``'s pixels, largest first, and (N,) eye angles in degrees (NaN where
        the detector found no eyes)."""
        import cv2

        from .faces import eye_angle

        h, w = frame.shape[:2]
        scale = min(1.0, self.detect_width / w) if self.detect_width else 1.0
        small = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) \
            if scale < 1.0 else frame
        dets = sorted(self.recognizer.detector.detect_faces(small), key=lambda d: -d.box[2] * d.box[3])
        dets = dets[:self.max_faces]
        boxes = np.asarray([d.box for d in dets], np.float64).reshape(-1, 4) / scale
        angles = np.array([eye_angle(d.landmarks) if d.landmarks else np.nan for d in dets], np.float64)
        return boxes, angles

    def classify(self, frame: np.ndarray, boxes: np.ndarray, angles: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, 7) probabilities and (N, D) embeddings (or None) of the faces in ``boxes``."""
        from .runtime import softmax

        crops = self.crops(frame, boxes, angles)
        if self.encoder is not None:
            logits, emb = self.encoder.encode(crops)
            return softmax(logits), emb
        return self.recognizer.predict_faces(crops, tta="none"), None

    def crops(self, frame: np.ndarray, boxes: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        """(N, 48, 48) uint8 face crops, cut as the photo path cuts them (square, margin, eyes level)."""
        from .faces import square_crop

        margin = getattr(self.recognizer, "margin", None)
        if margin is None:  # the detector's own, matched to FER2013's framing (emolens.faces)
            margin = getattr(self.recognizer.detector, "margin", 0.2)
        align = getattr(self.recognizer, "align", True)
        out = []
        for i, b in enumerate(boxes):
            a = float(angles[i]) if align and angles is not None else 0.0
            out.append(preprocess(square_crop(frame, tuple(int(round(v)) for v in b), margin, a), "bgr"))
        return np.stack(out) if out else np.zeros((0, 48, 48), np.uint8)

    def process(self, frame: np.ndarray) -> list[TrackedFace]:
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
        tracks = [t for t in tracks if min(_clip_box(t.box, w, h)[2:]) >= 4]
        self.frame_index += 1
        if not tracks:
            return []
        boxes = np.stack([_clip_box(t.box, w, h) for t in tracks])
        t1 = time.perf_counter()
        probs, emb = self.classify(frame, boxes, np.array([self.angles.get(t.id, 0.0) for t in tracks]))
        t2 = time.perf_counter()
        out = []
        for i, t in enumerate(tracks):
            p = np.asarray(self.smoother.update(t.id, probs[i], None if emb is None else emb[i]), np.float64)
            out.append(TrackedFace(t.id, tuple(int(round(v)) for v in boxes[i]), CLASSES[int(p.argmax())],
                                   float(p.max()), {c: float(v) for c, v in zip(CLASSES, p, strict=True)},
                                   t.detected))
        self.timing["classify"] += t2 - t1
        self.timing["smooth"] += time.perf_counter() - t2
        self.timing["faces"] += len(tracks)
        return out


def _clip_box(box: np.ndarray, w: int, h: int) -> np.ndarray:
    x0, y0 = max(box[0], 0.0), max(box[1], 0.0)
    x1, y1 = min(box[0] + box[2], float(w)), min(box[1] + box[3], float(h))
    return np.array([x0, y0, max(x1 - x0, 0.0), max(y1 - y0, 0.0)])


def crop_faces(frame: np.ndarray, boxes: Iterable[Sequence[float]], margin: float = 0.2) -> np.ndarray:
    """(N, 48, 48) uint8: the square crop around each (x, y, w, h) box, preprocessed (as photos are)."""
    from .faces import square_crop

    out = [preprocess(square_crop(frame, tuple(int(round(v)) for v in b), margin), "bgr") for b in boxes]
    return np.stack(out) if out else np.zeros((0, 48, 48), np.uint8)


# ----------------------------------------------------------------------------------------------------
# drawing


def draw_tracks(frame: np.ndarray, faces: list[TrackedFace], bars: bool = True) -> np.ndarray:
    """The photo overlay (:func:`emolens.predict.draw_faces`: box, emotion, bars) plus each track's id
    under its box, drawn on ``frame`` in place."""
    import cv2

    from .predict import COLORS, Face, draw_faces

    draw_faces(frame, [Face(f.box, f.emotion, f.confidence, f.probabilities) for f in faces], CLASSES, bars)
    h, w = frame.shape[:2]
    unit = max(1.0, min(h, w) / 480)
    for f in faces:
        x, y, bw, bh = f.box
        label = f"#{f.track_id}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * unit, max(1, round(unit)))
        ty = min(y + bh + th + 6, h - base)
        cv2.rectangle(frame, (x, ty - th - 4), (x + tw + 6, ty + base), COLORS.get(f.emotion, (0, 255, 0)), -1)
        cv2.putText(frame, label, (x + 3, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * unit, (0, 0, 0),
                    max(1, round(unit)), cv2.LINE_AA)
    return frame


# ----------------------------------------------------------------------------------------------------
# reading


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


def clip_face_crops(frames: list[np.ndarray], detector=None, detect_width: int = 0,
                    margin: float | None = None) -> np.ndarray:
    """(n, 48, 48) uint8 crops of the main face of a clip (its longest track), one per frame, cut as photos
    are (square, ``margin`` (default: the detector's), eyes level where found).

    Frames where that face was not found take the nearest frame's box; a clip where no face is found at
    all is taken to be face crops already, and used whole. ``detector``: a FaceDetector or a name."""
    import cv2

    from .faces import create_detector, eye_angle, square_crop

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
        per_frame.append({tid: (_clip_box(t.box, w, h), eye_angle(d.landmarks))
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
        out.append(preprocess(square_crop(f, tuple(int(round(v)) for v in box), margin, angle), "bgr"))
    return np.stack(out)


# ----------------------------------------------------------------------------------------------------
# writing


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

    from .data import _quiet_opencv

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
        from .outputs import remove_stale_temp_files, temp_name

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


def _csv_rows(index: int, t: float, faces: list[TrackedFace]) -> list[list[Any]]:
    return [[index, f"{t:.3f}", f.track_id, *f.box, int(f.detected), f.emotion, f"{f.confidence:.4f}",
             *[f"{f.probabilities[c]:.4f}" for c in CLASSES]] for f in faces]


def plot_timeline(rows: list[dict[str, Any]], path: str | Path, title: str = "", max_tracks: int = 8) -> None:
    """Per track (the ``max_tracks`` longest), the probability of each emotion over time, stacked."""
    from .reports import _pyplot, save_figure

    plt = _pyplot()
    by_track: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_track.setdefault(int(r["track_id"]), []).append(r)
    tracks = sorted(by_track, key=lambda k: -len(by_track[k]))[:max_tracks]
    from .predict import COLORS

    colors = {c: tuple(v / 255 for v in COLORS[c][::-1]) for c in CLASSES}
    n = max(len(tracks), 1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.8 + 1.6 * n), squeeze=False, sharex=True)
    if not tracks:
        axes[0, 0].text(0.5, 0.5, "no faces found", ha="center", va="center", transform=axes[0, 0].transAxes)
        axes[0, 0].set_axis_off()
    for ax, tid in zip(axes[:, 0], tracks, strict=False):
        rs = sorted(by_track[tid], key=lambda r: int(r["frame"]))
        t = np.array([float(r["time_s"]) for r in rs])
        p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rs]).T
        # gaps (frames where the track was not seen) are left blank rather than interpolated
        frames = np.array([int(r["frame"]) for r in rs])
        breaks = np.flatnonzero(np.diff(frames) > 1) + 1
        for seg_t, seg_p in zip(np.split(t, breaks), np.split(p, breaks, axis=1), strict=True):
            ax.stackplot(seg_t, seg_p, colors=[colors[c] for c in CLASSES], linewidth=0)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {tid}")
        ax.margins(x=0)
    axes[0, 0].legend([plt.Rectangle((0, 0), 1, 1, color=colors[c]) for c in CLASSES], CLASSES, ncol=7,
                      loc="lower center", bbox_to_anchor=(0.5, 1.02), fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        fig.suptitle(title, y=1.0 + 0.02 * n, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=150)
    plt.close(fig)


@dataclass
class VideoResult:
    """What :func:`process_video` did."""

    frames: int  # frames processed
    expected_frames: int  # frame count the container announced (0 = unknown, e.g. a stream)
    fps: float  # the video's frame rate
    seconds: float  # processing wall time
    tracks: int  # distinct track ids
    rows: int  # (frame, track) rows
    complete: bool  # False when the stream ended before the announced frame count
    smoothing: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)  # ms per detection round / face / frame, by stage

    @property
    def processing_fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def realtime_ratio(self) -> float:
        """Processing fps / video fps: above 1 is faster than real time."""
        return self.processing_fps / self.fps if self.fps else float("nan")


def process_video(source: str, output: str | Path | None = None, csv_path: str | Path | None = None,
                  plot_path: str | Path | None = None, *, processor: VideoProcessor | None = None,
                  max_frames: int = 0, progress: bool = True, draw_bars: bool = True,
                  log: Callable[[str], None] | None = None, codec: str | None = "auto",
                  **processor_kwargs) -> VideoResult:
    """Track and label every face of ``source`` (a file or anything OpenCV opens); write the annotated
    video to ``output``, one CSV row per (frame, track) to ``csv_path``, a timeline plot to ``plot_path``.
    ``codec``: see :func:`open_video_writer` (auto: one a browser plays, H.264 or VP9 in .mp4, VP8 in .webm).

    A stream that stops early ends the run cleanly and keeps what was written (``complete`` False); SIGTERM
    stops it like Ctrl-C. An output that is the input (or another output) is refused before any work
    (``emolens.outputs.OutputError``)."""
    from .outputs import check_outputs, sigterm_as_interrupt

    log = log or (lambda m: print(m, file=sys.stderr))
    check_outputs([source], files=[output, csv_path, plot_path])  # before any work: never replace the input
    with sigterm_as_interrupt():  # kill (SIGTERM) cleans up like Ctrl-C: no hidden partial files left
        return _process_video(source, output, csv_path, plot_path, processor=processor, max_frames=max_frames,
                              progress=progress, draw_bars=draw_bars, log=log, codec=codec, **processor_kwargs)


def _process_video(source: str, output: str | Path | None, csv_path: str | Path | None,
                   plot_path: str | Path | None, *, processor: VideoProcessor | None, max_frames: int,
                   progress: bool, draw_bars: bool, log: Callable[[str], None], codec: str | None = "auto",
                   **processor_kwargs) -> VideoResult:
    import cv2

    from .outputs import remove_stale_temp_files, temp_name

    cap = open_capture(source)
    writer = None
    csv_tmp = None
    rows: list[dict[str, Any]] = []
    index = 0
    t_start = time.perf_counter()
    t_write = 0.0
    bar = None
    try:
        fps, fps_known = _fps_of(cap)
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        expected = expected if expected > 0 else 0
        if max_frames:
            expected = min(expected, max_frames) if expected else 0
        ok, frame = cap.read()
        if not ok or frame is None:
            raise VideoError(f"{source}: no frames could be read (a zero-length, damaged or unsupported video)")
        proc = processor or VideoProcessor(warn=log, **processor_kwargs)
        t_start = time.perf_counter()  # processing speed: model loading is not part of it
        if not fps_known:
            log(f"note: {source} does not state a usable frame rate; assuming {fps:g} fps for times")
        h, w = frame.shape[:2]
        if output:
            writer = _AtomicVideoWriter(Path(output), fps, (w, h), codec)
        csv_file = None
        if csv_path:
            csv_path = Path(csv_path)
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temp_files(csv_path)
            csv_tmp = temp_name(csv_path, "tmp")
            csv_file = open(csv_tmp, "w", newline="")  # noqa: SIM115 - closed in finally
            csv_out = csv.writer(csv_file)
            csv_out.writerow(CSV_COLUMNS)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=expected or None, unit="frame", desc=Path(str(source)).name[:30], dynamic_ncols=True,
                       file=sys.stderr, leave=False)
        try:
            while ok and frame is not None:
                if frame.shape[:2] != (h, w):  # a stream that changes size mid-way: keep the output's size
                    frame = cv2.resize(frame, (w, h))
                faces = proc.process(frame)
                t = index / fps
                for r in _csv_rows(index, t, faces):
                    rows.append(dict(zip(CSV_COLUMNS, r, strict=True)))
                    if csv_file is not None:
                        csv_out.writerow(r)
                if writer is not None:
                    t_w = time.perf_counter()
                    writer.write(draw_tracks(frame, faces, draw_bars))
                    t_write += time.perf_counter() - t_w
                index += 1
                if bar is not None:
                    bar.update(1)
                    if index % 15 == 0:
                        bar.set_postfix_str(f"{index / fps / max(time.perf_counter() - t_start, 1e-9):.1f}x real time")
                if max_frames and index >= max_frames:
                    break
                ok, frame = cap.read()
        finally:
            if csv_file is not None:
                csv_file.close()
    except BaseException:
        if writer is not None:
            kept = writer.close(keep=index > 0)
            if kept:
                log(f"kept the {index} frames processed so far in {writer.path}")
            writer = None
        if csv_tmp is not None and index > 0:
            os.replace(csv_tmp, csv_path)
        elif csv_tmp is not None:
            csv_tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
        cap.release()
    seconds = time.perf_counter() - t_start
    outputs: dict[str, str] = {}
    if writer is not None:
        writer.close()
        outputs["video"] = str(writer.path)
    if csv_tmp is not None:
        os.replace(csv_tmp, csv_path)
        outputs["csv"] = str(csv_path)
    complete = not expected or index >= expected - 1  # containers often announce one frame too many
    if not complete:
        log(f"warning: {source} ended after {index} of {expected} frames (truncated file or dropped stream); "
            "kept what was read")
    tracks = len({r["track_id"] for r in rows})
    if plot_path:
        name = Path(str(source)).name
        plot_timeline(rows, plot_path, f"{name}: {tracks} track(s), {index} frames, smoothing "
                                       f"{proc.smoother.name}")
        outputs["plot"] = str(plot_path)
    if not rows:
        log(f"note: no faces found in {index} frames of {source}")
    tm = proc.timing
    timing = {"detect_ms_per_round": 1000 * tm["detect"] / max(tm["detect_rounds"], 1),
              "classify_ms_per_face": 1000 * tm["classify"] / max(tm["faces"], 1),
              "smooth_ms_per_face": 1000 * tm["smooth"] / max(tm["faces"], 1),
              "draw_write_ms_per_frame": 1000 * t_write / max(index, 1),
              "total_ms_per_frame": 1000 * seconds / max(index, 1)}
    return VideoResult(index, expected, fps, seconds, tracks, len(rows), complete, proc.smoother.name, outputs,
                       timing)


# ----------------------------------------------------------------------------------------------------
# webcam


def gui_available() -> tuple[bool, str]:
    """(True, "") when OpenCV can open a window here, else (False, why)."""
    import cv2

    info = cv2.getBuildInformation()
    gui_line = next((ln for ln in info.splitlines() if ln.strip().startswith("GUI:")), "")
    if "NONE" in gui_line.upper():
        return False, ("this OpenCV build has no GUI support (opencv-python-headless). For a window, swap in "
                       "the GUI build: pip uninstall -y opencv-python-headless && pip install --force-reinstall "
                       "--no-deps \"opencv-python>=4.8,<5\"")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display (DISPLAY is not set)"
    try:
        cv2.namedWindow("emolens", cv2.WINDOW_NORMAL)
    except cv2.error as e:
        return False, f"OpenCV cannot open a window ({str(e).strip().splitlines()[-1][:120]})"
    return True, ""


def run_webcam(source: str | int = 0, record: str | Path | None = None, max_frames: int = 0,
               window: bool | None = None, log: Callable[[str], None] | None = None, codec: str | None = "auto",
               **processor_kwargs) -> int:
    """Live overlay from a camera (index), file or URL; ``q`` or Esc quits. Frames are kept only in memory,
    never stored, unless ``record`` names a file. Without a display it records only (with ``record``), or
    says how to get a live view. Returns the number of frames processed."""
    import cv2

    from .outputs import check_outputs, sigterm_as_interrupt

    log = log or (lambda m: print(m, file=sys.stderr))
    check_outputs([str(source)], files=[record])  # --record must not replace the source video
    if window is None:
        window, why = gui_available()
        if not window and not record:
            raise VideoError(f"no live window possible: {why}. For a live view in the browser run `emolens serve` "
                             "and open http://127.0.0.1:8000; to save an annotated video use `emolens webcam "
                             "--record out.mp4` or `emolens video SOURCE -o out.mp4`")
        if not window:
            log(f"note: {why}; recording to {record} without a window (Ctrl-C to stop)")
    cap = open_capture(str(source))
    proc = VideoProcessor(warn=log, **processor_kwargs)
    writer = None
    n = 0
    t0 = time.perf_counter()
    fps_live = 0.0
    stop = sigterm_as_interrupt().__enter__()  # kill stops a recording like q or Ctrl-C: the file is finished
    try:
        fps, _ = _fps_of(cap)
        while not max_frames or n < max_frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                if n == 0:
                    raise VideoError(f"{source}: no frames could be read")
                break
            faces = proc.process(frame)
            draw_tracks(frame, faces)
            n += 1
            fps_live = 0.9 * fps_live + 0.1 / max(time.perf_counter() - t0, 1e-6) if n > 1 else 0.0
            t0 = time.perf_counter()
            if record:
                if writer is None:
                    writer = _AtomicVideoWriter(Path(record), fps, (frame.shape[1], frame.shape[0]), codec)
                writer.write(frame)
            if window:
                cv2.putText(frame, f"{fps_live:.0f} fps  q: quit", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                            (255, 255, 255), 1, cv2.LINE_AA)
                cv2.imshow("emolens", frame)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
    except KeyboardInterrupt:
        pass
    finally:
        stop.__exit__(None, None, None)
        cap.release()
        if writer is not None and writer.close():
            log(f"recorded {writer.frames} frames to {writer.path}")
        if window:
            cv2.destroyAllWindows()
    return n


# ----------------------------------------------------------------------------------------------------
# benchmark


def synthetic_face_video(path: str | Path, photo: np.ndarray | None = None, frames: int = 90,
                         size: tuple[int, int] = (640, 480), fps: float = 30.0) -> Path:
    """A test video: a BGR ``photo`` (default: the bundled astronaut photo, one face) panned and zoomed across
    a ``size`` frame (one sway every 4 s, as a person moves). Written as MJPG .avi or mp4v .mp4 by extension."""
    import cv2

    if photo is None:
        photo = cv2.imread(str(Path(__file__).with_name("assets") / "astronaut.jpg"), cv2.IMREAD_COLOR)
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


def bench_video(source: str | None = None, frames: int = 300, repeats: int = 1, write_output: bool = True,
                progress: bool = False, **processor_kwargs) -> dict[str, Any]:
    """Processing speed of the video pipeline: {frames, video_fps, processing_fps, realtime_ratio, ...}.

    Without ``source``, a 640x480 30 fps clip of the bundled photo (one face) is made first."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            source = str(synthetic_face_video(Path(tmp) / "bench.avi", frames=frames))
        best = None
        for _ in range(max(repeats, 1)):
            out = Path(tmp) / "out.mp4" if write_output else None
            res = process_video(source, out, max_frames=frames, progress=progress, log=lambda m: None,
                                **processor_kwargs)
            if best is None or res.seconds < best.seconds:
                best = res
    assert best is not None
    return {"source": source, "frames": best.frames, "tracks": best.tracks, "video_fps": best.fps,
            "processing_fps": round(best.processing_fps, 1), "realtime_ratio": round(best.realtime_ratio, 2),
            "smoothing": best.smoothing, "write_output": write_output, "cpus": os.cpu_count(),
            **{k: round(v, 2) for k, v in best.timing.items()}}


def format_bench_video(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`bench_video` results."""
    src = rows[0]["source"] if rows else ""
    lines = [f"Video pipeline on {Path(str(src)).name if src else 'a synthetic clip'} ({rows[0]['frames']} frames at "
             f"{rows[0]['video_fps']:g} fps, {rows[0]['tracks']} track(s), smoothing {rows[0]['smoothing']}, "
             f"{rows[0]['cpus']} CPUs)" if rows else "", "",
             "| output video | processing fps | x real time | ms/frame | detect ms/round | classify ms/face "
             "| smooth ms/face | draw+encode ms/frame |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {'written' if r['write_output'] else 'none'} | {r['processing_fps']:.1f} | "
                     f"{r['realtime_ratio']:.2f} | {r['total_ms_per_frame']:.1f} | {r['detect_ms_per_round']:.1f} | "
                     f"{r['classify_ms_per_face']:.2f} | {r['smooth_ms_per_face']:.2f} | "
                     f"{r['draw_write_ms_per_frame']:.1f} |")
    return "\n".join(lines)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a timeline CSV written by :func:`process_video`."""
    with open(path, newline="") as f:
        return list(csv.DictReader(io.StringIO(f.read())))


__all__ = ["Tracker", "Track", "StreamTracker", "iou_matrix", "VideoProcessor", "TrackedFace", "process_video",
           "VideoResult", "run_webcam", "bench_video", "format_bench_video", "plot_timeline", "draw_tracks",
           "crop_faces", "read_frames", "clip_face_crops", "open_capture", "gui_available", "synthetic_face_video",
           "EmaSmoother", "TemporalSmoother", "Smoother", "make_smoother", "VideoError", "CSV_COLUMNS"]
