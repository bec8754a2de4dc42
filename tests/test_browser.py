"""The web page in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no browser
download): a fake camera plays a clip made from a real photo, the page streams it to a real uvicorn server
and must draw a face box with an emotion label; drag-and-drop upload and the offline /docs page too.
Screenshots go to runs/test-artifacts/ (look at them)."""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from emolens.preprocess import CLASSES
from test_serve import KEY, ROOT, astronaut_bgr, jpeg, start_server

CHROMIUM = os.environ.get("EMOLENS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="no chromium installed (apt-get install chromium)"),
]
ARTIFACTS = ROOT / "runs" / "test-artifacts"

#: Chromium flags: headless in a container, no network of its own (this network refuses it), fake camera.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> Path:
    """BGR frames (same even size) -> an uncompressed YUV4MPEG2 4:2:0 clip, the format Chromium's fake camera
    plays (in a loop)."""
    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())  # Y, then U, then V planes
    return path


def astronaut_clip(path: Path, n: int = 20) -> Path:
    """640x480 frames: the astronaut photo scaled to the height, drifting a few pixels sideways."""
    photo = cv2.resize(astronaut_bgr(), (480, 480), interpolation=cv2.INTER_AREA)
    frames = []
    for i in range(n):
        frame = np.full((480, 640, 3), 90, np.uint8)
        x = 80 + int(6 * np.sin(i / n * 2 * np.pi))
        frame[:, x:x + 480] = photo
        frames.append(frame)
    return write_y4m(path, frames)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("browser_model")) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("browser_model_key"), api_key=KEY) as s:
        yield s


@pytest.fixture
def browser_page(tmp_path):
    """A fresh Chromium profile with the fake camera; records every request that leaves this machine."""
    sync_api = pytest.importorskip("playwright.sync_api")
    clip = astronaut_clip(tmp_path / "clip.y4m")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=[*FLAGS, f"--use-file-for-fake-video-capture={clip}"], viewport={"width": 1280, "height": 1100})
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        page.outside, page.errors = [], []
        page.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1:", "blob:", "data:"))
                else page.outside.append(r.url))
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        try:
            yield page
        finally:
            ctx.close()


def shot(page, name: str, tmp_path: Path) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    shutil.copy(path, tmp_path / name)
    assert path.stat().st_size > 10_000
    return path


