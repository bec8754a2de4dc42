"""Inference runtimes behind one interface: ``load_classifier(model, runtime)`` returns an object with
``predict_proba(faces)`` where ``faces`` is (N, 48, 48) uint8 from :func:`emolens.preprocess.preprocess`.

ONNX Runtime is the default (no torch needed to predict); the torch path loads a ``.pt`` checkpoint and
gives the same numbers. Test-time augmentation (TTA) is done here, once, for every caller.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .preprocess import CLASSES, INPUT_SIZE, MEAN, STD, normalize

TTA = Literal["none", "flip", "shift", "crops"]
WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_MODEL = "emolens_cnn_lstm"

#: ONNX metadata keys written by ``emolens.export`` (values are JSON strings).
META_KEYS = ("emolens.format", "emolens.model", "emolens.classes", "emolens.preprocess", "emolens.metrics",
             "emolens.source_sha256")
#: ONNX metadata key of :func:`onnx_graph_sha256` (written by ``emolens.export``, checked at load when present).
WEIGHTS_KEY = "emolens.weights_sha256"


#: What every command that needs PyTorch says when it is missing: the extra, and the CPU-only wheel first
#: (a plain `pip install torch` on Linux pulls the multi-GB CUDA build).
TORCH_HINT = ("PyTorch: pip install 'emolens[train]' (CPU-only PyTorch, without the multi-GB CUDA build: "
              "pip install \"torch>=2.4,<2.14\" --index-url https://download.pytorch.org/whl/cpu first)")


class ModelError(ValueError):
    """A model file that cannot be used (missing, not a model, wrong inputs)."""


def default_model_path(kind: Literal["onnx", "pt"] = "onnx") -> Path:
    """The shipped weights inside the package."""
    return WEIGHTS_DIR / f"{DEFAULT_MODEL}.{kind}"


#: the test-time augmentation modes, defined once: the CLI's --tta choices and every check use this; the
#: ``TTA`` Literal above and ``emolens.serve.schemas.Tta`` are tested to equal it (tests/test_choices.py)
TTA_CHOICES: tuple[str, ...] = ("none", "flip", "shift", "crops")
#: what photos are classified with out of the box (EmotionRecognizer, emolens predict / evaluate, the Ray
#: engine): the mode the shipped model's PublicTest accuracy and `emolens bench predict`'s default line are for
DEFAULT_TTA: str = "shift"
#: Per-track label smoothing in video and the live stream (emolens.video.smoothing.make_smoother): auto is the
#: temporal model when one fits the image model, else an EMA of the probabilities.
SMOOTH_CHOICES: tuple[str, ...] = ("auto", "temporal", "ema", "none")


def shift_faces(faces: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(N, H, W) uint8 -> the same faces moved by (dy, dx) whole pixels, the border repeated: the views that
    training's ``crop_pad`` augmentation shows the model (whole pixels, so no resampling blur)."""
    if not (dy or dx):
        return faces
    p = max(abs(dy), abs(dx))
    pad = np.pad(faces, ((0, 0), (p, p), (p, p)), mode="edge")
    return np.ascontiguousarray(pad[:, p - dy:p - dy + faces.shape[1], p - dx:p - dx + faces.shape[2]])


