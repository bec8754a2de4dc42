"""Ensemble distillation and CPU bf16 autocast: the loss pieces against their definitions, and a student
trained from teacher checkpoints end to end on the tiny synthetic dataset of test_train."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from emolens.checkpoint import read_checkpoint
from emolens.config import ConfigError, build_config
from emolens.models import create_model
from emolens.train import TrainConfig, _autocast, amp_enabled, distill_loss, teacher_probs, train
from test_train import _cfg, _history, write_kaggle_folder


def test_distill_loss_is_zero_on_agreement_and_matches_kl_times_t_squared():
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    t = 3.0
    same = (logits / t).softmax(1)
    assert distill_loss(logits, same, t).item() == pytest.approx(0.0, abs=1e-6)
    target = torch.randn(5, 7).softmax(1)
    p_s = (logits / t).softmax(1)
    kl = (target * (target.log() - p_s.log())).sum(1).mean() * t * t
    assert distill_loss(logits, target, t).item() == pytest.approx(kl.item(), rel=1e-5)
    # the student's gradient points towards the teachers: one step lowers the loss
    z = logits.clone().requires_grad_(True)
    distill_loss(z, target, t).backward()
    assert distill_loss(z.detach() - 0.5 * z.grad, target, t) < distill_loss(logits, target, t)


def test_teacher_probs_average_the_teachers_at_temperature():
    torch.manual_seed(1)
    a = create_model("cnn", **SMALL_CNN).eval()
    b = create_model("cnn", **SMALL_CNN).eval()
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        want = ((a(x) / 2).softmax(1) + (b(x) / 2).softmax(1)) / 2
    got = teacher_probs([a, b], x, temperature=2.0, amp=False)
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(4), atol=1e-6)


SMALL_CNN = {"widths": [8, 16, 32, 64], "hidden": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_kaggle_folder(tmp_path_factory.mktemp("fer_distill"), n_train=10, n_test=2)


def test_student_trains_from_teacher_checkpoints(data, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache"))
    quiet = {"log": lambda *_: None}
    t1 = train(_cfg(data, tmp_path / "t1", epochs=2, seed=1), **quiet)
    t2 = train(_cfg(data, tmp_path / "t2", epochs=2, seed=2, model="cnn", model_kwargs=SMALL_CNN), **quiet)
    logs: list[str] = []
    teachers = [str(t1 / "best.pt"), str(t2 / "best.pt")]
    student = train(_cfg(data, tmp_path / "s", epochs=2, seed=3, teachers=teachers, distill_alpha=0.8), log=logs.append)
    assert any("distilling from 2 teacher(s)" in line for line in logs)
    ckpt = read_checkpoint(student / "best.pt")
    assert ckpt["config"]["teachers"] == teachers and ckpt["config"]["distill_alpha"] == 0.8
    assert all(math.isfinite(h["train_loss"]) for h in _history(student))
    # the same student without teachers follows another path: the teachers' loss term is really used
    alone = train(_cfg(data, tmp_path / "alone", epochs=2, seed=3), **quiet)
    assert _history(alone)[0]["train_loss"] != _history(student)[0]["train_loss"]

    # the model card's teacher table: each model and the ensemble, the single models as in training
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("ensemble", Path(__file__).parents[1] / "scripts" / "ensemble.py")
    ensemble = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ensemble)
    assert ensemble.main([*teachers, "--data", str(data), "--json", str(tmp_path / "ens.json")]) == 0
    rows = json.loads((tmp_path / "ens.json").read_text())
    assert [r["model"] for r in rows[:2]] == teachers and rows[2]["model"].startswith("ensemble of 2")
    for r, run in zip(rows[:2], (t1, t2), strict=True):  # one image of slack: training scored in bf16
        assert r["acc_flip"] == pytest.approx(read_checkpoint(run / "best.pt")["metrics"]["public_acc_flip"],
                                              abs=1 / 14 + 1e-6)


def test_distillation_config_is_checked(data):
    with pytest.raises(ConfigError, match="distill_alpha"):
        build_config(TrainConfig, {"distill_alpha": 1.5})
    with pytest.raises(ConfigError, match="distill_temperature"):
        build_config(TrainConfig, {"distill_temperature": 0})
    assert build_config(TrainConfig, {"teachers": "a.pt,b.pt"}).teachers == ["a.pt", "b.pt"]


def test_missing_teacher_is_a_checkpoint_error(data, tmp_path, monkeypatch):
    from emolens.checkpoint import CheckpointError

    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="no such model file"):
        train(_cfg(data, tmp_path / "s", epochs=1, teachers=[str(tmp_path / "nope.pt")]), log=lambda *_: None)
    assert not (tmp_path / "s").exists()  # no half-made run folder: the retry would be refused as "not empty"


def test_cpu_autocast_runs_bf16_only_where_the_cpu_is_fast():
    cpu = torch.device("cpu")
    assert not amp_enabled(cpu, False)
    model = create_model("cnn", **SMALL_CNN)
    with _autocast(cpu, True):
        out = model(torch.randn(2, 1, 48, 48))
    assert out.dtype == (torch.bfloat16 if amp_enabled(cpu, True) else torch.float32)
    # the loss is taken in float32 whatever the autocast
    assert F.cross_entropy(out.float(), torch.tensor([0, 1])).dtype == torch.float32


def test_bench_train_prints_both_precisions_side_by_side(capsys):
    from emolens.cli import main

    assert main(["bench", "train", "--model", "cnn", "--rounds", "1", "--steps", "1", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "| fp32 img/s | bf16 img/s | bf16 / fp32 |" in out
    row = next(line for line in out.splitlines() if line.startswith("| cnn |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[4]) > 0
    if amp_enabled(torch.device("cpu"), True):
        assert float(cells[5]) > 0 and cells[6].endswith("x")
    assert main(["bench", "train", "--model", "nope"]) == 2


def test_bench_train_returns_a_typed_result():
    from emolens.bench import TrainBench, bench_train

    r = bench_train("cnn", batch=4, rounds=1, steps=1)
    assert isinstance(r, TrainBench) and r.model == "cnn" and r.batch == 4 and r.fp32_img_s > 0
    assert (r.bf16_img_s is not None) == (r.ratio is not None) == amp_enabled(torch.device("cpu"), True)
    assert r.to_dict()["fp32_img_s"] == r["fp32_img_s"] == r.fp32_img_s and r.params == r.to_dict()["params"] > 0
