"""The ``emolens`` command: parses arguments and calls the Python API, nothing more.

Each verb has an ``_add_<verb>(subparsers)`` that declares its options and a ``_cmd_<verb>(args)`` that
calls the API. Errors the user can fix exit with code 2 and one line on stderr; set EMOLENS_DEBUG=1 for a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from . import __version__
from .runtime import TTA_CHOICES


class UsageError(Exception):
    """A problem with the command line or its inputs; printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data import DataError
    from .outputs import OutputError
    from .runtime import ModelError

    errors: list[type[BaseException]] = [UsageError, ConfigError, DataError, ModelError, OutputError,
                                         FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError]
    try:
        from .checkpoint import CheckpointError

        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)


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
    p.add_argument("--tta", choices=TTA_CHOICES, default="flip", help="test-time augmentation")
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


def _add_engine_options(p, what: str) -> None:
    """``--engine``/``--address``/``--workers``: where ``predict`` and ``video`` run (emolens.cluster)."""
    g = p.add_argument_group("engine (scaling out, see README: Scaling out)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help=f"local: this process; ray: the {what} are shared out over a Ray cluster "
                        "(pip install \"emolens[ray]\")")
    g.add_argument("--address", default=None, metavar="auto|ray://HOST:PORT",
                   help="Ray cluster to join (auto: the one `ray start --head` runs here); default: start a private "
                        "one on this machine for the run")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray workers, each with its own model (default: one per CPU of the cluster)")


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

    from .faces import DetectorError
    from .outputs import check_outputs
    from .predict import BoxError, EmotionRecognizer, expand_inputs, load_boxes_file, predict_files

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
    inputs = args.paths or [str(Path(__file__).with_name("assets") / "astronaut.jpg")]
    files, problems = expand_inputs(inputs)
    save_dir = Path(args.save_dir) if args.save_dir else None
    roots = [Path(p).resolve() for p in inputs if Path(p).is_dir()]
    used: set[str] = set()
    names = {path: _annotated_name(path, roots, used) for path in files} if save_dir is not None else {}
    if save_dir is not None:  # before any work: no annotated image or CSV may replace a photo given as input
        check_outputs(files, files=[save_dir / n for n in names.values()] + [save_dir / "predictions.csv"],
                      folders=[save_dir])
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

    from .checkpoint import atomic_write_bytes
    from .predict import new_run_folder, predictions_csv

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


def _check_engine_options(args) -> None:
    if args.engine == "local" and (args.address is not None or args.workers is not None):
        raise UsageError("--address and --workers are for --engine ray")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")


def _connect_ray(args) -> bool:
    """Join or start the Ray cluster for ``--engine ray``; True when this run started it (and stops it)."""
    from .cluster import ClusterError, connect

    try:
        return connect(args.address)
    except ClusterError as e:
        raise UsageError(str(e)) from None


def _cmd_predict_ray(args, files, failed: int, save_dir, names: dict, err, many: bool) -> int:
    """``predict --engine ray`` (after ``_cmd_predict``'s checks of the inputs and outputs): the local verb's outputs
    (tables or JSON lines, predictions.csv, annotated images, summary, exit code), with the images labelled on a
    Ray cluster (emolens.cluster)."""
    from .cluster import predict_files
    from .faces import DetectorError

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
                   help="instead: write the shipped pair (fp16 .pt + .onnx from the same weights) into DIR")


