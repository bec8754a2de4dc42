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

Modules: ``schemas`` (limits, errors, pydantic models), ``inputs`` (request bodies and images), ``security``
(API key, Host check, admission, slow-client guard), ``engine`` (the recognizer), ``stream`` (``/v1/stream``),
``app`` (``create_app``), ``server`` (``serve`` and uvicorn settings). The load test (``bench_serve``) is in
:mod:`emolens.bench`.
Everything public is importable from ``emolens.serve`` itself.

Example::

    from emolens.serve import create_app
    app = create_app(api_key="secret")          # loads the shipped model at startup
    # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from typing import Any

from .app import WEB_DIR, create_app
from .engine import Engine, load_recognizer
from .inputs import (
    ACCEPTED_TYPES,
    MAGIC,
    decode_base64,
    decode_image,
    image_format,
    image_size,
    loads_json,
    parse_multipart,
    read_body,
    read_images,
)
from .schemas import (
    ApiError,
    BatchJSON,
    BatchOut,
    Detector,
    ErrorDetail,
    ErrorOut,
    FaceOut,
    HealthOut,
    ImageJSON,
    ImageResult,
    ImageSize,
    Limits,
    ModelOut,
    ModelRef,
    PredictOut,
    Tta,
)
from .security import API_KEY_ENV, LOCAL_HOSTS, HeadTimeoutMixin, check_api_key, host_name, is_local_host
from .server import (
    OPTIONS_ENV,
    ServeOptions,
    app_from_env,
    free_port,
    local_server,
    serve,
    server_config,
    server_settings,
)

__all__ = [
    "ACCEPTED_TYPES", "API_KEY_ENV", "LOCAL_HOSTS", "MAGIC", "OPTIONS_ENV", "WEB_DIR",
    "ApiError", "BatchJSON", "BatchOut", "Detector", "Engine", "ErrorDetail", "ErrorOut", "FaceOut",
    "HeadTimeoutMixin", "HealthOut", "ImageJSON", "ImageResult", "ImageSize", "Limits", "ModelOut", "ModelRef",
    "PredictOut", "ServeOptions", "Tta",
    "app_from_env", "check_api_key", "create_app", "decode_base64", "decode_image",
    "free_port", "host_name", "image_format", "image_size", "is_local_host", "load_recognizer",
    "loads_json", "local_server", "parse_multipart", "read_body", "read_images", "serve", "server_config",
    "server_settings",
]


def __getattr__(name: str) -> Any:
    """The slow-client protocol class (``HeadTimeout<uvicorn protocol>``) by name, as before the split; it lives
    in :mod:`emolens.serve.security`, which is where uvicorn's worker processes look it up."""
    from . import security

    if name.startswith("HeadTimeout"):
        return security.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
