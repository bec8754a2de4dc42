"""Annotated videos play in a browser: by default .mp4 is H.264 (when this OpenCV can encode it) or VP9 and .webm
is VP8, checked by decoding the codec name back from the file; the old MPEG-4 Part 2 (mp4v) stays available."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from emolens.cli import main  # noqa: E402
from emolens.video import (  # noqa: E402
    VideoError,
    open_video_writer,
    process_video,
    synthetic_face_video,
    video_codec,
)

#: FourCCs OpenCV's FFmpeg reports for codecs every current browser plays
BROWSER_FOURCCS = {"avc1", "h264", "H264", "VP90", "vp09", "VP80"}


@pytest.fixture(autouse=True)
def _real_default(monkeypatch):
    monkeypatch.delenv("EMOLENS_VIDEO_CODEC", raising=False)  # conftest picks the fast codec for other tests


def _write(path, codec, frames=6, size=(96, 64)):
    writer, name = open_video_writer(path, 10, size, codec)
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return name


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_auto_codec_is_one_a_browser_plays(tmp_path, suffix):
    path = tmp_path / f"a{suffix}"
    name = _write(path, "auto")
    assert name in ("h264", "vp9", "vp8")
    assert video_codec(path) in BROWSER_FOURCCS
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 6  # every frame decodes back


def test_old_codec_by_option_and_bad_names(tmp_path):
    assert _write(tmp_path / "old.mp4", "mp4v") == "mp4v"
    assert video_codec(tmp_path / "old.mp4") in ("FMP4", "mp4v")
    assert _write(tmp_path / "fast.avi", None) == "mjpg" and video_codec(tmp_path / "fast.avi") == "MJPG"
    with pytest.raises(VideoError, match="unknown codec"):
        open_video_writer(tmp_path / "x.mp4", 10, (96, 64), "divx")
    with pytest.raises(VideoError, match="not a readable video"):
        video_codec(tmp_path / "missing.mp4")


def test_env_names_the_auto_codec(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLENS_VIDEO_CODEC", "mp4v")
    assert _write(tmp_path / "env.mp4", "auto") == "mp4v"
    assert _write(tmp_path / "explicit.mp4", "vp9") == "vp9"  # an explicit codec wins over the variable
    monkeypatch.setenv("EMOLENS_VIDEO_CODEC", "bogus")
    with pytest.raises(VideoError, match="EMOLENS_VIDEO_CODEC"):
        open_video_writer(tmp_path / "x.mp4", 10, (96, 64))


def test_process_video_and_cli_write_browser_codecs(tmp_path, capsys):
    clip = synthetic_face_video(tmp_path / "clip.avi", frames=8, size=(160, 120))
    res = process_video(str(clip), tmp_path / "out.mp4", progress=False, log=lambda *_: None, detect_every=4)
    assert res.frames == 8 and video_codec(tmp_path / "out.mp4") in BROWSER_FOURCCS
    assert main(["video", str(clip), "-o", str(tmp_path / "out.webm"), "--no-progress"]) == 0
    assert video_codec(tmp_path / "out.webm") in BROWSER_FOURCCS
    assert main(["video", str(clip), "-o", str(tmp_path / "old.mp4"), "--codec", "mp4v", "--no-progress"]) == 0
    assert video_codec(tmp_path / "old.mp4") in ("FMP4", "mp4v")
    capsys.readouterr()


def test_default_video_outputs_play_in_a_browser(tmp_path, monkeypatch, capsys):
    clip = synthetic_face_video(tmp_path / "clip.avi", frames=6, size=(160, 120))
    monkeypatch.chdir(tmp_path)
    assert main(["video", str(clip), "--no-progress"]) == 0
    assert "runs/video/clip/annotated.webm" in capsys.readouterr().out
    assert video_codec(tmp_path / "runs" / "video" / "clip" / "annotated.webm") in BROWSER_FOURCCS
