"""Training the temporal model (``emolens train --task sequence``): the image model's encoder is frozen by default,
so each frame is embedded once and only the small LSTM head is trained on (B, T, D) embeddings (minutes on a CPU);
``finetune: true`` trains the encoder too, on frames."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..loop import warmup_cosine, write_metrics
from ..preprocess import CLASSES, INPUT_SIZE
from .checkpoint import save_temporal_model
from .clips import is_sequence_folder, load_sequence_folder
from .evaluation import format_table, measure
from .runtime import FrameEncoder, TorchFrameEncoder, TorchTemporalHead
from .sequences import RunBank, assemble_sequences, build_run_bank, eval_sequences


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
        from ..config import ConfigError
        from ..models import _REGISTRY

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


def _resolve_image_model(cfg: SequenceConfig) -> Path:
    from ..runtime import ModelError, default_model_path

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


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sequence_data(cfg: SequenceConfig, encoder: FrameEncoder, rng: np.random.Generator,
                   log: Callable[[str], None]) -> tuple[RunBank, RunBank | None, bool, Any]:
    """(training bank, validation bank or None, whether the data are user clips, the FER dataset or None):
    user clips split by ``val_fraction``, or jittered runs of the Training split (images held out by
    ``val_fraction`` for validation runs)."""
    from ..data import default_data_path, load_dataset

    if cfg.data and is_sequence_folder(cfg.data):
        clips = load_sequence_folder(cfg.data, progress=cfg.progress)
        order = rng.permutation(len(clips))
        n_val = int(round(len(clips) * cfg.val_fraction)) if len(clips) >= 5 else 0
        val_clips = [clips[i] for i in order[:n_val]]
        tr_clips = [clips[i] for i in order[n_val:]]
        bank = _clip_bank(tr_clips, encoder, cfg.finetune)
        val_bank = _clip_bank(val_clips, encoder, False) if val_clips else None
        log(f"sequence data {cfg.data}: {len(tr_clips)} training clips, {len(val_clips)} validation clips")
        return bank, val_bank, True, None
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
    return bank, val_bank, False, fer


def fit_head(model, bank: RunBank, cfg: SequenceConfig, rng: np.random.Generator, *, device: Any = "cpu",
             val_bank: RunBank | None = None, clips: bool = False,
             log: Callable[[str], None] = _log, out: Path | None = None) -> list[dict[str, Any]]:
    """The training loop: ``cfg.epochs`` x ``cfg.steps_per_epoch`` AdamW steps (warm-up + cosine) on sequences
    drawn afresh each epoch from ``bank`` (``clips``: windows of user clips, else runs strung together), the
    frozen encoder's (B, T, D) embeddings in, per-frame cross-entropy + the flicker penalty out; with
    ``cfg.finetune`` the encoder is trained too, on the bank's frames. Returns one history row per epoch."""
    import torch
    import torch.nn.functional as F

    def draw(b: RunBank, n: int, g: np.random.Generator, length: int):
        if clips:
            return _clip_windows(b, n, length, g)
        return assemble_sequences(b.labels, b.run_len, n, length, g, cfg.min_segment, cfg.max_changes)

    val_set = None
    if val_bank is not None:
        ri, fi, lab = draw(val_bank, max(cfg.batch_size * 8, 256), np.random.default_rng(cfg.seed + 11),
                           min(cfg.seq_len, val_bank.run_len))
        val_set = (torch.from_numpy(val_bank.emb[ri, fi]).to(device), torch.from_numpy(lab).to(device),
                   val_bank.logits[ri, fi], lab)

    for p in model.encoder.parameters():
        p.requires_grad_(cfg.finetune)
    enc_params = list(model.encoder.parameters()) if cfg.finetune else []
    head_params = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": head_params, "lr": cfg.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": cfg.encoder_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    total = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, max(total // 20, 1)))

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
        f"{cfg.steps_per_epoch} steps x {cfg.batch_size} sequences of {cfg.seq_len} frames"
        + (f" -> {out}" if out else ""))
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
                from ..train import to_input

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
    return history


def train_sequence(cfg: SequenceConfig) -> Path:
    """Train the temporal head (frozen encoder: on precomputed embeddings) and write to the run folder:
    temporal.pt (head + reference to the image checkpoint), temporal.onnx ((B, T, D) embeddings ->
    (B, T, 7) logits), config.yaml, metrics.json/csv, measure.md (the comparison table)."""
    import torch

    from ..checkpoint import atomic_write_bytes, load_model
    from ..config import save_config, to_dict
    from ..models import create_model
    from ..train import seed_everything, select_device

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
    log = _log

    kwargs = {"encoder": img_ckpt["model"]["name"], "encoder_kwargs": dict(img_ckpt["model"]["kwargs"]),
              "num_frames": cfg.seq_len, **cfg.model_kwargs}
    model = create_model(cfg.model, **kwargs)
    model.encoder.load_state_dict(image_model.state_dict())
    model.to(device)
    encoder = TorchFrameEncoder(model.encoder, str(device))
    rng = np.random.default_rng(cfg.seed)
    bank, val_bank, user, fer = _sequence_data(cfg, encoder, rng, log)

    history = fit_head(model, bank, cfg, rng, device=device, val_bank=val_bank, clips=user, log=log, out=out)
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
    write_metrics(out, history, final=metrics)
    log(f"temporal model: {out / 'temporal.pt'} ({(out / 'temporal.pt').stat().st_size / 1e3:.0f} kB), "
        f"{out / 'temporal.onnx'} ({(out / 'temporal.onnx').stat().st_size / 1e3:.0f} kB); "
        f"{time.time() - t_start:.0f} s in all")
    return out

