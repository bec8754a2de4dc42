"""The FastAPI app (:func:`create_app`): middleware, error handlers, routes, and the pages served from the
package (Swagger UI at ``/docs``, the web page at ``/``), plus the spec text that states the limits."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..decode import MAX_PIXELS
from .engine import Engine, load_recognizer
from .inputs import ACCEPTED_TYPES, decode_image, image_size, read_images
from .schemas import (
    ApiError,
    BatchJSON,
    BatchOut,
    Detector,
    ErrorOut,
    HealthOut,
    ImageJSON,
    Limits,
    ModelOut,
    PredictOut,
    Tta,
)
from .security import _Admission, _HostCheck, _key_from_headers, check_api_key, host_name
from .stream import StreamSlots, _stream

log = logging.getLogger("emolens.serve")  # one logger name for the whole server, as before the split

WEB_DIR = Path(__file__).parent.parent / "web"  # src/emolens/web: the page and its files


def create_app(recognizer: Any = None, api_key: str | None = None, max_upload_mb: float = 10,
               max_pixels: int = MAX_PIXELS, max_batch: int = 16, cors_origins: Sequence[str] = (),
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
    app.add_middleware(_Admission, max_requests=limits.max_requests)
    stream_slots = StreamSlots(limits.max_streams)
    hosts = None if api_key else frozenset(host_name(h) for h in allowed_hosts)
    app.add_middleware(_HostCheck, allowed=hosts)  # outermost: a foreign Host is refused before anything else

    # ---- errors: always {"error": {"code", "message"}}, never a traceback
    def error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = ({"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if exc.status == 401
                   else {"Retry-After": "1"} if exc.status == 503 else None)
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

    @app.head("/healthz", include_in_schema=False)
    @app.head("/", include_in_schema=False)
    async def head() -> Response:
        """Monitors and load balancers probe with HEAD: 200, no body (not 405)."""
        return Response(headers={"Cache-Control": "no-store"})

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
                      cors_origins=cors_origins, slots=stream_slots)

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


def _limits_text(limits: Limits, batch: bool) -> str:
    each = (f"Each image: a JPEG, PNG, BMP or WebP file (recognised by its first bytes; anything else is 415), "
            f"at most {limits.max_upload_bytes} bytes (413) and {limits.max_pixels} pixels, width x height read "
            f"from its header before decoding (413); an unreadable one is 422.")
    if not batch:
        return each
    return (f"{each} At most {limits.max_batch} images (413) and {limits.max_request_pixels} pixels in all "
            f"(413), {limits.max_request_bytes} bytes of request body (413), {limits.max_form_parts} multipart "
            f"parts or {limits.max_json_values} JSON values (413).")


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


def _description(limits: Limits) -> str:
    return _DESCRIPTION + f"""

**Limits** (this server): {_limits_text(limits, batch=True)} A batch runs in chunks of about
{limits.chunk_pixels} pixels, so small requests are answered between the chunks of a large one. The request
body must arrive within {limits.body_timeout_s:g} s (408); a connection must send its request line and headers
within {limits.head_timeout_s:g} s or it is closed; at most {limits.max_requests} API requests are in progress at
once, counted from when their body has arrived (503 with `Retry-After` past that; `/healthz` and the pages are
never refused), and {limits.max_streams} live streams. Without an API key the server
answers only to localhost host names (400 `host_not_allowed` otherwise)."""


_DESCRIPTION = """Facial emotion recognition (angry, disgust, fear, happy, neutral, sad, surprise).
Images are processed in memory and never stored. Errors are 4xx with `{"error": {"code", "message"}}`.

**Live stream** (WebSocket, not listed below): connect to `/v1/stream`; the server sends `{"type": "ready"}`
(with an API key: send header `X-API-Key`, or first a text message `{"api_key": "..."}`); then send JPEG
frames as binary messages. Each processed frame is answered with `{"type": "result", "frame", "width",
"height", "faces": [{"track_id", "box", "emotion", "confidence", "probabilities"}], "dropped", "timing_ms"}`;
frames sent faster than they can be processed are dropped (only the newest waits), never queued. A text
message `{"reset": true}` restarts tracking. A connection that sends no frame for a minute is closed (1001;
text messages do not count); when all live-stream places are taken the server accepts and closes at once with
code 1013 (try again later)."""

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

