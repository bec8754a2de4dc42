#!/usr/bin/env python3
"""The ablation of issue #3: ``cnn_lstm`` vs ``cnn`` vs ``reference``, each with and without augmentation,
trained by ``emolens.train.train`` on the same data with the same recipe, epochs and seed. Writes a
markdown table (parameters, FLOPs per face, PublicTest accuracy plain and with flip TTA, training time,
device) and the same numbers as JSON next to it.

    python scripts/ablation.py --epochs 30 --out runs/ablation/ABLATION.md                 # CPU, default recipe
    python scripts/ablation.py --config configs/gpu.yaml --device cuda --epochs 60 \\
        --out runs/ablation-gpu/ABLATION.md                                                 # on a GPU
    python scripts/ablation.py --epochs 1 --train-fraction 0.02 --out /tmp/abl/ABLATION.md  # smoke test

Each run lives in ``<runs-dir>/<model>-<aug|noaug>``; a run folder that already holds a ``last.pt`` of
the same config is resumed (or, when complete, only read), so an interrupted ablation continues where
it stopped. "Without augmentation" turns off the affine/erasing augmentation and mixup/cutmix alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

MODELS = ("cnn_lstm", "cnn", "reference")


class AblationError(Exception):
    """A setting the ablation cannot use; printed as one line, exit code 2."""
IGNORED_KEYS = ("progress", "out", "threads", "device", "data")  # may differ between a run and its resume


def device_description(device: str) -> str:
    """'NVIDIA H100 80GB HBM3' or 'cpu: <processor> x<threads>' for the device a run trained on."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"cpu: {name} x{torch.get_num_threads()} threads"


def _kwargs_for(model: str, base: dict[str, Any]) -> dict[str, Any]:
    """The recipe's model arguments that ``model`` takes: cnn gets cnn_lstm's backbone widths (the two
    then differ only in their heads), reference takes none of them."""
    import inspect

    from emolens.models import create_model

    accepted = inspect.signature(type(create_model(model)).__init__).parameters
    return {k: v for k, v in base["model_kwargs"].items() if k in accepted}


