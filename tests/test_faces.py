"""Face detection and crops on real photos (skimage's astronaut, matplotlib's Grace Hopper) and exact
synthetic checks of the square crop and the eye alignment."""

from __future__ import annotations

import numpy as np
import pytest

from emolens.faces import (
    ALIGN_MIN_DEG,
    Detection,
    DetectorError,
    available_detectors,
    create_detector,
    crop_face,
    eye_angle,
    face_crops,
    list_detectors,
    square_crop,
)
from emolens.preprocess import preprocess

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

#: the astronaut's face in skimage.data.astronaut() (512x512): centre and approximate width, by eye
ASTRONAUT_FACE = (224, 113, 96)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.mark.parametrize("name", available_detectors())
def test_detector_finds_the_astronaut(name, astronaut):
    det = create_detector(name)
    faces = det.detect_faces(astronaut)
    assert len(faces) == 1, faces
    x, y, w, h = faces[0].box
    cx, cy, size = ASTRONAUT_FACE
    assert abs(x + w / 2 - cx) < 0.25 * size and abs(y + h / 2 - cy) < 0.25 * size
    assert 0.7 * size < w < 1.5 * size
    assert det.detect(astronaut) == [faces[0].box]
    # the same photo as gray and as a larger frame: still one face, box scaled with it
    assert len(det.detect(cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))) == 1
    big = cv2.resize(astronaut, (1024, 1024))
    (bx, by, bw, bh), = det.detect(big)
    assert abs(bx + bw / 2 - 2 * cx) < 0.5 * size and 1.2 * size < bw < 3 * size


@pytest.mark.parametrize("name", available_detectors())
def test_detector_finds_no_face_in_textures(name):
    for im in (skdata.coffee(), skdata.brick(), np.full((480, 640, 3), 127, np.uint8)):
        im = cv2.resize(im if im.ndim == 3 else cv2.cvtColor(im, cv2.COLOR_GRAY2BGR), (640, 480))
        assert create_detector(name).detect(im) == []


def test_registry():
    assert {"auto", "haar", "dlib"} <= set(list_detectors())
    assert "haar" in available_detectors()  # ships with opencv-python-headless<5
    assert create_detector("auto").name in available_detectors()
    with pytest.raises(DetectorError, match="unknown face detector 'nope'.*haar"):
        create_detector("nope")


def test_haar_finds_eyes_for_alignment(astronaut):
    (face,) = create_detector("haar").detect_faces(astronaut)
    assert face.landmarks is not None
    (lx, ly), (rx, ry) = face.landmarks["left_eye"], face.landmarks["right_eye"]
    assert lx < rx and abs(ly - ry) < 10  # upright face: eyes about level
    x, y, w, h = face.box
    assert x < lx < x + w and y < ly < y + h / 2


def test_square_crop_inside_is_exact_pixels():
    img = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
    crop = square_crop(img, (40, 30, 20, 20), margin=0.5)  # side 30 centred on (50, 40)
    assert crop.shape == (30, 30, 3)
    np.testing.assert_array_equal(crop, img[25:55, 35:65])


def test_square_crop_at_the_border_is_padded_square():
    img = np.random.default_rng(1).integers(0, 256, (50, 60), dtype=np.uint8)
    crop = square_crop(img, (0, 0, 20, 30), margin=0.2)  # side 36 from (-8, -3): sticks out top-left
    assert crop.shape == (36, 36)
    np.testing.assert_array_equal(crop[3:, 8:], img[:33, :28])
    np.testing.assert_array_equal(crop[:3, 8:], np.repeat(img[:1, :28], 3, axis=0))  # replicated border


