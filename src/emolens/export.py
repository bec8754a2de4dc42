"""Checkpoint -> self-describing ONNX file (and the shipped model files).

``export_onnx`` writes the model's logits graph with a dynamic batch axis and metadata (``emolens.*`` keys,
JSON values: format, model name/arguments, classes, preprocessing, metrics, the source checkpoint's sha256),
then checks ONNX Runtime against torch on random inputs. ``quantize_int8`` makes a dynamically quantised
variant; ``ship`` makes the slim fp16 ``.pt`` and its ``.onnx`` twin from a training run's ``best.pt``.

The TorchScript-based exporter (``dynamo=False``) is used: it handles ``nn.LSTM`` with a dynamic batch the same
way on torch 2.4-2.13, while the dynamo exporter's LSTM support and its onnxscript dependency have changed
from release to release.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    file_sha256,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from .results import Result
from .runtime import (
    META_KEYS,
    TORCH_HINT,
    WEIGHTS_KEY,
    ModelError,
    onnx_graph_sha256,
    onnx_session,
    read_onnx_metadata,
    softmax,
)

FORMAT = "emolens-onnx"
DEFAULT_OPSET = 17
#: the oldest opset whose graph of these models ONNX Runtime loads (8 and below use ConstantFill, long removed)
MIN_OPSET = 9


def max_opset() -> int:
    """The newest opset this PyTorch's exporter writes (23 for torch 2.13)."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # no torch (export then says so), or a torch that moved the constant
        return 23
    return int(ONNX_MAX_OPSET)
#: Largest accepted max |p_torch - p_onnx| over the check inputs (probabilities).
TOLERANCE = 1e-4


class ExportError(ValueError):
    """Export failed, or the exported file does not give torch's numbers."""


def _load(checkpoint: str | Path) -> tuple[Any, dict[str, Any]]:
    """(fp32 model in eval mode, checkpoint dict without weights)."""
    from .checkpoint import load_model, require_whole_faces

    model, ckpt = load_model(checkpoint, "cpu")
    require_whole_faces(ckpt, checkpoint)
    return model, ckpt


def onnx_bytes(model, opset: int = DEFAULT_OPSET, input_size: int = 48) -> bytes:
    """The ONNX graph of ``model`` (B, 1, S, S) float32 -> (B, 7) logits, batch axis dynamic; an image model
    with ``forward_head``/``fc`` also outputs ``embedding`` (B, D) (``forward_head(pre_logits=True)``), which
    the temporal model reads (emolens.temporal), at no extra cost: the logits are computed from it."""
    import torch

    model = model.eval().float().cpu()
    x = torch.zeros(2, 1, input_size, input_size)
    names, axes = ["logits"], {"input": {0: "batch"}, "logits": {0: "batch"}}
    if hasattr(model, "forward_head") and hasattr(model, "fc") and getattr(model, "input_kind", "image") == "image":
        model = _WithEmbedding(model)
        names.append("embedding")
        axes["embedding"] = {0: "batch"}
    # the tracer warns about len()/bool() on tensors in the LSTM head; export_onnx's check is what counts
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (x,), str(out), input_names=["input"], output_names=names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        return out.read_bytes()


def _WithEmbedding(model):  # noqa: N802 - a class factory, so torch is imported only when exporting
    import torch

    class WithEmbedding(torch.nn.Module):
        """(B, 1, S, S) -> ((B, 7) logits, (B, D) embedding)."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            z = self.m.forward_head(self.m.forward_features(x), pre_logits=True)
            return self.m.fc(z), z

    return WithEmbedding(model).eval()


def _metadata(ckpt: dict[str, Any], source_sha256: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A checkpoint's self-description as ONNX metadata values (keys without the ``emolens.`` prefix)."""
    meta = {"format": FORMAT, "model": ckpt["model"], "classes": list(ckpt["classes"]),
            "preprocess": ckpt.get("preprocess", {}), "metrics": ckpt.get("metrics", {}),
            "source_sha256": source_sha256, **(extra or {})}
    assert {f"emolens.{k}" for k in meta} >= set(META_KEYS), "runtime.META_KEYS and export disagree"
    return meta


