"""Success@k / MRR@k on hand-made rankings, and the README query protocol."""

import polars as pl
import pytest

from garden_assets.retrieval import evaluate, mrr_at_k, queries_from_pairs, success_at_k
from garden_assets.retrieval.testing import HashEmbedder, sample_pairs


def test_success_at_k():
    ranked = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    relevant = [{3}, {99}, {7, 8}]
    assert success_at_k(ranked, relevant, 3) == pytest.approx(2 / 3)
    assert success_at_k(ranked, relevant, 2) == pytest.approx(1 / 3)
    assert success_at_k(ranked, relevant, 1) == pytest.approx(1 / 3)


def test_mrr_at_k():
    ranked = [[1, 2, 3], [4, 5, 6], [7, 8, 9], []]
    relevant = [{3}, {99}, {8, 7}, {1}]
    assert mrr_at_k(ranked, relevant, 10) == pytest.approx((1 / 3 + 0 + 1 + 0) / 4)
    assert mrr_at_k(ranked, relevant, 2) == pytest.approx((0 + 0 + 1 + 0) / 4)  # rank 3 is past k=2


def test_metric_inputs_checked():
    with pytest.raises(ValueError):
        success_at_k([[1]], [{1}, {2}], 5)
    with pytest.raises(ValueError):
        mrr_at_k([], [], 10)


def test_queries_follow_readme_protocol():
    pairs = sample_pairs()
    queries, relevant = queries_from_pairs(pairs)
    g = "gardening.stackexchange.com"
    assert queries[0] == "How deep do I plant garlic?" and relevant[0] == {(g, 11), (g, 12)}  # one query per question
    assert len(queries) == pairs["question_id"].n_unique()
    assert relevant[-1] == {(g, 61), (g, 62)}
    # The same question id on another site is another question; its answers are relevant to it alone.
    other = pairs.with_columns(site=pl.lit("coffee.stackexchange.com"))
    queries, relevant = queries_from_pairs(pl.concat([pairs, other]))
    assert len(queries) == 2 * pairs["question_id"].n_unique()
    assert relevant[0] == {(g, 11), (g, 12)} and ("coffee.stackexchange.com", 11) in relevant[len(relevant) // 2]


def test_evaluate_on_a_store_and_refuses_title_key():
    pairs = sample_pairs()
    res = evaluate(pairs, HashEmbedder(), key="answer", mode="fts")
    assert res.queries == 6 and 0.0 <= res.success_at_5 <= 1.0 and res.index_docs_per_s > 0
    with pytest.raises(ValueError, match="title"):
        evaluate(pairs, HashEmbedder(), key="question+answer")


def test_evaluate_perfect_when_the_query_is_in_the_key():
    # the title copied into the question text: BM25 must put one of that question's answers first, every time
    pairs = sample_pairs().with_columns(pl.col("instruction").alias("context"))
    res = evaluate(pairs, HashEmbedder(), key="body+answer", mode="fts")
    assert res.success_at_5 == 1.0 and res.mrr_at_10 == 1.0


def test_cross_validation_scores_every_question_once_and_pools_the_folds():
    """The trained model's rows pool its folds: with a 'training' that returns the fixed model itself, the pooled
    rows equal the fixed model's, scored on every question at once; each training holds out one fold."""
    from garden_assets.llm.dataset import question_folds
    from garden_assets.retrieval.metrics import cross_validate

    pairs = sample_pairs()
    questions = set(zip(pairs["site"], pairs["question_id"]))
    folds = question_folds(questions, 3)
    embedder, trained_without = HashEmbedder(), []

    def train(held):
        trained_without.append(held)
        return embedder

    rows = cross_validate(pairs, {"fixed": embedder}, train, folds=folds, keys=["answer"], weights=[0.5, 0.7])
    assert trained_without == folds
    by = {(r["model"], r["mode"], r["vector_weight"]): r for r in rows}
    assert set(by) == {("bm25", "fts", None), *{(m, "vector", None) for m in ("fixed", "adapted")},
                       *{(m, "hybrid", w) for m in ("fixed", "adapted") for w in (0.5, 0.7)}}
    for mode, weight in [("vector", None), ("hybrid", 0.5), ("hybrid", 0.7)]:
        fixed, pooled = by["fixed", mode, weight], by["adapted", mode, weight]
        assert 0 < fixed["mrr_at_10"] < 1  # outcomes differ between questions: a 0 error below needs each paired
        assert pooled["queries"] == fixed["queries"] == len(questions)
        assert pooled["success_at_5"] == pytest.approx(fixed["success_at_5"], abs=1e-4)
        assert pooled["mrr_at_10"] == pytest.approx(fixed["mrr_at_10"], abs=1e-4)
        assert (pooled["vs"], pooled["success_at_5_delta"], pooled["success_at_5_delta_se"],
                pooled["mrr_at_10_delta"], pooled["mrr_at_10_delta_se"]) == ("fixed", 0.0, 0.0, 0.0, 0.0)
    assert {r["folds"] for r in rows} == {3} and not any("per_query" in r for r in rows)


def test_cross_validation_pairs_each_question_with_the_fixed_model():
    """With another model the paired difference has the pooled means' difference as its mean, and an error."""
    from garden_assets.llm.dataset import question_folds
    from garden_assets.retrieval.metrics import cross_validate

    pairs = sample_pairs()
    folds = question_folds(set(zip(pairs["site"], pairs["question_id"])), 2)
    rows = cross_validate(pairs, {"fixed": HashEmbedder(32)}, lambda held: HashEmbedder(8, name="other"),
                          folds=folds, keys=["answer"], modes=["vector"])
    fixed, trained = rows
    assert (fixed["model"], trained["model"], trained["vs"]) == ("fixed", "adapted", "fixed") and "vs" not in fixed
    for field in ("success_at_5", "mrr_at_10"):
        assert trained[f"{field}_delta"] == pytest.approx(trained[field] - fixed[field], abs=2e-4)
    assert trained["mrr_at_10_delta"] != 0 and trained["mrr_at_10_delta_se"] > 0  # two different rankings
