"""Training: ``train(cfg)`` runs a whole run; ``train_one_epoch`` and ``evaluate_split`` are plain
functions returning metric dicts.

The dataset lives on the training device as one uint8 tensor (N, 48, 48); augmentation (affine: rotation,
zoom, shift, flip; random erasing; optional mixup/cutmix) runs there too, so a GPU is not starved by a
CPU data loader and CPU training needs no worker processes. Multi-GPU: launch with ``torchrun``
(DistributedDataParallel; gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_model, make_checkpoint, read_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig, to_dict  # noqa: F401  (TrainConfig: re-exported)
from .loop import warmup_cosine, write_metrics
from .preprocess import CLASSES, MEAN, STD


class TrainingError(RuntimeError):
    """A run that cannot start or go on (no such device; the loss became NaN or infinite); one line, fixable by
    the user."""


def select_device(name: str = "auto") -> torch.device:
    """:func:`emolens.runtime.resolve_device` as a ``torch.device`` ("auto": CUDA when present, else CPU).
    Never call ``.cuda()`` elsewhere. TrainingError (a RuntimeError) when the device asked for does not exist."""
    from .runtime import ModelError, resolve_device

    try:
        return torch.device(resolve_device(name))
    except ModelError as e:
        raise TrainingError(str(e)) from None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed for one (run seed, epoch, process, random stream). Every random stream (data order,
    augmentation, dropout) is re-seeded from this at each epoch start, so a resumed run draws exactly
    what the uninterrupted run drew, on any device and on every DDP rank, without storing RNG states."""
    ss = np.random.SeedSequence([seed % 2**64, epoch, rank, stream])
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps per epoch: full batches only (a ragged last batch would reweight its images),
    one step over everything when the split is smaller than a batch."""
    return max(n // min(batch_size, max(n, 1)), 1)


# ----------------------------------------------------------------------------------------------------
# on-device preprocessing and augmentation


def to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """(N, 48, 48) uint8 on any device -> (N, 1, 48, 48) float32, the same arithmetic as
    ``emolens.preprocess.normalize``."""
    return ((images_u8.float() * (1.0 / 255.0) - MEAN) / STD).unsqueeze(1)


def augment_batch(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random affine (rotate, zoom, shift, flip) then random erasing, on (B, 1, H, W) normalised input;
    (B, 1, crop_size, crop_size) out when ``cfg.crop_size`` cuts a random window (whole-pixel offsets)."""
    b, c, h, w = x.shape
    dev = x.device
    cs = cfg.crop_size if 0 < cfg.crop_size < min(h, w) else 0

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen, device=dev) * (hi - lo) + lo

    ang = u(-cfg.rotate, cfg.rotate) * (math.pi / 180)
    scale = u(1 - cfg.zoom, 1 + cfg.zoom)
    flip = torch.ones(b, device=dev)
    if cfg.hflip:
        flip = torch.where(torch.rand(b, generator=gen, device=dev) < 0.5, -1.0, 1.0)
    if cfg.crop_pad > 0:
        # whole-pixel shifts (the classic pad-and-crop): with no rotation or zoom, bilinear sampling then lands
        # on pixel centres and copies pixels exactly, so the training images stay as sharp as the test images
        def px(n: int) -> torch.Tensor:
            k = torch.randint(-cfg.crop_pad, cfg.crop_pad + 1, (b,), generator=gen, device=dev).float()
            return k * (2.0 / n)
        tx, ty = px(w), px(h)
    else:
        tx, ty = u(-cfg.shift, cfg.shift) * 2, u(-cfg.shift, cfg.shift) * 2
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    if cs:
        # a cs x cs window: the sampling grid spans cs / side of the input, and the window's centre moves by a
        # whole number of pixels, up to the margin either way, so the window still copies pixels exactly
        cos, sin = cos * (cs / w), sin * (cs / w)
        margin = (min(h, w) - cs) // 2
        tx = tx + torch.randint(-margin, margin + 1, (b,), generator=gen, device=dev).float() * (2.0 / w)
        ty = ty + torch.randint(-margin, margin + 1, (b,), generator=gen, device=dev).float() * (2.0 / h)
        h = w = cs
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.erase > 0:
        # one rectangle per selected image, 2-25% of the area, aspect 0.3-3.3, filled with noise
        area = u(0.02, 0.25) * h * w
        aspect = torch.exp(u(math.log(0.3), math.log(3.3)))
        eh = torch.sqrt(area * aspect).clamp(1, h)
        ew = torch.sqrt(area / aspect).clamp(1, w)
        y0 = u(0, 1) * (h - eh)
        x0 = u(0, 1) * (w - ew)
        ys = torch.arange(h, device=dev).view(1, h, 1)
        xs = torch.arange(w, device=dev).view(1, 1, w)
        inside = ((ys >= y0.view(b, 1, 1)) & (ys < (y0 + eh).view(b, 1, 1)) &
                  (xs >= x0.view(b, 1, 1)) & (xs < (x0 + ew).view(b, 1, 1)))
        inside &= (torch.rand(b, generator=gen, device=dev) < cfg.erase).view(b, 1, 1)
        noise = torch.randn(x.shape, generator=gen, device=dev)
        x = torch.where(inside.unsqueeze(1), noise, x)
    return x


