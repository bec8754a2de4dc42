"""``emolens predict``, ``export``, ``data`` and ``evaluate``: the verbs on photos, model files and datasets."""

from __future__ import annotations

import argparse
import sys

from ..runtime import DEFAULT_TTA, TTA_CHOICES
from .common import UsageError, _add_engine_options, _check_engine_options, _connect_ray

# ---------------------------------------------------------------------------------------------- predict


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="emotions of the faces in photos",
                       description="Find the faces in images and say each one's emotion. PATH: image files, "
                                   "folders (searched recursively) or glob patterns; none = a bundled sample photo. "
                                   "Prints a table per image (or JSON lines with --json); --save-dir keeps "
                                   "annotated images. A run over several images shows a progress bar and writes "
                                   "predictions.csv (one row per face) to --save-dir, else runs/predict/<time>/. "
                                   "Exit code 1 when any image could not be read.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders or globs")
    p.add_argument("--json", action="store_true", help="one JSON object per image on stdout instead of tables")
    p.add_argument("--save-dir", default=None, metavar="DIR", help="write annotated images and predictions.csv here")
    p.add_argument("--detector", default="auto",
                   help="face detector: auto (blazeface), blazeface (CNN, faces from 24 px, any image size), dlib, "
                        "dlib-small (faces down to ~32 px, 4x slower), haar")
    p.add_argument("--boxes", default=None, metavar="FILE.csv|FILE.json",
                   help="your own face boxes instead of detection: JSON [[x, y, w, h], ...] (every image) or "
                        "{\"photo.jpg\": [[x, y, w, h], ...]}, or CSV with columns x,y,w,h (and path), such as "
                        "a predictions.csv; an image not in the file has no faces")
    p.add_argument("--tta", choices=TTA_CHOICES, default=DEFAULT_TTA, help="test-time augmentation")
    p.add_argument("--no-detect", action="store_true",
                   help="the images are face crops already: classify each whole image (automatic for 48x48 gray)")
    p.add_argument("--no-align", action="store_true", help="do not rotate faces to level the eyes")
    p.add_argument("--no-bars", action="store_true",
                   help="annotated images: boxes and labels only, no probability panels")
    p.add_argument("--margin", type=float, default=None,
                   help="crop side = detected box side x (1 + margin); default: the detector's, matched to FER2013's "
                        "framing (blazeface 0.15, dlib 0.2, haar 0.1)")
    p.add_argument("--model", default=None, metavar="PATH", help=".onnx or .pt model (default: the shipped one)")
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto (by file suffix: ONNX Runtime for .onnx and the shipped model, torch for .pt), onnx, "
                        "torch")
    _add_engine_options(p, "images")




def _print_faces(console, name: str, faces, classes, size: tuple[int, int]) -> None:
    from rich import box
    from rich.table import Table

    if not faces:
        console.print(f"{name} ({size[0]}x{size[1]}): no face found", markup=False, highlight=False, soft_wrap=True)
        return
    console.print(f"{name} ({size[0]}x{size[1]}): {len(faces)} face(s)", markup=False, highlight=False,
                  soft_wrap=True)
    from rich.measure import Measurement

    # the roomiest form that fits the terminal (80 columns, 4-digit boxes): one decimal, then whole percents,
    # then narrower gaps; values are never cut
    for digits, pad in ((1, 1), (0, 1), (0, 0)):
        t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, pad))
        for col in ("#", "box x,y,w,h", "emotion", "conf", *(c[:3] for c in classes)):
            t.add_column(col, justify="left" if col == "emotion" else "right", no_wrap=True)
        for i, f in enumerate(faces):
            t.add_row(str(i), ",".join(map(str, f.box)), f"[bold]{f.emotion}[/bold]",
                      f"{100 * f.confidence:.{digits}f}%", *(f"{100 * f.probabilities[c]:.{digits}f}" for c in classes))
        # measured without the terminal's limit (which Measurement would clamp it to)
        if Measurement.get(console, console.options.update_width(10_000), t).maximum <= console.width:
            break
    console.print(t)


