"""BlazeFace: anchors, decoding and weighted NMS against hand-computed boxes; the image pyramid; faces from 24 px
to frame-filling on real photos; the ONNX files as the installed package ships them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest

from emolens.blazeface import SPECS, BlazeFace, decode, iou_xyxy, pyramid_scales, ssd_anchors, weighted_nms
from emolens.faces import create_detector

skdata = pytest.importorskip("skimage.data")

#: the astronaut's face in skimage.data.astronaut() (x, y, w, h), as BlazeFace boxes it
FACE = (176, 76, 99, 99)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="module")
def detector():
    return create_detector("blazeface")


def test_anchor_layouts_match_the_models():
    short = ssd_anchors(128, 128, SPECS["short"].strides, True)
    assert short.shape == (896, 2)  # 16x16 cells x 2 anchors + 8x8 cells x 6 anchors, as the model outputs
    np.testing.assert_array_equal(short[:4], [[4, 4], [4, 4], [12, 4], [12, 4]])
    np.testing.assert_array_equal(short[512], [8, 8])  # first cell of the stride-16 map
    full = ssd_anchors(192, 192, SPECS["full"].strides, False)
    assert full.shape == (2304, 2)
    np.testing.assert_array_equal(full[[0, 1, 48]], [[2, 2], [6, 2], [2, 6]])
    assert ssd_anchors(320, 416, (4,), False).shape == (80 * 104, 2)  # any input size: one anchor per 4 px


def test_decode_known_boxes():
    anchors = ssd_anchors(16, 16, (4,), False)  # 16 anchors at 2, 6, 10, 14
    raw = np.zeros((16, 16), np.float32)
    logits = np.full(16, -6.0, np.float32)  # sigmoid 0.0025: dropped
    k = 5  # anchor (6, 6)
    raw[k, :4] = [3, -2, 20, 24]  # centre offset (3, -2), size 20 x 24
    raw[k, 4:6] = [-4, -5]  # first keypoint 4 px left, 5 px up of the anchor
    logits[k] = np.log(0.9 / 0.1)  # sigmoid 0.9
    boxes, keypoints, scores = decode(raw, logits[:, None], anchors, 0.5)
    np.testing.assert_allclose(boxes, [[9 - 10, 4 - 12, 9 + 10, 4 + 12]], atol=1e-5)
    np.testing.assert_allclose(keypoints[0, 0], [2, 1], atol=1e-5)
    np.testing.assert_allclose(keypoints[0, 1:], np.tile(anchors[k], (5, 1)), atol=1e-5)
    np.testing.assert_allclose(scores, [0.9], atol=1e-6)
    assert decode(raw, logits, anchors, 0.95)[0].shape == (0, 4)
    # huge logits do not overflow into NaN
    assert np.isfinite(decode(raw, np.full(16, 1e6, np.float32), anchors, 0.5)[2]).all()


def test_weighted_nms_averages_a_cluster_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    keypoints = np.array([[[2, 2]], [[4, 4]], [[55, 55]]], np.float32)
    scores = np.array([0.6, 0.9, 0.7], np.float32)
    b, k, s = weighted_nms(boxes, keypoints, scores, iou=0.3)
    np.testing.assert_allclose(s, [0.9, 0.7])  # best first; the cluster keeps its best score
    np.testing.assert_allclose(b[0], (0.6 * boxes[0] + 0.9 * boxes[1]) / 1.5, atol=1e-5)
    np.testing.assert_allclose(k[0], (0.6 * keypoints[0] + 0.9 * keypoints[1]) / 1.5, atol=1e-5)
    np.testing.assert_allclose(b[1], boxes[2])
    assert iou_xyxy(boxes[0], boxes[1:2])[0] == pytest.approx(81 / 119)
    assert weighted_nms(boxes[:0], keypoints[:0], scores[:0])[0].shape == (0, 4)


def test_pyramid_reaches_min_face_in_steps_of_at_most_4():
    assert pyramid_scales(640, 480, 192, 0.08, 24) == pytest.approx([0.3, 0.64])
    assert pyramid_scales(200, 100, 192, 0.08, 24) == pytest.approx([0.96])  # the whole image already does
    scales = pyramid_scales(3072, 3072, 192, 0.08, 24)
    assert scales[0] == pytest.approx(192 / 3072) and scales[-1] == pytest.approx(0.64)
    assert all(1 < b / a <= 4 + 1e-9 for a, b in zip(scales, scales[1:], strict=False))
    huge = pyramid_scales(8000, 6000, 192, 0.08, 24)  # capped: the longer side stays at most 2048 px
    assert max(huge) * 8000 == pytest.approx(2048)


def test_models_load_from_the_package_resources():
    for spec in SPECS.values():
        ref = resources.files("emolens") / "detectors" / spec.file
        assert ref.is_file() and ref.stat().st_size < 3_000_000  # small, shipped as package data
    assert (resources.files("emolens") / "detectors" / "LICENSE").read_text().count("Apache License") >= 1
    bf = BlazeFace("full")
    out = bf.session.run(None, {bf.input_name: np.zeros((1, 3, 320, 416), np.float32)})
    assert sorted(o.shape for o in out) == [(1, 8320, 1), (1, 8320, 16)]  # the full-range file takes any size


def test_finds_the_astronaut_with_eye_keypoints(detector, astronaut):
    (face,) = detector.detect_faces(astronaut)
    x, y, w, h = face.box
    assert abs(x - FACE[0]) < 10 and abs(y - FACE[1]) < 10 and abs(w - FACE[2]) < 15
    (lx, ly), (rx, ry) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    assert x < lx < rx < x + w and y < ly < y + h / 2 and y < ry < y + h / 2
    assert face.score > 0.8


def test_finds_a_face_turned_to_the_side():
    """scikit-image's cameraman looks into his camera, his face turned about 45 degrees: issue 14 found Haar and
    dlib miss it; BlazeFace boxes it (checked by eye: forehead to chin, ear to nose)."""
    gray = skdata.camera()
    (face,) = create_detector("blazeface").detect_faces(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    x, y, w, h = face.box
    assert abs(x + w / 2 - 230) < 15 and abs(y + h / 2 - 161) < 15 and 60 < w < 100
    assert face.score > 0.6


def _astronaut_face(astronaut: np.ndarray, face_px: int) -> np.ndarray:
    """The astronaut's head and shoulders scaled so the face is ``face_px`` wide: (crop, face centre)."""
    pad = FACE[2]  # a face's width of context on each side
    x, y, w, h = FACE
    crop = astronaut[max(0, y - pad):y + h + pad, x - pad:x + w + pad]
    s = face_px / w
    return cv2.resize(crop, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)


