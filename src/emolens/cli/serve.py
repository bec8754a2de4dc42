"""``emolens serve``: the HTTP API and web page."""

from __future__ import annotations

import argparse

from ..runtime import DEFAULT_TTA, SMOOTH_CHOICES, TTA_CHOICES
from .common import UsageError

# ---------------------------------------------------------------------------------------------- serve


def _add_serve(sub) -> None:
    from ..decode import MAX_PIXELS

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
    p.add_argument("--detector", default="auto", help="face detector for requests that do not name one")
    p.add_argument("--tta", choices=TTA_CHOICES, default="none",
                   help="test-time augmentation for requests that do not name one (none: one view, fastest; "
                        f"`emolens predict` uses {DEFAULT_TTA})")
    p.add_argument("--smooth", choices=SMOOTH_CHOICES, default="auto",
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
    import math

    from ..serve import ServeOptions, serve

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: use 1-65535")
    if not math.isfinite(args.max_upload_mb):  # inf and nan would pass the check below and fail after the banner
        raise UsageError(f"--max-upload-mb {args.max_upload_mb}: give a finite number of megabytes, e.g. 10")
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


