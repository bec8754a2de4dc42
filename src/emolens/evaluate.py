"""Evaluation: ``evaluate(data, split, model)`` scores a model on labelled FER data and writes a report.

The metrics are computed here with numpy (they are a few lines each; scikit-learn is not a runtime
dependency). Conventions, the same as scikit-learn's defaults so numbers can be compared:

* per-class precision, recall and F1 are 0 where undefined (a class never predicted, or with no support);
* macro averages run over the classes that occur in the labels or the predictions; a class absent from
  both (e.g. disgust in a small sample) is left out instead of counting as a 0;
* balanced accuracy is the mean recall over the classes with support;
* weighted averages weigh each class by its support;
* expected calibration error (ECE) bins the top-class confidence into 15 equal-width bins (lo, hi].

Two or more models on the same images are compared with McNemar's paired test on the images where
exactly one of them is right, so a user can tell a real improvement from noise.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .preprocess import CLASSES
from .results import Evaluation, ModelEvaluation
from .runtime import DEFAULT_TTA, TORCH_HINT, TTA_CHOICES

TTA_MODES = TTA_CHOICES  # the runtime's, defined once
ECE_BINS = 15
#: Below this many discordant pairs McNemar's test uses the exact binomial; above, chi-square with
#: continuity correction (the approximation is good from about 25 on).
MCNEMAR_EXACT_BELOW = 25
MISTAKES_PER_CLASS = 8


class EvaluateError(ValueError):
    """A problem with the evaluation's inputs or output folder; one line, fixable by the user."""


# ----------------------------------------------------------------------------------------------------
# metrics (numpy only)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = len(CLASSES)) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; rows are the true class, columns the predicted class."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Equal-width confidence bins (lo, hi] (the first also holds 0): count, accuracy and mean confidence
    per bin; empty bins have accuracy/confidence None. Feeds the ECE and the reliability diagram."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.digitize(confidence, edges[1:-1], right=True)  # edges[i] < c <= edges[i+1] -> i
    bins = []
    for i in range(n_bins):
        m = idx == i
        n = int(m.sum())
        bins.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": n,
                     "accuracy": float(correct[m].mean()) if n else None,
                     "confidence": float(confidence[m].mean()) if n else None})
    return bins


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """sum over bins of (bin size / N) * |accuracy - mean confidence|; 0 for a perfectly calibrated model."""
    total = len(confidence)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in calibration_bins(confidence, correct, n_bins) if b["count"]))


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str] = CLASSES,
                           n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Labels (N,) int and probabilities (N, C) -> accuracy, balanced accuracy, macro/weighted P/R/F1,
    per-class P/R/F1/support, top-2 accuracy, ECE, NLL and the confusion matrix (see module docstring)."""
    y_true = np.asarray(y_true, np.int64)
    proba = np.asarray(proba, np.float64)
    n_cls = len(classes)
    if proba.ndim != 2 or proba.shape != (len(y_true), n_cls):
        raise ValueError(f"expected probabilities of shape ({len(y_true)}, {n_cls}), got {proba.shape}")
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate")
    y_pred = proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_cls)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(n_cls), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(n_cls), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n_cls), where=denom > 0)
    seen = (support > 0) | (predicted > 0)  # classes that take part in macro averages
    has_support = support > 0
    weights = support / support.sum()
    top2 = np.argsort(-proba, axis=1, kind="stable")[:, :2]
    confidence = proba.max(axis=1)
    correct = y_pred == y_true
    p_true = proba[np.arange(len(y_true)), y_true]
    return {
        "count": int(len(y_true)),
        "accuracy": float(correct.mean()),
        "balanced_accuracy": float(recall[has_support].mean()),
        "macro_precision": float(precision[seen].mean()),
        "macro_recall": float(recall[seen].mean()),
        "macro_f1": float(f1[seen].mean()),
        "weighted_precision": float((precision * weights).sum()),
        "weighted_recall": float((recall * weights).sum()),
        "weighted_f1": float((f1 * weights).sum()),
        "top2_accuracy": float((top2 == y_true[:, None]).any(axis=1).mean()),
        "ece": expected_calibration_error(confidence, correct, n_bins),
        "ece_bins": n_bins,
        "nll": float(-np.log(np.clip(p_true, 1e-12, 1.0)).mean()),
        "mean_confidence": float(confidence.mean()),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i]), "predicted": int(predicted[i])}
                      for i, c in enumerate(classes)},
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
        "reliability": calibration_bins(confidence, correct, n_bins),
    }


def mcnemar_test(b: int, c: int) -> dict[str, Any]:
    """McNemar's paired test from the discordant counts: ``b`` = images only model A gets right, ``c`` =
    images only model B gets right. Exact two-sided binomial (p = 2 * P[X <= min(b, c)], X ~ Bin(b+c, 1/2))
    when b + c < 25, else chi-square with continuity correction, 1 degree of freedom.
    Example: ``mcnemar_test(10, 2)["p_value"]`` -> 0.0386."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "n": 0, "method": "exact binomial", "statistic": None, "p_value": 1.0}
    if n < MCNEMAR_EXACT_BELOW:
        tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
        return {"b": b, "c": c, "n": n, "method": "exact binomial", "statistic": min(b, c),
                "p_value": min(1.0, 2 * tail / 2**n)}
    stat = (abs(b - c) - 1) ** 2 / n
    # chi-square survival function with 1 degree of freedom: P[Z^2 > s] = erfc(sqrt(s / 2))
    return {"b": b, "c": c, "n": n, "method": "chi-square, continuity corrected", "statistic": float(stat),
            "p_value": float(math.erfc(math.sqrt(stat / 2)))}