def _cmd_export(args) -> int:
    from .export import ExportError, export_onnx, ship

    try:
        if args.ship:
            r = ship(args.checkpoint, args.ship)
            for name, size in r["sizes"].items():
                print(f"{name}: {size / 1e6:.2f} MB")
            print(f"total {r['total_bytes'] / 1e6:.2f} MB; torch vs ONNX max |dp| = {r['max_abs_diff']:.2e}")
            return 0
        r = export_onnx(args.checkpoint, args.output, opset=args.opset, check=not args.no_check, quantize=args.int8,
                        data=args.data)
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

    from .data import dataset_stats, print_stats

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
    p.add_argument("--tta", choices=TTA_CHOICES, default="flip",
                   help="test-time augmentation: none, flip (default: the face and its mirror) or crops (10 views)")
    p.add_argument("--out", default=None,
                   help="new or empty folder for the outputs (default: runs/evaluate/<time>; never overwritten)")
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto",
                   help="auto (default): ONNX Runtime for .onnx, torch for .pt")
    p.add_argument("--device", default="auto", help="torch runtime: auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=256, help="faces per forward pass (default: 256)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of failing")


def _cmd_evaluate(args) -> int:
    from rich.console import Console

    from .data import default_data_path
    from .evaluate import EvaluateError, evaluate, print_report

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


# ---------------------------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    from .config import TrainConfig, add_config_arguments

    p = sub.add_parser("train", help="train a model",
                       description="Train an emotion model. Options come from defaults, then --config YAML, then "
                                   "the --key value flags below. The resolved config, per-epoch metrics (CSV/JSON), "
                                   "learning curves and checkpoints (best.pt, last.pt) go to the run folder.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of options")
    p.add_argument("--resume", default=None, help="continue a run from its last.pt (or run folder)")
    p.add_argument("--task", choices=["image", "sequence"], default="image",
                   help="image: the frame classifier; sequence: the temporal model over frames")
    add_config_arguments(p, TrainConfig)
    _add_sequence_arguments(p)


def _add_sequence_arguments(parser) -> None:
    """The ``--task sequence`` options (emolens.temporal.SequenceConfig) that ``emolens train`` does not already
    have."""
    import dataclasses

    from .config import TrainConfig, field_help, field_metavar
    from .temporal import SequenceConfig

    have = {f.name for f in dataclasses.fields(TrainConfig)}
    group = parser.add_argument_group("SequenceConfig options (--task sequence)")
    for f in dataclasses.fields(SequenceConfig):
        if f.name in have:
            continue
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                           metavar=field_metavar(SequenceConfig, f), help=field_help(f).replace("%", "%%"))


def _train_sequence(args) -> int:
    """``emolens train --task sequence``: SequenceConfig from defaults <- --config YAML <- flags."""
    import dataclasses

    from .config import ConfigError, TrainConfig, load_config
    from .temporal import SequenceConfig, train_sequence

    if getattr(args, "resume", None):
        raise ConfigError("--resume: the temporal model trains in minutes; start it again instead")
    fields = {f.name for f in dataclasses.fields(SequenceConfig)}
    unused = [f.name for f in dataclasses.fields(TrainConfig)
              if f.name not in fields and getattr(args, f.name, None) is not None]
    if unused:
        raise ConfigError(f"--task sequence does not use {', '.join('--' + u.replace('_', '-') for u in unused)}")
    overrides = {k: getattr(args, k) for k in fields if getattr(args, k, None) is not None}
    train_sequence(load_config(SequenceConfig, args.config, overrides))
    return 0


def _cmd_train(args) -> int:
    if args.task == "sequence":
        _import_train()  # the same install hint when torch is missing
        return _train_sequence(args)
    from .config import TrainConfig, load_config, overrides_from_args

    train = _import_train()  # first: the config check itself needs torch (the model registry)
    overrides = overrides_from_args(args, TrainConfig)
    cfg = load_config(TrainConfig, args.config, overrides)
    train(cfg, resume=args.resume, explicit=set(overrides))
    return 0


#: what `train` and the other torch-only commands say when PyTorch is missing
TORCH_HINT = ("PyTorch: pip install 'emolens[train]' (CPU-only PyTorch, without the multi-GB CUDA build: "
              "pip install torch --index-url https://download.pytorch.org/whl/cpu first)")


def _import_train():
    """``emolens.train.train``, or a UsageError with the install line when torch is missing."""
    try:
        from .train import train
    except ImportError as e:
        if (e.name or "").split(".")[0] in ("torch", "onnx", "onnxscript"):
            raise UsageError(f"train needs {TORCH_HINT}") from None
        raise
    return train


# ---------------------------------------------------------------------------------------------- video


def _add_video_options(p) -> None:
    """Model and tracking options shared by ``video``, ``webcam`` and ``bench video``."""
    g = p.add_argument_group("model and tracking")
    g.add_argument("--model", default=None, help=".onnx or .pt image model (default: the shipped one)")
    g.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto", help="inference runtime")
    g.add_argument("--detector", default="auto", help="face detector")
    g.add_argument("--smooth", choices=["auto", "temporal", "ema", "none"], default="auto",
                   help="per-track smoothing: the temporal LSTM, an EMA of probabilities, or none "
                        "(auto: temporal when a temporal model fits the image model, else EMA)")
    g.add_argument("--temporal-model", default=None, help="temporal head .onnx/.pt (default: the shipped one)")
    g.add_argument("--ema", type=float, default=0.3, help="EMA weight of the newest frame (0-1]")
    g.add_argument("--detect-every", type=int, default=3, help="run the detector every K frames, track between")
    g.add_argument("--detect-width", type=int, default=0,
                   help="shrink frames to this width before detecting (default 0: the frame as it is, which the "
                        "detector scales to its own input; shrinking is faster but loses small faces)")
    g.add_argument("--max-misses", type=int, default=5, help="detection rounds a lost face is kept for")


