"""The llama.cpp backend: transformers' meaning of every setting, the choice per profile and its fallback, and
(slow; needs the llama-cpp-python extra that `make setup` builds) real answers from the packaged Gemma GGUF."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from garden_assets.compute import ComputeSpec
from garden_assets.llm import backends, llamacpp
from garden_assets.llm.generate import GenerationSettings
from garden_assets.llm.prompts import dolly_prompt, extract_response
from garden_assets.llm.sampling import SequenceState

needs_llama = pytest.mark.skipif(not llamacpp.installed(), reason="llama-cpp-python (the llamacpp extra) not installed")


# -- settings: the same meaning as transformers -------------------------------------------------------------
@pytest.mark.parametrize("settings", [
    GenerationSettings(repetition_penalty=1.3),
    GenerationSettings(no_repeat_ngram_size=3),
    GenerationSettings(repetition_penalty=0.8, no_repeat_ngram_size=2),
    GenerationSettings(do_sample=True, temperature=0.7, top_k=20),
    GenerationSettings(do_sample=True, temperature=1.3, top_p=0.8),
    GenerationSettings(do_sample=True, top_k=5, top_p=0.5, repetition_penalty=1.2, no_repeat_ngram_size=2),
])
def test_scores_equal_transformers_logits_processors(settings):
    from transformers import AutoTokenizer  # noqa: F401  (transformers' generation utils need it importable)
    from transformers.generation.logits_process import (LogitsProcessorList, NoRepeatNGramLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    rng = np.random.default_rng(7)
    base = [int(t) for t in rng.integers(0, 40, size=60)]
    history = base + base[10:20]  # the tail repeats an earlier stretch: its n-grams are banned
    logits = rng.normal(size=50).astype(np.float32) * 3
    ours = SequenceState(history, settings, rng).scores(logits)

    procs = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if settings.no_repeat_ngram_size:
        procs.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
    if settings.do_sample:
        procs.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            procs.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1:
            procs.append(TopPLogitsWarper(settings.top_p))
    theirs = procs(torch.tensor([history]), torch.tensor(logits)[None]).numpy()[0]
    assert np.array_equal(np.isinf(ours), np.isinf(theirs)), "different tokens removed"
    kept = ~np.isinf(ours)
    assert np.allclose(ours[kept], theirs[kept], atol=1e-5)
    assert kept.sum() < logits.size or not (settings.no_repeat_ngram_size or settings.do_sample)


@needs_llama
@pytest.mark.parametrize("amx", [True, False])
def test_a_cpu_with_amx_loads_without_the_repacked_buffers(monkeypatch, amx):
    """llama.cpp's AMX matmul (one of its extra buffer types) crashed every generation on an AMX CPU; elsewhere the
    extra buffers stay on (llama.cpp's default)."""
    import llama_cpp

    monkeypatch.setattr(llamacpp, "cpu_has_amx", lambda: amx)
    params = llamacpp.model_params(llama_cpp)
    assert params.use_extra_bufts is (not amx) and params.n_gpu_layers == 0
    assert llama_cpp.llama_model_default_params().use_extra_bufts  # the default it departs from


def test_sampling_is_seeded_and_greedy_takes_the_best():
    logits = np.array([0.1, 2.0, 1.9, -1.0], dtype=np.float32)
    assert SequenceState([0], GenerationSettings(), np.random.default_rng(0)).choose(logits) == 1
    def draw(seed: int) -> int:
        return SequenceState([0], GenerationSettings(do_sample=True), np.random.default_rng(seed)).choose(logits)

    assert [draw(3) for _ in range(5)] == [draw(3)] * 5 and {draw(s) for s in range(200)} >= {1, 2}  # seeded; samples


def test_beam_search_is_refused_naming_the_backend():
    with pytest.raises(ValueError, match="llama.cpp backend has no beam search"):
        llamacpp.check_settings(GenerationSettings(num_beams=2))
    llamacpp.check_settings(GenerationSettings(do_sample=True, num_return_sequences=3))  # sampled n: supported


# -- choice per profile, fallback ------------------------------------------------------------------------------
def test_auto_falls_back_to_transformers_with_one_line_when_the_extra_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(llamacpp, "installed", lambda: False)
    lines = []
    assert backends.resolve_backend("auto", "cpu", tmp_path, log=lines.append) == "transformers"
    assert len(lines) == 1 and "llama-cpp-python is not installed" in lines[0]
    with pytest.raises(ValueError, match="backend llama.cpp: llama-cpp-python is not installed"):
        backends.resolve_backend("llama.cpp", "cpu", tmp_path)
    lines.clear()
    assert backends.resolve_backend("auto", "cuda", tmp_path, log=lines.append) == "transformers" and not lines
    with pytest.raises(ValueError, match="unknown generation backend 'vllm'"):
        backends.resolve_backend("vllm", "cpu")


def test_auto_needs_the_checkpoints_gguf(monkeypatch, tmp_path):
    monkeypatch.setattr(llamacpp, "installed", lambda: True)
    lines = []
    assert backends.resolve_backend("auto", "cpu", tmp_path, log=lines.append) == "transformers"
    assert "no GGUF at" in lines[0] and "tuned_model_gguf" in lines[0]
    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "model.gguf").write_bytes(b"GGUF")
    assert backends.resolve_backend("auto", "cpu", tmp_path) == "llama.cpp"
    assert backends.resolve_backend("transformers", "cpu", tmp_path) == "transformers"