def compare_models(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray, metrics_a: Mapping[str, Any],
                   metrics_b: Mapping[str, Any], alpha: float = 0.05) -> dict[str, Any]:
    """Differences B - A (accuracy, balanced accuracy, macro F1, per-class recall) and McNemar's test on
    the paired predictions (N,) of the same images."""
    y_true = np.asarray(y_true)
    right_a, right_b = np.asarray(pred_a) == y_true, np.asarray(pred_b) == y_true
    test = mcnemar_test(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "top2_accuracy", "ece")
    return {
        "difference": {k: metrics_b[k] - metrics_a[k] for k in keys},
        "recall_difference": {c: metrics_b["per_class"][c]["recall"] - metrics_a["per_class"][c]["recall"]
                              for c in metrics_a["per_class"]},
        "both_right": int((right_a & right_b).sum()), "both_wrong": int((~right_a & ~right_b).sum()),
        "mcnemar": test, "alpha": alpha, "significant": bool(test["p_value"] < alpha),
    }


# ----------------------------------------------------------------------------------------------------
# inputs


def _check_sha256(text: str) -> str:
    text = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise EvaluateError(f"--sha256 {text!r} is not a sha256 (64 hexadecimal digits)")
    return text


def recorded_sha256(path: Path) -> tuple[str, str] | None:
    """(hash, where) recorded for a model file: a ``<file>.sha256`` next to it (sha256sum format, as the
    dataset's ``fer2013.zip.sha256``), else None."""
    side = path.with_name(path.name + ".sha256")
    if side.is_file():
        first = side.read_text(encoding="utf-8", errors="replace").split()
        if first and re.fullmatch(r"[0-9a-fA-F]{64}", first[0]):
            return first[0].lower(), str(side)
        raise EvaluateError(f"{side}: not a sha256 file (expected '<64 hex digits>  <file name>')")
    return None


def _resolve_device(runtime: str, device: str) -> str:
    if runtime != "torch":
        if device not in ("auto", "cpu"):
            raise EvaluateError(f"device {device!r} needs the torch runtime (--runtime torch and a .pt model); "
                                "the ONNX runtime here runs on the CPU")
        return "cpu"
    from .runtime import ModelError, resolve_device

    try:
        import torch  # noqa: F401
    except ImportError:
        raise EvaluateError(f"the torch runtime needs {TORCH_HINT}") from None
    try:
        return resolve_device(device)
    except ModelError as e:
        raise EvaluateError(str(e)) from None


