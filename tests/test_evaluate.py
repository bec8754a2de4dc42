"""emolens.evaluate: metrics against hand-computed values, McNemar, and `emolens evaluate` end to end on a
tiny synthetic Kaggle-layout folder with random-weight models made in the test."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from emolens.cli import main
from emolens.evaluate import (
    EvaluateError,
    calibration_bins,
    classification_metrics,
    compare_models,
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    mcnemar_test,
)
from emolens.preprocess import CLASSES

# ----------------------------------------------------------------------------------------------------
# a tiny fixed example, computed by hand
#
# true:  angry angry angry disgust disgust happy happy happy
# pred:  angry angry fear  disgust happy   happy happy angry
# fear is predicted once and has no support; neutral, sad, surprise occur nowhere.
Y_TRUE = np.array([0, 0, 0, 1, 1, 3, 3, 3])
Y_PRED = np.array([0, 0, 2, 1, 3, 3, 3, 0])
SECOND = np.array([1, 1, 0, 0, 5, 0, 0, 3])  # runner-up class: top-2 hits on samples 2 and 7, misses sample 4


def _proba(pred: np.ndarray, second: np.ndarray) -> np.ndarray:
    p = np.full((len(pred), 7), 0.02)
    p[np.arange(len(pred)), pred] = 0.6
    p[np.arange(len(pred)), second] = 0.3
    return p  # rows sum to 0.6 + 0.3 + 5 * 0.02 = 1


def test_confusion_matrix_counts():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 7)
    expected = np.zeros((7, 7), int)
    expected[0, 0], expected[0, 2] = 2, 1
    expected[1, 1], expected[1, 3] = 1, 1
    expected[3, 3], expected[3, 0] = 2, 1
    np.testing.assert_array_equal(cm, expected)


def test_classification_metrics_hand_computed():
    m = classification_metrics(Y_TRUE, _proba(Y_PRED, SECOND))
    pc = m["per_class"]
    assert m["count"] == 8
    assert m["accuracy"] == pytest.approx(5 / 8)
    # angry: 2 right of 3 true, 2 right of 3 predicted
    assert (pc["angry"]["precision"], pc["angry"]["recall"], pc["angry"]["f1"]) == pytest.approx((2 / 3,) * 3)
    # disgust: 1 of 2 found, its single prediction right -> F1 = 2 * 1 * 0.5 / 1.5
    assert (pc["disgust"]["precision"], pc["disgust"]["recall"], pc["disgust"]["f1"]) == pytest.approx((1, 0.5, 2 / 3))
    # fear: no support, one wrong prediction -> everything 0, support 0, predicted 1
    assert pc["fear"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 1}
    assert pc["happy"]["f1"] == pytest.approx(2 / 3)
    assert pc["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}
    # balanced accuracy: mean recall over the 3 classes with support
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # macro: over the 4 classes seen in labels or predictions (angry, disgust, fear, happy); fear counts as 0
    assert m["macro_precision"] == pytest.approx((2 / 3 + 1 + 0 + 2 / 3) / 4)
    assert m["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 0 + 2 / 3) / 4)
    assert m["macro_f1"] == pytest.approx(0.5)
    # weighted by support 3, 2, 3
    assert m["weighted_precision"] == pytest.approx((3 * 2 / 3 + 2 * 1 + 3 * 2 / 3) / 8)
    assert m["weighted_recall"] == pytest.approx(5 / 8)
    assert m["weighted_f1"] == pytest.approx(2 / 3)
    assert m["top2_accuracy"] == pytest.approx(7 / 8)
    # every confidence is 0.6: one bin with accuracy 5/8 -> |0.625 - 0.6|
    assert m["ece"] == pytest.approx(0.025)
    assert m["nll"] == pytest.approx(-(5 * math.log(0.6) + 2 * math.log(0.3) + math.log(0.02)) / 8)
    assert m["confusion_matrix"][3] == [1, 0, 0, 2, 0, 0, 0]
    assert sum(b["count"] for b in m["reliability"]) == 8


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_agree_with_scikit_learn_where_installed():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 6, 200)  # class 6 never occurs
    proba = rng.dirichlet(np.ones(7), 200)
    pred = proba.argmax(1)
    m = classification_metrics(y, proba)
    assert m["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(metrics.balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(metrics.f1_score(y, pred, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(metrics.f1_score(y, pred, average="weighted", zero_division=0))
    assert m["top2_accuracy"] == pytest.approx(metrics.top_k_accuracy_score(y, proba, k=2, labels=range(7)))
    assert m["nll"] == pytest.approx(metrics.log_loss(y, proba, labels=range(7)))


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(Y_TRUE, np.ones((8, 3)))
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics(np.zeros(0, int), np.ones((0, 7)))


def test_expected_calibration_error_known_example():
    conf = np.array([0.95, 0.95, 0.65, 0.65, 0.3])
    correct = np.array([1, 0, 1, 1, 0], bool)
    # bins (14/15, 1]: acc 0.5 conf 0.95; (9/15, 10/15]: acc 1 conf 0.65; (4/15, 5/15]: acc 0 conf 0.3
    assert expected_calibration_error(conf, correct) == pytest.approx(2 / 5 * 0.45 + 2 / 5 * 0.35 + 1 / 5 * 0.3)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == 0.0


def test_calibration_bins_are_lo_exclusive_hi_inclusive():
    bins = calibration_bins(np.array([0.0, 0.2, 0.2000001, 1.0]), np.array([1, 0, 1, 1], bool), n_bins=15)
    assert len(bins) == 15
    assert bins[0]["count"] == 1  # 0 goes into the first bin
    assert bins[2]["count"] == 1 and bins[2]["hi"] == pytest.approx(0.2)  # 0.2 = 3/15 closes bin 2
    assert bins[3]["count"] == 1
    assert bins[14]["count"] == 1 and bins[14]["accuracy"] == 1.0
    assert bins[5]["accuracy"] is None and bins[5]["count"] == 0


def test_mcnemar_exact_on_known_table():
    t = mcnemar_test(10, 2)
    assert t["method"] == "exact binomial"
    assert t["p_value"] == pytest.approx(0.0386, abs=1e-4)
    assert t["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2**12)  # 2 * P[X <= 2], X ~ Bin(12, 1/2)
    assert mcnemar_test(2, 10)["p_value"] == t["p_value"]  # two-sided: symmetric
    assert mcnemar_test(5, 5)["p_value"] == 1.0
    assert mcnemar_test(0, 0)["p_value"] == 1.0


def test_mcnemar_chi_square_for_many_discordant_pairs():
    t = mcnemar_test(30, 10)
    assert t["method"].startswith("chi-square")
    assert t["statistic"] == pytest.approx((20 - 1) ** 2 / 40)  # 9.025
    assert t["p_value"] == pytest.approx(0.0026631, abs=1e-6)  # chi2.sf(9.025, df=1)


def test_compare_models_counts_discordant_pairs():
    y = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    a = np.array([0, 1, 2, 3, 0, 0, 0, 1])  # right on 0..3
    b = np.array([0, 1, 0, 0, 4, 5, 0, 1])  # right on 0, 1, 4, 5
    ma, mb = classification_metrics(y, np.eye(7)[a]), classification_metrics(y, np.eye(7)[b])
    c = compare_models(y, a, b, ma, mb)
    assert (c["mcnemar"]["b"], c["mcnemar"]["c"]) == (2, 2)
    assert (c["both_right"], c["both_wrong"]) == (2, 2)
    assert c["difference"]["accuracy"] == pytest.approx(0.0)
    assert c["recall_difference"]["surprise"] == 0.0 and c["recall_difference"]["sad"] == 1.0
    assert not c["significant"]


# ----------------------------------------------------------------------------------------------------
# end to end on a synthetic Kaggle-layout folder


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EMOLENS_CACHE", str(tmp_path_factory.getbasetemp() / "emolens-cache"))


@pytest.fixture(scope="module")
def fer_folder(tmp_path_factory) -> Path:
    """train/<class>/Training_*.png (1 each) and test/<class>/PublicTest_*.png (3 each): 21 public faces."""
    import cv2

    root = tmp_path_factory.mktemp("fer")
    rng = np.random.default_rng(0)
    for split, prefix, n in (("train", "Training", 1), ("test", "PublicTest", 3)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                cv2.imwrite(str(root / split / c / f"{prefix}_{c}{i}.png"),
                            rng.integers(0, 256, (48, 48), dtype=np.uint8))
    return root


def _tiny_checkpoint(path: Path, seed: int) -> Path:
    import torch

    from emolens.checkpoint import make_checkpoint, save_checkpoint
    from emolens.models import create_model

    torch.manual_seed(seed)
    model = create_model("cnn_lstm", widths=(8, 16), convs_per_block=1, lstm_hidden=8)
    history = [{"epoch": e, "train_loss": 2.0 - e / 10, "train_acc": 0.2 + e / 50, "val_loss": 1.9,
                "val_acc": 0.2 + e / 60, "val_acc_flip": 0.21 + e / 60} for e in (1, 2, 3)]
    save_checkpoint(make_checkpoint(model, config={"epochs": 3, "seed": seed}, metrics={"public_acc": 0.25},
                                    history=history), path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return _tiny_checkpoint(root / "a.pt", 0), _tiny_checkpoint(root / "b.pt", 1)


@pytest.fixture(scope="module")
def onnx_model(models, tmp_path_factory) -> Path:
    """a.onnx exported from a copy of models[0] beside it (its .pt twin), as `emolens export` leaves them."""
    import shutil

    export = pytest.importorskip("emolens.export")
    folder = tmp_path_factory.mktemp("onnx")
    shutil.copy(models[0], folder / "a.pt")
    export.export_onnx(folder / "a.pt", folder / "a.onnx")
    return folder / "a.onnx"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_api_matches_direct_prediction_and_writes_reports(fer_folder, models, tmp_path):
    from emolens.data import load_dataset
    from emolens.runtime import load_classifier

    out = tmp_path / "run"
    m = evaluate(fer_folder, "public", models[0], tta="flip", out=out, batch_size=5)
    faces = load_dataset(fer_folder).split("public")
    proba = load_classifier(models[0]).predict_proba(faces.images, tta="flip")
    assert m["count"] == len(faces) == 21
    assert m["accuracy"] == pytest.approx(float((proba.argmax(1) == faces.labels).mean()))
    assert m["data"] == {"path": str(fer_folder), "split": "public", "count": 21,
                         "class_counts": dict.fromkeys(CLASSES, 3), "skipped": 0}
    assert m["tta"] == "flip" and m["runtime"] == "torch" and m["device"] == "cpu"
    from emolens.checkpoint import file_sha256

    assert m["model"]["sha256"] == file_sha256(models[0])
    assert m["model"]["config"] == {"epochs": 3, "seed": 0} and m["model"]["name"] == "cnn_lstm"
    assert m["out"] == str(out)
    for name in ("metrics.json", "report.html", "report.xlsx", "predictions.csv", "confusion_matrix.png",
                 "confusion_matrix_normalized.png", "per_class.png", "reliability.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 0, name
    if m["accuracy"] < 1:
        assert (out / "mistakes.png").is_file() and m["confident_mistakes"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == m["accuracy"] and saved["confusion_matrix"] == m["confusion_matrix"]
    assert sorted(saved["files"]) == sorted(p.name for p in out.iterdir())
    rows = _read_csv(out / "predictions.csv")
    assert len(rows) == 21 and sum(r["pred"] == r["true"] for r in rows) == round(21 * m["accuracy"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    # the typed result: attributes, one ModelEvaluation, and to_dict() is exactly what metrics.json holds
    from emolens.results import Evaluation, ModelEvaluation

    assert isinstance(m, Evaluation) and len(m.models) == 1 and isinstance(m.first, ModelEvaluation)
    assert m.accuracy == m.first.accuracy == m["accuracy"] and m.out == str(out) and m.comparisons == []
    assert m.first.figures and set(m.first.figures) <= set(saved["files"])
    assert {k: v for k, v in m.to_dict().items() if k != "out"} == saved


def test_evaluate_without_saving_writes_nothing(fer_folder, models, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = evaluate(fer_folder, "all", models[0], tta="none", save=False)
    assert m["count"] == 28 and "out" not in m
    assert list(tmp_path.iterdir()) == []


def test_default_out_folder_is_never_reused(fer_folder, models, tmp_path, monkeypatch):
    from emolens.evaluate import _prepare_out

    monkeypatch.chdir(tmp_path)
    first = Path(evaluate(fer_folder, "public", models[0], tta="none")["out"])
    assert first.parent == Path("runs/evaluate") and (first / "report.html").is_file()
    taken = _prepare_out(None)
    taken.mkdir(parents=True)
    (taken / "metrics.json").write_text("{}")
    nxt = _prepare_out(None)  # same second -> "<time>-2", later -> a new time; never a folder with files
    assert nxt not in (first, taken) and not nxt.exists()


def test_cli_end_to_end(fer_folder, models, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["evaluate", "--data", str(fer_folder), "--split", "public", "--model", str(models[0]),
               "--tta", "none", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "macro avg" in text and "weighted avg" in text and "surprise" in text and "report:" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["tta"] == "none" and m["data"]["count"] == 21
    assert f"{100 * m['accuracy']:.1f}" in text


def test_cli_class_folder_needs_no_split_all(models, tmp_path, capsys):
    """A plain <class>/ folder names no split: the default split (auto) evaluates all of it and says so."""
    import cv2

    rng = np.random.default_rng(3)
    for c in CLASSES:
        (tmp_path / "faces" / c).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(tmp_path / "faces" / c / f"{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
    out = tmp_path / "cls"
    rc = main(["evaluate", "--data", str(tmp_path / "faces"), "--model", str(models[0]), "--tta", "none",
               "--out", str(out)])
    text = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert rc == 0, text
    assert "has no public split" in text and "evaluating all of them" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["count"] == 14 and m["data"]["split"] == "all"


def test_cli_compares_two_models_with_mcnemar(fer_folder, models, tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["evaluate", "--data", str(fer_folder), "--model", str(models[0]), "--model", str(models[1]),
               "--tta", "none", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "A vs B" in text and "McNemar" in text and "recall angry" in text
    m = json.loads((out / "metrics.json").read_text())
    a, b = m["models"]
    comp = m["comparisons"][0]
    assert (a["label"], b["label"], comp["a"], comp["b"]) == ("A", "B", "A", "B")
    assert comp["difference"]["accuracy"] == pytest.approx(b["accuracy"] - a["accuracy"])
    rows = _read_csv(out / "predictions.csv")
    only_a = sum(r["A_pred"] == r["true"] != r["B_pred"] for r in rows)
    only_b = sum(r["B_pred"] == r["true"] != r["A_pred"] for r in rows)
    assert (comp["mcnemar"]["b"], comp["mcnemar"]["c"]) == (only_a, only_b)
    assert comp["mcnemar"]["p_value"] == pytest.approx(mcnemar_test(only_a, only_b)["p_value"])
    for f in ("A_confusion_matrix.png", "B_confusion_matrix.png", "report.html", "report.xlsx"):
        assert (out / f).is_file()
    assert "McNemar" in (out / "report.html").read_text()


def test_onnx_model_evaluates_like_its_checkpoint(fer_folder, models, onnx_model, tmp_path):
    via_onnx = evaluate(fer_folder, "public", onnx_model, tta="flip", out=tmp_path / "onnx")
    via_torch = evaluate(fer_folder, "public", models[0], tta="flip", save=False)
    assert via_onnx["runtime"] == "onnx"
    assert via_onnx["confusion_matrix"] == via_torch["confusion_matrix"]
    assert via_onnx["nll"] == pytest.approx(via_torch["nll"], abs=1e-4)
    ident = via_onnx["model"]
    assert ident["metadata"]["format"] == "emolens-onnx" and ident["twin"]["match"] is True
    # config and training log come from the .pt it was exported from
    assert ident["config"] == {"epochs": 3, "seed": 0} and ident["epochs_logged"] == 3
    assert (tmp_path / "onnx" / "learning_curves.png").is_file()


def test_onnx_whose_twin_checkpoint_changed_is_flagged(fer_folder, models, onnx_model, tmp_path):
    import shutil

    shutil.copy(onnx_model, tmp_path / "a.onnx")
    shutil.copy(models[1], tmp_path / "a.pt")  # the .pt was retrained after the export
    said = []
    m = evaluate(fer_folder, "public", tmp_path / "a.onnx", tta="none", save=False, log=said.append)
    assert m["model"]["twin"]["match"] is False and m["model"]["config"] == {}
    assert any("was not exported from the a.pt" in line for line in said)


def test_shipped_model_pair_must_agree(fer_folder, models, onnx_model, tmp_path, monkeypatch, capsys):
    import shutil

    import emolens.runtime

    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(onnx_model, weights / "emolens_cnn_lstm.onnx")
    shutil.copy(onnx_model.with_suffix(".pt"), weights / "emolens_cnn_lstm.pt")
    monkeypatch.setattr(emolens.runtime, "default_model_path", lambda kind="onnx": weights / f"emolens_cnn_lstm.{kind}")
    assert main(["evaluate", "--data", str(fer_folder), "--tta", "none", "--out", str(tmp_path / "ok")]) == 0
    assert json.loads((tmp_path / "ok" / "metrics.json").read_text())["model"]["file"] == "emolens_cnn_lstm.onnx"
    shutil.copy(models[1], weights / "emolens_cnn_lstm.pt")  # one of the shipped files replaced
    capsys.readouterr()
    for extra in ([], ["--runtime", "torch"]):
        err = _run_cli_error(["--data", str(fer_folder), *extra], capsys)
        assert "the shipped model files disagree" in err


# ----------------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit code 2, nothing written


def _run_cli_error(argv: list[str], capsys) -> str:
    rc = main(["evaluate", *argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_unknown_split(fer_folder, models, capsys):
    err = _run_cli_error(["--data", str(fer_folder), "--model", str(models[0]), "--split", "holdout"], capsys)
    assert "unknown split 'holdout'" in err


def test_split_without_labelled_images_names_the_splits_present(fer_folder, models, capsys):
    err = _run_cli_error(["--data", str(fer_folder), "--model", str(models[0]), "--split", "private"], capsys)
    assert "no labelled images in split 'private'" in err and "train (7 images), public (21 images)" in err


@pytest.mark.parametrize("name", ["junk.onnx", "junk.pt", "junk.bin"])
def test_file_that_is_not_a_model(fer_folder, tmp_path, capsys, name):
    (tmp_path / name).write_bytes(b"this is not a model\n" * 10)
    err = _run_cli_error(["--data", str(fer_folder), "--model", str(tmp_path / name), "--out",
                          str(tmp_path / "o")], capsys)
    assert name in err and ("not a usable" in err or "not an emolens" in err)
    assert not (tmp_path / "o").exists()


def test_onnx_graph_that_is_not_a_face_classifier(fer_folder, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 48, 48])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2304])])
    path = tmp_path / "flatten.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    err = _run_cli_error(["--data", str(fer_folder), "--model", str(path)], capsys)
    assert "flatten.onnx: not an emolens face classifier" in err


def test_sha256_mismatch_given_on_the_command_line(fer_folder, models, capsys):
    err = _run_cli_error(["--data", str(fer_folder), "--model", str(models[0]), "--sha256", "ab" * 32], capsys)
    assert "sha256 mismatch" in err and "--sha256 says " + "ab" * 32 in err


def test_right_sha256_is_accepted(fer_folder, models, tmp_path):
    from emolens.checkpoint import file_sha256

    m = evaluate(fer_folder, "public", models[0], tta="none", sha256=file_sha256(models[0]).upper(), save=False)
    assert m["model"]["sha256"] == file_sha256(models[0])


def test_tampered_model_against_its_recorded_hash(fer_folder, models, tmp_path, capsys):
    from emolens.checkpoint import file_sha256

    model = tmp_path / "shipped.pt"
    data = bytearray(models[0].read_bytes())
    model.write_bytes(bytes(data))
    (tmp_path / "shipped.pt.sha256").write_text(f"{file_sha256(model)}  shipped.pt\n")
    assert evaluate(fer_folder, "public", model, tta="none", save=False)["count"] == 21
    data[len(data) // 2] ^= 0xFF  # one flipped byte somewhere in the weights
    model.write_bytes(bytes(data))
    err = _run_cli_error(["--data", str(fer_folder), "--model", str(model)], capsys)
    assert "sha256 mismatch" in err and "shipped.pt.sha256 says" in err


@pytest.mark.parametrize("argv, message", [
    (["--sha256", "xyz"], "not a sha256"),
    (["--out", ""], "--out is empty"),
    (["--data", ""], "--data is empty"),
    (["--model", ""], "--model is empty"),
    (["--batch-size", "0"], "batch size"),
])
def test_bad_arguments(fer_folder, models, capsys, argv, message):
    base = {"--data": str(fer_folder), "--model": str(models[0])}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    err = _run_cli_error([x for kv in base.items() for x in kv], capsys)
    assert message in err


def test_one_sha256_per_model(fer_folder, models, capsys):
    err = _run_cli_error(["--data", str(fer_folder), "--model", str(models[0]), "--model", str(models[1]),
                          "--sha256", "ab" * 32], capsys)
    assert "one --sha256 per --model" in err


def test_existing_output_folder_is_never_overwritten(fer_folder, models, tmp_path, capsys):
    out = tmp_path / "previous"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    err = _run_cli_error(["--data", str(fer_folder), "--model", str(models[0]), "--out", str(out)], capsys)
    assert "not empty" in err
    assert (out / "metrics.json").read_text() == "{}" and len(list(out.iterdir())) == 1
    (tmp_path / "file").write_text("x")
    assert "not a folder" in _run_cli_error(["--data", str(fer_folder), "--model", str(models[0]), "--out",
                                             str(tmp_path / "file")], capsys)


def test_empty_existing_output_folder_is_used(fer_folder, models, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert evaluate(fer_folder, "public", models[0], tta="none", out=out)["out"] == str(out)
    assert (out / "report.html").is_file()


def test_api_errors_are_evaluate_errors(fer_folder, models):
    with pytest.raises(EvaluateError, match="unknown TTA"):
        evaluate(fer_folder, model=models[0], tta="mirror", save=False)
    with pytest.raises(EvaluateError, match="unknown runtime"):
        evaluate(fer_folder, model=models[0], runtime="tensorrt", save=False)


def test_chunked_prediction_with_progress_gives_the_same_numbers(models):
    from emolens.evaluate import _predict
    from emolens.runtime import load_classifier

    clf = load_classifier(models[0])
    faces = np.random.default_rng(1).integers(0, 256, (1100, 48, 48), dtype=np.uint8)
    np.testing.assert_allclose(_predict(clf, faces, "flip", 256, progress=True),
                               clf.predict_proba(faces, tta="flip"), atol=1e-6)


@pytest.mark.slow
def test_shipped_model_on_real_publictest_matches_its_training_log(fer_zip_path, tmp_path):
    """The shipped model's PublicTest accuracy recomputed here equals the one recorded with it: the training
    loop's (flip TTA; the shipped weights are fp16-rounded, so allow 2 images of 3,589), or for an int8 file
    the export gate's (no TTA, the same file)."""
    from emolens.runtime import default_model_path, is_quantized

    if not default_model_path("onnx").is_file():
        pytest.skip("the shipped model is not installed")
    int8 = is_quantized(default_model_path("onnx"))
    m = evaluate(fer_zip_path, "public", None, tta="none" if int8 else "flip", out=tmp_path / "real")
    assert m["count"] == 3589 and m["runtime"] == "onnx"
    recorded = m["model"]["metrics"]["public_acc_int8" if int8 else "public_acc_flip"]
    assert abs(m["accuracy"] - recorded) * 3589 <= 2
    assert m["top2_accuracy"] > m["accuracy"] > m["balanced_accuracy"] > 1 / 7
    assert (tmp_path / "real" / "report.html").stat().st_size < 3_000_000
