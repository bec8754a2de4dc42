"""Training as a newcomer meets it: torchrun with a GPU config on a machine without a GPU refuses as the
single-process command does, resuming a finished run says it is complete and trains nothing, a resumed run
keeps its saved settings (progress) and config file, and `train` without torch prints the install line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from emolens.checkpoint import read_checkpoint
from emolens.runtime import WEIGHTS_DIR
from emolens.train import train
from test_train import _cfg, _history, write_kaggle_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_kaggle_folder(tmp_path_factory.mktemp("fer"), n_train=4, n_test=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_torchrun_with_cuda_config_refuses_without_gpu(data, tmp_path, monkeypatch):
    """WORLD_SIZE > 1 (what torchrun sets) with device: cuda and no GPU: the same error as one process, raised
    before any process group, data or epoch; no run folder appears."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="no CUDA GPU is available; use --device cpu"):
        train(_cfg(data, tmp_path / "r", device="cuda"), log=lambda *_: None)
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(RuntimeError, match="no CUDA GPU is available; use --device cpu"):
        train(_cfg(data, tmp_path / "r", device="cuda"), log=lambda *_: None)


def test_resume_of_finished_run_says_complete_and_keeps_settings(data, tmp_path):
    logs: list[str] = []
    run = train(_cfg(data, tmp_path / "r", epochs=2, progress=False), log=logs.append)
    config_before = (run / "config.yaml").read_bytes()
    last_before = (run / "last.pt").read_bytes()
    logs.clear()
    # the CLI passes the fields typed on the command line: none here, so the default progress=True is not one
    out = train(_cfg(data, tmp_path / "other", epochs=30, progress=True), resume=run, log=logs.append,
                explicit=set())
    assert out == run and not (tmp_path / "other").exists()
    assert any("the run is complete" in m and "all 2 epochs done" in m for m in logs), logs
    assert not any("epoch " in m and "loss" in m for m in logs)  # no epoch trained
    assert (run / "last.pt").read_bytes() == last_before
    assert (run / "config.yaml").read_bytes() == config_before
    assert len(_history(run)) == 2


def test_resume_keeps_saved_progress_unless_given(data, tmp_path):
    from emolens.train import _resume_state

    run = train(_cfg(data, tmp_path / "r", epochs=1, schedule="cosine", progress=False), log=lambda *_: None)
    cfg, _, _ = _resume_state(_cfg(data, tmp_path / "x", epochs=30, progress=True), run, explicit=set())
    assert cfg.progress is False and cfg.epochs == 1 and cfg.out == str(run)
    cfg, _, _ = _resume_state(_cfg(data, tmp_path / "x", progress=True), run, explicit={"progress"})
    assert cfg.progress is True  # typed on the command line: it wins


def test_resume_midway_trains_on_and_keeps_config(data, tmp_path):
    # a 2-epoch cosine run continued to 3 epochs (a cosine schedule may be stretched; one-cycle may not)
    short = train(_cfg(data, tmp_path / "short", epochs=2, schedule="cosine", progress=False), log=lambda *_: None)
    config_before = (short / "config.yaml").read_text()
    logs: list[str] = []
    out = train(_cfg(data, tmp_path / "x", epochs=3, progress=True), resume=short, log=logs.append,
                explicit={"epochs"})
    assert out == short and len(_history(short)) == 3
    assert any("epoch 3/3" in m for m in logs)
    saved = read_checkpoint(short / "last.pt")["config"]
    assert saved["progress"] is False and saved["epochs"] == 3
    after = (short / "config.yaml").read_text()
    assert after == config_before.replace("epochs: 2", "epochs: 3")  # only what was asked for changed


