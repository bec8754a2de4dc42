"""Running the app: ``emolens serve`` (:func:`serve`, one or several uvicorn worker processes), the uvicorn
settings that bound what one client can hold, and a local server in a subprocess for tests and load tests."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .. import __version__
from ..decode import MAX_PIXELS
from .app import create_app
from .engine import load_recognizer
from .schemas import Limits
from .security import API_KEY_ENV, _http_protocol, is_local_host

OPTIONS_ENV = "EMOLENS_SERVE_OPTIONS"  # JSON options handed to each worker process by ``serve(workers>1)``


@dataclass
class ServeOptions:
    """What ``emolens serve`` hands to each worker process (as JSON in EMOLENS_SERVE_OPTIONS)."""

    model: str | None = None
    runtime: str = "auto"
    detector: str = "auto"
    tta: str = "none"
    max_upload_mb: float = 10
    max_pixels: int = MAX_PIXELS
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
    uvicorn.run("emolens.serve.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                **server_settings(limits, log_level=log_level))


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