def mix_batch(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator):
    """Mixup or cutmix: returns (x, y_a, y_b, lam) with loss = lam * CE(y_a) + (1 - lam) * CE(y_b)."""
    gdev = gen.device  # draws must be made on the generator's device (a CUDA generator cannot fill CPU tensors)
    if not (cfg.mixup > 0 or cfg.cutmix > 0) or torch.rand(1, generator=gen, device=gdev).item() >= cfg.mix_prob:
        return x, y, y, 1.0
    perm = torch.randperm(x.shape[0], generator=gen, device=gdev).to(x.device)
    use_cutmix = cfg.cutmix > 0 and (cfg.mixup <= 0 or torch.rand(1, generator=gen, device=gdev).item() < 0.5)
    alpha = cfg.cutmix if use_cutmix else cfg.mixup
    lam_seed = int(torch.randint(0, 2**31, (1,), generator=gen, device=gdev))
    lam = float(np.random.default_rng(lam_seed).beta(alpha, alpha))
    if use_cutmix:
        h, w = x.shape[2:]
        rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy = int(torch.randint(0, h, (1,), generator=gen, device=gdev))
        cx = int(torch.randint(0, w, (1,), generator=gen, device=gdev))
        y0, y1 = max(cy - rh // 2, 0), min(cy + rh // 2, h)
        x0, x1 = max(cx - rw // 2, 0), min(cx + rw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, y, y[perm], lam


# ----------------------------------------------------------------------------------------------------
# epochs


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no flags to read, so no claim of fast bf16
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matrix work natively (Intel AMX, or AVX512-BF16 on Intel and AMD),
    where oneDNN's bf16 convolutions are 2-3x faster than float32. Elsewhere bf16 would be emulated and slower."""
    return bool(torch.backends.mkldnn.is_available() and _cpu_flags() & {"amx_bf16", "avx512_bf16"})


def amp_enabled(device: torch.device, requested: bool) -> bool:
    """Whether ``amp: true`` runs bf16 autocast on ``device``: always on CUDA, on CPUs with fast bf16."""
    if not requested:
        return False
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_has_fast_bf16()


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast where it is fast (see :func:`amp_enabled`), else a no-op context. Losses and
    log-softmax are taken outside it in float32."""
    if amp_enabled(device, enabled):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def teacher_probs(teachers: Sequence[nn.Module], x: torch.Tensor, temperature: float, amp: bool) -> torch.Tensor:
    """(B, 1, 48, 48) input -> (B, 7) float32 mean of the teachers' softmax(logits / T): the ensemble's soft target."""
    probs = None
    for t in teachers:
        with _autocast(x.device, amp):
            logits = t(x)
        p = (logits.float() / temperature).softmax(1)
        probs = p if probs is None else probs + p
    return probs / len(teachers)


def distill_loss(logits: torch.Tensor, target_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teachers || student) at temperature T, scaled by T^2 so its gradients keep the size of the
    cross-entropy's as T changes (Hinton et al. 2015). (B, 7) float32 logits and probabilities."""
    log_p = (logits / temperature).log_softmax(1)
    return F.kl_div(log_p, target_probs, reduction="batchmean") * temperature ** 2


def load_teachers(paths: Sequence[str | Path], device: torch.device, channels_last: bool = True) -> list[nn.Module]:
    """The teacher models (eval mode, frozen) for distillation, from their self-describing checkpoints."""
    teachers = []
    for path in paths:
        model, _ = load_model(path, device=str(device))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)
        teachers.append(model.eval())
    return teachers


def train_one_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer, scheduler,
                    loss_fn: nn.Module, cfg: TrainConfig, gen: torch.Generator, epoch: int,
                    rank: int = 0, world: int = 1, per_step_schedule: bool = True,
                    teachers: Sequence[nn.Module] = ()) -> dict[str, float]:
    """One pass over (N, 48, 48) uint8 ``images`` on the device; returns {train_loss, train_acc, lr,
    train_seconds}, summed over all ``world`` processes.

    With ``teachers`` the loss is ``(1 - a) * CE(labels) + a * KD(teachers)`` (``a = cfg.distill_alpha``),
    the teachers seeing exactly the augmented (and mixed) batch the student sees.

    Every process draws the same permutation; each global batch of ``batch_size`` images is cut into
    ``world`` disjoint shards of ``batch_size // world`` and DDP averages the shards' gradients, so a step
    sees the same images whatever the number of processes.
    """
    model.train()
    dev = images.device
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))).to(dev)
    global_bs = min(cfg.batch_size, n)
    local_bs = global_bs // world
    if local_bs < 1:
        raise ValueError(f"{n} training images cannot be shared among {world} processes")
    steps = steps_per_epoch(n, cfg.batch_size)
    total_loss = torch.zeros((), device=dev)
    correct = torch.zeros((), device=dev)
    seen = torch.zeros((), device=dev)
    t0 = time.time()
    bar = None
    if cfg.progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                   dynamic_ncols=True, file=sys.stderr)
    for step in range(steps):
        start = step * global_bs + rank * local_bs
        idx = perm[start:start + local_bs]
        x = to_input(images[idx])
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        if cfg.augment:
            x = augment_batch(x, cfg, gen)
        x, ya, yb, lam = mix_batch(x, y, cfg, gen)
        with _autocast(dev, cfg.amp):
            logits = model(x)
        logits = logits.float()  # the loss and the metrics in float32
        loss = lam * loss_fn(logits, ya) + (1 - lam) * loss_fn(logits, yb) if lam < 1 else loss_fn(logits, y)
        if teachers:
            soft = teacher_probs(teachers, x, cfg.distill_temperature, cfg.amp)
            loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * distill_loss(logits, soft,
                                                                                      cfg.distill_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used (the scheduler moves it on just below)
        optimizer.step()
        if scheduler is not None and per_step_schedule:
            scheduler.step()
        total_loss += loss.detach().float() * len(y)
        pred = logits.detach().argmax(1)
        # a mixed image counts as lam right for y_a and (1 - lam) for y_b, as its loss does
        correct += lam * (pred == ya).sum() + (1 - lam) * (pred == yb).sum()
        seen += len(y)
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == steps - 1:  # .item() syncs a GPU: not every step
                bar.set_postfix(loss=f"{(total_loss / seen).item():.3f}", acc=f"{(correct / seen).item():.3f}")
    if bar is not None:
        bar.close()
    if world > 1 and torch.distributed.is_initialized():
        sums = torch.stack([total_loss, correct, seen])
        torch.distributed.all_reduce(sums)
        total_loss, correct, seen = sums.unbind()
    seen_n = max(seen.item(), 1)
    return {"train_loss": total_loss.item() / seen_n, "train_acc": correct.item() / seen_n,
            "lr": lr, "train_seconds": time.time() - t0}


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """(..., H, W) -> (..., size, size), the centre window (``size`` 0 or not smaller: unchanged)."""
    h, w = x.shape[-2:]
    if not 0 < size < min(h, w):
        return x
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def _predict_views(model: nn.Module, images: torch.Tensor, with_flip: bool, batch_size: int = 512,
                   amp: bool = True, crop_size: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(plain, flip-TTA) (N, 7) log-probabilities from one pass: the flip view reuses the plain one.
    ``crop_size``: score the centre window a ``crop_size`` run trained on."""
    model.eval()
    plain, flip = [], []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = centre_crop(to_input(images[i:i + batch_size]), crop_size)
            with _autocast(images.device, amp):
                logits = model(x)
                logits_flip = model(x.flip(3)) if with_flip else None
            lp = logits.float().log_softmax(1)  # log-softmax in float32: no log(0) from bf16 underflow
            if logits_flip is not None:
                lp_flip = logits_flip.float().log_softmax(1)
                flip.append(torch.logaddexp(lp, lp_flip) - math.log(2))  # log of the mean probability
            plain.append(lp)
    empty = torch.zeros(0, len(CLASSES), device=images.device)
    return (torch.cat(plain) if plain else empty,
            (torch.cat(flip) if flip else empty) if with_flip else None)


def evaluate_split(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module | None = None,
                   amp: bool = True, crop_size: int = 0) -> dict[str, float]:
    """{val_loss, val_acc, val_acc_flip} on a held-out split (no augmentation; the centre ``crop_size``
    window when the run trained on windows). ``val_loss`` is the plain cross-entropy (``loss_fn`` is kept
    for the API; the training loss's smoothing must not leak in)."""
    plain, flip = _predict_views(model, images, True, amp=amp, crop_size=crop_size)
    return {"val_loss": F.nll_loss(plain, labels).item(),
            "val_acc": (plain.argmax(1) == labels).float().mean().item(),
            "val_acc_flip": (flip.argmax(1) == labels).float().mean().item()}


# ----------------------------------------------------------------------------------------------------
# the run


def _build_optimizer(model: nn.Module, cfg: TrainConfig):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    if cfg.schedule == "onecycle":
        pct = cfg.warmup
        if pct * total == 1:  # OneCycleLR divides by zero when the warm-up is exactly one step (e.g. 0.2 of 5)
            pct = 2 / total if total > 2 else 0.0
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                   pct_start=pct, div_factor=25, final_div_factor=1e3)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, int(total * cfg.warmup)))
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=3)
    return None


