"""Each model and their ensemble (mean probability) on FER2013 PublicTest: the model card's teacher table.

    python scripts/ensemble.py runs/train/a/best.pt runs/train/b/best.pt [--tta flip] [--data fer2013.zip]

Models are .pt checkpoints (torch runtime) or .onnx files, all through ``Classifier.predict_proba``, the
same preprocessing and TTA code ``emolens evaluate`` uses. Prints a markdown table; ``--json`` keeps it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from emolens.checkpoint import atomic_write_bytes
    from emolens.data import default_data_path, load_dataset
    from emolens.runtime import OnnxClassifier, TorchClassifier

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help=".pt or .onnx models")
    p.add_argument("--data", default=None, help="FER2013 (default: $EMOLENS_FER2013 or ../shared/data/fer2013.zip)")
    p.add_argument("--split", default="public", help="split to score (select models on public only)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)

    ds = load_dataset(args.data or default_data_path()).split(args.split)
    y = ds.labels
    rows, probas = [], {"none": [], "flip": []}
    for path in args.models:
        clf = OnnxClassifier(path) if path.endswith(".onnx") else TorchClassifier(path)
        t0 = time.time()
        row = {"model": path}
        for tta in ("none", "flip"):
            pr = clf.predict_proba(ds.images, tta=tta)
            probas[tta].append(pr)
            row[f"acc_{tta}"] = float((pr.argmax(1) == y).mean())
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        print(f"{path}: {row['acc_none']:.4f} / flip {row['acc_flip']:.4f}", file=sys.stderr)
    if len(args.models) > 1:
        rows.append({"model": f"ensemble of {len(args.models)} (mean probability)",
                     **{f"acc_{t}": float((np.mean(probas[t], 0).argmax(1) == y).mean()) for t in probas}})
    print(f"FER2013 {args.split}: {len(y)} images\n")
    print("| model | accuracy | with flip TTA |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {100 * r['acc_none']:.2f} % | {100 * r['acc_flip']:.2f} % |")
    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(rows, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
