"""Video: the tracker on synthetic moving boxes, the per-track smoothers, the video pipeline end to end on
a short clip made from a real photo (scikit-image's astronaut), and bad input (missing, truncated,
zero-length, no faces, a stream that stops mid-way)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emolens.preprocess import CLASSES
from emolens.video import (
    CSV_COLUMNS,
    EmaSmoother,
    StreamTracker,
    Tracker,
    VideoError,
    iou_matrix,
    open_capture,
    process_video,
    synthetic_face_video,
)

# ---------------------------------------------------------------------------------------------- tracker


def test_iou_matrix():
    a = np.array([[0, 0, 10, 10], [100, 100, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 1, 1]])
    m = iou_matrix(a, b)
    assert m.shape == (2, 3)
    np.testing.assert_allclose(m[0], [1.0, 50 / 150, 0.0])
    assert (m[1] == 0).all()


def test_track_survives_a_three_frame_miss():
    tr = Tracker(max_misses=5)
    ids = []
    for f in range(30):
        box = (20 + 6 * f, 50 + 2 * f, 60, 60)  # moving right and down, 6 px per frame
        seen = tr.step([] if 10 <= f < 13 else [box])  # the detector runs but misses frames 10-12
        if f < 10 or f >= 13:
            assert len(seen) == 1
            ids.append(seen[0].id)
            # the motion model carries the box: after the gap it is still on the face
            assert iou_matrix(seen[0].box, box)[0, 0] > 0.8
        else:
            assert seen == []  # not detected: not shown, but alive
            assert len(tr.tracks) == 1
    assert set(ids) == {1}


def test_track_survives_detector_misses_counted_in_rounds():
    tr = Tracker(max_misses=5)
    tr.step([(0, 0, 40, 40)])
    for _ in range(5):  # five rounds with no detection at all
        tr.step([])
    assert len(tr.tracks) == 1
    tr.step([])
    assert tr.tracks == [] and tr.ended == [1]


def test_two_crossing_tracks_keep_their_ids():
    """Two faces walk past each other; at the crossing the one behind is hidden for 2 frames."""
    tr = Tracker(max_misses=5)
    first: dict[str, int] = {}
    for f in range(40):
        a = (10 + 12 * f, 100, 50, 50)  # left -> right
        b = (478 - 12 * f, 120, 50, 50)  # right -> left, slightly lower
        boxes = [a] if 19 <= f <= 20 else [a, b]
        tr.step(boxes)
        ids = tr.last_ids
        first.setdefault("a", ids[0])
        assert ids[0] == first["a"], f"frame {f}: face A changed id"
        if len(boxes) == 2:
            first.setdefault("b", ids[1])
            assert ids[1] == first["b"], f"frame {f}: face B changed id"
    assert first["a"] != first["b"]
    assert tr.next_id == 3  # no track was ever started twice


def test_new_face_gets_a_new_id_and_far_jump_is_not_matched():
    tr = Tracker(max_misses=1)
    tr.step([(0, 0, 40, 40)])
    tr.step([(0, 0, 40, 40), (300, 300, 40, 40)])
    assert tr.last_ids == [1, 2]
    tr.step([(600, 0, 40, 40)])  # nowhere near either: a third face
    assert tr.last_ids == [3]


def test_stream_tracker_adds_ids_and_smooths():
    st = StreamTracker(smoothing=0.5)
    p1 = {c: (1.0 if c == "happy" else 0.0) for c in CLASSES}
    p2 = {c: (1.0 if c == "sad" else 0.0) for c in CLASSES}
    out1 = st.update([{"box": [10, 10, 50, 50], "emotion": "happy", "probabilities": p1}])
    out2 = st.update([{"box": [12, 10, 50, 50], "emotion": "sad", "probabilities": p2}])
    assert out1[0]["track_id"] == out2[0]["track_id"] == 1
    assert out2[0]["probabilities"]["happy"] == pytest.approx(0.5)
    assert out2[0]["probabilities"]["sad"] == pytest.approx(0.5)


def test_ema_smoother_per_track():
    ema = EmaSmoother(0.25)
    a = np.eye(7)[3]
    b = np.eye(7)[5]
    ema.update(1, a, None)
    ema.update(2, b, None)
    q = ema.update(1, b, None)
    np.testing.assert_allclose(q, 0.75 * a + 0.25 * b)
    with pytest.raises(ValueError):
        EmaSmoother(0)