def test_profiles_choose_the_backend():
    from garden_assets.compute import load_profile

    assert load_profile("cpu-local", asset="generation").backend == "auto"
    assert load_profile("gpu-single", asset="generation").backend == "transformers"
    with pytest.raises(ValueError, match="backend"):
        ComputeSpec(backend="vllm")


def test_garden_ask_with_an_absent_backend_is_a_usage_error(monkeypatch, capsys, tmp_path):
    from garden_assets import cli

    monkeypatch.setattr(llamacpp, "installed", lambda: False)
    monkeypatch.setenv("GARDEN_HOME", str(tmp_path))
    tuned = tmp_path / "finetune" / "tuned" / "model"
    tuned.mkdir(parents=True)
    (tuned / "config.json").write_text("{}")
    assert cli.main(["ask", "How deep do I plant garlic?", "--no-rag", "--backend", "llama.cpp"]) == 2
    assert "backend llama.cpp: llama-cpp-python is not installed" in capsys.readouterr().err


# -- the real backend on the packaged model (slow) ------------------------------------------------------------
@pytest.fixture(scope="module")
def packaged():
    """The packaged Gemma checkpoint (converted once into the shared model cache) and its GGUF."""
    from garden_assets.llm.gguf_export import export_gguf
    from garden_assets.llm.models import PACKAGED_GEMMA, resolve_base_model

    cache = Path(os.environ.get("GARDEN_HOME", Path.home() / ".cache" / "garden")) / "models"
    info = resolve_base_model(PACKAGED_GEMMA, cache_dir=cache)
    gguf = export_gguf(info.path)
    assert gguf.format == "Q4_K_M (packaged)" and gguf.size_mb > 200
    return Path(info.path)


PROMPTS = [dolly_prompt(q) for q in ("How deep do I plant garlic?", "Can I put citrus peels in my compost? Çà 🌱",
                                     "Why are the leaves of my basil turning yellow?")]


@pytest.mark.slow
@needs_llama
def test_llamacpp_tokenizer_gives_the_checkpoints_ids(packaged):
    from garden_assets.llm.models import load_tokenizer

    hf = load_tokenizer(packaged)
    gen = backends.load_generator(packaged, backend="llama.cpp", max_context_tokens=1024)
    for text in PROMPTS + ["<eos> non-breaking\u00a0space, ünïcødé ### End"]:
        ids = hf(text, add_special_tokens=True)["input_ids"]
        assert gen.tokenizer(text)["input_ids"] == ids
        assert gen.tokenizer.decode(ids) == hf.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
