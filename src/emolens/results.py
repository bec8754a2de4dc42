"""Typed results of the API: :class:`Face` (one face and its emotion: photos, video, the stream, the API) and
the results of the verbs (export, ship, ...), dataclasses with attributes and ``to_dict()``; the verbs' results
also read like the plain dicts they replaced (``r["path"]``), so scripts written against those keep working.
Torch-free."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .faces import Box


class Result(Mapping):
    """Base of a dataclass result: ``to_dict()`` for JSON, and read-only dict access to its fields."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready types (nested results and tuples become dicts and lists)."""
        def plain(v: Any) -> Any:
            if isinstance(v, Result):
                return v.to_dict()
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]


@dataclass
class Face:
    """One face in an image: ``box`` (x, y, w, h) in pixels of that image, the most probable ``emotion``, its
    ``confidence`` (0-1), ``probabilities`` of every class, and eye ``landmarks`` (x, y) when the detector gives
    them. In video and the live stream the same type also carries its ``track_id`` (one per person followed,
    None in photos) and whether this frame's detector found it (``detected``; else the tracker moved the box);
    the probabilities are then the track's smoothed ones."""

    box: Box
    emotion: str
    confidence: float
    probabilities: dict[str, float]
    landmarks: dict[str, tuple[float, float]] | None = None
    track_id: int | None = None
    detected: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready types; ``track_id`` and ``detected`` only for a tracked face."""
        d: dict[str, Any] = {
            "box": [int(v) for v in self.box], "emotion": self.emotion, "confidence": float(self.confidence),
            "probabilities": {k: float(v) for k, v in self.probabilities.items()},
            "landmarks": None if self.landmarks is None else
            {k: [float(v[0]), float(v[1])] for k, v in self.landmarks.items()}}
        if self.track_id is not None:
            d.update(track_id=int(self.track_id), detected=bool(self.detected))
        return d


@dataclass
class ModelEvaluation(Result):
    """One model's scores on one split of labelled faces (what ``emolens evaluate`` reports for it): the
    classification metrics (see :func:`emolens.evaluate.classification_metrics` for their conventions), who
    the model is (``model``: name, file, sha256, training config ...), where and how fast it ran, and, once
    the report is written, its most confident mistakes and the figure files."""

    label: str                      # "A", "B", ... when models are compared
    model: dict[str, Any]           # identity: name, file, sha256, kwargs, config, metrics, twin ...
    runtime: str                    # "onnx" or "torch"
    device: str
    count: int                      # images scored
    accuracy: float
    balanced_accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    top2_accuracy: float
    ece: float                      # expected calibration error over ``ece_bins`` equal-width bins
    ece_bins: int
    nll: float
    mean_confidence: float
    per_class: dict[str, dict[str, float]]
    classes: list[str]
    confusion_matrix: list[list[int]]   # (C, C): row = true class, column = predicted
    reliability: list[dict[str, Any]]
    emolens_version: str
    created: str
    data: dict[str, Any]            # path, split, count, class_counts, skipped
    tta: str
    batch_size: int
    host: dict[str, Any]
    seconds: dict[str, float]
    images_per_second: float | None
    confident_mistakes: list[dict[str, Any]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


@dataclass
class Evaluation(Result):
    """What :func:`emolens.evaluate.evaluate` returns: one :class:`ModelEvaluation` per model (one, unless
    models are compared), the paired comparisons of each with the first (McNemar), and the report folder.

    ``accuracy`` and the other headline scores are the first model's. ``to_dict()`` is the layout of the
    report's metrics.json: the model's own fields for one model, ``{"models": [...], "comparisons": [...],
    ...}`` for several; dict access (``r["accuracy"]``) reads that same layout."""

    models: list[ModelEvaluation]
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    out: str | None = None          # the report folder, None with save=False
    files: list[str] = field(default_factory=list)

    @property
    def first(self) -> ModelEvaluation:
        return self.models[0]

    @property
    def accuracy(self) -> float:
        return self.first.accuracy

    @property
    def balanced_accuracy(self) -> float:
        return self.first.balanced_accuracy

    @property
    def ece(self) -> float:
        return self.first.ece

    @property
    def count(self) -> int:
        return self.first.count

    def to_dict(self) -> dict[str, Any]:
        """The metrics.json layout (see the class docstring)."""
        tail = {k: v for k, v in (("out", self.out), ("files", self.files)) if v}
        if len(self.models) == 1:
            return {**self.first.to_dict(), **tail}
        shared = {k: getattr(self.first, k) for k in ("emolens_version", "created", "data", "tta", "batch_size",
                                                       "host")}
        return {**shared, "models": [m.to_dict() for m in self.models], "comparisons": self.comparisons,
                "seconds": dict(self.seconds), **tail}

    def _view(self) -> dict[str, Any]:
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())
