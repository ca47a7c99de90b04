"""Quality on the two real dumps (GARDEN_SHARED_DATA): the default answer-key configuration beats the README's
BM25 and MiniLM dense-only Success@5, through the real LanceDB path."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from garden_assets.retrieval import LONG_TEXT_BY_KEY, Embedder, evaluate  # noqa: E402
from garden_assets.drops import site_of  # noqa: E402
from garden_assets.stackexchange.qa import build_pairs  # noqa: E402
from garden_assets.stackexchange.reader import read_posts  # noqa: E402
from garden_assets.stackexchange.text import clean_posts  # noqa: E402

README_ANSWER_KEY = {"coffee": (0.741, 0.896), "datascience-meta": (0.452, 0.711)}  # BM25, MiniLM dense


@pytest.fixture(scope="module")
def default_answer_embedder():
    return Embedder(long_text=LONG_TEXT_BY_KEY["answer"])


@pytest.mark.realdata
@pytest.mark.parametrize("site", sorted(README_ANSWER_KEY))
def test_default_beats_bm25_and_dense(shared_data, site, default_answer_embedder):
    pairs, _ = build_pairs(clean_posts(read_posts(shared_data / site / "Posts.xml"))[0],
                           site=site_of(shared_data / site).name)
    assert pairs.height > 300
    result = evaluate(pairs, default_answer_embedder, key="answer", mode="hybrid")
    bm25, dense = README_ANSWER_KEY[site]
    assert result.queries >= 200
    assert result.success_at_5 > max(bm25, dense), result
    assert result.mrr_at_10 > 0.5
