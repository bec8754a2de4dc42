"""The HTTP API through a real uvicorn server on a free local port: every endpoint, every bad input, the API
key, the timeouts, CORS, the websocket stream (tracking, frame dropping), the CLI, the load test.

The model is the shipped one when present, else a random-weight checkpoint made here (answers are then
arbitrary but the API contract is the same). Helpers here are imported by test_browser.py and
test_schemathesis.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from emolens.preprocess import CLASSES

ROOT = Path(__file__).resolve().parents[1]
KEY = "test-key-0123456789"

# ---------------------------------------------------------------------------------------------- helpers


def astronaut_bgr() -> np.ndarray:
    from skimage.data import astronaut

    return cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR)


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def png_with_size(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = cv2.imencode(".png", np.zeros((1, 1), np.uint8))[1].tobytes()
    ihdr = bytearray(data[8:33])  # length(4) type(4) body(13) crc(4)
    ihdr[8:16] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    ihdr[21:25] = zlib.crc32(bytes(ihdr[4:21])).to_bytes(4, "big")
    return data[:8] + bytes(ihdr) + data[33:]


def model_path(tmp_dir: Path) -> Path:
    """The shipped model if the lead committed it, else a random-weight cnn checkpoint in ``tmp_dir``."""
    from emolens.runtime import default_model_path

    shipped = default_model_path("onnx")
    if shipped.is_file():
        return shipped
    import torch

    from emolens.checkpoint import make_checkpoint, save_checkpoint
    from emolens.models import create_model

    path = tmp_dir / "random_cnn.pt"
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(make_checkpoint(create_model("cnn"), metrics={"public_acc": 0.0}), path)
    return path


def make_recognizer(tmp_dir: Path):
    predict = pytest.importorskip("emolens.predict", reason="emolens.predict (EmotionRecognizer) not there yet")
    path = model_path(tmp_dir)
    return predict.EmotionRecognizer(model=str(path), runtime="onnx" if path.suffix == ".onnx" else "torch",
                                     detector="auto", tta="none")


class LiveServer:
    """A real uvicorn server for ``app`` in a thread on a free port (same settings as ``emolens serve``)."""

    def __init__(self, app, **overrides):
        import uvicorn

        from emolens.serve import free_port, server_config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port, log_level="warning", **overrides))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def start_server(tmp_dir: Path, **app_kw) -> LiveServer:
    from emolens.serve import create_app

    overrides = app_kw.pop("uvicorn", {})
    return LiveServer(create_app(make_recognizer(tmp_dir), **app_kw), **overrides)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve_model")


@pytest.fixture(scope="module")
def server(model_dir):
    """Open server, small limits so the limit tests send little data."""
    from emolens.serve import Limits, create_app

    limits = Limits(max_upload_bytes=1_200_000, max_pixels=2_000_000, max_batch=3, max_request_bytes=3_000_000,
                    body_timeout_s=1.5, ws_idle_timeout_s=2.0)
    app = create_app(make_recognizer(model_dir), limits=limits)
    with LiveServer(app, timeout_keep_alive=1) as s:
        yield s


@pytest.fixture(scope="module")
def keyed(model_dir):
    with start_server(model_dir, api_key=KEY) as s:
        yield s


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg(astronaut_bgr())


def post(url: str, **kw) -> httpx.Response:
    return httpx.post(url, timeout=60, **kw)


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def assert_face(face: dict) -> None:
    assert len(face["box"]) == 4 and all(isinstance(v, int) for v in face["box"])
    assert face["emotion"] in CLASSES
    assert list(face["probabilities"]) == list(CLASSES)
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert face["confidence"] == pytest.approx(max(face["probabilities"].values()))
    assert face["probabilities"][face["emotion"]] == face["confidence"]


# ---------------------------------------------------------------------------------------------- endpoints


def test_healthz_and_model_card(server):
    h = httpx.get(f"{server.url}/healthz").json()
    assert h == {"status": "ok", "version": h["version"], "model_loaded": True, "auth_required": False}
    m = httpx.get(f"{server.url}/v1/model").json()
    assert m["classes"] == list(CLASSES)
    assert len(m["sha256"]) == 64 and m["name"] and m["runtime"] in ("onnx", "torch")
    assert "accuracy" in m
    if m["accuracy"] is not None:  # the server's default is one view: the figure must be for one view too
        assert m["accuracy_tta"] == "none", m


def test_model_accuracy_is_for_the_views_the_server_uses():
    """/v1/model once showed the flip-TTA figure (70.6 %) of a server that runs one view (68.9 %)."""
    from emolens.serve.engine import _recorded_accuracy

    metrics = {"public_acc": 0.689, "public_acc_int8": 0.6887, "public_acc_flip": 0.706}
    assert _recorded_accuracy(metrics, "none") == (0.6887, "none")
    assert _recorded_accuracy(metrics, "flip") == (0.706, "flip")
    assert _recorded_accuracy({"public_acc_flip": float("nan")}, "none") == (None, None)
    assert _recorded_accuracy({"public_acc_flip": 0.7}, "none") == (0.7, "flip")


def test_predict_multipart_finds_the_astronaut(server, photo):
    r = post(f"{server.url}/v1/predict", files={"file": ("astronaut.jpg", photo, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image"] == {"width": 512, "height": 512}
    for face in body["faces"]:
        assert_face(face)
    astronaut_face(body["faces"])  # exactly one box on her face (the detector may add a false hit elsewhere)
    assert body["model"]["sha256"] == httpx.get(f"{server.url}/v1/model").json()["sha256"]
    assert body["timing_ms"] > 0


def test_api_gives_the_python_api_probabilities_for_the_same_file(server, model_dir, photo, tmp_path):
    """One input path: the HTTP API and EmotionRecognizer decode, detect, crop and classify the same file
    identically (same boxes, same probabilities to float precision)."""
    f = tmp_path / "a.jpg"
    f.write_bytes(photo)
    direct = make_recognizer(model_dir).predict(str(f))
    assert direct  # the astronaut: at least her face
    body = post(f"{server.url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")}).json()
    assert [list(x.box) for x in direct] == [face["box"] for face in body["faces"]]
    for x, face in zip(direct, body["faces"], strict=True):
        assert x.emotion == face["emotion"]
        for c in CLASSES:
            assert face["probabilities"][c] == pytest.approx(x.probabilities[c], abs=1e-6)


def test_predict_json_base64_matches_multipart(server, photo):
    a = post(f"{server.url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")}).json()
    b = post(f"{server.url}/v1/predict", json={"image": base64.b64encode(photo).decode()}).json()
    c = post(f"{server.url}/v1/predict",
             json={"image": "data:image/jpeg;base64," + base64.encodebytes(photo).decode()}).json()
    assert a["faces"] == b["faces"] == c["faces"]


def test_multipart_as_browsers_send_it(server, photo):
    """Mixed-case boundary (browsers: ----WebKitFormBoundary...), extra form fields, charset in the header."""
    boundary = "----WebKitFormBoundaryAbCdEfGh12345678"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    r = post(f"{server.url}/v1/predict", content=body,
             headers={"content-type": f"Multipart/Form-Data; charset=utf-8; boundary={boundary}"})
    assert r.status_code == 200, r.text
    assert_face(astronaut_face(r.json()["faces"]))


def test_predict_options(server, photo):
    files = {"file": ("a.jpg", photo, "image/jpeg")}
    crop = jpeg(astronaut_bgr()[60:180, 170:290])
    r = post(f"{server.url}/v1/predict", params={"faces_only": "true"}, files={"file": ("c.jpg", crop, "image/jpeg")})
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    assert face["box"] == [0, 0, 120, 120]  # no detection: the crop is the face
    assert_face(face)
    none = astronaut_face(post(f"{server.url}/v1/predict", params={"tta": "none"}, files=files).json()["faces"])
    flip = astronaut_face(post(f"{server.url}/v1/predict", params={"tta": "flip"}, files=files).json()["faces"])
    assert none["box"] == flip["box"]
    assert none["probabilities"] != flip["probabilities"]  # the mirrored view is averaged in
    for det in ("auto", "haar"):
        r = post(f"{server.url}/v1/predict", params={"detector": det}, files=files)
        assert r.status_code == 200, (det, r.text)
        astronaut_face(r.json()["faces"])
    assert_error(post(f"{server.url}/v1/predict", params={"tta": "bogus"}, files=files), 422, "invalid_parameter")
    assert_error(post(f"{server.url}/v1/predict", params={"detector": "x"}, files=files), 422, "invalid_parameter")
    assert_error(post(f"{server.url}/v1/predict", params={"faces_only": "maybe"}, files=files), 422)


def test_predict_image_without_face(server):
    blank = jpeg(np.full((240, 320, 3), 128, np.uint8))
    r = post(f"{server.url}/v1/predict", files={"file": ("blank.jpg", blank, "image/jpeg")})
    assert r.status_code == 200 and r.json()["faces"] == []


def test_png_bmp_webp_and_grayscale_accepted(server):
    img = astronaut_bgr()
    for ext in (".png", ".bmp", ".webp"):
        data = cv2.imencode(ext, img)[1].tobytes()
        r = post(f"{server.url}/v1/predict", files={"file": (f"a{ext}", data, "application/octet-stream")})
        assert r.status_code == 200, (ext, r.text)
        astronaut_face(r.json()["faces"])
    gray = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))[1].tobytes()
    astronaut_face(post(f"{server.url}/v1/predict", files={"file": ("g.png", gray, "image/png")}).json()["faces"])


def test_batch_multipart_and_json(server, photo):
    blank = jpeg(np.full((100, 100, 3), 200, np.uint8))
    r = post(f"{server.url}/v1/predict/batch",
             files=[("file", ("a.jpg", photo, "image/jpeg")), ("file", ("b.jpg", blank, "image/jpeg"))])
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 2 and res[1]["faces"] == []
    single = post(f"{server.url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")}).json()
    assert res[0]["faces"] == single["faces"]  # batching changes nothing
    assert res[1]["image"] == {"width": 100, "height": 100}
    enc = [base64.b64encode(x).decode() for x in (blank, photo)]
    j = post(f"{server.url}/v1/predict/batch", json={"images": enc}).json()
    assert j["results"][0]["faces"] == [] and j["results"][1]["faces"] == res[0]["faces"]
    assert post(f"{server.url}/v1/predict/batch", json=enc).status_code == 200  # a bare JSON list too


def test_docs_and_openapi_work_offline(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200
    assert "/docs-static/swagger-ui-bundle.js" in docs.text and "cdn" not in docs.text.lower()
    js = httpx.get(f"{server.url}/docs-static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000  # the real Swagger UI, served locally
    assert httpx.get(f"{server.url}/docs-static/swagger-ui.css").status_code == 200


def test_web_page_and_assets_are_local(server):
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and "never stored" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("app.js", "style.css", "favicon.svg"):
        r = httpx.get(f"{server.url}/static/{asset}")
        assert r.status_code == 200, asset
        text = r.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, not a download
        assert "http://" not in text and "https://" not in text, f"{asset} loads something from the network"
    assert "http://" not in page.text and "https://" not in page.text


# ---------------------------------------------------------------------------------------------- bad input


def test_unsupported_content_types_and_magic_bytes(server, photo):
    u = f"{server.url}/v1/predict"
    assert_error(post(u, content=photo, headers={"content-type": "image/jpeg"}), 415, "unsupported_media_type")
    assert_error(post(u, content=b"x", headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    assert_error(post(u, content=photo), 415, "unsupported_media_type")  # no Content-Type at all
    # right Content-Type, wrong bytes: the magic bytes decide
    assert_error(post(u, files={"file": ("a.jpg", b"hello, I am text", "image/jpeg")}), 415, "unsupported_image")
    gif = b"GIF89a" + b"\x00" * 40
    assert_error(post(u, files={"file": ("a.gif", gif, "image/gif")}), 415, "unsupported_image")
    pdf = b"%PDF-1.4\n" + b"0" * 100
    assert_error(post(u, json={"image": base64.b64encode(pdf).decode()}), 415, "unsupported_image")
    assert_error(post(u, files={"file": ("a.txt", photo, "text/plain")}), 415, "unsupported_media_type")


def test_corrupt_images(server, photo):
    u = f"{server.url}/v1/predict"
    assert_error(post(u, files={"file": ("a.jpg", b"\xff\xd8\xff" + b"\x00" * 64, "image/jpeg")}), 422, "bad_image")
    assert_error(post(u, files={"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x01" * 64, "image/png")}), 422, "bad_image")
    broken = bytearray(cv2.imencode(".png", astronaut_bgr())[1].tobytes())
    broken[len(broken) // 2:] = b"\x00" * (len(broken) - len(broken) // 2)  # valid header, garbage pixels
    assert_error(post(u, files={"file": ("b.png", bytes(broken), "image/png")}), 422, "bad_image")


def test_empty_inputs(server):
    u = f"{server.url}/v1/predict"
    assert_error(post(u, content=b"", headers={"content-type": "application/json"}), 400, "empty_body")
    assert_error(post(u, files={"file": ("a.jpg", b"", "image/jpeg")}), 400, "empty_image")
    assert_error(post(u, json={"image": ""}), 400, "empty_image")
    assert_error(post(u, files={"other": ("a.jpg", b"123", "image/jpeg")}), 422, "missing_file")
    assert_error(post(u, data={"file": ""}), 415)  # urlencoded form: not an accepted body


def test_malformed_base64_json_and_multipart(server, photo):
    u = f"{server.url}/v1/predict"
    js = {"content-type": "application/json"}
    assert_error(post(u, content=b'{"image": ', headers=js), 400, "bad_json")
    assert_error(post(u, content=b"\xff\xfe\x00", headers=js), 400, "bad_json")
    assert_error(post(u, json={"image": "not base64!!"}), 400, "bad_base64")
    assert_error(post(u, json={"image": "abc"}), 400, "bad_base64")  # bad padding
    assert_error(post(u, json={"image": "data:image/jpeg,notbase64"}), 400, "bad_base64")
    assert_error(post(u, json={"image": 12}), 422, "invalid_json")
    assert_error(post(u, json={"picture": "abc"}), 422, "invalid_json")
    assert_error(post(u, json=["a", "b"]), 422, "invalid_json")
    assert_error(post(u, json={"image": [base64.b64encode(photo).decode()]}), 422, "invalid_json")
    mp = {"content-type": "multipart/form-data; boundary=XyZ"}
    assert_error(post(u, content=b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", headers=mp),
                 400, "bad_multipart")
    assert_error(post(u, content=b"garbage", headers={"content-type": "multipart/form-data"}), 400, "bad_multipart")
    b = post(f"{server.url}/v1/predict/batch", json={"images": [base64.b64encode(photo).decode(), "%%%"]})
    assert "images[1]" in assert_error(b, 400, "bad_base64")["error"]["message"]
    assert_error(post(f"{server.url}/v1/predict/batch", json={"images": "abc"}), 422, "invalid_json")


def test_size_and_pixel_limits(server, photo):
    u = f"{server.url}/v1/predict"
    noise = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    big = jpeg(noise, quality=100)  # 1 megapixel (allowed), but a file over 1.2 MB
    assert len(big) > 1_200_000
    assert_error(post(u, files={"file": ("big.jpg", big, "image/jpeg")}), 413)
    assert_error(post(u, json={"image": base64.b64encode(big).decode()}), 413)

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(40):
            yield b"\x00" * 100_000

    assert_error(post(u, content=chunks(), headers={"content-type": "application/json"}), 413, "request_too_large")
    bomb = png_with_size(50_000, 50_000)  # 2.5 gigapixels claimed by a 70-byte file
    assert len(bomb) < 100
    msg = assert_error(post(u, files={"file": ("bomb.png", bomb, "image/png")}), 413, "too_many_pixels")
    assert "2500000000 pixels" in msg["error"]["message"] and "178956970" not in msg["error"]["message"]
    assert_error(post(u, files={"file": ("b.png", png_with_size(1500, 1500), "image/png")}), 413, "too_many_pixels")
    many = [("file", (f"{i}.jpg", photo, "image/jpeg")) for i in range(4)]
    assert_error(post(f"{server.url}/v1/predict/batch", files=many), 413, "too_many_images")
    enc = [base64.b64encode(photo[:10]).decode()] * 4
    assert_error(post(f"{server.url}/v1/predict/batch", json={"images": enc}), 413, "too_many_images")
    assert_error(post(u, files=many[:2]), 422, "too_many_images")  # two images to the single endpoint


def test_not_found_and_wrong_method(server):
    assert_error(httpx.get(f"{server.url}/v1/nope"), 404, "not_found")
    assert_error(httpx.get(f"{server.url}/v1/predict"), 405, "method_not_allowed")


def test_slow_body_times_out(server):
    """A client that promises a body and stops sending gets 408 after the body timeout (1.5 s here)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"image\": \"")
        t0 = time.monotonic()
        reply = s.recv(4096)
        waited = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"body_timeout"' in reply
    assert 1.0 < waited < 6, waited


