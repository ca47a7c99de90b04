"""Launcher command lines from a ComputeSpec (no GPU needed: device and capability are given)."""

from __future__ import annotations

import json

import pytest

from garden_assets.compute import ComputeSpec, cpu_has_native_bf16
from garden_assets.training.config import TrainConfig, parse_args
from garden_assets.training.launch import launcher_command, plan_launch

PY = "/venv/bin/python"


@pytest.fixture
def config(tmp_path):
    return TrainConfig(train_file="ft/train.jsonl", test_file="ft/test.jsonl", base_model="models/gemma3-270m",
                       output_dir=str(tmp_path / "tuned"), max_steps=20)


def trainer_args(command: list[str]) -> list[str]:
    """The arguments after the trainer module name."""
    i = command.index("garden_assets.training")
    return command[i + 1 :]


def test_cpu_is_plain_python(config):
    spec = ComputeSpec(device="cpu", batch_size=2)
    plan = plan_launch(spec, config, python=PY)
    assert plan.command[:3] == [PY, "-m", "garden_assets.training"]
    assert plan.num_processes == 1 and plan.launcher == "python" and plan.deepspeed_config is None
    cfg = parse_args(trainer_args(plan.command))
    native = "bf16" if cpu_has_native_bf16() else "fp32"  # auto on a CPU (test_compute checks both ways)
    assert (cfg.device, cfg.precision, cfg.batch_size, cfg.deepspeed) == ("cpu", native, 2, None)
    assert cfg == plan.config
    assert plan.env["PYTHONUNBUFFERED"] == "1"


def test_one_gpu_uses_deepspeed_config(config):
    plan = plan_launch(ComputeSpec(device="cuda", gpus=1), config, python=PY, device="cuda", capability=(9, 0))
    assert plan.command[:3] == [PY, "-m", "garden_assets.training"]
    ds = json.loads(plan.deepspeed_config.read_text())
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 3
    cfg = parse_args(trainer_args(plan.command))
    assert cfg.deepspeed == str(plan.deepspeed_config) and cfg.precision == "bf16" and cfg.device == "cuda"


def test_many_gpus_deepspeed_launcher(config):
    spec = ComputeSpec(device="cuda", gpus=4, offload_optimizer=True)
    plan = plan_launch(spec, config, python=PY, device="cuda", capability=(7, 0))
    assert plan.command[:7] == [PY, "-m", "deepspeed.launcher.runner", "--num_gpus", "4", "--module",
                                "garden_assets.training"]
    assert plan.num_processes == 4 and plan.launcher == "deepspeed"
    ds = json.loads(plan.deepspeed_config.read_text())
    assert ds["fp16"]["enabled"] and not ds["bf16"]["enabled"]  # V100: fp16
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert parse_args(trainer_args(plan.command) + ["--local_rank=3"]).precision == "fp16"


def test_many_gpus_without_deepspeed_use_accelerate(config):
    plan = plan_launch(ComputeSpec(device="cuda", gpus=2, deepspeed=False), config, python=PY, device="cuda",
                       capability=(8, 6))
    assert plan.command[:3] == [PY, "-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in plan.command
    assert plan.command[plan.command.index("--num_processes") + 1] == "2"
    assert plan.command[plan.command.index("-m", 3) + 1] == "garden_assets.training"
    assert plan.deepspeed_config is None and parse_args(trainer_args(plan.command)).deepspeed is None


def test_explicit_launcher_and_refusals(config):
    plan = plan_launch(ComputeSpec(device="cuda", gpus=2, launcher="accelerate"), config, python=PY, device="cuda",
                       capability=(8, 0))
    assert plan.launcher == "accelerate" and "--deepspeed" in plan.command  # accelerate launch + ZeRO-3 config
    with pytest.raises(ValueError, match="CUDA"):
        plan_launch(ComputeSpec(device="cpu", deepspeed=True), config)
    with pytest.raises(ValueError, match="one process"):
        launcher_command("python", 2, [])
    with pytest.raises(ValueError, match="unknown launcher"):
        launcher_command("mpirun", 2, [])


def test_cpu_auto_on_machine_without_gpu(config, monkeypatch):
    from garden_assets import compute

    monkeypatch.setattr(compute, "_cuda_available", lambda: False)
    plan = plan_launch(ComputeSpec(gpus=0), config, python=PY)
    assert plan.config.device == "cpu" and plan.launcher == "python"


def test_launchers_parse_our_command_lines(config):
    """The real accelerate / deepspeed launcher parsers accept what we build."""
    from accelerate.commands.launch import launch_command_parser

    plan = plan_launch(ComputeSpec(device="cuda", gpus=2, deepspeed=False), config, python=PY, device="cuda",
                       capability=(8, 0))
    args = launch_command_parser().parse_args(plan.command[3:])
    assert args.multi_gpu and args.num_processes == 2 and args.module
    assert args.training_script == "garden_assets.training" and args.training_script_args == trainer_args(plan.command)

    runner = pytest.importorskip("deepspeed.launcher.runner")
    plan = plan_launch(ComputeSpec(device="cuda", gpus=4), config, python=PY, device="cuda", capability=(8, 0))
    args = runner.parse_args(plan.command[3:])
    assert args.num_gpus == 4 and args.module and args.user_script == "garden_assets.training"
    assert args.user_args == trainer_args(plan.command)
