"""Pieces shared by the image training loop (:mod:`emolens.train`) and the temporal one
(:mod:`emolens.temporal.training`): the learning-rate schedule and the metrics files of a run. Torch-free."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def warmup_cosine(total: int, warm: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimiser step ``s`` (for ``LambdaLR``): linear warm-up over
    ``warm`` steps, then a cosine decay to zero at ``total``.

    >>> f = warmup_cosine(10, 2); [round(f(s), 2) for s in (0, 1, 2, 10)]
    [0.5, 1.0, 1.0, 0.0]
    """
    warm = max(int(warm), 1)

    def factor(s: int) -> float:
        return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1)))

    return factor


def write_metrics(out: Path, history: list[dict[str, Any]], final: dict[str, Any] | None = None) -> None:
    """``metrics.csv`` (one row per epoch) and ``metrics.json`` in ``out``, each written atomically. The JSON is
    the history list, or ``{"history": [...], "final": {...}}`` when ``final`` metrics are given."""
    from .checkpoint import atomic_write_bytes

    history = [{k: _finite_or_none(v) for k, v in h.items()} for h in history]
    final = None if final is None else {k: _finite_or_none(v) for k, v in final.items()}
    keys = list(history[0].keys()) if history else []
    lines = [",".join(keys)] + [",".join(f"{'' if h.get(k) is None else h[k]}" for k in keys) for h in history]
    atomic_write_bytes(Path(out) / "metrics.csv", ("\n".join(lines) + "\n").encode())
    doc: Any = history if final is None else {"history": history, "final": final}
    # allow_nan=False: a bare NaN is not JSON, and readers other than Python's reject the whole file
    atomic_write_bytes(Path(out) / "metrics.json", json.dumps(doc, indent=1, allow_nan=False).encode())


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities as None (null in JSON, an empty cell in CSV); every other value as it is."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
