"""Request parsing: the body (size and time limits), multipart (in memory) or JSON/base64, and the images in it
(magic bytes, header dimensions checked before decoding). Every client mistake is an :class:`ApiError`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
from typing import Any

import numpy as np

from .. import decode as _decode
from ..decode import MAGIC  # noqa: F401 (re-exported: the table the formats are read with)
from .schemas import ApiError, Limits

log = logging.getLogger("emolens.serve")  # one logger name for the whole server, as before the split

#: The package's one magic-byte table (emolens.decode); the API accepts these of its formats.
API_FORMATS = ("JPEG", "PNG", "BMP", "WebP")


_BATCH_BOXES = ("'boxes' is not taken by /v1/predict/batch (it would be ignored): send each image with its boxes "
                "to /v1/predict")

#: What an image file must be, for the spec: the server reads the format from the file's first bytes.
ACCEPTED_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/webp")


def loads_json(data: bytes | str) -> Any:
    """``json.loads`` whose every failure is a ValueError: deeply nested input ("[[[[...") makes the parser
    raise RecursionError, which would otherwise surface as a 500 (HTTP) or end a websocket session."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def image_format(data: bytes) -> str | None:
    """Lower-case format name from the magic bytes (:func:`emolens.decode.image_format`), None when it is not
    one the API accepts (:data:`API_FORMATS`)."""
    name = _decode.image_format(data)
    return name.lower() if name in API_FORMATS else None


def decode_image(data: bytes, limits: Limits, name: str = "image") -> np.ndarray:
    """Encoded bytes -> (H, W, 3) BGR or (H, W) gray uint8, after the cheap checks: size, magic bytes, header
    dimensions; then the one decoder of the package (``emolens.decode.decode_bytes``, EXIF orientation applied).

    The pixel count is read from the header by PIL's lazy ``Image.open`` (no pixel data decoded), so a
    decompression bomb is refused before it allocates anything.
    """
    image_size(data, limits, name)
    try:
        img = _decode.decode_bytes(data, name, max_pixels=max(limits.max_pixels, 1))
    except _decode.ImageError as e:
        raise ApiError(422, "bad_image", str(e)) from None
    if img.size == 0:
        raise ApiError(422, "bad_image", f"{name}: zero width or height")
    return img


def image_size(data: bytes, limits: Limits, name: str = "image") -> tuple[int, int]:
    """(width, height) from the header, after the checks that need no decoding: size, magic bytes, pixels."""
    from PIL import Image

    if not data:
        raise ApiError(400, "empty_image", f"{name}: empty (0 bytes)")
    if len(data) > limits.max_upload_bytes:
        raise ApiError(413, "image_too_large",
                       f"{name}: {len(data)} bytes, the limit is {limits.max_upload_bytes} bytes")
    fmt = image_format(data)
    if fmt is None:
        raise ApiError(415, "unsupported_image", f"{name}: not a JPEG, PNG, BMP or WebP image (by its first bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: parses the header only
            width, height = im.size
    except Image.DecompressionBombError as e:  # PIL's own guard, far above ours: say what it found
        raise ApiError(413, "too_many_pixels", _decode.bomb_message(e, name, limits.max_pixels)) from None
    except Exception:  # PIL raises many types for broken headers
        raise ApiError(422, "bad_image", f"{name}: unreadable {fmt.upper()} header (truncated or corrupt)") from None
    if width * height > limits.max_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"{name}: {width}x{height} = {width * height} pixels, the limit is {limits.max_pixels}")
    return width, height


