"""Crop TTA for models trained on windows (``crop_size``): PublicTest accuracy of a .pt checkpoint under
the window views that FER2013 papers test with, and on the whole face.

    python scripts/crop_tta.py runs/train/search/crop44/best.pt [more.pt ...] [--data fer2013.zip]

Views: the whole 48x48 face (the networks are fully convolutional, so they take it as it is, with a larger
feature map than they trained on); the centre window; the 5 windows at the corners and the centre; and each
of those with its mirror (the "10-crop" of the papers). The window size is the checkpoint's ``crop_size``
(``--crop`` for checkpoints trained on whole faces). Prints a markdown table: rows are view sets, columns
models, plus the forward passes each set costs.
"""

from __future__ import annotations

import argparse
import sys


def _probs(model, view):
    """(N, 1, S, S) normalised input -> (N, 7) float32 probabilities, float32 throughout."""
    import torch

    with torch.inference_mode():
        return torch.cat([model(view[i:i + 512]).float().softmax(1) for i in range(0, len(view), 512)])


def main(argv: list[str] | None = None) -> int:
    import torch

    from emolens.checkpoint import load_model
    from emolens.data import default_data_path, load_dataset
    from emolens.train import centre_crop, to_input

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help=".pt checkpoints")
    p.add_argument("--data", default=None, help="FER2013 (default: $EMOLENS_FER2013 or ../shared/data/fer2013.zip)")
    p.add_argument("--split", default="public", help="split to score (select on public only)")
    p.add_argument("--crop", type=int, default=0, help="window size when the checkpoint has no crop_size")
    args = p.parse_args(argv)

    ds = load_dataset(args.data or default_data_path()).split(args.split)
    x = to_input(torch.from_numpy(ds.images))
    y = torch.from_numpy(ds.labels).long()
    sets = ["whole face", "whole face + flip", "centre window", "centre + flip", "5 windows", "10 windows (5 + flips)"]
    cost = [1, 2, 1, 2, 5, 10]
    table: dict[str, list[float]] = {}
    for path in args.models:
        model, ckpt = load_model(path, device="cpu")
        size = int((ckpt.get("config") or {}).get("crop_size") or args.crop)
        if not size:
            p.error(f"{path}: trained on whole faces; give --crop")
        m = x.shape[-1] - size  # the far corner's offset
        whole, whole_f = _probs(model, x), _probs(model, x.flip(3))
        corners = [x[..., t:t + size, s:s + size] for t, s in ((0, 0), (0, m), (m, 0), (m, m))]
        windows = [centre_crop(x, size), *corners]
        win = [_probs(model, w) for w in windows]
        win_f = [_probs(model, w.flip(3)) for w in windows]
        results = [whole, whole + whole_f, win[0], win[0] + win_f[0], sum(win), sum(win) + sum(win_f)]
        table[f"{path} ({size} px)"] = [(r.argmax(1) == y).float().mean().item() for r in results]
    print(f"FER2013 {args.split}: {len(y)} images\n")
    print("| views | forward passes | " + " | ".join(table) + " |")
    print("|---|---:|" + "---:|" * len(table))
    for i, name in enumerate(sets):
        print(f"| {name} | {cost[i]} | " + " | ".join(f"{acc[i]:.2%}" for acc in table.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