def _stamped(proto) -> bytes:
    """``proto`` serialized with the checksum of its graph (nodes and weights) in its metadata
    (``emolens.weights_sha256``, checked by ``emolens.runtime.OnnxClassifier`` at load)."""
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == WEIGHTS_KEY:
            del proto.metadata_props[i]
    digest = onnx_graph_sha256(proto.SerializeToString())
    entry = proto.metadata_props.add()
    entry.key, entry.value = WEIGHTS_KEY, json.dumps(digest)
    data = proto.SerializeToString()
    if onnx_graph_sha256(data) != digest:  # the graph serializes the same with or without the entry
        raise ExportError("the ONNX graph does not serialize reproducibly: cannot record its checksum")
    return data


def write_metadata(model: bytes | str | Path, meta: dict[str, Any]) -> bytes:
    """ONNX model (bytes or a path) -> its bytes with the ``emolens.*`` metadata replaced by ``meta`` (values
    JSON-encoded, keys without the prefix) and the graph checksum recomputed. The one writer of the package's
    ONNX metadata; :func:`emolens.runtime.read_onnx_metadata` is the one reader."""
    import onnx

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    del proto.metadata_props[:]
    for k, v in meta.items():
        if f"emolens.{k}" != WEIGHTS_KEY:  # recomputed for this graph by _stamped
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"emolens.{k}", json.dumps(v, sort_keys=True, default=float)
    proto.producer_name = "emolens"
    onnx.checker.check_model(proto)
    return _stamped(proto)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``emolens.*`` metadata of an ONNX file, JSON-decoded, keys without the prefix (ModelError when the
    file is not ONNX): :func:`emolens.runtime.read_onnx_metadata`."""
    return read_onnx_metadata(Path(path))


def compare_torch_onnx(model, onnx_path: str | Path, n: int = 64, seed: int = 0,
                       input_size: int = 48) -> float:
    """Max |p_torch - p_onnx| over ``n`` random normalised inputs (N, 1, S, S) plus a few extreme ones."""
    import torch

    gen = np.random.default_rng(seed)
    x = gen.normal(0, 1, (n, 1, input_size, input_size)).astype(np.float32)
    x[0], x[1] = -2.0, 2.0  # black and white images, the ends of the normalised range
    sess = onnx_session(onnx_path)
    p_onnx = softmax(sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float32))
    with torch.inference_mode():
        p_torch = softmax(model.eval()(torch.from_numpy(x)).float().numpy())
    return float(np.abs(p_onnx - p_torch).max())


def quantize_int8(onnx_path: str | Path, out: str | Path, calibration: np.ndarray | None = None,
                  metrics: dict[str, Any] | None = None) -> Path:
    """int8 variant of an fp32 ONNX file, metadata kept (plus ``quantization`` and ``metrics``).

    With ``calibration`` faces ((N, 48, 48) uint8, a few hundred training faces): static quantisation, QDQ,
    per-channel int8 weights and uint8 activations for Conv/MatMul/Gemm (the LSTM stays fp32), activation
    ranges from the calibration faces; ONNX Runtime runs it as int8 convolutions, faster than fp32. Without:
    dynamic quantisation (weights int8, activations quantised at run time): 4x smaller but slower, because
    ONNX Runtime's dynamic ConvInteger is slow on CPU (measured 27 vs 225 faces/s)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .preprocess import normalize

    out = Path(out)
    meta = read_metadata(onnx_path)
    pre = meta.get("preprocess", {})
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "q.onnx"
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # onnxruntime logs hints (pre-processing, providers) on the root logger
        try:
            if calibration is None:
                quantize_dynamic(str(onnx_path), str(q), weight_type=QuantType.QInt8)
                meta["quantization"] = "int8-dynamic"
            else:
                faces = np.asarray(calibration, np.uint8)
                batches = [normalize(faces[i:i + 32], float(pre.get("mean", 0.5)), float(pre.get("std", 0.25)))
                           for i in range(0, len(faces), 32)]

                class Reader(CalibrationDataReader):
                    def __init__(self):
                        self.it = iter([{"input": b} for b in batches])

                    def get_next(self):
                        return next(self.it, None)

                prepared = Path(tmp) / "pre.onnx"
                quant_pre_process(str(onnx_path), str(prepared))
                quantize_static(str(prepared), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                                op_types_to_quantize=["Conv", "MatMul", "Gemm"])
                meta["quantization"] = f"int8-static-qdq (calibrated on {len(faces)} faces)"
        finally:
            logging.disable(previous)
        if metrics:
            meta["metrics"] = {**meta.get("metrics", {}), **metrics}
        atomic_write_bytes(out, write_metadata(q, meta))
    return out