def _add_codec_option(p) -> None:
    p.add_argument("--codec", choices=["auto", "h264", "vp9", "vp8", "mp4v", "mjpg", "xvid"], default="auto",
                   help="video codec of the annotated file. auto: one a browser plays (.mp4: H.264 when this "
                        "OpenCV has it, else VP9; .webm: VP8); mp4v: the old MPEG-4 Part 2, fastest to write, "
                        "which browsers do not play")


def _video_kwargs(args) -> dict:
    if args.detect_every < 1:
        raise UsageError("--detect-every must be at least 1")
    if args.detect_width < 0:
        raise UsageError("--detect-width must be 0 (full size) or positive")
    if not 0 < args.ema <= 1:
        raise UsageError("--ema must be in (0, 1]")
    if args.max_misses < 0:
        raise UsageError("--max-misses must be 0 or more")
    return {"model": args.model, "runtime": args.runtime, "detector": args.detector, "smooth": args.smooth,
            "temporal_model": args.temporal_model, "ema": args.ema, "detect_every": args.detect_every,
            "detect_width": args.detect_width, "max_misses": args.max_misses}


def _add_video(sub) -> None:
    p = sub.add_parser("video", help="track and label faces in a video file or stream",
                       description="Follow every face of a video (any file or URL OpenCV/FFmpeg opens) and label "
                                   "its emotion frame by frame. Writes an annotated video (-o), a CSV with one row "
                                   "per (frame, track) (--csv) and a timeline plot (--plot); with none of them, "
                                   "all three go to runs/video/<name>/ (annotated.webm: VP8, plays in browsers).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", nargs="+", metavar="INPUT",
                   help="video file(s) or URL (rtsp://, http://...); several: see --out-dir")
    p.add_argument("-o", "--output", default=None, help="annotated video (.mp4, .avi, .mkv, .mov)")
    p.add_argument("--csv", default=None,
                   help="timeline CSV: frame, time_s, track_id, x, y, w, h, detected, emotion, confidence, p_<class>")
    p.add_argument("--plot", default=None, help="timeline plot (.png, .pdf, .svg)")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = all)")
    p.add_argument("--no-bars", action="store_true", help="draw boxes and labels only, no probability bars")
    _add_codec_option(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_video_options(p)
    _add_engine_options(p, "videos (one task per video)")
    g = p.add_argument_group("several videos (or --engine ray)")
    g.add_argument("--out-dir", default="runs/video", metavar="DIR",
                   help="each video's timeline.csv, timeline.png and summary.json go to DIR/<name>/; a video whose "
                        "folder is complete for the same options is skipped (delete the folder to redo it)")
    g.add_argument("--annotate", action="store_true", help="also write DIR/<name>/annotated.mp4 for each video")


def _cmd_video(args) -> int:
    import re
    from pathlib import Path

    from .video import process_video

    if len(args.input) > 1 or args.engine == "ray":
        return _cmd_video_batch(args)
    _check_engine_options(args)
    args.input = args.input[0]
    out, csv_path, plot = args.output, args.csv, args.plot
    if not (out or csv_path or plot):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(args.input.split("?")[0]).stem) or "stream"
        folder = Path("runs/video") / stem
        out, csv_path, plot = folder / "annotated.webm", folder / "timeline.csv", folder / "timeline.png"
    if args.max_frames < 0:
        raise UsageError("--max-frames must be 0 or more")
    res = process_video(args.input, out, csv_path, plot, max_frames=args.max_frames, progress=not args.no_progress,
                        draw_bars=not args.no_bars, codec=args.codec, **_video_kwargs(args))
    print(f"{res.frames} frames, {res.tracks} track(s), {res.rows} rows; {res.processing_fps:.1f} fps "
          f"({res.realtime_ratio:.2f}x real time at {res.fps:g} fps); smoothing: {res.smoothing}")
    for kind, path in res.outputs.items():
        print(f"{kind}: {path}")
    return 0


