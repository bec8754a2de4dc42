"""Synthetic sequences from FER2013 images: FER has no video, so a "run" is one face image shown for many
frames with a smooth head motion (roll, scale, shift), the detector's crop noise, lighting drift, blur, noise and
passing occluders (:func:`jitter_run`); a sequence strings runs of different expressions together, so the label
changes inside it (:func:`assemble_sequences`). Training runs come from the Training split only; the held-out
evaluation sequences come from PublicTest only."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .runtime import FrameEncoder

@dataclass
class Jitter:
    """How much a synthetic run moves and degrades. Pose moves smoothly (a face in a video), the crop
    noise is independent per frame (a detector box never lands twice on the same pixels)."""

    rotate: float = 10.0  # head roll amplitude, degrees
    scale: float = 0.08  # zoom amplitude, fraction
    shift: float = 0.06  # drift amplitude, fraction of the side
    crop_noise: float = 0.025  # per-frame detector-box noise (shift and scale), fraction of the side
    brightness: float = 0.25  # lighting gain range (+-) and offset range (+- x 100 grey levels)
    flicker: float = 0.03  # per-frame gain noise
    blur: float = 0.15  # probability a frame is blurred (motion or defocus)
    occlude: float = 0.3  # probability a run has an occluder passing for part of it
    noise: float = 4.0  # max sensor noise, grey levels (std)


def jitter_run(face: np.ndarray, length: int, rng: np.random.Generator, jit: Jitter | None = None) -> np.ndarray:
    """One (48, 48) uint8 face -> (length, 48, 48) uint8 frames of it, as a tracked face in a video."""
    import cv2

    jit = jit or Jitter()
    s = face.shape[0]
    t = np.arange(length, dtype=np.float64)

    def wave(amplitude: float) -> np.ndarray:
        # a slow sway around a random offset: period 20-90 frames, random phase
        period = rng.uniform(20, 90)
        return amplitude * (rng.uniform(-0.6, 0.6) + 0.5 * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)))

    angle = wave(jit.rotate)
    scale = 1 + wave(jit.scale) + rng.normal(0, jit.crop_noise, length)
    tx = (wave(jit.shift) + rng.normal(0, jit.crop_noise, length)) * s
    ty = (wave(jit.shift) + rng.normal(0, jit.crop_noise, length)) * s
    gain = 1 + rng.uniform(-jit.brightness, jit.brightness) + np.cumsum(rng.normal(0, jit.flicker / 3, length))
    gain = np.clip(gain + rng.normal(0, jit.flicker, length), 0.4, 1.8)
    offset = rng.uniform(-jit.brightness, jit.brightness) * 100
    sigma = rng.uniform(0, jit.noise)
    src = face[:, ::-1] if rng.random() < 0.5 else face  # a mirrored person is another person
    src = np.ascontiguousarray(src, dtype=np.uint8)

    occ = None
    if rng.random() < jit.occlude:
        n = int(rng.integers(max(length // 6, 1), max(length // 2, 2) + 1))
        start = int(rng.integers(0, length - n + 1))
        w, h = rng.uniform(0.2, 0.45, 2) * s  # a hand, a cup, a microphone over part of the face
        x0, y0 = rng.uniform(0.15, 0.85, 2) * s - np.array([w, h]) / 2
        vx, vy = rng.normal(0, 0.01, 2) * s
        occ = (start, start + n, x0, y0, w, h, vx, vy, float(rng.uniform(20, 235)))

    out = np.empty((length, s, s), np.uint8)
    for i in range(length):
        m = cv2.getRotationMatrix2D((s / 2 - 0.5, s / 2 - 0.5), float(angle[i]), float(scale[i]))
        m[:, 2] += (tx[i], ty[i])
        f = cv2.warpAffine(src, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        f = f.astype(np.float32) * gain[i] + offset
        if rng.random() < jit.blur:
            if rng.random() < 0.5:
                f = cv2.GaussianBlur(f, (0, 0), float(rng.uniform(0.5, 1.2)))
            else:  # motion blur along a random direction
                k = int(rng.integers(3, 6))
                kernel = np.zeros((k, k), np.float32)
                kernel[k // 2, :] = 1.0 / k
                rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
                kernel = cv2.warpAffine(kernel, rot, (k, k))
                f = cv2.filter2D(f, -1, kernel / max(float(kernel.sum()), 1e-6))
        if occ is not None and occ[0] <= i < occ[1]:
            _, _, x0, y0, w, h, vx, vy, grey = occ
            xa, ya = int(round(x0 + vx * (i - occ[0]))), int(round(y0 + vy * (i - occ[0])))
            f[max(ya, 0):max(ya + int(h), 0), max(xa, 0):max(xa + int(w), 0)] = grey
        if sigma > 0:
            f = f + rng.normal(0, sigma, f.shape).astype(np.float32)
        out[i] = np.clip(f, 0, 255).astype(np.uint8)
    return out


@dataclass
class RunBank:
    """Jittered runs of face images, embedded once by the frozen encoder.

    ``labels`` (R,) class of each run; ``logits`` (R, L, 7) the image model's per-frame output;
    ``emb`` (R, L, D) its per-frame embeddings; ``frames`` (R, L, 48, 48) uint8 only when kept (fine-tuning).
    """

    labels: np.ndarray
    logits: np.ndarray
    emb: np.ndarray
    frames: np.ndarray | None = None

    @property
    def run_len(self) -> int:
        return int(self.logits.shape[1])

    def take(self, idx: np.ndarray) -> RunBank:
        return RunBank(self.labels[idx], self.logits[idx], self.emb[idx],
                       None if self.frames is None else self.frames[idx])


def build_run_bank(images: np.ndarray, labels: np.ndarray, n_runs: int, run_len: int, encoder: FrameEncoder,
                   seed: int = 0, jit: Jitter | None = None, keep_frames: bool = False, chunk: int = 128,
                   progress: bool = True, desc: str = "runs") -> RunBank:
    """``n_runs`` runs of ``run_len`` frames, each from a random image of (N, 48, 48) ``images``
    (without repeats while there are enough images), embedded by ``encoder`` in chunks."""
    rng = np.random.default_rng(seed)
    if len(images) == 0:
        from ..data import DataError

        raise DataError("no images to build sequences from")
    picks = np.concatenate([rng.permutation(len(images)) for _ in range(n_runs // len(images) + 1)])[:n_runs]
    out_logits, out_emb, out_frames = [], [], []
    bar = progress_bar(n_runs, desc, progress)
    for i in range(0, n_runs, chunk):
        sel = picks[i:i + chunk]
        frames = np.stack([jitter_run(images[j], run_len, rng, jit) for j in sel])  # (c, L, 48, 48)
        logits, emb = encoder.encode(frames.reshape(-1, *frames.shape[2:]))
        out_logits.append(logits.reshape(len(sel), run_len, -1))
        out_emb.append(emb.reshape(len(sel), run_len, -1))
        if keep_frames:
            out_frames.append(frames)
        if bar is not None:
            bar.update(len(sel))
    if bar is not None:
        bar.close()
    return RunBank(labels[picks].astype(np.int64), np.concatenate(out_logits), np.concatenate(out_emb),
                   np.concatenate(out_frames) if keep_frames else None)


def _segment_lengths(length: int, rng: np.random.Generator, min_segment: int, max_segment: int,
                     max_changes: int) -> list[int]:
    """Random segment lengths summing to ``length``, each in [min_segment, max_segment]."""
    lo = max(math.ceil(length / max_segment) - 1, 0)
    hi = max(min(max_changes, length // max(min_segment, 1) - 1), lo)
    for _ in range(100):
        k = int(rng.integers(lo, hi + 1))
        extra = length - (k + 1) * min_segment
        if extra < 0:
            continue
        lengths = min_segment + rng.multinomial(extra, rng.dirichlet(np.ones(k + 1)))
        if lengths.max() <= max_segment:
            return [int(n) for n in lengths]
    raise ValueError(f"cannot cut {length} frames into segments of {min_segment}-{max_segment} frames "
                     f"with at most {max_changes} changes")


def assemble_sequences(run_labels: np.ndarray, run_len: int, n_seq: int, length: int, rng: np.random.Generator,
                       min_segment: int = 8, max_changes: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences of ``length`` frames strung from runs: (run index, frame index, label), each (S, T) int64.

    Each segment is a window of one run; consecutive segments show different expressions, so every
    segment boundary is a true change of label. The first segment may start mid-run (the video began
    while the face already showed it)."""
    n_runs = len(run_labels)
    if len(np.unique(run_labels)) < 2 and max_changes > 0:
        max_changes = 0
    run_idx = np.empty((n_seq, length), np.int64)
    frame_idx = np.empty((n_seq, length), np.int64)
    for s in range(n_seq):
        pos, prev = 0, -1
        for n in _segment_lengths(length, rng, min_segment, min(run_len, length), max_changes):
            r = int(rng.integers(n_runs))
            while run_labels[r] == prev:
                r = int(rng.integers(n_runs))
            off = int(rng.integers(0, run_len - n + 1))
            run_idx[s, pos:pos + n] = r
            frame_idx[s, pos:pos + n] = np.arange(off, off + n)
            pos, prev = pos + n, run_labels[r]
    return run_idx, frame_idx, run_labels[run_idx]


def eval_sequences(bank: RunBank, n_seq: int, length: int, seed: int, min_segment: int,
                   max_changes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed held-out sequences from a bank: (emb (S, L, D), logits (S, L, 7), labels (S, L))."""
    rng = np.random.default_rng(seed)
    ri, fi, lab = assemble_sequences(bank.labels, bank.run_len, n_seq, length, rng, min_segment, max_changes)
    return bank.emb[ri, fi], bank.logits[ri, fi], lab


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr (None when disabled): the long steps of building sequences and loading clips."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)

