"""Training end to end on a tiny synthetic Kaggle-layout dataset made here (PNG files in
train/<class>/Training_*.png and test/<class>/PublicTest_*.png): the CLI's run folder, resume after a
SIGKILL equal to an uninterrupted run, determinism, early stopping, the schedules, and DDP on CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from emolens.checkpoint import load_model, read_checkpoint
from emolens.config import build_config, load_config
from emolens.models import count_flops, count_parameters, create_model
from emolens.preprocess import CLASSES
from emolens.train import TrainConfig, epoch_seed, steps_per_epoch, train

#: a small cnn_lstm: the loop, not the model, is under test here
SMALL = {"widths": [8, 16, 32, 64], "lstm_hidden": 16}
SMALL_ARG = "{widths: [8, 16, 32, 64], lstm_hidden: 16}"
TIMING_KEYS = ("train_seconds", "eval_seconds")


def _faces(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic 'faces': one oriented grating per class plus noise, (N, 48, 48) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:48, 0:48] / 48.0
    images, labels = [], []
    for c in range(len(CLASSES)):
        ang = np.pi * c / len(CLASSES)
        base = 127 + 80 * np.sin(2 * np.pi * (2 + c % 3) * (xx * np.cos(ang) + yy * np.sin(ang)))
        for _ in range(n_per_class):
            images.append(np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.asarray(labels)


def write_kaggle_folder(root: Path, n_train: int, n_test: int, seed: int = 0, test_classes: int = 7) -> Path:
    """The Kaggle FER2013 folder layout; PublicTest images only for the first ``test_classes`` classes."""
    for split, prefix, n, s in (("train", "Training", n_train, seed), ("test", "PublicTest", n_test, seed + 1)):
        images, labels = _faces(n, s)
        for i, (im, y) in enumerate(zip(images, labels, strict=True)):
            if split == "test" and y >= test_classes:
                continue
            folder = root / split / CLASSES[y]
            folder.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(folder / f"{prefix}_{i}.png"), im)
    return root


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A private dataset cache for this module, in-process and in subprocesses; one thread per process."""
    cache = tmp_path_factory.mktemp("cache")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOLENS_CACHE", str(cache))
        yield {**os.environ, "EMOLENS_CACHE": str(cache), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory, env) -> Path:
    """84 training, 14 PublicTest images."""
    return write_kaggle_folder(tmp_path_factory.mktemp("fer"), n_train=12, n_test=2)


@pytest.fixture(scope="module")
def one_val_data(tmp_path_factory, env) -> Path:
    """One PublicTest image: accuracy is 0 or 1, so it can improve at most once after epoch 1 and early
    stopping with patience 1 must stop by epoch 3."""
    return write_kaggle_folder(tmp_path_factory.mktemp("fer1"), n_train=6, n_test=1, test_classes=1)


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    values = {"data": str(data), "model_kwargs": SMALL, "epochs": 2, "batch_size": 16, "out": str(out),
              "progress": False, "threads": 1, **kw}
    return build_config(TrainConfig, values)


def _cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emolens", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())


def _without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in history]


def _assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_cli_train_one_epoch_writes_the_run_folder(data, env, tmp_path):
    yaml_cfg = tmp_path / "cfg.yaml"
    yaml_cfg.write_text(f"model: cnn_lstm\nepochs: 3\nbatch_size: 16\ndata: {data}\n")
    run = tmp_path / "run"
    proc = _cli("train", "--config", str(yaml_cfg), "--epochs", "1", "--out", str(run), "--progress", "false",
                "--threads", "1", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 1/1" in proc.stdout and "best val accuracy" in proc.stdout
    for name in ("config.yaml", "metrics.csv", "metrics.json", "curves.png", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    saved = load_config(TrainConfig, run / "config.yaml")
    assert saved.epochs == 1 and saved.model == "cnn_lstm" and saved.data == str(data)  # flag beat YAML
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = _history(run)
    assert [h["epoch"] for h in history] == [1]
    row = history[0]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "val_acc_flip", "lr"} <= row.keys()
    assert np.isfinite(row["train_loss"]) and 0 <= row["val_acc"] <= 1
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:2] == ["epoch", "train_loss"] and len(csv_lines) == 2
    model, ckpt = load_model(run / "best.pt")
    assert ckpt["metrics"]["epoch"] == 1 and ckpt["metrics"]["val_images"] == 14
    assert ckpt["metrics"]["train_images"] == 84 and ckpt["config"]["epochs"] == 1
    assert "optimizer" in read_checkpoint(run / "last.pt")
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 48, 48)).shape == (2, len(CLASSES))