def _cmd_video_batch(args) -> int:
    """Several videos, or ``--engine ray``: one job per video, each into its own folder (emolens.cluster)."""
    from rich.console import Console

    from .cluster import SUMMARY, VIDEO_OUTPUTS, run_video_jobs, video_jobs
    from .outputs import check_outputs

    _check_engine_options(args)
    if args.output or args.csv or args.plot:
        raise UsageError("-o, --csv and --plot name one video's outputs; with several videos or --engine ray each "
                         "video gets its own folder under --out-dir")
    if args.max_frames < 0:
        raise UsageError("--max-frames must be 0 or more")
    settings = {**_video_kwargs(args), "annotate": args.annotate, "max_frames": args.max_frames,
                "draw_bars": not args.no_bars}
    jobs = video_jobs(args.input, args.out_dir)
    check_outputs(args.input, files=[j.folder / name for j in jobs for name in (*VIDEO_OUTPUTS.values(), SUMMARY)],
                  folders=[j.folder for j in jobs])
    err = Console(stderr=True)
    progress = None
    counts = {"done": 0, "skipped": 0, "failed": 0}

    def report(r: dict) -> None:
        counts[r["status"]] += 1
        out = progress.console if progress is not None else err
        if r["status"] == "failed":
            out.print(f"error: {r['source']}: {r['error']}", markup=False, highlight=False, soft_wrap=True)
        elif r["status"] == "skipped":
            out.print(f"{r['source']}: skipped, already complete in {r['folder']}/", markup=False, highlight=False,
                      soft_wrap=True)
        else:
            partial = "" if r["complete"] else " (stream ended early)"
            out.print(f"{r['source']}: {r['frames']} frames{partial}, {r['tracks']} track(s), {r['rows']} rows, "
                      f"{r['processing_fps']:.1f} fps -> {r['folder']}/", markup=False, highlight=False, soft_wrap=True)
        if progress is not None:
            progress.advance(task)

    started = _connect_ray(args) if args.engine == "ray" else False
    try:
        if not args.no_progress and err.is_terminal:
            from rich.progress import Progress

            progress = Progress(console=err, transient=True)
            task = progress.add_task(f"video ({args.engine})", total=len(jobs))
            progress.start()
        run_video_jobs(jobs, settings, engine=args.engine, workers=args.workers, on_result=report)
    finally:
        if progress is not None:
            progress.stop()
        if started:
            import ray

            ray.shutdown()
    err.print(f"{len(jobs)} video(s): {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed "
              f"(engine: {args.engine}); outputs: {args.out_dir}/", markup=False, highlight=False, soft_wrap=True)
    return 1 if counts["failed"] else 0


# ---------------------------------------------------------------------------------------------- webcam


def _add_webcam(sub) -> None:
    p = sub.add_parser("webcam", help="live emotion overlay from a camera",
                       description="Live window with boxes, track ids and emotions; q quits. Frames stay in memory "
                                   "and are never stored unless --record is given. Without a display (or with "
                                   "opencv-python-headless) use `emolens serve` for a live view in the browser.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--source", default="0", help="camera index, video file or stream URL")
    p.add_argument("--record", default=None, help="also save the annotated frames to this video file")
    _add_codec_option(p)
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0 = until q)")
    _add_video_options(p)


def _cmd_webcam(args) -> int:
    from .video import run_webcam

    n = run_webcam(args.source, record=args.record, max_frames=args.max_frames, codec=args.codec,
                   **_video_kwargs(args))
    print(f"{n} frames")
    return 0


# ---------------------------------------------------------------------------------------------- serve


