"""Per-track label smoothing: none, an exponential moving average of the probabilities, or the temporal LSTM over
each track's last frame embeddings (:mod:`emolens.temporal`), and :func:`make_smoother`, which picks one (auto:
the temporal model when one fits the image model, else the EMA). One smoother serves one stream; ``new()`` gives
a fresh one with the same settings for the next stream (a temporal head, read-only, is shared)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


class Smoother:
    """Per-track label smoothing: ``update(track_id, probs (7,), emb (D,)) -> probs (7,)``."""

    name = "none"

    def update(self, track_id: int, probs: np.ndarray, emb: np.ndarray | None) -> np.ndarray:
        return probs

    def drop(self, track_id: int) -> None:
        pass

    def new(self) -> Smoother:
        """A fresh smoother with these settings and no track history (one per stream)."""
        return Smoother()


class EmaSmoother(Smoother):
    """q_t = alpha p_t + (1 - alpha) q_{t-1} per track."""

    def __init__(self, alpha: float = 0.3):
        if not 0 < alpha <= 1:
            raise ValueError("EMA alpha must be in (0, 1]")
        self.alpha = alpha
        self.name = f"ema {alpha:g}"
        self.state: dict[int, np.ndarray] = {}

    def new(self) -> EmaSmoother:
        return EmaSmoother(self.alpha)

    def update(self, track_id: int, probs: np.ndarray, emb: np.ndarray | None) -> np.ndarray:
        q = self.state.get(track_id)
        q = probs if q is None else self.alpha * probs + (1 - self.alpha) * q
        self.state[track_id] = q
        return q

    def drop(self, track_id: int) -> None:
        self.state.pop(track_id, None)


class TemporalSmoother(Smoother):
    """The temporal LSTM over each track's last ``head.window`` frame embeddings (the frame being labelled
    last), as in training (:meth:`emolens.temporal.TemporalHead.predict_windowed`)."""

    name = "temporal"

    def __init__(self, head):
        self.head = head
        self.state: dict[int, deque] = {}

    def new(self) -> TemporalSmoother:
        """Shares the (read-only) head: loading it once serves every stream."""
        return TemporalSmoother(self.head)

    def update(self, track_id: int, probs: np.ndarray, emb: np.ndarray | None) -> np.ndarray:
        from ..runtime import softmax

        if emb is None:
            return probs
        buf = self.state.setdefault(track_id, deque(maxlen=self.head.window))
        buf.append(np.asarray(emb, np.float32))
        logits = self.head.logits(np.stack(buf)[None])[0, -1]
        return softmax(logits[None])[0]

    def drop(self, track_id: int) -> None:
        self.state.pop(track_id, None)


def encoder_for_classifier(classifier) -> Any:
    """A :class:`emolens.temporal.FrameEncoder` over an image classifier (:func:`emolens.runtime.load_classifier`),
    or None when the model gives no embeddings (an ONNX file exported without the ``embedding`` output)."""
    from ..runtime import ModelError
    from ..temporal.runtime import OnnxFrameEncoder, TorchFrameEncoder

    if getattr(classifier, "runtime", "") == "torch":
        return TorchFrameEncoder(classifier.model, getattr(classifier, "device", "cpu"))
    try:
        return OnnxFrameEncoder.from_classifier(classifier)
    except ModelError:
        return None


def frame_encoder_for(recognizer) -> Any:
    """:func:`encoder_for_classifier` of an :class:`emolens.predict.EmotionRecognizer`'s classifier."""
    return encoder_for_classifier(recognizer.classifier)


def make_smoother(smooth: str, encoder, temporal_model: str | None = None, ema: float = 0.3,
                  warn: Callable[[str], None] | None = None, image_model: str | Path | None = None) -> Smoother:
    """``smooth`` temporal | ema | none | auto (temporal when a temporal model fits the image model, else EMA).
    ``image_model``: the image checkpoint a ``.pt`` temporal model is loaded with (the encoder's file)."""
    from ..checkpoint import CheckpointError
    from ..runtime import SMOOTH_CHOICES, ModelError
    from ..temporal.runtime import OnnxTemporalHead, TorchTemporalHead, check_probe, default_temporal_path

    if smooth not in SMOOTH_CHOICES:
        raise ValueError(f"unknown smoothing {smooth!r}: use one of {', '.join(SMOOTH_CHOICES)}")
    if smooth == "none":
        return Smoother()
    if smooth == "ema":
        return EmaSmoother(ema)
    try:
        if encoder is None:
            raise ModelError("the image model gives no embeddings (export it again with `emolens export`)")
        path = Path(temporal_model) if temporal_model else default_temporal_path("onnx")
        if smooth == "auto" and not temporal_model and not path.is_file():
            return EmaSmoother(ema)  # no temporal model shipped: the summary line says which smoothing ran
        if path.suffix == ".pt":
            from ..temporal.checkpoint import load_temporal_model

            model, ckpt = load_temporal_model(path, image_model if Path(str(image_model)).suffix == ".pt" else None)
            head = TorchTemporalHead(model, meta=ckpt)
            ref = ckpt["encoder"]
        else:
            head = OnnxTemporalHead(path)
            ref = head.meta.get("encoder", {})
        probe = ref.get("probe", [])
        if head.dim != encoder.dim:
            raise ModelError(f"{path}: reads {head.dim}-d embeddings, the image model gives {encoder.dim}-d")
        if len(probe):
            check_probe(encoder, np.asarray(probe, np.float32), str(path), encoder_sha256=ref.get("sha256"))
        return TemporalSmoother(head)
    except (ModelError, CheckpointError) as e:
        if smooth == "temporal":
            raise
        if warn:
            warn(f"note: temporal model not used ({e}); smoothing with an EMA of probabilities instead")
        return EmaSmoother(ema)
