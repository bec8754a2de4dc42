"""``emolens bench``: every speed and quality measurement, one sub-verb each."""

from __future__ import annotations

import argparse

from ..runtime import TORCH_HINT, TTA_CHOICES
from .common import UsageError, _add_video_options, _video_kwargs


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
    p.add_argument("--tta", choices=TTA_CHOICES, default=None, help="tta the clients ask for (default: the server's)")
    p.add_argument("--model", default=None, help="model for the local server (default: the shipped one)")
    p.add_argument("--workers", type=int, default=1, help="worker processes of the local server")
    p.add_argument("--slow-clients", type=int, default=0, metavar="N",
                   help="meanwhile N connections dribble a request head (slowloris): latency under such an attack")
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")


def _cmd_bench_serve(args) -> int:
    import json
    from pathlib import Path

    from ..bench import bench_serve, format_bench
    from ..checkpoint import atomic_write_bytes

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
        atomic_write_bytes(Path(args.json), (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    return 1 if result.errors else 0


# ---------------------------------------------------------------------------------------------- bench

#: ``emolens bench`` sub-verbs; each has ``_add_bench_<name>(bench_subparsers)`` and ``_cmd_bench_<name>(args)``
#: in its module's section (missing ones are skipped), like the top-level verbs.
_BENCH_VERBS = ["predict", "video", "temporal", "serve", "train"]


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="speed and quality measurements (predict, video, temporal, serve, train)",
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
    from ..bench import bench_predict, format_predict

    if args.batch < 1 or args.threads < 0 or args.min_time <= 0:
        raise UsageError("--batch must be >= 1, --threads >= 0 and --min-time > 0")
    if args.engine == "ray":
        from ..bench import bench_engines, format_engines
        from ..cluster import ClusterError

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
        from ..bench import bench_detector_quality, format_detector_quality

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
    from ..video import bench_video, format_bench_video

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
    from ..temporal import benchmark_temporal

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

    from ..bench import bench_train, format_train

    if min(args.batch, args.rounds, args.steps) < 1 or args.threads < 0:
        raise UsageError("--batch, --rounds and --steps must be at least 1, --threads >= 0")
    kwargs = yaml.safe_load(args.model_kwargs) or {}
    if not isinstance(kwargs, dict):
        raise UsageError(f"--model-kwargs: expected a mapping such as {{lstm_hidden: 64}}, got {args.model_kwargs!r}")
    try:
        from ..models import list_models
    except ImportError:
        raise UsageError(f"bench train needs {TORCH_HINT}") from None

    names = args.model or ["cnn_lstm", "cnn"]
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise UsageError(f"--model: unknown {', '.join(unknown)}; choose from {', '.join(list_models())}")
    print(format_train([bench_train(n, kwargs, args.batch, args.rounds, args.steps, args.threads) for n in names]))
    return 0


