"""``emolens bench train``: training-step throughput in float32 against bf16 autocast on this CPU."""

from __future__ import annotations

import statistics
import time
from typing import Any


def bench_train(model: str = "cnn_lstm", model_kwargs: dict | None = None, batch: int = 128, rounds: int = 6,
                steps: int = 4, threads: int = 0) -> dict[str, Any]:
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
    out = {"model": model, "params": count_parameters(net), "batch": batch, "threads": torch.get_num_threads(),
           "cpu_fast_bf16": cpu_has_fast_bf16(), **{f"{m}_img_s": statistics.median(r) for m, r in rates.items()}}
    if "bf16_img_s" in out:
        out["ratio"] = out["bf16_img_s"] / out["fp32_img_s"]
    return out


def format_train(rows: list[dict[str, Any]]) -> str:
    """A markdown table of :func:`bench_train` results."""
    lines = ["| model | params | batch | threads | fp32 img/s | bf16 img/s | bf16 / fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bf16 = f"{r['bf16_img_s']:.0f}" if "bf16_img_s" in r else "no fast bf16 on this CPU"
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "-"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['batch']} | {r['threads']} | "
                     f"{r['fp32_img_s']:.0f} | {bf16} | {ratio} |")
    return "\n".join(lines)
