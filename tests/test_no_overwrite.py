"""No command replaces a user's file: a named output that exists is refused (one line, exit 2) before any work,
a default output folder that holds a previous run's files moves on to ``<name>-2``, and a bad ``--plot`` or
``--opset`` is refused before the work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")

from emolens.checkpoint import make_checkpoint, save_checkpoint  # noqa: E402
from emolens.cli import main  # noqa: E402
from emolens.models import create_model  # noqa: E402
from emolens.video import synthetic_face_video  # noqa: E402

PHOTO = Path(__file__).parent.parent / "src" / "emolens" / "assets" / "astronaut.jpg"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return synthetic_face_video(tmp_path_factory.mktemp("clip") / "one.avi", frames=3, size=(160, 120))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(make_checkpoint(create_model("cnn_lstm", widths=[8, 16, 32, 64], lstm_hidden=16), config={},
                                    metrics={}), path)
    return path


def _kept(path: Path, capsys) -> str:
    """The one-line error, after checking ``path`` still holds what the user had."""
    err = capsys.readouterr().err
    assert path.read_text() == "mine" and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_video_refuses_named_outputs_that_exist_and_a_bad_plot_format(clip, tmp_path, capsys):
    for flag, name in (("-o", "out.webm"), ("--csv", "out.csv"), ("--plot", "out.png")):
        (tmp_path / name).write_text("mine")
        assert main(["video", str(clip), flag, str(tmp_path / name), "--no-progress"]) == 2
        assert f"{name}: exists already" in _kept(tmp_path / name, capsys)
    assert main(["video", str(clip), "--plot", str(tmp_path / "p.txt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--plot" in err and ".png" in err and "ValueError" not in err and err.count("\n") == 1
    assert not (tmp_path / "p.txt").exists()


def test_video_rerun_writes_a_fresh_default_folder(clip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["video", str(clip), "--no-progress", "--detect-width", "160"]) == 0
    first, second = Path("runs/video/one"), Path("runs/video/one-2")
    assert (first / "timeline.csv").is_file() and (second / "timeline.csv").is_file()
    assert "runs/video/one-2/timeline.csv" in capsys.readouterr().out


def test_predict_refuses_files_already_in_the_save_dir(tmp_path, capsys):
    save = tmp_path / "save"
    save.mkdir()
    (save / "astronaut.jpg").write_text("mine")
    assert main(["predict", str(PHOTO), "--save-dir", str(save)]) == 2
    assert "astronaut.jpg: exists already" in _kept(save / "astronaut.jpg", capsys)
    (save / "astronaut.jpg").unlink()
    (save / "predictions.csv").write_text("mine")
    assert main(["predict", str(PHOTO), "--save-dir", str(save)]) == 2
    assert "predictions.csv: exists already" in _kept(save / "predictions.csv", capsys)
    assert not (save / "astronaut.jpg").exists()  # refused before the first image


def test_export_refuses_an_existing_output_and_a_bad_opset(checkpoint, tmp_path, capsys):
    named = tmp_path / "existing.onnx"
    named.write_text("mine")
    assert main(["export", str(checkpoint), "-o", str(named)]) == 2
    assert "existing.onnx: exists already" in _kept(named, capsys)
    beside = checkpoint.with_suffix(".onnx")  # the default output
    beside.write_text("mine")
    try:
        assert main(["export", str(checkpoint)]) == 2
        assert "best.onnx: exists already" in _kept(beside, capsys)
    finally:
        beside.unlink()
    for opset in ("3", "99"):
        assert main(["export", str(checkpoint), "-o", str(tmp_path / "x.onnx"), "--opset", opset]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --opset {opset}: ONNX opsets 9 to ") and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


def test_data_stats_refuses_a_used_out_folder_and_moves_the_default_on(tmp_path, monkeypatch, capsys):
    import numpy as np

    from emolens.preprocess import CLASSES

    out = tmp_path / "o"
    out.mkdir()
    (out / "stats.csv").write_text("mine")
    assert main(["data", "stats", str(tmp_path / "missing"), "--out", str(out)]) == 2  # before the data is read
    assert "not empty" in _kept(out / "stats.csv", capsys)
    data = tmp_path / "faces"
    for c in CLASSES:
        (data / c).mkdir(parents=True)
        assert cv2.imwrite(str(data / c / "a.png"), np.full((48, 48), 100 + CLASSES.index(c), np.uint8))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["data", "stats", str(data), "--no-cache"]) == 0
    assert Path("runs/stats/faces/stats.csv").is_file() and Path("runs/stats/faces-2/stats.csv").is_file()
