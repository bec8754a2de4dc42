"""``emolens data stats``: a dataset's class balance per split, exact-pixel duplicates (within and across
splits, and those whose copies disagree on the label), and the charts and tables that show them."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data import SPLITS, DataError, FERDataset, default_data_path, load_dataset
from .preprocess import CLASSES
from .results import Result


def find_duplicates(images: np.ndarray) -> list[np.ndarray]:
    """Groups of exact-pixel duplicates among ``images`` (N, 48, 48) uint8: each group the ascending indices
    of 2+ images whose bytes are identical (BLAKE2b of the 2304 bytes), groups in order of first index."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    by_hash: dict[bytes, list[int]] = {}
    for i, row in enumerate(flat):
        by_hash.setdefault(hashlib.blake2b(row.data, digest_size=16).digest(), []).append(i)
    return [np.asarray(v) for v in by_hash.values() if len(v) > 1]


def _duplicate_summary(ds: FERDataset, groups: list[np.ndarray]) -> dict[str, Any]:
    present = [s for s in range(len(SPLITS)) if (ds.splits == s).any()]
    within = {SPLITS[s]: {"groups": 0, "images": 0, "extra_copies": 0} for s in present}
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]
    across = {f"{SPLITS[a]}-{SPLITS[b]}": {"groups": 0, f"images_{SPLITS[a]}": 0, f"images_{SPLITS[b]}": 0}
              for a, b in pairs}
    conflicts = conflict_images = 0
    for g in groups:
        per = np.bincount(ds.splits[g], minlength=len(SPLITS))
        for s in present:
            if per[s] >= 2:
                w = within[SPLITS[s]]
                w["groups"] += 1
                w["images"] += int(per[s])
                w["extra_copies"] += int(per[s]) - 1
        for a, b in pairs:
            if per[a] and per[b]:
                x = across[f"{SPLITS[a]}-{SPLITS[b]}"]
                x["groups"] += 1
                x[f"images_{SPLITS[a]}"] += int(per[a])
                x[f"images_{SPLITS[b]}"] += int(per[b])
        if len(set(ds.labels[g].tolist())) > 1:
            conflicts += 1
            conflict_images += len(g)
    flat = ds.images.reshape(len(ds), -1)
    constant = flat.min(axis=1) == flat.max(axis=1)
    return {
        "groups": len(groups), "images": int(sum(len(g) for g in groups)),
        "extra_copies": int(sum(len(g) - 1 for g in groups)),
        "within": within, "across": across,
        "label_conflicts": {"groups": conflicts, "images": conflict_images},
        "constant_images": {SPLITS[s]: int((constant & (ds.splits == s)).sum()) for s in present},
    }


def _stats_name(path: Path) -> str:
    path = path.resolve()
    return (path.name if path.is_dir() else path.stem) or "data"


@dataclass(frozen=True)
class DatasetStats(Result):
    """What :func:`dataset_stats` found and wrote (``stats.json`` holds the same, without ``out``)."""

    data: str
    images: int
    classes: list[str]
    splits: dict[str, Any]  # split -> {"total", "classes": {class: {"count", "percent"}}}
    duplicates: dict[str, Any]  # exact-pixel groups: within each split, across splits, conflicting labels
    skipped: dict[str, Any]  # {"count", "files"}: unreadable files left out (skip_bad)
    load_seconds: float
    from_cache: bool
    outputs: dict[str, str]  # kind -> file written
    out: str  # the folder


