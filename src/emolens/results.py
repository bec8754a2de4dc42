"""Typed results of the API: :class:`Face` (one face and its emotion: photos, video, the stream, the API) and
the results of the verbs (export, ship, ...), dataclasses with attributes and ``to_dict()``; the verbs' results
also read like the plain dicts they replaced (``r["path"]``), so scripts written against those keep working.
Torch-free."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
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