def test_36_faces_of_87_px_in_a_3072_image(detector, astronaut):
    tile = _astronaut_face(astronaut, 87)
    big = np.full((3072, 3072, 3), 96, np.uint8)
    centres = []
    for r in range(6):
        for c in range(6):
            y0, x0 = r * 512 + (512 - tile.shape[0]) // 2, c * 512 + (512 - tile.shape[1]) // 2
            big[y0:y0 + tile.shape[0], x0:x0 + tile.shape[1]] = tile
            centres.append((c * 512 + 256, r * 512 + 256))
    boxes = detector.detect(big)
    hits = {min(range(36), key=lambda i: np.hypot(bx + bw / 2 - centres[i][0], by + bh / 2 - centres[i][1]))
            for bx, by, bw, bh in boxes if 60 < bw < 130}
    assert len(hits) >= 34 and len(boxes) <= 37


@pytest.mark.parametrize("face_px", [24, 40, 300])
def test_face_sizes_in_a_640x480_frame(detector, astronaut, face_px):
    tile = _astronaut_face(astronaut, face_px)
    frame = np.full((480, 640, 3), 110, np.uint8)
    th, tw = min(480, tile.shape[0]), min(640, tile.shape[1])
    y0, x0 = (480 - th) // 2, (640 - tw) // 2
    frame[y0:y0 + th, x0:x0 + tw] = tile[(tile.shape[0] - th) // 2:][:th, (tile.shape[1] - tw) // 2:][:, :tw]
    boxes = detector.detect(frame)
    assert len(boxes) == 1
    assert 0.7 * face_px < boxes[0][2] < 1.5 * face_px


def test_frame_filling_face(detector, astronaut):
    x, y, w, h = FACE
    face = cv2.resize(astronaut[y - 5:y + h + 5, x - 5:x + w + 5], (480, 480), interpolation=cv2.INTER_CUBIC)
    (box,) = detector.detect(face)  # the face is the whole image
    assert box[2] > 350 and box[3] > 350


def test_wheel_ships_the_detector_and_it_runs_installed(tmp_path: Path, astronaut):
    """Build the wheel, install it into a folder, and detect with it from a process that cannot see src/."""
    root = Path(__file__).resolve().parents[1]
    project = tmp_path / "project"  # a copy: the build leaves nothing in the working tree
    shutil.copytree(root / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, project / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(project)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("emolens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for spec in SPECS.values():
        assert f"emolens/detectors/{spec.file}" in names
    assert "emolens/detectors/LICENSE" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    cv2.imwrite(str(tmp_path / "a.png"), astronaut)
    code = ("import sys, cv2, emolens; from emolens.faces import create_detector; "
            "print(emolens.__file__); print(len(create_detector('blazeface').detect(cv2.imread(sys.argv[1]))))")
    out = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}",
                          str(tmp_path / "a.png")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    where, found = out.stdout.split()
    assert where.startswith(str(target)) and found == "1"
