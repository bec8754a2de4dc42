"""Measuring a temporal model: the temporal head vs per-frame argmax vs an exponential moving average of the
per-frame probabilities: per-frame accuracy, label flips per 100 frames, delay to follow a change."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .sequences import build_run_bank, eval_sequences


def ema_probs(probs: np.ndarray, alpha: float) -> np.ndarray:
    """(S, L, 7) -> exponential moving average along L: q_t = alpha p_t + (1 - alpha) q_{t-1}."""
    out = np.empty_like(probs)
    out[:, 0] = probs[:, 0]
    for t in range(1, probs.shape[1]):
        out[:, t] = alpha * probs[:, t] + (1 - alpha) * out[:, t - 1]
    return out


def sequence_metrics(pred: np.ndarray, labels: np.ndarray, hold: int = 3) -> dict[str, float]:
    """Per-frame accuracy, label flips per 100 frames, and how fast a true change is followed.

    ``pred`` and ``labels``: (S, L) class indices. A change at frame t0 (labels[t0] != labels[t0-1]) is
    *followed* at the first frame t >= t0 from which the prediction shows the new label for ``hold``
    frames in a row (or until the segment ends); delay = t - t0. Changes not followed before the next
    change are counted apart (``missed``)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    acc = float((pred == labels).mean())
    flips = float((pred[:, 1:] != pred[:, :-1]).sum()) / max(labels[:, 1:].size, 1) * 100
    delays: list[int] = []
    missed = 0
    for s in range(labels.shape[0]):
        row, p = labels[s], pred[s]
        starts = list(np.flatnonzero(row[1:] != row[:-1]) + 1)
        ends = starts[1:] + [len(row)] if starts else []
        for t0, t1 in zip(starts, ends, strict=True):
            ok = p[t0:t1] == row[t0]
            need = min(hold, t1 - t0)
            run = np.convolve(ok.astype(np.int64), np.ones(need, np.int64), "valid") >= need
            hit = np.flatnonzero(run)
            if len(hit):
                delays.append(int(hit[0]))
            else:
                missed += 1
    n_changes = len(delays) + missed
    return {"accuracy": acc, "flips_per_100": flips,
            "delay_frames": float(np.mean(delays)) if delays else float("nan"),
            "missed": missed / n_changes if n_changes else float("nan"), "changes": n_changes}


def measure(logits: np.ndarray, labels: np.ndarray, temporal_probs: np.ndarray | None,
            ema: tuple[float, ...] = (0.3,), hold: int = 3) -> list[dict[str, Any]]:
    """Rows of the comparison table: ground truth, per-frame argmax, EMA (each alpha), temporal model.

    ``logits`` (S, L, 7) per-frame image-model output; ``labels`` (S, L); ``temporal_probs`` (S, L, 7)."""
    from ..runtime import softmax

    probs = softmax(logits.reshape(-1, logits.shape[-1])).reshape(logits.shape)
    rows = [{"method": "ground truth", **sequence_metrics(labels, labels, hold)},
            {"method": "per-frame argmax", **sequence_metrics(probs.argmax(-1), labels, hold)}]
    for a in ema:
        rows.append({"method": f"EMA of probabilities (alpha {a:g})",
                     **sequence_metrics(ema_probs(probs, a).argmax(-1), labels, hold)})
    if temporal_probs is not None:
        rows.append({"method": "temporal LSTM", **sequence_metrics(temporal_probs.argmax(-1), labels, hold)})
    return rows


def format_table(rows: list[dict[str, Any]], title: str = "") -> str:
    """Markdown table of :func:`measure` rows."""
    lines = [title, ""] if title else []
    lines += ["| method | per-frame accuracy | label flips / 100 frames | delay to follow a change (frames) "
              "| changes not followed |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['accuracy']:.3f} | {r['flips_per_100']:.1f} | {r['delay_frames']:.1f} "
                     f"| {r['missed']:.1%} |")
    return "\n".join(lines)


def benchmark_temporal(data: str | None = None, image_model: str | None = None, temporal_model: str | None = None,
                       runtime: str = "onnx", sequences: int = 1000, length: int = 96, runs: int = 1500,
                       min_segment: int = 8, max_changes: int = 6, ema: tuple[float, ...] = (0.5, 0.3, 0.15),
                       hold: int = 3, seed: int = 1234, threads: int = 0, progress: bool = True) -> str:
    """The model-card table: held-out synthetic sequences from PublicTest, the shipped (or given) image and
    temporal models. ``runtime`` onnx runs exactly what the video pipeline runs; torch uses the .pt files."""
    from ..data import default_data_path, load_dataset
    from .checkpoint import load_pair

    t0 = time.time()
    encoder, head = load_pair(image_model, temporal_model, runtime, threads)
    public = load_dataset(data or default_data_path()).split("public")
    bank = build_run_bank(public.images, public.labels, runs, min(length, 48), encoder, seed=seed,
                          progress=progress, desc="PublicTest runs")
    emb, logits, labels = eval_sequences(bank, sequences, length, seed + 1, min_segment, max_changes)
    rows = measure(logits, labels, head.predict_windowed(emb), ema, hold)
    title = (f"Held-out synthetic sequences from PublicTest: {sequences} sequences x {length} frames "
             f"({runs} jittered runs of {len(public)} images), window {head.window} frames, {runtime} runtime, "
             f"follow = {hold} frames in a row; {time.time() - t0:.0f} s")
    return format_table(rows, title)