def test_resume_after_sigkill_equals_uninterrupted_run(data, env, tmp_path):
    """A run killed (SIGKILL) after its first checkpoint and resumed ends bit for bit where an
    uninterrupted run of the same seed ends: same weights, same per-epoch metrics, epochs 1..N once.
    Augmentation, mixup/cutmix, dropout and the one-cycle schedule are all on, so every random stream
    and the optimizer/scheduler state must be restored."""
    epochs = 5
    args = ["--data", str(data), "--model-kwargs", SMALL_ARG, "--epochs", str(epochs), "--batch-size", "16",
            "--mixup", "0.2", "--cutmix", "1.0", "--progress", "false", "--threads", "1", "--seed", "3"]
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "emolens", "train", *args, "--out", str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "last.pt").exists():
        assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()}"
        assert time.time() < deadline, "no last.pt after 120 s"
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stderr.close()
    last = read_checkpoint(run / "last.pt")
    done = last["epoch"] + 1
    assert done < epochs and len(last["history"]) == done

    resumed = _cli("train", "--resume", str(run), "--progress", "false", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch {done + 1}/{epochs}" in resumed.stdout and f"epoch {done}/{epochs}" not in resumed.stdout
    history = _history(run)
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))

    twin = train(_cfg(data, tmp_path / "twin", epochs=epochs, mixup=0.2, cutmix=1.0, seed=3), log=lambda *_: None)
    assert _without_timing(history) == _without_timing(_history(twin))
    _assert_same_weights(run / "last.pt", twin / "last.pt")
    _assert_same_weights(run / "best.pt", twin / "best.pt")


def test_same_seed_same_run_and_other_seed_differs(data, tmp_path):
    quiet = {"log": lambda *_: None}
    a = train(_cfg(data, tmp_path / "a", seed=7), **quiet)
    b = train(_cfg(data, tmp_path / "b", seed=7), **quiet)
    c = train(_cfg(data, tmp_path / "c", seed=8, epochs=1), **quiet)
    assert _without_timing(_history(a)) == _without_timing(_history(b))
    _assert_same_weights(a / "last.pt", b / "last.pt")
    assert _history(a)[0]["train_loss"] != _history(c)[0]["train_loss"]


def test_plateau_schedule_resume_continues_exactly(one_val_data, tmp_path):
    """ReduceLROnPlateau halves the LR after 3 epochs without gain (the single validation image cannot
    keep improving); a 3-epoch run resumed to 7 epochs repeats the 7-epoch run, scheduler state included."""
    quiet = {"log": lambda *_: None}
    full = train(_cfg(one_val_data, tmp_path / "full", schedule="plateau", epochs=7, lr=0.02), **quiet)
    part = train(_cfg(one_val_data, tmp_path / "part", schedule="plateau", epochs=3, lr=0.02), **quiet)
    part = train(_cfg(one_val_data, tmp_path / "ignored", epochs=7), resume=part, **quiet)
    assert part.name == "part"
    assert _without_timing(_history(part)) == _without_timing(_history(full))
    _assert_same_weights(part / "last.pt", full / "last.pt")
    lrs = [h["lr"] for h in _history(full)]
    assert lrs[0] == 0.02 and min(lrs) == 0.01, lrs


def test_early_stopping_and_resuming_a_stopped_run(one_val_data, tmp_path):
    logs: list[str] = []
    run = train(_cfg(one_val_data, tmp_path / "es", epochs=4, patience=1), log=logs.append)
    history = _history(run)
    best_epoch = read_checkpoint(run / "best.pt")["metrics"]["epoch"]
    assert len(history) == best_epoch + 1 < 4
    assert history[-1]["bad_epochs"] == 1 and any("early stopping" in m for m in logs)
    logs.clear()
    train(_cfg(one_val_data, tmp_path / "ignored", epochs=4), resume=run, log=logs.append)
    assert len(_history(run)) == len(history)  # a stopped run is not trained on
    assert any("stopped early" in m for m in logs)


