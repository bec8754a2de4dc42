"""``emolens train``: the image model and (``--task sequence``) the temporal model."""

from __future__ import annotations

import argparse

from ..runtime import TORCH_HINT
from .common import UsageError

# ---------------------------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    from ..config import TrainConfig, add_config_arguments

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

    from ..config import TrainConfig, field_help, field_metavar
    from ..temporal import SequenceConfig

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

    from ..config import ConfigError, TrainConfig, load_config
    from ..temporal import SequenceConfig, train_sequence

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
    from ..config import TrainConfig, load_config, overrides_from_args

    train = _import_train()  # first: the config check itself needs torch (the model registry)
    from ..train import TrainingError

    overrides = overrides_from_args(args, TrainConfig)
    cfg = load_config(TrainConfig, args.config, overrides)
    try:
        train(cfg, resume=args.resume, explicit=set(overrides))
    except TrainingError as e:  # a diverged run: the user's fix is a smaller --lr
        raise UsageError(str(e)) from None
    return 0


def _import_train():
    """``emolens.train.train``, or a UsageError with the install line when torch is missing."""
    try:
        from ..train import train
    except ImportError as e:
        if (e.name or "").split(".")[0] in ("torch", "onnx", "onnxscript"):
            raise UsageError(f"train needs {TORCH_HINT}") from None
        raise
    return train