def single_body_limit(limits: Limits) -> int:
    """Bytes of body a one-image request may send: the largest image as base64 with line breaks every 76
    characters (``base64.encodebytes`` and many tools write them; a CRLF is 4 characters inside a JSON string;
    without room for them a 10 MB image was refused as 14.3 MB > 14.0 MB), plus 64 KiB for the JSON or
    multipart around it."""
    b64 = -(-limits.max_upload_bytes // 3) * 4
    return b64 + -(-b64 // 76) * 4 + 64 * 1024


def decode_base64(text: Any, limits: Limits, name: str = "image") -> bytes:
    """Base64 (optionally a ``data:image/...;base64,`` URL) -> bytes; 400 when malformed."""
    if not isinstance(text, str):
        raise ApiError(422, "invalid_json", f"{name}: expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise ApiError(400, "bad_base64", f"{name}: a data URL must be base64 (data:image/...;base64,...)")
    text = "".join(text.split())  # line breaks are common in base64 from tools
    if len(text) * 3 // 4 > limits.max_upload_bytes + 3:
        raise ApiError(413, "image_too_large", f"{name}: larger than the {limits.max_upload_bytes} byte limit")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_base64", f"{name}: not valid base64") from None


async def read_body(request, limit: int, timeout_s: float) -> bytes:
    """The whole request body, refused early past ``limit`` bytes (413) or ``timeout_s`` seconds (408),
    so a slow or oversized upload cannot hold the server."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, "request_too_large", f"request body of {declared} bytes, the limit is {limit}")
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length header") from None
    buf = bytearray()

    async def collect() -> None:
        async for chunk in request.stream():
            buf.extend(chunk)
            if len(buf) > limit:
                raise ApiError(413, "request_too_large", f"request body over the limit of {limit} bytes")

    from starlette.requests import ClientDisconnect

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"request body not received within {timeout_s:g} s") from None
    except ClientDisconnect:  # the client went away: one line in the log, no traceback, nobody to answer
        client = request.client
        log.info("client %s disconnected during the upload of %s %s (%d of %s bytes received)",
                 f"{client.host}:{client.port}" if client else "?", request.method, request.url.path, len(buf),
                 declared or "?")
        raise ApiError(400, "client_disconnected", "the client closed the connection during the upload") from None
    return bytes(buf)


def parse_multipart(body: bytes, content_type: str, max_parts: int = Limits.max_form_parts
                    ) -> list[tuple[str, str | None, str, bytes]]:
    """multipart/form-data body -> [(field name, filename, part content-type, data)], all in memory.

    Starlette's own parser spools uploads over 1 MB to a temporary file; images here never touch the disk.
    Past ``max_parts`` parts it stops at once (413): 600,000 empty parts fit in 32 MB and cost seconds of
    parsing, more with every part.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_multipart", "multipart/form-data without a boundary")
    parts: list[dict[str, Any]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}
    done = {"end": False}

    def on_part_begin() -> None:
        if len(parts) >= max_parts:
            raise ApiError(413, "too_many_parts", f"multipart body with more than {max_parts} parts: send at "
                                                  "most the images and a few form fields")
        parts.append({"headers": {}, "data": bytearray()})

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_end() -> None:
        done["end"] = True

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_part_data": on_part_data,
                                        "on_header_field": on_header_field, "on_header_value": on_header_value,
                                        "on_header_end": on_header_end, "on_end": on_end})
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as e:  # python-multipart raises its own types for malformed input
        raise ApiError(400, "bad_multipart", f"malformed multipart body ({str(e)[:120]})") from None
    if not done["end"]:
        raise ApiError(400, "bad_multipart", "malformed multipart body (no closing boundary)")
    out = []
    for part in parts:
        disp, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        filename = opts[b"filename"].decode("utf-8", "replace") if b"filename" in opts else None
        ctype = part["headers"].get(b"content-type", b"application/octet-stream").decode("latin-1").lower()
        out.append((name, filename, ctype.split(";")[0].strip(), bytes(part["data"])))
    return out


async def read_images(request, limits: Limits, batch: bool, fields: dict[str, Any] | None = None
                      ) -> list[tuple[str, bytes]]:
    """The encoded images of a predict request (multipart or JSON): [(name for messages, bytes)]. With
    ``fields``, the request's ``boxes`` (JSON key, or multipart field holding JSON) is put there, parsed."""
    ctype = request.headers.get("content-type", "")
    media = ctype.split(";")[0].strip().lower()  # the boundary after it is case-sensitive
    if media not in ("multipart/form-data", "application/json"):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type {media or '(none)'!r}: send multipart/form-data (field 'file') "
                       "or application/json ({\"image\": \"<base64>\"})")
    limit = limits.max_request_bytes if batch else single_body_limit(limits)
    body = await read_body(request, limit, limits.body_timeout_s)
    if not body:
        raise ApiError(400, "empty_body", "empty request body: send an image")
    import anyio

    # Parsing 32 MB is CPU work: in a thread (not the model's limiter), so /healthz and the others are answered
    return await anyio.to_thread.run_sync(parse_images, body, ctype, limits, batch, fields)


