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
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in proc.stderr
    code = code.replace("'train', ", "'train', '--task', 'sequence', ")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "pip install 'emolens[train]'" in proc.stderr, proc.stderr
