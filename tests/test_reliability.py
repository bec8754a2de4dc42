"""Reliability and security: slow clients, outputs that would replace inputs, hostile requests, damaged
weights, files left behind by killed runs, DNS rebinding. Every test here reproduces a defect found by a
robustness probe (issue 15). Servers bind to 127.0.0.1; attacks are bounded in sockets and seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from emolens.cli import main
from test_serve import LiveServer, assert_error, astronaut_bgr, jpeg, make_recognizer, png_with_size, ws_url

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "src" / "emolens" / "assets" / "astronaut.jpg"
NESTED = b"[" * 3000 + b"]" * 3000


# ---------------------------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability_model")


@pytest.fixture(scope="module")
def server(model_dir):
    from emolens.serve import Limits, create_app

    limits = Limits(max_upload_bytes=2_000_000, max_pixels=2_000_000, max_batch=16, max_request_pixels=3_000_000,
                    chunk_pixels=300_000, body_timeout_s=5, head_timeout_s=1.5)
    app = create_app(make_recognizer(model_dir), limits=limits, allowed_hosts=("app.example",))
    with LiveServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg(astronaut_bgr())


def _slow_sockets(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        socks.append(s)
    return socks


def _wait_closed(socks: list[socket.socket], within_s: float) -> int:
    """How many of ``socks`` the server closed within ``within_s`` (recv gives b"" or a reset)."""
    open_ = set(socks)
    deadline = time.monotonic() + within_s
    while open_ and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_), [], [], 0.2)
        for s in ready:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if data == b"":
                open_.discard(s)
    return len(socks) - len(open_)


# ---------------------------------------------------------------------------------------------- 1. slow clients


def test_slow_clients_are_closed_and_do_not_lock_others_out(server, photo):
    """300 connections dribbling header bytes: a normal request during the attack is answered, and the slow
    connections are closed once their head deadline (1.5 s here) has passed, though they keep sending."""
    socks = _slow_sockets(server.port, 300)
    try:
        for s in socks[:50]:  # a byte each: on uvicorn alone this resets its keep-alive timer
            s.sendall(b"a")
        r = httpx.post(f"{server.url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["faces"]
        for s in socks[:50]:
            try:
                s.sendall(b"a")
            except OSError:
                pass  # already closed: fine
        assert _wait_closed(socks, within_s=10) == len(socks)
    finally:
        for s in socks:
            s.close()


def test_past_the_waiting_bound_the_oldest_slow_connection_goes(model_dir, photo):
    from emolens.serve import Limits, create_app

    limits = Limits(head_timeout_s=30, max_waiting_connections=20)
    with LiveServer(create_app(make_recognizer(model_dir), limits=limits)) as srv:
        socks = _slow_sockets(srv.port, 30)
        try:
            assert _wait_closed(socks[:10], within_s=5) == 10  # the 10 oldest made room
            r = httpx.post(f"{srv.url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")}, timeout=30)
            assert r.status_code == 200, r.text
            assert _wait_closed(socks[10:], within_s=0.5) < 20  # the newer ones were kept
        finally:
            for s in socks:
                s.close()


def _dribble_after_a_response(port: int) -> bool:
    """A keep-alive connection: one complete request, then a second head sent a byte at a time. True when the
    server closes it (uvicorn alone resets its keep-alive timer on every byte and never does)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 40:
            try:
                s.sendall(bytes([byte]))
            except OSError:
                return True
            ready, _, _ = select.select([s], [], [], 0.25)
            if ready and s.recv(4096) == b"":
                return True
    return False


def test_keep_alive_connection_dribbling_its_next_head_is_closed(server):
    assert _dribble_after_a_response(server.port)


def test_the_guard_works_on_the_h11_protocol_too(model_dir, photo):
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from emolens.serve import HeadTimeoutMixin, Limits, create_app

    h11 = type("HeadTimeoutH11", (HeadTimeoutMixin, H11Protocol), {})
    with LiveServer(create_app(make_recognizer(model_dir), limits=Limits(head_timeout_s=1.5)), http=h11) as srv:
        socks = _slow_sockets(srv.port, 20)
        try:
            r = httpx.post(f"{srv.url}/v1/predict", files={"file": ("a.jpg", photo, "image/jpeg")}, timeout=30)
            assert r.status_code == 200, r.text
            assert _wait_closed(socks, within_s=10) == len(socks)
            assert _dribble_after_a_response(srv.port)
        finally:
            for s in socks:
                s.close()