#: The int8 variant is kept only when its PublicTest accuracy is at most this far below the fp32 model's.
INT8_MAX_DROP = 0.005


def int8_with_accuracy_check(onnx_path: str | Path, out: str | Path, data: str | Path | None = None,
                             max_drop: float = INT8_MAX_DROP, n_calibration: int = 512,
                             seed: int = 0) -> dict[str, Any]:
    """Calibrate on ``n_calibration`` FER2013 training faces, quantise, and score fp32 and int8 on PublicTest;
    refuse (ExportError, file removed) when int8 is more than ``max_drop`` below fp32. Returns {int8_path,
    int8_size_bytes, public_acc_fp32, public_acc_int8}; the accuracies also go into the int8 file's metrics."""
    from .data import DataError, default_data_path, load_dataset
    from .runtime import OnnxClassifier

    path = Path(data) if data is not None else default_data_path()
    try:
        ds = load_dataset(path)
    except DataError as e:
        raise ExportError(f"int8 needs FER2013 for calibration and the accuracy check ({e}); give --data") from None
    train, public = ds.split("train"), ds.split("public")
    if len(train.images) == 0 or len(public.images) == 0:
        raise ExportError(f"{path}: int8 needs training images (calibration) and PublicTest images (accuracy)")
    rng = np.random.default_rng(seed)
    calib = train.images[rng.choice(len(train.images), min(n_calibration, len(train.images)), replace=False)]
    acc32 = float((OnnxClassifier(onnx_path).predict_proba(public.images).argmax(1) == public.labels).mean())
    out = quantize_int8(onnx_path, out, calib)
    acc8 = float((OnnxClassifier(out).predict_proba(public.images).argmax(1) == public.labels).mean())
    scores = {"public_acc_fp32": acc32, "public_acc_int8": acc8, "public_images": int(len(public.images))}
    if acc32 - acc8 > max_drop:
        out.unlink(missing_ok=True)
        raise ExportError(f"int8 PublicTest accuracy {100 * acc8:.2f}% is {100 * (acc32 - acc8):.2f} points below "
                          f"fp32 ({100 * acc32:.2f}%), more than {100 * max_drop:g}: not written")
    meta = read_metadata(out)
    meta["metrics"] = {**meta.get("metrics", {}), **scores}
    atomic_write_bytes(out, write_metadata(out, meta))
    return {"int8_path": str(out), "int8_size_bytes": out.stat().st_size, **scores}


@dataclass(frozen=True)
class ExportResult(Result):
    """What :func:`export_onnx` wrote: the ONNX file, its checks, and the int8 variant when asked for."""

    path: str
    size_bytes: int
    opset: int
    max_abs_diff: float | None = None  # torch vs ONNX Runtime probabilities (None: not checked)
    int8_path: str | None = None
    int8_size_bytes: int | None = None
    public_acc_fp32: float | None = None  # with int8: PublicTest accuracy of both, and how many images
    public_acc_int8: float | None = None
    public_images: int | None = None


