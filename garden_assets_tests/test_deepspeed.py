"""DeepSpeed config builder: ZeRO-3 contents, precision by GPU family, offload, auto resolution."""

from __future__ import annotations

import json

import pytest

from garden_assets.training.deepspeed import (
    AUTO,
    build_deepspeed_config,
    config_precision,
    fill_auto,
    precision_for_capability,
    should_offload_optimizer,
    write_deepspeed_config,
)


def test_zero3_bf16_defaults():
    cfg = build_deepspeed_config("bf16")
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert "offload_optimizer" not in zero and "offload_param" not in zero
    assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert cfg[key] == AUTO
    assert "optimizer" not in cfg and "scheduler" not in cfg  # the trainer's own AdamW + schedule
    assert config_precision(cfg) == "bf16"


def test_fp16_and_offload():
    cfg = build_deepspeed_config("fp16", offload_optimizer=True)
    assert cfg["fp16"]["enabled"] is True and cfg["fp16"]["loss_scale"] == 0 and cfg["bf16"]["enabled"] is False
    assert cfg["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    assert config_precision(cfg) == "fp16"
    assert config_precision(build_deepspeed_config("fp32")) == "fp32"
    with pytest.raises(ValueError):
        build_deepspeed_config("int8")
    with pytest.raises(ValueError, match="stage 3"):
        build_deepspeed_config("bf16", stage=2, offload_param=True)


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                  ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_precision_by_gpu_family(capability, expected):
    assert precision_for_capability(capability) == expected


def test_offload_rule_of_thumb():
    gib = 1024**3
    assert not should_offload_optimizer(270_000_000, 80 * gib)  # Gemma 270M full FT on one H100
    assert should_offload_optimizer(7_000_000_000, 24 * gib)  # 7B full FT on one 24 GB card
    assert not should_offload_optimizer(7_000_000_000, 80 * gib, num_gpus=8)


def test_fill_auto_matches_trainer():
    cfg = build_deepspeed_config("bf16")
    filled = fill_auto(cfg, micro_batch_size=8, grad_accum=4, world_size=2, max_grad_norm=1.0, hidden_size=640)
    assert filled["train_micro_batch_size_per_gpu"] == 8
    assert filled["gradient_accumulation_steps"] == 4
    assert filled["train_batch_size"] == 64
    assert filled["gradient_clipping"] == 1.0
    assert filled["zero_optimization"]["reduce_bucket_size"] == 640 * 640
    assert filled["zero_optimization"]["stage3_param_persistence_threshold"] == 6400
    assert cfg["train_batch_size"] == AUTO  # the input is not modified
    assert AUTO not in json.dumps(filled)
    cfg["train_micro_batch_size_per_gpu"] = 2
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=2"):
        fill_auto(cfg, micro_batch_size=8, grad_accum=1, world_size=1, max_grad_norm=1.0)


def test_written_config_is_accepted_by_hf(tmp_path):
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig

    path = write_deepspeed_config(build_deepspeed_config("bf16", offload_optimizer=True), tmp_path / "ds.json")
    hf = HfDeepSpeedConfig(str(path))
    assert hf.is_zero3() and hf.is_offload()
