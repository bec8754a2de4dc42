"""The TTA modes are defined once (emolens.runtime.TTA_CHOICES); the typing.Literal copies that pydantic and the
config loader need are checked here against it, so they cannot drift apart."""

from __future__ import annotations

import argparse
import typing

import numpy as np
import pytest

from emolens.runtime import TTA, TTA_CHOICES, tta_views


def _tta_options(parser: argparse.ArgumentParser, path: str = "emolens") -> dict[str, argparse.Action]:
    """Every ``--tta`` option of the CLI, by the verb path that has it (e.g. "emolens bench serve")."""
    found = {}
    for action in parser._actions:
        if "--tta" in action.option_strings:
            found[path] = action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_tta_options(sub, f"{path} {name}"))
    return found


def test_runtime_literal_is_the_constant():
    assert typing.get_args(TTA) == TTA_CHOICES == ("none", "flip", "shift", "crops")


def test_api_literal_is_the_constant():
    from emolens.serve.schemas import Tta

    assert typing.get_args(Tta) == TTA_CHOICES


def test_training_selection_tta_is_a_subset():
    """Training scores checkpoints with none or flip only (crops is too slow per epoch): a subset, not a copy."""
    from emolens.config import TrainConfig

    choices = typing.get_args(typing.get_type_hints(TrainConfig)["eval_tta"])
    assert choices and set(choices) <= set(TTA_CHOICES)


def test_every_cli_tta_option_offers_the_constant():
    from emolens.cli import build_parser

    options = _tta_options(build_parser())
    assert {"emolens predict", "emolens evaluate", "emolens serve", "emolens bench serve"} <= set(options)
    for path, action in options.items():
        assert tuple(action.choices) == TTA_CHOICES, path


@pytest.mark.parametrize("tta, views", [("none", 1), ("flip", 2), ("shift", 4), ("crops", 10)])
def test_tta_views_per_mode(tta, views):
    faces = np.zeros((3, 48, 48), np.uint8)
    out = tta_views(faces, tta)
    assert len(out) == views and all(v.shape == faces.shape for v in out)


@pytest.mark.parametrize("tta", ["mirror", "FLIP", "", None])
def test_tta_views_rejects_anything_else(tta):
    with pytest.raises(ValueError, match="unknown TTA mode.*none, flip, shift, crops"):
        tta_views(np.zeros((1, 48, 48), np.uint8), tta)


def test_resolve_device_answers_without_torch(monkeypatch):
    """The torch-free device helper: cpu is always there; without torch "auto" is the CPU and a GPU asked for
    by name is a clear error, not an ImportError."""
    import sys

    from emolens.runtime import ModelError, resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setitem(sys.modules, "torch", None)  # as on the light install
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ModelError, match="needs PyTorch"):
        resolve_device("cuda:0")


def test_smoothing_choices_are_defined_once():
    from emolens.cli import build_parser
    from emolens.runtime import SMOOTH_CHOICES
    from emolens.video import make_smoother

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    for verb in ("video", "webcam", "serve"):
        (opt,) = [a for a in verbs[verb]._actions if "--smooth" in a.option_strings]
        assert tuple(opt.choices) == SMOOTH_CHOICES, verb
    with pytest.raises(ValueError, match="use one of auto, temporal, ema, none"):
        make_smoother("kalman", None)


def test_shift_views_move_whole_pixels_and_mirror():
    """shift = [x, mirror x, x moved (1, 1), mirror of x moved (-1, -1)], the border repeated."""
    faces = np.arange(2 * 48 * 48, dtype=np.uint8).reshape(2, 48, 48)
    x, m, d, u = tta_views(faces, "shift")
    np.testing.assert_array_equal(m, faces[:, :, ::-1])
    np.testing.assert_array_equal(d[:, 1:, 1:], faces[:, :-1, :-1])
    np.testing.assert_array_equal(d[:, 0, 1:], faces[:, 0, :-1])  # the top row repeated
    np.testing.assert_array_equal(u[:, :, ::-1][:, :-1, :-1], faces[:, 1:, 1:])
