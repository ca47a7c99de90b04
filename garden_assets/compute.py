"""Compute placement for the heavy assets (embedding, training, generation).

One `ComputeSpec` per heavy asset. The same spec drives the code (device, precision, process count,
DeepSpeed) and the orchestration (`op_tags` with a ``dagster-k8s/config`` entry, and the concurrency ``pool``).
Defaults live next to each asset; a profile in ``deploy/profiles/<name>.yaml`` overrides them
(``GARDEN_PROFILE`` picks the profile, default ``cpu-local``).

Library code: no dagster import, and torch is only imported when a device has to be probed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]
Launcher = Literal["auto", "python", "accelerate", "deepspeed"]
Backend = Literal["auto", "transformers", "llama.cpp"]

HEAVY_ASSETS = ("embedding", "training", "generation")
DEFAULT_PROFILE = "cpu-local"
PROFILE_ENV = "GARDEN_PROFILE"
PROFILES_DIR_ENV = "GARDEN_PROFILES_DIR"

_DEVICES = ("auto", "cpu", "cuda")
_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_LAUNCHERS = ("auto", "python", "accelerate", "deepspeed")
TRANSFORMERS, LLAMA_CPP = "transformers", "llama.cpp"  # generation backends (llm/backends.py)
BACKENDS = ("auto", TRANSFORMERS, LLAMA_CPP)


@dataclass
class ComputeSpec:
    """Where and how one heavy asset runs.

    device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    gpus: GPUs requested (k8s ``nvidia.com/gpu`` limit) and, for training, the number of processes.
    precision: ``auto`` → bf16 on compute capability ≥ 8 (Ampere+), fp16 on older GPUs, fp32 on CPU.
    batch_size: per-device batch size (None: the asset's own default).
    pool: Dagster concurrency pool for the asset (e.g. ``gpu``).
    node_selector / tolerations: k8s pod placement.
    resources: extra k8s container resources, e.g. ``{"requests": {"cpu": "4", "memory": "16Gi"}}``.
    deepspeed: training only; None = on when training on CUDA.
    offload_optimizer: training only; ZeRO-3 optimizer state offloaded to CPU (memory-tight GPUs).
    launcher: training only; ``auto`` = python for ≤ 1 GPU, else deepspeed (if on) or accelerate.
    backend: generation only; ``auto`` = llama.cpp on CPU when installed (a quantized GGUF), else transformers.
    """

    device: Device = "auto"
    gpus: int = 0
    precision: Precision = "auto"
    batch_size: int | None = None
    pool: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    deepspeed: bool | None = None
    offload_optimizer: bool = False
    launcher: Launcher = "auto"
    backend: Backend = "auto"

    def __post_init__(self) -> None:
        if self.device not in _DEVICES:
            raise ValueError(f"ComputeSpec.device must be one of {_DEVICES}, got {self.device!r}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"ComputeSpec.precision must be one of {_PRECISIONS}, got {self.precision!r}")
        if self.launcher not in _LAUNCHERS:
            raise ValueError(f"ComputeSpec.launcher must be one of {_LAUNCHERS}, got {self.launcher!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"ComputeSpec.backend must be one of {BACKENDS}, got {self.backend!r}")
        if not isinstance(self.gpus, int) or self.gpus < 0:
            raise ValueError(f"ComputeSpec.gpus must be an int ≥ 0, got {self.gpus!r}")
        if self.device == "cpu" and self.gpus:
            raise ValueError("ComputeSpec: device 'cpu' with gpus > 0 makes no sense")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"ComputeSpec.batch_size must be ≥ 1, got {self.batch_size!r}")
        unknown = set(self.resources) - {"requests", "limits"}
        if unknown:
            raise ValueError(f"ComputeSpec.resources takes 'requests'/'limits' only, got {sorted(unknown)}")

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: "ComputeSpec | None" = None) -> "ComputeSpec":
        """Build from a mapping (a profile entry); keys not given keep ``base``'s values. Unknown keys fail."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown ComputeSpec keys {sorted(unknown)}; known: {sorted(names)}")
        return dataclasses.replace(base or cls(), **dict(data))

    def replace(self, **changes: Any) -> "ComputeSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- code side ----------------------------------------------------------------------------------------
    def resolve_device(self) -> str:
        return resolve_device(self)

    def resolve_precision(self, capability: tuple[int, int] | None = None) -> str:
        return resolve_precision(self, capability=capability)

    def num_processes(self) -> int:
        """Training processes: one per GPU, one on CPU."""
        return max(1, self.gpus) if self.resolve_device() == "cuda" else 1

    def use_deepspeed(self) -> bool:
        """DeepSpeed for training: explicit flag, else on when training runs on CUDA."""
        if self.deepspeed is not None:
            return bool(self.deepspeed)
        return self.resolve_device() == "cuda"

    # -- orchestration side ---------------------------------------------------------------------------------
    def to_k8s_config(self) -> dict[str, Any]:
        return to_k8s_config(self)

    def op_tags(self) -> dict[str, Any]:
        """``op_tags`` for ``@asset``: the ``dagster-k8s/config`` entry (empty config → no tag)."""
        cfg = to_k8s_config(self)
        return {"dagster-k8s/config": cfg} if cfg else {}


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # a code location without torch still loads
        return False
    return bool(torch.cuda.is_available())


def resolve_device(spec: ComputeSpec) -> str:
    """``cpu`` or ``cuda``; ``auto`` picks CUDA when present. Asking for CUDA without one is an error."""
    if spec.device == "cpu":
        return "cpu"
    available = _cuda_available()
    if spec.device == "cuda":
        if not available:
            raise RuntimeError("ComputeSpec.device is 'cuda' but torch sees no CUDA device on this machine")
        return "cuda"
    return "cuda" if available else "cpu"


def _cpu_has(pattern: str) -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(pattern, flags))


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX-BF16 (Linux ``/proc/cpuinfo``); there bf16 matmuls are fast."""
    return _cpu_has(r"\b(avx512_bf16|amx_bf16)\b")


def cpu_has_amx() -> bool:
    """True on x86 CPUs with AMX tiles (Intel Sapphire Rapids and later)."""
    return _cpu_has(r"\bamx_tile\b")


def resolve_precision(
    spec: ComputeSpec, *, device: str | None = None, capability: tuple[int, int] | None = None
) -> str:
    """``fp32``/``fp16``/``bf16``. ``auto``: bf16 on compute capability ≥ 8, fp16 on older GPUs; on a CPU, bf16
    where it has native bf16 (`cpu_has_native_bf16`), else fp32. On such a CPU (2 cores, avx512_bf16) Gemma 270M
    generation ran 2.3× fp32's tokens/s with identical greedy answers (benchmarks/generate.py) and LoRA training
    (bf16 autocast, fp32 adapter weights) ≈ 1.5× fp32's tokens/s with the same losses (docs/evaluation.md).

    ``device``/``capability`` override the probe (tests, or planning for a machine that is not this one).
    """
    device = device or resolve_device(spec)
    if device == "cuda" and capability is None:
        import torch

        capability = tuple(torch.cuda.get_device_capability())  # type: ignore[assignment]
    if spec.precision == "auto":
        if device != "cuda":
            return "bf16" if cpu_has_native_bf16() else "fp32"
        return "bf16" if capability[0] >= 8 else "fp16"  # type: ignore[index]
    if spec.precision == "fp16" and device != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use fp32 (or bf16) on CPU")
    if spec.precision == "bf16" and device == "cuda" and capability[0] < 8:  # type: ignore[index]
        raise ValueError(f"precision bf16 needs compute capability ≥ 8 (Ampere+); this GPU has {capability}")
    return spec.precision


def to_k8s_config(spec: ComputeSpec) -> dict[str, Any]:
    """The value of the ``dagster-k8s/config`` tag (snake_case keys, as dagster-k8s accepts them)."""
    resources: dict[str, dict[str, Any]] = {k: dict(v) for k, v in spec.resources.items()}
    if spec.gpus > 0:
        # GPUs are an extended resource: k8s needs the limit (a request, if given, must equal it).
        resources.setdefault("limits", {})["nvidia.com/gpu"] = spec.gpus
        if "requests" in resources:
            resources["requests"]["nvidia.com/gpu"] = spec.gpus
    config: dict[str, Any] = {}
    if resources:
        config["container_config"] = {"resources": resources}
    pod_spec: dict[str, Any] = {}
    if spec.node_selector:
        pod_spec["node_selector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return config


# -- profiles -------------------------------------------------------------------------------------------------
def profiles_dir() -> Path:
    """``$GARDEN_PROFILES_DIR``, else ``deploy/profiles`` of this checkout."""
    env = os.environ.get(PROFILES_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "deploy" / "profiles"


def profile_path(name_or_path: str | os.PathLike[str] | None = None) -> Path:
    name = str(name_or_path or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE)
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return Path(name)
    return profiles_dir() / f"{name}.yaml"


def read_profile(name_or_path: str | os.PathLike[str] | None = None) -> dict[str, dict[str, Any]]:
    """The raw profile: ``{asset: {spec keys}}``, validated."""
    import yaml

    path = profile_path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"compute profile not found: {path}")
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a compute profile is a mapping of asset → spec")
    data = {k: v for k, v in data.items() if k != "description"}
    unknown = set(data) - set(HEAVY_ASSETS)
    if unknown:
        raise ValueError(f"{path}: unknown assets {sorted(unknown)}; known: {list(HEAVY_ASSETS)}")
    for asset, entry in data.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: entry '{asset}' must be a mapping")
        try:
            ComputeSpec.from_dict(entry)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: entry '{asset}': {exc}") from exc
    return data


def load_profile(
    name_or_path: str | os.PathLike[str] | None = None,
    asset: str = "training",
    defaults: ComputeSpec | Mapping[str, Any] | None = None,
) -> ComputeSpec:
    """The spec for ``asset``: ``defaults`` (the asset's own) overridden by the profile's entry.

    ``name_or_path``: a profile name in ``deploy/profiles`` (or ``$GARDEN_PROFILES_DIR``) or a yaml path;
    None → ``$GARDEN_PROFILE`` → ``cpu-local``.
    """
    if asset not in HEAVY_ASSETS:
        raise ValueError(f"asset must be one of {HEAVY_ASSETS}, got {asset!r}")
    base = defaults if isinstance(defaults, ComputeSpec) else ComputeSpec.from_dict(defaults or {})
    entry = read_profile(name_or_path).get(asset, {})
    return ComputeSpec.from_dict(entry, base=base)
