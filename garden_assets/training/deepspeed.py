"""DeepSpeed config builder (ZeRO-3) and the trainer's "auto" resolution.

The written config keeps the batch fields as ``"auto"``; the trainer fills them from its own arguments
(`fill_auto`) before handing the config to accelerate, so the file and the trainer can never disagree.
The optimizer and scheduler are the trainer's own (torch AdamW + a transformers schedule), not DeepSpeed's: no
op has to be JIT-compiled (DeepSpeed is installed with DS_BUILD_OPS=0).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from ..files import write_json_atomic

AUTO = "auto"
# fp32 master weights + Adam moments (12 B/param) + bf16/fp16 weights and grads (4 B/param), all sharded by ZeRO-3
_BYTES_PER_PARAM_FULL = 16
_BYTES_PER_PARAM_OPTIMIZER = 12


def precision_for_capability(capability: tuple[int, int]) -> str:
    """bf16 on Ampere+ (compute capability ≥ 8), fp16 before."""
    return "bf16" if capability[0] >= 8 else "fp16"


def should_offload_optimizer(
    trainable_params: int, gpu_memory_bytes: int, num_gpus: int = 1, headroom: float = 0.5
) -> bool:
    """Memory-tight rule of thumb: offload when the sharded weights + grads + optimizer state would take more
    than ``headroom`` of a GPU (the rest is left for activations)."""
    per_gpu = trainable_params * _BYTES_PER_PARAM_FULL / max(1, num_gpus)
    return per_gpu > headroom * gpu_memory_bytes


def build_deepspeed_config(
    precision: str = "bf16",
    *,
    stage: int = 3,
    offload_optimizer: bool = False,
    offload_param: bool = False,
) -> dict[str, Any]:
    """A ZeRO (default stage 3) config. ``precision``: bf16 | fp16 | fp32 (pick with
    `precision_for_capability` or ``compute.resolve_precision``)."""
    if precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"precision must be bf16, fp16 or fp32, got {precision!r}")
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": AUTO,
    }
    if stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": AUTO,
                "stage3_param_persistence_threshold": AUTO,
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                # save_pretrained gets whole 16-bit weights instead of per-rank shards
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_param:
        if stage != 3:
            raise ValueError("parameter offload needs ZeRO stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,  # dynamic loss scaling
            "loss_scale_window": 1000,
            "initial_scale_power": 16,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "zero_optimization": zero,
        "gradient_accumulation_steps": AUTO,
        "gradient_clipping": AUTO,
        "train_batch_size": AUTO,
        "train_micro_batch_size_per_gpu": AUTO,
        "steps_per_print": 1_000_000_000,  # the trainer logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }
    if offload_optimizer or offload_param:
        # the trainer's torch AdamW steps the offloaded fp32 state on CPU (DeepSpeedCPUAdam would need a compiled op)
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def config_precision(config: dict[str, Any]) -> str:
    """The precision a DeepSpeed config trains in."""
    if config.get("bf16", {}).get("enabled") is True:
        return "bf16"
    if config.get("fp16", {}).get("enabled") is True:
        return "fp16"
    return "fp32"


def fill_auto(
    config: dict[str, Any],
    *,
    micro_batch_size: int,
    grad_accum: int,
    world_size: int,
    max_grad_norm: float,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """A copy with the ``"auto"`` fields resolved from the trainer's settings (batch, accumulation, clipping,
    and — given ``hidden_size`` — the ZeRO bucket sizes, with the values HF/accelerate use)."""
    cfg = copy.deepcopy(config)

    def fill(node: dict[str, Any], key: str, value: Any) -> None:
        if node.get(key, AUTO) == AUTO:
            node[key] = value
        elif key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps") and node[key] != value:
            raise ValueError(f"DeepSpeed config sets {key}={node[key]} but the trainer runs with {value}")

    fill(cfg, "train_micro_batch_size_per_gpu", micro_batch_size)
    fill(cfg, "gradient_accumulation_steps", grad_accum)
    fill(cfg, "train_batch_size", micro_batch_size * grad_accum * world_size)
    fill(cfg, "gradient_clipping", max_grad_norm)
    zero = cfg.get("zero_optimization", {})
    if hidden_size:
        sizes = {
            "reduce_bucket_size": hidden_size * hidden_size,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
            "stage3_param_persistence_threshold": 10 * hidden_size,
        }
        for key, value in sizes.items():
            if zero.get(key) == AUTO:
                zero[key] = value
    return cfg


def write_deepspeed_config(config: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the json atomically (tmp + rename)."""
    return write_json_atomic(path, config)


def load_deepspeed_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
