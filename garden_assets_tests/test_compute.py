"""ComputeSpec → device, precision, k8s config; compute profiles."""

from __future__ import annotations

import pytest

from garden_assets import compute
from garden_assets.compute import ComputeSpec, load_profile, resolve_device, resolve_precision, to_k8s_config


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(compute, "_cuda_available", lambda: False)


@pytest.fixture
def with_cuda(monkeypatch):
    monkeypatch.setattr(compute, "_cuda_available", lambda: True)


def test_validation():
    with pytest.raises(ValueError, match="device"):
        ComputeSpec(device="tpu")
    with pytest.raises(ValueError, match="precision"):
        ComputeSpec(precision="int8")
    with pytest.raises(ValueError, match="gpus"):
        ComputeSpec(gpus=-1)
    with pytest.raises(ValueError, match="cpu"):
        ComputeSpec(device="cpu", gpus=2)
    with pytest.raises(ValueError, match="requests"):
        ComputeSpec(resources={"limit": {"cpu": 1}})
    with pytest.raises(ValueError, match="unknown ComputeSpec keys"):
        ComputeSpec.from_dict({"gpu": 1})


def test_device(no_cuda):
    assert resolve_device(ComputeSpec()) == "cpu"
    assert resolve_device(ComputeSpec(device="cpu")) == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA"):
        resolve_device(ComputeSpec(device="cuda"))


def test_device_with_cuda(with_cuda):
    assert resolve_device(ComputeSpec()) == "cuda"
    assert ComputeSpec(gpus=4).num_processes() == 4
    assert ComputeSpec(gpus=4).use_deepspeed()
    assert not ComputeSpec(gpus=4, deepspeed=False).use_deepspeed()


@pytest.mark.parametrize(
    "precision, device, capability, expected",
    [
        ("auto", "cuda", (8, 0), "bf16"),  # A100
        ("auto", "cuda", (9, 0), "bf16"),  # H100
        ("auto", "cuda", (7, 5), "fp16"),  # T4
        ("auto", "cuda", (7, 0), "fp16"),  # V100
        ("fp32", "cuda", (9, 0), "fp32"),
        ("bf16", "cpu", None, "bf16"),
        ("fp16", "cuda", (7, 0), "fp16"),
    ],
)
def test_precision(precision, device, capability, expected):
    spec = ComputeSpec(precision=precision)
    assert resolve_precision(spec, device=device, capability=capability) == expected


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    monkeypatch.setattr("garden_assets.compute.cpu_has_native_bf16", lambda: native)
    assert resolve_precision(ComputeSpec(precision="auto"), device="cpu") == expected


def test_precision_refusals():
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_precision(ComputeSpec(precision="fp16"), device="cpu")
    with pytest.raises(ValueError, match="Ampere"):
        resolve_precision(ComputeSpec(precision="bf16"), device="cuda", capability=(7, 0))


def test_k8s_config_gpu():
    spec = ComputeSpec(
        device="cuda",
        gpus=2,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        resources={"requests": {"cpu": "8", "memory": "32Gi"}},
    )
    cfg = to_k8s_config(spec)
    assert cfg["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert cfg["container_config"]["resources"]["requests"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 2}
    assert cfg["pod_spec_config"]["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert cfg["pod_spec_config"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec.op_tags() == {"dagster-k8s/config": cfg}
    assert spec.resources == {"requests": {"cpu": "8", "memory": "32Gi"}}  # not mutated


def test_k8s_config_cpu():
    assert to_k8s_config(ComputeSpec(device="cpu")) == {}
    assert ComputeSpec().op_tags() == {}
    cfg = to_k8s_config(ComputeSpec(resources={"limits": {"memory": "8Gi"}}))
    assert cfg == {"container_config": {"resources": {"limits": {"memory": "8Gi"}}}}


@pytest.mark.parametrize("profile", ["cpu-local", "gpu-single", "gpu-k8s"])
@pytest.mark.parametrize("asset", ["embedding", "training", "generation"])
def test_shipped_profiles_load(profile, asset):
    spec = load_profile(profile, asset)
    assert isinstance(spec, ComputeSpec)
    if profile == "cpu-local":
        assert spec.device == "cpu" and spec.gpus == 0 and spec.op_tags() == {}
    else:
        assert spec.gpus >= 1
        assert spec.op_tags()["dagster-k8s/config"]["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == spec.gpus
        assert spec.pool


def test_profile_env_and_defaults(monkeypatch, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("training:\n  batch_size: 16\n")
    monkeypatch.setenv("GARDEN_PROFILE", str(path))
    spec = load_profile(asset="training", defaults={"device": "cpu", "batch_size": 2, "pool": "train"})
    assert (spec.device, spec.batch_size, spec.pool) == ("cpu", 16, "train")
    # no entry for the asset: the asset's defaults stand
    assert load_profile(asset="embedding", defaults=ComputeSpec(batch_size=7)).batch_size == 7
    monkeypatch.delenv("GARDEN_PROFILE")
    assert load_profile(asset="training").device == "cpu"  # cpu-local is the default profile


def test_profile_dir_env(monkeypatch, tmp_path):
    (tmp_path / "lab.yaml").write_text("generation: {device: cpu, batch_size: 3}\n")
    monkeypatch.setenv("GARDEN_PROFILES_DIR", str(tmp_path))
    assert load_profile("lab", "generation").batch_size == 3


def test_profile_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_profile("nope", "training")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainin:\n  gpus: 1\n")
    with pytest.raises(ValueError, match="unknown assets"):
        load_profile(bad, "training")
    bad.write_text("training:\n  gpu: 1\n")
    with pytest.raises(ValueError, match="entry 'training'"):
        load_profile(bad, "training")
    with pytest.raises(ValueError, match="asset must be"):
        load_profile("cpu-local", "indexing")