def test_bench_serve_reports_latency_during_a_slow_client_attack(server):
    from emolens.bench import bench_serve, format_bench

    r = bench_serve(server.url, clients=1, seconds=2.5, slow_clients=40)
    assert r["slow_clients"] == 40 and r["slow_opened"] >= 40
    assert r["slow_closed_by_server"] >= 1  # the head deadline (1.5 s) passed during the run
    assert r["ok"] >= 1 and r["errors"] == 0, r
    assert "slow-client attack: 40 connections" in format_bench(r)


# ---------------------------------------------------------------------------------------------- 3. hostile requests


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/predict/batch"])
def test_deeply_nested_json_is_a_400(server, path):
    r = httpx.post(f"{server.url}{path}", content=NESTED, headers={"Content-Type": "application/json"}, timeout=30)
    body = assert_error(r, 400, "bad_json")
    assert "nested" in body["error"]["message"]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_client_dropping_mid_upload_is_one_log_line_without_traceback(server):
    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("emolens.serve", "uvicorn.error", "uvicorn")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100000\r\n\r\n{\"image\": \"" + b"A" * 1000)
            time.sleep(0.3)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any("disconnected" in r.getMessage() for r in handler.records):
            time.sleep(0.05)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)
    ours = [r for r in handler.records if "disconnected" in r.getMessage()]
    assert len(ours) == 1, [r.getMessage() for r in handler.records]
    assert not any(r.exc_info for r in handler.records), [r.getMessage() for r in handler.records]
    assert not any("internal error" in r.getMessage() for r in handler.records)


def test_nested_json_websocket_message_gets_an_error_and_the_session_goes_on(server, photo):
    import websockets

    async def session():
        async with websockets.connect(ws_url(server), max_size=2**24) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 30))["type"] == "ready"
            await ws.send(NESTED.decode())
            error = json.loads(await asyncio.wait_for(ws.recv(), 30))
            await ws.send(photo)
            return error, json.loads(await asyncio.wait_for(ws.recv(), 60))

    error, result = asyncio.run(session())
    assert error["type"] == "error" and error["error"]["code"] == "bad_json"
    assert result["type"] == "result" and result["faces"]


# ---------------------------------------------------------------------------------------------- 4. batch budget


def test_batch_pixel_budget_is_per_request(server):
    """Each 1000x1000 header is under the per-image limit (2 MP); four of them (4 MP) are over the request's
    3 MP budget: refused from the headers, before anything is decoded."""
    one = png_with_size(1000, 1000)
    files = [("file", (f"{i}.png", one, "image/png")) for i in range(4)]
    body = assert_error(httpx.post(f"{server.url}/v1/predict/batch", files=files, timeout=30), 413, "too_many_pixels")
    assert "3000000" in body["error"]["message"]


class _GatedRecognizer:
    """A recognizer whose first call on a big image waits until released: the test decides when the big
    batch's first chunk ends."""

    def __init__(self, rec):
        self.rec, self.started, self.release = rec, threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.rec, name)

    def predict_batch(self, images, *args, **kw):
        images = list(images)
        if images and images[0].shape[1] >= 900 and not self.started.is_set():
            self.started.set()
            self.release.wait(30)
        return self.rec.predict_batch(images, *args, **kw)


