"""emolens: facial emotion recognition (FER2013) with a CNN + LSTM.

Quick use::

    from emolens import EmotionRecognizer
    faces = EmotionRecognizer().predict("photo.jpg")   # [Face(box, emotion, confidence, probabilities)]

Imports are lazy: ``import emolens`` loads neither torch nor OpenCV.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "EmotionRecognizer": "predict", "Face": "predict", "predict_emotion": "predict", "detect_emotion": "predict",
    "to_dataframe": "predict", "BoxError": "predict", "NoFaceError": "predict", "ImageError": "predict",
    "load_dataset": "data", "FERDataset": "data", "preprocess": "preprocess", "CLASSES": "preprocess",
    "create_model": "models", "list_models": "models", "load_classifier": "runtime",
    "TrainConfig": "config",
}
# Training and evaluation are ``emolens.train.train(cfg)`` and ``emolens.evaluate.evaluate(...)``: exporting the
# functions here as ``emolens.train`` would be shadowed by the submodule of the same name once it is imported.

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'emolens' has no attribute {name!r}")