def _add_serve(sub) -> None:
    from .decode import MAX_PIXELS

    p = sub.add_parser("serve", help="HTTP API and web page (camera, upload)",
                       description="Start the HTTP API (JSON, OpenAPI docs at /docs) and the web page at /. "
                                   "Binding to anything but localhost needs an API key, checked on every /v1 call.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 = every interface (needs a key)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--workers", type=int, default=1, help="worker processes, each with its own model")
    p.add_argument("--api-key", default=None, help="required API key (default: env EMOLENS_API_KEY)")
    p.add_argument("--model", default=None, help=".onnx or .pt model (default: the shipped one)")
    p.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto", help="inference runtime")
    p.add_argument("--detector", default="auto", help="default face detector (a request may choose another)")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none",
                   help="default test-time augmentation (a request may choose another)")
    p.add_argument("--smooth", choices=["auto", "temporal", "ema", "none"], default="auto",
                   help="label smoothing per tracked face in the live stream (auto: temporal model if shipped)")
    p.add_argument("--max-upload-mb", type=float, default=10, help="largest accepted image file")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS, help="largest accepted width x height")
    p.add_argument("--max-batch", type=int, default=16, help="most images in one batch request")
    p.add_argument("--max-request-pixels", type=int, default=MAX_PIXELS,
                   help="most decoded pixels in one batch request (sum over its images)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser pages from ORIGIN to call the API (repeatable); default: none")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="without an API key, also answer requests whose Host is NAME (repeatable); default: "
                        "localhost names only, against DNS rebinding")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def _cmd_serve(args) -> int:
    from .serve import ServeOptions, serve

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: use 1-65535")
    if min(args.max_upload_mb, args.max_pixels, args.max_batch, args.max_request_pixels) <= 0:
        raise UsageError("--max-upload-mb, --max-pixels, --max-batch and --max-request-pixels must be positive")
    opts = ServeOptions(model=args.model, runtime=args.runtime, detector=args.detector, tta=args.tta,
                        max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, max_batch=args.max_batch,
                        cors_origins=tuple(args.cors_origin), smooth=args.smooth,
                        allowed_hosts=tuple(args.allowed_host), max_request_pixels=args.max_request_pixels)
    try:
        serve(args.host, args.port, workers=args.workers, api_key=args.api_key, options=opts,
              log_level=args.log_level)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return 0


def _add_bench_serve(bsub) -> None:
    p = bsub.add_parser("serve", help="HTTP load test: requests/s, p50/p95/p99 latency, errors",
                        description="Run N concurrent clients posting an image to /v1/predict for a bounded time, "
                                    "against --url or a local `emolens serve` started for the run (on the same "
                                    "machine: clients and server share the CPU).",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--clients", type=int, default=16, help="concurrent clients")
    p.add_argument("--seconds", type=float, default=10, help="how long the clients send")
    p.add_argument("--url", default=None, help="server to load (default: start a local one)")
    p.add_argument("--image", default=None, help="image to send (default: the packaged astronaut photo)")
    p.add_argument("--api-key", default=None, help="API key to send (default: env EMOLENS_API_KEY)")
    p.add_argument("--tta", choices=TTA_CHOICES, default=None, help="TTA query option")
    p.add_argument("--model", default=None, help="model for the local server (default: the shipped one)")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the local server")
    p.add_argument("--slow-clients", type=int, default=0, metavar="N",
                   help="meanwhile N connections dribble a request head (slowloris): latency under such an attack")
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")


def _cmd_bench_serve(args) -> int:
    import json
    from pathlib import Path

    from .bench import bench_serve, format_bench
    from .checkpoint import atomic_write_bytes

    if args.clients < 1 or args.seconds <= 0 or args.workers < 1 or args.slow_clients < 0:
        raise UsageError("--clients and --workers must be >= 1, --seconds > 0 and --slow-clients >= 0")
    server_args = ["--workers", str(args.workers)] + (["--model", args.model] if args.model else [])
    try:
        result = bench_serve(args.url, clients=args.clients, seconds=args.seconds, image=args.image,
                             server_args=server_args, api_key=args.api_key,
                             params={"tta": args.tta} if args.tta else None, slow_clients=args.slow_clients)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    print(format_bench(result))
    if args.json:
        atomic_write_bytes(Path(args.json), (json.dumps(result, indent=2) + "\n").encode())
    return 1 if result["errors"] else 0


# ---------------------------------------------------------------------------------------------- bench

#: ``emolens bench`` sub-verbs; each has ``_add_bench_<name>(bench_subparsers)`` and ``_cmd_bench_<name>(args)``
#: in its module's section (missing ones are skipped), like the top-level verbs.
_BENCH_VERBS = ["predict", "video", "temporal", "serve", "train"]


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed measurements (predict, video, serve)",
                       description="Measure speed on this machine. Run `emolens bench SUBVERB --help`.")
    names = [n for n in _BENCH_VERBS if f"_add_bench_{n}" in globals()]
    bsub = p.add_subparsers(dest="bench_cmd", metavar="{" + ",".join(names) + "}", required=True)
    for name in names:
        globals()[f"_add_bench_{name}"](bsub)


def _cmd_bench(args) -> int:
    return int(globals()[f"_cmd_bench_{args.bench_cmd}"](args) or 0)