@pytest.mark.parametrize("kw", [
    {"optimizer": "adamw", "schedule": "cosine", "lr": 3e-3, "weight_decay": 0.05},
    {"optimizer": "sgd", "schedule": "none", "class_weights": True, "augment": False},
    {"model": "cnn", "model_kwargs": {"widths": [8, 16, 32, 64]}, "schedule": "onecycle", "mixup": 0.4,
     "train_fraction": 0.5, "crop_size": 40},
])
def test_optimizers_and_schedules_train(data, tmp_path, kw):
    run = train(_cfg(data, tmp_path / "r", epochs=3, **kw), log=lambda *_: None)
    history = _history(run)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in history)
    lrs = [h["lr"] for h in history]
    if kw["schedule"] == "cosine":  # warm-up over the first 20% of steps, then decay towards 0
        assert lrs[0] > lrs[1] > lrs[2] and lrs[2] < 0.1 * kw["lr"]
    if kw["schedule"] == "none":
        assert lrs == [0.05] * 3
    if kw["schedule"] == "onecycle":  # up from lr/25, then down to lr/25/1000 at the last step
        assert lrs[0] > 0.05 / 25 and lrs[-1] == pytest.approx(0.05 / 25 / 1000, rel=1e-3)
    if kw.get("train_fraction"):
        assert read_checkpoint(run / "best.pt")["metrics"]["train_images"] < 84
    if kw.get("crop_size"):  # trained on 40 px windows, scored on the centre window; the checkpoint says so
        ckpt = read_checkpoint(run / "best.pt")
        assert ckpt["config"]["crop_size"] == 40
        table = _crop_tta_table(run / "best.pt", data)
        # the centre window is what training scored (in bf16 there, float32 here: within one of 14 images)
        assert table["centre window"] == pytest.approx(100 * ckpt["metrics"]["public_acc"], abs=100 / 14 + 0.01)
        assert set(table) == {"whole face", "whole face + flip", "centre window", "centre + flip", "5 windows",
                              "10 windows (5 + flips)"}
        # the runtimes feed whole faces, which such a model gets wrong: refused, not shipped by mistake
        from emolens.checkpoint import CheckpointError
        from emolens.export import export_onnx
        from emolens.runtime import load_classifier

        with pytest.raises(CheckpointError, match="40 px windows"):
            export_onnx(run / "best.pt", tmp_path / "m.onnx")
        with pytest.raises(CheckpointError, match="crop_tta"):
            load_classifier(run / "best.pt", "torch")
        assert not (tmp_path / "m.onnx").exists()


def _crop_tta_table(path: Path, data: Path) -> dict[str, float]:
    """scripts/crop_tta.py's markdown table for one model, as {views: accuracy in %}."""
    import contextlib
    import importlib.util
    import io

    spec = importlib.util.spec_from_file_location("crop_tta", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "crop_tta.py")
    crop_tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crop_tta)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert crop_tta.main([str(path), "--data", str(data)]) == 0
    rows = [line.strip("|").split("|") for line in buf.getvalue().splitlines() if line.startswith("| ")][1:]
    return {r[0].strip(): float(r[2].strip().rstrip("%")) for r in rows}