def tta_views(faces: np.ndarray, tta: str = "none") -> list[np.ndarray]:
    """(N, 48, 48) uint8 -> list of views to average: none = [x]; flip = [x, mirrored x]; shift = flip plus x
    moved one pixel down-right and the mirror of x moved one pixel up-left (4 views; scripts/tta.py measures
    the sets); crops = the five 44x44 crops (corners + centre) resized back to 48 plus their mirrors (10 views)."""
    if tta == "none":
        return [faces]
    if tta == "flip":
        return [faces, faces[:, :, ::-1]]
    if tta == "shift":
        return [faces, faces[:, :, ::-1], shift_faces(faces, 1, 1), shift_faces(faces, -1, -1)[:, :, ::-1]]
    if tta == "crops":
        import cv2

        s, c = faces.shape[1], 44
        offs = [(0, 0), (0, s - c), (s - c, 0), (s - c, s - c), ((s - c) // 2, (s - c) // 2)]
        views = []
        for y, x in offs:
            crop = np.stack([cv2.resize(np.ascontiguousarray(f[y:y + c, x:x + c]), (s, s),
                                        interpolation=cv2.INTER_LINEAR) for f in faces]) if len(faces) else faces
            views += [crop, crop[:, :, ::-1]]
        return views
    raise ValueError(f"unknown TTA mode {tta!r}: use one of {', '.join(TTA_CHOICES)}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ModelError("truncated or malformed ONNX file")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def onnx_graph_sha256(data: bytes) -> str:
    """SHA-256 of the serialized graph of an ONNX file (``ModelProto.graph``, field 7: nodes and weights), read
    from the protobuf wire format directly, so the check needs neither the ``onnx`` package nor the metadata
    (which holds this checksum) to stay fixed."""
    import hashlib

    h, pos, found = hashlib.sha256(), 0, False
    while pos < len(data):
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            size, pos = _varint(data, pos)
            if field == 7:
                h.update(data[pos:pos + size])
                found = True
            pos += size
        else:
            raise ModelError(f"malformed ONNX file (wire type {wire})")
        if pos > len(data):
            raise ModelError("truncated ONNX file")
    if not found:
        raise ModelError("an ONNX file without a graph")
    return h.hexdigest()


def resolve_device(name: str = "auto") -> str:
    """The device a torch model runs on, as a string: "auto" is "cuda" where PyTorch sees a CUDA GPU, else
    "cpu"; "cuda" / "cuda:N" must exist. Importable and usable without torch (then only the CPU exists), so the
    light install can answer; training and the torch runtime turn the answer into a ``torch.device``."""
    name = (name or "auto").strip().lower()
    if name == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if name == "auto":
            return "cpu"
        raise ModelError(f"device {name!r} needs PyTorch with CUDA; without it only the CPU is used") from None
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ModelError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {name} requested but no CUDA GPU is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ModelError(f"device {name} requested but only {torch.cuda.device_count()} CUDA GPU(s) are present")
    return str(dev)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Classifier:
    """Common part: TTA, batching, softmax. Subclasses implement ``_logits(x)`` on (B, 1, 48, 48) float32."""

    name: str = ""
    classes: tuple[str, ...] = CLASSES
    metrics: dict[str, Any]
    path: Path
    runtime: str = ""
    mean: float = MEAN
    std: float = STD
    input_size: int = INPUT_SIZE

    def _logits(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_proba(self, faces: np.ndarray, tta: str = "none", batch_size: int = 256) -> np.ndarray:
        """(N, 48, 48) uint8 faces -> (N, 7) probabilities (float32), averaged over the TTA views."""
        faces = np.asarray(faces)
        if faces.ndim == 2:
            faces = faces[None]
        if faces.ndim != 3 or faces.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(f"expected faces of shape (N, {self.input_size}, {self.input_size}), got {faces.shape}")
        if faces.dtype != np.uint8:
            raise ValueError(f"expected uint8 faces from emolens.preprocess.preprocess, got {faces.dtype}")
        out = np.zeros((len(faces), len(self.classes)), np.float32)
        if len(faces) == 0:
            return out
        views = tta_views(faces, tta)
        for view in views:
            for i in range(0, len(faces), batch_size):
                x = normalize(np.ascontiguousarray(view[i:i + batch_size]), self.mean, self.std)
                out[i:i + batch_size] += softmax(self._logits(x).astype(np.float32))
        if not np.isfinite(out).all():  # never hand NaN on (JSON cannot carry it, argmax of NaN is class 0)
            raise ModelError(f"{self.path}: the model gave NaN/inf probabilities (damaged weights?)")
        return out / len(views)

    def _check_outputs(self) -> None:
        """A forward pass on fixed inputs (black, white, a gradient) at load: damaged weights that give NaN or
        inf fail here, once, with a clear message, instead of in every prediction."""
        s = self.input_size
        probe = np.stack([np.zeros((s, s), np.uint8), np.full((s, s), 255, np.uint8),
                          np.tile(np.linspace(0, 255, s).astype(np.uint8), (s, 1))])
        try:
            logits = self._logits(normalize(probe, self.mean, self.std))
        except Exception as e:  # noqa: BLE001 - a runtime failing on a valid input is a broken model
            raise ModelError(f"{self.path}: the model fails on a test input ({type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:200]})") from None
        if not np.isfinite(np.asarray(logits, np.float32)).all():
            raise ModelError(f"{self.path}: damaged weights: the model outputs NaN/inf on a test input")

    def info(self) -> dict[str, Any]:
        """Identity of the model for reports and the API."""
        from .checkpoint import file_sha256

        return {"name": self.name, "runtime": self.runtime, "path": str(self.path), "classes": list(self.classes),
                "sha256": file_sha256(self.path), "metrics": self.metrics}


def onnx_session(model: str | Path | bytes, threads: int = 0, providers: list[str] | None = None):
    """An ONNX Runtime session (the package's one factory): ``threads`` intra-op threads (0 = ORT's default),
    CPU unless ``providers`` say otherwise, ORT's own log kept to errors. ``model``: a path or the file's bytes
    (then what runs is exactly what was checksummed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=providers or ["CPUExecutionProvider"])


def read_onnx_metadata(source: Any) -> dict[str, Any]:
    """The ``emolens.*`` metadata of an ONNX model (a session, a path or the file's bytes), JSON-decoded, keys
    without the prefix; ModelError when it is not ONNX. The one reader (``emolens.export.write_metadata``
    writes it); needs only onnxruntime."""
    session = source
    if not hasattr(source, "get_modelmeta"):
        try:
            session = onnx_session(source)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            name = "model" if isinstance(source, bytes) else source
            raise ModelError(f"{name}: not an ONNX file ({why})") from None
    meta: dict[str, Any] = {}
    for key, value in sorted(session.get_modelmeta().custom_metadata_map.items()):
        if key.startswith("emolens."):
            try:
                meta[key.split(".", 1)[1]] = json.loads(value)
            except ValueError:
                meta[key.split(".", 1)[1]] = value
    return meta


def is_quantized(source: Any) -> bool:
    """Whether an ONNX model (session, path or bytes) is a quantised variant (``emolens export --int8``): such
    a file agrees with its ``.pt`` on labels, not to 1e-4, and is not quantised again."""
    return "quantization" in read_onnx_metadata(source)


class OnnxClassifier(Classifier):
    runtime = "onnx"

    def __init__(self, path: str | Path, threads: int = 0, providers: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        data = self.path.read_bytes()
        if not data:
            raise ModelError(f"{self.path}: empty file (0 bytes), not an ONNX model")
        try:  # from the bytes read: the checksum below is of exactly what runs
            self.session = onnx_session(data, threads, providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelError(f"{self.path}: not a usable ONNX model ({why})") from None
        meta = read_onnx_metadata(self.session)
        expected = meta.get(WEIGHTS_KEY.removeprefix("emolens."))
        if expected is not None and expected != onnx_graph_sha256(data):
            raise ModelError(f"{self.path}: damaged weights (their checksum does not match the one recorded at "
                             "export): use another copy of the model")
        self.classes = tuple(meta.get("classes", list(CLASSES)))
        pre = meta.get("preprocess", {})
        self.mean, self.std = float(pre.get("mean", MEAN)), float(pre.get("std", STD))
        self.input_size = int(pre.get("input_size", INPUT_SIZE))
        self.name = meta.get("model", {}).get("name", self.path.stem)
        self.metrics = meta.get("metrics", {})
        self.input_name = self.session.get_inputs()[0].name
        self._check_outputs()

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class TorchClassifier(Classifier):
    runtime = "torch"

    def __init__(self, path: str | Path, device: str = "cpu"):
        from .checkpoint import load_model, require_whole_faces

        self.path = Path(path)
        self.model, ckpt = load_model(self.path, device)
        require_whole_faces(ckpt, self.path)
        self.device = device
        self.classes = tuple(ckpt["classes"])
        pre = ckpt.get("preprocess", {})
        self.mean, self.std = float(pre.get("mean", MEAN)), float(pre.get("std", STD))
        self.input_size = int(pre.get("input_size", INPUT_SIZE))
        self.name = ckpt["model"]["name"]
        self.metrics = ckpt.get("metrics", {})
        self.checkpoint = ckpt
        self._check_outputs()

    def _logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()


def load_classifier(model: str | Path | None = None, runtime: str = "auto", threads: int = 0,
                    device: str = "cpu") -> Classifier:
    """Load a classifier: ``model`` None = the shipped one; ``.onnx`` -> ONNX Runtime; ``.pt`` -> torch.
    ``runtime`` "torch" with the shipped model uses its ``.pt`` twin."""
    if runtime not in ("auto", "onnx", "torch"):
        raise ValueError(f"unknown runtime {runtime!r}: use auto, onnx or torch")
    if model is None:
        path = default_model_path("pt" if runtime == "torch" else "onnx")
    else:
        path = Path(model)
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if runtime == "torch" or (runtime == "auto" and path.suffix == ".pt"):
        if path.suffix == ".onnx":
            raise ModelError(f"{path}: the torch runtime needs a .pt checkpoint, not an ONNX file")
        try:
            return TorchClassifier(path, device)
        except ImportError:
            raise ModelError(f"the torch runtime needs {TORCH_HINT}") from None
    if path.suffix == ".pt":
        raise ModelError(f"{path}: the onnx runtime needs an .onnx file; export one with `emolens export {path}`")
    return OnnxClassifier(path, threads)