def test_eye_alignment_levels_the_eyes():
    """Two dots at tilted 'eye' positions end up on one row after the aligned crop."""
    img = np.zeros((200, 200), np.uint8)
    left, right = (70.0, 80.0), (130.0, 110.0)  # right eye 30 px lower: head tilted 26.6 degrees
    for px, py in (left, right):
        cv2.circle(img, (int(px), int(py)), 4, 255, -1)
    marks = {"left_eye": left, "right_eye": right}
    angle = eye_angle(marks)
    assert angle == pytest.approx(np.degrees(np.arctan2(30, 60)))
    crop = square_crop(img, (50, 50, 100, 100), margin=0.2, angle=angle)
    ys, xs = np.nonzero(crop > 128)
    lrow = ys[xs < crop.shape[1] / 2].mean()
    rrow = ys[xs >= crop.shape[1] / 2].mean()
    assert abs(lrow - rrow) < 1.5
    assert eye_angle(None) == 0.0


def test_face_crops_go_through_the_shared_preprocess(astronaut):
    dets = [Detection((176, 65, 96, 96)), Detection((-10, -10, 40, 40))]
    crops = face_crops(astronaut, dets, margin=0.2, align=False)
    assert crops.shape == (2, 48, 48) and crops.dtype == np.uint8
    for crop, d in zip(crops, dets, strict=True):
        np.testing.assert_array_equal(crop, preprocess(square_crop(astronaut, d.box, 0.2), "bgr"))
    assert face_crops(astronaut, []).shape == (0, 48, 48)


@pytest.mark.parametrize("name", available_detectors())
def test_rotated_face_aligned_crop_is_closer_to_upright(name, astronaut):
    """A head tilted by 15 degrees: with eye alignment its crop looks more like the upright crop."""
    det = create_detector(name)
    (upright,) = det.detect_faces(astronaut)
    ref = face_crops(astronaut, [upright], align=False)[0].astype(float)
    cx, cy = upright.box[0] + upright.box[2] / 2, upright.box[1] + upright.box[3] / 2
    tilted = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((cx, cy), 15, 1.0), (512, 512),
                            borderMode=cv2.BORDER_REFLECT)
    found = det.detect_faces(tilted)
    if not found or found[0].landmarks is None:
        pytest.skip(f"{name} found no eyes on the tilted face")
    (d,) = found
    # relative to the upright photo's own eye line (the astronaut's head leans ~8 degrees; BlazeFace's keypoints
    # see it, Haar's eye boxes barely do)
    assert eye_angle(d.landmarks) - eye_angle(upright.landmarks) == pytest.approx(-15, abs=6)
    plain = face_crops(tilted, [d], align=False)[0].astype(float)
    aligned = face_crops(tilted, [d], align=True, min_tilt=0.0)[0].astype(float)
    assert np.abs(aligned - ref).mean() < np.abs(plain - ref).mean()


def test_small_tilts_are_left_alone_large_ones_levelled():
    """Eye angles under ALIGN_MIN_DEG keep the plain crop (the model learnt FER2013's natural tilts); larger
    ones, and any with ``min_tilt=0``, are levelled; no eyes means no rotation."""
    img = np.random.default_rng(3).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    box = (50, 50, 100, 100)

    def det(angle: float) -> Detection:
        dx, dy = 30 * np.cos(np.radians(angle)), 30 * np.sin(np.radians(angle))
        return Detection(box, landmarks={"left_eye": (100 - dx, 90 - dy), "right_eye": (100 + dx, 90 + dy)})

    plain = face_crops(img, [Detection(box)], align=True)[0]
    small, large = det(ALIGN_MIN_DEG - 3), det(ALIGN_MIN_DEG + 5)
    np.testing.assert_array_equal(face_crops(img, [small])[0], plain)
    assert not np.array_equal(face_crops(img, [small], min_tilt=0.0)[0], plain)
    np.testing.assert_array_equal(face_crops(img, [large])[0],
                                  preprocess(square_crop(img, box, 0.2, eye_angle(large.landmarks)), "bgr"))
    assert not np.array_equal(face_crops(img, [large])[0], plain)
    np.testing.assert_array_equal(face_crops(img, [large], align=False)[0], plain)
    # the video path passes NaN where the detector gave no eyes
    np.testing.assert_array_equal(crop_face(img, box, 0.2, float("nan")), plain)
