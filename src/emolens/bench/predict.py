"""``emolens bench predict``: the classifier per runtime (torch, ONNX fp32, ONNX int8) at batch 1 and batched,
with and without TTA, what ``EmotionRecognizer()`` runs out of the box, and the face detectors per 640x480 frame."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..results import Result
from .common import calibration_faces, sample_faces, sample_frame, time_call


@dataclass
class DefaultSpeed(Result):
    """How fast exactly what ``EmotionRecognizer()`` and ``emolens predict`` run out of the box classifies."""

    runtime: str            # "onnx" or "torch"
    precision: str          # "fp32" or "int8"
    tta: str
    batch: int
    ms_per_face_b1: float
    faces_per_s: float      # at ``batch``

    def line(self) -> str:
        """``default (<runtime> <precision>, tta <tta>): N faces/s at batch B``, the README's line."""
        return (f"default ({self.runtime} {self.precision}, tta {self.tta}): {self.faces_per_s:.0f} faces/s "
                f"at batch {self.batch}")


@dataclass
class PredictBench(Result):
    """``emolens bench predict``: one row per classifier runtime and TTA ({runtime, tta, ms_per_face_b1,
    faces_per_s} or {runtime, error}), one per detector ({detector, ms_per_frame, faces} or {detector, error}),
    the thread settings, and the out-of-the-box speed (None when a ``model`` was given)."""

    classifier: list[dict[str, Any]]
    detectors: list[dict[str, Any]]
    threads: dict[str, int]
    batch: int
    onnx_threads: int | str
    default: DefaultSpeed | None = None


def bench_classifier(clf, tta: str, batch: int = 64, min_time: float = 1.0) -> dict[str, float]:
    """ms per face at batch 1 and faces/s at ``batch`` for a :class:`emolens.runtime.Classifier`."""
    faces = sample_faces(batch)
    one = time_call(lambda: clf.predict_proba(faces[:1], tta=tta), min_time)
    many = time_call(lambda: clf.predict_proba(faces, tta=tta, batch_size=batch), min_time)
    return {"ms_per_face_b1": 1000 * one, "faces_per_s": batch / many}


def bench_detectors(names: list[str] | None = None, min_time: float = 1.0) -> list[dict[str, Any]]:
    """ms per 640x480 frame and faces found, for each detector that is installed."""
    from ..faces import DetectorError, available_detectors, create_detector

    frame = sample_frame()
    rows = []
    for name in names or available_detectors():
        try:
            det = create_detector(name)
        except DetectorError as e:
            rows.append({"detector": name, "error": str(e)})
            continue
        found = len(det.detect(frame))
        rows.append({"detector": name, "ms_per_frame": 1000 * time_call(lambda d=det: d.detect(frame), min_time),
                     "faces": found})
    return rows


