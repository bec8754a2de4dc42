"""The one image decoder (emolens.decode): its magic-byte table, its messages, the pixel limit checked from the
header before decoding, and agreement: training data, photos and the HTTP API get the same array from the
same bytes."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
Image = pytest.importorskip("PIL.Image")
skdata = pytest.importorskip("skimage.data")

from emolens import data, decode, predict  # noqa: E402
from emolens.decode import ImageError, decode_bytes, image_format, read_image  # noqa: E402
from emolens.preprocess import preprocess  # noqa: E402


def _encode(img: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[:, :, ::-1])


@pytest.mark.parametrize("fmt,name", [("JPEG", "JPEG"), ("PNG", "PNG"), ("BMP", "BMP"), ("TIFF", "TIFF"),
                                      ("WEBP", "WebP"), ("GIF", "GIF"), ("PPM", "PGM/PPM")])
def test_every_format_in_the_table_is_named_and_decoded(fmt, name):
    rgb = skdata.astronaut()[::8, ::8].copy()  # 64x64
    raw = _encode(rgb, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert image_format(raw) == name
    out = decode_bytes(raw, f"x.{fmt.lower()}")
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    if fmt in ("PNG", "BMP", "TIFF", "WEBP", "PPM"):  # lossless: exactly the pixels, in BGR order
        np.testing.assert_array_equal(out, rgb[:, :, ::-1])


def test_messages_name_the_input_and_the_fault(astronaut_bgr):
    jpg = cv2.imencode(".jpg", astronaut_bgr)[1].tobytes()
    png = cv2.imencode(".png", astronaut_bgr)[1].tobytes()
    cases = {b"": "a: empty file (0 bytes)", b"hello world": "a: not an image file (11 bytes starting",
             jpg[: len(jpg) // 2]: "a: truncated JPEG", png[: len(png) // 2]: "a: truncated or corrupt PNG image",
             b"RIFF\0\0\0\0WAVEfmt ": "a: not an image file"}
    for raw, expect in cases.items():
        with pytest.raises(ImageError) as e:
            decode_bytes(raw, "a")
        assert str(e.value).startswith(expect), (expect, str(e.value))


def test_pixel_limit_is_read_from_the_header_before_decoding():
    # a PNG header claiming 20000 x 20000 with almost no data: refused by size, not by a failed 1.6 GB decode
    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    def png(w: int, h: int) -> bytes:
        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                + chunk(b"IEND", b""))

    with pytest.raises(ImageError, match="too large .10000x6000 = 60.0 megapixels; the limit is 50"):
        decode_bytes(png(10000, 6000), "bomb.png")
    import warnings

    with warnings.catch_warnings():  # PIL warns from 89 MP on; our own error says it, once, in one line
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="too large .12000x12000 = 144.0 megapixels"):
            decode_bytes(png(12000, 12000), "bomb.png")
    with pytest.raises(ImageError, match="bomb.png: image too large"):  # PIL's own guard, further up
        decode_bytes(png(20000, 20000), "bomb.png")
    with pytest.raises(ImageError, match="limit is 0.001"):
        decode_bytes(_encode(np.zeros((40, 40), np.uint8), "PNG"), "small.png", max_pixels=1000)


def test_one_setting_for_suffixes_limits_and_errors():
    assert data.IMAGE_SUFFIXES is decode.IMAGE_SUFFIXES is predict.IMAGE_SUFFIXES
    assert predict.MAX_PIXELS == decode.MAX_PIXELS
    assert predict.ImageError is ImageError and predict.decode_bytes is decode_bytes


def test_exif_orientation_is_applied():
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :20] = 255  # left half white
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    out = decode_bytes(buf.getvalue())
    assert out.shape[:2] == (40, 20)  # displayed upright: tall
    assert out[:18].mean() > 200 and out[22:].mean() < 50  # the white half is now on top


def broken_exif() -> bytes:
    """An EXIF block with Orientation=6 and a numeric TIFF tag (0x0125) stored as ASCII: Pillow's exif_transpose
    raises struct.error on it (the auditor's exif500 file)."""
    ex = Image.Exif()
    ex[0x0112] = 6
    ex[0x010F] = "cam"
    raw = bytearray(ex.tobytes())
    i = raw.find(b"\x01\x0f\x00\x02")  # tag 0x010F, type 2 (ASCII)
    raw[i:i + 2] = b"\x01\x25"
    return bytes(raw)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_broken_exif_is_ignored_not_an_error(fmt):
    """Browsers show such a photo as decoded; so do we (it was a struct.error, a 500 on the API)."""
    img = np.full((20, 40, 3), 128, np.uint8)
    out = decode_bytes(_encode(img, fmt, exif=broken_exif()), f"x.{fmt.lower()}")
    assert out.shape == (20, 40, 3)  # orientation ignored: the pixels as stored


def jpeg_claiming(width: int, height: int) -> bytes:
    """A 1x1 JPEG (~630 bytes) whose frame header claims ``width`` x ``height`` (the auditor's bomb7k.jpg)."""
    import struct

    raw = bytearray(_encode(np.zeros((1, 1, 3), np.uint8), "JPEG"))
    i = raw.find(b"\xff\xc0")
    raw[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(raw)


def test_jpeg_too_short_for_its_size_is_truncated():
    """libjpeg fills missing data with grey without an error: 631 bytes decoded to a 7000x7000 image."""
    with pytest.raises(ImageError, match=r"x\.jpg: truncated or corrupt JPEG \(\d+ bytes for 7000x7000"):
        decode_bytes(jpeg_claiming(7000, 7000), "x.jpg")


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_the_smallest_real_jpegs_pass_the_length_check(mode):
    """A uniform image with optimised tables is the densest a JPEG gets (~4 bytes per 1000 pixels)."""
    for kw in ({"optimize": True}, {"optimize": True, "progressive": True, "quality": 1}):
        im = Image.new(mode, (3000, 2000), 128)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", **kw)
        assert decode_bytes(buf.getvalue()).shape[:2] == (2000, 3000)


def test_training_and_inference_decode_the_same_array(tmp_path, astronaut_bgr):
    """The dataset loader (training, evaluation) and the photo API see the same pixels for the same file,
    and the dataset's 48x48 face is exactly preprocess() of what the API decodes."""
    face = cv2.cvtColor(cv2.resize(astronaut_bgr[40:220, 150:330], (48, 48), interpolation=cv2.INTER_AREA),
                        cv2.COLOR_BGR2GRAY)
    for suffix, raw in ((".jpg", cv2.imencode(".jpg", face)[1].tobytes()),
                        (".png", cv2.imencode(".png", astronaut_bgr[:200, :200])[1].tobytes())):
        f = tmp_path / "happy" / f"x{suffix}"
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(raw)
        via_api = predict.to_bgr(str(f))
        np.testing.assert_array_equal(via_api, read_image(f))
        np.testing.assert_array_equal(data.decode_image(raw, f.name), preprocess(via_api, "bgr"))
        f.unlink()
    (tmp_path / "happy" / "face.jpg").write_bytes(cv2.imencode(".jpg", face)[1].tobytes())
    ds = data.load_dataset(tmp_path, cache=False, progress=False)
    np.testing.assert_array_equal(ds.images[0], preprocess(predict.to_bgr(str(tmp_path / "happy" / "face.jpg"))))