def dataset_stats(data: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                  skip_bad: bool = False, cache: bool = True, samples_per_class: int = 8,
                  progress: bool = True) -> dict[str, Any]:
    """Counts, charts, samples and exact duplicates of a FER dataset, written to ``out``.

    ``data`` is anything :func:`load_dataset` reads (default: :func:`default_data_path`). Writes
    ``stats.csv`` (split, class, count, percent of the split), ``stats.json`` (everything returned here),
    ``duplicates.csv`` (one row per image in a group of identical 48x48 images), ``class_distribution.png``
    and ``samples.png`` (300 DPI) to ``out`` (default ``runs/stats/<data name>/``). Returns a
    :class:`DatasetStats` (stats.json's fields plus ``out``). Example:
    ``dataset_stats("fer2013.zip").duplicates["across"]``.
    """
    from .checkpoint import atomic_write_bytes
    from .outputs import check_new_folder, fresh_folder
    from .reports import plot_class_distribution, plot_sample_grid

    if data is None:
        path = default_data_path()
        if not path.exists():
            raise DataError(f"no DATA given and no FER2013 at {path}: run `emolens data stats DATA` with DATA a "
                            f"Kaggle folder or .zip (train/<class>/*.jpg), a fer2013.csv or a folder of <class>/ "
                            f"images, or set EMOLENS_FER2013")
    else:
        path = Path(data)
    # before the data is read: --out must be new or empty (a previous report is never replaced); the default
    # runs/stats/<name> moves on to <name>-2... when a previous run's report is there
    if out is not None:
        out_dir = check_new_folder(out, "--out", "give a new folder or leave --out out")
    else:
        out_dir = fresh_folder(Path("runs") / "stats" / _stats_name(path))
    t0 = time.perf_counter()
    ds = load_dataset(path, skip_bad=skip_bad, cache=cache, progress=progress)
    load_seconds = time.perf_counter() - t0

    counts = ds.counts()
    counts_all = {c: int(n) for c, n in zip(CLASSES, np.bincount(ds.labels, minlength=len(CLASSES)), strict=True)}
    table = {**counts, "all": counts_all}
    splits_out: dict[str, Any] = {}
    for split, per in table.items():
        total = sum(per.values())
        splits_out[split] = {"total": total, "classes": {
            c: {"count": n, "percent": round(100.0 * n / total, 2) if total else 0.0} for c, n in per.items()}}
    groups = find_duplicates(ds.images)
    result: dict[str, Any] = {
        "data": str(path), "images": len(ds), "classes": list(CLASSES), "splits": splits_out,
        "duplicates": _duplicate_summary(ds, groups),
        "skipped": {"count": len(ds.skipped), "files": list(ds.skipped)},
        "load_seconds": round(load_seconds, 3), "from_cache": ds.cached,
    }

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "class", "count", "percent"])
    for split, s in splits_out.items():
        for c, v in s["classes"].items():
            w.writerow([split, c, v["count"], f"{v['percent']:.2f}"])
        w.writerow([split, "total", s["total"], "100.00" if s["total"] else "0.00"])
    atomic_write_bytes(out_dir / "stats.csv", buf.getvalue().encode())

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["group", "hash", "split", "class", "source"])
    for gi, g in enumerate(groups, start=1):
        digest = hashlib.blake2b(ds.images[g[0]].tobytes(), digest_size=16).hexdigest()
        for i in g:
            w.writerow([gi, digest, SPLITS[ds.splits[i]], CLASSES[ds.labels[i]], ds.sources[i]])
    atomic_write_bytes(out_dir / "duplicates.csv", buf.getvalue().encode())

    name = _stats_name(path)
    plot_class_distribution(counts, out_dir / "class_distribution.png", title=f"{name}: images per class and split")
    rng = np.random.default_rng(0)
    samples = {}
    for k, c in enumerate(CLASSES):
        idx = np.flatnonzero(ds.labels == k)
        pick = np.sort(rng.choice(idx, size=min(samples_per_class, len(idx)), replace=False)) if len(idx) else idx
        samples[c] = ds.images[pick]
    plot_sample_grid(samples, out_dir / "samples.png", counts=counts_all,
                     title=f"{name}: {samples_per_class} random faces per class (48x48, as stored)")

    result["outputs"] = {k: str(out_dir / f) for k, f in (
        ("csv", "stats.csv"), ("json", "stats.json"), ("duplicates", "duplicates.csv"),
        ("class_distribution", "class_distribution.png"), ("samples", "samples.png"))}
    atomic_write_bytes(out_dir / "stats.json", (json.dumps(result, indent=1) + "\n").encode())
    return DatasetStats(**result, out=str(out_dir))


def print_stats(stats: dict[str, Any], console=None) -> None:
    """The :func:`dataset_stats` result as a terminal table (count and percent per split and class) and a
    few lines on duplicates, skipped files and the output folder."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    splits = list(stats["splits"])
    table = Table(title=f"{stats['data']}: {stats['images']} images", title_justify="left")
    table.add_column("class")
    for s in splits:
        table.add_column(s, justify="right")
        table.add_column("%", justify="right")
    for c in stats["classes"]:
        row = [c]
        for s in splits:
            v = stats["splits"][s]["classes"][c]
            row += [str(v["count"]), f"{v['percent']:.1f}"]
        table.add_row(*row)
    table.add_section()
    table.add_row("total", *[x for s in splits for x in (str(stats["splits"][s]["total"]), "100.0")])
    console.print(table)

    def say(msg: str) -> None:
        console.print(msg, markup=False, highlight=False)

    d = stats["duplicates"]
    say(f"exact-pixel duplicates: {d['groups']} groups of identical images ({d['images']} images, "
        f"{d['extra_copies']} extra copies); {d['label_conflicts']['groups']} groups carry different labels")
    for s, w in d["within"].items():
        say(f"  within {s}: {w['groups']} groups, {w['extra_copies']} extra copies")
    for pair, x in d["across"].items():
        a, b = pair.split("-")
        n = x["groups"]
        say(f"  across {a} and {b}: {n} distinct image{'' if n == 1 else 's'} in both ({x[f'images_{a}']} "
            f"cop{'y' if x[f'images_{a}'] == 1 else 'ies'} in {a}, {x[f'images_{b}']} in {b})")
    blank = sum(d["constant_images"].values())
    if blank:
        say(f"  constant (blank) images: {blank} ("
            + ", ".join(f"{n} in {s}" for s, n in d["constant_images"].items() if n) + ")")
    if stats["skipped"]["count"]:
        first = stats["skipped"]["files"][:3]
        say(f"skipped {stats['skipped']['count']} unreadable files or rows (all listed in stats.json), e.g.:")
        for line in first:
            say(f"  {line}")
    src = "cache" if stats["from_cache"] else "decoded"
    say(f"loaded in {stats['load_seconds']:.2f} s ({src}); outputs in {stats['out']}/: stats.csv, stats.json, "
        f"duplicates.csv, class_distribution.png, samples.png")