#: seconds between learning-curve redraws (plotting costs ~0.5 s: every epoch of a tiny run would double it)
PLOT_EVERY_S = 30.0


def _write_logs(out: Path, history: list[dict[str, Any]], plot: bool = True) -> None:
    from .reports import plot_learning_curves

    write_metrics(out, history)
    if not plot:
        return
    try:
        plot_learning_curves(history, out / "curves.png")
    except Exception as e:  # a plotting problem must not stop a training run
        print(f"warning: learning-curve plot failed: {e}", file=sys.stderr)


def _diverged(out: Path, cfg: TrainConfig, epoch: int, history: list[dict[str, Any]], what: str, rank: int):
    """Stop a run whose loss or validation metrics became NaN or infinite: nothing of this epoch is saved (no NaN
    model becomes best.pt, no NaN goes into metrics.json). A run stopped in its first epoch leaves no folder."""
    saved = (f"best.pt and last.pt in {out} hold the run up to epoch {len(history)}" if history
             else "nothing was saved")
    if not history and rank == 0:
        (out / "config.yaml").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.rmdir()  # only when empty: the folder was new or empty when the run started
    raise TrainingError(f"training diverged at epoch {epoch + 1}: {what} (not a finite number); {saved}. "
                        f"Lower --lr (now {cfg.lr:g}) and start a new run")


