"""Which test-time augmentation: PublicTest accuracy of a model under sets of whole-pixel shifts and mirrors.

    python scripts/tta.py src/emolens/weights/emolens_cnn_lstm.onnx [more.onnx ...] [--data fer2013.zip]

Each view is the face shifted by (dy, dx) whole pixels (the border repeated, as the ``crop_pad`` training
augmentation pads), mirrored or not; a TTA set averages the probabilities of its views. The views are the
ones of ``emolens.runtime.tta_views`` where a set matches a mode. Prints a markdown table: rows are sets,
columns models, plus the views each set costs (speed is about 1 / views).
"""

from __future__ import annotations

import argparse
import itertools
import sys

import numpy as np

#: named sets of (dy, dx, mirrored) views
SETS: dict[str, list[tuple[int, int, bool]]] = {
    "none": [(0, 0, False)],
    "flip": [(0, 0, False), (0, 0, True)],
    "flip + 1 px diagonal pair (4 views)": [(0, 0, False), (0, 0, True), (1, 1, False), (-1, -1, True)],
    "flip + 1 px anti-diagonal pair (4 views)": [(0, 0, False), (0, 0, True), (1, -1, False), (-1, 1, True)],
    "flip x diagonal 1 px (6 views)": [(d, d, m) for d in (0, 1, -1) for m in (False, True)],
    "flip x 4-neighbours 1 px (10 views)": [(dy, dx, m) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))
                                           for m in (False, True)],
    "flip x 3x3 at 1 px (18 views)": [(dy, dx, m) for dy, dx in itertools.product((-1, 0, 1), repeat=2)
                                      for m in (False, True)],
}


def shifted(faces: np.ndarray, dy: int, dx: int, mirrored: bool) -> np.ndarray:
    """(N, 48, 48) uint8 -> the faces moved by (dy, dx) whole pixels (runtime.shift_faces), mirrored if asked."""
    from emolens.runtime import shift_faces

    faces = shift_faces(faces, dy, dx)
    return np.ascontiguousarray(faces[:, :, ::-1] if mirrored else faces)


def main(argv: list[str] | None = None) -> int:
    from emolens.data import default_data_path, load_dataset
    from emolens.runtime import load_classifier

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help=".onnx or .pt models")
    p.add_argument("--data", default=None, help="FER2013 (default: $EMOLENS_FER2013 or ../shared/data/fer2013.zip)")
    p.add_argument("--split", default="public", help="split to score (select on public only)")
    args = p.parse_args(argv)

    ds = load_dataset(args.data or default_data_path()).split(args.split)
    views = sorted({v for s in SETS.values() for v in s})
    table: dict[str, dict[str, float]] = {name: {} for name in SETS}
    for path in args.models:
        clf = load_classifier(path, "onnx" if path.endswith(".onnx") else "torch")
        probs = {v: clf.predict_proba(shifted(ds.images, *v), tta="none") for v in views}
        for name, s in SETS.items():
            mean = np.mean([probs[v] for v in s], axis=0)
            table[name][path] = float((mean.argmax(1) == ds.labels).mean())
    print(f"FER2013 {args.split}: {len(ds.labels)} images\n")
    print("| TTA | views | " + " | ".join(args.models) + " |")
    print("|---|---:|" + "---:|" * len(args.models))
    for name, s in SETS.items():
        print(f"| {name} | {len(s)} | " + " | ".join(f"{table[name][m]:.2%}" for m in args.models) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
