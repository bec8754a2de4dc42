"""The HTTP API against hostile or broken clients, through a real uvicorn server (the auditor's probes, made
small): broken image metadata, huge multipart and JSON bodies, slow uploads, websocket clients that hold
places, implausible image headers. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from test_decode import broken_exif, jpeg_claiming
from test_serve import LiveServer, assert_error, make_recognizer, post, ws_url

# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("robust_model")


@pytest.fixture(scope="module")
def recognizer(model_dir):
    return make_recognizer(model_dir)


@pytest.fixture(scope="module")
def server(recognizer):
    from emolens.serve import Limits, create_app

    limits = Limits(max_upload_bytes=1_200_000, max_batch=3, max_request_bytes=40_000_000, body_timeout_s=3.0,
                    ws_idle_timeout_s=3.0)
    with LiveServer(create_app(recognizer, limits=limits)) as s:
        yield s


def encode(img: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


def healthz_latency_during(url: str, fn) -> tuple[object, float]:
    """``fn()``'s result and the slowest /healthz answer (seconds) of the server at ``url`` while it ran."""
    worst, stop = [0.0], threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            httpx.get(f"{url}/healthz", timeout=30)
            worst[0] = max(worst[0], time.monotonic() - t0)
            time.sleep(0.02)

    th = threading.Thread(target=probe)
    th.start()
    try:
        out = fn()
    finally:
        stop.set()
        th.join()
    return out, worst[0]


async def stream_replies(url: str, frames: list[bytes], headers=None) -> list[dict]:
    """Send each frame and wait for its answer (nothing dropped); the replies in order."""
    import websockets

    async with websockets.connect(url, additional_headers=headers) as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "ready"
        replies = []
        for f in frames:
            await ws.send(f)
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        return replies


# ---------------------------------------------------------------------------------------------- broken EXIF


def test_broken_exif_is_a_normal_image_on_http_and_stream(server):
    """struct.error from Pillow's EXIF parser was a 500 with a traceback, and ended a live stream silently."""
    photo = encode(np.full((64, 64, 3), 128, np.uint8), exif=broken_exif())
    r = post(f"{server.url}/v1/predict", files={"file": ("exif.jpg", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": 64, "height": 64}
    replies = asyncio.run(stream_replies(ws_url(server), [photo, b"\xff\xd8\xff junk", photo]))
    assert [r["type"] for r in replies] == ["result", "error", "result"], replies


# ---------------------------------------------------------------------------------------------- huge bodies


def test_many_multipart_parts_are_refused_early_and_health_stays_fast(server):
    """200,000 empty parts (10 MB) froze the event loop for ~2.5 s (/healthz waited) and ended in a 422."""
    part = b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\n\r\n"
    body = part * 200_000 + b"--b--\r\n"

    def send() -> httpx.Response:
        return post(f"{server.url}/v1/predict/batch", content=body,
                    headers={"Content-Type": "multipart/form-data; boundary=b"})

    r, worst = healthz_latency_during(server.url, send)
    assert_error(r, 413, "too_many_parts")
    assert worst < 0.5, f"/healthz took {worst:.2f} s during the request"


def test_json_with_millions_of_values_is_refused_before_parsing(server):
    """json.loads holds the GIL: 16 M tiny values froze every request for a second or more."""
    for route in ("/v1/predict/batch", "/v1/predict"):
        body = b'{"images": [], "image": "", "pad": [' + b"0," * 500_000 + b"0]}"
        r = post(f"{server.url}{route}", content=body, headers={"Content-Type": "application/json"})
        assert_error(r, 413, "too_many_values")


# ---------------------------------------------------------------------------------------------- slow uploads


def test_slow_uploads_do_not_take_the_places_of_requests(recognizer):
    """Each connection that had sent its headers held one of the request places until its body timed out, so
    ``max_requests`` slow uploads made every request, /healthz included, a 503 busy."""
    from emolens.serve import Limits, create_app

    photo = encode(np.full((64, 64, 3), 128, np.uint8))
    app = create_app(recognizer, limits=Limits(max_requests=2, body_timeout_s=20))
    with LiveServer(app) as s:
        slow = []
        for _ in range(4):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
                      b"boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n")
            slow.append(c)
        time.sleep(0.3)
        try:
            assert httpx.get(f"{s.url}/healthz", timeout=10).status_code == 200
            assert httpx.get(f"{s.url}/v1/model", timeout=10).status_code == 200
            r = post(f"{s.url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")})
            assert r.status_code == 200, r.text
        finally:
            for c in slow:
                c.close()


def test_a_full_server_says_busy_but_health_and_pages_answer(recognizer):
    """Past the bound (0 here: always full), API calls are 503 busy with Retry-After, with or without a body."""
    from emolens.serve import Limits, create_app

    with LiveServer(create_app(recognizer, limits=Limits(max_requests=0))) as s:
        for r in (httpx.get(f"{s.url}/v1/model"),
                  post(f"{s.url}/v1/predict", files={"file": ("a.jpg", encode(np.zeros((8, 8, 3), np.uint8)))})):
            assert_error(r, 503, "busy")
            assert r.headers["retry-after"] == "1"
        assert httpx.get(f"{s.url}/healthz").status_code == 200
        assert httpx.get(f"{s.url}/").status_code == 200