def _annotated_name(path, roots, used: set) -> str:
    """Output file name for an annotated image: its path relative to the folder given, flattened."""
    from pathlib import Path

    path = Path(path)
    rel = path.name
    for r in roots:
        try:
            rel = "__".join(path.resolve().relative_to(r).parts)
            break
        except ValueError:
            continue
    stem, suffix = Path(rel).stem, path.suffix.lower()
    suffix = suffix if suffix in (".jpg", ".jpeg", ".png", ".bmp", ".webp") else ".png"
    name, k = stem + suffix, 1
    while name in used:
        name, k = f"{stem}-{k}{suffix}", k + 1
    used.add(name)
    return name


def _cmd_predict(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from ..faces import DetectorError
    from ..outputs import check_new_files, check_outputs
    from ..predict import BoxError, EmotionRecognizer, expand_inputs, load_boxes_file, predict_files

    if args.margin is not None and not 0 <= args.margin <= 2:
        raise UsageError("--margin must be between 0 and 2")
    _check_engine_options(args)
    box_table = None
    if args.boxes is not None:
        if args.no_detect or getattr(args, "engine", "local") != "local":
            raise UsageError("--boxes cannot go with --no-detect or --engine ray")
        try:
            box_table = load_boxes_file(args.boxes)
        except BoxError as e:
            raise UsageError(str(e)) from None
    inputs = args.paths or [str(Path(__file__).parent.parent / "assets" / "astronaut.jpg")]
    files, problems = expand_inputs(inputs)
    save_dir = Path(args.save_dir) if args.save_dir else None
    roots = [Path(p).resolve() for p in inputs if Path(p).is_dir()]
    used: set[str] = set()
    names = {path: _annotated_name(path, roots, used) for path in files} if save_dir is not None else {}
    if save_dir is not None:  # before any work: no annotated image or CSV may replace an input photo or a file
        outputs = [save_dir / n for n in names.values()] + [save_dir / "predictions.csv"]
        check_outputs(files, files=outputs, folders=[save_dir])
        check_new_files(outputs, "give another --save-dir (or a new, empty one) or delete it first")
    err = Console(stderr=True)
    for msg in problems:
        err.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
    many = len(files) > 1 or any(Path(p).is_dir() or not Path(p).exists() for p in inputs)
    if args.engine == "ray":
        return _cmd_predict_ray(args, files, len(problems), save_dir, names, err, many)
    try:
        rec = EmotionRecognizer(model=args.model, runtime=args.runtime, detector=args.detector, tta=args.tta,
                                detect=not args.no_detect, margin=args.margin, align=not args.no_align)
    except DetectorError as e:
        raise UsageError(str(e)) from None
    results = predict_files(rec, files, boxes=box_table, annotate_dir=save_dir, annotated_names=names,
                            bars=not args.no_bars)
    return _report_predictions(args, results, rec.classes, len(files), len(problems), save_dir, err, many, "")


def _report_predictions(args, results, classes, total: int, failed: int, save_dir, err, many: bool,
                        engine: str) -> int:
    """What ``predict`` shows for its results, whichever engine made them: a table (or a JSON line) per file as it
    comes, errors on stderr, predictions.csv, a one-line summary; exit code 1 when any input failed."""
    import json
    import time
    from pathlib import Path

    from rich.console import Console

    from ..checkpoint import atomic_write_bytes
    from ..outputs import new_run_folder
    from ..predict import predictions_csv

    console = Console()
    csv_dir = save_dir or (Path("runs/predict") / time.strftime("%Y%m%d-%H%M%S") if many else None)
    rows = []
    progress = None
    if many and not args.json and err.is_terminal and not engine:
        from rich.progress import Progress

        progress = Progress(console=err, transient=True)
        task = progress.add_task("predict", total=total)
        progress.start()
    try:
        for r in results:
            if progress is not None:
                progress.advance(task)
            if r.error:
                failed += 1
                err.print(f"error: {r.error}", markup=False, highlight=False, soft_wrap=True)
                if args.json:
                    print(json.dumps(r.to_dict()), flush=True)
                continue
            rows.append((r.path, r.faces))
            if args.json:
                print(json.dumps(r.to_dict()), flush=True)
            else:
                _print_faces(progress.console if progress else console, r.path, r.faces, classes, r.size)
    finally:
        if progress is not None:
            progress.stop()
    if csv_dir is not None and not rows and save_dir is None:
        csv_dir = None  # nothing was read: no empty runs/predict/<time>/ folder
    if csv_dir is not None:
        if save_dir is None:  # runs/predict/<time>[-k], claimed by an exclusive mkdir: two runs never share one
            csv_dir = new_run_folder(csv_dir)
        atomic_write_bytes(csv_dir / "predictions.csv", predictions_csv(rows, classes).encode())
    summary = f"{len(rows)} image(s), {sum(len(f) for _, f in rows)} face(s), {failed} failed"
    if engine:
        summary += f" (engine: {engine})"
    if csv_dir is not None:
        summary += f"; predictions: {csv_dir / 'predictions.csv'}"
    if save_dir is not None:
        summary += f"; annotated images: {save_dir}/"
    sys.stdout.flush()  # the tables (stdout) before the summary (stderr) when both go to one terminal or file
    err.print(summary, markup=False, highlight=False, soft_wrap=True)
    return 1 if failed else 0




def _cmd_predict_ray(args, files, failed: int, save_dir, names: dict, err, many: bool) -> int:
    """``predict --engine ray`` (after ``_cmd_predict``'s checks of the inputs and outputs): the local verb's outputs
    (tables or JSON lines, predictions.csv, annotated images, summary, exit code), with the images labelled on a
    Ray cluster (emolens.cluster)."""
    from ..cluster import predict_files
    from ..faces import DetectorError

    options = {"model": args.model, "runtime": args.runtime, "detector": args.detector, "tta": args.tta,
               "detect": not args.no_detect, "margin": args.margin, "align": not args.no_align,
               "workers": args.workers, "draw_bars": not args.no_bars}
    started = _connect_ray(args)
    progress = None
    try:
        if files and not args.json and err.is_terminal:
            from rich.progress import Progress

            progress = Progress(console=err, transient=True)
            task = progress.add_task("predict (ray)", total=len(files))
            progress.start()
        try:
            results, classes = predict_files(files, annotated_names=[names[f] for f in files] if names else None,
                                             annotate_dir=save_dir,
                                             on_progress=(lambda n: progress.advance(task, n)) if progress else None,
                                             **options)
        except DetectorError as e:
            raise UsageError(str(e)) from None
        finally:
            if progress is not None:
                progress.stop()
    finally:
        if started:
            import ray

            ray.shutdown()
    return _report_predictions(args, results, classes, len(files), failed, save_dir, err, many, "ray")


# ---------------------------------------------------------------------------------------------- export


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="checkpoint -> ONNX (with metadata, checked against torch)",
                       description="Export a .pt checkpoint to ONNX with a dynamic batch axis and emolens metadata "
                                   "(classes, preprocessing, metrics, source sha256), then check ONNX Runtime "
                                   "against torch on random inputs (fails above 1e-4 on probabilities).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", help=".pt checkpoint (e.g. runs/train/<run>/best.pt)")
    p.add_argument("-o", "--output", default=None, help="output .onnx (default: beside the checkpoint)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--int8", action="store_true",
                   help="also write <output>.int8.onnx: static int8, calibrated on 512 FER2013 training faces, kept "
                        "only when its PublicTest accuracy is within 0.5 points of fp32")
    p.add_argument("--data", default=None,
                   help="FER2013 for --int8 (default: $EMOLENS_FER2013, else ../shared/data/fer2013.zip)")
    p.add_argument("--no-check", action="store_true", help="skip the torch vs ONNX Runtime check")
    p.add_argument("--ship", default=None, metavar="DIR",
                   help="instead: write the shipped pair (fp16 .pt + .onnx from the same weights) into DIR; with "
                        "--int8 the .onnx is the int8 variant (same accuracy check)")