def run_one(values: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train (or resume, or read back) one run; its row of the table."""
    from emolens.checkpoint import read_checkpoint
    from emolens.config import build_config, to_dict
    from emolens.models import count_flops, count_parameters, create_model
    from emolens.train import TrainConfig, train

    cfg = build_config(TrainConfig, {**values, "out": str(run_dir)})
    resume = None
    if (run_dir / "last.pt").is_file():
        saved = read_checkpoint(run_dir / "last.pt")["config"]
        want = to_dict(cfg)
        differ = [k for k in want if k not in IGNORED_KEYS and saved.get(k) != want[k]]
        if differ:
            raise AblationError(f"{run_dir} holds a run with other settings ({', '.join(differ)}); "
                                "give another --runs-dir")
        resume = run_dir
    wall = time.time()
    train(cfg, resume=resume)
    wall = time.time() - wall
    best = read_checkpoint(run_dir / "best.pt")
    history = read_checkpoint(run_dir / "last.pt")["history"]
    model = create_model(cfg.model, **cfg.model_kwargs)
    return {
        "model": cfg.model, "augment": cfg.augment, "params": count_parameters(model), "flops": count_flops(model),
        "public_acc": best["metrics"]["public_acc"], "public_acc_flip": best["metrics"]["public_acc_flip"],
        "best_epoch": best["metrics"]["epoch"], "epochs_run": len(history),
        "train_seconds": sum(h.get("train_seconds", 0.0) for h in history),
        "wall_seconds_this_call": wall, "device": best["metrics"].get("device", cfg.device),
        "device_name": device_description(best["metrics"].get("device", cfg.device)),
        "train_images": best["metrics"].get("train_images"), "val_images": best["metrics"].get("val_images"),
        "run_dir": str(run_dir),
    }


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Ablation: CNN + LSTM vs CNN vs the reference design",
        "",
        f"Data `{meta['data']}`: {rows[0]['train_images']} training images, {rows[0]['val_images']} PublicTest "
        f"images; {meta['epochs']} epochs, seed {meta['seed']}, the same recipe for every run "
        f"(`{meta['recipe']}`). Accuracy is that of the checkpoint selected on PublicTest with flip TTA (the "
        "split is both selection and report set, as in the issue's protocol). FLOPs: forward, one 48x48 face, "
        "2 per multiply-add, LSTM included (`emolens.models.count_flops`). Train time: the epochs' training "
        "loops, evaluation excluded.",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| model | augmentation | params | FLOPs / face | PublicTest acc | + flip TTA | best epoch | train time | "
        "device |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        cells = [r["model"], "on" if r["augment"] else "off", f"{r['params'] / 1e6:.2f} M",
                 f"{r['flops'] / 1e6:.0f} M", f"{100 * r['public_acc']:.2f} %", f"{100 * r['public_acc_flip']:.2f} %",
                 f"{r['best_epoch']}/{r['epochs_run']}", f"{r['train_seconds']:.0f} s", r["device_name"]]
        lines.append("| " + " | ".join(cells) + " |")
    by = {(r["model"], r["augment"]): r for r in rows}
    verdicts = []
    for aug in (True, False):
        a, b = by.get(("cnn_lstm", aug)), by.get(("cnn", aug))
        if a and b:
            delta = 100 * (a["public_acc_flip"] - b["public_acc_flip"])
            word = "helps" if delta > 0 else "does not help"
            verdicts.append(f"- Augmentation {'on' if aug else 'off'}: the LSTM head {word} "
                            f"({delta:+.2f} points PublicTest with flip TTA, cnn_lstm vs cnn; one run each, so "
                            "differences within run-to-run noise decide nothing).")
    for model in MODELS:
        a, b = by.get((model, True)), by.get((model, False))
        if a and b:
            verdicts.append(f"- {model}: augmentation changes PublicTest (flip TTA) by "
                            f"{100 * (a['public_acc_flip'] - b['public_acc_flip']):+.2f} points.")
    if verdicts:
        lines += ["", *verdicts]
    lines += ["", f"Written {meta['date']} by `scripts/ablation.py`; per-run folders under `{meta['runs_dir']}`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="markdown file to write (a .json with the numbers goes beside it)")
    p.add_argument("--data", default=None, help="FER data (default: $EMOLENS_FER2013 / ../shared/data/fer2013.zip)")
    p.add_argument("--config", default=None, help="base recipe YAML for every run (e.g. configs/gpu.yaml)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the recipe's)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the recipe's)")
    p.add_argument("--train-fraction", type=float, default=None, help="use this fraction of the training split")
    p.add_argument("--seed", type=int, default=0, help="the one seed of every run")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated registered model names")
    p.add_argument("--augment", choices=["both", "on", "off"], default="both", help="which augmentation settings")
    p.add_argument("--runs-dir", default=None, help="run folders (default: <out's folder>/runs)")
    p.add_argument("--progress", action="store_true", help="show the per-batch progress bar")
    args = p.parse_args(argv)

    from emolens.checkpoint import atomic_write_bytes
    from emolens.config import ConfigError, load_config, to_dict
    from emolens.data import DataError, default_data_path
    from emolens.models import create_model, list_models
    from emolens.train import TrainConfig

    out = Path(args.out)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out.parent / "runs"
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    image_models = [m for m in list_models() if getattr(create_model(m), "input_kind", "image") == "image"]
    unknown = [m for m in models if m not in image_models]
    if unknown:
        print(f"error: unknown image model(s) {', '.join(unknown)}; available: {', '.join(image_models)}",
              file=sys.stderr)
        return 2
    overrides = {"epochs": args.epochs, "device": args.device, "batch_size": args.batch_size,
                 "train_fraction": args.train_fraction, "seed": args.seed, "threads": args.threads,
                 "data": args.data or str(default_data_path()), "progress": args.progress}
    try:
        base = to_dict(load_config(TrainConfig, args.config, overrides))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base.pop("out")
    settings = {"both": (True, False), "on": (True,), "off": (False,)}[args.augment]
    rows = []
    try:
        for model in models:
            for aug in settings:
                values = {**base, "model": model, "augment": aug, "model_kwargs": _kwargs_for(model, base)}
                if not aug:
                    values.update(mixup=0.0, cutmix=0.0)
                print(f"== {model}, augmentation {'on' if aug else 'off'}", flush=True)
                rows.append(run_one(values, runs_dir / f"{model}-{'aug' if aug else 'noaug'}"))
    except (AblationError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    recipe = args.config or "TrainConfig defaults"
    meta = {"data": base["data"], "epochs": base["epochs"], "seed": base["seed"], "recipe": recipe,
            "command": " ".join(["python", "scripts/ablation.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "runs_dir": str(runs_dir)}
    atomic_write_bytes(out, markdown(rows, meta).encode())
    atomic_write_bytes(out.with_suffix(".json"), json.dumps({"meta": meta, "config": base, "rows": rows},
                                                             indent=1).encode())
    print(markdown(rows, meta))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
