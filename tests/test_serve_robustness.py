"""The HTTP API against hostile or broken clients, through a real uvicorn server (the auditor's probes, made
small): broken image metadata, huge multipart and JSON bodies, slow uploads, websocket clients that hold
places, implausible image headers. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image

from test_decode import broken_exif
from test_serve import LiveServer, make_recognizer, post, ws_url

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

    limits = Limits(max_upload_bytes=1_200_000, max_batch=3, max_request_bytes=40_000_000, body_timeout_s=3.0)
    with LiveServer(create_app(recognizer, limits=limits)) as s:
        yield s


def encode(img: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **kw)
    return buf.getvalue()


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
