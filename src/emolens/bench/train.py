"""``emolens bench train``: training-step throughput in float32 against bf16 autocast on this CPU."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..results import Result


@dataclass
class TrainBench(Result):
    """Training-step throughput of one model, float32 against bf16 autocast (``bf16_img_s`` and ``ratio`` are
    None on a CPU without fast bf16)."""

    model: str
    params: int
    batch: int
    threads: int
    cpu_fast_bf16: bool
    fp32_img_s: float
    bf16_img_s: float | None = None
    ratio: float | None = None       # bf16 / fp32


def bench_train(model: str = "cnn_lstm", model_kwargs: dict | None = None, batch: int = 128, rounds: int = 6,
                steps: int = 4, threads: int = 0) -> TrainBench:
    """Training-step throughput in float32 and under bf16 autocast, measured in interleaved rounds
    (``steps`` steps of each mode per round, so load from other jobs hits both alike). A step is what
    ``train_one_epoch`` does: uint8 -> input, on-device augmentation, forward, float32 loss, backward,
    SGD step, on (batch, 1, 48, 48) channels-last input. Returns per-mode median img/s and their ratio."""
    import torch

    from ..config import TrainConfig
    from ..models import count_parameters, create_model
    from ..train import _autocast, amp_enabled, augment_batch, cpu_has_fast_bf16, to_input

    if threads:
        torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    cfg = TrainConfig(model=model)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 48, 48), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 7, (batch,), generator=gen)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    net = create_model(model, **(model_kwargs or {})).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    modes = {"fp32": False, "bf16": True} if amp_enabled(cpu, True) else {"fp32": False}

    def step(amp: bool) -> None:
        x = augment_batch(to_input(images).contiguous(memory_format=torch.channels_last), cfg, gen)
        with _autocast(cpu, amp):
            logits = net(x)
        loss = loss_fn(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for amp in modes.values():  # warm-up: oneDNN picks and caches its kernels per dtype
        step(amp)
        step(amp)
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(rounds):
        for mode, amp in modes.items():
            t = time.perf_counter()
            for _ in range(steps):
                step(amp)
            rates[mode].append(steps * batch / (time.perf_counter() - t))
    fp32 = statistics.median(rates["fp32"])
    bf16 = statistics.median(rates["bf16"]) if "bf16" in rates else None
    return TrainBench(model, count_parameters(net), batch, torch.get_num_threads(), cpu_has_fast_bf16(), fp32, bf16,
                      None if bf16 is None else bf16 / fp32)


def format_train(rows: Sequence[TrainBench]) -> str:
    """A markdown table of :func:`bench_train` results."""
    lines = ["| model | params | batch | threads | fp32 img/s | bf16 img/s | bf16 / fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bf16 = f"{r.bf16_img_s:.0f}" if r.bf16_img_s is not None else "no fast bf16 on this CPU"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(f"| {r.model} | {r.params / 1e6:.2f} M | {r.batch} | {r.threads} | {r.fp32_img_s:.0f} | {bf16} | "
                     f"{ratio} |")
    return "\n".join(lines)
