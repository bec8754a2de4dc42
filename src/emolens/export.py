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
import tempfile
import warnings
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
from .runtime import META_KEYS, ModelError, softmax

FORMAT = "emolens-onnx"
DEFAULT_OPSET = 17
#: Largest accepted max |p_torch - p_onnx| over the check inputs (probabilities).
TOLERANCE = 1e-4


class ExportError(ValueError):
    """Export failed, or the exported file does not give torch's numbers."""


def _load(checkpoint: str | Path) -> tuple[Any, dict[str, Any]]:
    """(fp32 model in eval mode, checkpoint dict without weights)."""
    from .checkpoint import load_model

    return load_model(checkpoint, "cpu")


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


def _metadata(ckpt: dict[str, Any], source_sha256: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    values = {"format": FORMAT, "model": ckpt["model"], "classes": list(ckpt["classes"]),
              "preprocess": ckpt.get("preprocess", {}), "metrics": ckpt.get("metrics", {}),
              "source_sha256": source_sha256}
    meta = {f"emolens.{k}": json.dumps(v, sort_keys=True, default=float) for k, v in values.items()}
    assert set(meta) == set(META_KEYS), "runtime.META_KEYS and export disagree"
    for k, v in (extra or {}).items():
        meta[f"emolens.{k}"] = json.dumps(v, sort_keys=True, default=float)
    return meta


def _with_metadata(data: bytes, meta: dict[str, str]) -> bytes:
    import onnx

    proto = onnx.load_from_string(data)
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "emolens"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``emolens.*`` metadata of an ONNX file, JSON-decoded, keys without the prefix."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for non-ONNX files
        raise ModelError(f"{path}: not an ONNX file ({str(e).splitlines()[0][:160]})") from None
    return {p.key.removeprefix("emolens."): json.loads(p.value) for p in proto.metadata_props
            if p.key.startswith("emolens.")}


def compare_torch_onnx(model, onnx_path: str | Path, n: int = 64, seed: int = 0,
                       input_size: int = 48) -> float:
    """Max |p_torch - p_onnx| over ``n`` random normalised inputs (N, 1, S, S) plus a few extreme ones."""
    import onnxruntime as ort
    import torch

    gen = np.random.default_rng(seed)
    x = gen.normal(0, 1, (n, 1, input_size, input_size)).astype(np.float32)
    x[0], x[1] = -2.0, 2.0  # black and white images, the ends of the normalised range
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    p_onnx = softmax(sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float32))
    with torch.inference_mode():
        p_torch = softmax(model.eval()(torch.from_numpy(x)).float().numpy())
    return float(np.abs(p_onnx - p_torch).max())


def quantize_int8(onnx_path: str | Path, out: str | Path) -> Path:
    """Dynamic int8 quantisation (weights int8, activations quantised on the fly) of an fp32 ONNX file; the
    metadata is kept and records ``quantization: int8-dynamic``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    meta = read_metadata(onnx_path)
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "q.onnx"
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # onnxruntime logs a "consider pre-processing" hint on the root logger
        try:
            quantize_dynamic(str(onnx_path), str(q), weight_type=QuantType.QInt8)
        finally:
            logging.disable(previous)
        import onnx

        proto = onnx.load(str(q))
        del proto.metadata_props[:]
        for k, v in {**meta, "quantization": "int8-dynamic"}.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = f"emolens.{k}", json.dumps(v, sort_keys=True, default=float)
        atomic_write_bytes(out, proto.SerializeToString())
    return out


def export_onnx(checkpoint: str | Path, out: str | Path | None = None, opset: int = DEFAULT_OPSET,
                check: bool = True, quantize: bool = False, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export a ``.pt`` checkpoint to ONNX (``out`` default: beside it, ``.onnx``); with ``check``, fail when
    torch and ONNX Runtime probabilities differ by more than ``tolerance``; with ``quantize``, also write
    ``<out stem>.int8.onnx``. Returns {path, int8_path, max_abs_diff, size_bytes, int8_size_bytes, opset}."""
    checkpoint = Path(checkpoint)
    try:
        model, ckpt = _load(checkpoint)
    except ImportError:
        raise ModelError("export needs PyTorch: pip install 'emolens[train]'") from None
    out = Path(out) if out is not None else checkpoint.with_suffix(".onnx")
    if out.suffix != ".onnx":
        raise ExportError(f"{out}: the output name must end in .onnx")
    size = int(ckpt.get("preprocess", {}).get("input_size", 48))
    data = _with_metadata(onnx_bytes(model, opset, size), _metadata(ckpt, file_sha256(checkpoint)))
    atomic_write_bytes(out, data)
    result: dict[str, Any] = {"path": str(out), "size_bytes": out.stat().st_size, "opset": opset,
                              "max_abs_diff": None, "int8_path": None, "int8_size_bytes": None}
    if check:
        diff = compare_torch_onnx(model, out, input_size=size)
        result["max_abs_diff"] = diff
        if not diff <= tolerance:
            out.unlink(missing_ok=True)
            raise ExportError(f"{out}: ONNX Runtime and torch disagree (max |dp| = {diff:.2e} > {tolerance:g}); "
                              "file removed")
    if quantize:
        q = quantize_int8(out, out.with_name(out.stem + ".int8.onnx"))
        result["int8_path"], result["int8_size_bytes"] = str(q), q.stat().st_size
    return result


def ship(best_pt: str | Path, weights_dir: str | Path, name: str = "emolens_cnn_lstm") -> dict[str, Any]:
    """The shipped files from a training run's ``best.pt``: ``<name>.pt`` (fp16 weights, no optimizer state,
    config/metrics/history kept) and ``<name>.onnx`` exported from the same fp16-rounded weights, so torch and
    ONNX agree. Returns {pt, onnx, max_abs_diff, sizes, total_bytes}."""
    best_pt, weights_dir = Path(best_pt), Path(weights_dir)
    ckpt = read_checkpoint(best_pt)
    try:
        from .models import create_model
    except ImportError:
        raise ModelError("ship needs PyTorch: pip install 'emolens[train]'") from None
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
    sizes = {pt.name: pt.stat().st_size, Path(result["path"]).name: result["size_bytes"]}
    return {"pt": str(pt), "onnx": result["path"], "max_abs_diff": result["max_abs_diff"], "sizes": sizes,
            "total_bytes": sum(sizes.values())}