def _threads() -> dict[str, int]:
    out = {"cpus": os.cpu_count() or 0}
    try:
        import torch

        out["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    return out


def bench_predict(model: str | Path | None = None, batch: int = 64, ttas: tuple[str, ...] = ("shift", "flip", "none"),
                  threads: int = 0, min_time: float = 1.0, detectors: list[str] | None = None) -> PredictBench:
    """The classifier under every runtime available (torch needs the ``.pt`` twin of the model; an fp32 model's
    int8 variant is made here in a temporary folder, an int8 model's fp32 twin exported from its ``.pt``) with
    each TTA mode, and the detectors (see :class:`PredictBench`)."""
    from ..runtime import ModelError, OnnxClassifier, TorchClassifier, default_model_path, is_quantized

    if threads:
        try:
            import torch

            torch.set_num_threads(threads)
        except ImportError:
            pass
    model = Path(model) if model is not None else None
    onnx_path = default_model_path("onnx") if model is None else model if model.suffix == ".onnx" else None
    pt_path = default_model_path("pt") if model is None else model if model.suffix == ".pt" else None
    if model is not None and onnx_path is None and pt_path is None:
        raise ModelError(f"{model}: give a .onnx or .pt model")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        # an int8 file (the shipped one is) is benchmarked as it is, with its fp32 twin exported from the .pt;
        # an fp32 file with its int8 variant made here
        has_onnx = onnx_path is not None and onnx_path.exists()
        int8 = onnx_path if has_onnx and is_quantized(onnx_path) else None
        fp32 = onnx_path if has_onnx and int8 is None else None
        if fp32 is None and pt_path is not None and pt_path.exists():
            from ..export import export_onnx

            fp32 = Path(export_onnx(pt_path, Path(tmp) / "model.onnx")["path"])
        if int8 is None and fp32 is not None:
            from ..export import quantize_int8

            int8 = quantize_int8(fp32, Path(tmp) / "model.int8.onnx", calibration_faces())
        clfs: list[tuple[str, Callable[[], Any]]] = []
        if pt_path is not None and pt_path.exists():
            clfs.append(("torch fp32", lambda: TorchClassifier(pt_path)))
        if fp32 is not None:
            clfs.append(("onnx fp32", lambda: OnnxClassifier(fp32, threads)))
        if int8 is not None:
            clfs.append(("onnx int8", lambda: OnnxClassifier(int8, threads)))
        if not clfs:
            raise ModelError(f"{model or default_model_path('onnx')}: no such model file")
        for name, make in clfs:
            try:
                clf = make()
            except (ImportError, ModelError) as e:
                rows.append({"runtime": name, "error": str(e)})
                continue
            for tta in ttas:
                rows.append({"runtime": name, "tta": tta, **bench_classifier(clf, tta, batch, min_time)})
    default = bench_default(batch, threads, min_time) if model is None else None
    return PredictBench(rows, bench_detectors(detectors, min_time), _threads(), batch,
                        threads or "default (all cores)", default)


def bench_default(batch: int = 64, threads: int = 0, min_time: float = 1.0) -> DefaultSpeed:
    """faces/s of exactly what ``EmotionRecognizer()`` and ``emolens predict`` classify with out of the box
    (shipped model, default runtime and TTA), on ``batch`` faces at a time."""
    from ..predict import EmotionRecognizer
    from ..runtime import read_onnx_metadata

    clf = EmotionRecognizer(detect=False, threads=threads)
    session = getattr(clf.classifier, "session", None)
    meta = read_onnx_metadata(session) if session is not None else {}
    precision = "int8" if "quantization" in meta else "fp32"
    return DefaultSpeed(clf.classifier.runtime, precision, clf.tta, batch,
                        **bench_classifier(clf.classifier, clf.tta, batch, min_time))


def format_predict(result: PredictBench) -> str:
    """Plain-text tables of :func:`bench_predict`'s result (pasteable in a README)."""
    th = result.threads
    lines = [f"CPU cores: {th['cpus']}; torch threads: {th.get('torch', '-')}; onnxruntime intra-op threads: "
             f"{result.onnx_threads}", "",
             f"| runtime | TTA | ms/face (batch 1) | faces/s (batch {result.batch}) |", "|---|---|---:|---:|"]
    for r in result.classifier:
        if "error" in r:
            lines.append(f"| {r['runtime']} | - | {r['error']} | |")
        else:
            lines.append(f"| {r['runtime']} | {r['tta']} | {r['ms_per_face_b1']:.2f} | {r['faces_per_s']:.0f} |")
    if result.default is not None:
        lines += ["", result.default.line()]
    lines += ["", "| detector | ms per 640x480 frame | faces found |", "|---|---:|---:|"]
    for r in result.detectors:
        if "error" in r:
            lines.append(f"| {r['detector']} | {r['error']} | |")
        else:
            lines.append(f"| {r['detector']} | {r['ms_per_frame']:.1f} | {r['faces']} |")
    return "\n".join(lines)
