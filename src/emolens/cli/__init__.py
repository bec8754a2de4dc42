"""The ``emolens`` command: parses arguments and calls the Python API, nothing more.

Each verb has an ``_add_<verb>(subparsers)`` that declares its options and a ``_cmd_<verb>(args)`` that
calls the API, in the module of its kind: ``photos`` (predict, export, data, evaluate), ``training``,
``video`` (video, webcam), ``serve``, ``bench``; ``common`` holds the shared options and errors. Errors the
user can fix exit with code 2 and one line on stderr; set EMOLENS_DEBUG=1 for a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from . import bench, photos, serve, training, video
from .common import UsageError, _user_errors  # noqa: F401 (UsageError: re-exported)

#: where each verb's ``_add_<verb>`` and ``_cmd_<verb>`` live
_MODULES = (photos, training, video, serve, bench)


def _verb_function(name: str):
    for m in _MODULES:
        if hasattr(m, name):
            return getattr(m, name)
    return None



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
        adder = _verb_function(f"_add_{verb}")
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
    handler = _verb_function(f"_cmd_{args.cmd.replace('-', '_')}")
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
