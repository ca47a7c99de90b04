"""The trainer's command line, from a ComputeSpec.

- CPU or one GPU: ``python -m garden_assets.training …`` (one process; DeepSpeed still used on a GPU if on)
- several GPUs: ``python -m deepspeed.launcher.runner --num_gpus N --module garden_assets.training …`` (the
  ``deepspeed`` launcher) when DeepSpeed is on, else ``python -m accelerate.commands.launch --multi_gpu
  --num_processes N -m garden_assets.training …`` (``accelerate launch``).

Launchers are run as ``python -m`` of the same interpreter, so the command works in a virtualenv whose ``bin``
is not on PATH. A thin asset does::

    plan = plan_launch(spec, config)
    PipesSubprocessClient().run(command=plan.command, context=context, env=plan.env)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from garden_assets.compute import ComputeSpec, resolve_device, resolve_precision
from garden_assets.training.config import TrainConfig
from garden_assets.training.deepspeed import build_deepspeed_config, write_deepspeed_config

TRAINER_MODULE = "garden_assets.training"
RUN_ENV = {
    "PYTHONUNBUFFERED": "1",  # log lines reach Dagster as they happen
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",  # the trainer only reads local checkpoints; never wait on a network
}


@dataclass
class LaunchPlan:
    command: list[str]
    config: TrainConfig  # as the trainer will see it (device/precision/batch size/deepspeed resolved)
    num_processes: int
    launcher: str
    deepspeed_config: Path | None = None
    env: dict[str, str] = field(default_factory=lambda: dict(RUN_ENV))


def launcher_command(
    launcher: str, num_processes: int, trainer_argv: list[str], *, python: str | None = None
) -> list[str]:
    """The raw command for one of ``python``/``accelerate``/``deepspeed``."""
    python = python or sys.executable
    if launcher == "python":
        if num_processes != 1:
            raise ValueError("the plain python launcher runs one process; use accelerate or deepspeed")
        return [python, "-m", TRAINER_MODULE, *trainer_argv]
    if launcher == "accelerate":
        multi = ["--multi_gpu"] if num_processes > 1 else []
        return [
            python, "-m", "accelerate.commands.launch", *multi,
            "--num_processes", str(num_processes), "--num_machines", "1",
            "-m", TRAINER_MODULE, *trainer_argv,
        ]
    if launcher == "deepspeed":
        return [
            python, "-m", "deepspeed.launcher.runner",
            "--num_gpus", str(num_processes), "--module", TRAINER_MODULE, *trainer_argv,
        ]
    raise ValueError(f"unknown launcher {launcher!r}")


def plan_launch(
    spec: ComputeSpec,
    config: TrainConfig,
    *,
    python: str | None = None,
    device: str | None = None,
    capability: tuple[int, int] | None = None,
    write_config: bool = True,
) -> LaunchPlan:
    """Resolve ``spec`` against this machine (or the given ``device``/``capability``) and build the command.

    With DeepSpeed on, writes ``<output_dir>/ds_config.json`` (ZeRO-3; bf16/fp16 by GPU family; optimizer
    offload when ``spec.offload_optimizer``) and passes it with ``--deepspeed``.
    """
    device = device or resolve_device(spec)
    precision = resolve_precision(spec, device=device, capability=capability)
    num_processes = max(1, spec.gpus) if device == "cuda" else 1
    use_ds = spec.deepspeed if spec.deepspeed is not None else device == "cuda"
    if use_ds and device != "cuda":
        raise ValueError("DeepSpeed is only used on CUDA devices here; set deepspeed: false for CPU")
    config = config.replace(device=device, precision=precision, batch_size=spec.batch_size or config.batch_size)

    ds_path: Path | None = None
    if use_ds:
        ds_path = Path(config.output_dir) / "ds_config.json"
        if write_config:
            ds_config = build_deepspeed_config(precision, offload_optimizer=spec.offload_optimizer)
            write_deepspeed_config(ds_config, ds_path)
        config = config.replace(deepspeed=str(ds_path))

    launcher = spec.launcher
    if launcher == "auto":
        launcher = "python" if num_processes == 1 else ("deepspeed" if use_ds else "accelerate")
    command = launcher_command(launcher, num_processes, config.to_argv(), python=python)
    return LaunchPlan(command, config, num_processes, launcher, ds_path)
