"""Following faces from frame to frame: :class:`Tracker` links the faces found in successive frames into tracks
with stable ids (greedy matching on IoU and centre distance against a constant-velocity prediction; a track survives
``max_misses`` detection rounds without a match, and a face back within ``reid_frames`` takes its id back)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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