# ---------------------------------------------------------------------------------------------- websocket places

KEY = "robust-key-0123"


def test_keyless_clients_cannot_take_the_stream_places(recognizer):
    """Waiting 10 s for a key message, a keyless client held a stream place; two of them (the limit here) made
    the keyed client's handshake fail with HTTP 403. Now: places go to authenticated clients, and a full server
    accepts and closes with 1013 (try again later)."""
    import websockets

    from emolens.serve import Limits, create_app

    async def scenario(url: str) -> tuple[str, int, int]:
        keyless = [await websockets.connect(url) for _ in range(3)]  # silent: no key, no message
        await asyncio.sleep(0.2)
        key = {"X-API-Key": KEY}
        async with websockets.connect(url, additional_headers=key) as a, \
                websockets.connect(url, additional_headers=key) as b:
            ready = json.loads(await asyncio.wait_for(a.recv(), 10))["type"]
            await asyncio.wait_for(b.recv(), 10)
            async with websockets.connect(url, additional_headers=key) as third:  # accepted, then closed: full
                with pytest.raises(websockets.ConnectionClosed) as e:
                    await asyncio.wait_for(third.recv(), 10)
        for ws in keyless:
            await ws.close()
        async with websockets.connect(url, additional_headers=key) as again:  # places given back
            ok = json.loads(await asyncio.wait_for(again.recv(), 10))["type"] == "ready"
        return ready, e.value.rcvd.code, ok

    app = create_app(recognizer, api_key=KEY, limits=Limits(max_streams=2))
    with LiveServer(app) as s:
        assert asyncio.run(scenario(ws_url(s))) == ("ready", 1013, True)


def test_text_messages_do_not_keep_an_idle_stream_open(server):
    """A text "ping" every so often reset the idle timer forever: a place held with no frame ever sent."""
    import websockets

    async def pinging() -> tuple[int, float]:
        async with websockets.connect(ws_url(server), ping_interval=None) as ws:
            await ws.recv()  # ready
            t0 = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as e:
                while time.monotonic() - t0 < 8:
                    await ws.send("ping")
                    await ws.send(json.dumps({"reset": True}))
                    await asyncio.sleep(0.5)
                await ws.recv()
            return e.value.rcvd.code, time.monotonic() - t0

    code, after = asyncio.run(pinging())
    assert code == 1001 and after < 4.5, (code, after)  # the idle timeout is 3 s here


# ---------------------------------------------------------------------------------------------- implausible JPEG


def test_jpeg_too_short_for_its_size_is_a_422(server):
    """631 bytes claiming 7000x7000 was a 200 after seconds of work and +560 MB: now refused before decoding."""
    r = post(f"{server.url}/v1/predict", files={"file": ("bomb.jpg", jpeg_claiming(7000, 7000), "image/jpeg")})
    body = assert_error(r, 422, "bad_image")  # 49 M pixels: under this server's pixel limit
    assert "truncated" in body["error"]["message"]


# ---------------------------------------------------------------------------------------------- batch messages


def test_batch_errors_name_the_image_index_and_boxes_are_refused(server):
    good = encode(np.full((32, 32, 3), 128, np.uint8))
    files = [("file", ("a.jpg", good, "image/jpeg")), ("file", ("b.jpg", good, "image/jpeg")),
             ("file", ("blob", good[: len(good) // 2], "image/jpeg"))]
    body = assert_error(post(f"{server.url}/v1/predict/batch", files=files), 422, "bad_image")
    assert body["error"]["message"].startswith("image 2 (blob): "), body
    # boxes were silently ignored by the batch route
    r = post(f"{server.url}/v1/predict/batch", files=files[:1], data={"boxes": "[[0, 0, 10, 10]]"})
    assert "/v1/predict" in assert_error(r, 422, "bad_boxes")["error"]["message"]
    b64 = base64.b64encode(good).decode()
    r = post(f"{server.url}/v1/predict/batch", json={"images": [b64], "boxes": [[0, 0, 10, 10]]})
    assert_error(r, 422, "bad_boxes")


def test_head_on_health_and_page(server):
    for path in ("/healthz", "/"):
        r = httpx.head(f"{server.url}{path}")
        assert r.status_code == 200 and r.content == b"", (path, r.status_code)


def test_a_largest_image_in_line_broken_base64_fits_the_body_limit():
    """base64.encodebytes (76 characters and a newline per line) of an image at the size limit: once a 413."""
    from emolens.serve import Limits
    from emolens.serve.inputs import single_body_limit

    for limits in (Limits(), Limits(max_upload_bytes=1_200_000)):
        img = bytes(limits.max_upload_bytes)
        for encoded in (base64.encodebytes(img), base64.encodebytes(img).replace(b"\n", b"\r\n")):
            body = json.dumps({"image": encoded.decode()}).encode()
            assert len(body) <= single_body_limit(limits), (len(body), single_body_limit(limits))
