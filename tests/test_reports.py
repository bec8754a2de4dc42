"""emolens.reports, evaluation part: the plots are real PNGs, report.html is one self-contained file with no
external reference, report.xlsx opens with openpyxl and holds the numbers."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from emolens import reports
from emolens.evaluate import classification_metrics, compare_models
from emolens.preprocess import CLASSES

PNG = b"\x89PNG\r\n\x1a\n"
Y_TRUE = np.array([0, 0, 0, 1, 1, 3, 3, 3, 6, 6])
PRED_A = np.array([0, 0, 2, 1, 3, 3, 3, 0, 6, 5])
PRED_B = np.array([0, 0, 0, 1, 1, 3, 3, 3, 6, 6])


def _model_result(pred: np.ndarray, label: str, name: str = "cnn_lstm") -> dict:
    proba = np.full((len(pred), 7), 0.05)
    proba[np.arange(len(pred)), pred] = 0.7
    m = classification_metrics(Y_TRUE, proba)
    m.update({"label": label, "runtime": "onnx", "device": "cpu", "tta": "flip", "created": "2025-01-01T00:00:00",
              "emolens_version": "0.1.0", "images_per_second": 100.0, "seconds": {"predict": 0.1, "total": 0.5},
              "data": {"path": "data/fer", "split": "public", "count": len(pred)},
              "model": {"name": name, "file": f"{label}.onnx", "sha256": "0" * 64, "runtime": "onnx",
                        "config": {"epochs": 3}, "metrics": {"public_acc": 0.5}}})
    return m


def _figures(m: dict, folder: Path, prefix: str = "") -> list[tuple[str, str]]:
    cm = np.asarray(m["confusion_matrix"])
    reports.plot_confusion_matrix(cm, CLASSES, folder / f"{prefix}cm.png")
    reports.plot_confusion_matrix(cm, CLASSES, folder / f"{prefix}cm_norm.png", normalize=True)
    reports.plot_per_class_metrics(m["per_class"], folder / f"{prefix}per_class.png")
    reports.plot_reliability_diagram(m["reliability"], m["ece"], folder / f"{prefix}reliability.png")
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    reports.plot_confident_mistakes(faces, ["angry", "angry", "happy"], ["fear", "happy", "angry"], [0.9, 0.8, 0.7],
                                    folder / f"{prefix}mistakes.png")
    return [(f"figure {n}", f"{prefix}{n}.png") for n in ("cm", "cm_norm", "per_class", "reliability", "mistakes")]


def assert_self_contained(html: str) -> None:
    """No network or file reference anywhere: only data: URIs and in-page anchors."""
    body = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:", html)
    for bad in ("http://", "https://", "//", "<link", "<script", "url(", "@import", "<iframe", "<object"):
        assert bad not in body.lower(), bad
    refs = re.findall(r"""\b(?:src|href|srcset|action)\s*=\s*["']?([^"'\s>]*)""", body, flags=re.I)
    assert refs, "expected the embedded images"
    assert all(r.startswith(("data:", "#")) for r in refs), refs


def test_plots_are_pngs(tmp_path):
    figs = _figures(_model_result(PRED_A, "A"), tmp_path)
    for _, name in figs:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 2000, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files


def test_learning_curves_only_when_the_model_carries_a_log(tmp_path):
    log = [{"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": 0.4, "val_acc_flip": 0.41}
           for e in (1, 2)]
    assert reports.plot_learning_curves_if_logged(log, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG)
    assert not reports.plot_learning_curves_if_logged([], tmp_path / "none.png")
    assert not reports.plot_learning_curves_if_logged([{"epoch": 1, "lr": 0.1}], tmp_path / "partial.png")
    assert not (tmp_path / "none.png").exists() and not (tmp_path / "partial.png").exists()


def test_html_report_is_self_contained(tmp_path):
    m = _model_result(PRED_A, "A", name="<script>alert(1)</script>")
    figs = _figures(m, tmp_path)
    reports.write_evaluation_html([m], [], [figs], tmp_path, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    assert "&lt;script&gt;" in html  # names are escaped, never markup
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(figs)
    for data, (_, name) in zip(images, figs, strict=True):
        assert base64.b64decode(data) == (tmp_path / name).read_bytes()
    assert "<td>disgust</td><td>100.0%</td><td>50.0%</td><td>66.7%</td><td>2</td><td>1</td>" in html
    assert f"{100 * m['accuracy']:.1f}%" in html and "0" * 64 in html


def test_html_report_with_comparison(tmp_path):
    a, b = _model_result(PRED_A, "A"), _model_result(PRED_B, "B")
    comp = {"a": "A", "b": "B", **compare_models(Y_TRUE, PRED_A, PRED_B, a, b)}
    figs = [_figures(a, tmp_path, "A_"), _figures(b, tmp_path, "B_")]
    reports.write_evaluation_html([a, b], [comp], figs, tmp_path, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    assert "Comparison: A vs B" in html and "McNemar" in html
    assert f"p = {comp['mcnemar']['p_value']:.4g}" in html
    assert html.count("<figure") == 10 and html.count("<figure class=\"wide\">") == 2  # the two bar charts


def test_xlsx_report_opens_and_holds_the_numbers(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    m = _model_result(PRED_A, "A")
    reports.write_evaluation_xlsx([m], [], tmp_path / "report.xlsx")
    wb = openpyxl.load_workbook(tmp_path / "report.xlsx")
    assert wb.sheetnames == ["Summary", "Per class", "Confusion matrix", "Confusion row fraction"]
    pc = wb["Per class"]
    assert [c.value for c in pc[1]] == ["class", "precision", "recall", "f1", "support", "predicted"]
    assert [c.value for c in pc[3]] == ["disgust", 1.0, 0.5, pytest.approx(2 / 3), 2, 1]
    assert [c.value for c in pc[10]][:5] == ["accuracy", None, None, pytest.approx(0.6), 10]
    cm = wb["Confusion matrix"]
    assert cm["A1"].value == "true \\ predicted" and [c.value for c in cm[1]][1:] == list(CLASSES)
    for i, row in enumerate(m["confusion_matrix"]):
        assert [c.value for c in cm[i + 2]] == [CLASSES[i], *row]
    assert wb["Confusion row fraction"]["D2"].value == pytest.approx(1 / 3)  # angry -> fear, 1 of 3
    summary = {r[0].value: r[1].value for r in wb["Summary"].iter_rows(min_row=2)}
    assert summary["accuracy"] == pytest.approx(m["accuracy"]) and summary["images"] == 10


def test_xlsx_report_with_two_models(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    a, b = _model_result(PRED_A, "A"), _model_result(PRED_B, "B")
    comp = {"a": "A", "b": "B", **compare_models(Y_TRUE, PRED_A, PRED_B, a, b)}
    reports.write_evaluation_xlsx([a, b], [comp], tmp_path / "report.xlsx")
    wb = openpyxl.load_workbook(tmp_path / "report.xlsx")
    expected = {"Per class A", "Per class B", "Confusion matrix A", "Confusion matrix B", "Comparison"}
    assert expected <= set(wb.sheetnames)
    rows = [[c.value for c in r] for r in wb["Comparison"].iter_rows(min_row=2)]
    acc = next(r for r in rows if r[1] == "accuracy")
    assert acc[2:] == [pytest.approx(a["accuracy"]), pytest.approx(b["accuracy"]), pytest.approx(0.4)]
    mc = next(r for r in rows if r[1].startswith("McNemar"))
    assert mc[2:4] == [0, 4] and mc[4] == pytest.approx(0.125)  # only B right on 4 -> exact p = 2 / 2**4