def test_ddp_two_cpu_processes(one_val_data, env, tmp_path):
    """torchrun with 2 processes and the gloo backend: both ranks train on their shard, rank 0 alone
    writes and logs, and early stopping (decided on rank 0) ends both ranks without a hang."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "emolens", "train", "--device", "cpu", "--data", str(one_val_data), "--model-kwargs", SMALL_ARG,
           "--epochs", "3", "--patience", "1", "--schedule", "plateau", "--batch-size", "16", "--progress", "false",
           "--threads", "1", "--out", str(run)]
    for _ in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
        # a rank now and then aborts in gloo's C++ teardown after the run is complete ("terminate called
        # without an active exception"; in 2 of the last ~6 full suites here, never run alone): one clean
        # rerun is required, anything else fails at once
        if proc.returncode == 0 or "terminate called without an active exception" not in proc.stderr:
            break
        shutil.rmtree(run, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "best.pt").is_file() and (run / "last.pt").is_file()
    ckpt = read_checkpoint(run / "last.pt")
    assert ckpt["metrics"]["world_size"] == 2 and ckpt["metrics"]["train_images"] == 42
    history = _history(run)
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1)) and len(history) <= 3
    assert proc.stdout.count("epoch 1/3") == 1  # one log line per epoch: only rank 0 prints
    assert "early stopping" in proc.stdout


def test_train_errors_are_one_line(data, env, tmp_path, capsys):
    from emolens.cli import main

    assert main(["train", "--data", str(tmp_path / "missing"), "--progress", "false"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--train-fraction", "0.001", "--out", str(tmp_path / "r"),
                 "--progress", "false"]) == 2
    assert "leaves no training images" in capsys.readouterr().err
    not_ckpt = tmp_path / "x.pt"
    not_ckpt.write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(not_ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not an emolens checkpoint" in err and err.count("\n") == 1


def test_resume_refuses_best_pt_and_stretched_one_cycle(data, tmp_path):
    from emolens.checkpoint import CheckpointError
    from emolens.config import ConfigError

    run = train(_cfg(data, tmp_path / "r", epochs=1), log=lambda *_: None)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        train(_cfg(data, tmp_path / "x"), resume=run / "best.pt")
    with pytest.raises(ConfigError, match="one-cycle"):
        train(_cfg(data, tmp_path / "x", epochs=5), resume=run)


def test_epoch_seeds_and_steps():
    seeds = {epoch_seed(s, e, r, k) for s in range(3) for e in range(3) for r in range(2) for k in range(3)}
    assert len(seeds) == 54 and all(0 <= v < 2**63 for v in seeds)
    assert epoch_seed(0, 1000) != epoch_seed(1, 0)  # no seed * 1000 + epoch collisions
    assert steps_per_epoch(84, 16) == 5 and steps_per_epoch(10, 128) == 1 and steps_per_epoch(128, 128) == 1


def test_ablation_script_writes_its_table(data, tmp_path):
    """scripts/ablation.py at a tiny size: every (model, augmentation) pair trained once, one table."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    recipe = tmp_path / "small.yaml"
    recipe.write_text(f"model_kwargs: {SMALL_ARG}\nbatch_size: 16\nthreads: 1\n")
    out = tmp_path / "abl" / "ABLATION.md"
    args = ["--data", str(data), "--config", str(recipe), "--epochs", "1", "--models", "cnn_lstm,cnn",
            "--out", str(out)]
    assert ablation.main(args) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| cnn")]
    assert len(rows) == 4 and "| cnn_lstm | on |" in text and "| cnn | off |" in text
    result = json.loads(out.with_suffix(".json").read_text())
    for r in result["rows"]:  # the recipe's widths reach cnn too: the two differ only in their heads
        kwargs = SMALL if r["model"] == "cnn_lstm" else {"widths": SMALL["widths"]}
        model = create_model(r["model"], **kwargs)
        assert r["params"] == count_parameters(model) and r["flops"] == count_flops(model)
        assert r["train_images"] == 84 and r["val_images"] == 14 and r["epochs_run"] == 1
    assert "the LSTM head" in text
    # complete runs are read back, not trained again
    stamps = {p: p.stat().st_mtime_ns for p in out.parent.glob("runs/*/last.pt")}
    assert ablation.main([*args, "--augment", "off"]) == 0
    again = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert [r["public_acc"] for r in again] == [r["public_acc"] for r in result["rows"] if not r["augment"]]
    assert len(stamps) == 4 and all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_search_table_reads_run_folders(tmp_path, capsys):
    """scripts/search_table.py: one row per run folder, the best flip epoch, the gap to s15-base."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("search_table", Path(__file__).resolve().parents[1] / "scripts" /
                                                  "search_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    for name, accs in (("s15-base", [0.50, 0.60]), ("s15-x", [0.62, 0.61])):
        (tmp_path / name).mkdir()
        history = [{"epoch": i + 1, "train_acc": 0.7, "val_acc": a - 0.01, "val_acc_flip": a, "train_seconds": 40.0 + i,
                    "eval_seconds": 2.0} for i, a in enumerate(accs)]
        (tmp_path / name / "metrics.json").write_text(json.dumps(history))
    assert table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| s15-base | 2 | 1.4 (41 s) | 70.0% | 59.00% / 60.00% (2) | +0.00 |" in out
    assert "| s15-x | 2 | 1.4 (41 s) | 70.0% | 61.00% / 62.00% (1) | +2.00 |" in out
    assert table.main([str(tmp_path / "none")]) == 1