def _cmd_export(args) -> int:
    from ..export import ExportError, export_onnx, ship

    try:
        if args.ship:
            r = ship(args.checkpoint, args.ship, int8=args.int8, data=args.data)
            for name, size in r["sizes"].items():
                print(f"{name}: {size / 1e6:.2f} MB")
            print(f"total {r['total_bytes'] / 1e6:.2f} MB; torch vs ONNX max |dp| = {r['max_abs_diff']:.2e}"
                  + (" (fp32 export, before int8 replaced it)" if args.int8 else ""))
            return 0
        r = export_onnx(args.checkpoint, args.output, opset=args.opset, check=not args.no_check, quantize=args.int8,
                        data=args.data, overwrite=False)
    except ExportError as e:
        raise UsageError(str(e)) from None
    print(f"{r['path']}: {r['size_bytes'] / 1e6:.2f} MB, opset {r['opset']}")
    if r["max_abs_diff"] is not None:
        print(f"torch vs ONNX Runtime: max |dp| = {r['max_abs_diff']:.2e} (limit 1e-4)")
    if r["int8_path"]:
        print(f"{r['int8_path']}: {r['int8_size_bytes'] / 1e6:.2f} MB (int8); PublicTest accuracy "
              f"{100 * r['public_acc_int8']:.2f}% vs fp32 {100 * r['public_acc_fp32']:.2f}%")
    return 0