def test_small_request_is_answered_between_the_chunks_of_a_big_batch(model_dir, photo):
    import cv2

    from emolens.serve import Limits, create_app

    gated = _GatedRecognizer(make_recognizer(model_dir))
    app = create_app(gated, limits=Limits(chunk_pixels=1_000_000))
    big = jpeg(cv2.resize(astronaut_bgr(), (1000, 1000)))
    done: list[str] = []
    with LiveServer(app) as srv:
        def post_big():
            r = httpx.post(f"{srv.url}/v1/predict/batch", timeout=120,
                           files=[("file", (f"{i}.jpg", big, "image/jpeg")) for i in range(4)])
            done.append(f"big {r.status_code}")

        def post_small():
            r = httpx.post(f"{srv.url}/v1/predict", files={"file": ("s.jpg", photo, "image/jpeg")}, timeout=120)
            done.append(f"small {r.status_code}")

        t_big = threading.Thread(target=post_big)
        t_big.start()
        assert gated.started.wait(30)  # the big batch holds the model (its first chunk)
        t_small = threading.Thread(target=post_small)
        t_small.start()
        deadline = time.monotonic() + 30
        while app.state.limiter.statistics().tasks_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the small request queues for the model
        gated.release.set()
        t_small.join(60)
        t_big.join(60)
    assert done == ["small 200", "big 200"]  # the small one did not wait for the rest of the batch


def test_spec_says_what_files_and_limits_are_accepted(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    for path in ("/v1/predict", "/v1/predict/batch"):
        body = spec["paths"][path]["post"]["requestBody"]
        encoding = body["content"]["multipart/form-data"]["encoding"]["file"]["contentType"]
        assert [t.strip() for t in encoding.split(",")] == ["image/jpeg", "image/png", "image/bmp", "image/webp"]
        assert "415" in body["description"] and "2000000 pixels" in body["description"]
    assert "3000000 pixels in all" in spec["paths"]["/v1/predict/batch"]["post"]["requestBody"]["description"]
    assert "1.5 s" in spec["info"]["description"]  # the head timeout


# ---------------------------------------------------------------------------------------------- 7. Host header


def test_keyless_server_answers_only_local_host_names(server):
    port = server.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", "app.example"):
        assert httpx.get(f"{server.url}/healthz", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        assert_error(httpx.get(f"{server.url}/healthz", headers={"Host": host}), 400, "host_not_allowed")
        assert_error(httpx.get(f"{server.url}/v1/model", headers={"Host": host}), 400, "host_not_allowed")


def _ws_handshake(port: int, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET /v1/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        return s.recv(4096)


def test_keyless_server_refuses_websockets_for_foreign_hosts(server):
    assert _ws_handshake(server.port, f"127.0.0.1:{server.port}").startswith(b"HTTP/1.1 101")
    assert _ws_handshake(server.port, "evil.example").startswith(b"HTTP/1.1 403")


def test_a_key_lifts_the_host_check(model_dir):
    from emolens.serve import create_app

    with LiveServer(create_app(make_recognizer(model_dir), api_key="k" * 20)) as srv:
        r = httpx.get(f"{srv.url}/v1/model", headers={"Host": "emolens.example", "X-API-Key": "k" * 20})
        assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------- 5. damaged weights


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory) -> Path:
    import torch

    from emolens.checkpoint import make_checkpoint, save_checkpoint
    from emolens.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    save_checkpoint(make_checkpoint(create_model("cnn")), path)
    return path


def _overwrite_middle(path: Path, data: bytes, n: int = 4096) -> None:
    raw = bytearray(path.read_bytes())
    start = len(raw) // 2
    raw[start:start + n] = data[:n]
    path.write_bytes(bytes(raw))


def test_checkpoint_records_and_checks_its_weights(tiny_pt, tmp_path):
    import torch

    from emolens.checkpoint import CheckpointError, read_checkpoint, weights_sha256

    ckpt = read_checkpoint(tiny_pt)
    assert ckpt["weights_sha256"] == weights_sha256(ckpt["state_dict"])
    # bit rot in a weight, the file still a valid torch file: caught by the checksum
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 10)
    ckpt["state_dict"][name].view(-1)[3] += 1.0
    rotten = tmp_path / "rotten.pt"
    torch.save(ckpt, rotten)
    with pytest.raises(CheckpointError, match="damaged weights"):
        read_checkpoint(rotten)
    # 4 KB of random bytes over the file: an error, whichever check sees it first
    noisy = tmp_path / "noisy.pt"
    shutil.copy(tiny_pt, noisy)
    _overwrite_middle(noisy, np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError):
        read_checkpoint(noisy)


def test_nan_weights_without_a_checksum_fail_at_load(tiny_pt, tmp_path):
    """Files written before checksums (the shipped ones) are still checked by a forward pass at load."""
    import torch

    from emolens.runtime import ModelError, load_classifier

    ckpt = torch.load(tiny_pt, weights_only=True)
    ckpt.pop("weights_sha256")
    for v in ckpt["state_dict"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    legacy = tmp_path / "legacy_nan.pt"
    torch.save(ckpt, legacy)
    with pytest.raises(ModelError, match="NaN"):
        load_classifier(legacy, runtime="torch")
    code = main(["predict", str(PHOTO), "--model", str(legacy), "--runtime", "torch", "--json"])
    assert code == 2


def test_evaluate_with_nan_weights_fails_instead_of_scoring(tiny_pt, tmp_path, synthetic_kaggle_tree, capsys,
                                                           isolated_cache):
    import torch

    ckpt = torch.load(tiny_pt, weights_only=True)
    ckpt.pop("weights_sha256")
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.numel() > 10)
    ckpt["state_dict"][name].view(-1)[:64] = float("nan")  # a few damaged values are enough
    legacy = tmp_path / "legacy_nan.pt"
    torch.save(ckpt, legacy)
    code = main(["evaluate", "--data", str(synthetic_kaggle_tree), "--model", str(legacy), "--out",
                 str(tmp_path / "eval")])
    assert code == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_zero_byte_checkpoint_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["predict", str(PHOTO), "--model", str(empty), "--runtime", "torch"]) == 2
    err = capsys.readouterr().err
    assert "empty file (0 bytes)" in err and "IndexError" not in err