def test_live_camera_draws_face_box_and_emotion(server, browser_page, tmp_path):
    page = browser_page
    page.goto(server.url)
    page.wait_for_function("() => document.getElementById('model-info').textContent.startsWith('model ')")
    page.click("#start")
    page.wait_for_function("() => window.emolens.lastResult && window.emolens.lastResult.faces.length > 0",
                           timeout=60_000)
    page.wait_for_function("() => window.emolens.results >= 6", timeout=60_000)  # a few points on the timeline
    result = page.evaluate("() => window.emolens.lastResult")
    (face,) = [f for f in result["faces"] if f["box"][2] > 60]  # the astronaut (her face is ~100 px here)
    assert face["emotion"] in CLASSES and isinstance(face["track_id"], int)
    assert result["width"] == 640 and result["height"] == 480  # the fake camera's frames arrived whole
    label = page.text_content("#live-faces .face .emotion")
    assert label.split()[0] in CLASSES and label.endswith("%")
    # the overlay really has a box drawn: count painted pixels of the overlay canvas
    painted = page.evaluate("""() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert painted > 2000, painted
    timelines = page.eval_on_selector_all("#timelines canvas", "cs => cs.length")
    assert timelines >= 1
    shot(page, "browser_live.png", tmp_path)
    page.click("#stop")
    page.wait_for_function("() => document.getElementById('live-status').textContent === 'camera off'")
    assert not page.outside, f"the page fetched from outside the server: {page.outside}"
    assert not page.errors, page.errors


def test_drag_and_drop_upload_shows_annotated_result(server, browser_page, tmp_path):
    page = browser_page
    page.goto(server.url)
    data = base64.b64encode(jpeg(astronaut_bgr())).decode()
    drop = page.evaluate_handle("""(b64) => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer(); dt.items.add(new File([bytes], 'astronaut.jpg', {type: 'image/jpeg'}));
        return dt; }""", data)
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": drop})
    page.wait_for_selector("#photo-faces .face", timeout=30_000)
    assert page.is_visible("#photo-canvas")
    label = page.text_content("#photo-faces .face .emotion")
    assert label.split()[0] in CLASSES
    assert re.search(r"^[1-9]\d* face\(s\) in \d+ ms", page.text_content("#photo-status"))
    shot(page, "browser_upload.png", tmp_path)
    # a file that is not an image: the page shows the server's message, no crash
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "image/jpeg", "buffer": b"hello"}])
    page.wait_for_function("() => document.getElementById('photo-status').className === 'error'")
    assert "not a JPEG" in page.text_content("#photo-status")
    assert page.query_selector("#photo-faces .face") is None  # the astronaut's faces are not left standing
    assert not page.outside, page.outside


def test_docs_page_renders_offline(server, browser_page, tmp_path):
    page = browser_page
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "emolens" in page.text_content(".swagger-ui .info .title")
    for path in ("/v1/predict", "/v1/predict/batch", "/v1/model", "/healthz"):
        page.wait_for_selector(f'.opblock-summary-path[data-path="{path}"]')
    shot(page, "browser_docs.png", tmp_path)
    assert not page.outside, f"/docs fetched from outside the server: {page.outside}"


def test_page_with_api_key(keyed_server, browser_page, tmp_path):
    """A server with a key: the page asks for it, sends it as a header (HTTP) and as the first websocket
    message (browsers cannot set websocket headers)."""
    page, url = browser_page, keyed_server.url
    page.goto(url)
    page.wait_for_selector("#auth", state="visible")
    page.wait_for_function("() => document.getElementById('model-info').textContent.includes('API key')")
    page.fill("#api-key", "wrong")
    page.click("#start")
    page.wait_for_function("() => document.getElementById('live-status').textContent.includes('invalid API key')",
                           timeout=30_000)
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("() => document.getElementById('model-info').textContent.startsWith('model ')")
    page.click("#start")
    page.wait_for_function("() => window.emolens.lastResult && window.emolens.lastResult.faces.length > 0",
                           timeout=60_000)
    page.click("#stop")
    page.errors.clear()  # the 401s above are logged by the browser as failed loads, on purpose
    assert not page.outside, page.outside


def test_a_face_that_leaves_for_a_second_keeps_one_timeline(server, tmp_path):
    """The fake camera loops 2 s of the astronaut and 1 s of an empty scene: the page keeps one track id and
    one timeline for her, not one per return."""
    sync_api = pytest.importorskip("playwright.sync_api")
    photo = cv2.resize(astronaut_bgr(), (480, 480), interpolation=cv2.INTER_AREA)
    face = np.full((480, 640, 3), 90, np.uint8)
    face[:, 80:560] = photo
    empty = np.full((480, 640, 3), 90, np.uint8)
    clip = write_y4m(tmp_path / "away.y4m", [face] * 20 + [empty] * 10)
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=[*FLAGS, f"--use-file-for-fake-video-capture={clip}"], viewport={"width": 1280, "height": 1100})
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(server.url)
            page.wait_for_function("() => document.getElementById('model-info').textContent.startsWith('model ')")
            page.click("#start")
            page.wait_for_function("() => window.emolens.lastResult && window.emolens.lastResult.faces.length > 0",
                                   timeout=60_000)
            # watch the results until she has been away and come back twice (or 90 s pass)
            returns, away, seen = 0, 0, set()
            deadline = time.monotonic() + 90
            while returns < 2 and time.monotonic() < deadline:
                faces = page.evaluate("() => window.emolens.lastResult.faces")
                if faces:
                    returns += away >= 3
                    away = 0
                    seen |= {f["track_id"] for f in faces}
                else:
                    away += 1
                time.sleep(0.05)
            ids = page.evaluate("() => [...window.emolens.tracks.keys()]")
            timelines = page.eval_on_selector_all("#timelines canvas", "cs => cs.length")
            shot(page, "browser_returning_face.png", tmp_path)
            page.click("#stop")
        finally:
            ctx.close()
    assert returns == 2, "the empty frames never reached the server"
    assert seen == {1} and ids == [1] and timelines == 1
