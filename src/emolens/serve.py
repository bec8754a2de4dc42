"""HTTP API and browser web app: ``create_app()`` builds the FastAPI app, ``serve()`` runs it under uvicorn.

Endpoints (JSON in, JSON out; every client error is a 4xx with ``{"error": {"code", "message"}}``):

- ``POST /v1/predict``: one image, multipart field ``file`` or JSON ``{"image": "<base64>"}``;
- ``POST /v1/predict/batch``: several images, multipart fields ``file`` or JSON ``{"images": [...]}``;
- ``WS /v1/stream``: JPEG frames in (binary messages), faces with track ids out; frames that arrive while the
  previous one is being processed replace each other (only the newest waits), so a fast client sees drops,
  not a growing delay;
- ``GET /healthz``, ``GET /v1/model``, ``GET /docs`` (Swagger UI served from the package: works offline);
- ``GET /``: the web page (``emolens/web/``), camera and drag-and-drop upload.

The model is CPU-bound, so it runs in a worker thread (never on the event loop) behind a capacity limiter:
requests queue for it instead of oversubscribing the cores. One recognizer per worker process.
Images are decoded in memory and never written anywhere.

Example::

    from emolens.serve import create_app
    app = create_app(api_key="secret")          # loads the shipped model at startup
    # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hmac
import io
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from . import __version__

log = logging.getLogger("emolens.serve")

WEB_DIR = Path(__file__).with_name("web")
API_KEY_ENV = "EMOLENS_API_KEY"
OPTIONS_ENV = "EMOLENS_SERVE_OPTIONS"  # JSON options handed to each worker process by ``serve(workers>1)``
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

#: Leading bytes of the formats accepted (sized from the header, then decoded by ``predict.decode_bytes``).
MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"BM", "bmp"),
)


@dataclass(frozen=True)
class Limits:
    """What one request may cost. Defaults fit a webcam frame or a phone photo with room to spare."""

    max_upload_bytes: int = 10 * 1024 * 1024  # one encoded image
    max_pixels: int = 40_000_000  # width * height from the header, checked before decoding (bombs)
    max_batch: int = 16  # images in one /v1/predict/batch request
    max_request_bytes: int = 32 * 1024 * 1024  # whole request body (batch), base64 included
    body_timeout_s: float = 30.0  # a client must finish sending its body within this
    ws_idle_timeout_s: float = 60.0  # a websocket with no message for this long is closed
    max_faces: int = 32  # faces returned per image (largest first), bounds the work per request
    max_request_pixels: int = 50_000_000  # decoded pixels of a whole batch request (sum over its images)
    chunk_pixels: int = 4_000_000  # a batch runs in chunks of about this many pixels; other requests go between
    head_timeout_s: float = 5.0  # a connection must send a complete request head (line + headers) within this
    max_waiting_connections: int = 512  # connections without a request head; past it the oldest is closed
    max_requests: int = 64  # HTTP requests in progress at once; more get 503 (Retry-After)
    max_streams: int = 16  # live websocket streams at once; more are closed with code 1013 (try again later)


class ApiError(Exception):
    """A client error: becomes ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ---------------------------------------------------------------------------------------------- schemas

Tta = Literal["none", "flip", "crops"]


def _detector_names() -> tuple[str, ...]:
    try:
        from .faces import list_detectors
    except ImportError:  # pragma: no cover - only while emolens.faces is being written
        return ("auto",)
    return tuple(list_detectors())


Detector = Literal[_detector_names()]  # type: ignore[valid-type]  # every detector emolens knows


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. image_too_large")
    message: str = Field(description="what went wrong and how to fix it")


class ErrorOut(BaseModel):
    error: ErrorDetail


class FaceOut(BaseModel):
    box: list[int] = Field(description="[x, y, width, height] in pixels of the sent image", min_length=4,
                           max_length=4)
    emotion: str
    confidence: float = Field(ge=0, le=1)
    probabilities: dict[str, float]


class ImageSize(BaseModel):
    width: int
    height: int


class ModelRef(BaseModel):
    name: str
    sha256: str


class PredictOut(BaseModel):
    faces: list[FaceOut]
    image: ImageSize
    model: ModelRef
    timing_ms: float = Field(description="server time for this request, decode to answer")


class ImageResult(BaseModel):
    faces: list[FaceOut]
    image: ImageSize


class BatchOut(BaseModel):
    results: list[ImageResult]
    model: ModelRef
    timing_ms: float


class ModelOut(BaseModel):
    name: str
    runtime: str
    classes: list[str]
    sha256: str = Field(description="SHA-256 of the model file")
    accuracy: float | None = Field(description="FER2013 public-test accuracy recorded in the model file")
    metrics: dict[str, Any]
    stream_smoothing: str = Field(description="how /v1/stream smooths labels per track: temporal, ema or none")
    version: str = Field(description="emolens version")


class HealthOut(BaseModel):
    status: str
    version: str
    model_loaded: bool
    auth_required: bool


