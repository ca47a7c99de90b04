"""Trainer configuration: one dataclass that is both the CLI (``python -m garden_assets.training``) and the API.

No torch import here, so an asset can build a config and a launcher command cheaply.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..settings import MAX_LENGTH

CPU_LORA_TARGETS = ("q_proj", "v_proj")  # the default without a recipe (TrainConfig.lora_targets None on CPU)
# The tuned_model recipe (tune_config). The budget and epochs follow docs/evaluation.md ("Recipe runs"); LoRA
# targets and learning rate were compared by measurement (docs/evaluation.md, E10–E12); rank was not.
CPU_DEMO_SECONDS = 300.0  # ≈ 5 minutes of training steps and periodic evals on 2 cores
CPU_DEMO_EPOCHS = 3.0  # an upper bound: the time budget usually ends the run first
RECIPE_LORA_R = 16
RECIPE_LR = 1e-3
RECIPE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


GROUPS = ("data and model", "method", "schedule", "speed", "eval, checkpoints, logging", "hardware")


def _opt(default: Any = dataclasses.MISSING, help: str = "", *, group: str, choices: Sequence[str] | None = None,
         aliases: Sequence[str] = (), default_factory: Any = dataclasses.MISSING) -> Any:
    """A TrainConfig field with its command-line help: the one definition of a trainer flag."""
    meta = {"help": help, "group": group, "choices": tuple(choices) if choices else None, "aliases": tuple(aliases)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every trainer setting; `build_parser` makes one flag per field (``--lora-r`` for ``lora_r``)."""

    train_file: str = _opt(help="train.jsonl (prompt, completion columns)", group="data and model")
    base_model: str = _opt(help="checkpoint directory of the base model", group="data and model")
    output_dir: str = _opt(help="adapter/, model/, checkpoints/, training_log.jsonl", group="data and model")
    test_file: str | None = _opt(None, "test.jsonl for eval loss", group="data and model")
    # method
    method: str = _opt("lora", group="method", choices=("lora", "full"))
    lora_r: int = _opt(8, group="method")
    lora_alpha: int = _opt(16, group="method")
    lora_dropout: float = _opt(0.05, group="method")
    lora_targets: list[str] | None = _opt(None, "comma list; default q_proj,v_proj on CPU, all-linear on GPU",
                                          group="method")
    # length of training
    epochs: float = _opt(1.0, group="schedule")
    max_steps: int | None = _opt(None, "optimizer steps; overrides --epochs", group="schedule")
    max_train_tokens: int | None = _opt(None, "token budget: stop once this many (non-pad) tokens were trained on",
                                        group="schedule")
    max_train_seconds: float | None = _opt(None, "time budget: stop once training steps and periodic evals took this long",
                                           group="schedule")
    # optimisation
    learning_rate: float | None = _opt(None, "default 2e-4 (LoRA) / 2e-5 (full)", group="schedule", aliases=("--lr",))
    weight_decay: float = _opt(0.0, group="schedule")
    warmup_ratio: float = _opt(0.05, group="schedule")
    lr_scheduler: str = _opt("linear", "any transformers.get_scheduler name", group="schedule")
    max_grad_norm: float = _opt(1.0, group="schedule")
    batch_size: int = _opt(4, "rows per device per micro-batch", group="schedule")
    grad_accum: int = _opt(1, group="schedule")
    max_length: int = _opt(MAX_LENGTH, "drop (never truncate) longer examples", group="data and model")
    # speed levers (the dolly recipe: batching=padded, loss=full)
    batching: str = _opt("grouped", "grouped: length-grouped batches (minimal padding); padded: random order "
                         "(the dolly recipe)", group="speed", choices=("grouped", "padded"))
    loss: str = _opt("completion", "completion: logits only at completion positions; full: all logits "
                     "(the dolly recipe)", group="speed", choices=("completion", "full"))
    gradient_checkpointing: bool = _opt(False, group="speed")
    # evaluation / checkpoints / logging
    eval_steps: int = _opt(0, "evaluate every N steps (0: only at the end)", group="eval, checkpoints, logging")
    eval_max_rows: int | None = _opt(None, "evaluate on the first N test rows only (None: all)",
                                     group="eval, checkpoints, logging")
    keep_best: bool = _opt(True, "publish the weights with the lowest eval loss (else the last step's)",
                           group="eval, checkpoints, logging")
    save_steps: int = _opt(50, "checkpoint every N steps (0: never)", group="eval, checkpoints, logging")
    save_total_limit: int = _opt(2, group="eval, checkpoints, logging")
    resume: bool = _opt(False, "pick up the last complete checkpoint in output_dir (if any)",
                        group="eval, checkpoints, logging")
    log_steps: int = _opt(1, group="eval, checkpoints, logging")
    # hardware
    device: str = _opt("auto", group="hardware", choices=("auto", "cpu", "cuda"))
    precision: str = _opt("auto", group="hardware", choices=("auto", "fp32", "fp16", "bf16"))
    deepspeed: str | None = _opt(None, "DeepSpeed json config (see garden_assets.training.deepspeed)",
                                 group="hardware")
    seed: int = _opt(42, group="schedule")
    num_threads: int | None = _opt(None, "torch intra-op threads on CPU", group="speed")
    merge: bool = _opt(True, "LoRA: also write merged full weights to output_dir/model", group="method")
    extra: dict[str, Any] = _opt(help="JSON object recorded in metrics.json", group="hardware", default_factory=dict)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            if allowed and getattr(self, f.name) not in allowed:
                raise ValueError(f"{f.name} must be one of {allowed}, got {getattr(self, f.name)!r}")
        for name in ("batch_size", "grad_accum", "max_length", "lora_r", "log_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be ≥ 1")
        for name in ("max_train_tokens", "max_train_seconds"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 (None: no limit), got {getattr(self, name)!r}")
        if isinstance(self.lora_targets, str):
            self.lora_targets = [t for t in self.lora_targets.split(",") if t]

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.method == "lora" else 2e-5

    def resolved_lora_targets(self, device: str) -> list[str] | str:
        if self.lora_targets:
            return list(self.lora_targets)
        return list(CPU_LORA_TARGETS) if device == "cpu" else "all-linear"

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- CLI ----------------------------------------------------------------------------------------------
    def to_argv(self) -> list[str]:
        """Arguments for ``python -m garden_assets.training`` that rebuild this config (defaults left out: the
        parser has none of its own, so an omitted flag is the dataclass default)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == _default(f):
                continue
            flag = _flag(f.name)
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, list):
                argv += [flag, ",".join(value)]
            elif isinstance(value, dict):
                argv += [flag, json.dumps(value)]
            elif value is not None:
                argv += [flag, str(value)]
        return argv


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _comma_list(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


_PARSE = {"str": str, "int": int, "float": float, "list[str]": _comma_list, "dict[str, Any]": json.loads}


def build_parser() -> argparse.ArgumentParser:
    """One flag per `TrainConfig` field, typed by its annotation, with the help and choices of its metadata.

    No flag has a default of its own (an unset flag is left out and the dataclass default applies), so the
    parser and the dataclass cannot drift apart."""
    parser = argparse.ArgumentParser(
        prog="python -m garden_assets.training",
        description="Fine-tune a causal LM on Dolly-format train.jsonl/test.jsonl (LoRA or full). Runs standalone, "
        "under `accelerate launch` / `deepspeed`, and reports to Dagster through dagster-pipes when launched by it.",
        argument_default=argparse.SUPPRESS,
    )
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        meta, default = f.metadata, _default(f)
        required = default is dataclasses.MISSING
        shown = "" if required or default is None or default in ({}, "") else f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": (meta["help"] + shown).strip() or None}
        kind = str(f.type).removesuffix(" | None")
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=_PARSE[kind], required=required)
            if meta["choices"]:
                kwargs["choices"] = meta["choices"]
        groups[meta["group"]].add_argument(_flag(f.name), *meta["aliases"], **kwargs)
    # the deepspeed launcher appends --local_rank=N; accelerate reads LOCAL_RANK from the environment instead
    parser.add_argument("--local_rank", "--local-rank", type=int, default=-1, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    ns = vars(build_parser().parse_args(argv))
    ns.pop("local_rank", None)
    return TrainConfig(**ns)


def tune_config(device: str, train_file: str | Path, base_model: str | Path, output_dir: str | Path,
                **overrides: Any) -> TrainConfig:
    """The ``tuned_model`` recipe for ``device`` (``cpu``/``cuda``); ``overrides`` that are None keep the recipe.

    CPU: the demo — LoRA on every linear layer, a time budget of CPU_DEMO_SECONDS (faster code trains more) over
    up to CPU_DEMO_EPOCHS epochs, the checkpoint with the lowest eval loss published. GPU: the whole dataset for
    ``epochs`` (1), no budget. ``max_length`` comes from the dataset's own stats.json (one definition)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    test_file = overrides.pop("test_file", None)
    stats = Path(train_file).with_name("stats.json")
    max_length = json.loads(stats.read_text())["max_length"] if stats.is_file() else TrainConfig.max_length
    recipe: dict[str, Any] = dict(
        method="lora", resume=True, save_steps=10, eval_max_rows=32, max_length=max_length, lora_r=RECIPE_LORA_R,
        lora_alpha=2 * RECIPE_LORA_R, lora_targets=list(RECIPE_LORA_TARGETS), learning_rate=RECIPE_LR)
    if device == "cpu":
        recipe.update(device="cpu", batch_size=4, max_train_seconds=CPU_DEMO_SECONDS,
                      epochs=CPU_DEMO_EPOCHS)
    if "lora_r" in overrides and "lora_alpha" not in overrides:
        overrides["lora_alpha"] = 2 * overrides["lora_r"]
    return TrainConfig(train_file=str(train_file), test_file=str(test_file) if test_file else None,
                       base_model=str(base_model), output_dir=str(output_dir), **{**recipe, **overrides})