def test_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert s.recv(4096) == b""  # the server hung up on the idle keep-alive connection
        assert time.monotonic() - t0 < 5


def test_cors_closed_by_default_and_opened_by_option(server, model_dir):
    origin = {"Origin": "http://evil.example"}
    r = httpx.get(f"{server.url}/v1/model", headers=origin)
    assert "access-control-allow-origin" not in r.headers
    pre = httpx.options(f"{server.url}/v1/predict", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    with start_server(model_dir, cors_origins=("http://app.example",)) as s:
        ok = httpx.options(f"{s.url}/v1/predict", headers={"Origin": "http://app.example",
                                                          "Access-Control-Request-Method": "POST"})
        assert ok.headers.get("access-control-allow-origin") == "http://app.example"
        no = httpx.get(f"{s.url}/v1/model", headers=origin)
        assert "access-control-allow-origin" not in no.headers


# ---------------------------------------------------------------------------------------------- API key


def test_api_key(keyed, photo):
    u = keyed.url
    assert httpx.get(f"{u}/healthz").json()["auth_required"] is True  # health stays open
    assert httpx.get(f"{u}/").status_code == 200  # the page itself is static
    r = httpx.get(f"{u}/v1/model")
    assert_error(r, 401, "unauthorized")
    assert "X-API-Key" in r.headers["www-authenticate"]
    assert_error(httpx.get(f"{u}/v1/model", headers={"X-API-Key": "wrong"}), 401, "unauthorized")
    assert_error(httpx.get(f"{u}/v1/model", headers={"Authorization": "Bearer wrong"}), 401)
    assert httpx.get(f"{u}/v1/model", headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(f"{u}/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    files = {"file": ("a.jpg", photo, "image/jpeg")}
    assert_error(post(f"{u}/v1/predict", files=files), 401)
    assert_error(post(f"{u}/v1/predict/batch", files=files, headers={"X-API-Key": KEY + "x"}), 401)
    assert post(f"{u}/v1/predict", files=files, headers={"X-API-Key": KEY}).status_code == 200
    assert post(f"{u}/v1/predict/batch", files=files, headers={"X-API-Key": KEY}).status_code == 200
    # the key is checked before the body is even looked at
    assert_error(post(f"{u}/v1/predict", content=b"junk", headers={"content-type": "text/plain"}), 401)


# ---------------------------------------------------------------------------------------------- websocket


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/stream"


async def _ws_session(url: str, frames: list[bytes], headers=None, first_text: str | None = None,
                      pace_s: float = 0.0) -> tuple[dict, list[dict]]:
    import websockets

    async with websockets.connect(url, additional_headers=headers, max_size=2**24) as ws:
        if first_text is not None:
            await ws.send(first_text)
        ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
        replies: list[dict] = []
        for f in frames:
            await ws.send(f)
            if pace_s:  # wait for this frame's answer: nothing can be dropped
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        last = len(frames) - 1
        while frames and not pace_s and (not replies or replies[-1]["frame"] < last):
            replies.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
        return ready, replies


def shifted(img: np.ndarray, dx: int) -> np.ndarray:
    return np.roll(img, dx, axis=1)


def astronaut_face(faces: list[dict], dx: int = 0) -> dict:
    """The face box on the astronaut's face (centre near (225 + dx, 120) in the 512x512 photo)."""
    near = [f for f in faces if abs(f["box"][0] + f["box"][2] / 2 - 225 - dx) < 50
            and abs(f["box"][1] + f["box"][3] / 2 - 120) < 50]
    assert len(near) == 1, faces
    return near[0]


def test_stream_tracks_faces_across_frames(server):
    img = astronaut_bgr()
    frames = [jpeg(shifted(img, 4 * i), 85) for i in range(5)]
    ready, replies = asyncio.run(_ws_session(ws_url(server), frames, pace_s=0.01))
    assert ready["type"] == "ready" and len(ready["model"]["sha256"]) == 64
    assert [r["frame"] for r in replies] == list(range(5))
    assert all(r["type"] == "result" and r["dropped"] == 0 for r in replies)
    her = [astronaut_face(r["faces"], dx=4 * i) for i, r in enumerate(replies)]  # other boxes may be false hits
    ids = [f["track_id"] for f in her]
    assert len(set(ids)) == 1, f"the same face must keep its track id: {ids}"
    for f in her:
        assert_face(f)
    xs = [f["box"][0] for f in her]
    assert xs[-1] > xs[0]  # boxes follow the moving face


def test_stream_drops_frames_instead_of_queueing(server):
    """30 frames sent at once: the server answers the newest, drops the ones it had no time for."""
    frames = [jpeg(shifted(astronaut_bgr(), i), 80) for i in range(30)]
    t0 = time.monotonic()
    _, replies = asyncio.run(_ws_session(ws_url(server), frames))
    took = time.monotonic() - t0
    assert replies[-1]["frame"] == 29  # the last frame is always answered
    assert len(replies) < 30 and replies[-1]["dropped"] > 0, [r["frame"] for r in replies]
    assert replies[-1]["dropped"] + len(replies) == 30
    per_frame = max(r["timing_ms"] for r in replies) / 1000
    assert took < per_frame * (len(replies) + 3) + 5  # time spent ~ frames answered, not frames sent


def test_stream_bad_frame_does_not_end_the_session(server):
    good = jpeg(astronaut_bgr())
    _, replies = asyncio.run(_ws_session(ws_url(server), [b"not an image", good], pace_s=0.01))
    assert replies[0]["type"] == "error" and replies[0]["error"]["code"] == "unsupported_image"
    assert replies[1]["type"] == "result"
    assert_face(astronaut_face(replies[1]["faces"]))


def test_stream_oversized_frame_closes_the_connection(server):
    import websockets

    async def big() -> int:
        async with websockets.connect(ws_url(server), max_size=2**24) as ws:
            await ws.recv()  # ready
            await ws.send(b"\xff\xd8\xff" + b"\x00" * 1_300_000)  # over the 1.2 MB upload limit
            with pytest.raises(websockets.ConnectionClosed) as e:
                await asyncio.wait_for(ws.recv(), 10)
            return e.value.rcvd.code

    assert asyncio.run(big()) == 1009  # "message too big", closed by uvicorn before the app sees it


def test_stream_idle_timeout(server):
    import websockets

    async def idle() -> int:
        async with websockets.connect(ws_url(server)) as ws:
            await ws.recv()  # ready
            t0 = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as e:
                await asyncio.wait_for(ws.recv(), 10)
            assert time.monotonic() - t0 < 6
            return e.value.rcvd.code

    assert asyncio.run(idle()) == 1001


def test_stream_refuses_other_origins(server):
    import websockets

    async def attempt() -> int:
        with pytest.raises(websockets.InvalidStatus) as e:  # refused in the handshake
            async with websockets.connect(ws_url(server), origin="http://evil.example"):
                pass
        return e.value.response.status_code

    assert asyncio.run(attempt()) == 403
    same = asyncio.run(_ws_session(ws_url(server), [], headers={"Origin": server.url}))
    assert same[0]["type"] == "ready"


def test_stream_api_key(keyed):
    import websockets

    url = ws_url(keyed)
    frame = jpeg(astronaut_bgr())
    ready, replies = asyncio.run(_ws_session(url, [frame], headers={"X-API-Key": KEY}, pace_s=0.01))
    assert ready["type"] == "ready"
    assert_face(astronaut_face(replies[0]["faces"]))
    ready, _ = asyncio.run(_ws_session(url, [], first_text=json.dumps({"api_key": KEY})))  # browsers: 1st message
    assert ready["type"] == "ready"

    async def refused(first: str) -> tuple[int, str]:
        async with websockets.connect(url) as ws:
            await ws.send(first)
            with pytest.raises(websockets.ConnectionClosed) as e:
                await ws.recv()
            return e.value.rcvd.code, e.value.rcvd.reason

    code, reason = asyncio.run(refused(json.dumps({"api_key": "wrong"})))
    assert code == 1008 and "API key" in reason
    assert asyncio.run(refused("no json"))[0] == 1008


# ---------------------------------------------------------------------------------------------- CLI and load test


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emolens", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


def test_cli_refuses_public_bind_without_key(capsys, monkeypatch):
    from emolens.cli import main

    monkeypatch.delenv("EMOLENS_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: binding to 0.0.0.0 exposes the API") and "--api-key" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert main(["serve", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


def test_cli_port_in_use(capsys):
    from emolens.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert main(["serve", "--port", str(s.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert "cannot listen" in err and "Traceback" not in err


def test_cli_serve_and_bench_end_to_end(model_dir, photo, tmp_path):
    """`emolens serve` in a subprocess (key from the environment), then `emolens bench serve --url` on it."""
    pytest.importorskip("emolens.predict")
    from emolens.serve import local_server

    path = model_path(model_dir)
    args = ["--model", str(path), "--runtime", "onnx" if path.suffix == ".onnx" else "torch"]
    with local_server([*args, "--max-batch", "2"], env={"EMOLENS_API_KEY": KEY}) as url:
        assert_error(httpx.get(f"{url}/v1/model"), 401)
        r = post(f"{url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")}, headers={"X-API-Key": KEY})
        assert r.status_code == 200
        astronaut_face(r.json()["faces"])
        many = [("file", ("a.jpg", photo, "image/jpeg"))] * 3
        assert_error(post(f"{url}/v1/predict/batch", files=many, headers={"X-API-Key": KEY}), 413)
        out = tmp_path / "bench.json"
        b = run_cli("bench", "serve", "--url", url, "--clients", "4", "--seconds", "1.5", "--api-key", KEY,
                    "--json", str(out))
        assert b.returncode == 0, b.stderr
        assert "requests/s" in b.stdout and "p99" in b.stdout
        wrong = run_cli("bench", "serve", "--url", url, "--seconds", "1", "--api-key", "nope")
        assert wrong.returncode == 2 and "401" in wrong.stderr and "Traceback" not in wrong.stderr
    result = json.loads(out.read_text())
    assert result["errors"] == 0 and result["ok"] >= 2 and result["clients"] == 4
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["requests_per_s"] > 0 and result["faces_per_image"] >= 1


@pytest.mark.slow  # two worker processes each load the model: ~10-20 s on 2 cores
def test_cli_bench_starts_its_own_server_with_two_workers(model_dir):
    """`emolens bench serve` with no --url starts `emolens serve --workers 2` (uvicorn's multi-process mode:
    each worker loads its own model from the options passed in the environment) and stops it."""
    path = model_path(model_dir)
    r = run_cli("bench", "serve", "--clients", "3", "--seconds", "1", "--workers", "2", "--model", str(path),
                timeout=180)
    assert r.returncode == 0, r.stderr
    assert "local server" in r.stdout and "errors 0" in r.stdout


@pytest.mark.skipif(not (ROOT / "src/emolens/weights/emolens_cnn_lstm.onnx").is_file(),
                    reason="the shipped model is not there yet")
def test_shipped_model_sees_the_astronaut_smile(server, photo):
    r = post(f"{server.url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")})
    face = astronaut_face(r.json()["faces"])
    assert face["emotion"] == "happy", face