@needs_llama
def test_llamacpp_answers_like_llama_cpp_itself_and_batches_consistently(packaged, monkeypatch):
    import llama_cpp
    import llama_cpp.llama_cpp as low_level

    gen = backends.load_generator(packaged, backend="llama.cpp", batch_size=4, max_context_tokens=1024)
    assert backends.describe(gen) == "llama.cpp Q4_K_M (packaged)"
    settings = GenerationSettings(max_new_tokens=40)
    [[one]] = gen.generate(PROMPTS[:1], settings)
    assert one.text.strip() and one.new_tokens > 0 and (one.ended or one.looped) == (one.new_tokens < 40)
    assert "### End" not in one.text

    # the same greedy tokens as llama-cpp-python's own high-level API (an independent decode loop), on the same
    # kernels (its own defaults would take the AMX ones that crash on an AMX CPU: llamacpp.model_params)
    monkeypatch.setattr(low_level, "llama_model_default_params", lambda: llamacpp.model_params(llama_cpp))
    ref = llama_cpp.Llama(str(packaged / "gguf" / "model.gguf"), n_ctx=1024, verbose=False)
    out = ref.create_completion(PROMPTS[0], max_tokens=6, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                                repeat_penalty=1.0)
    [[short]] = gen.generate(PROMPTS[:1], GenerationSettings(max_new_tokens=6))
    assert short.text and short.text == extract_response(out["choices"][0]["text"])

    # a batch: identical prompts decode identically (separate cache streams), every answer where it belongs
    batch = gen.generate([PROMPTS[1], PROMPTS[0], PROMPTS[1], PROMPTS[2]], settings)
    assert batch[0][0].text == batch[2][0].text
    assert all(b[0].new_tokens > 0 and (b[0].ended or b[0].looped) == (b[0].new_tokens < 40) for b in batch)

    # the untuned base loops (one sentence repeated): stop_loop_tokens stops it there and cuts the repeat
    free = gen.generate(PROMPTS, GenerationSettings(max_new_tokens=120, stop_loop_tokens=0))
    stopped = gen.generate(PROMPTS, GenerationSettings(max_new_tokens=120, stop_loop_tokens=8))
    assert any(s[0].looped for s in stopped)
    for [f], [s] in zip(free, stopped):
        assert f.text.startswith(s.text)
        if s.looped:
            assert not s.ended and s.new_tokens < 120 and len(s.text) < len(f.text)

    sampled = gen.generate(PROMPTS[:1], GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.5,
                                                           num_return_sequences=3, seed=5))
    again = gen.generate(PROMPTS[:1], GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.5,
                                                         num_return_sequences=3, seed=5))
    assert len(sampled[0]) == 3 and [g.text for g in sampled[0]] == [g.text for g in again[0]]
    assert len({g.text for g in sampled[0]}) > 1
    with pytest.raises(ValueError, match="no beam search"):
        gen.generate(PROMPTS[:1], GenerationSettings(num_beams=2))
    with pytest.raises(ValueError, match="context window"):
        gen.generate(["word " * 2000], settings)


