"""``WS /v1/stream``: one live session per websocket. A receiver keeps only the newest frame, a processor
answers it with tracked faces (:class:`_StreamSession`), so a fast client sees drops, not a growing delay."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from starlette.websockets import WebSocketDisconnect

from ..decode import ImageError
from .engine import Engine, _face_out
from .inputs import decode_image, loads_json
from .schemas import ApiError, Limits
from .security import _key_from_headers, check_api_key

log = logging.getLogger("emolens.serve")  # one logger name for the whole server, as before the split


def _same_origin(ws, cors_origins: Sequence[str]) -> bool:
    """Browsers do not apply CORS to websockets: refuse pages from other origins ourselves."""
    origin = ws.headers.get("origin")
    if origin is None or origin in cors_origins or "*" in cors_origins:
        return True  # non-browser clients send no Origin
    from urllib.parse import urlsplit

    return urlsplit(origin).netloc == ws.headers.get("host", "")


class StreamSlots:
    """The live streams in progress, at most ``limit``. A place is taken only after the API key has been checked,
    so clients without the key (which may wait 10 s for theirs) cannot fill the server."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0

    def take(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1


async def _authenticated(ws, api_key: str | None, limits: Limits) -> bool:
    """Whether the client has the key (header, or a first text message ``{"api_key": ...}`` within 10 s); closes
    the websocket with 1008 when not."""
    try:
        key = _key_from_headers(ws.headers)
        if api_key and not key:
            msg = await asyncio.wait_for(ws.receive_text(), min(10.0, limits.ws_idle_timeout_s))
            try:
                key = loads_json(msg).get("api_key")
            except (ValueError, AttributeError):
                key = None
        check_api_key(api_key, key if isinstance(key, str) else None)
        return True
    except ApiError as e:
        reason = e.message
    except (TimeoutError, WebSocketDisconnect, KeyError, RuntimeError):
        reason = "no API key received"
    with contextlib.suppress(Exception):
        await ws.close(code=1008, reason=reason)
    return False


async def _stream(ws, *, engine_getter, in_thread, api_key: str | None, limits: Limits,
                  cors_origins: Sequence[str], slots: StreamSlots) -> None:
    """One live session: a receiver keeps only the newest frame, a processor answers it.

    Protocol: server sends ``{"type": "ready"}``; client sends JPEG frames as binary messages (and, when
    the server has a key and no header was sent, first a text ``{"api_key": "..."}``); server answers each
    processed frame with ``{"type": "result", "frame", "faces": [{track_id, box, emotion, ...}], "dropped"}``,
    or ``{"type": "error", "frame", "error": {...}}`` for a bad frame (the session goes on). A full server
    accepts, then closes with 1013 (try again later), which browsers report, unlike a refused handshake.
    """
    if not _same_origin(ws, cors_origins):
        await ws.close(code=1008, reason="cross-origin websocket refused")  # before accept: HTTP 403
        return
    await ws.accept()
    if not await _authenticated(ws, api_key, limits):
        return
    if not slots.take():
        await ws.close(code=1013, reason=f"server busy ({slots.limit} live streams), try again later")
        return
    try:
        await _session(ws, engine_getter, in_thread, limits)
    finally:
        slots.release()


async def _session(ws, engine_getter, in_thread, limits: Limits) -> None:
    """The stream of an admitted client: ready, then frames in, results out, until it leaves or goes idle."""
    try:
        eng = engine_getter()
        await ws.send_json({"type": "ready", "model": eng.model_ref()})
    except ApiError as e:  # the model is still loading
        await ws.close(code=1013, reason=e.message)
        return
    except (WebSocketDisconnect, RuntimeError):
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
        last_frame = time.monotonic()  # only frames count as activity: a text "ping" every 25 s is not a stream
        while True:
            left = limits.ws_idle_timeout_s - (time.monotonic() - last_frame)
            try:
                if left <= 0:
                    raise TimeoutError
                msg = await asyncio.wait_for(ws.receive(), left)
            except TimeoutError:
                await ws.close(code=1001, reason=f"no frame for {limits.ws_idle_timeout_s:g} s")
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
            last_frame = time.monotonic()
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
        """One frame -> a result reply, or an error reply: whatever the frame holds, the session goes on."""
        t0 = time.perf_counter()
        try:
            img = decode_image(data, self.limits, "frame")
            tracked = self.processor.process(img)
        except ApiError as e:
            return {"type": "error", "error": {"code": e.code, "message": e.message}}
        except ImageError as e:  # decode_image turns these into ApiError; one that slips through is still the frame's
            return {"type": "error", "error": {"code": "bad_image", "message": str(e)}}
        except Exception:  # a server bug must not look like the client's fault, nor end the session silently
            if not self.failed:
                log.exception("live stream: processing a frame failed")
            self.failed = True
            return {"type": "error", "error": {"code": "internal_error",
                                               "message": "the server failed on this frame (logged on the server)"}}
        faces = [_face_out(f) for f in tracked]
        return {"type": "result", "width": img.shape[1], "height": img.shape[0], "faces": faces,
                "timing_ms": round((time.perf_counter() - t0) * 1000, 2)}
