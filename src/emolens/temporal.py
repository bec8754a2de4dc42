"""The temporal model: sequences of face frames, how it is trained, and how it is measured.

* **Synthetic sequences from FER2013** (:func:`jitter_run`, :func:`assemble_sequences`): FER has no video,
  so a "run" is one face image shown for many frames with a smooth head motion (roll, scale, shift), the
  detector's crop noise, lighting drift, blur, noise and passing occluders; a sequence strings runs of
  different expressions together, so the label changes inside it. Training runs come from the Training
  split only; the held-out evaluation sequences come from PublicTest only.
* **User sequence data** (:func:`load_sequence_folder`): ``<class>/<clip>/*.png`` frames or
  ``<class>/*.mp4`` clips, one label per clip.
* **Training** (:func:`train_sequence`): the image model's encoder is frozen by default, so each frame is
  embedded once and only the small LSTM head is trained on (B, T, D) embeddings (minutes on a CPU).
  ``finetune: true`` trains the encoder too, on frames.
* **Measurement** (:func:`measure`): temporal model vs per-frame argmax vs an exponential moving average of
  the per-frame probabilities: per-frame accuracy, label flips per 100 frames, delay to follow a change.

The inference side (:class:`OnnxFrameEncoder`, :class:`OnnxTemporalHead`) needs only numpy and ONNX Runtime:
the video pipeline runs without torch. Torch is imported inside the functions that train.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .preprocess import CLASSES, INPUT_SIZE, MEAN, STD, normalize

#: File name stem of the shipped temporal head, next to the shipped image model.
DEFAULT_TEMPORAL = "emolens_temporal"
TEMPORAL_FORMAT = "emolens-temporal"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif")


def default_temporal_path(kind: str = "onnx") -> Path:
    from .runtime import WEIGHTS_DIR

    return WEIGHTS_DIR / f"{DEFAULT_TEMPORAL}.{kind}"


# ----------------------------------------------------------------------------------------------------
# synthetic sequences


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
        from .data import DataError

        raise DataError("no images to build sequences from")
    picks = np.concatenate([rng.permutation(len(images)) for _ in range(n_runs // len(images) + 1)])[:n_runs]
    out_logits, out_emb, out_frames = [], [], []
    bar = _bar(n_runs, desc, progress)
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


# ----------------------------------------------------------------------------------------------------
# frame encoders: faces -> (logits, embeddings), torch or ONNX


class FrameEncoder:
    """(N, 48, 48) uint8 faces -> ((N, 7) logits, (N, D) embeddings) of the image model, no TTA."""

    name: str = ""
    dim: int = 0

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
        from .runtime import ModelError, OnnxClassifier

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


def check_probe(encoder: FrameEncoder, probe: np.ndarray, what: str, tol: float = 0.05) -> float:
    """Relative distance between ``encoder``'s embeddings of :func:`probe_faces` and the stored ones;
    ModelError when above ``tol`` (the temporal head was trained on another image model)."""
    from .runtime import ModelError

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
        from .runtime import softmax

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
        import onnxruntime as ort

        from .runtime import ModelError

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such temporal model file")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime has its own exception types
            raise ModelError(f"{self.path}: not a usable ONNX model ({str(e).splitlines()[0][:200]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("emolens.format") != json.dumps(TEMPORAL_FORMAT):
            raise ModelError(f"{self.path}: not an emolens temporal model (no '{TEMPORAL_FORMAT}' metadata)")
        self.meta = {k.split(".", 1)[1]: json.loads(v) for k, v in meta.items() if k.startswith("emolens.")}
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


# ----------------------------------------------------------------------------------------------------
# measurement


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
    from .runtime import softmax

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


def eval_sequences(bank: RunBank, n_seq: int, length: int, seed: int, min_segment: int,
                   max_changes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed held-out sequences from a bank: (emb (S, L, D), logits (S, L, 7), labels (S, L))."""
    rng = np.random.default_rng(seed)
    ri, fi, lab = assemble_sequences(bank.labels, bank.run_len, n_seq, length, rng, min_segment, max_changes)
    return bank.emb[ri, fi], bank.logits[ri, fi], lab


