"""The Python API (EmotionRecognizer, Face, predict_emotion/detect_emotion) on a real photo
(skimage.data.astronaut()), with a random-weight model made here, and with the shipped model when it exists.

Also: every input kind gives the same answer, one shared preprocess feeds ONNX and torch alike, torch and ONNX
agree within 1e-4, and bad inputs (missing, not an image, truncated, huge) fail with ImageError, never a crash.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")
torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from emolens.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from emolens.export import export_onnx  # noqa: E402
from emolens.faces import ALIGN_MIN_DEG, create_detector, eye_angle, face_crops, square_crop  # noqa: E402
from emolens.models import create_model  # noqa: E402
from emolens.predict import (  # noqa: E402
    EmotionRecognizer,
    Face,
    ImageError,
    NoFaceError,
    detect_emotion,
    predict_emotion,
)
from emolens.preprocess import CLASSES, normalize, preprocess  # noqa: E402
from emolens.runtime import (  # noqa: E402
    DEFAULT_TTA,
    OnnxClassifier,
    TorchClassifier,
    default_model_path,
    is_quantized,
    load_classifier,
)

SMALL = {"widths": [8, 16, 32, 64], "lstm_hidden": 16}


def make_model_files(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """A random-weight small cnn_lstm as (.pt, .onnx) in ``folder``: real files through the real export."""
    torch.manual_seed(seed)
    model = create_model("cnn_lstm", **SMALL).eval()
    pt = folder / "model.pt"
    save_checkpoint(make_checkpoint(model, metrics={"public_acc": 0.1}), pt)
    onnx = Path(export_onnx(pt, folder / "model.onnx")["path"])
    return pt, onnx


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> tuple[Path, Path]:
    return make_model_files(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def rec(model_files) -> EmotionRecognizer:
    return EmotionRecognizer(model=model_files[1], detector="haar")


@pytest.fixture(scope="module")
def astronaut_rgb() -> np.ndarray:
    return skdata.astronaut()


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory, astronaut_rgb) -> Path:
    path = tmp_path_factory.mktemp("img") / "astronaut.png"  # lossless: every input kind has the same pixels
    Image.fromarray(astronaut_rgb).save(path)
    return path


def shipped() -> EmotionRecognizer:
    if not default_model_path("onnx").is_file():
        pytest.skip("the shipped model (src/emolens/weights/emolens_cnn_lstm.onnx) is not there yet")
    return EmotionRecognizer()


# ---------------------------------------------------------------------------------------------- shipped model


def test_astronaut_is_one_happy_face_with_the_shipped_model(astronaut_rgb, astronaut_png):
    rec = shipped()
    faces = rec.predict(astronaut_rgb, channel_order="rgb")
    assert len(faces) == 1
    assert faces[0].emotion == "happy", faces[0].probabilities
    assert predict_emotion(astronaut_png) == "happy"
    emotion, pct = detect_emotion(str(astronaut_png))
    assert emotion == "happy" and 50 < pct <= 100


def test_shipped_model_torch_and_onnx_agree(astronaut_rgb):
    shipped()
    if not default_model_path("pt").is_file():
        pytest.skip("no shipped .pt")
    onnx = EmotionRecognizer(detector="haar").predict(astronaut_rgb, channel_order="rgb")
    pt = EmotionRecognizer(runtime="torch", detector="haar").predict(astronaut_rgb, channel_order="rgb")
    assert [f.box for f in onnx] == [f.box for f in pt]
    # an fp32 ONNX file agrees with torch to 1e-4; an int8 one (export.ship(int8=True)) on the label, within 0.05
    int8 = is_quantized(default_model_path("onnx"))
    for a, b in zip(onnx, pt, strict=True):
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in CLASSES) < (0.05 if int8 else 1e-4)
        assert a.emotion == b.emotion


# ---------------------------------------------------------------------------------------------- API shape


def test_predict_returns_typed_faces(rec, astronaut_rgb):
    faces = rec.predict(astronaut_rgb, channel_order="rgb")
    assert len(faces) == 1
    f = faces[0]
    assert isinstance(f, Face) and len(f.box) == 4 and all(isinstance(v, int) for v in f.box)
    assert set(f.probabilities) == set(CLASSES)
    assert sum(f.probabilities.values()) == pytest.approx(1, abs=1e-5)
    assert f.emotion == max(f.probabilities, key=f.probabilities.get)
    assert f.confidence == pytest.approx(f.probabilities[f.emotion])
    d = json.loads(json.dumps(f.to_dict()))
    assert d["box"] == list(f.box) and d["emotion"] == f.emotion and set(d["probabilities"]) == set(CLASSES)
    assert d["landmarks"] is None or set(d["landmarks"]) >= {"left_eye", "right_eye"}


def test_every_input_kind_gives_the_same_faces(rec, astronaut_rgb, astronaut_png):
    bgr = np.ascontiguousarray(astronaut_rgb[:, :, ::-1])
    ref = rec.predict(astronaut_png)
    assert len(ref) == 1
    others = [rec.predict(str(astronaut_png)), rec.predict(astronaut_png.read_bytes()),
              rec.predict(Image.open(astronaut_png)), rec.predict(bgr), rec.predict(astronaut_rgb, channel_order="rgb"),
              rec.predict(np.dstack([bgr, np.full(bgr.shape[:2], 255, np.uint8)])),  # BGRA
              rec.predict(bgr.astype(np.float32) / 255.0)]  # float in [0, 1]
    for faces in others:
        assert [f.box for f in faces] == [f.box for f in ref]
        for a, b in zip(faces, ref, strict=True):
            assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in CLASSES) < 2e-3


def test_faces_are_sorted_left_to_right(model_files, astronaut_rgb):
    from emolens.faces import Detection, FaceDetector

    class RightToLeft(FaceDetector):
        """Reports the real face and a second box in right-to-left order."""

        name = "right-to-left"

        def detect_faces(self, image):
            return [Detection((300, 300, 80, 80)), Detection((176, 65, 96, 96)), Detection((10, 400, 60, 60))]

    faces = EmotionRecognizer(model=model_files[1], detector=RightToLeft()).predict(astronaut_rgb)
    assert [f.box[0] for f in faces] == [10, 176, 300]
    pair = np.hstack([astronaut_rgb, astronaut_rgb])
    faces = EmotionRecognizer(model=model_files[1], detector="haar").predict(pair, channel_order="rgb")
    assert [f.box[0] for f in faces] == sorted(f.box[0] for f in faces) and len(faces) >= 2
    assert faces[0].box[0] < 512 <= faces[-1].box[0]


def test_predict_batch_matches_predict(rec, astronaut_rgb):
    imgs = [astronaut_rgb[:, :, ::-1], np.full((200, 300, 3), 120, np.uint8), cv2.flip(astronaut_rgb[:, :, ::-1], 1)]
    batch = rec.predict_batch(imgs)
    assert [len(f) for f in batch] == [1, 0, 1]
    for im, faces in zip(imgs, batch, strict=True):
        single = rec.predict(im)
        assert [f.box for f in single] == [f.box for f in faces]
        for a, b in zip(single, faces, strict=True):
            assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)
    assert rec.predict_batch([]) == []


def test_no_face_is_an_empty_list_and_the_one_liners_say_so(rec, astronaut_png, tmp_path, monkeypatch):
    from emolens import predict as api

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((240, 320, 3), 127, np.uint8))
    assert rec.predict(blank) == []
    monkeypatch.setattr(api, "_default_recognizer", lambda: rec)
    with pytest.raises(NoFaceError, match="no face"):
        predict_emotion(blank)
    (face,) = rec.predict(astronaut_png)
    assert predict_emotion(astronaut_png) == face.emotion
    assert detect_emotion(astronaut_png) == (face.emotion, round(100 * face.confidence, 2))


def test_48x48_gray_skips_detection_and_no_detect_uses_the_whole_image(rec):
    crop = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    (f,) = rec.predict(crop)
    assert f.box == (0, 0, 48, 48)
    np.testing.assert_allclose([f.probabilities[c] for c in CLASSES],
                               rec.classifier.predict_proba(crop, DEFAULT_TTA)[0], atol=1e-6)
    big = cv2.resize(crop, (100, 100))
    (g,) = rec.predict(big, detect=False)
    assert g.box == (0, 0, 100, 100)
    np.testing.assert_allclose([g.probabilities[c] for c in CLASSES],
                               rec.classifier.predict_proba(preprocess(big), DEFAULT_TTA)[0], atol=1e-6)


def test_predict_faces_accepts_crops_of_any_size(rec):
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, (90, 80, 3), dtype=np.uint8), rng.integers(0, 256, (30, 30), dtype=np.uint8)]
    p = rec.predict_faces(crops, tta="none")
    assert p.shape == (2, 7)
    np.testing.assert_allclose(p, rec.classifier.predict_proba(np.stack([preprocess(c) for c in crops]), "none"),
                               atol=1e-6)
    assert rec.predict_faces(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)


def test_tta_modes_change_the_numbers(rec, astronaut_rgb):
    p = {t: rec.predict(astronaut_rgb, tta=t, channel_order="rgb")[0].probabilities for t in ("none", "flip", "crops")}
    assert p["none"] != p["flip"] and p["flip"] != p["crops"]
    with pytest.raises(ValueError, match="TTA"):
        EmotionRecognizer(model=rec.classifier.path, tta="bogus")


def test_draw_annotates_a_copy(rec, astronaut_rgb):
    bgr = np.ascontiguousarray(astronaut_rgb[:, :, ::-1])
    before = bgr.copy()
    faces = rec.predict(bgr)
    out = rec.draw(bgr, faces)
    np.testing.assert_array_equal(bgr, before)  # input untouched
    assert out.shape == bgr.shape and out.dtype == np.uint8
    x, y, w, h = faces[0].box
    assert (out[y, x:x + w] != bgr[y, x:x + w]).any()  # the box's top edge is drawn
    assert (out[y:y + 7 * 12, x + w + 8:x + w + 60] != bgr[y:y + 7 * 12, x + w + 8:x + w + 60]).any()  # bars
    rgb_out = rec.draw(astronaut_rgb, faces, channel_order="rgb")
    np.testing.assert_array_equal(rgb_out[:, :, ::-1], out)  # same drawing, caller's channel order
    pil_out = rec.draw(Image.fromarray(astronaut_rgb), faces)
    assert isinstance(pil_out, Image.Image)
    assert np.array_equal(np.asarray(pil_out), rgb_out)
    assert rec.draw(bgr, []).shape == bgr.shape


# ---------------------------------------------------------------------------------------------- one preprocess


def test_one_preprocess_feeds_api_onnx_and_torch(model_files, astronaut_rgb, monkeypatch):
    """The classifier input for the astronaut's face is the same tensor whether it comes through the API, the
    ONNX runtime called directly or the torch runtime, and equals the training path's arithmetic."""
    from emolens.train import to_input

    pt, onnx = model_files
    bgr = np.ascontiguousarray(astronaut_rgb[:, :, ::-1])
    seen: dict[str, list[np.ndarray]] = {"onnx": [], "torch": []}
    orig_onnx, orig_torch = OnnxClassifier._logits, TorchClassifier._logits
    monkeypatch.setattr(OnnxClassifier, "_logits", lambda self, x: seen["onnx"].append(x.copy()) or orig_onnx(self, x))
    monkeypatch.setattr(TorchClassifier, "_logits",
                        lambda self, x: seen["torch"].append(x.copy()) or orig_torch(self, x))
    det = create_detector("haar")
    by_onnx = EmotionRecognizer(model=onnx, detector=det, tta="none")
    by_torch = EmotionRecognizer(model=pt, runtime="torch", detector=det, tta="none")
    seen["onnx"].clear()  # the check forward pass each runtime makes at load is not a prediction
    seen["torch"].clear()
    by_onnx.predict(bgr)
    by_torch.predict(bgr)
    (d,) = det.detect_faces(bgr)
    angle = eye_angle(d.landmarks)  # levelled only from ALIGN_MIN_DEG on: small tilts are what the model learnt
    face = preprocess(square_crop(bgr, d.box, det.margin, angle if abs(angle) >= ALIGN_MIN_DEG else 0.0), "bgr")
    np.testing.assert_array_equal(face, face_crops(bgr, [d], det.margin)[0])
    expected = normalize(face[None])
    np.testing.assert_array_equal(seen["onnx"][0], expected)
    np.testing.assert_array_equal(seen["torch"][0], expected)
    np.testing.assert_allclose(to_input(torch.from_numpy(face[None])).numpy(), expected, atol=1e-6)
    # a runtime used directly on the same crop sees the same tensor too
    load_classifier(onnx).predict_proba(face[None])
    np.testing.assert_array_equal(seen["onnx"][-1], expected)


