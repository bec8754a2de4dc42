"""The one image decoder: encoded bytes or a file -> an (H, W, 3) BGR or (H, W) gray uint8 array.

Training data (:mod:`emolens.data`), photos (:mod:`emolens.predict`), the HTTP API (:mod:`emolens.serve`) and
clips (:mod:`emolens.temporal`) all decode here, so an image gives the same array wherever it comes in; the
only resize after it is :func:`emolens.preprocess.preprocess`. One magic-byte table names the formats, one
suffix list says which files in a folder are images, and one setting (:data:`MAX_PIXELS`) bounds the pixel
count, read from the header before any pixel is decoded (decompression bombs). Torch-free.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

#: width x height above which an image is refused before decoding (the HTTP API and the CLI take it as default)
MAX_PIXELS = 50_000_000

#: fewest bytes a JPEG of one megapixel can take. Huffman coding spends at least 1 bit on every 8x8 block (1953
#: bytes per megapixel of gray; a uniform grey image with optimised tables takes ~3900), so fewer is a truncated
#: file (libjpeg fills what is missing with grey, silently: 631 bytes claiming 7000x7000 decoded to 147 MB)
JPEG_MIN_BYTES_PER_MEGAPIXEL = 1000

#: file suffixes treated as images when a folder is read (photos, datasets, frame folders)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm")

#: leading bytes of each decodable format, checked in order (WebP also needs "WEBP" at offset 8)
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WebP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
FORMAT_NAMES = ("JPEG", "PNG", "BMP", "TIFF", "WebP", "GIF", "PGM/PPM")


class ImageError(ValueError):
    """An input that is not a usable image: missing, not an image, truncated, or too large. The message names
    the input and the fault."""


def image_format(data: bytes) -> str | None:
    """The format's name (one of :data:`FORMAT_NAMES`) from the leading bytes, None when none matches."""
    for magic, name in MAGIC:
        if data.startswith(magic):
            if name == "WebP" and data[8:12] != b"WEBP":
                return None
            return name
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"123456" and data[2:3].isspace():
        return "PGM/PPM"
    return None


def check_size(width: int, height: int, name: str, max_pixels: int = MAX_PIXELS) -> None:
    """ImageError when ``width * height`` is over ``max_pixels``."""
    if width * height > max_pixels:
        raise ImageError(f"{name}: image too large ({width}x{height} = {width * height / 1e6:.1f} megapixels; "
                         f"the limit is {max_pixels / 1e6:g}): downscale it first")


def bomb_message(error: Exception, name: str, max_pixels: int = MAX_PIXELS) -> str:
    """Our one-limit message for PIL's DecompressionBombError (raised from the header, past twice PIL's own
    limit): PIL's text names its limit (179 M pixels), not the one in force here."""
    import re

    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1))} pixels" if found else "too many pixels"
    return f"{name}: image too large ({size} in its header; the limit is {max_pixels} pixels): downscale it first"


def check_jpeg_length(n_bytes: int, width: int, height: int, name: str) -> None:
    """ImageError when a JPEG is too short for its header's size (:data:`JPEG_MIN_BYTES_PER_MEGAPIXEL`): its data
    is missing, and decoding would make a large grey image out of nothing."""
    need = width * height * JPEG_MIN_BYTES_PER_MEGAPIXEL // 1_000_000
    if n_bytes < need:
        raise ImageError(f"{name}: truncated or corrupt JPEG ({n_bytes} bytes for {width}x{height} pixels; a JPEG "
                         f"of that size takes at least {need} bytes)")


def pil_to_array(im) -> np.ndarray:
    """A loaded PIL image -> (H, W, 3) BGR or (H, W) gray uint8 (16-bit gray keeps its top 8 bits, as OpenCV)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        if arr.dtype != np.uint8:
            arr = (arr.astype(np.uint32) >> 8 if arr.max() > 255 else arr).astype(np.uint8)
        return np.ascontiguousarray(arr)
    if im.mode in ("L", "1", "LA"):
        return np.ascontiguousarray(np.asarray(im.convert("L")))
    rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _upright(im):
    """``im`` turned as its EXIF orientation says; ``im`` itself when the EXIF block is broken. Pillow parses the
    whole block to read the one tag and raises struct.error, TypeError, KeyError... on a malformed tag; the
    pixels are fine, so, as browsers do, the broken metadata is ignored rather than the image refused."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 (any parse failure of the metadata, never of the pixels)
        return im


def decode_bytes(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> (H, W, 3) BGR or (H, W) gray uint8, EXIF orientation applied (a broken EXIF block
    is ignored).

    Checked in order, each with its own message: empty, a format the magic bytes do not name, too many
    pixels (from the header), a JPEG too short for its size, then the decode itself: a truncated file is an
    error (PIL stops there, where some OpenCV builds return a half-grey image)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    kind = image_format(data)
    if kind is None:
        raise ImageError(f"{name}: not an image file ({len(data)} bytes starting {bytes(data[:8])!r}; "
                         f"expected {', '.join(FORMAT_NAMES[:-1])} or {FORMAT_NAMES[-1]})")
    # byte stuffing keeps FFD9 out of entropy-coded data: a complete JPEG ends its last scan with that marker
    if kind == "JPEG" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        raise ImageError(f"{name}: truncated JPEG ({len(data)} bytes, no end-of-image marker after the image data)")
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: check_size gives the limit's own error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # lazy: the header only, so the size check costs nothing
        with im:
            check_size(im.width, im.height, name, max_pixels)
            if kind == "JPEG":
                check_jpeg_length(len(data), im.width, im.height, name)
            im.load()
            img = pil_to_array(_upright(im))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable {kind} image (corrupt header)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(bomb_message(e, name, max_pixels)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # PIL reports truncated/corrupt data as OSError
        raise ImageError(f"{name}: truncated or corrupt {kind} image ({str(e).splitlines()[0][:160]})") from None
    if img.size == 0:
        raise ImageError(f"{name}: zero width or height")
    return img


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file -> (H, W, 3) BGR or (H, W) gray uint8; ImageError when it is missing or not an image."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    return decode_bytes(data, str(path), max_pixels)


def is_image_file(path: str | Path) -> bool:
    """Whether a folder entry counts as an image by its suffix (hidden files do not)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