def _dist_env() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _resume_state(cfg: TrainConfig, resume: str | Path,
                  explicit: set[str] | None = None) -> tuple[TrainConfig, dict[str, Any], Path]:
    """The saved run's config and its last.pt contents. Only ``epochs``, ``progress``, ``device`` and
    ``threads`` may change, and only when given explicitly: named in ``explicit`` (the fields typed on the
    command line), or, when that is None, set to something other than the default."""
    from .checkpoint import CheckpointError
    from .config import build_config

    rpath = Path(resume)
    rpath = rpath / "last.pt" if rpath.is_dir() else rpath
    state = read_checkpoint(rpath)
    if "optimizer" not in state or "epoch" not in state:
        raise CheckpointError(f"{rpath}: holds no optimizer state to resume from; give the run's last.pt")
    saved = build_config(TrainConfig, state["config"])

    def given(name: str) -> bool:
        return name in explicit if explicit is not None else getattr(cfg, name) != getattr(TrainConfig, name)

    if given("epochs") and cfg.epochs != saved.epochs:
        if saved.schedule == "onecycle":
            raise ConfigError(f"epochs: the run's one-cycle schedule was laid out for {saved.epochs} epochs and "
                              "cannot be stretched; resume without --epochs or start a new run")
        saved.epochs = cfg.epochs
    # where and how fast to run may change (a GPU run resumed on a CPU), and whether to show a progress bar
    for name in ("progress", "device", "threads"):
        if given(name):
            setattr(saved, name, getattr(cfg, name))
    saved.out = str(rpath.parent)
    return saved, state, rpath