def test_torch_and_onnx_agree_within_1e4(model_files, astronaut_rgb):
    pt, onnx = model_files
    a = EmotionRecognizer(model=onnx, detector="haar").predict(astronaut_rgb, channel_order="rgb", tta="crops")
    b = EmotionRecognizer(model=pt, runtime="torch", detector="haar").predict(astronaut_rgb, channel_order="rgb",
                                                                             tta="crops")
    assert len(a) == len(b) == 1
    assert max(abs(a[0].probabilities[c] - b[0].probabilities[c]) for c in CLASSES) < 1e-4


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_file(rec, tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        rec.predict(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="folder"):
        rec.predict(tmp_path)


def test_not_an_image(rec, tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, I am text")
    with pytest.raises(ImageError, match="not an image"):
        rec.predict(p)
    with pytest.raises(ImageError, match="empty"):
        rec.predict(b"")
    with pytest.raises(ImageError, match="unsupported image type"):
        rec.predict(12345)
    with pytest.raises(ImageError, match="shape"):
        rec.predict(np.zeros((4, 4, 7), np.uint8))


def test_truncated_image(rec, astronaut_png, tmp_path):
    data = astronaut_png.read_bytes()
    with pytest.raises(ImageError, match="unreadable|truncated"):
        rec.predict(data[: len(data) // 2])
    jpg = io.BytesIO()
    Image.open(astronaut_png).save(jpg, "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        rec.predict(jpg.getvalue()[:5000])
    with pytest.raises(ImageError, match="truncated"):  # PIL opens lazily: the error shows when we decode
        rec.predict(Image.open(io.BytesIO(jpg.getvalue()[:5000])))


def test_huge_image_is_refused_before_decoding(rec, tmp_path):
    """A 51-megapixel PNG (a few KB of zeros on disk) is refused from its header: no 150 MB decode."""
    p = tmp_path / "huge.png"
    Image.new("L", (8500, 6000)).save(p)
    assert p.stat().st_size < 200_000
    with pytest.raises(ImageError, match="too large.*51.0 megapixels"):
        rec.predict(p)
    small = EmotionRecognizer(model=rec.classifier.path, detector="haar", max_pixels=10_000)
    with pytest.raises(ImageError, match="too large"):
        small.predict(np.zeros((200, 200, 3), np.uint8))


def test_exif_orientation_and_16bit_and_gray(rec, astronaut_rgb, tmp_path):
    im = Image.fromarray(astronaut_rgb[:, :400])  # 400 wide, 512 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rotated.jpg"
    im.save(p, exif=exif)
    assert rec.load(p).shape == (400, 512, 3)
    g16 = (cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    p16 = tmp_path / "g16.png"
    cv2.imwrite(str(p16), g16)
    loaded = rec.load(p16)
    assert loaded.dtype == np.uint8 and loaded.ndim == 2
    np.testing.assert_array_equal(loaded, cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2GRAY))
    assert len(rec.predict(p16)) == 1