def test_onnx_export_records_the_checksum_and_load_checks_it(tiny_pt, tmp_path):
    import onnx

    from emolens.export import export_onnx, read_metadata
    from emolens.runtime import ModelError, OnnxClassifier, onnx_graph_sha256

    out = Path(export_onnx(tiny_pt, tmp_path / "tiny.onnx")["path"])
    data = out.read_bytes()
    assert read_metadata(out)["weights_sha256"] == onnx_graph_sha256(data)
    OnnxClassifier(out)  # loads
    # random bytes inside the largest weight: a valid protobuf, wrong numbers
    proto = onnx.load(str(out))
    raw = max((t.raw_data for t in proto.graph.initializer), key=len)
    at = data.find(raw[:64]) + len(raw) // 2
    assert at > 64 and len(raw) > 2048
    damaged = bytearray(data)
    damaged[at:at + 1024] = np.random.default_rng(1).bytes(1024)
    bad = tmp_path / "damaged.onnx"
    bad.write_bytes(bytes(damaged))
    with pytest.raises(ModelError, match="damaged weights"):
        OnnxClassifier(bad)


def test_export_ship_writes_checksums_into_both_files(tiny_pt, tmp_path):
    from emolens.checkpoint import read_checkpoint, weights_sha256
    from emolens.export import read_metadata, ship
    from emolens.runtime import onnx_graph_sha256

    r = ship(tiny_pt, tmp_path / "weights", name="tiny")
    ckpt = read_checkpoint(r["pt"])
    assert ckpt["weights_sha256"] == weights_sha256(ckpt["state_dict"])
    assert read_metadata(r["onnx"])["weights_sha256"] == onnx_graph_sha256(Path(r["onnx"]).read_bytes())
    with pytest.raises(ValueError, match="destroy the input"):  # re-shipping over the source is refused
        ship(r["pt"], tmp_path / "weights", name="tiny")


def test_shipped_models_without_checksums_still_load():
    from emolens.runtime import default_model_path, load_classifier

    for kind in ("onnx", "pt"):
        path = default_model_path(kind)
        if not path.is_file():
            pytest.skip("no shipped model")
        clf = load_classifier(path)
        p = clf.predict_proba(np.zeros((1, 48, 48), np.uint8))
        assert np.isfinite(p).all()


def test_nan_outputs_are_an_error_not_json_nan():
    from emolens.runtime import Classifier, ModelError

    class NanModel(Classifier):
        path = Path("nan.onnx")
        metrics: dict = {}

        def _logits(self, x):
            return np.full((len(x), 7), np.nan, np.float32)

    with pytest.raises(ModelError, match="NaN"):
        NanModel().predict_proba(np.zeros((2, 48, 48), np.uint8))
    with pytest.raises(ModelError, match="NaN"):
        NanModel()._check_outputs()


