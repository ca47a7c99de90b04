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

CPU_LORA_TARGETS = ("q_proj", "v_proj")  # the default without a recipe (TrainConfig.lora_targets None on CPU)
# The tuned_model recipe (tune_config). The budget and epochs follow docs/evaluation.md ("Recipe runs"); LoRA rank,
# targets and learning rate are issue #10's trial setting, not yet swept against alternatives.
CPU_DEMO_SECONDS = 300.0  # ≈ 5 minutes of training steps on 2 cores
CPU_DEMO_EPOCHS = 3.0  # an upper bound: the time budget usually ends the run first
RECIPE_LORA_R = 16
RECIPE_LR = 1e-3
RECIPE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    train_file: str
    base_model: str
    output_dir: str
    test_file: str | None = None
    # method
    method: str = "lora"  # lora | full
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: q_proj,v_proj on CPU, all-linear on GPU
    # length of training
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    max_train_tokens: int | None = None  # stop once this many (non-pad) tokens were trained on
    max_train_seconds: float | None = None  # stop once training steps took this long (a time budget)
    # optimisation
    learning_rate: float | None = None  # None: 2e-4 for LoRA, 2e-5 for full fine-tuning
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    lr_scheduler: str = "linear"  # any transformers.get_scheduler name
    max_grad_norm: float = 1.0
    batch_size: int = 4  # rows per device per micro-batch
    grad_accum: int = 1
    max_length: int = 1024  # longer examples are dropped (counted), never truncated
    # speed levers (the dolly recipe: batching=padded, loss=full)
    batching: str = "grouped"  # grouped (length-grouped, minimal padding) | padded (random order)
    loss: str = "completion"  # completion (logits only where labels count) | full (HF loss on all logits)
    gradient_checkpointing: bool = False
    # evaluation / checkpoints / logging
    eval_steps: int = 0  # 0: evaluate only at the end
    eval_max_rows: int | None = None  # evals use only the first N test rows (None: all)
    keep_best: bool = True  # publish the weights with the lowest eval loss (else the last step's)
    save_steps: int = 50  # 0: no intermediate checkpoints
    save_total_limit: int = 2
    resume: bool = False  # pick up the last complete checkpoint in output_dir (if any)
    log_steps: int = 1
    # hardware
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    deepspeed: str | None = None  # path to a DeepSpeed json config
    seed: int = 42
    num_threads: int | None = None  # torch intra-op threads on CPU
    merge: bool = True  # LoRA: also write merged full weights to output_dir/model
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, recorded in metrics.json

    def __post_init__(self) -> None:
        checks = {
            "method": ("lora", "full"),
            "batching": ("grouped", "padded"),
            "loss": ("completion", "full"),
            "device": ("auto", "cpu", "cuda"),
            "precision": ("auto", "fp32", "fp16", "bf16"),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
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
        """Arguments for ``python -m garden_assets.training`` that rebuild this config."""
        argv: list[str] = []
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = "--" + f.name.replace("_", "-")
            if f.name == "extra":
                if value:
                    argv += [flag, json.dumps(value)]
                continue
            if f.name in defaults and value == defaults[f.name]:
                continue
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
            elif isinstance(value, list):
                argv += [flag, ",".join(value)]
            elif value is not None:
                argv += [flag, str(value)]
        return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m garden_assets.training",
        description="Fine-tune a causal LM on Dolly-format train.jsonl/test.jsonl (LoRA or full). Runs standalone, "
        "under `accelerate launch` / `deepspeed`, and reports to Dagster through dagster-pipes when launched by it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = parser.add_argument_group("data and model")
    g.add_argument("--train-file", required=True, help="train.jsonl (prompt, completion columns)")
    g.add_argument("--test-file", help="test.jsonl for eval loss")
    g.add_argument("--base-model", required=True, help="checkpoint directory of the base model")
    g.add_argument("--output-dir", required=True, help="adapter/, model/, checkpoints/, training_log.jsonl")
    g.add_argument("--max-length", type=int, default=1024, help="drop (never truncate) longer examples")
    g = parser.add_argument_group("method")
    g.add_argument("--method", choices=["lora", "full"], default="lora")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=int, default=16)
    g.add_argument("--lora-dropout", type=float, default=0.05)
    g.add_argument("--lora-targets", help="comma list; default q_proj,v_proj on CPU, all-linear on GPU")
    g.add_argument("--no-merge", dest="merge", action="store_false", help="LoRA: skip writing merged weights")
    g = parser.add_argument_group("schedule")
    g.add_argument("--epochs", type=float, default=1.0)
    g.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs")
    g.add_argument("--max-train-tokens", type=int, help="token budget (non-pad tokens)")
    g.add_argument("--max-train-seconds", type=float, help="time budget: stop once training steps took this long")
    g.add_argument("--learning-rate", "--lr", type=float, help="default 2e-4 (LoRA) / 2e-5 (full)")
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--warmup-ratio", type=float, default=0.05)
    g.add_argument("--lr-scheduler", default="linear")
    g.add_argument("--max-grad-norm", type=float, default=1.0)
    g.add_argument("--batch-size", type=int, default=4, help="rows per device per micro-batch")
    g.add_argument("--grad-accum", type=int, default=1)
    g.add_argument("--seed", type=int, default=42)
    g = parser.add_argument_group("speed")
    g.add_argument("--batching", choices=["grouped", "padded"], default="grouped",
                   help="grouped: length-grouped batches; padded: random order (the dolly recipe)")
    g.add_argument("--loss", choices=["completion", "full"], default="completion",
                   help="completion: logits only at completion positions; full: all logits (the dolly recipe)")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--num-threads", type=int, help="torch threads on CPU")
    g = parser.add_argument_group("eval, checkpoints, logging")
    g.add_argument("--eval-steps", type=int, default=0, help="0: only at the end")
    g.add_argument("--eval-max-rows", type=int, help="evaluate on the first N test rows only")
    g.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                   help="publish the last step's weights instead of those with the lowest eval loss")
    g.add_argument("--save-steps", type=int, default=50, help="checkpoint every N steps (0: never)")
    g.add_argument("--save-total-limit", type=int, default=2)
    g.add_argument("--resume", action="store_true", help="resume from the last complete checkpoint, if any")
    g.add_argument("--log-steps", type=int, default=1)
    g = parser.add_argument_group("hardware")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    g.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    g.add_argument("--deepspeed", help="DeepSpeed json config (see garden_assets.training.deepspeed)")
    g.add_argument("--extra", type=json.loads, default={}, help="JSON object recorded in metrics.json")
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
        recipe.update(device="cpu", precision="fp32", batch_size=4, max_train_seconds=CPU_DEMO_SECONDS,
                      epochs=CPU_DEMO_EPOCHS)
    if "lora_r" in overrides and "lora_alpha" not in overrides:
        overrides["lora_alpha"] = 2 * overrides["lora_r"]
    return TrainConfig(train_file=str(train_file), test_file=str(test_file) if test_file else None,
                       base_model=str(base_model), output_dir=str(output_dir), **{**recipe, **overrides})
