"""The trainer's command line is generated from TrainConfig: every field round-trips parse → config → argv → parse."""

from __future__ import annotations

import dataclasses

import pytest

from garden_assets.training.config import TrainConfig, build_parser, parse_args

REQUIRED = dict(train_file="ft/train.jsonl", base_model="models/base", output_dir="out/tuned")


def _other_value(f: dataclasses.Field, default):
    """A valid value for field ``f`` that differs from its default."""
    if f.metadata.get("choices"):
        return next(c for c in f.metadata["choices"] if c != default)
    kind = str(f.type).removesuffix(" | None")
    return {"bool": lambda: not default, "int": lambda: (default or 0) + 3, "float": lambda: (default or 0.0) + 0.25,
            "str": lambda: f"{f.name}-value", "list[str]": lambda: ["q_proj", "o_proj"],
            "dict[str, Any]": lambda: {"note": "x", "n": 2}}[kind]()


def test_every_field_has_a_flag_and_help_metadata():
    flags = {a.dest for a in build_parser()._actions} - {"help", "local_rank"}
    assert flags == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(f.metadata.get("group") for f in dataclasses.fields(TrainConfig))


def test_defaults_are_the_dataclass_defaults():
    assert parse_args(TrainConfig(**REQUIRED).to_argv()) == TrainConfig(**REQUIRED)
    assert TrainConfig(**REQUIRED).to_argv() == [
        "--train-file", "ft/train.jsonl", "--base-model", "models/base", "--output-dir", "out/tuned"]


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig)])
def test_each_field_round_trips(name):
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    base = TrainConfig(**REQUIRED)
    config = base.replace(**{name: _other_value(f, getattr(base, name))})
    assert getattr(config, name) != getattr(base, name)
    argv = config.to_argv()
    again = parse_args(argv)
    assert again == config
    assert again.to_argv() == argv


def test_everything_changed_at_once_round_trips():
    base = TrainConfig(**REQUIRED)
    config = base.replace(**{f.name: _other_value(f, getattr(base, f.name)) for f in dataclasses.fields(base)
                             if f.name not in REQUIRED})
    assert parse_args(config.to_argv()) == config


def test_aliases_and_launcher_arguments():
    assert parse_args([*TrainConfig(**REQUIRED).to_argv(), "--lr", "0.001", "--local_rank=2"]).learning_rate == 0.001
    assert parse_args([*TrainConfig(**REQUIRED).to_argv(), "--no-merge", "--resume"]).merge is False
    with pytest.raises(SystemExit):
        parse_args(["--base-model", "b", "--output-dir", "o"])  # --train-file is required
    with pytest.raises(SystemExit):
        parse_args([*TrainConfig(**REQUIRED).to_argv(), "--method", "qlora"])