# ---------------------------------------------------------------------------------------------- 2. outputs


def test_predict_refuses_to_write_over_its_inputs(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(PHOTO, photos / "astronaut.jpg")
    before = (photos / "astronaut.jpg").read_bytes()
    assert main(["predict", str(photos), "--save-dir", str(photos)]) == 2
    assert "would destroy the input" in capsys.readouterr().err
    assert (photos / "astronaut.jpg").read_bytes() == before
    # a hard link to the input in the output folder is the input too
    out = tmp_path / "out"
    out.mkdir()
    os.link(photos / "astronaut.jpg", out / "astronaut.jpg")
    assert main(["predict", str(photos / "astronaut.jpg"), "--save-dir", str(out)]) == 2
    assert (photos / "astronaut.jpg").read_bytes() == before


def test_unwritable_save_dir_is_found_before_the_first_image(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["predict", str(PHOTO), "--save-dir", str(blocker / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no image was processed
    assert "is a file, not a folder" in captured.err


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from emolens.video import synthetic_face_video

    return synthetic_face_video(tmp_path_factory.mktemp("clip") / "clip.avi", frames=6)


@pytest.mark.parametrize("flag", ["-o", "--csv", "--plot"])
def test_video_refuses_to_write_over_its_input(clip, flag, capsys):
    before = clip.read_bytes()
    assert main(["video", str(clip), flag, str(clip), "--no-progress"]) == 2
    assert "would destroy the input" in capsys.readouterr().err
    assert clip.read_bytes() == before


def test_video_refuses_one_path_for_two_outputs(clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    assert main(["video", str(clip), "-o", str(out), "--csv", str(out), "--no-progress"]) == 2
    assert "two outputs" in capsys.readouterr().err


def test_check_outputs_helper(tmp_path):
    from emolens.outputs import OutputError, check_outputs

    src = tmp_path / "in.jpg"
    src.write_bytes(b"x")
    check_outputs([src], files=[tmp_path / "out.jpg", None], folders=[tmp_path / "new" / "deeper"])
    with pytest.raises(OutputError):
        check_outputs([src], files=[tmp_path / "sub" / ".." / "in.jpg"])
    (tmp_path / "link.jpg").symlink_to(src)
    with pytest.raises(OutputError):
        check_outputs([tmp_path / "link.jpg"], files=[src])
    check_outputs(["rtsp://camera/stream"], files=[tmp_path / "rec.mp4"])  # URLs are not files


# ---------------------------------------------------------------------------------------------- 6. leftovers


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_partials_of_dead_runs_are_removed(clip, tmp_path):
    from emolens.video import process_video

    pid = _dead_pid()
    out, csv = tmp_path / "out.mp4", tmp_path / "out.csv"
    stale = [tmp_path / f".out.mp4.{pid}.partial.mp4", tmp_path / f".out.{pid}.partial.mp4",
             tmp_path / f".out.csv.{pid}.tmp"]
    live = tmp_path / f".out.mp4.{os.getppid()}.partial.mp4"  # a live process's file is never touched
    for f in [*stale, live]:
        f.write_bytes(b"partial")
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    process_video(str(clip), out, csv, progress=False, max_frames=2)
    assert out.is_file() and csv.is_file()
    assert not any(f.exists() for f in stale)
    assert live.exists()


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    from emolens.video import synthetic_face_video

    long_clip = synthetic_face_video(tmp_path / "long.avi", frames=300)
    work = tmp_path / "work"
    work.mkdir()
    import emolens

    src = str(Path(emolens.__file__).resolve().parents[1])  # the code under test, not whatever is installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "emolens", "video", str(long_clip), "-o", str(work / "a.mp4"),
                             "--csv", str(work / "a.csv"), "--no-progress", "--smooth", "ema"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not any(p.name.endswith(".partial.mp4") for p in work.iterdir()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-500:]
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code != 0 and code != -signal.SIGTERM  # handled (interrupted), not killed by the signal
    assert sorted(p.name for p in work.iterdir() if p.name.startswith(".")) == []  # nothing hidden left


def test_predict_failing_on_its_only_input_leaves_no_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "missing.jpg"]) == 1
    assert not (tmp_path / "runs").exists()
