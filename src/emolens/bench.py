"""Speed measurements behind ``emolens bench``: the classifier per runtime (torch, ONNX fp32, ONNX int8) at batch
1 and batched, with and without TTA, and the face detectors per 640x480 frame. Other stages add their own
``bench_*`` functions here or in their module."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def time_call(fn: Callable[[], Any], min_time: float = 1.0, min_repeats: int = 5, warmup: int = 2) -> float:
    """Median seconds per call of ``fn`` over at least ``min_repeats`` calls and ``min_time`` seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def sample_frame(width: int = 640, height: int = 480) -> np.ndarray:
    """A (height, width, 3) BGR frame with the bundled astronaut photo (one face) scaled to the frame height."""
    import cv2

    from .predict import read_image

    photo = read_image(Path(__file__).with_name("assets") / "astronaut.jpg")
    photo = cv2.resize(photo, (height * photo.shape[1] // photo.shape[0], height), interpolation=cv2.INTER_AREA)
    frame = np.full((height, width, 3), 96, np.uint8)
    x = max(0, (width - photo.shape[1]) // 2)
    frame[:, x:x + photo.shape[1]] = photo[:, :width]
    return frame


def sample_faces(n: int, seed: int = 0) -> np.ndarray:
    """(n, 48, 48) uint8: the astronaut's face crop with noise, so every input differs a little."""
    from .faces import create_detector, face_crops

    frame = sample_frame()
    dets = create_detector("haar").detect_faces(frame)[:1]
    base = face_crops(frame, dets)[0] if dets else np.full((48, 48), 128, np.uint8)
    noise = np.random.default_rng(seed).integers(-8, 9, (n, 48, 48))
    return np.clip(base[None].astype(np.int16) + noise, 0, 255).astype(np.uint8)


def calibration_faces(n: int = 512) -> np.ndarray:
    """int8 calibration faces: FER2013 training faces when the data is there, else noisy copies of the sample
    face (speed is the same; only accuracy would suffer)."""
    from .data import DataError, default_data_path, load_dataset

    try:
        train = load_dataset(default_data_path()).split("train")
    except (DataError, OSError):
        return sample_faces(n)
    return train.images[np.random.default_rng(0).choice(len(train.images), min(n, len(train.images)), False)]


def bench_classifier(clf, tta: str, batch: int = 64, min_time: float = 1.0) -> dict[str, float]:
    """ms per face at batch 1 and faces/s at ``batch`` for a :class:`emolens.runtime.Classifier`."""
    faces = sample_faces(batch)
    one = time_call(lambda: clf.predict_proba(faces[:1], tta=tta), min_time)
    many = time_call(lambda: clf.predict_proba(faces, tta=tta, batch_size=batch), min_time)
    return {"ms_per_face_b1": 1000 * one, "faces_per_s": batch / many}


def bench_detectors(names: list[str] | None = None, min_time: float = 1.0) -> list[dict[str, Any]]:
    """ms per 640x480 frame and faces found, for each detector that is installed."""
    from .faces import DetectorError, available_detectors, create_detector

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


def bench_predict(model: str | Path | None = None, batch: int = 64, ttas: tuple[str, ...] = ("flip", "none"),
                  threads: int = 0, min_time: float = 1.0, detectors: list[str] | None = None) -> dict[str, Any]:
    """The classifier under every runtime available (torch needs the ``.pt`` twin of the model; int8 is made
    here in a temporary folder) with each TTA mode, and the detectors. Returns {"classifier": rows,
    "detectors": rows, "threads": {...}, "batch": batch}."""
    from .runtime import ModelError, OnnxClassifier, TorchClassifier, default_model_path

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
        if onnx_path is None and pt_path is not None and pt_path.exists():
            from .export import export_onnx

            onnx_path = Path(export_onnx(pt_path, Path(tmp) / "model.onnx")["path"])
        clfs: list[tuple[str, Callable[[], Any]]] = []
        if pt_path is not None and pt_path.exists():
            clfs.append(("torch fp32", lambda: TorchClassifier(pt_path)))
        if onnx_path is not None and onnx_path.exists():
            from .export import quantize_int8

            int8 = quantize_int8(onnx_path, Path(tmp) / "model.int8.onnx", calibration_faces())
            clfs.append(("onnx fp32", lambda: OnnxClassifier(onnx_path, threads)))
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
    return {"classifier": rows, "detectors": bench_detectors(detectors, min_time), "threads": _threads(),
            "batch": batch, "onnx_threads": threads or "default (all cores)"}


def format_predict(result: dict[str, Any]) -> str:
    """Plain-text tables of :func:`bench_predict`'s result (pasteable in a README)."""
    th = result["threads"]
    lines = [f"CPU cores: {th['cpus']}; torch threads: {th.get('torch', '-')}; onnxruntime intra-op threads: "
             f"{result['onnx_threads']}", "",
             f"| runtime | TTA | ms/face (batch 1) | faces/s (batch {result['batch']}) |", "|---|---|---:|---:|"]
    for r in result["classifier"]:
        if "error" in r:
            lines.append(f"| {r['runtime']} | - | {r['error']} | |")
        else:
            lines.append(f"| {r['runtime']} | {r['tta']} | {r['ms_per_face_b1']:.2f} | {r['faces_per_s']:.0f} |")
    lines += ["", "| detector | ms per 640x480 frame | faces found |", "|---|---:|---:|"]
    for r in result["detectors"]:
        if "error" in r:
            lines.append(f"| {r['detector']} | {r['error']} | |")
        else:
            lines.append(f"| {r['detector']} | {r['ms_per_frame']:.1f} | {r['faces']} |")
    return "\n".join(lines)