def benchmark_temporal(data: str | None = None, image_model: str | None = None, temporal_model: str | None = None,
                       runtime: str = "onnx", sequences: int = 1000, length: int = 96, runs: int = 1500,
                       min_segment: int = 8, max_changes: int = 6, ema: tuple[float, ...] = (0.5, 0.3, 0.15),
                       hold: int = 3, seed: int = 1234, threads: int = 0, progress: bool = True) -> str:
    """The model-card table: held-out synthetic sequences from PublicTest, the shipped (or given) image and
    temporal models. ``runtime`` onnx runs exactly what the video pipeline runs; torch uses the .pt files."""
    from .data import default_data_path, load_dataset

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


def load_pair(image_model: str | Path | None = None, temporal_model: str | Path | None = None,
              runtime: str = "onnx", threads: int = 0) -> tuple[FrameEncoder, TemporalHead]:
    """A frame encoder and a temporal head that belong together (checked with the probe faces).

    ``runtime`` onnx: ``image_model`` .onnx (default shipped) + ``temporal_model`` .onnx (default shipped);
    torch: the .pt twins."""
    from .runtime import ModelError, default_model_path

    if runtime not in ("onnx", "torch"):
        raise ValueError(f"unknown runtime {runtime!r}: use onnx or torch")
    kind = "pt" if runtime == "torch" else "onnx"
    img = Path(image_model) if image_model else default_model_path(kind)
    tmp = Path(temporal_model) if temporal_model else default_temporal_path(kind)
    for p, what in ((img, "image model"), (tmp, "temporal model")):
        if not p.is_file():
            raise ModelError(f"{p}: no such {what} file" + (
                "; train one with `emolens train --task sequence`" if what == "temporal model" else ""))
    if runtime == "onnx":
        encoder: FrameEncoder = OnnxFrameEncoder(img, threads)
        head: TemporalHead = OnnxTemporalHead(tmp, threads)
        probe = np.asarray(head.meta.get("encoder", {}).get("probe", []), np.float32)
    else:
        model, ckpt = load_temporal_model(tmp, img)
        encoder = TorchFrameEncoder(model.encoder)
        head = TorchTemporalHead(model, meta=ckpt)
        probe = np.asarray(ckpt["encoder"]["probe"], np.float32)
    if head.dim != encoder.dim:
        raise ModelError(f"{tmp}: reads {head.dim}-d embeddings but {img} gives {encoder.dim}-d")
    if probe.size:
        check_probe(encoder, probe, f"{tmp} with {img}")
    return encoder, head


# ----------------------------------------------------------------------------------------------------
# user sequence data


def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES


def is_sequence_folder(path: str | Path) -> bool:
    """True for a folder of ``<class>/<clip>/`` frame folders or ``<class>/*.mp4`` clips."""
    from .data import CLASS_ALIASES

    p = Path(path)
    if not p.is_dir():
        return False
    for cls in p.iterdir():
        if cls.is_dir() and cls.name.lower() in CLASS_ALIASES and CLASS_ALIASES[cls.name.lower()]:
            if any(c.is_dir() or _is_video(c) for c in cls.iterdir()):
                return True
    return False


