"""Temporal model files: the .pt (the head in half precision + a reference to its image checkpoint, with probe
embeddings), its ONNX twin (the head alone), loading them back, and loading an encoder + head pair that belong
together. Torch is imported inside the functions that need it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..preprocess import CLASSES
from .runtime import (
    TEMPORAL_FORMAT,
    FrameEncoder,
    OnnxFrameEncoder,
    OnnxTemporalHead,
    TemporalHead,
    TorchFrameEncoder,
    TorchTemporalHead,
    check_probe,
    default_temporal_path,
    probe_faces,
)


def save_temporal_model(model, image_path: str | Path, path: str | Path, *, config: dict | None = None,
                        metrics: dict | None = None, history: list | None = None,
                        include_encoder: bool = False) -> tuple[Path, Path]:
    """Write ``path`` (.pt: the head in half precision + a reference to the image checkpoint) and its
    ``.onnx`` twin (the head alone, (B, T, D) embeddings -> (B, T, 7) logits). ``model.encoder`` must hold
    ``image_path``'s weights; ``include_encoder`` stores them too (a fine-tuned encoder)."""
    import torch

    from ..checkpoint import file_sha256, make_checkpoint, read_checkpoint, save_checkpoint

    path = Path(path)
    image_path = Path(image_path)
    img_ckpt = read_checkpoint(image_path)
    model.eval()
    # the .pt stores half precision; round the live head the same way so the .pt and the .onnx agree
    with torch.no_grad():
        for name, p in model.named_parameters():
            if include_encoder or not name.startswith("encoder."):
                p.copy_(p.half().float())
    ref = {"name": img_ckpt["model"]["name"], "kwargs": dict(img_ckpt["model"]["kwargs"]), "file": image_path.name,
           "sha256": file_sha256(image_path), "public_acc": img_ckpt.get("metrics", {}).get("public_acc"),
           "probe": encoder_probe(model.encoder).tolist(), "included": bool(include_encoder)}
    window = int(model.num_frames)
    metrics = metrics or {}
    ckpt = make_checkpoint(model, config=config, metrics=metrics, history=history, half=True, encoder=ref,
                           sequence={"window": window, "embed_dim": model.frame_dim}, format_kind=TEMPORAL_FORMAT)
    if not include_encoder:
        ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("encoder.")}
    save_checkpoint(ckpt, path)
    onnx_path = export_temporal_onnx(model, path.with_suffix(".onnx"), ref, metrics, window)
    return path, onnx_path


def encoder_probe(encoder) -> np.ndarray:
    """The (4, D) embeddings of :func:`probe_faces` under a torch image model."""
    return TorchFrameEncoder(encoder, str(next(encoder.parameters()).device)).encode(probe_faces())[1]


def export_temporal_onnx(model, path: str | Path, encoder_ref: dict, metrics: dict, window: int) -> Path:
    """The head alone as ONNX: ``embeddings`` (B, T, D) -> ``logits`` (B, T, 7), B and T dynamic, with
    the emolens metadata (classes, window, the encoder it belongs to); checked against torch."""
    import io
    import warnings

    import torch

    from ..checkpoint import atomic_write_bytes
    from ..export import write_metadata
    from ..runtime import onnx_session

    class Head(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, emb: torch.Tensor) -> torch.Tensor:
            return self.m.forward_sequence(emb)

    head = Head(model).eval().cpu()
    x = torch.randn(2, window, model.frame_dim)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated but exports this LSTM in a second with exact dynamic shapes;
        # its tracer warnings are about Python-side shape checks that do not apply here
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (x,), buf, input_names=["embeddings"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"embeddings": {0: "batch", 1: "frames"}, "logits": {0: "batch", 1: "frames"}},
                          dynamo=False)
    meta = {"format": TEMPORAL_FORMAT, "classes": list(CLASSES),
            "model": {"name": model.model_name, "kwargs": model.model_kwargs},
            "encoder": encoder_ref, "sequence": {"window": window, "embed_dim": model.frame_dim},
            "metrics": metrics}
    data = write_metadata(buf.getvalue(), meta)
    sess = onnx_session(data)
    for shape in ((2, window), (1, 5)):
        e = torch.randn(*shape, model.frame_dim)
        with torch.inference_mode():
            ref = head(e).numpy()
        got = sess.run(None, {"embeddings": e.numpy()})[0]
        if not np.allclose(ref, got, atol=1e-4, rtol=1e-3):
            raise RuntimeError(f"ONNX export of the temporal head differs from torch by {np.abs(ref - got).max():.2e}")
    atomic_write_bytes(Path(path), data)
    return Path(path)


