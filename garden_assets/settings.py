"""Where things live and the defaults shared by several layers (the Dagster layer, the CLI, the trainer and the
benchmarks all read them here; no dagster import).

`Layout(home)` is the one map of GARDEN_HOME: every output path is a property of it."""

import dataclasses
import json
import os
import typing
from pathlib import Path
from dataclasses import dataclass
from typing import Any, NamedTuple

# Tokens per fine-tune example (prompt + completion + EOS): finetune_dataset drops longer rows and records the
# value in stats.json, which the trainer then reads; this is the default of both (DatasetOptions, TrainConfig).
MAX_LENGTH = 768


@dataclass(frozen=True)
class Layout:
    """The folders and files under one GARDEN_HOME."""

    home: Path

    @classmethod
    def from_env(cls) -> "Layout":
        return cls(garden_home())

    models = property(lambda self: self.home / "models")  # base models (converted / downloaded), embedders' GGUF
    storage = property(lambda self: self.home / "storage")  # the Parquet IO manager's files
    dataset = property(lambda self: self.home / "finetune" / "dataset")  # train/valid/test.jsonl + stats.json
    tuned = property(lambda self: self.home / "finetune" / "tuned")  # tuned_model: model/, adapter/, checkpoints/
    evaluation = property(lambda self: self.home / "evaluation")  # evaluation_answers' answer cache
    lancedb = property(lambda self: self.home / "lancedb")  # the index unless GARDEN_LANCE_URI says otherwise
    retriever = property(lambda self: self.models / "retriever")  # retriever_model: the adapted embedder's folder


def garden_home() -> Path:
    return Path(os.environ.get("GARDEN_HOME", ".garden")).absolute()


def drops_folder() -> Path:
    return Path(os.environ.get("GARDEN_DROPS", "data/drops")).absolute()


def lance_uri() -> str:
    """The LanceDB index: ``GARDEN_LANCE_URI`` (e.g. ``s3://bucket/garden``), else GARDEN_HOME/lancedb."""
    return os.environ.get("GARDEN_LANCE_URI") or str(Layout.from_env().lancedb)


def lance_storage_options() -> dict[str, str] | None:
    """Object-store options for the index URI, as JSON in ``GARDEN_LANCE_STORAGE_OPTIONS``
    (e.g. ``{"aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true"}``); credentials may also come from
    the usual ``AWS_*`` variables, which LanceDB reads itself."""
    raw = os.environ.get("GARDEN_LANCE_STORAGE_OPTIONS")
    return json.loads(raw) if raw else None


class TypedField(NamedTuple):
    name: str
    type: Any  # the resolved annotation (``int``, ``int | None``, ...)
    default: Any
    help: str


def typed_fields(cls: type) -> list[TypedField]:
    """A settings dataclass's fields with resolved types and their ``help`` metadata: what a command line or a
    run-config class generated from it needs (the dataclass stays the one definition)."""
    hints = typing.get_type_hints(cls)
    return [TypedField(f.name, hints[f.name], f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls)]
