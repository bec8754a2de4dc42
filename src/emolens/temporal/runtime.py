"""The inference side of the temporal model, torch-free unless a torch model is given: frame encoders (faces ->
logits + embeddings of the image model), temporal heads ((B, T, D) embeddings -> (B, T, 7) logits) and the probe
check that a head is only used with the image model it was trained on. The video pipeline runs on these with
numpy and ONNX Runtime alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..preprocess import CLASSES, INPUT_SIZE, MEAN, STD, normalize

#: File name stem of the shipped temporal head, next to the shipped image model.
DEFAULT_TEMPORAL = "emolens_temporal"
TEMPORAL_FORMAT = "emolens-temporal"


def default_temporal_path(kind: str = "onnx") -> Path:
    from ..runtime import WEIGHTS_DIR

    return WEIGHTS_DIR / f"{DEFAULT_TEMPORAL}.{kind}"


# ----------------------------------------------------------------------------------------------------
# frame encoders: faces -> (logits, embeddings), torch or ONNX


class FrameEncoder:
    """(N, 48, 48) uint8 faces -> ((N, 7) logits, (N, D) embeddings) of the image model, no TTA."""

    name: str = ""
    dim: int = 0
    #: sha256 of the checkpoint this encoder was exported from (ONNX metadata), None when unknown
    source_sha256: str | None = None

    def encode(self, faces: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
        faces = np.asarray(faces, np.uint8)
        if faces.ndim == 2:
            faces = faces[None]
        logits, emb = [], []
        for i in range(0, len(faces), batch_size):
            lg, em = self._run(normalize(np.ascontiguousarray(faces[i:i + batch_size]), MEAN, STD))
            logits.append(lg.astype(np.float32))
            emb.append(em.astype(np.float32))
        if not logits:
            return np.zeros((0, len(CLASSES)), np.float32), np.zeros((0, self.dim), np.float32)
        return np.concatenate(logits), np.concatenate(emb)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


class TorchFrameEncoder(FrameEncoder):
    """The encoder part of a torch image model (``forward_features`` + ``forward_head(pre_logits=True)``)."""

    def __init__(self, model, device: str = "cpu"):
        self.model = model.eval()
        self.device = device
        self.name = getattr(model, "model_name", type(model).__name__)
        self.dim = int(model.embed_dim)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            z = self.model.forward_head(self.model.forward_features(t), pre_logits=True)  # (B, D)
            logits = self.model.fc(z)
            return logits.float().cpu().numpy(), z.float().cpu().numpy()


class OnnxFrameEncoder(FrameEncoder):
    """An exported image model with a second output ``embedding`` (B, D) next to its logits."""

    def __init__(self, path: str | Path | None = None, threads: int = 0, classifier=None):
        from ..runtime import ModelError, OnnxClassifier, read_onnx_metadata

        self.classifier = classifier if classifier is not None else OnnxClassifier(path, threads)
        path = self.classifier.path
        sess = self.classifier.session
        outs = [o.name for o in sess.get_outputs()]
        if "embedding" not in outs:
            raise ModelError(f"{path}: this ONNX model has no 'embedding' output, which the temporal model "
                             "needs; export it again with a current `emolens export`")
        self.outputs = [n for n in outs if n != "embedding"][:1] + ["embedding"]
        self.input_name = sess.get_inputs()[0].name
        self.name = self.classifier.name
        self.dim = int(sess.get_outputs()[outs.index("embedding")].shape[-1])
        self.path = Path(path)
        self.source_sha256 = read_onnx_metadata(sess).get("source_sha256") or None

    @classmethod
    def from_classifier(cls, classifier) -> OnnxFrameEncoder:
        """Share the session of an :class:`emolens.runtime.OnnxClassifier` already loaded."""
        return cls(classifier=classifier)

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, emb = self.classifier.session.run(self.outputs, {self.input_name: x})
        return logits, emb


def probe_faces(n: int = 4) -> np.ndarray:
    """(n, 48, 48) uint8 fixed test patterns: the temporal head stores the encoder's embeddings of them, so
    an image model that gives other embeddings (other weights) is caught before it gives wrong labels.
    Half precision or an ONNX export of the same weights passes."""
    import cv2

    rng = np.random.default_rng(20240601)
    yy, xx = np.mgrid[0:INPUT_SIZE, 0:INPUT_SIZE].astype(np.float32) / INPUT_SIZE
    out = []
    for i in range(n):
        base = 128 + 90 * np.sin(2 * np.pi * ((i + 1) * xx + (i % 3) * yy)) * np.cos(np.pi * (i + 2) * yy)
        base = base + cv2.GaussianBlur(rng.normal(0, 40, (INPUT_SIZE, INPUT_SIZE)).astype(np.float32), (0, 0), 2)
        out.append(np.clip(base, 0, 255).astype(np.uint8))
    return np.stack(out)


#: Probe tolerance for an encoder exported from the very checkpoint the head was trained on (its ONNX metadata's
#: ``source_sha256`` is the head's ``encoder.sha256``): int8 quantisation moves the shipped encoder's probe
#: embeddings by 5.6 %, another image model by 120-130 % (measured 2026-12-05 on the shipped pair).
SAME_SOURCE_TOL = 0.25


def check_probe(encoder: FrameEncoder, probe: np.ndarray, what: str, tol: float = 0.05,
                encoder_sha256: str | None = None) -> float:
    """Relative distance between ``encoder``'s embeddings of :func:`probe_faces` and the stored ones;
    ModelError when above ``tol`` (the temporal head was trained on another image model). ``encoder_sha256``:
    the head's record of its image checkpoint; an encoder exported from that checkpoint (a quantised ONNX
    file, say) may differ by up to :data:`SAME_SOURCE_TOL`."""
    from ..runtime import ModelError

    if encoder_sha256 and encoder.source_sha256 == encoder_sha256:
        tol = max(tol, SAME_SOURCE_TOL)
    probe = np.asarray(probe, np.float32)
    _, emb = encoder.encode(probe_faces(len(probe)))
    if emb.shape != probe.shape:
        raise ModelError(f"{what}: built on an image model with {probe.shape[-1]}-d embeddings, this one gives "
                         f"{emb.shape[-1]}-d; train a temporal model for it with `emolens train --task sequence`")
    dist = float(np.linalg.norm(emb - probe) / max(np.linalg.norm(probe), 1e-6))
    if dist > tol:
        raise ModelError(f"{what}: built on another image model (embeddings differ by {dist:.0%}); train a temporal "
                         "model for this one with `emolens train --task sequence --image-model MODEL.pt`")
    return dist


# ----------------------------------------------------------------------------------------------------
# temporal heads at inference: (B, T, D) embeddings -> (B, T, 7) logits


class TemporalHead:
    """The LSTM head alone; ``window`` is the number of recent frames it reads."""

    window: int = 32
    dim: int = 0
    meta: dict[str, Any]

    def logits(self, emb: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_windowed(self, emb: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """(S, L, D) -> (S, L, 7) probabilities where frame t sees only frames t-window+1..t, exactly as a
        live video is labelled (:class:`emolens.video.TemporalSmoother`)."""
        from ..runtime import softmax

        s, length, _ = emb.shape
        out = np.zeros((s, length, len(CLASSES)), np.float32)
        for t in range(length):
            a = max(0, t - self.window + 1)
            for i in range(0, s, batch_size):
                z = self.logits(np.ascontiguousarray(emb[i:i + batch_size, a:t + 1], np.float32))[:, -1]
                out[i:i + batch_size, t] = softmax(z)
        return out


class OnnxTemporalHead(TemporalHead):
    def __init__(self, path: str | Path, threads: int = 0):
        from ..runtime import ModelError, onnx_session, read_onnx_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such temporal model file")
        try:
            self.session = onnx_session(self.path, threads)
        except Exception as e:  # onnxruntime has its own exception types
            raise ModelError(f"{self.path}: not a usable ONNX model ({str(e).splitlines()[0][:200]})") from None
        self.meta = read_onnx_metadata(self.session)
        if self.meta.get("format") != TEMPORAL_FORMAT:
            raise ModelError(f"{self.path}: not an emolens temporal model (no '{TEMPORAL_FORMAT}' metadata)")
        self.window = int(self.meta["sequence"]["window"])
        self.dim = int(self.session.get_inputs()[0].shape[-1])
        self.input_name = self.session.get_inputs()[0].name

    def logits(self, emb: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: emb.astype(np.float32)})[0]


class TorchTemporalHead(TemporalHead):
    def __init__(self, model, window: int | None = None, meta: dict | None = None):
        self.model = model.eval()
        self.window = int(window or model.num_frames)
        self.dim = int(model.frame_dim)
        self.meta = meta or {}

    def logits(self, emb: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.forward_sequence(torch.from_numpy(emb)).float().numpy()