# ---------------------------------------------------------------------------------------------- data


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="inspect FER data", description="Inspect FER2013 data in any supported form.")
    dsub = p.add_subparsers(dest="data_cmd", metavar="{stats}", required=True)
    s = dsub.add_parser("stats", help="per-split, per-class counts, charts, sample grid, duplicates",
                        description="Counts per split and class (table, CSV, JSON), a class-distribution chart "
                                    "and a sample grid (PNG, 300 DPI), and exact-pixel duplicates.")
    s.add_argument("data", nargs="?", default=None,
                   help="Kaggle folder or .zip, fer2013.csv, or <class>/ folder "
                        "(default: $EMOLENS_FER2013, else ../shared/data/fer2013.zip)")
    s.add_argument("--out", default=None, help="folder for CSV/JSON/PNG outputs (default: runs/stats/<name>)")
    s.add_argument("--skip-bad", action="store_true", help="skip unreadable images/rows (counted) instead of failing")
    s.add_argument("--no-cache", action="store_true", help="decode again instead of using the cache")


def _cmd_data(args) -> int:
    from rich.console import Console

    from ..datastats import dataset_stats, print_stats

    stats = dataset_stats(args.data, out=args.out, skip_bad=args.skip_bad, cache=not args.no_cache)
    print_stats(stats, Console())
    return 0


# ---------------------------------------------------------------------------------------------- evaluate


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model on labelled FER data (metrics, plots, HTML/XLSX report)",
                       description="Evaluate a model on one split of labelled FER data (the images are 48x48 faces "
                                   "already; no face detection). Prints the classification report and writes "
                                   "metrics.json, predictions.csv, plots, a self-contained report.html and "
                                   "report.xlsx. Give --model twice to compare two models on the same images "
                                   "(side by side, with McNemar's paired test).")
    p.add_argument("--data", default=None,
                   help="Kaggle folder or .zip, fer2013.csv or <class>/ folder "
                        "(default: $EMOLENS_FER2013, else ../shared/data/fer2013.zip)")
    p.add_argument("--split", default="auto", metavar="SPLIT",
                   help="public (val), private (test), train or all; auto (the default): public, or every image "
                        "when the data has no splits (a <class>/ folder)")
    p.add_argument("--model", action="append", default=None, metavar="PATH",
                   help=".onnx or .pt model (default: the shipped model); repeat to compare models")
    p.add_argument("--sha256", action="append", default=None, metavar="HEX",
                   help="expected sha256 of each --model, in the same order; a mismatch is an error")
    p.add_argument("--tta", choices=TTA_CHOICES, default=DEFAULT_TTA,
                   help="test-time augmentation: none, flip (the face and its mirror), shift (flip + two views moved "
                        "one pixel) or crops (10 views)")
    p.add_argument("--out", default=None,
                   help="new or empty folder for the outputs (default: runs/evaluate/<time>; never overwritten)")
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto (default): ONNX Runtime for .onnx, torch for .pt")
    p.add_argument("--device", default="auto", help="torch runtime: auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=256, help="faces per forward pass (default: 256)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")


def _cmd_evaluate(args) -> int:
    from rich.console import Console

    from ..data import default_data_path
    from ..evaluate import EvaluateError, evaluate
    from ..reports import print_report

    console = Console()
    models = args.model or [None]
    try:
        result = evaluate(args.data if args.data is not None else default_data_path(), split=args.split,
                          model=models[0] if len(models) == 1 else models, tta=args.tta, out=args.out,
                          runtime=args.runtime, batch_size=args.batch_size, device=args.device,
                          sha256=args.sha256, skip_bad=args.skip_bad, progress=True,
                          log=lambda msg: console.print(msg, markup=False, highlight=False))
    except EvaluateError as e:
        raise UsageError(str(e)) from None
    print_report(result, console)
    console.print(f"report: {result['out']}/report.html (metrics.json, report.xlsx, plots alongside)",
                  markup=False, highlight=False)
    return 0