@dataclass(frozen=True)
class ShipResult(Result):
    """The shipped pair written by :func:`ship`."""

    pt: str
    onnx: str
    max_abs_diff: float | None
    sizes: dict[str, int]  # file name -> bytes
    total_bytes: int


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, opset: int = DEFAULT_OPSET,
                check: bool = True, quantize: bool = False, tolerance: float = TOLERANCE,
                data: str | Path | None = None, max_drop: float = INT8_MAX_DROP,
                overwrite: bool = True) -> dict[str, Any]:
    """Export a ``.pt`` checkpoint to ONNX (``out`` default: beside it, ``.onnx``); with ``check``, fail when
    torch and ONNX Runtime probabilities differ by more than ``tolerance``; with ``quantize``, also write
    ``<out stem>.int8.onnx`` (calibrated on FER2013 ``data``, kept only within ``max_drop`` of fp32's PublicTest
    accuracy). ``overwrite`` False (``emolens export``): an existing output is refused before the export.
    Returns an :class:`ExportResult`."""
    from .outputs import OutputError, check_new_files, check_outputs

    if not MIN_OPSET <= opset <= max_opset():
        raise ExportError(f"--opset {opset}: ONNX opsets {MIN_OPSET} to {max_opset()} can be written here "
                          f"(default {DEFAULT_OPSET})")
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the output name must end in .onnx")
    outputs = [out, out.with_name(out.stem + ".int8.onnx") if quantize else None]
    check_outputs([checkpoint], files=outputs)
    if not overwrite:
        try:
            check_new_files(outputs, "give another -o name or delete it first")
        except OutputError as e:
            raise ExportError(str(e)) from None
    try:
        model, ckpt = _load(checkpoint)
    except ImportError:
        raise ModelError(f"export needs {TORCH_HINT}") from None
    size = int(ckpt.get("preprocess", {}).get("input_size", 48))
    graph = write_metadata(onnx_bytes(model, opset, size), _metadata(ckpt, file_sha256(checkpoint)))
    atomic_write_bytes(out, graph)
    diff = None
    if check:
        diff = compare_torch_onnx(model, out, input_size=size)
        if not diff <= tolerance:
            out.unlink(missing_ok=True)
            raise ExportError(f"{out}: ONNX Runtime and torch disagree (max |dp| = {diff:.2e} > {tolerance:g}); "
                              "file removed")
    int8 = int8_with_accuracy_check(out, out.with_name(out.stem + ".int8.onnx"), data, max_drop) if quantize else {}
    return ExportResult(str(out), out.stat().st_size, opset, diff, **int8)


def ship(best_pt: str | Path, weights_dir: str | Path, name: str = "emolens_cnn_lstm", int8: bool = False,
         data: str | Path | None = None, max_drop: float = INT8_MAX_DROP) -> dict[str, Any]:
    """The shipped files from a training run's ``best.pt``: ``<name>.pt`` (fp16 weights, no optimizer state,
    config/metrics/history kept) and ``<name>.onnx`` exported from the same fp16-rounded weights, so torch and
    ONNX agree. With ``int8`` the ``.onnx`` is the static int8 variant instead (calibrated on FER2013 ``data``,
    refused when its PublicTest accuracy is more than INT8_MAX_DROP below fp32's): smaller and about 1.8x
    faster on CPUs with VNNI/AMX, agreeing with torch on labels rather than to 1e-4. Returns a
    :class:`ShipResult`."""
    from .outputs import check_outputs

    best_pt, weights_dir = Path(best_pt), Path(weights_dir)
    check_outputs([best_pt], files=[weights_dir / f"{name}.pt", weights_dir / f"{name}.onnx"])
    ckpt = read_checkpoint(best_pt)
    try:
        from .models import create_model
    except ImportError:
        raise ModelError(f"ship needs {TORCH_HINT}") from None
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    state = {k: (v.half().float() if v.is_floating_point() else v) for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{best_pt}: weights do not fit model {ckpt['model']['name']!r} ({e})") from None
    keep = {k: ckpt[k] for k in ("best_epoch", "run", "source") if k in ckpt}
    slim = make_checkpoint(model, config=ckpt.get("config"), metrics=ckpt.get("metrics"),
                           history=ckpt.get("history"), half=True, source_sha256=file_sha256(best_pt), **keep)
    pt = weights_dir / f"{name}.pt"
    save_checkpoint(slim, pt)
    result = export_onnx(pt, weights_dir / f"{name}.onnx")
    if int8:
        onnx = Path(result.path)
        tmp = onnx.with_name(f".{onnx.stem}.int8.onnx")
        try:
            int8_with_accuracy_check(onnx, tmp, data, max_drop)
            os.replace(tmp, onnx)
        finally:
            tmp.unlink(missing_ok=True)
        result = replace(result, size_bytes=onnx.stat().st_size)
    sizes = {pt.name: pt.stat().st_size, Path(result.path).name: result.size_bytes}
    return ShipResult(str(pt), result.path, result.max_abs_diff, sizes, sum(sizes.values()))
