"""The Embedder over the packaged all-MiniLM-L6-v2 (offline)."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from garden_assets.retrieval import DEFAULT_MODEL, Embedder, build_key_text, packaged_minilm_path  # noqa: E402
from garden_assets.retrieval.embedder import model_slug, resolve_model, resolve_precision  # noqa: E402
from garden_assets.retrieval.testing import sample_pairs  # noqa: E402


@pytest.fixture(scope="module")
def fp32():
    return Embedder(precision="fp32", device="cpu")


def test_default_model_is_packaged_minilm(fp32):
    assert fp32.model_name == DEFAULT_MODEL and fp32.dimension == 384 and fp32.max_tokens == 256
    assert (packaged_minilm_path() / "config.json").exists()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2")[0] == DEFAULT_MODEL
    assert resolve_model(packaged_minilm_path())[0] == DEFAULT_MODEL
    assert model_slug("a/b") != model_slug("c/b")  # same base name, different model → different slug


def test_embeddings_match_plain_encode_in_input_order(fp32):
    texts = ["short", "a much longer text about tomato blight " * 20, "medium length text about roses", ""]
    seen = []
    out = fp32.embed(texts, progress=lambda done, total: seen.append((done, total)))
    ref = fp32.model.encode(texts, normalize_embeddings=True)
    assert out.dtype == np.float32 and out.shape == (4, 384)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert np.allclose(out, ref, atol=1e-4)  # sorting by length never reorders the output
    assert seen[-1] == (4, 4)
    assert np.allclose(fp32.embed_query("short"), out[0], atol=1e-4)
    assert fp32.embed([]).shape == (0, 384)


def test_long_text_mean_covers_the_whole_text():
    emb = Embedder(precision="fp32", device="cpu", long_text="mean")
    long = "Roses need pruning in spring. " * 80 + "Garlic cloves go 5 cm deep. " * 80
    assert len(emb._windows(long)) >= 3 and emb._windows("short") == ["short"]
    v = emb.embed([long, "short"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    garlic = emb.embed_query("how deep to plant garlic")
    truncated = Embedder(precision="fp32", device="cpu").embed([long])[0]  # sees only the roses part
    assert float(v[0] @ garlic) > float(truncated @ garlic)
    assert emb.index_id != DEFAULT_MODEL  # vectors differ from truncate mode, so tables must too


def test_bf16_close_to_fp32(fp32):
    bf16 = Embedder(precision="bf16", device="cpu")
    texts = ["Prune roses in late winter.", "Water succulents when the soil is dry."]
    assert np.all(np.sum(bf16.embed(texts) * fp32.embed(texts), axis=1) > 0.99)


def test_arguments_checked():
    with pytest.raises(ValueError):
        resolve_precision("fp8", "cpu")
    assert resolve_precision("auto", "cpu") in ("bf16", "fp32")
    with pytest.raises(ValueError):
        Embedder(long_text="chunks")
    with pytest.raises(ValueError):
        Embedder(device="tpu")


def test_key_text_answer_has_no_question_text():
    pairs = sample_pairs()
    answer = build_key_text(pairs, "answer").to_list()
    both = build_key_text(pairs, "question+answer").to_list()
    body = build_key_text(pairs, "body+answer").to_list()
    for row, a, b, c in zip(pairs.iter_rows(named=True), answer, both, body):
        assert a == row["response"]
        assert row["instruction"] not in a and row["context"] not in a
        assert b.startswith(row["instruction"]) and row["context"] in b and b.endswith(row["response"])
        assert row["instruction"] not in c and c.startswith(row["context"])
    with pytest.raises(ValueError):
        build_key_text(pairs, "title")
