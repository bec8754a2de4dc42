"""ONNX export: metadata round trip, torch vs ONNX Runtime within 1e-4, dynamic batch, the int8 variant, the
shipped pair made by ship() (fp16 .pt and an .onnx from the same rounded weights), and `emolens export`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from emolens.checkpoint import file_sha256, make_checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from emolens.cli import main  # noqa: E402
from emolens.export import (  # noqa: E402
    ExportError,
    export_onnx,
    int8_with_accuracy_check,
    quantize_int8,
    read_metadata,
    ship,
)
from emolens.models import create_model  # noqa: E402
from emolens.preprocess import CLASSES, INPUT_SIZE, MEAN, STD  # noqa: E402
from emolens.runtime import META_KEYS, OnnxClassifier, TorchClassifier  # noqa: E402

SMALL = {"widths": [8, 16, 32, 64], "lstm_hidden": 16}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("cnn_lstm", **SMALL)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    ckpt = make_checkpoint(model, config={"epochs": 3}, metrics={"public_acc": 0.25, "epoch": 2},
                           history=[{"epoch": 1, "val_acc": 0.2}])
    ckpt["optimizer"] = {"state": {}, "param_groups": [{"lr": 0.1}]}  # as a training run's best.pt has
    save_checkpoint(ckpt, path)
    return path


@pytest.fixture(scope="module")
def fer_tree(tmp_path_factory):
    """A tiny FER2013 folder (random-pixel 48x48 PNGs, conftest.make_kaggle_tree) for int8 calibration."""
    from conftest import make_kaggle_tree

    return make_kaggle_tree(tmp_path_factory.mktemp("fer"), {"train": 8, "public": 4, "private": 0})


@pytest.fixture(scope="module")
def exported(checkpoint, fer_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "m.onnx"
    # a random model on random pixels: the accuracy gate is tested apart (test_int8_accuracy_gate)
    return export_onnx(checkpoint, out, quantize=True, data=fer_tree, max_drop=1.0)


def faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, INPUT_SIZE, INPUT_SIZE), dtype=np.uint8)


def test_metadata_round_trip(checkpoint, exported):
    meta = read_metadata(exported["path"])
    assert {f"emolens.{k}" for k in meta} >= set(META_KEYS)
    assert meta["format"] == "emolens-onnx"
    assert meta["model"] == {"name": "cnn_lstm", "kwargs": read_checkpoint(checkpoint)["model"]["kwargs"]}
    assert meta["classes"] == list(CLASSES)
    assert meta["preprocess"]["mean"] == MEAN and meta["preprocess"]["std"] == STD
    assert meta["preprocess"]["input_size"] == INPUT_SIZE
    assert meta["metrics"] == {"public_acc": 0.25, "epoch": 2}
    assert meta["source_sha256"] == file_sha256(checkpoint)
    clf = OnnxClassifier(exported["path"])
    assert clf.classes == CLASSES and clf.name == "cnn_lstm" and clf.metrics["public_acc"] == 0.25


def test_torch_and_onnx_agree_and_batch_is_dynamic(checkpoint, exported):
    assert exported["max_abs_diff"] is not None and exported["max_abs_diff"] <= 1e-4
    onnx_clf, torch_clf = OnnxClassifier(exported["path"]), TorchClassifier(checkpoint)
    for n in (1, 5, 64):
        x = faces(n, seed=n)
        for tta in ("none", "flip"):
            np.testing.assert_allclose(onnx_clf.predict_proba(x, tta), torch_clf.predict_proba(x, tta), atol=1e-4)
    sess = ort.InferenceSession(exported["path"], providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    assert sess.get_outputs()[0].name == "logits"


def test_int8_export_works(exported, tmp_path):
    q = exported["int8_path"]
    assert q and exported["int8_size_bytes"] < 0.6 * exported["size_bytes"]
    meta = read_metadata(q)
    assert meta["quantization"].startswith("int8-static-qdq") and meta["classes"] == list(CLASSES)
    assert meta["metrics"]["public_acc_int8"] == exported["public_acc_int8"]
    assert meta["metrics"]["public_images"] == 28
    fp32, int8 = OnnxClassifier(exported["path"]), OnnxClassifier(q)
    x = faces(32, seed=3)
    p8 = int8.predict_proba(x)
    assert p8.shape == (32, 7) and np.allclose(p8.sum(1), 1, atol=1e-5)
    # quantisation error is bounded: int8 probabilities stay near fp32 for this random model
    assert np.abs(p8 - fp32.predict_proba(x)).max() < 0.05
    dyn = quantize_int8(exported["path"], tmp_path / "dynamic.onnx")  # no calibration: dynamic quantisation
    assert read_metadata(dyn)["quantization"] == "int8-dynamic"
    assert read_metadata(dyn)["source_sha256"] == read_metadata(exported["path"])["source_sha256"]
    assert np.abs(OnnxClassifier(dyn).predict_proba(x) - fp32.predict_proba(x)).max() < 0.05


def test_int8_accuracy_gate(checkpoint, exported, fer_tree, tmp_path, capsys):
    out = tmp_path / "gated.onnx"
    with pytest.raises(ExportError, match="points below fp32"):
        int8_with_accuracy_check(exported["path"], out, fer_tree, max_drop=-1.0)  # nothing passes a negative gate
    assert not out.exists()
    with pytest.raises(ExportError, match="int8 needs FER2013"):
        int8_with_accuracy_check(exported["path"], out, tmp_path / "no-such-data")
    code = main(["export", str(checkpoint), "-o", str(tmp_path / "x.onnx"), "--int8", "--data", str(tmp_path / "no")])
    assert code == 2 and "int8 needs FER2013" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_of_the_shipped_model_is_within_half_a_point(fer_zip_path, tmp_path):
    from emolens.runtime import default_model_path

    if not default_model_path("onnx").is_file():
        pytest.skip("the shipped model is not there yet")
    r = int8_with_accuracy_check(default_model_path("onnx"), tmp_path / "int8.onnx", fer_zip_path)
    assert r["public_acc_fp32"] - r["public_acc_int8"] <= 0.005


def test_check_failure_removes_the_file(checkpoint, tmp_path):
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="disagree"):
        export_onnx(checkpoint, out, tolerance=-1.0)  # no difference passes a negative tolerance
    assert not out.exists()
    with pytest.raises(ExportError, match=r"\.onnx"):
        export_onnx(checkpoint, tmp_path / "model.bin")


def test_ship_makes_a_slim_fp16_pair_that_agrees(checkpoint, tmp_path, capsys):
    r = ship(checkpoint, tmp_path / "weights")
    pt, onnx = r["pt"], r["onnx"]
    ckpt = read_checkpoint(pt)
    assert "optimizer" not in ckpt
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["metrics"] == {"public_acc": 0.25, "epoch": 2} and ckpt["history"] == [{"epoch": 1, "val_acc": 0.2}]
    assert ckpt["source_sha256"] == file_sha256(checkpoint)
    assert r["total_bytes"] == sum(r["sizes"].values()) and r["max_abs_diff"] <= 1e-4
    x = faces(16, seed=7)
    np.testing.assert_allclose(OnnxClassifier(onnx).predict_proba(x, "flip"),
                               TorchClassifier(pt).predict_proba(x, "flip"), atol=1e-4)
    assert read_metadata(onnx)["source_sha256"] == file_sha256(pt)


def test_ship_int8_replaces_the_onnx_with_its_int8_variant(checkpoint, fer_tree, tmp_path):
    """ship(int8=True): the shipped .onnx is the quantised file, still tied to the shipped .pt (source_sha256) and
    close to it; the fp32 file is not left beside it."""
    r = ship(checkpoint, tmp_path / "w", int8=True, data=fer_tree, max_drop=1.0)  # random model: gate tested apart
    pt, onnx = Path(r["pt"]), Path(r["onnx"])
    meta = read_metadata(onnx)
    assert meta["quantization"].startswith("int8-static") and meta["source_sha256"] == file_sha256(pt)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["emolens_cnn_lstm.onnx", "emolens_cnn_lstm.pt"]
    assert r["sizes"][onnx.name] == onnx.stat().st_size
    x = faces(16, seed=7)
    np.testing.assert_allclose(OnnxClassifier(onnx).predict_proba(x), TorchClassifier(pt).predict_proba(x), atol=0.05)


def test_cli_export(checkpoint, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", str(checkpoint), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "max |dp|" in printed and "opset 17" in printed
    assert main(["export", str(checkpoint), "--ship", str(tmp_path / "w")]) == 0
    assert "total" in capsys.readouterr().out and (tmp_path / "w" / "emolens_cnn_lstm.onnx").is_file()


def test_cli_export_bad_input(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    assert main(["export", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not an emolens checkpoint" in err and "Traceback" not in err
    assert main(["export", str(tmp_path / "missing.pt")]) == 2
    assert "no such model file" in capsys.readouterr().err


def test_metadata_values_are_json(exported):
    """Every metadata value is JSON, under the emolens. prefix, and the one reader gives back what was written."""
    import onnx

    from emolens.runtime import read_onnx_metadata

    proto = onnx.load(exported["path"])
    raw = {p.key: json.loads(p.value) for p in proto.metadata_props}  # every value decodes
    assert raw and all(k.startswith("emolens.") for k in raw)
    assert {"emolens.format", "emolens.model", "emolens.classes", "emolens.preprocess",
            "emolens.weights_sha256"} <= set(raw)
    assert read_onnx_metadata(exported["path"]) == {k.removeprefix("emolens."): v for k, v in raw.items()}