def test_cli_train_without_torch_prints_the_install_line(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"  # import torch now fails as on a machine without it
            "from emolens.cli import main\n"
            "sys.exit(main(['train', '--epochs', '1', '--data', 'x']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    assert "pip install 'emolens[train]'" in proc.stderr
    assert "--index-url https://download.pytorch.org/whl/cpu" in proc.stderr  # the CPU-only wheel, not CUDA's
    for args in ("'train', '--task', 'sequence', '--epochs', '1', '--data', 'x'",
                 f"'export', {str(WEIGHTS_DIR / 'emolens_cnn_lstm.pt')!r}, '-o', 'm.onnx'"):
        proc = subprocess.run([sys.executable, "-c", code.replace("'train', '--epochs', '1', '--data', 'x'", args)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr
        assert "pip install 'emolens[train]'" in proc.stderr and "/whl/cpu" in proc.stderr, proc.stderr


def test_train_refuses_a_used_out_folder_or_a_file_before_reading_data(data, tmp_path):
    """A finished run's folder (or anyone's folder with files, or a file) as --out: refused in one line before
    the data is read, naming --resume; nothing in it changes. Resuming that run still works."""
    from emolens.outputs import OutputError

    run = train(_cfg(data, tmp_path / "r", epochs=1), log=lambda *_: None)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    missing = tmp_path / "no-data"  # had the data been read first, the error would be about it
    with pytest.raises(OutputError, match=r"not empty.*--resume .*last\.pt"):
        train(_cfg(missing, run), log=lambda *_: None)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    other = tmp_path / "photos"
    other.mkdir()
    (other / "me.jpg").write_bytes(b"x")
    with pytest.raises(OutputError, match="not empty; .*give another --out"):
        train(_cfg(missing, other), log=lambda *_: None)
    (tmp_path / "file.txt").write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "emolens", "train", "--data", str(missing), "--out",
                           str(tmp_path / "file.txt"), "--progress", "false"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "is not a folder" in proc.stderr
    assert (tmp_path / "file.txt").read_text() == "keep"
    logs: list[str] = []
    assert train(_cfg(data, tmp_path / "ignored", epochs=1), resume=run / "last.pt", log=logs.append) == run
    assert "the run is complete" in logs[0]  # --resume is not refused: the folder is its own


def test_a_run_killed_before_its_first_epoch_can_start_again(data, tmp_path):
    """A run killed in its first epoch leaves only the config.yaml it wrote for its folder: the same command
    starts again there (scripts/search.sh does). A config.yaml written for another folder is someone's: kept."""
    from emolens.config import save_config
    from emolens.outputs import OutputError

    cfg = _cfg(data, tmp_path / "k", epochs=1)
    (tmp_path / "k").mkdir()
    save_config(cfg, tmp_path / "k" / "config.yaml")
    assert (train(cfg, log=lambda *_: None) / "best.pt").is_file()
    (tmp_path / "m").mkdir()
    save_config(_cfg(data, tmp_path / "elsewhere"), tmp_path / "m" / "config.yaml")
    with pytest.raises(OutputError, match="not empty"):
        train(_cfg(data, tmp_path / "m", epochs=1), log=lambda *_: None)


def test_a_diverging_run_stops_with_a_clear_error_and_saves_no_nan(data, tmp_path, monkeypatch, capsys):
    """--lr 1e9: the loss turns NaN in the first epoch; the run stops (exit 2, one line), no NaN model is saved as
    best and the folder it made is gone. A loss that turns NaN later keeps the finite epochs' files untouched."""
    import json

    import emolens.train as train_module
    from emolens.cli import main

    out = tmp_path / "lr"
    assert main(["train", "--data", str(data), "--out", str(out), "--lr", "1e9", "--epochs", "3",
                 "--progress", "false", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged at epoch 1") and "--lr" in err and err.count("\n") == 1
    assert not out.exists()

    real = train_module.train_one_epoch

    def nan_in_epoch_2(*args, **kwargs):
        stats = real(*args, **kwargs)
        return {**stats, "train_loss": float("nan")} if args[8] == 1 else stats  # args[8]: the epoch

    monkeypatch.setattr(train_module, "train_one_epoch", nan_in_epoch_2)
    run = tmp_path / "r"
    with pytest.raises(train_module.TrainingError, match="epoch 2: the training loss is nan.*up to epoch 1"):
        train(_cfg(data, run, epochs=3), log=lambda *_: None)
    assert read_checkpoint(run / "best.pt")["metrics"]["epoch"] == 1
    assert read_checkpoint(run / "last.pt")["epoch"] == 0
    assert [h["epoch"] for h in json.loads((run / "metrics.json").read_text())] == [1]


def test_metrics_files_never_hold_nan(tmp_path):
    """A non-finite value is null in metrics.json (bare NaN is not JSON) and an empty cell in metrics.csv."""
    import json

    from emolens.loop import write_metrics

    write_metrics(tmp_path, [{"epoch": 1, "train_loss": float("nan"), "val_acc": float("inf")}],
                  final={"acc": float("-inf")})
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"history": [{"epoch": 1, "train_loss": None, "val_acc": None}], "final": {"acc": None}}
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1] == "1,,"


@pytest.mark.parametrize("args, message", [
    (["--model-kwargs", "{lstm_hidden: -5}"], "model_kwargs {'lstm_hidden': -5}: do not fit model cnn_lstm"),
    (["--model-kwargs", "{bogus: 3}"], "unexpected keyword argument 'bogus'"),
    (["--device", "bogus"], "unknown device 'bogus'"),
])
def test_bad_model_kwargs_and_devices_are_one_line_before_any_folder(data, tmp_path, capsys, args, message):
    from emolens.cli import main

    out = tmp_path / "r"
    assert main(["train", "--data", str(data), "--out", str(out), "--progress", "false", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Error:" not in err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cli_train_on_cuda_without_gpu_is_one_line(data, tmp_path, capsys):
    from emolens.cli import main

    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert capsys.readouterr().err == "error: device cuda requested but no CUDA GPU is available; use --device cpu\n"
