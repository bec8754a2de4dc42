"""What every verb of the CLI shares: the usage error (one line, exit code 2), the errors a user can fix, and the
options and checks that several verbs take (the Ray engine, video processing, the codec)."""

from __future__ import annotations

from ..runtime import SMOOTH_CHOICES


class UsageError(Exception):
    """A problem with the command line or its inputs; printed as one line, exit code 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..config import ConfigError
    from ..data import DataError
    from ..outputs import OutputError
    from ..runtime import ModelError

    errors: list[type[BaseException]] = [UsageError, ConfigError, DataError, ModelError, OutputError,
                                         FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError]
    try:
        from ..checkpoint import CheckpointError

        errors.append(CheckpointError)
    except ImportError:
        pass
    return tuple(errors)



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




def _check_engine_options(args) -> None:
    if args.engine == "local" and (args.address is not None or args.workers is not None):
        raise UsageError("--address and --workers are for --engine ray")
    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")


def _connect_ray(args) -> bool:
    """Join or start the Ray cluster for ``--engine ray``; True when this run started it (and stops it)."""
    from ..cluster import ClusterError, connect

    try:
        return connect(args.address)
    except ClusterError as e:
        raise UsageError(str(e)) from None




def _add_video_options(p) -> None:
    """Model and tracking options shared by ``video``, ``webcam`` and ``bench video``."""
    g = p.add_argument_group("model and tracking")
    g.add_argument("--model", default=None, help=".onnx or .pt image model (default: the shipped one)")
    g.add_argument("--runtime", choices=["auto", "onnx", "torch"], default="auto", help="inference runtime")
    g.add_argument("--detector", default="auto", help="face detector")
    g.add_argument("--smooth", choices=SMOOTH_CHOICES, default="auto",
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


