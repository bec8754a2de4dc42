"""Who and what may reach the app: the API key, the Host check (DNS rebinding), admission (work in progress
bounded) and the slow-client guard in uvicorn's HTTP protocol (:class:`HeadTimeoutMixin`)."""

from __future__ import annotations

import functools
import hmac
import logging
import time
from typing import Any

from fastapi.responses import JSONResponse

from .schemas import ApiError, Limits

log = logging.getLogger("emolens.serve")  # one logger name for the whole server, as before the split

API_KEY_ENV = "EMOLENS_API_KEY"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


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


def is_local_host(host: str) -> bool:
    """localhost, ::1 or a 127.x.x.x address (a name such as ``127.0.0.1.example.com`` is not)."""
    import ipaddress

    if host.lower() in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    """ASGI bound on work in progress: past ``max_requests`` HTTP requests to ``/v1/``, 503 JSON with Retry-After
    (live streams are bounded by the stream itself, once the client is authenticated: ``stream.StreamSlots``).

    The bound is for model work, so a request with a body counts only once its body has arrived: a slow upload
    holds its connection (until the body timeout), never a place, and 64 slow uploads cannot lock everyone out.
    Pages, files and ``/healthz`` cost nothing and are never refused. Connections that have not sent a request
    head do not count either (see :class:`HeadTimeoutMixin`)."""

    def __init__(self, app, max_requests: int):
        self.app, self.max = app, {"http": max_requests}
        self.active = {"http": 0}

    def _busy(self) -> ApiError:
        return ApiError(503, "busy", f"{self.max['http']} requests in progress; retry in a moment")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        held = False

        def admit() -> None:
            nonlocal held
            if self.active["http"] >= self.max["http"]:
                raise self._busy()
            self.active["http"] += 1
            held = True

        async def receive_then_admit():
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False) and not held:
                admit()  # the whole body is here: now it is work in progress (ApiError -> 503 from the route)
            return message

        try:
            if _has_body(scope):
                await self.app(scope, receive_then_admit, send)
                return
            try:
                admit()
            except ApiError as e:
                await JSONResponse({"error": {"code": e.code, "message": e.message}}, status_code=503,
                                   headers={"Retry-After": "1"})(scope, receive, send)
                return
            await self.app(scope, receive, send)
        finally:
            if held:
                self.active["http"] -= 1


def _has_body(scope) -> bool:
    """Whether an HTTP request announces a body (Content-Length above 0, or chunked)."""
    for k, v in scope.get("headers", ()):
        if k == b"transfer-encoding":
            return True
        if k == b"content-length":
            return v.strip() not in (b"0", b"")
    return False


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

