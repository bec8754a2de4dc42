"""Typed config: defaults <- YAML <- --key value overrides; unknown keys, wrong types and bad choices
are errors that say the fix; the shipped YAML configs load."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from emolens.config import (
    ConfigError,
    add_config_arguments,
    build_config,
    load_config,
    overrides_from_args,
    save_config,
)
from emolens.train import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\nlr: 0.1\nmodel_kwargs: {lstm_hidden: 64}\naugment: false\n"
                    "model-kwargs: {lstm_hidden: 32, widths: [16, 32, 64, 128]}\n")
    cfg = load_config(TrainConfig, path, {"lr": "0.2", "augment": None, "batch_size": "64"})
    assert cfg.epochs == 5  # from the YAML
    assert cfg.lr == 0.2 and cfg.batch_size == 64  # command-line strings, coerced
    assert cfg.augment is False  # an override of None means "not given"
    assert cfg.model_kwargs == {"lstm_hidden": 32, "widths": [16, 32, 64, 128]}  # dashes = underscores
    assert cfg.optimizer == TrainConfig.optimizer and cfg.seed == 0  # untouched defaults


def test_cli_strings_are_coerced():
    cfg = build_config(TrainConfig, {"augment": "off", "hflip": "yes", "zoom": "0.2", "epochs": "3",
                                     "model_kwargs": "{widths: [8, 16, 32, 64]}", "optimizer": "adamw"})
    assert (cfg.augment, cfg.hflip, cfg.zoom, cfg.epochs) == (False, True, 0.2, 3)
    assert cfg.model_kwargs == {"widths": [8, 16, 32, 64]} and cfg.optimizer == "adamw"
    assert build_config(TrainConfig, {"epochs": 4.0}).epochs == 4  # a whole float is an integer


@pytest.mark.parametrize("key, hint", [("epoch", "did you mean 'epochs'?"), ("batchsize", "did you mean 'batch_size'"),
                                       ("optimiser", "did you mean 'optimizer'"),
                                       ("zzz", "valid keys: data, model, model_kwargs, epochs")])
def test_unknown_key_suggests_the_fix(key, hint, tmp_path):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'") as err:
        build_config(TrainConfig, {key: 1})
    assert hint in str(err.value)
    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: 1\n")
    with pytest.raises(ConfigError, match=hint):
        load_config(TrainConfig, path)


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "ten", "epochs: expected an integer, got 'ten'"),
    ("epochs", 2.5, "epochs: expected an integer, got 2.5"),
    ("epochs", True, "epochs: expected an integer, got True"),
    ("lr", "fast", "lr: expected a number, got 'fast'"),
    ("lr", "nan", "lr: expected a finite number"),
    ("augment", "maybe", "augment: expected true or false, got 'maybe'"),
    ("model_kwargs", "[1, 2]", "model_kwargs: expected a mapping such as {lstm_hidden: 64}"),
    ("data", ["a"], "data: expected a string"),
    ("data", None, 'data: no value given; write data: "" for an empty string'),
])
def test_wrong_types(key, value, message):
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, {key: value})
    assert message in str(err.value)


@pytest.mark.parametrize("key, value", [("optimizer", "adam"), ("schedule", "step"), ("eval_tta", "crops")])
def test_literal_choices(key, value):
    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == key)
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, {key: value})
    choices = field.type.split("[", 1)[1]  # e.g. Literal["sgd", "adamw"] (annotations are strings here)
    assert f"{key}: '{value}' is not one of" in str(err.value)
    for choice in choices.strip("]").split(", "):
        assert choice.replace('"', "'") in str(err.value)


@pytest.mark.parametrize("values, message", [
    ({"model": "resnet"}, "model: unknown 'resnet'; choose one of"),
    ({"epochs": 0}, "epochs: must be at least 1"),
    ({"train_fraction": 0}, "train_fraction: must be in (0, 1]"),
    ({"lr": -1}, "lr: must be positive"),
    ({"erase": 1.5}, "erase: a probability"),
    ({"zoom": 1.0}, "zoom: must be in [0, 1)"),
    ({"patience": -1}, "patience: must be zero or more"),
])
def test_out_of_range_values(values, message):
    with pytest.raises(ConfigError) as err:
        build_config(TrainConfig, values)
    assert message in str(err.value)


def test_bad_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, bad)
    bad.write_text("- epochs\n- 3\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(TrainConfig, bad)


def test_saved_config_loads_back_equal(tmp_path):
    cfg = build_config(TrainConfig, {"model_kwargs": {"widths": (8, 16, 32, 64)}, "epochs": 7, "mixup": 0.2})
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(TrainConfig, tmp_path / "config.yaml")
    assert again == build_config(TrainConfig, {"model_kwargs": {"widths": [8, 16, 32, 64]}, "epochs": 7, "mixup": 0.2})


def test_argparse_options_only_override_what_is_given():
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args(["--batch-size", "32", "--model-kwargs", "{lstm_hidden: 8}"])
    assert overrides_from_args(args, TrainConfig) == {"batch_size": "32", "model_kwargs": "{lstm_hidden: 8}"}
    text = parser.format_help()
    assert "(default: 128)" in text and "default: None" not in text


def test_cli_config_errors_exit_2_with_one_line(tmp_path, capsys):
    from emolens.cli import main

    assert main(["train", "--epochs", "ten"]) == 2
    err = capsys.readouterr().err
    assert err == "error: epochs: expected an integer, got 'ten'\n"
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 0.1\n")
    assert main(["train", "--config", str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: unknown config key 'learning_rate'")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.model in ("cnn_lstm", "cnn", "reference")


def test_default_config_file_is_the_dataclass_default():
    path = Path(__file__).resolve().parents[1] / "configs" / "cnn_lstm.yaml"
    assert load_config(TrainConfig, path) == TrainConfig()