def _run_finished(cfg: TrainConfig, state: dict[str, Any]) -> str | None:
    """Why a saved run has nothing left to train (all epochs done, or stopped early), or None."""
    done = int(state["epoch"]) + 1
    if done >= cfg.epochs:
        return f"all {cfg.epochs} epochs done"
    history = state.get("history") or []
    if cfg.patience and history and history[-1].get("bad_epochs", 0) >= cfg.patience:
        return f"stopped early at epoch {done} (no gain for {cfg.patience} epochs)"
    return None


def _check_new_run_folder(out: Path) -> None:
    """OutputError, before the data is read, when ``out`` is a file or a folder with files in it (a finished run,
    someone's data): a new run never rewrites another's best.pt, last.pt or metrics."""
    from .outputs import check_new_folder

    advice = "give another --out"
    if (out / "last.pt").is_file():
        advice = f"to continue that run use --resume {out / 'last.pt'}, or {advice}"
    if _only_own_config(out):
        return  # a run stopped before its first epoch left only the config it wrote for this folder: start again
    check_new_folder(out, "--out", advice)


def _only_own_config(out: Path) -> bool:
    """Whether ``out`` holds nothing but a ``config.yaml`` that a run wrote for this very folder (its ``out``):
    what a run killed before its first epoch leaves. Anything else in the folder is someone's and is kept."""
    import yaml

    try:
        if not out.is_dir() or [p.name for p in out.iterdir()] != ["config.yaml"]:
            return False
        doc = yaml.safe_load((out / "config.yaml").read_text())
        return isinstance(doc, dict) and Path(str(doc.get("out", ""))).resolve() == out.resolve()
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def _check_model_kwargs(cfg: TrainConfig) -> None:
    """ConfigError, before the data is read or the run folder made, when ``model_kwargs`` do not build the model
    (an unknown name, a negative size)."""
    from .models import create_model

    try:
        create_model(cfg.model, **cfg.model_kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model_kwargs {cfg.model_kwargs}: do not fit model {cfg.model}: {e}") from None


def train(cfg: TrainConfig, resume: str | Path | None = None, log=print,
          explicit: set[str] | None = None) -> Path:
    """Train per ``cfg``; returns the run folder (``best.pt``, ``last.pt``, ``config.yaml``,
    ``metrics.csv``/``.json``, ``curves.png``). ``resume``: a ``last.pt`` (or its folder) to continue;
    the continued run draws the same random numbers as an uninterrupted one (see :func:`epoch_seed`). It keeps
    its saved config except ``epochs``, ``progress``, ``device`` and ``threads`` given explicitly (``explicit``:
    the field names typed on the command line); a finished run says so and trains nothing.

    Under ``torchrun`` (WORLD_SIZE > 1) every process trains on its shard of each batch; rank 0 alone
    evaluates, writes files and logs, and broadcasts the selection metric so that the plateau schedule
    and early stopping act on every rank alike.
    """
    start_epoch, history, best, state = 0, [], {"val_acc_sel": -1.0, "epoch": -1}, None
    if not resume:
        if cfg.out:
            _check_new_run_folder(Path(cfg.out))
        _check_model_kwargs(cfg)
    if resume:
        cfg, state, rpath = _resume_state(cfg, resume, explicit)
        finished = _run_finished(cfg, state)
        if finished is not None:
            if _dist_env()[0] == 0:
                log(f"{rpath.parent}: the run is complete ({finished}); nothing to resume. Its model: "
                    f"{rpath.parent / 'best.pt'}. To train longer, start a new run (or, with a schedule other "
                    "than onecycle, resume with a larger --epochs)")
            return rpath.parent
        start_epoch = state["epoch"] + 1
        history = list(state["history"])
        best = state.get("best", best)

    rank, world = _dist_env()
    if world > 1:
        import torch.distributed as dist

        # the single-process rule: a device asked for by name must exist (select_device raises), never a
        # silent fall back to CPU; "auto" is CUDA when present
        use_nccl = select_device(cfg.device).type == "cuda"
        if use_nccl:
            device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_nccl else "gloo")
    else:
        device = select_device(cfg.device)
    try:
        out = _train(cfg, state, start_epoch, history, best, device, rank, world, log)
        if world > 1 and torch.distributed.is_initialized():
            # every rank done with its last collective before any closes its connections: a rank that tears
            # down while a peer still reads the last broadcast aborts that peer (gloo: "terminate called")
            torch.distributed.barrier()
        return out
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, state: dict[str, Any] | None, start_epoch: int, history: list[dict[str, Any]],
           best: dict[str, Any], device: torch.device, rank: int, world: int, log) -> Path:
    from .config import save_config
    from .data import DataError, default_data_path, load_dataset
    from .models import count_parameters, create_model

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    # the teachers first: a missing or broken one is an error before the data is read and before the run
    # folder exists (a failed start used to leave a config.yaml that the retry then refused as "not empty")
    teachers = load_teachers(cfg.teachers, device, cfg.channels_last) if cfg.teachers else []
    if not cfg.data:
        cfg.data = str(default_data_path())
    ds = load_dataset(cfg.data, progress=cfg.progress and rank == 0)
    tr, va = ds.split("train"), ds.split("public")
    if len(tr) == 0:
        raise DataError(f"{cfg.data}: no training images (split 'train')")
    if len(va) == 0:
        if rank == 0:
            log("note: no PublicTest/validation split found; holding out 10% of the training images for selection")
        if len(tr) < 2:
            raise DataError(f"{cfg.data}: too few images to hold out a validation split")
        rng = np.random.default_rng(cfg.seed)
        mask = rng.random(len(tr)) < 0.1
        if not mask.any():
            mask[rng.integers(len(tr))] = True
        tr, va = tr.subset(~mask), tr.subset(mask)
    if cfg.train_fraction < 1:
        rng = np.random.default_rng(cfg.seed)
        tr = tr.subset(rng.random(len(tr)) < cfg.train_fraction)
        if len(tr) == 0:
            raise DataError(f"train_fraction {cfg.train_fraction} leaves no training images; raise it")

    out = Path(cfg.out) if cfg.out else Path("runs/train") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    if world > 1:  # the ranks' clocks may straddle a second: rank 0 names the folder
        box = [str(out)]
        torch.distributed.broadcast_object_list(box, src=0)
        out = Path(box[0])
    cfg.out = str(out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")

    x_tr = torch.from_numpy(tr.images).to(device)
    y_tr = torch.from_numpy(tr.labels).to(device)
    x_va = torch.from_numpy(va.images).to(device)
    y_va = torch.from_numpy(va.labels).to(device)

    seed_everything(cfg.seed)  # the same initial weights on every rank and in every run with this seed
    model = create_model(cfg.model, **cfg.model_kwargs).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _build_optimizer(model, cfg)
    scheduler = _build_scheduler(optimizer, cfg, steps_per_epoch(len(y_tr), cfg.batch_size))
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
    gen = torch.Generator(device=device)

    weights = None
    if cfg.class_weights:
        counts = torch.bincount(y_tr, minlength=len(CLASSES)).float().clamp(min=1)
        weights = (counts.sum() / (len(CLASSES) * counts)).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)

    if teachers and rank == 0:
        log(f"distilling from {len(teachers)} teacher(s) (alpha {cfg.distill_alpha}, T {cfg.distill_temperature})")

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)

    if rank == 0 and cfg.amp and device.type == "cpu" and not amp_enabled(device, True):
        log("note: this CPU has no fast bf16 (AMX or AVX512-BF16): training in float32")
    if rank == 0:
        log(f"training {cfg.model} ({count_parameters(model) / 1e6:.2f} M params) on {device} x{world} "
            f"({'bf16 autocast' if amp_enabled(device, cfg.amp) else 'float32'}): "
            f"{len(y_tr)} train / {len(y_va)} val images, {cfg.epochs} epochs -> {out}")
    per_step = not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    last_plot = time.time()
    bad_epochs = 0 if not history else history[-1].get("bad_epochs", 0)
    if cfg.patience and bad_epochs >= cfg.patience:
        start_epoch = cfg.epochs  # the run had stopped early: resuming it must not train on
        if rank == 0:
            log(f"the run stopped early at epoch {len(history)}; nothing to resume")
    for epoch in range(start_epoch, cfg.epochs):
        # every stream re-seeded from (seed, epoch, rank): a resumed run repeats the uninterrupted one
        gen.manual_seed(epoch_seed(cfg.seed, epoch, rank, 1))
        torch.manual_seed(epoch_seed(cfg.seed, epoch, rank, 2))  # dropout masks
        stats = train_one_epoch(net, x_tr, y_tr, optimizer, scheduler, loss_fn, cfg, gen, epoch, rank, world, per_step,
                                teachers)
        if not math.isfinite(stats["train_loss"]):  # all-reduced: every rank stops here alike
            _diverged(out, cfg, epoch, history, f"the training loss is {stats['train_loss']}", rank)
        decision = torch.zeros(2, dtype=torch.float64, device=device)  # (selection metric, stop; -1: diverged)
        if rank == 0:
            t0 = time.time()
            stats.update(evaluate_split(model, x_va, y_va, amp=cfg.amp, crop_size=cfg.crop_size))
            stats["eval_seconds"] = time.time() - t0
            bad = [f"{k} is {v}" for k, v in stats.items() if not math.isfinite(v)]
            if bad:
                decision[1] = -1.0
                if world > 1:  # the other ranks wait in the broadcast below: tell them, then stop
                    torch.distributed.broadcast(decision, src=0)
                _diverged(out, cfg, epoch, history, ", ".join(bad), rank)
            sel = stats["val_acc_flip"] if cfg.eval_tta == "flip" else stats["val_acc"]
            if scheduler is not None and not per_step:
                scheduler.step(sel)
            improved = sel > best["val_acc_sel"]
            bad_epochs = 0 if improved else bad_epochs + 1
            # 5 decimals; the LR to 6 significant digits (one-cycle ends near 1e-6, which 5 decimals would zero)
            row = {"epoch": epoch + 1, **{k: float(f"{v:.6g}") if k == "lr" else round(v, 5) for k, v in stats.items()},
                   "bad_epochs": bad_epochs}
            history.append(row)
            metrics = {"public_acc": stats["val_acc"], "public_acc_flip": stats["val_acc_flip"], "epoch": epoch + 1,
                       "val_images": len(y_va), "train_images": len(y_tr), "device": str(device),
                       "world_size": world, "precision": "bf16" if amp_enabled(device, cfg.amp) else "fp32"}
            stop = bool(cfg.patience) and bad_epochs >= cfg.patience
            if improved:
                best = {"val_acc_sel": sel, "epoch": epoch + 1, **metrics}
                save_checkpoint(make_checkpoint(model, config=to_dict(cfg), metrics=metrics, history=history),
                                out / "best.pt")
            save_checkpoint(make_checkpoint(
                model, config=to_dict(cfg), metrics=metrics, history=history, epoch=epoch, best=best,
                optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict() if scheduler is not None else None),
                out / "last.pt")
            plot = stop or epoch == cfg.epochs - 1 or time.time() - last_plot >= PLOT_EVERY_S
            _write_logs(out, history, plot=plot)
            last_plot = time.time() if plot else last_plot
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {stats['train_loss']:.4f}  train {stats['train_acc']:.4f}  "
                f"val {stats['val_acc']:.4f}  val+flip {stats['val_acc_flip']:.4f}  lr {stats['lr']:.4g}  "
                f"{stats['train_seconds']:.0f}s{'  *best*' if improved else ''}")
            decision[0] = sel
            decision[1] = float(stop)
        if world > 1:
            torch.distributed.broadcast(decision, src=0)  # also the barrier: ranks wait for rank 0's eval
            if decision[1].item() < 0:
                _diverged(out, cfg, epoch, history, "rank 0's validation metrics are not finite", rank)
            if rank != 0 and scheduler is not None and not per_step:
                scheduler.step(decision[0].item())
        if decision[1].item():
            if rank == 0:
                log(f"early stopping: no gain on the validation split for {cfg.patience} epochs")
            break
    if rank == 0:
        log(f"best val accuracy {best.get('public_acc', float('nan')):.4f} "
            f"(flip TTA {best.get('public_acc_flip', float('nan')):.4f}) at epoch {best['epoch']}: {out / 'best.pt'}")
    return out


__all__ = ["TrainConfig", "TrainingError", "train", "train_one_epoch", "evaluate_split", "select_device",
           "amp_enabled", "cpu_has_fast_bf16", "teacher_probs", "distill_loss", "load_teachers",
           "load_model", "to_input", "augment_batch", "mix_batch", "epoch_seed", "steps_per_epoch"]