def _add_bench_predict(bsub) -> None:
    p = bsub.add_parser("predict", help="classifier ms/face and faces/s per runtime; detector ms per frame",
                        description="Time the emotion classifier under torch, ONNX Runtime fp32 and ONNX Runtime "
                                    "int8 (quantised on the fly), at batch 1 and batched, with and without TTA, "
                                    "and each installed face detector on a 640x480 frame. Prints markdown tables.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help=".onnx or .pt model (default: the shipped pair)")
    p.add_argument("--batch", type=int, default=64, help="batch size for the faces/s column")
    p.add_argument("--threads", type=int, default=0, help="inference threads (0 = the libraries' default)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds spent on each measurement")
    p.add_argument("--detector", action="append", default=None, help="detector(s) to time (default: all installed)")
    p.add_argument("--detector-quality", action="store_true",
                   help="instead: recall and false hits of each detector on synthetic frames from real photos, "
                        "FER2013 PublicTest faces (when the data is there) and face-free photos (a few minutes)")
    g = p.add_argument_group("engines (--engine ray)")
    g.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="ray: instead, images/s of `emolens predict` on --images photos, local engine vs Ray with "
                        "each --workers count, in one run")
    g.add_argument("--images", type=int, default=64, help="photos for --engine ray")
    g.add_argument("--workers", type=int, nargs="+", default=[1, 2], metavar="N", help="Ray worker counts to time")
    g.add_argument("--address", default=None, metavar="auto|ray://HOST:PORT",
                   help="Ray cluster to join (default: start a private one on this machine)")


def _cmd_bench_predict(args) -> int:
    from .bench import bench_predict, format_predict

    if args.batch < 1 or args.threads < 0 or args.min_time <= 0:
        raise UsageError("--batch must be >= 1, --threads >= 0 and --min-time > 0")
    if args.engine == "ray":
        from .bench import bench_engines, format_engines
        from .cluster import ClusterError

        if args.images < 1 or min(args.workers) < 1:
            raise UsageError("--images and --workers must be at least 1")
        try:
            result = bench_engines(args.images, tuple(args.workers), args.address, detector=(args.detector or
                                                                                               ["auto"])[0])
        except ClusterError as e:
            raise UsageError(str(e)) from None
        print(format_engines(result))
        return 0
    if args.detector_quality:
        from .bench import bench_detector_quality, format_detector_quality

        print(format_detector_quality(bench_detector_quality(args.detector)))
        return 0
    print(format_predict(bench_predict(args.model, batch=args.batch, threads=args.threads, min_time=args.min_time,
                                       detectors=args.detector)))
    return 0