def parse_images(body: bytes, content_type: str, limits: Limits, batch: bool,
                 fields: dict[str, Any] | None = None) -> list[tuple[str, bytes]]:
    """The images of a request body (multipart or JSON, by ``content_type``): [(name for messages, bytes)].
    Blocking: :func:`read_images` runs it in a worker thread."""
    media = content_type.split(";")[0].strip().lower()
    images: list[tuple[str, bytes]] = []
    if media == "multipart/form-data":
        for field, filename, part_type, data in parse_multipart(body, content_type, limits.max_form_parts):
            if field == "boxes" and batch:
                raise ApiError(422, "bad_boxes", _BATCH_BOXES)
            if field == "boxes" and fields is not None:
                try:
                    fields["boxes"] = loads_json(data)
                except (ValueError, UnicodeDecodeError):
                    raise ApiError(422, "bad_boxes", "form field 'boxes': not JSON [[x, y, w, h], ...]") from None
                continue
            if field not in ("file", "files"):
                continue  # other form fields are ignored, as HTML forms may add some
            # a batch names the image by its index in the results too: "image 2 (blob): truncated JPEG"
            label = f"image {len(images)} ({filename or field})" if batch else filename or field
            if part_type not in ("application/octet-stream", "") and not part_type.startswith("image/"):
                raise ApiError(415, "unsupported_media_type",
                               f"{label}: part Content-Type {part_type!r} is not an image")
            images.append((label, data))
        if not images:
            raise ApiError(422, "missing_file", "no form field 'file' in the multipart body")
    else:
        # json.loads holds the GIL for the whole parse (1 s for 16 M tiny values), so a thread does not help:
        # count first (fast). Base64 has no commas: a real request has one per image or box number.
        if body.count(b",") > limits.max_json_values:
            raise ApiError(413, "too_many_values", f"JSON body with more than {limits.max_json_values} values: "
                                                   "send the images and, for /v1/predict, the boxes only")
        try:
            payload = loads_json(body)
        except (ValueError, UnicodeDecodeError) as e:
            why = " (nested too deeply)" if "nested" in str(e) else ""
            raise ApiError(400, "bad_json", f"request body is not valid JSON{why}") from None
        if batch:
            if isinstance(payload, dict) and payload.get("boxes") is not None:
                raise ApiError(422, "bad_boxes", _BATCH_BOXES)
            items = payload.get("images") if isinstance(payload, dict) else payload
            if not isinstance(items, list):
                raise ApiError(422, "invalid_json", 'expected {"images": ["<base64>", ...]} or a JSON list')
        else:
            if not isinstance(payload, dict) or "image" not in payload:
                raise ApiError(422, "invalid_json", 'expected {"image": "<base64>"}')
            items = [payload["image"]]
            if fields is not None and payload.get("boxes") is not None:
                fields["boxes"] = payload["boxes"]
        bad = next((i for i, item in enumerate(items) if not isinstance(item, str)), None)
        if bad is not None:  # the shape is checked before the count: a wrong body is a 422 whatever its length
            where = f"images[{bad}]" if batch else "image"
            raise ApiError(422, "invalid_json", f"{where}: expected a base64 string, got {type(items[bad]).__name__}")
        if batch and len(items) > limits.max_batch:
            raise ApiError(413, "too_many_images", f"{len(items)} images, the limit is {limits.max_batch} per batch")
        for i, item in enumerate(items):
            name = f"images[{i}]" if batch else "image"
            images.append((name, decode_base64(item, limits, name)))
    if not images:
        raise ApiError(422, "missing_file", "no image in the request")
    if not batch and len(images) > 1:
        raise ApiError(422, "too_many_images", "several images sent to /v1/predict: use /v1/predict/batch")
    if len(images) > limits.max_batch:
        raise ApiError(413, "too_many_images", f"{len(images)} images, the limit is {limits.max_batch} per batch")
    return images