def load_sequence_folder(path: str | Path, face_crops=None, max_frames: int = 600,
                         progress: bool = True) -> list[tuple[str, np.ndarray, int]]:
    """[(clip name, (n, 48, 48) uint8 face frames, class index)] from ``<class>/<clip>/`` or ``<class>/*.mp4``.

    ``face_crops(frames_bgr) -> (n, 48, 48)`` finds and follows the face in a clip (default
    :func:`emolens.video.clip_face_crops`: the detector + tracker; frames that are already face crops
    are used whole)."""
    import cv2

    from .data import IMAGE_SUFFIXES, DataError, decode_image, resolve_class

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of <class>/<clip>/ frames or <class>/*.mp4 clips")
    if face_crops is None:
        import functools

        from .faces import create_detector
        from .video import clip_face_crops

        # one detector for every clip: loading a cascade takes longer than detecting in a short clip
        face_crops = functools.partial(clip_face_crops, detector=create_detector("auto"))
    items: list[tuple[str, Path, int]] = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        label = resolve_class(cls.name, str(root))
        for clip in sorted(cls.iterdir()):
            if clip.is_dir() or _is_video(clip):
                items.append((f"{cls.name}/{clip.name}", clip, label))
    if not items:
        raise DataError(f"{root}: no clips found (expected <class>/<clip>/ frame folders or <class>/*.mp4)")
    out = []
    bar = _bar(len(items), "clips", progress)
    for name, clip, label in items:
        if clip.is_dir():
            files = sorted(f for f in clip.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:max_frames]
            frames = []
            for f in files:
                img = decode_image(f.read_bytes(), str(f))
                frames.append(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img)
        else:
            from .video import read_frames

            frames = read_frames(clip, max_frames)
        if len(frames) < 2:
            raise DataError(f"{clip}: a clip needs at least 2 frames, found {len(frames)}")
        out.append((name, face_crops(frames), label))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


# ----------------------------------------------------------------------------------------------------
# training


@dataclass
class SequenceConfig:
    data: str = field(default="", metadata={
        "help": "FER data to synthesise sequences from (default: EMOLENS_FER2013), or a folder of "
                "<class>/<clip>/ frames or <class>/*.mp4 clips"})
    image_model: str = field(default="", metadata={
        "help": "image checkpoint (.pt) whose encoder feeds the LSTM (default: the shipped one)"})
    model: str = field(default="temporal_lstm", metadata={"help": "registered sequence model"})
    model_kwargs: dict = field(default_factory=dict, metadata={"help": "model arguments, e.g. {hidden: 96}"})
    seq_len: int = field(default=32, metadata={"help": "frames per training sequence = the window at inference"})
    train_runs: int = field(default=2500, metadata={"help": "jittered runs synthesised from Training images"})
    min_segment: int = field(default=8, metadata={"help": "shortest expression segment, frames"})
    max_changes: int = field(default=2, metadata={"help": "most expression changes per training sequence"})
    epochs: int = field(default=12, metadata={"help": "epochs (each a fresh draw of sequences)"})
    steps_per_epoch: int = field(default=100, metadata={"help": "optimiser steps per epoch"})
    batch_size: int = field(default=64, metadata={"help": "sequences per optimiser step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (AdamW, cosine)"})
    weight_decay: float = field(default=1e-2, metadata={"help": "weight decay"})
    label_smoothing: float = field(default=0.05, metadata={"help": "label smoothing of the per-frame loss"})
    emb_noise: float = field(default=0.6, metadata={
        "help": "Gaussian noise on the (normalised) embedding the LSTM reads, in training (model_kwargs proj > 0)"})
    smooth_loss: float = field(default=4.0, metadata={
        "help": "weight of the penalty on probability changes between frames of the same expression"})
    finetune: bool = field(default=False, metadata={"help": "train the image encoder too (slow on CPU)"})
    encoder_lr: float = field(default=1e-4, metadata={"help": "encoder learning rate when fine-tuning"})
    val_fraction: float = field(default=0.1, metadata={
        "help": "Training images (or clips) held out for the validation columns of the log"})
    eval_sequences: int = field(default=1000, metadata={"help": "held-out PublicTest sequences for the table"})
    eval_len: int = field(default=96, metadata={"help": "frames per held-out sequence"})
    eval_runs: int = field(default=1500, metadata={"help": "jittered runs synthesised from PublicTest images"})
    ema: tuple[float, ...] = field(default=(0.5, 0.3, 0.15), metadata={"help": "EMA alphas compared in the table"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    threads: int = field(default=0, metadata={"help": "CPU threads (0 = torch default)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    out: str = field(default="", metadata={"help": "run folder (default runs/train/temporal-<time>)"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def validate(self) -> None:
        from .config import ConfigError
        from .models import _REGISTRY

        if self.model not in _REGISTRY or self.model != "temporal_lstm":
            raise ConfigError(f"model: --task sequence trains temporal_lstm, not {self.model!r}")
        for name in ("seq_len", "train_runs", "epochs", "steps_per_epoch", "batch_size", "min_segment",
                     "eval_len", "eval_runs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1")
        if self.min_segment > self.seq_len:
            raise ConfigError(f"min_segment: {self.min_segment} is longer than seq_len {self.seq_len}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError("val_fraction: must be in [0, 1)")
        if any(not 0 < a <= 1 for a in self.ema):
            raise ConfigError("ema: each alpha must be in (0, 1]")


def add_sequence_arguments(parser) -> None:
    """The ``--task sequence`` options that ``emolens train`` does not already have."""
    import dataclasses

    from .config import TrainConfig, field_help, field_metavar

    have = {f.name for f in dataclasses.fields(TrainConfig)}
    group = parser.add_argument_group("SequenceConfig options (--task sequence)")
    for f in dataclasses.fields(SequenceConfig):
        if f.name in have:
            continue
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                           metavar=field_metavar(SequenceConfig, f), help=field_help(f).replace("%", "%%"))


def train_sequence_cli(args) -> int:
    """``emolens train --task sequence``: SequenceConfig from defaults <- --config YAML <- flags."""
    import dataclasses

    from .config import ConfigError, TrainConfig, load_config

    if getattr(args, "resume", None):
        raise ConfigError("--resume: the temporal model trains in minutes; start it again instead")
    fields = {f.name for f in dataclasses.fields(SequenceConfig)}
    unused = [f.name for f in dataclasses.fields(TrainConfig)
              if f.name not in fields and getattr(args, f.name, None) is not None]
    if unused:
        raise ConfigError(f"--task sequence does not use {', '.join('--' + u.replace('_', '-') for u in unused)}")
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k, None) is not None}
    cfg = load_config(SequenceConfig, args.config, overrides)
    train_sequence(cfg)
    return 0


def _bar(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def _resolve_image_model(cfg: SequenceConfig) -> Path:
    from .runtime import ModelError, default_model_path

    if cfg.image_model:
        p = Path(cfg.image_model)
    else:
        p = default_model_path("pt")
        if not p.is_file():
            raise ModelError(f"{p}: no shipped image model; give one with --image-model runs/train/<run>/best.pt")
    if not p.is_file():
        raise ModelError(f"{p}: no such image model file")
    if p.suffix != ".pt":
        raise ModelError(f"{p}: the temporal model is trained on a torch checkpoint (.pt), not {p.suffix}")
    return p


def _clip_bank(clips: list[tuple[str, np.ndarray, int]], encoder: FrameEncoder, keep_frames: bool) -> RunBank:
    """User clips as runs: clips are cut or padded (label -100, ignored) to a common length."""
    length = max(len(c[1]) for c in clips)
    logits = np.zeros((len(clips), length, len(CLASSES)), np.float32)
    emb = np.zeros((len(clips), length, encoder.dim), np.float32)
    labels = np.full((len(clips), length), -100, np.int64)
    frames = np.zeros((len(clips), length, INPUT_SIZE, INPUT_SIZE), np.uint8) if keep_frames else None
    for i, (_, f, y) in enumerate(clips):
        lg, em = encoder.encode(f)
        logits[i, :len(f)], emb[i, :len(f)], labels[i, :len(f)] = lg, em, y
        if frames is not None:
            frames[i, :len(f)] = f
    bank = RunBank(np.array([c[2] for c in clips], np.int64), logits, emb, frames)
    bank.frame_labels = labels  # type: ignore[attr-defined]
    return bank


def _clip_windows(bank: RunBank, n_seq: int, length: int, rng: np.random.Generator):
    """Random windows of user clips (a clip shorter than ``length`` is padded with ignored frames)."""
    lab = bank.frame_labels  # type: ignore[attr-defined]
    valid = (lab >= 0).sum(1)
    r = rng.integers(len(lab), size=n_seq)
    starts = np.array([rng.integers(0, max(valid[i] - length, 0) + 1) for i in r])
    fi = np.minimum(starts[:, None] + np.arange(length)[None], lab.shape[1] - 1)
    labels = np.where(starts[:, None] + np.arange(length)[None] < valid[r][:, None], lab[r[:, None], fi], -100)
    return np.repeat(r[:, None], length, 1), fi, labels


def train_sequence(cfg: SequenceConfig) -> Path:
    """Train the temporal head (frozen encoder: on precomputed embeddings) and write to the run folder:
    temporal.pt (head + reference to the image checkpoint), temporal.onnx ((B, T, D) embeddings ->
    (B, T, 7) logits), config.yaml, metrics.json/csv, measure.md (the comparison table)."""
    import torch
    import torch.nn.functional as F

    from .checkpoint import atomic_write_bytes, load_model
    from .config import save_config, to_dict
    from .data import default_data_path, load_dataset
    from .models import create_model
    from .train import seed_everything, select_device

    t_start = time.time()
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    img_path = _resolve_image_model(cfg)
    image_model, img_ckpt = load_model(img_path, str(device))
    out = Path(cfg.out or f"runs/train/temporal-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    kwargs = {"encoder": img_ckpt["model"]["name"], "encoder_kwargs": dict(img_ckpt["model"]["kwargs"]),
              "num_frames": cfg.seq_len, **cfg.model_kwargs}
    model = create_model(cfg.model, **kwargs)
    model.encoder.load_state_dict(image_model.state_dict())
    model.to(device)
    encoder = TorchFrameEncoder(model.encoder, str(device))
    rng = np.random.default_rng(cfg.seed)

    user = bool(cfg.data) and is_sequence_folder(cfg.data)
    if user:
        clips = load_sequence_folder(cfg.data, progress=cfg.progress)
        order = rng.permutation(len(clips))
        n_val = int(round(len(clips) * cfg.val_fraction)) if len(clips) >= 5 else 0
        val_clips = [clips[i] for i in order[:n_val]]
        tr_clips = [clips[i] for i in order[n_val:]]
        bank = _clip_bank(tr_clips, encoder, cfg.finetune)
        val_bank = _clip_bank(val_clips, encoder, False) if val_clips else None
        log(f"sequence data {cfg.data}: {len(tr_clips)} training clips, {len(val_clips)} validation clips")
    else:
        fer = load_dataset(cfg.data or default_data_path())
        train_split = fer.split("train")
        n_val = int(round(len(train_split) * cfg.val_fraction))
        perm = rng.permutation(len(train_split))
        val_img, tr_img = perm[:n_val], perm[n_val:]
        t0 = time.time()
        bank = build_run_bank(train_split.images[tr_img], train_split.labels[tr_img], cfg.train_runs, cfg.seq_len,
                              encoder, seed=cfg.seed, keep_frames=cfg.finetune, progress=cfg.progress,
                              desc="Training runs")
        val_bank = None
        if n_val:
            val_runs = max(int(cfg.train_runs * cfg.val_fraction), 1)
            val_bank = build_run_bank(train_split.images[val_img], train_split.labels[val_img], val_runs,
                                      cfg.seq_len, encoder, seed=cfg.seed + 7, progress=cfg.progress,
                                      desc="validation runs")
        log(f"synthesised and embedded {len(bank.labels)} + {0 if val_bank is None else len(val_bank.labels)} "
            f"runs of {cfg.seq_len} frames from {len(tr_img)} + {len(val_img)} Training images "
            f"in {time.time() - t0:.0f} s")

    def draw(b: RunBank, n: int, g: np.random.Generator, length: int):
        if user:
            return _clip_windows(b, n, length, g)
        return assemble_sequences(b.labels, b.run_len, n, length, g, cfg.min_segment, cfg.max_changes)

    val_set = None
    if val_bank is not None:
        ri, fi, lab = draw(val_bank, max(cfg.batch_size * 8, 256), np.random.default_rng(cfg.seed + 11),
                           min(cfg.seq_len, val_bank.run_len))
        val_set = (torch.from_numpy(val_bank.emb[ri, fi]).to(device), torch.from_numpy(lab).to(device),
                   val_bank.logits[ri, fi], lab)

    if cfg.finetune:
        for p in model.encoder.parameters():
            p.requires_grad_(True)
        enc_params = list(model.encoder.parameters())
    else:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        enc_params = []
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": head_params, "lr": cfg.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.encoder_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    warm = max(total // 20, 1)

    def warmup_cosine(s: int) -> float:
        return (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(total - warm, 1)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)

    def run_val() -> dict[str, float]:
        if val_set is None:
            return {}
        model.eval()
        with torch.inference_mode():
            lg = model.forward_sequence(val_set[0])
            m = val_set[1] >= 0
            loss = F.cross_entropy(lg[m], val_set[1][m]).item()
            acc = (lg.argmax(-1) == val_set[1])[m].float().mean().item()
        frame_acc = float((val_set[2].argmax(-1) == val_set[3])[val_set[3] >= 0].mean())
        return {"val_loss": loss, "val_acc": acc, "val_frame_acc": frame_acc}

    history: list[dict[str, Any]] = []
    log(f"training temporal_lstm head ({sum(p.numel() for p in head_params) / 1e3:.0f} k params"
        f"{', encoder fine-tuned' if cfg.finetune else ', encoder frozen'}) on {device}: {cfg.epochs} epochs x "
        f"{cfg.steps_per_epoch} steps x {cfg.batch_size} sequences of {cfg.seq_len} frames -> {out}")
    for epoch in range(cfg.epochs):
        model.train()
        if not cfg.finetune:
            model.encoder.eval()  # frozen: BatchNorm statistics stay those of the image model
        t0 = time.time()
        ri, fi, lab = draw(bank, cfg.steps_per_epoch * cfg.batch_size, rng, cfg.seq_len)
        tot_loss, tot_ok, tot_n = 0.0, 0.0, 0
        for step in range(cfg.steps_per_epoch):
            sl = slice(step * cfg.batch_size, (step + 1) * cfg.batch_size)
            y = torch.from_numpy(lab[sl]).to(device)
            if cfg.finetune:
                from .train import to_input

                fr = torch.from_numpy(bank.frames[ri[sl], fi[sl]]).to(device)  # (B, T, 48, 48)
                x = to_input(fr.flatten(0, 1)).unflatten(0, fr.shape[:2])  # (B, T, 1, 48, 48)
                emb = model.embed_frames(x)
            else:
                emb = torch.from_numpy(bank.emb[ri[sl], fi[sl]]).to(device)  # (B, T, D)
            logits = model.forward_sequence(emb, noise=cfg.emb_noise)  # (B, T, 7)
            m = y >= 0
            loss = F.cross_entropy(logits[m], y[m], label_smoothing=cfg.label_smoothing)
            if cfg.smooth_loss > 0:
                # cross-entropy alone is indifferent to flicker between near-tied classes; a label that
                # changes while the expression does not is what makes a video overlay unreadable
                p = logits.softmax(-1)
                same = ((y[:, 1:] == y[:, :-1]) & (y[:, 1:] >= 0)).float()
                jump = ((p[:, 1:] - p[:, :-1]) ** 2).sum(-1)
                loss = loss + cfg.smooth_loss * (jump * same).sum() / same.sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head_params + enc_params, 5.0)
            opt.step()
            sched.step()
            n = int(m.sum())
            tot_loss += loss.item() * n
            tot_ok += float((logits.detach().argmax(-1) == y)[m].sum())
            tot_n += n
        row = {"epoch": epoch + 1, "train_loss": round(tot_loss / max(tot_n, 1), 5),
               "train_acc": round(tot_ok / max(tot_n, 1), 5), **{k: round(v, 5) for k, v in run_val().items()},
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2)}
        history.append(row)
        vs = (f"  val {row['val_acc']:.4f} (per-frame {row['val_frame_acc']:.4f})" if "val_acc" in row else "")
        log(f"epoch {epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f}  train {row['train_acc']:.4f}{vs}"
            f"  {row['seconds']:.1f}s")
    # The last epoch is kept (the schedule decays to zero), not the best on the validation split: those are
    # Training faces the image model has seen, and their accuracy does not rank heads the way unseen faces do.
    best = dict(history[-1])
    model.eval()
    # the shipped head is stored in half precision: measure what is shipped
    with torch.no_grad():
        for name, p in model.named_parameters():
            if cfg.finetune or not name.startswith("encoder."):
                p.copy_(p.half().float())
    head = TorchTemporalHead(model)

    # the held-out table
    table = ""
    if user:
        if val_bank is not None:
            ri, fi, lab = _clip_windows(val_bank, len(val_bank.labels), val_bank.run_len, np.random.default_rng(0))
            rows = measure(val_bank.logits[ri, fi], lab, head.predict_windowed(val_bank.emb[ri, fi]), cfg.ema)
            table = format_table(rows, f"Held-out clips ({len(val_bank.labels)}), window {cfg.seq_len}")
    else:
        public = fer.split("public")
        t0 = time.time()
        enc_eval = TorchFrameEncoder(model.encoder, str(device))
        pbank = build_run_bank(public.images, public.labels, cfg.eval_runs, min(cfg.eval_len, 48), enc_eval,
                               seed=1234, progress=cfg.progress, desc="PublicTest runs")
        emb, logits, lab = eval_sequences(pbank, cfg.eval_sequences, cfg.eval_len, 1235, cfg.min_segment, 6)
        rows = measure(logits, lab, head.predict_windowed(emb), cfg.ema)
        table = format_table(rows, (f"Held-out synthetic sequences from PublicTest: {cfg.eval_sequences} sequences "
                                    f"x {cfg.eval_len} frames ({cfg.eval_runs} jittered runs of {len(public)} "
                                    f"images), window {cfg.seq_len} frames, follow = 3 frames in a row"))
        log(f"measured on PublicTest sequences in {time.time() - t0:.0f} s")
    if table:
        atomic_write_bytes(out / "measure.md", (table + "\n").encode())
        print(table)

    metrics = {k: v for k, v in best.items() if k.startswith("val") or k == "epoch"}  # the last epoch's
    if table and not user:
        by = {r["method"]: r for r in rows}
        metrics["public_sequences"] = {r["method"]: {k: r[k] for k in ("accuracy", "flips_per_100",
                                                                        "delay_frames", "missed")}
                                       for r in by.values()}
    save_temporal_model(model, img_path, out / "temporal.pt", config=to_dict(cfg), metrics=metrics, history=history,
                        include_encoder=cfg.finetune)
    keys = list(history[0].keys())
    csv = [",".join(keys)] + [",".join(str(h.get(k, "")) for k in keys) for h in history]
    atomic_write_bytes(out / "metrics.csv", ("\n".join(csv) + "\n").encode())
    atomic_write_bytes(out / "metrics.json", json.dumps({"history": history, "final": metrics}, indent=1).encode())
    log(f"temporal model: {out / 'temporal.pt'} ({(out / 'temporal.pt').stat().st_size / 1e3:.0f} kB), "
        f"{out / 'temporal.onnx'} ({(out / 'temporal.onnx').stat().st_size / 1e3:.0f} kB); "
        f"{time.time() - t_start:.0f} s in all")
    return out


def save_temporal_model(model, image_path: str | Path, path: str | Path, *, config: dict | None = None,
                        metrics: dict | None = None, history: list | None = None,
                        include_encoder: bool = False) -> tuple[Path, Path]:
    """Write ``path`` (.pt: the head in half precision + a reference to the image checkpoint) and its
    ``.onnx`` twin (the head alone, (B, T, D) embeddings -> (B, T, 7) logits). ``model.encoder`` must hold
    ``image_path``'s weights; ``include_encoder`` stores them too (a fine-tuned encoder)."""
    import torch

    from .checkpoint import file_sha256, make_checkpoint, read_checkpoint, save_checkpoint

    path = Path(path)
    image_path = Path(image_path)
    img_ckpt = read_checkpoint(image_path)
    model.eval()
    # the .pt stores half precision; round the live head the same way so the .pt and the .onnx agree
    with torch.no_grad():
        for name, p in model.named_parameters():
            if include_encoder or not name.startswith("encoder."):
                p.copy_(p.half().float())
    ref = {"name": img_ckpt["model"]["name"], "kwargs": dict(img_ckpt["model"]["kwargs"]), "file": image_path.name,
           "sha256": file_sha256(image_path), "public_acc": img_ckpt.get("metrics", {}).get("public_acc"),
           "probe": encoder_probe(model.encoder).tolist(), "included": bool(include_encoder)}
    window = int(model.num_frames)
    metrics = metrics or {}
    ckpt = make_checkpoint(model, config=config, metrics=metrics, history=history, half=True, encoder=ref,
                           sequence={"window": window, "embed_dim": model.frame_dim}, format_kind=TEMPORAL_FORMAT)
    if not include_encoder:
        ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("encoder.")}
    save_checkpoint(ckpt, path)
    onnx_path = export_temporal_onnx(model, path.with_suffix(".onnx"), ref, metrics, window)
    return path, onnx_path


def encoder_probe(encoder) -> np.ndarray:
    """The (4, D) embeddings of :func:`probe_faces` under a torch image model."""
    return TorchFrameEncoder(encoder, str(next(encoder.parameters()).device)).encode(probe_faces())[1]


def export_temporal_onnx(model, path: str | Path, encoder_ref: dict, metrics: dict, window: int) -> Path:
    """The head alone as ONNX: ``embeddings`` (B, T, D) -> ``logits`` (B, T, 7), B and T dynamic, with
    the emolens metadata (classes, window, the encoder it belongs to); checked against torch."""
    import io
    import warnings

    import onnx
    import onnxruntime as ort
    import torch

    from .checkpoint import atomic_write_bytes

    class Head(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, emb: torch.Tensor) -> torch.Tensor:
            return self.m.forward_sequence(emb)

    head = Head(model).eval().cpu()
    x = torch.randn(2, window, model.frame_dim)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated but exports this LSTM in a second with exact dynamic shapes;
        # its tracer warnings are about Python-side shape checks that do not apply here
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (x,), buf, input_names=["embeddings"], output_names=["logits"], opset_version=17,
                          dynamic_axes={"embeddings": {0: "batch", 1: "frames"}, "logits": {0: "batch", 1: "frames"}},
                          dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    meta = {"emolens.format": TEMPORAL_FORMAT, "emolens.classes": list(CLASSES),
            "emolens.model": {"name": model.model_name, "kwargs": model.model_kwargs},
            "emolens.encoder": encoder_ref, "emolens.sequence": {"window": window, "embed_dim": model.frame_dim},
            "emolens.metrics": metrics}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, json.dumps(v)
    data = proto.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for shape in ((2, window), (1, 5)):
        e = torch.randn(*shape, model.frame_dim)
        with torch.inference_mode():
            ref = head(e).numpy()
        got = sess.run(None, {"embeddings": e.numpy()})[0]
        if not np.allclose(ref, got, atol=1e-4, rtol=1e-3):
            raise RuntimeError(f"ONNX export of the temporal head differs from torch by {np.abs(ref - got).max():.2e}")
    atomic_write_bytes(Path(path), data)
    return Path(path)


def load_temporal_model(path: str | Path, image_model: str | Path | None = None, device: str = "cpu"):
    """(TemporalLSTM with its encoder, in eval mode; checkpoint dict without weights).

    The encoder comes from ``image_model`` (default: the file named in the checkpoint next to it, else the
    shipped image model), checked against the stored probe embeddings."""
    from .checkpoint import CheckpointError, load_model, read_checkpoint
    from .models import create_model
    from .runtime import default_model_path

    ckpt = read_checkpoint(path)
    if ckpt.get("format_kind") != TEMPORAL_FORMAT or "encoder" not in ckpt:
        raise CheckpointError(f"{path}: not an emolens temporal model (train one with `emolens train --task sequence`)")
    model = create_model(ckpt["model"]["name"], **ckpt["model"]["kwargs"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in ckpt.pop("state_dict").items()}
    ref = ckpt["encoder"]
    if not ref.get("included"):
        if image_model is None:
            sibling = Path(path).with_name(ref["file"])
            image_model = sibling if sibling.is_file() else default_model_path("pt")
        enc, _ = load_model(image_model, "cpu")
        if getattr(enc, "model_name", "") != ref["name"]:
            raise CheckpointError(f"{path}: built on a {ref['name']} image model, {image_model} is {enc.model_name}")
        try:
            model.encoder.load_state_dict(enc.state_dict())
        except RuntimeError:
            raise CheckpointError(f"{path}: built on another image model than {image_model} (other layer sizes); "
                                  "train one for it with `emolens train --task sequence`") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("encoder.") for k in missing):
        raise CheckpointError(f"{path}: weights do not fit temporal_lstm (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.to(device).eval()
    if not ref.get("included"):
        check_probe(TorchFrameEncoder(model.encoder, device), np.asarray(ref["probe"], np.float32),
                    f"{path} with {image_model}")
    return model, ckpt


__all__ = ["Jitter", "jitter_run", "build_run_bank", "assemble_sequences", "RunBank", "FrameEncoder",
           "TorchFrameEncoder", "OnnxFrameEncoder", "TemporalHead", "OnnxTemporalHead", "TorchTemporalHead",
           "ema_probs", "sequence_metrics", "measure", "format_table", "benchmark_temporal", "load_pair",
           "SequenceConfig", "train_sequence", "train_sequence_cli", "load_sequence_folder", "is_sequence_folder",
           "load_temporal_model", "save_temporal_model", "export_temporal_onnx", "probe_faces",
           "default_temporal_path"]
