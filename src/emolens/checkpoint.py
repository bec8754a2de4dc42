"""Self-describing checkpoints: weights + model name/arguments + class names + preprocessing + config +
metrics (+ optimizer state for resuming). Plain tensors and Python types only, loaded with
``weights_only=True``; never a pickled model. Writes are atomic (temp file, then rename)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from .outputs import atomic_write_bytes, default_file_mode, file_sha256  # noqa: F401 (re-exported)
from .preprocess import CLASSES, INPUT_SIZE, MEAN, STD

FORMAT = "emolens-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not an emolens checkpoint, or one that does not match its recorded hash."""


def preprocess_spec() -> dict[str, Any]:
    return {"input_size": INPUT_SIZE, "channels": 1, "mean": MEAN, "std": STD, "color": "gray",
            "resize": "area (shrink) / bilinear (enlarge)"}


def make_checkpoint(model, *, config: dict | None = None, metrics: dict | None = None,
                    history: list | None = None, half: bool = False, **extra) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (built by ``create_model``). ``half`` stores float weights as
    float16 (half the size; they are cast back on load) for shipping."""
    import torch

    state = {k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    return {
        "format": FORMAT, "version": VERSION,
        "model": {"name": model.model_name, "kwargs": dict(model.model_kwargs)},
        "state_dict": state, "classes": list(CLASSES), "preprocess": preprocess_spec(),
        "config": config or {}, "metrics": metrics or {}, "history": history or [],
        "torch_version": str(torch.__version__), **extra,  # str: TorchVersion is not weights_only-loadable
    }


def weights_sha256(state_dict: dict[str, Any]) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and raw bytes (sorted by name): what
    ``save_checkpoint`` records and ``read_checkpoint`` checks, so flipped bytes in the weights are an error
    at load rather than NaN predictions later."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"state_dict[{name!r}] is a {type(t).__name__}, not a tensor")
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(ckpt: dict[str, Any], path: str | Path) -> None:
    """Write ``ckpt`` atomically, with the checksum of its weights (``weights_sha256``) computed now."""
    import torch

    buf = io.BytesIO()
    torch.save({**ckpt, "weights_sha256": weights_sha256(ckpt["state_dict"])}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint file; CheckpointError when it is not one, or when its weights do not match
    the checksum recorded at save (files written before checksums were recorded load unchecked)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not an emolens checkpoint")
    try:
        # files written before torch_version was stored as str hold a TorchVersion (a str subclass)
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch's unpickler raises KeyError, IndexError, ... on arbitrary bytes)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if why.startswith("Weights only load failed"):  # torch's advice here (weights_only=False) runs the file's code
            why = "not a PyTorch file of tensors; emolens loads weights only, never pickled code"
        elif isinstance(e, KeyError | IndexError | EOFError | UnicodeDecodeError) or len(why) < 12:
            why = "not a PyTorch file, or a damaged one"  # the unpickler's own words on arbitrary bytes: "101"
        raise CheckpointError(f"{path}: not an emolens checkpoint ({why})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an emolens checkpoint (no '{FORMAT}' header)")
    missing = [k for k in ("model", "state_dict", "classes") if k not in ckpt]
    if missing or not isinstance(ckpt["model"], dict) or "name" not in ckpt["model"]:
        raise CheckpointError(f"{path}: damaged emolens checkpoint (missing {', '.join(missing) or 'model name'})")
    ckpt["model"].setdefault("kwargs", {})
    expected = ckpt.get("weights_sha256")
    if expected is not None:
        try:
            actual = weights_sha256(ckpt["state_dict"]) if isinstance(ckpt["state_dict"], dict) else None
        except CheckpointError as e:
            raise CheckpointError(f"{path}: damaged emolens checkpoint ({e})") from None
        if actual != expected:
            raise CheckpointError(f"{path}: damaged weights (their checksum does not match the one recorded when "
                                  "the file was written): use another copy of the model")
    return ckpt


def require_whole_faces(ckpt: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint trained on windows (``crop_size``) where whole 48x48 faces are fed (every runtime,
    the export): such a model scores far lower on whole faces (26 % against 66 % on its centre window in the
    recipe search, MODEL_CARD.md), a silent failure unless stopped here."""
    crop = int((ckpt.get("config") or {}).get("crop_size") or 0)
    size = int((ckpt.get("preprocess") or {}).get("input_size", 48))
    if 0 < crop < size:
        raise CheckpointError(f"{path}: trained on {crop} px windows (crop_size), but the runtimes feed whole "
                              f"{size} px faces, on which it is far less accurate; score it with scripts/crop_tta.py")


def load_model(path: str | Path, device: str = "cpu"):
    """(model in eval mode on ``device``, checkpoint dict without the weights)."""
    from .models import create_model

    ckpt = read_checkpoint(path)
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt.pop("state_dict").items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit model {ckpt['model']['name']!r} ({e})") from None
    for k in ("optimizer", "scheduler", "scaler", "rng"):
        ckpt.pop(k, None)
    return model.to(device).eval(), ckpt
