"""The recipe-search table: one markdown row per run folder under runs/train/search (scripts/search.sh).

    python scripts/search_table.py [runs/train/search]

Columns: the run, epochs, the training time (summed epoch times, so not the loading) and the median epoch
(what a quiet machine takes: an epoch that shared the cores with another job is slower),
PublicTest accuracy of the selected epoch (plain / flip TTA) and the gap to the baseline ``s15-base``.
The selection metric is the flip TTA accuracy, as in ``emolens train``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(root: Path) -> list[dict]:
    out = []
    for metrics in sorted(root.glob("*/metrics.json")):
        history = json.loads(metrics.read_text())
        if not history:
            continue
        best = max(history, key=lambda h: h["val_acc_flip"])
        seconds = sum(h.get("train_seconds", 0) + h.get("eval_seconds", 0) for h in history)
        epochs = sorted(h.get("train_seconds", 0) for h in history)
        out.append({"run": metrics.parent.name, "epochs": len(history), "minutes": seconds / 60,
                    "median_epoch": epochs[len(epochs) // 2], "plain": best["val_acc"],
                    "flip": best["val_acc_flip"], "best_epoch": best["epoch"],
                    "train_acc": history[-1]["train_acc"]})
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "runs/train/search")
    table = rows(root)
    if not table:
        print(f"no runs under {root}", file=sys.stderr)
        return 1
    base = next((r for r in table if r["run"] == "s15-base"), None)
    print("| run | epochs | minutes (median epoch) | train acc (last) | PublicTest plain / flip (best epoch) "
          "| flip vs base |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in table:
        gap = f"{100 * (r['flip'] - base['flip']):+.2f}" if base else "n/a"
        print(f"| {r['run']} | {r['epochs']} | {r['minutes']:.1f} ({r['median_epoch']:.0f} s) | {r['train_acc']:.1%} | "
              f"{r['plain']:.2%} / {r['flip']:.2%} ({r['best_epoch']}) | {gap} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