@pytest.mark.slow
@needs_llama
def test_lora_fine_tune_of_the_packaged_base_exports_as_base_gguf_plus_adapter(packaged, tmp_path):
    """The tuned-model route: the packaged GGUF + the PEFT adapter converted by llama.cpp's converter. llama.cpp
    with the adapter gives the merged transformers model's next-token logits (correlation > 0.99); without it,
    visibly different ones — the adapter is applied, at its own scale."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from garden_assets.llm.gguf_export import adapter_path, export_gguf, has_converter
    from garden_assets.llm.models import load_tokenizer

    if not has_converter():
        pytest.skip("llama.cpp's converters are not fetched (make setup)")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(packaged, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():  # a mild random adapter: the model changes but stays a language model
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.mul_(0.2)
    peft.save_pretrained(tmp_path / "adapter")
    merged = peft.merge_and_unload()
    merged.save_pretrained(tmp_path / "model")
    tok = load_tokenizer(packaged)
    tok.save_pretrained(tmp_path / "model")

    info = export_gguf(tmp_path / "model", adapter=tmp_path / "adapter", base=packaged)
    assert info.format == "Q4_K_M (packaged) + LoRA f32" and adapter_path(tmp_path / "model") is not None
    assert export_gguf(tmp_path / "model", adapter=tmp_path / "adapter", base=packaged).reused

    class Capture(SequenceState):
        def choose(self, logits):
            self.logits = logits.copy()
            return super().choose(logits)

    def next_logits(gen, prompt):
        state = Capture(gen.tokenizer(prompt)["input_ids"], GenerationSettings(max_new_tokens=1), np.random.default_rng(0))
        gen._run([state], GenerationSettings(max_new_tokens=1))
        return state.logits

    tuned = backends.load_generator(tmp_path / "model", backend="llama.cpp", max_context_tokens=512)
    base = backends.load_generator(packaged, backend="llama.cpp", max_context_tokens=512)
    assert backends.describe(tuned) == "llama.cpp Q4_K_M (packaged) + LoRA f32"
    for prompt in PROMPTS:
        with torch.no_grad():
            reference = merged(**tok(prompt, return_tensors="pt")).logits[0, -1].numpy()
        with_adapter = np.corrcoef(reference, next_logits(tuned, prompt))[0, 1]
        without = np.corrcoef(reference, next_logits(base, prompt))[0, 1]
        assert with_adapter > 0.99 and without < with_adapter - 0.01, (with_adapter, without)


def test_gguf_export_without_the_converter_is_a_clear_error(tmp_path, monkeypatch):
    from garden_assets.llm.gguf_export import SCRIPTS_ENV, export_gguf

    monkeypatch.setenv(SCRIPTS_ENV, str(tmp_path / "nowhere"))
    ckpt = tmp_path / "model"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    with pytest.raises(FileNotFoundError, match="convert_hf_to_gguf.py is not in .*make setup"):
        export_gguf(ckpt)
    assert not (ckpt / "gguf").exists() and [p.name for p in ckpt.iterdir()] == ["config.json"]


@pytest.mark.slow
@needs_llama
def test_llamacpp_query_embedder_stands_in_for_the_index_embedder(tmp_path):
    """garden ask's llama.cpp path embeds the question with MiniLM converted to GGUF: the vectors are
    sentence-transformers' (fp32) and a search finds the same answers in the same table."""
    from garden_assets.llm.gguf_export import has_converter
    from garden_assets.retrieval.embedder import Embedder
    from garden_assets.retrieval.store import QAStore, open_store
    from garden_assets.retrieval.testing import sample_pairs

    if not has_converter():
        pytest.skip("llama.cpp's converters are not fetched (make setup)")
    lines = []
    fast = backends.query_embedder("question+answer", tmp_path / "models", log=lines.append)
    assert fast is not None and not lines
    reference = Embedder(None, precision="fp32")
    assert (fast.model_name, fast.dimension) == (reference.model_name, reference.dimension)
    for q in ("What soil do blueberries like?", "Can I put citrus peels in my compost? Çà 🌱", "x " * 400):
        assert float(fast.embed_query(q) @ reference.embed_query(q)) > 0.9999

    built = open_store(tmp_path / "lancedb", precision="fp32")
    built.upsert(sample_pairs())
    quick = QAStore(tmp_path / "lancedb", fast, key="question+answer")
    assert quick.name == built.name
    for q in ("How acidic should blueberry soil be?", "Can I put citrus peels in my compost?"):
        assert [h.answer_id for h in quick.search(q, k=5)] == [h.answer_id for h in built.search(q, k=5)]


def test_query_embedder_falls_back_when_the_converter_is_absent(tmp_path, monkeypatch):
    from garden_assets.llm.gguf_export import SCRIPTS_ENV

    monkeypatch.setenv(SCRIPTS_ENV, str(tmp_path / "nowhere"))
    lines = []
    assert backends.query_embedder("answer", tmp_path, log=lines.append) is None
    assert "embedding the question with sentence-transformers" in lines[0]