def load_temporal_model(path: str | Path, image_model: str | Path | None = None, device: str = "cpu"):
    """(TemporalLSTM with its encoder, in eval mode; checkpoint dict without weights).

    The encoder comes from ``image_model`` (default: the file named in the checkpoint next to it, else the
    shipped image model), checked against the stored probe embeddings."""
    from ..checkpoint import CheckpointError, load_model, read_checkpoint
    from ..models import create_model
    from ..runtime import default_model_path

    ckpt = read_checkpoint(path)
    if ckpt.get("format_kind") != TEMPORAL_FORMAT or "encoder" not in ckpt:
        raise CheckpointError(f"{path}: not an emolens temporal model (train one with `emolens train --task sequence`)")
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt.pop("state_dict").items()}
    ref = ckpt["encoder"]
    if not ref.get("included"):
        if image_model is None:
            sibling = Path(path).with_name(ref["file"])
            image_model = sibling if sibling.is_file() else default_model_path("pt")
        enc, _ = load_model(image_model, "cpu")
        if getattr(enc, "model_name", "") != ref["name"]:
            raise CheckpointError(f"{path}: built on a {ref['name']} image model, {image_model} is {enc.model_name}")
        try:
            model.encoder.load_state_dict(enc.state_dict())
        except RuntimeError:
            raise CheckpointError(f"{path}: built on another image model than {image_model} (other layer sizes); "
                                  "train one for it with `emolens train --task sequence`") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise CheckpointError(f"{path}: weights do not fit temporal_lstm (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.to(device).eval()
    if not ref.get("included"):
        check_probe(TorchFrameEncoder(model.encoder, device), np.asarray(ref["probe"], np.float32),
                    f"{path} with {image_model}")
    return model, ckpt


def load_pair(image_model: str | Path | None = None, temporal_model: str | Path | None = None,
              runtime: str = "onnx", threads: int = 0) -> tuple[FrameEncoder, TemporalHead]:
    """A frame encoder and a temporal head that belong together (checked with the probe faces).

    ``runtime`` onnx: ``image_model`` .onnx (default shipped) + ``temporal_model`` .onnx (default shipped);
    torch: the .pt twins."""
    from ..runtime import ModelError, default_model_path

    if runtime not in ("onnx", "torch"):
        raise ValueError(f"unknown runtime {runtime!r}: use onnx or torch")
    kind = "pt" if runtime == "torch" else "onnx"
    img = Path(image_model) if image_model else default_model_path(kind)
    tmp = Path(temporal_model) if temporal_model else default_temporal_path(kind)
    for p, what in ((img, "image model"), (tmp, "temporal model")):
        if not p.is_file():
            raise ModelError(f"{p}: no such {what} file" + (
                "; train one with `emolens train --task sequence`" if what == "temporal model" else ""))
    if runtime == "onnx":
        encoder: FrameEncoder = OnnxFrameEncoder(img, threads)
        head: TemporalHead = OnnxTemporalHead(tmp, threads)
        ref = head.meta.get("encoder", {})
    else:
        model, ckpt = load_temporal_model(tmp, img)
        encoder = TorchFrameEncoder(model.encoder)
        head = TorchTemporalHead(model, meta=ckpt)
        ref = ckpt["encoder"]
    probe = np.asarray(ref.get("probe", []), np.float32)
    if head.dim != encoder.dim:
        raise ModelError(f"{tmp}: reads {head.dim}-d embeddings but {img} gives {encoder.dim}-d")
    if probe.size:
        check_probe(encoder, probe, f"{tmp} with {img}", encoder_sha256=ref.get("sha256"))
    return encoder, head