def _add_bench_video(bsub) -> None:
    p = bsub.add_parser("video", help="video pipeline speed: processing fps / video fps",
                        description="Run the `emolens video` pipeline (detect, track, classify, smooth, draw, "
                                    "encode) on a video and print its speed as a ratio to real time. Without VIDEO "
                                    "a 640x480, 30 fps clip of the bundled photo (one face) is made first.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("video", nargs="?", default=None, help="video file (default: a synthetic 640x480 30 fps clip)")
    p.add_argument("--frames", type=int, default=300, help="frames to process")
    p.add_argument("--repeats", type=int, default=2, help="runs; the fastest counts")
    _add_video_options(p)


def _cmd_bench_video(args) -> int:
    from .video import bench_video, format_bench_video

    if args.frames < 1 or args.repeats < 1:
        raise UsageError("--frames and --repeats must be at least 1")
    kw = _video_kwargs(args)
    rows = [bench_video(args.video, args.frames, args.repeats, write_output=w, **kw) for w in (True, False)]
    print(format_bench_video(rows))
    return 0


def _add_bench_temporal(bsub) -> None:
    p = bsub.add_parser("temporal", help="temporal model vs per-frame argmax vs EMA on held-out sequences",
                        description="Build held-out synthetic sequences from FER2013 PublicTest (never Training) "
                                    "and compare the temporal model, per-frame argmax and EMAs of per-frame "
                                    "probabilities: per-frame accuracy, label flips per 100 frames, delay to follow "
                                    "a true change. Prints a markdown table (the model card's).",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default=None, help="FER2013 (default: $EMOLENS_FER2013 or the shared copy)")
    p.add_argument("--model", default=None, help="image model .onnx/.pt (default: the shipped one)")
    p.add_argument("--temporal-model", default=None, help="temporal head .onnx/.pt (default: the shipped one)")
    p.add_argument("--runtime", choices=["onnx", "torch"], default="onnx",
                   help="onnx: exactly what `emolens video` runs; torch: the .pt files")
    p.add_argument("--sequences", type=int, default=1000, help="held-out sequences")
    p.add_argument("--length", type=int, default=96, help="frames per sequence")
    p.add_argument("--runs", type=int, default=1500, help="jittered runs synthesised from PublicTest images")
    p.add_argument("--ema", type=float, nargs="+", default=[0.5, 0.3, 0.15], help="EMA alphas to compare")
    p.add_argument("--seed", type=int, default=1234, help="seed of the held-out sequences")


def _cmd_bench_temporal(args) -> int:
    from .temporal import benchmark_temporal

    if min(args.sequences, args.length, args.runs) < 1 or not all(0 < a <= 1 for a in args.ema):
        raise UsageError("--sequences, --length and --runs must be at least 1, --ema values in (0, 1]")
    print(benchmark_temporal(args.data, args.model, args.temporal_model, args.runtime, args.sequences, args.length,
                             args.runs, ema=tuple(args.ema), seed=args.seed))
    return 0


def _add_bench_train(bsub) -> None:
    p = bsub.add_parser("train", help="training img/s in float32 vs bf16 autocast, side by side",
                        description="Time training steps (augmentation, forward, loss, backward, SGD) in float32 "
                                    "and under bf16 autocast, interleaved, and print img/s and their ratio. bf16 "
                                    "runs where the hardware is fast at it (CUDA is not used here; CPUs with AMX "
                                    "or AVX512-BF16); elsewhere only float32 is shown.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", action="append", default=None, help="registered model(s) (default: cnn_lstm and cnn)")
    p.add_argument("--model-kwargs", default="{}", help='model arguments as YAML, e.g. "{widths: [64, 128, 256, 512]}"')
    p.add_argument("--batch", type=int, default=128, help="images per step")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds; the median round counts")
    p.add_argument("--steps", type=int, default=4, help="steps of each precision per round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")


def _cmd_bench_train(args) -> int:
    import yaml

    from .bench import bench_train, format_train

    if min(args.batch, args.rounds, args.steps) < 1 or args.threads < 0:
        raise UsageError("--batch, --rounds and --steps must be at least 1, --threads >= 0")
    kwargs = yaml.safe_load(args.model_kwargs) or {}
    if not isinstance(kwargs, dict):
        raise UsageError(f"--model-kwargs: expected a mapping such as {{lstm_hidden: 64}}, got {args.model_kwargs!r}")
    try:
        from .models import list_models
    except ImportError:
        raise UsageError("bench train needs PyTorch: pip install 'emolens[train]'") from None

    names = args.model or ["cnn_lstm", "cnn"]
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise UsageError(f"--model: unknown {', '.join(unknown)}; choose from {', '.join(list_models())}")
    print(format_train([bench_train(n, kwargs, args.batch, args.rounds, args.steps, args.threads) for n in names]))
    return 0


# ---------------------------------------------------------------------------------------------- main

#: verbs in the order --help lists them; each module's section above adds its own.
_VERBS = ["predict", "evaluate", "train", "export", "video", "webcam", "serve", "data", "bench"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help only where the help does not already say its default, and
    never "(default: None)" or "(default: False)", which say nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def _set_formatter(parser: argparse.ArgumentParser) -> None:
    """The one help formatter for the parser and every sub-parser below it."""
    parser.formatter_class = _HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _set_formatter(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emolens",
        description="Facial emotion recognition (angry, disgust, fear, happy, neutral, sad, surprise) in photos, "
                    "videos, webcams and over HTTP. Run `emolens VERB --help` for each verb.")
    parser.add_argument("--version", action="version", version=f"emolens {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="VERB")
    for verb in _VERBS:
        adder = globals().get(f"_add_{verb}")
        if adder is not None:
            adder(sub)
    _set_formatter(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.cmd:
        parser.print_help()
        return 0
    handler = globals()[f"_cmd_{args.cmd.replace('-', '_')}"]
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # never show a traceback to a user unless asked
        if os.environ.get("EMOLENS_DEBUG"):
            traceback.print_exc()
        print(f"error: {type(e).__name__}: {e} (set EMOLENS_DEBUG=1 for details)", file=sys.stderr)
        return 1
