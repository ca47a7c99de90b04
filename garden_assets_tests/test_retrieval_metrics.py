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