def load_checked_classifier(model: Any = None, runtime: str = "auto", device: str = "auto",
                            sha256: str | None = None):
    """Load a classifier via :func:`emolens.runtime.load_classifier` after checking the file's sha256 against
    ``sha256`` (and against a recorded ``<file>.sha256``), then make sure it is a 7-class face classifier
    that outputs ``CLASSES``. Raises ModelError/EvaluateError with a one-line reason."""
    from .checkpoint import CheckpointError, file_sha256
    from .runtime import Classifier, ModelError, default_model_path, load_classifier

    if isinstance(model, Classifier):
        clf = model
    else:
        if runtime not in ("auto", "onnx", "torch"):
            raise EvaluateError(f"unknown runtime {runtime!r}: use auto, onnx or torch")
        if model is not None and not str(model).strip():
            raise EvaluateError("--model is empty: give a .onnx or .pt file, or leave it out for the shipped model")
        path = Path(model) if model is not None else default_model_path("pt" if runtime == "torch" else "onnx")
        if not path.is_file():
            hint = " (the shipped model is not installed)" if model is None else ""
            raise ModelError(f"{path}: no such model file{hint}")
        actual = file_sha256(path)
        for expected, where in ([(_check_sha256(sha256), "--sha256")] if sha256 else []) + \
                [r for r in [recorded_sha256(path)] if r]:
            if actual != expected:
                raise ModelError(f"{path}: sha256 mismatch: {where} says {expected}, the file has {actual} "
                                 "(changed, damaged or not the model you meant)")
        if model is None:
            _check_shipped_pair(path)
        kind = "torch" if runtime == "torch" or (runtime == "auto" and path.suffix == ".pt") else "onnx"
        dev = _resolve_device(kind, device)
        try:
            clf = load_classifier(path, runtime=runtime, device=dev)
        except (ModelError, CheckpointError):
            raise
        except Exception as e:  # torch.load raises assorted types (KeyError, ...) on files that are not models
            raise ModelError(f"{path}: not a usable model ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
                             if str(e) else f"{path}: not a usable model ({type(e).__name__})") from None
    try:
        probe = clf.predict_proba(np.zeros((2, clf.input_size, clf.input_size), np.uint8))
    except ModelError:
        raise
    except Exception as e:  # a valid ONNX graph that is not an image classifier fails here, not mid-run
        raise ModelError(f"{clf.path}: not an emolens face classifier ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if probe.shape != (2, len(clf.classes)) or sorted(clf.classes) != sorted(CLASSES):
        raise ModelError(f"{clf.path}: outputs {probe.shape[1]} scores for classes {list(clf.classes)}; "
                         f"expected the 7 classes {', '.join(CLASSES)}")
    return clf


def _check_shipped_pair(path: Path) -> None:
    """The shipped .onnx must have been exported from the shipped .pt (ONNX metadata ``source_sha256``):
    either file replaced or damaged breaks that link."""
    twin = twin_check(path)
    if twin and not twin["match"]:
        from .runtime import ModelError

        raise ModelError(f"{path}: the shipped model files disagree: {twin['onnx']} records source sha256 "
                         f"{twin['source_sha256']}, {twin['pt']} does not match it (changed or damaged; "
                         "reinstall emolens)")


def _onnx_metadata(path: Path, session=None) -> dict[str, Any]:
    """The ``emolens.*`` metadata of an ONNX file (JSON-decoded, prefix dropped); {} when unreadable."""
    from .runtime import ModelError, read_onnx_metadata

    try:
        return read_onnx_metadata(session if session is not None else path)
    except ModelError:  # not readable as ONNX: no metadata to check against
        return {}


def twin_check(path: Path, session=None) -> dict[str, Any] | None:
    """A model's ``.onnx``/``.pt`` twin beside it (as ``emolens export``/the shipped weights make them) and
    whether the ONNX file's recorded ``source_sha256`` is the ``.pt`` file's hash; None without a twin."""
    from .checkpoint import file_sha256

    path = Path(path)
    onnx_path, pt_path = (path, path.with_suffix(".pt")) if path.suffix == ".onnx" else \
        (path.with_suffix(".onnx"), path)
    if not (onnx_path.is_file() and pt_path.is_file()):
        return None
    source = _onnx_metadata(onnx_path, session if path == onnx_path else None).get("source_sha256")
    if not source:
        return None
    return {"onnx": onnx_path.name, "pt": pt_path.name, "source_sha256": source,
            "match": file_sha256(pt_path) == source}


def _twin_checkpoint(clf, twin: dict[str, Any] | None) -> dict[str, Any]:
    """The checkpoint behind an ONNX model (config, history) when its ``.pt`` twin is the very file it was
    exported from; {} otherwise or without torch."""
    if getattr(clf, "checkpoint", None) is not None or not twin or not twin["match"]:
        return {}
    try:
        from .checkpoint import read_checkpoint

        ckpt = read_checkpoint(Path(clf.path).with_suffix(".pt"))
    except Exception:  # no torch, or an unreadable twin: the ONNX metadata alone describes the model
        return {}
    ckpt.pop("state_dict", None)
    return ckpt


def _model_identity(clf, twin: dict[str, Any] | None) -> dict[str, Any]:
    ident = clf.info()
    ident["file"] = Path(clf.path).name
    session = getattr(clf, "session", None)
    if session is not None:  # ONNX: everything emolens.export recorded, under its own key so nothing is shadowed
        ident["metadata"] = {k: v for k, v in _onnx_metadata(clf.path, session).items()
                             if k not in ("classes", "metrics")}
    ckpt = getattr(clf, "checkpoint", None) or _twin_checkpoint(clf, twin)
    meta_model = (ident.get("metadata") or {}).get("model") or {}
    ident["kwargs"] = ckpt.get("model", meta_model).get("kwargs", {})
    ident["config"] = ckpt.get("config", {})
    ident["epochs_logged"] = len(ckpt.get("history") or [])
    if ckpt.get("source_sha256"):
        ident["trained_checkpoint_sha256"] = ckpt["source_sha256"]
    if twin:
        ident["twin"] = twin
    return ident


def _history(clf, twin: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per-epoch training log carried by the model (checkpoint ``history``; for ONNX, a ``history`` in its
    metadata or in the checkpoint it was exported from), or [] when it has none."""
    ckpt = getattr(clf, "checkpoint", None) or _twin_checkpoint(clf, twin)
    hist = ckpt.get("history") or (clf.metrics or {}).get("history") or []
    session = getattr(clf, "session", None)
    if not hist and session is not None:
        hist = _onnx_metadata(clf.path, session).get("history") or []
    return hist if isinstance(hist, list) and all(isinstance(h, dict) for h in hist) else []


def _auto_split(ds, data: Any, say) -> str:
    """``split="auto"``: public, or every image when the data names no split at all (a plain ``<class>/``
    folder, whose images :func:`emolens.data.load_dataset` files under one split), said in the log."""
    from .data import SPLITS

    present = [name for i, name in enumerate(SPLITS) if (ds.splits == i).any()]
    if "public" in present or len(present) != 1:
        return "public"
    say(f"note: {data} has no public split (all {len(ds)} images are in {present[0]!r}): evaluating all of them")
    return "all"


def _select_split(ds, split: str, data: Any):
    from .data import SPLITS, DataError

    try:
        sub = ds.split(split)
    except DataError as e:
        raise EvaluateError(str(e)) from None
    if len(sub) == 0:
        present = ", ".join(f"{name} ({int((ds.splits == i).sum())} images)" for i, name in enumerate(SPLITS)
                            if (ds.splits == i).any())
        raise EvaluateError(f"{data}: no labelled images in split {split!r}; splits present: {present} "
                            "(--split all evaluates every image)")
    return sub


def _prepare_out(out: str | os.PathLike | None) -> Path:
    """The run folder to create: ``out`` when it is new or empty (refusing one with files in it), or a new
    ``runs/evaluate/<time>[-k]``. Checked before the work so a bad path fails in a second."""
    if out is None:
        base = Path("runs") / "evaluate" / datetime.now().strftime("%Y%m%d-%H%M%S")
        cand, k = base, 1
        while cand.exists() and (not cand.is_dir() or any(cand.iterdir())):
            k += 1
            cand = base.with_name(f"{base.name}-{k}")
        return cand
    if not str(out).strip():
        raise EvaluateError("--out is empty: give a folder for the report, or leave --out out for "
                            "runs/evaluate/<time>")
    from .outputs import OutputError, check_new_folder

    try:
        return check_new_folder(out, "--out", "evaluate never overwrites a previous run: give a new folder or "
                                              "leave --out out")
    except OutputError as e:
        raise EvaluateError(str(e)) from None


# ----------------------------------------------------------------------------------------------------
# evaluation


def evaluate(data: str | os.PathLike, split: str = "public", model: Any = None, tta: str = DEFAULT_TTA,
             out: str | os.PathLike | None = None, runtime: str = "auto", batch_size: int = 256, *,
             sha256: str | Sequence[str | None] | None = None, device: str = "auto", save: bool = True,
             skip_bad: bool = False, progress: bool = False, log=None) -> Evaluation:
    """Evaluate a model (or several) on one split of labelled FER data; returns an :class:`Evaluation`.

    ``split``: train, public, private, all, or auto (public, else every image when the data has a single
    split, as a plain ``<class>/`` folder does). ``data`` is anything :func:`emolens.data.load_dataset` reads
    (the images are 48x48 faces already, so no face detection); ``model`` is a ``.onnx``/``.pt`` path, a
    loaded classifier, None for the shipped model, or a list of them to compare (one
    :class:`ModelEvaluation` each in ``.models``, each compared with the first in ``.comparisons``).
    ``sha256`` (one per model) must match the file; ``skip_bad`` skips unreadable images (counted in
    ``data.skipped``); ``progress`` shows a progress bar. Writes metrics.json, predictions.csv, PNG plots,
    report.html and report.xlsx into ``out`` (default ``runs/evaluate/<time>``) unless ``save`` is False. Example:
    ``evaluate("fer2013.zip", "public").accuracy``.
    """
    from . import __version__
    from .data import DataError, load_dataset, resolve_split

    t_start = time.perf_counter()
    say = log or (lambda *a, **k: None)
    if not str(data).strip():
        raise EvaluateError("--data is empty: give a Kaggle folder or .zip, a fer2013.csv or a <class>/ folder")
    if tta not in TTA_MODES:
        raise EvaluateError(f"unknown TTA mode {tta!r}: use one of {', '.join(TTA_MODES)}")
    if int(batch_size) < 1:
        raise EvaluateError(f"batch size must be at least 1, got {batch_size}")
    specs = list(model) if isinstance(model, (list, tuple)) else [model]
    if not specs:
        specs = [None]
    shas = list(sha256) if isinstance(sha256, (list, tuple)) else [sha256] * (1 if len(specs) == 1 else 0)
    if sha256 is not None and len(shas) != len(specs):
        raise EvaluateError(f"give one --sha256 per --model ({len(specs)} models, {len(shas)} hashes)")
    shas += [None] * (len(specs) - len(shas))
    if split not in ("all", "auto"):
        try:
            resolve_split(split)  # a typo fails before minutes of model and data loading
        except DataError as e:
            raise EvaluateError(str(e)) from None
    target = _prepare_out(out) if save else None

    classifiers = [load_checked_classifier(m, runtime, device, s) for m, s in zip(specs, shas, strict=True)]
    t0 = time.perf_counter()
    ds = load_dataset(data, skip_bad=skip_bad, progress=progress)
    if split == "auto":
        split = _auto_split(ds, data, say)
    sub = _select_split(ds, split, data)
    data_seconds = time.perf_counter() - t0
    common = {
        "emolens_version": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "data": {"path": str(data), "split": split, "count": len(sub),
                 "class_counts": dict(zip(CLASSES, np.bincount(sub.labels, minlength=len(CLASSES)).tolist(),
                                          strict=True)),
                 "skipped": len(ds.skipped)},
        "tta": tta, "batch_size": int(batch_size),
        "host": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count()},
    }
    labels = [chr(ord("A") + i) if i < 26 else f"M{i + 1}" for i in range(len(classifiers))]
    results, probas, histories = [], [], []
    for label, clf in zip(labels, classifiers, strict=True):
        say(f"evaluating {label if len(classifiers) > 1 else 'model'} {clf.name} ({clf.runtime}, "
            f"{Path(clf.path).name}) on {split}: {len(sub)} images, TTA {tta}")
        t1 = time.perf_counter()
        proba = _predict(clf, sub.images, tta, int(batch_size), progress)
        if tuple(clf.classes) != CLASSES:  # a model with another class order: columns into CLASSES order
            proba = proba[:, [list(clf.classes).index(c) for c in CLASSES]]
        seconds = time.perf_counter() - t1
        m = classification_metrics(sub.labels, proba)
        m.update(common)
        dev = str(getattr(clf, "device", "cpu"))
        if dev.startswith("cuda"):
            import torch

            dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
        twin = twin_check(Path(clf.path), getattr(clf, "session", None))
        if twin and not twin["match"]:
            say(f"warning: {twin['onnx']} was not exported from the {twin['pt']} beside it (source sha256 differs)")
        m.update({"label": label, "model": _model_identity(clf, twin), "runtime": clf.runtime, "device": str(dev),
                  "seconds": {"load_data": round(data_seconds, 3), "predict": round(seconds, 3)},
                  "images_per_second": round(len(sub) / seconds, 1) if seconds > 0 else None})
        results.append(ModelEvaluation(**m))
        probas.append(proba)
        histories.append(_history(clf, twin))
    comparisons = [{"a": results[0].label, "b": r.label,
                    **compare_models(sub.labels, probas[0].argmax(1), p.argmax(1), results[0], r)}
                   for r, p in zip(results[1:], probas[1:], strict=True)]
    total = round(time.perf_counter() - t_start, 3)
    for r in results:
        r.seconds["total"] = total
    result = Evaluation(results, comparisons, {"total": total})
    if save:
        _write_outputs(result, probas, sub, histories, target)
    return result


def _predict(clf, faces: np.ndarray, tta: str, batch_size: int, progress: bool) -> np.ndarray:
    """clf.predict_proba over chunks so a progress bar can move (10-view crops TTA takes minutes on a CPU);
    TTA views are per image, so chunking changes nothing in the numbers."""
    chunk = max(batch_size, 1024)
    if not progress or len(faces) <= chunk:
        return clf.predict_proba(faces, tta=tta, batch_size=batch_size)
    from tqdm import tqdm

    out = []
    with tqdm(total=len(faces), desc=f"predicting ({clf.runtime}, TTA {tta})", unit="img", leave=False) as bar:
        for i in range(0, len(faces), chunk):
            out.append(clf.predict_proba(faces[i:i + chunk], tta=tta, batch_size=batch_size))
            bar.update(len(out[-1]))
    return np.concatenate(out)


def _predictions_csv(sub, results: list[ModelEvaluation], probas: list[np.ndarray]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["source", "true"]
    for m in results:
        pre = f"{m['label']}_" if len(results) > 1 else ""
        head += [f"{pre}pred", f"{pre}confidence"] + [f"{pre}p_{c}" for c in CLASSES]
    w.writerow(head)
    preds = [p.argmax(1) for p in probas]
    for i in range(len(sub)):
        row: list[Any] = [sub.sources[i], CLASSES[sub.labels[i]]]
        for p, pr in zip(probas, preds, strict=True):
            row += [CLASSES[pr[i]], f"{p[i].max():.4f}"] + [f"{v:.4f}" for v in p[i]]
        w.writerow(row)
    return buf.getvalue().encode()


def _confident_mistakes(sub, proba: np.ndarray, per_class: int = MISTAKES_PER_CLASS) -> list[dict[str, Any]]:
    """Per true class, the wrong predictions made with the highest confidence (index into the split)."""
    pred, conf = proba.argmax(1), proba.max(1)
    out = []
    for k, c in enumerate(CLASSES):
        idx = np.flatnonzero((sub.labels == k) & (pred != k))
        idx = idx[np.argsort(-conf[idx], kind="stable")][:per_class]
        out += [{"index": int(i), "source": sub.sources[i], "true": c, "pred": CLASSES[pred[i]],
                 "confidence": float(conf[i])} for i in idx]
    return out


def _write_outputs(result: Evaluation, probas: list[np.ndarray], sub, histories: list[list[dict]],
                   target: Path) -> None:
    """Build everything in a hidden sibling folder, then rename it into place: a run folder is complete or
    absent, never half written."""
    from . import reports
    from .checkpoint import atomic_write_bytes

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    results, comparisons = result.models, result.comparisons
    try:
        figures: list[list[tuple[str, str]]] = []
        for m, proba, hist in zip(results, probas, histories, strict=True):
            pre = f"{m['label']}_" if len(results) > 1 else ""
            figs = []
            cm = np.asarray(m["confusion_matrix"])
            who = f"{m['model']['name']} ({m['model']['file']})"
            reports.plot_confusion_matrix(cm, CLASSES, tmp / f"{pre}confusion_matrix.png", normalize=False,
                                          title=f"{who}: counts")
            reports.plot_confusion_matrix(cm, CLASSES, tmp / f"{pre}confusion_matrix_normalized.png",
                                          normalize=True, title=f"{who}: recall per true class")
            figs += [("Confusion matrix (counts)", f"{pre}confusion_matrix.png"),
                     ("Confusion matrix (row-normalised: each row sums to 100%)",
                      f"{pre}confusion_matrix_normalized.png")]
            reports.plot_per_class_metrics(m["per_class"], tmp / f"{pre}per_class.png", title=who)
            reports.plot_reliability_diagram(m["reliability"], m["ece"], tmp / f"{pre}reliability.png", title=who)
            figs += [("Precision, recall and F1 per class", f"{pre}per_class.png"),
                     ("Reliability diagram (calibration)", f"{pre}reliability.png")]
            mistakes = _confident_mistakes(sub, proba)
            m.confident_mistakes = [{k: v for k, v in x.items() if k != "index"} for x in mistakes]
            if mistakes:
                reports.plot_confident_mistakes(sub.images[[x["index"] for x in mistakes]],
                                                [x["true"] for x in mistakes], [x["pred"] for x in mistakes],
                                                [x["confidence"] for x in mistakes], tmp / f"{pre}mistakes.png",
                                                title=f"{who}: most confident mistakes per true class")
                figs.append(("Most confident mistakes per true class (predicted class and confidence)",
                             f"{pre}mistakes.png"))
            if reports.plot_learning_curves_if_logged(hist, tmp / f"{pre}learning_curves.png"):
                figs.append(("Learning curves from the model's training log", f"{pre}learning_curves.png"))
            m.figures = [f for _, f in figs]
            figures.append(figs)
        atomic_write_bytes(tmp / "predictions.csv", _predictions_csv(sub, results, probas))
        files = sorted([p.name for p in tmp.iterdir()] + ["metrics.json", "report.html", "report.xlsx"])
        result.files = files
        atomic_write_bytes(tmp / "metrics.json", json.dumps(result.to_dict(), indent=1).encode())
        reports.write_evaluation_xlsx(results, comparisons, tmp / "report.xlsx")
        reports.write_evaluation_html(results, comparisons, figures, tmp, tmp / "report.html")
        if target.exists():
            target.rmdir()  # only an empty folder can be here (checked up front); OSError if one appeared since
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out = str(target)