class ImageJSON(BaseModel):
    image: str = Field(description="base64 of a JPEG/PNG/BMP/WebP file (a data: URL is accepted)",
                       json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/*"})
    boxes: list[list[float]] | None = Field(
        None, description="your own face boxes [[x, y, w, h], ...] in pixels of the image, classified in that order "
                          "instead of detecting faces (multipart: a form field 'boxes' holding this JSON); a box "
                          "not inside the image is a 422")


class BatchJSON(BaseModel):
    images: list[str] = Field(description="base64 images, at most the server's batch limit")


#: What an image file must be, for the spec: the server reads the format from the file's first bytes.
ACCEPTED_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/webp")


def _limits_text(limits: Limits, batch: bool) -> str:
    each = (f"Each image: a JPEG, PNG, BMP or WebP file (recognised by its first bytes; anything else is 415), "
            f"at most {limits.max_upload_bytes} bytes (413) and {limits.max_pixels} pixels, width x height read "
            f"from its header before decoding (413); an unreadable one is 422.")
    if not batch:
        return each
    return (f"{each} At most {limits.max_batch} images (413) and {limits.max_request_pixels} pixels in all "
            f"(413), {limits.max_request_bytes} bytes of request body (413).")


def _request_body_spec(batch: bool, limits: Limits | None = None) -> dict[str, Any]:
    """The request body in the OpenAPI spec: the routes read the raw body themselves (limits, timeouts,
    in-memory multipart), so FastAPI cannot infer it. It names the accepted file types and the limits."""
    limits = limits or Limits()
    file_prop = {"type": "string", "format": "binary", "contentMediaType": "image/*",
                 "description": "a JPEG, PNG, BMP or WebP file"}
    form = ({"type": "object", "properties": {"file": {"type": "array", "items": file_prop,
                                                        "description": f"at most {limits.max_batch} files"}},
             "required": ["file"]}
            if batch else {"type": "object", "properties": {"file": file_prop}, "required": ["file"]})
    model = BatchJSON if batch else ImageJSON
    return {"requestBody": {"required": True, "description": _limits_text(limits, batch), "content": {
        "multipart/form-data": {"schema": form,
                                "encoding": {"file": {"contentType": ", ".join(ACCEPTED_TYPES)}}},
        "application/json": {"schema": model.model_json_schema()},
    }}}


def loads_json(data: bytes | str) -> Any:
    """``json.loads`` whose every failure is a ValueError: deeply nested input ("[[[[...") makes the parser
    raise RecursionError, which would otherwise surface as a 500 (HTTP) or end a websocket session."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


# ---------------------------------------------------------------------------------------------- images


def image_format(data: bytes) -> str | None:
    """Format name from the magic bytes, None when not an accepted image."""
    for magic, name in MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decode_image(data: bytes, limits: Limits, name: str = "image") -> np.ndarray:
    """Encoded bytes -> (H, W, 3) BGR or (H, W) gray uint8, after the cheap checks: size, magic bytes, header
    dimensions; then the one decoder of the package (``emolens.predict.decode_bytes``, EXIF orientation applied).

    The pixel count is read from the header by PIL's lazy ``Image.open`` (no pixel data decoded), so a
    decompression bomb is refused before it allocates anything.
    """
    from .predict import ImageError, decode_bytes

    image_size(data, limits, name)
    try:
        img = decode_bytes(data, name, max_pixels=max(limits.max_pixels, 1))
    except ImageError as e:
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
        raise ApiError(413, "too_many_pixels", f"{name}: {e} (the limit here is {limits.max_pixels})") from None
    except Exception:  # PIL raises many types for broken headers
        raise ApiError(422, "bad_image", f"{name}: unreadable {fmt.upper()} header (truncated or corrupt)") from None
    if width * height > limits.max_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"{name}: {width}x{height} = {width * height} pixels, the limit is {limits.max_pixels}")
    return width, height


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


# ---------------------------------------------------------------------------------------------- requests


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


def parse_multipart(body: bytes, content_type: str) -> list[tuple[str, str | None, str, bytes]]:
    """multipart/form-data body -> [(field name, filename, part content-type, data)], all in memory.

    Starlette's own parser spools uploads over 1 MB to a temporary file; images here never touch the disk.
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
    limit = limits.max_request_bytes if batch else limits.max_upload_bytes * 4 // 3 + 64 * 1024
    body = await read_body(request, limit, limits.body_timeout_s)
    if not body:
        raise ApiError(400, "empty_body", "empty request body: send an image")
    images: list[tuple[str, bytes]] = []
    if media == "multipart/form-data":
        for field, filename, part_type, data in parse_multipart(body, ctype):
            if field == "boxes" and fields is not None:
                try:
                    fields["boxes"] = loads_json(data)
                except (ValueError, UnicodeDecodeError):
                    raise ApiError(422, "bad_boxes", "form field 'boxes': not JSON [[x, y, w, h], ...]") from None
                continue
            if field not in ("file", "files"):
                continue  # other form fields are ignored, as HTML forms may add some
            label = filename or field
            if part_type not in ("application/octet-stream", "") and not part_type.startswith("image/"):
                raise ApiError(415, "unsupported_media_type",
                               f"{label}: part Content-Type {part_type!r} is not an image")
            images.append((label, data))
        if not images:
            raise ApiError(422, "missing_file", "no form field 'file' in the multipart body")
    else:
        try:
            payload = loads_json(body)
        except (ValueError, UnicodeDecodeError) as e:
            why = " (nested too deeply)" if "nested" in str(e) else ""
            raise ApiError(400, "bad_json", f"request body is not valid JSON{why}") from None
        if batch:
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


def check_api_key(expected: str | None, given: str | None) -> None:
    """401 unless ``given`` matches (constant-time compare); no-op when the server has no key."""
    if not expected:
        return
    if not given:
        raise ApiError(401, "unauthorized", "missing API key: send header 'X-API-Key: <key>'")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, "unauthorized", "invalid API key")


def _key_from_headers(headers) -> str | None:
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


# ---------------------------------------------------------------------------------------------- connections


def host_name(host_header: str) -> str:
    """The name part of a Host header, lower case, port dropped: ``[::1]:8000`` -> ``[::1]``."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[:h.index("]") + 1] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class _HostCheck:
    """ASGI guard against DNS rebinding: a web page elsewhere whose name is made to resolve to 127.0.0.1 reaches
    a local server with its own name in the Host header. Only localhost names (and ``allowed``) are served;
    other hosts get 400 JSON (HTTP) or a refused handshake (websocket). ``allowed`` None = every host (a server
    with an API key: the key is what protects it)."""

    def __init__(self, app, allowed: frozenset[str] | None):
        self.app, self.allowed = app, allowed

    def _ok(self, scope) -> tuple[bool, str]:
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), None)
        if host is None or self.allowed is None:  # HTTP/1.0 without Host: not a browser, not rebinding
            return True, ""
        name = host_name(host)
        return is_local_host(name) or name in self.allowed, name

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            ok, name = self._ok(scope)
            if not ok:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008, "reason": "host not allowed"})
                    return
                msg = (f"Host {name!r} is not served here: this server answers to localhost names only; start it "
                       "with --allowed-host NAME (or an API key) to serve other names")
                await JSONResponse({"error": {"code": "host_not_allowed", "message": msg}},
                                   status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Admission:
    """ASGI bound on work in progress: past ``max_requests`` HTTP requests, 503 JSON with Retry-After; past
    ``max_streams`` websocket streams, the handshake is refused with code 1013 (try again later). Connections
    that have not sent a request head do not count (see :class:`HeadTimeoutMixin`), so slow clients cannot
    use up these places."""

    def __init__(self, app, max_requests: int, max_streams: int):
        self.app, self.max = app, {"http": max_requests, "websocket": max_streams}
        self.active = {"http": 0, "websocket": 0}

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in self.active:
            await self.app(scope, receive, send)
            return
        if self.active[kind] >= self.max[kind]:
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1013, "reason": "server busy, try again later"})
                return
            await JSONResponse({"error": {"code": "busy", "message": f"{self.max[kind]} requests in progress; "
                                          "retry in a moment"}}, status_code=503,
                               headers={"Retry-After": "1"})(scope, receive, send)
            return
        self.active[kind] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[kind] -= 1


class HeadTimeoutMixin:
    """Slow-client guard for uvicorn's HTTP protocols. uvicorn has no request-head timeout (``timeout_keep_alive``
    is reset by every byte received), so a client sending one header byte every few seconds holds its
    connection forever, and a few hundred such clients lock everyone out. Here a connection must send a
    complete request head within ``head_timeout_s`` of opening (or of its previous response), else it is
    closed; and when more than ``max_waiting_connections`` connections wait for a head, the oldest is closed.
    The ASGI app (bodies, websockets) is untouched: a head once received disarms the timer."""

    head_timeout_s: float = Limits.head_timeout_s
    max_waiting: int = Limits.max_waiting_connections
    _closed = 0  # slow connections closed since the last log line
    _logged_at = 0.0

    def _waiting(self) -> dict:
        state = self.server_state  # shared by all connections of one server
        if not hasattr(state, "emolens_waiting"):
            state.emolens_waiting = {}  # insertion-ordered: the first is the oldest
        return state.emolens_waiting

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        timeout = float(getattr(self.config, "emolens_head_timeout_s", self.head_timeout_s))
        self._head_timer = self.loop.call_later(timeout, self._close_slow, timeout)
        waiting = self._waiting()
        waiting[self] = None
        limit = int(getattr(self.config, "emolens_max_waiting", self.max_waiting))
        while len(waiting) > limit:
            oldest = next(iter(waiting))
            oldest._close_slow(None)

    def _disarm_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None
        self._waiting().pop(self, None)

    def _close_slow(self, timeout: float | None) -> None:
        self._disarm_head_timer()
        if not self.transport.is_closing():
            self.transport.close()
            cls = HeadTimeoutMixin
            cls._closed += 1
            now = time.monotonic()
            if now - cls._logged_at > 10:  # one line per 10 s, however many: an attack must not flood the log
                why = f"no complete request head within {timeout:g} s" if timeout else "too many waiting"
                log.warning("closed %d slow connection(s) (%s)", cls._closed, why)
                cls._closed, cls._logged_at = 0, now

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        upgraded = self.transport.get_protocol() is not self  # websocket: the new protocol owns it now
        if upgraded or self.cycle is not before:  # a request head was parsed
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()  # keep-alive: the next head has the same deadline


@functools.cache
def _http_protocol() -> type:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with :class:`HeadTimeoutMixin`."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # httptools is optional in uvicorn
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    return type(f"HeadTimeout{base.__name__}", (HeadTimeoutMixin, base), {"__module__": __name__})


def __getattr__(name: str) -> Any:  # the protocol class by name: uvicorn pickles its config for worker processes
    if name.startswith("HeadTimeout") and name == _http_protocol().__name__:
        return _http_protocol()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------- engine


class Engine:
    """The recognizer plus what the API needs around it: per-request options, tracking, the model card.

    All methods are blocking (CPU): call them from a worker thread.
    """

    def __init__(self, recognizer: Any, smooth: str = "auto"):
        self.recognizer = recognizer
        self.smooth = smooth
        self._smoother: Any = None  # template: its (read-only) temporal head is shared by every stream
        self._info: dict[str, Any] | None = None

    def new_video_processor(self):
        """A fresh tracker + smoother for one live stream (ids start at 1, no history)."""
        from .video import EmaSmoother, Smoother, TemporalSmoother, VideoProcessor, frame_encoder_for, make_smoother

        if self._smoother is None:
            self._smoother = make_smoother(self.smooth, frame_encoder_for(self.recognizer), warn=log.warning)
        # Detect on every frame: frames arrive at the client's pace and some are dropped, so the motion
        # model has less to go on than in a video file.
        proc = VideoProcessor(self.recognizer, smooth="none", detect_every=1)
        t = self._smoother
        proc.smoother = (TemporalSmoother(t.head) if isinstance(t, TemporalSmoother)
                         else EmaSmoother(t.alpha) if isinstance(t, EmaSmoother) else Smoother())
        return proc

    def stream_smoothing(self) -> str:
        return getattr(self._smoother, "name", self.smooth)

    # The recognizer API (emolens.predict) is adapted here so the routes do not depend on its details.
    @property
    def classifier(self):
        return self.recognizer.classifier

    def model_info(self) -> dict[str, Any]:
        if self._info is None:
            info = self.classifier.info()
            metrics = info.get("metrics") or {}
            acc = metrics.get("public_acc_flip", metrics.get("public_acc"))
            self._info = {"name": info.get("name", ""), "runtime": info.get("runtime", ""),
                          "classes": list(info.get("classes", [])), "sha256": info.get("sha256", ""),
                          "accuracy": None if acc is None or not math.isfinite(float(acc)) else float(acc),
                          "metrics": _finite(metrics), "stream_smoothing": self.stream_smoothing(),
                          "version": __version__}
        return self._info

    def model_ref(self) -> dict[str, str]:
        info = self.model_info()
        return {"name": info["name"], "sha256": info["sha256"]}

    def predict(self, images: list[np.ndarray], detector: str | None = None, tta: str | None = None,
                faces_only: bool = False, max_faces: int = 32, boxes: Any = None) -> list[list[dict[str, Any]]]:
        """BGR or gray images -> per image, its faces {box, emotion, confidence, probabilities}, largest
        ``max_faces`` (in the recognizer's left-to-right order). ``boxes``: the user's face boxes of the one
        image, instead of detection. Bad options, images or boxes raise ApiError."""
        from .faces import DetectorError
        from .predict import BoxError, ImageError
        from .runtime import ModelError

        try:
            if boxes is not None:
                if faces_only or len(images) != 1:
                    raise BoxError("boxes go with one image, and not with faces_only")
                if isinstance(boxes, list) and len(boxes) > max_faces:
                    raise BoxError(f"{len(boxes)} boxes, the limit is {max_faces} faces per image")
                per_image = [self.recognizer.predict(images[0], boxes=boxes, **_opt(tta=tta))]
            else:
                per_image = self.recognizer.predict_batch(images, **_opt(tta=tta, detector=detector),
                                                          detect=False if faces_only else None)
        except BoxError as e:
            raise ApiError(422, "bad_boxes", str(e)) from None
        except DetectorError as e:
            raise ApiError(422, "detector_unavailable", str(e)) from None
        except ImageError as e:
            raise ApiError(422, "bad_image", str(e)) from None
        except ModelError as e:  # damaged weights giving NaN: the server's fault, said in JSON, never NaN
            log.error("model error: %s", e)
            raise ApiError(500, "model_error", "the model gave no valid output (logged on the server)") from None
        out = []
        for faces in per_image:
            keep = {id(f) for f in sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)[:max_faces]}
            out.append([_face_out(f) for f in faces if id(f) in keep])
        return out


def _opt(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """JSON cannot carry NaN/inf: drop them (and anything not a plain scalar)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            out[k] = v
        elif isinstance(v, int | float | np.floating | np.integer) and math.isfinite(float(v)):
            out[k] = v.item() if hasattr(v, "item") else v
    return out


def _face_out(face: Any) -> dict[str, Any]:
    d = face.to_dict() if hasattr(face, "to_dict") else dict(face)
    return {"box": [int(v) for v in d["box"]], "emotion": str(d["emotion"]), "confidence": float(d["confidence"]),
            "probabilities": {str(k): float(v) for k, v in d["probabilities"].items()}}


def load_recognizer(model: str | None = None, runtime: str = "auto", detector: str = "auto",
                    tta: str = "none", max_pixels: int = 50_000_000) -> Any:
    """The recognizer the server uses (``emolens.predict.EmotionRecognizer``); one per worker process."""
    from .faces import DetectorError
    from .predict import EmotionRecognizer

    if runtime == "auto" and model is None:
        runtime = "onnx"
    try:
        return EmotionRecognizer(model=model, runtime=runtime, detector=detector, tta=tta, max_pixels=max_pixels)
    except DetectorError as e:
        raise ValueError(str(e)) from None


# ---------------------------------------------------------------------------------------------- app


def create_app(recognizer: Any = None, api_key: str | None = None, max_upload_mb: float = 10,
               max_pixels: int = 40_000_000, max_batch: int = 16, cors_origins: Sequence[str] = (),
               limits: Limits | None = None, inference_threads: int = 1,
               recognizer_factory: Callable[[], Any] | None = None, stream_smoothing: str = "auto",
               allowed_hosts: Sequence[str] = (), max_request_pixels: int = Limits.max_request_pixels):
    """The FastAPI app. ``recognizer`` None loads the shipped model at startup (``recognizer_factory`` to
    load another); ``api_key`` set = every ``/v1`` call needs header ``X-API-Key``; ``cors_origins`` empty =
    no cross-origin reads. ``inference_threads`` bounds concurrent model calls in this process;
    ``stream_smoothing`` (auto | temporal | ema | none) labels the live stream's tracks. Without an API key
    only requests whose Host is a localhost name or one of ``allowed_hosts`` are served (DNS rebinding)."""
    if limits is None:
        limits = Limits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=int(max_pixels),
                        max_batch=int(max_batch), max_request_pixels=int(max_request_pixels))
    api_key = api_key or None
    state: dict[str, Any] = {"engine": Engine(recognizer, stream_smoothing) if recognizer is not None else None}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import anyio

        if state["engine"] is None:
            factory = recognizer_factory or load_recognizer
            state["engine"] = Engine(await anyio.to_thread.run_sync(factory), stream_smoothing)
        state["limiter"] = app.state.limiter = anyio.CapacityLimiter(inference_threads)  # FIFO: fair turns
        # Off the event loop, once: hash the model file, load the temporal head for streams.
        await anyio.to_thread.run_sync(state["engine"].new_video_processor)
        await anyio.to_thread.run_sync(state["engine"].model_info)
        yield

    app = FastAPI(title="emolens", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description=_description(limits))
    app.state.limits = limits
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["content-type", "x-api-key", "authorization"])
    app.add_middleware(_Admission, max_requests=limits.max_requests, max_streams=limits.max_streams)
    hosts = None if api_key else frozenset(host_name(h) for h in allowed_hosts)
    app.add_middleware(_HostCheck, allowed=hosts)  # outermost: a foreign Host is refused before anything else

    # ---- errors: always {"error": {"code", "message"}}, never a traceback
    def error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if exc.status == 401 else None
        return error(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, "invalid_parameter", f"{where}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, "internal_error", "internal server error (logged on the server)")

    # ---- auth: a header scheme so /docs has an Authorize button and the spec says what to send
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="required when the server was started with an API key")

    async def require_key(request: Request, key: str | None = Depends(key_header)) -> None:
        check_api_key(api_key, key or _key_from_headers(request.headers))

    # The spec declares the key (and /docs shows "Authorize") only when this server has one.
    auth = [Depends(require_key)] if api_key else []

    def engine() -> Engine:
        if state["engine"] is None:
            raise ApiError(503, "not_ready", "the model is still loading")
        return state["engine"]

    async def in_thread(fn: Callable, *args: Any) -> Any:
        import anyio

        return await anyio.to_thread.run_sync(fn, *args, limiter=state["limiter"])

    err = {"model": ErrorOut}
    predict_docs = {s: err for s in (400, 401, 408, 413, 415, 422)}

    # ---- routes
    @app.get("/healthz", tags=["service"], response_model=HealthOut)
    async def healthz() -> dict[str, Any]:
        """Liveness and readiness (no API key needed)."""
        return {"status": "ok" if state["engine"] is not None else "loading", "version": __version__,
                "model_loaded": state["engine"] is not None, "auth_required": api_key is not None}

    @app.get("/v1/model", tags=["model"], response_model=ModelOut, dependencies=auth,
             responses={401: err})
    async def model_card() -> dict[str, Any]:
        """The loaded model: name, classes, accuracy (FER2013 public test), SHA-256 of the model file."""
        return engine().model_info()

    tta_q = Query(None, description="test-time augmentation (default: the server's)")
    det_q = Query(None, description="face detector (default: the server's)")
    faces_only_q = Query(False, description="skip detection: the whole image is one face crop")

    @app.post("/v1/predict", tags=["predict"], response_model=PredictOut, dependencies=auth,
              responses=predict_docs, openapi_extra=_request_body_spec(batch=False, limits=limits))
    async def predict(request: Request, detector: Detector | None = det_q, tta: Tta | None = tta_q,
                      faces_only: bool = faces_only_q) -> dict[str, Any]:
        """Emotions of the faces in one image (multipart field ``file``, or JSON ``{"image": "<base64>"}``); with
        ``boxes`` (JSON key or form field), of the faces in those boxes."""
        t0 = time.perf_counter()
        fields: dict[str, Any] = {}
        (name, data), = await read_images(request, limits, batch=False, fields=fields)
        eng = engine()

        def work() -> dict[str, Any]:
            img = decode_image(data, limits, name)
            (faces,) = eng.predict([img], detector, tta, faces_only, limits.max_faces, fields.get("boxes"))
            return {"faces": faces, "image": {"width": img.shape[1], "height": img.shape[0]}}

        out = await in_thread(work)
        return {**out, "model": eng.model_ref(), "timing_ms": round((time.perf_counter() - t0) * 1000, 2)}

    @app.post("/v1/predict/batch", tags=["predict"], response_model=BatchOut, dependencies=auth,
              responses=predict_docs, openapi_extra=_request_body_spec(batch=True, limits=limits))
    async def predict_batch(request: Request, detector: Detector | None = det_q, tta: Tta | None = tta_q,
                            faces_only: bool = faces_only_q) -> dict[str, Any]:
        """Emotions for several images: multipart fields ``file`` (repeated) or JSON ``{"images": [...]}``.
        Results come in the order sent; one bad image fails the request (its index is in the message)."""
        import anyio

        t0 = time.perf_counter()
        images = await read_images(request, limits, batch=True)
        eng = engine()
        # every header first (cheap, no decoding): a bad image or a batch over the pixel budget fails at once
        sizes = await anyio.to_thread.run_sync(lambda: [image_size(data, limits, name) for name, data in images])
        total = sum(w * h for w, h in sizes)
        if total > limits.max_request_pixels:
            raise ApiError(413, "too_many_pixels", f"{len(images)} images of {total} pixels in all, the limit is "
                                                   f"{limits.max_request_pixels} per request: send fewer or smaller")

        def work(chunk: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
            decoded = [decode_image(data, limits, name) for name, data in chunk]
            faces = eng.predict(decoded, detector, tta, faces_only, limits.max_faces)  # crops batched together
            return [{"faces": f, "image": {"width": img.shape[1], "height": img.shape[0]}}
                    for f, img in zip(faces, decoded, strict=True)]

        # Chunks of about chunk_pixels, each one turn of the model: a small request waiting for the model runs
        # between two chunks (the limiter is FIFO) instead of after the whole batch.
        results: list[dict[str, Any]] = []
        chunk: list[tuple[str, bytes]] = []
        pixels = 0
        for item, (w, h) in zip(images, sizes, strict=True):
            if chunk and pixels + w * h > limits.chunk_pixels:
                results += await in_thread(work, chunk)
                chunk, pixels = [], 0
            chunk.append(item)
            pixels += w * h
        if chunk:
            results += await in_thread(work, chunk)
        return {"results": results, "model": eng.model_ref(),
                "timing_ms": round((time.perf_counter() - t0) * 1000, 2)}

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await _stream(ws, engine_getter=engine, in_thread=in_thread, api_key=api_key, limits=limits,
                      cors_origins=cors_origins)

    # ---- docs and web page, all from the package (no CDN)
    docs_static = _swagger_static_dir()
    if docs_static is not None:
        app.mount("/docs-static", StaticFiles(directory=docs_static), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        if docs_static is None:  # the API still works; the page says why the UI is missing
            return _plain_docs_page()
        return get_swagger_ui_html(openapi_url="/openapi.json", title="emolens API",
                                   swagger_js_url="/docs-static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-static/swagger-ui.css",
                                   swagger_favicon_url="/static/favicon.svg")

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(WEB_DIR / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


def _description(limits: Limits) -> str:
    return _DESCRIPTION + f"""

**Limits** (this server): {_limits_text(limits, batch=True)} A batch runs in chunks of about
{limits.chunk_pixels} pixels, so small requests are answered between the chunks of a large one. The request
body must arrive within {limits.body_timeout_s:g} s (408); a connection must send its request line and headers
within {limits.head_timeout_s:g} s or it is closed; at most {limits.max_requests} requests are in progress at
once (503 with `Retry-After` past that) and {limits.max_streams} live streams. Without an API key the server
answers only to localhost host names (400 `host_not_allowed` otherwise)."""


_DESCRIPTION = """Facial emotion recognition (angry, disgust, fear, happy, neutral, sad, surprise).
Images are processed in memory and never stored. Errors are 4xx with `{"error": {"code", "message"}}`.

**Live stream** (WebSocket, not listed below): connect to `/v1/stream`; the server sends `{"type": "ready"}`
(with an API key: send header `X-API-Key`, or first a text message `{"api_key": "..."}`); then send JPEG
frames as binary messages. Each processed frame is answered with `{"type": "result", "frame", "width",
"height", "faces": [{"track_id", "box", "emotion", "confidence", "probabilities"}], "dropped", "timing_ms"}`;
frames sent faster than they can be processed are dropped (only the newest waits), never queued. A text
message `{"reset": true}` restarts tracking. Idle connections are closed after a minute."""

_PAGE_HEADERS = {
    # Only our own scripts, styles and the API (ws: for the stream); blob:/data: for camera and upload previews.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "connect-src 'self' ws: wss:; script-src 'self'; style-src 'self'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def _swagger_static_dir() -> str | None:
    """Swagger UI 5 files shipped inside the ``fastapi-offline`` wheel (a dependency): /docs works offline."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    path = Path(fastapi_offline.__file__).parent / "static"
    return str(path) if (path / "swagger-ui-bundle.js").is_file() else None


def _plain_docs_page() -> HTMLResponse:
    return HTMLResponse("<!doctype html><title>emolens API</title><h1>emolens API</h1><p>The interactive docs "
                        "need the <code>fastapi-offline</code> package. The OpenAPI spec is at "
                        "<a href='/openapi.json'>/openapi.json</a>.</p>")


# ---------------------------------------------------------------------------------------------- websocket


def _same_origin(ws, cors_origins: Sequence[str]) -> bool:
    """Browsers do not apply CORS to websockets: refuse pages from other origins ourselves."""
    origin = ws.headers.get("origin")
    if origin is None or origin in cors_origins or "*" in cors_origins:
        return True  # non-browser clients send no Origin
    from urllib.parse import urlsplit

    return urlsplit(origin).netloc == ws.headers.get("host", "")


async def _stream(ws, *, engine_getter, in_thread, api_key: str | None, limits: Limits,
                  cors_origins: Sequence[str]) -> None:
    """One live session: a receiver keeps only the newest frame, a processor answers it.

    Protocol: server sends ``{"type": "ready"}``; client sends JPEG frames as binary messages (and, when
    the server has a key and no header was sent, first a text ``{"api_key": "..."}``); server answers each
    processed frame with ``{"type": "result", "frame", "faces": [{track_id, box, emotion, ...}], "dropped"}``,
    or ``{"type": "error", "frame", "error": {...}}`` for a bad frame (the session goes on).
    """
    if not _same_origin(ws, cors_origins):
        await ws.close(code=1008, reason="cross-origin websocket refused")
        return
    await ws.accept()
    try:
        key = _key_from_headers(ws.headers)
        if api_key and not key:
            msg = await asyncio.wait_for(ws.receive_text(), min(10.0, limits.ws_idle_timeout_s))
            try:
                key = loads_json(msg).get("api_key")
            except (ValueError, AttributeError):
                key = None
        try:
            check_api_key(api_key, key if isinstance(key, str) else None)
        except ApiError as e:
            await ws.close(code=1008, reason=e.message)
            return
        eng = engine_getter()
        await ws.send_json({"type": "ready", "model": eng.model_ref()})
    except (TimeoutError, WebSocketDisconnect, ApiError, KeyError, RuntimeError):
        with contextlib.suppress(Exception):
            await ws.close(code=1008, reason="no API key received")
        return

    try:
        session = await in_thread(_StreamSession, eng, limits)
    except Exception:
        log.exception("live stream: cannot start the video pipeline")
        await ws.close(code=1011, reason="the server cannot process video (logged on the server)")
        return
    latest: list[tuple[int, bytes]] = []  # at most one pending frame
    wake = asyncio.Event()
    counters = {"received": 0, "dropped": 0}

    async def receiver() -> None:
        while True:
            try:
                msg = await asyncio.wait_for(ws.receive(), limits.ws_idle_timeout_s)
            except TimeoutError:
                await ws.close(code=1001, reason=f"idle for {limits.ws_idle_timeout_s:g} s")
                return
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is None:
                try:
                    control = loads_json(msg.get("text") or "null")
                except ValueError as e:
                    if "nested" in str(e):  # a hostile message: say so, keep the session
                        await ws.send_json({"type": "error", "error": {
                            "code": "bad_json", "message": "text message: JSON nested too deeply"}})
                    continue  # other text (pings, plain words) is ignored
                if isinstance(control, dict) and control.get("reset"):
                    session.reset()
                continue  # other JSON (a repeated api_key) is ignored
            if latest:
                counters["dropped"] += 1  # the unprocessed frame is superseded: drop it, do not queue
                latest.clear()
            latest.append((counters["received"], data))
            counters["received"] += 1
            wake.set()

    async def processor() -> None:
        while True:
            await wake.wait()
            wake.clear()
            if not latest:
                continue
            index, data = latest.pop()
            reply = await in_thread(session.process, data)
            reply.update(frame=index, dropped=counters["dropped"], received=counters["received"])
            await ws.send_json(reply)

    recv_task = asyncio.create_task(receiver())
    proc_task = asyncio.create_task(processor())
    try:
        done, _ = await asyncio.wait({recv_task, proc_task}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                log.warning("stream ended: %s: %s", type(exc).__name__, exc)
    finally:
        for task in (recv_task, proc_task):
            task.cancel()
        with contextlib.suppress(Exception):
            await ws.close()


class _StreamSession:
    """Per-connection state: ``emolens.video.VideoProcessor`` (face tracker with stable ids, per-track
    smoothing by the temporal model when one fits the image model, else an EMA)."""

    def __init__(self, engine: Engine, limits: Limits):
        self.engine, self.limits = engine, limits
        self.processor = engine.new_video_processor()
        self.failed = False  # log the first internal error of a session only

    def reset(self) -> None:
        self.processor = self.engine.new_video_processor()

    def process(self, data: bytes) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            img = decode_image(data, self.limits, "frame")
        except ApiError as e:
            return {"type": "error", "error": {"code": e.code, "message": e.message}}
        try:
            tracked = self.processor.process(img)
        except Exception:  # a server bug must not look like the client's fault, nor end the session silently
            if not self.failed:
                log.exception("live stream: processing a frame failed")
            self.failed = True
            return {"type": "error", "error": {"code": "internal_error",
                                               "message": "the server failed on this frame (logged on the server)"}}
        faces = [_face_out(f) | {"track_id": int(f.track_id)} for f in tracked]
        return {"type": "result", "width": img.shape[1], "height": img.shape[0], "faces": faces,
                "timing_ms": round((time.perf_counter() - t0) * 1000, 2)}


# ---------------------------------------------------------------------------------------------- running


@dataclass
class ServeOptions:
    """What ``emolens serve`` hands to each worker process (as JSON in EMOLENS_SERVE_OPTIONS)."""

    model: str | None = None
    runtime: str = "auto"
    detector: str = "auto"
    tta: str = "none"
    max_upload_mb: float = 10
    max_pixels: int = 40_000_000
    max_batch: int = 16
    cors_origins: tuple[str, ...] = ()
    inference_threads: int = 1
    smooth: str = "auto"
    allowed_hosts: tuple[str, ...] = ()  # host names served besides localhost ones (without an API key)
    max_request_pixels: int = Limits.max_request_pixels


def _app_from_options(opts: ServeOptions, api_key: str | None, recognizer: Any = None):
    return create_app(recognizer=recognizer, api_key=api_key, max_upload_mb=opts.max_upload_mb,
                      max_pixels=opts.max_pixels, max_batch=opts.max_batch, cors_origins=opts.cors_origins,
                      inference_threads=opts.inference_threads, stream_smoothing=opts.smooth,
                      allowed_hosts=opts.allowed_hosts, max_request_pixels=opts.max_request_pixels,
                      recognizer_factory=lambda: load_recognizer(opts.model, opts.runtime, opts.detector, opts.tta,
                                                                 opts.max_pixels))


def app_from_env():
    """uvicorn factory for worker processes: options from EMOLENS_SERVE_OPTIONS, key from EMOLENS_API_KEY."""
    raw = json.loads(os.environ.get(OPTIONS_ENV, "{}"))
    raw["cors_origins"] = tuple(raw.get("cors_origins", ()))
    raw["allowed_hosts"] = tuple(raw.get("allowed_hosts", ()))
    return _app_from_options(ServeOptions(**raw), os.environ.get(API_KEY_ENV) or None)


def is_local_host(host: str) -> bool:
    """localhost, ::1 or a 127.x.x.x address (a name such as ``127.0.0.1.example.com`` is not)."""
    import ipaddress

    if host.lower() in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_settings(limits: Limits | None = None, **overrides: Any) -> dict[str, Any]:
    """uvicorn settings that bound what one client can hold: a connection must send its request head within
    ``Limits.head_timeout_s`` (:class:`HeadTimeoutMixin`), idle keep-alive connections close after 5 s,
    websocket messages are capped at the upload limit. Work in progress is bounded in the app (``Limits``:
    requests, streams, body and websocket timeouts), not by uvicorn's ``limit_concurrency``, which counts
    connections that have sent nothing yet and so lets slow clients lock everyone out."""
    limits = limits or Limits()
    kw: dict[str, Any] = dict(log_level="info", timeout_keep_alive=5, timeout_graceful_shutdown=5,
                              ws_max_size=limits.max_upload_bytes + 1024, limit_concurrency=None,
                              server_header=False, http=_http_protocol())
    kw.update(overrides)
    return kw


def server_config(app: Any, host: str = "127.0.0.1", port: int = 8000, **overrides: Any):
    """A ``uvicorn.Config`` for ``app`` with :func:`server_settings` (used by ``serve`` and the tests); the
    slow-client guard reads its timeout and bound from the app's ``Limits``."""
    import uvicorn

    limits = getattr(getattr(app, "state", None), "limits", None) or Limits()
    config = uvicorn.Config(app, host=host, port=port, **server_settings(limits, **overrides))
    config.emolens_head_timeout_s = limits.head_timeout_s
    config.emolens_max_waiting = limits.max_waiting_connections
    return config


def _check_port_free(host: str, port: int) -> None:
    import socket

    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host.strip("[]"), port))
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port") from None


def serve(host: str = "127.0.0.1", port: int = 8000, workers: int = 1, api_key: str | None = None,
          options: ServeOptions | None = None, log_level: str = "info") -> None:
    """Run the server until interrupted. Refuses a non-local ``host`` without an API key (ValueError)."""
    import uvicorn

    opts = options or ServeOptions()
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if not is_local_host(host) and not api_key:
        raise ValueError(f"binding to {host} exposes the API to the network: set --api-key KEY (or env "
                         f"{API_KEY_ENV}), or bind to 127.0.0.1")
    if workers < 1:
        raise ValueError("--workers must be at least 1")
    _check_port_free(host, port)
    # Load once here so a bad model fails now, in one line, not inside each worker.
    recognizer = load_recognizer(opts.model, opts.runtime, opts.detector, opts.tta, opts.max_pixels)
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    print(f"emolens {__version__}: web page http://{shown}:{port}/  API docs http://{shown}:{port}/docs"
          + ("  (API key required)" if api_key else ""), file=sys.stderr, flush=True)
    if workers == 1:
        app = _app_from_options(opts, api_key, recognizer)
        uvicorn.Server(server_config(app, host, port, log_level=log_level)).run()
        return
    del recognizer  # each worker process loads its own
    os.environ[OPTIONS_ENV] = json.dumps(asdict(opts))
    if api_key:
        os.environ[API_KEY_ENV] = api_key
    limits = Limits(max_upload_bytes=int(opts.max_upload_mb * 1024 * 1024))
    uvicorn.run("emolens.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                **server_settings(limits, log_level=log_level))


# ---------------------------------------------------------------------------------------------- load test


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_server(args: Sequence[str] = (), timeout_s: float = 120.0, env: dict[str, str] | None = None):
    """``emolens serve ARGS`` in a subprocess on a free localhost port; yields its base URL, stops it after."""
    import subprocess
    import tempfile

    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "emolens", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", *args]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, **(env or {})})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    err.seek(0)
                    tail = err.read().decode("utf-8", "replace").strip().splitlines()[-3:]
                    raise RuntimeError(f"the server exited with code {proc.returncode}: {' | '.join(tail)}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not answer /healthz within {timeout_s:g} s")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def bench_image(path: str | None = None) -> tuple[bytes, str]:
    """The image the load test sends: ``path``, else the packaged astronaut photo (512x512, one face)."""
    path = path or str(Path(__file__).with_name("assets") / "astronaut.jpg")
    data = Path(path).read_bytes()
    if image_format(data) is None:
        raise ValueError(f"{path}: not a JPEG, PNG, BMP or WebP image")
    return data, Path(path).name


async def _slowloris(url: str, sockets: int, deadline: float, counts: dict[str, int]) -> None:
    """Keep ``sockets`` connections open that send one byte of a request head every second and never finish
    it; a connection the server closes is opened again. ``counts``: opened, closed (by the server)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    head = f"POST /v1/predict HTTP/1.1\r\nHost: {parts.netloc}\r\nX-Slow: ".encode() + b"a" * 10_000

    async def one() -> None:
        while time.perf_counter() < deadline:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            counts["opened"] += 1
            try:
                for i in range(len(head)):
                    if time.perf_counter() >= deadline:
                        return
                    writer.write(head[i:i + 1])
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                            counts["closed"] += 1  # the server hung up: the guard worked; come back
                            break
            except OSError:
                counts["closed"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(one() for _ in range(sockets)))


async def _load(url: str, clients: int, seconds: float, payload: bytes, endpoint: str,
                params: dict[str, Any], headers: dict[str, str], slow_clients: int = 0) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, headers=headers) as client:
        try:
            warm = await client.post(endpoint, params=params, files={"file": ("bench.jpg", payload, "image/jpeg")})
        except httpx.HTTPError as e:
            raise RuntimeError(f"cannot reach {url}: {type(e).__name__}: {e}") from None
        if warm.status_code != 200:
            raise RuntimeError(f"{url}{endpoint} answered {warm.status_code}: {warm.text[:200]}")
        body = warm.json()
        faces = len(body["faces"]) if "faces" in body else sum(len(r["faces"]) for r in body["results"])
        slow = {"opened": 0, "closed": 0}
        attack = None
        if slow_clients:  # the slow clients connect first; the measured requests run while they hold on
            attack = asyncio.create_task(_slowloris(url, slow_clients, time.perf_counter() + seconds + 1.5, slow))
            await asyncio.sleep(1.0)
        deadline = time.perf_counter() + seconds

        async def client_loop() -> None:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                try:
                    r = await client.post(endpoint, params=params,
                                          files={"file": ("bench.jpg", payload, "image/jpeg")})
                    kind = None if r.status_code == 200 else f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    kind = type(e).__name__
                if kind is None:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors[kind] = errors.get(kind, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        if attack is not None:
            attack.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attack
    lat = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {"url": url, "endpoint": endpoint, "clients": clients, "seconds": round(elapsed, 2),
            "slow_clients": slow_clients, "slow_opened": slow["opened"], "slow_closed_by_server": slow["closed"],
            "requests": len(latencies) + sum(errors.values()), "ok": len(latencies), "errors": sum(errors.values()),
            "error_kinds": errors, "requests_per_s": round(len(latencies) / elapsed, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1), "mean_ms": round(float(lat.mean()), 1),
            "faces_per_image": faces}


def bench_serve(url: str | None = None, clients: int = 16, seconds: float = 10.0, image: str | None = None,
                server_args: Sequence[str] = (), api_key: str | None = None, params: dict[str, Any] | None = None,
                endpoint: str = "/v1/predict", slow_clients: int = 0) -> dict[str, Any]:
    """Load test: ``clients`` concurrent clients POST an image for ``seconds`` against ``url`` (default: a
    local ``emolens serve`` started for the run); returns requests/s, p50/p95/p99 latency (ms), errors.
    ``slow_clients`` > 0: meanwhile that many connections dribble an endless request head (slowloris), so
    the latencies are those of normal requests during such an attack."""
    if clients < 1 or seconds <= 0 or slow_clients < 0:
        raise ValueError("--clients must be >= 1, --seconds > 0 and --slow-clients >= 0")
    payload, what = bench_image(image)
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    headers = {"X-API-Key": api_key} if api_key else {}
    with contextlib.ExitStack() as stack:
        if url is None:
            url = stack.enter_context(local_server(server_args))
            where = "local server (same machine as the clients)"
        else:
            where = url
        result = asyncio.run(_load(url.rstrip("/"), clients, seconds, payload, endpoint, params or {}, headers,
                                   slow_clients))
    result.update(image=what, image_bytes=len(payload), server=where)
    return result


def format_bench(r: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k}: {v}" for k, v in r["error_kinds"].items()) or "none"
    attack = (f"  during a slow-client attack: {r['slow_clients']} connections dribbling request heads "
              f"({r['slow_opened']} opened, {r['slow_closed_by_server']} closed by the server)\n"
              if r.get("slow_clients") else "")
    return (f"{r['endpoint']} on {r['server']}: {r['clients']} clients for {r['seconds']} s, image {r['image']}\n"
            f"{attack}"
            f"  requests {r['requests']}  ok {r['ok']}  errors {r['errors']} ({kinds})\n"
            f"  throughput {r['requests_per_s']} requests/s\n"
            f"  latency ms  p50 {r['p50_ms']}  p95 {r['p95_ms']}  p99 {r['p99_ms']}  mean {r['mean_ms']}")
