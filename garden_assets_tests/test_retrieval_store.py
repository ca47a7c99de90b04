"""The LanceDB Q/A store: incremental upsert, metadata, tables per configuration, search modes, maintenance."""

import os
from datetime import timedelta

import polars as pl
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from garden_assets.retrieval import Embedder, QAStore, open_store, table_name  # noqa: E402
from garden_assets.retrieval.testing import CountingEmbedder, HashEmbedder, edit_pair, sample_pairs  # noqa: E402


@pytest.fixture(scope="module")
def minilm():
    return Embedder(device="cpu")


def ids(store):
    return sorted(store.open().search().select(["answer_id"]).limit(None).to_arrow()["answer_id"].to_pylist())


def test_upsert_embeds_only_new_or_changed_rows(tmp_path, minilm):
    emb = CountingEmbedder(minilm)
    store = QAStore(tmp_path, emb, key="answer")
    pairs = sample_pairs()
    first = store.upsert(pairs)
    assert (first.embedded, first.inserted, first.updated, first.deleted) == (8, 8, 0, 0)
    assert store.count() == 8 and first.docs_per_s > 0

    again = store.upsert(pairs)  # nothing changed: nothing embedded, no new version
    assert (again.embedded, again.unchanged, again.inserted, again.updated) == (0, 8, 0, 0)
    assert again.version == first.version

    emb.seen.clear()
    changed = edit_pair(pairs, 21, response="Yellow tomato leaves: water at the base, never on the leaves.")
    changed = edit_pair(changed, 31, context="Rambling roses, not climbers.")  # key=answer: text to embed unchanged
    changed = changed.filter(pl.col("answer_id") != 62)
    changed = pl.concat([changed, sample_pairs([(7, 71, "Is mulch worth it?", "", "Yes: mulch keeps soil moist.")])])
    stats = store.upsert(changed)
    assert sorted(emb.seen) == ["Yellow tomato leaves: water at the base, never on the leaves.",
                                "Yes: mulch keeps soil moist."]
    assert (stats.embedded, stats.updated, stats.inserted, stats.deleted, stats.unchanged) == (2, 2, 1, 1, 5)
    assert ids(store) == sorted(changed["answer_id"].to_list())  # no duplicates, 62 gone
    row = store.open().search().where("answer_id = 31").select(["context"]).limit(1).to_arrow()
    assert row["context"][0].as_py() == "Rambling roses, not climbers."  # updated without re-embedding


def test_metadata_and_table_per_configuration(tmp_path):
    a = QAStore(tmp_path, HashEmbedder(16, "model-a"), key="answer")
    a.upsert(sample_pairs())
    assert a.metadata() == {"embedding_model": "model-a", "embedding_dim": "16", "index_id": "model-a", "key": "answer",
                            "ids": "site/answer_id"}
    b = QAStore(tmp_path, HashEmbedder(24, "model-b"), key="answer")
    c = QAStore(tmp_path, HashEmbedder(16, "model-a"), key="question+answer")
    assert len({a.name, b.name, c.name}) == 3 and a.name == table_name("answer", "model-a")
    b.upsert(sample_pairs())
    c.upsert(sample_pairs())
    assert sorted(a.db.list_tables().tables) == sorted([a.name, b.name, c.name])
    assert a.open().schema.field("vector").type.list_size == 16 and b.open().schema.field("vector").type.list_size == 24
    # same table name forced onto another model: full rebuild, never mixed vectors
    d = QAStore(tmp_path, HashEmbedder(24, "model-d"), key="answer", name=a.name)
    stats = d.upsert(sample_pairs())
    assert stats.rebuilt and stats.embedded == 8 and d.metadata()["embedding_model"] == "model-d"
    assert d.open().schema.field("vector").type.list_size == 24 and d.count() == 8


def test_empty_or_bad_frames_are_refused(tmp_path):
    store = QAStore(tmp_path, HashEmbedder(), key="answer")
    store.upsert(sample_pairs())
    with pytest.raises(ValueError, match="empty"):
        store.upsert(sample_pairs().head(0))
    assert store.count() == 8  # the good table is untouched
    with pytest.raises(ValueError, match="duplicate"):
        store.upsert(pl.concat([sample_pairs(), sample_pairs().head(1)]))
    with pytest.raises(ValueError, match="lacks"):
        store.upsert(sample_pairs().drop("content_hash"))


def test_search_modes_return_sourced_hits(tmp_path, minilm):
    store = open_store(tmp_path, key="answer", device="cpu")
    assert store.embedder.long_text == "mean"
    store.upsert(sample_pairs())
    for mode in ("vector", "fts", "hybrid"):
        hits = store.search("how deep should garlic cloves be planted", k=3, mode=mode)
        assert hits and len(hits) <= 3
        assert hits[0].answer_id == 11, (mode, hits)
        assert hits[0].source_url == "https://gardening.stackexchange.com/a/11" and hits[0].title
        assert [h.score for h in hits] == sorted([h.score for h in hits], reverse=True)
    only = store.search("garlic", k=5, mode="hybrid", where="is_accepted = true")
    assert {h.answer_id for h in only} <= {11, 21, 31, 41, 51, 61}
    with pytest.raises(ValueError):
        store.search("garlic", mode="semantic")
    with pytest.raises(ValueError):
        store.search("  ")


def test_every_hit_carries_its_cosine_similarity_to_the_query(tmp_path, minilm):
    """The relevance floor's measure: vector mode's 1 − distance, and in hybrid mode the same value for every hit
    (computed from the hits' vectors, so a row only BM25 found has it too); BM25 alone embeds nothing: None."""
    store = open_store(tmp_path, key="answer", device="cpu")
    store.upsert(sample_pairs())
    query = "garlic cloves"
    every = {h.answer_id: h.similarity for h in store.search(query, k=8, mode="vector")}
    assert len(every) == 8 and all(-1 <= s <= 1 for s in every.values())
    hybrid = store.search(query, k=8, mode="hybrid")
    assert len(hybrid) == 8
    for h in hybrid:
        assert h.similarity == pytest.approx(every[h.answer_id], abs=1e-3)
    assert all(h.similarity is None for h in store.search(query, k=3, mode="fts"))


def test_default_key_finds_question_by_its_title(tmp_path, minilm):
    store = QAStore(tmp_path, minilm)  # default key question+answer
    store.upsert(sample_pairs())
    hits = store.search("When should I prune roses?", k=1)
    assert hits[0].answer_id == 31


def test_ann_index_only_past_threshold_and_optimize(tmp_path):
    small = QAStore(tmp_path, HashEmbedder(), key="answer", ann_min_rows=9)
    small.upsert(sample_pairs())
    kinds = {tuple(ix.columns): ix.index_type for ix in small.open().list_indices()}
    assert "vector" not in {c for cols in kinds for c in cols} and kinds[("key_text",)] == "FTS"
    extra = [(9, 90 + i, "Extra", "", f"extra answer {i}") for i in range(300)]
    more = pl.concat([sample_pairs(), sample_pairs(extra)])
    small.upsert(more)  # now past 9 rows: ANN index built
    assert any(ix.columns == ["vector"] for ix in small.open().list_indices())
    assert small.search("extra answer 7", k=1, mode="fts")[0].answer_id == 97
    before = len(small.open().list_versions())
    report = small.optimize(cleanup_older_than=timedelta(0))
    assert report["versions_before"] == before and report["versions_after"] < before and report["rows"] == 308
    stats = small.open().index_stats("key_text_idx")
    assert stats.num_unindexed_rows == 0
    assert small.search("extra answer 7", k=1, mode="hybrid")[0].answer_id == 97


def test_uri_form_goes_through_the_same_code(tmp_path):
    store = QAStore(f"file://{tmp_path}", HashEmbedder(), key="answer")
    store.upsert(sample_pairs())
    assert QAStore(str(tmp_path), HashEmbedder(), key="answer").count() == 8


def test_large_changes_commit_in_slices(tmp_path, monkeypatch):
    import garden_assets.retrieval.store as store_mod

    store = QAStore(tmp_path, HashEmbedder(), key="answer")
    store.upsert(sample_pairs())
    monkeypatch.setattr(store_mod, "MERGE_BYTES", 2_000)  # force several merge_insert commits
    rows = [(9, 100 + i, "Extra", "", f"extra answer {i} " * 5) for i in range(60)]
    changed = pl.concat([edit_pair(sample_pairs(), 11, response="Garlic: 5 cm."),
                         sample_pairs(rows)]).filter(pl.col("answer_id") != 12)
    version = store.open().version
    stats = store.upsert(changed)
    assert store.open().version > version + 2
    assert (stats.embedded, stats.updated, stats.inserted, stats.deleted, stats.unchanged) == (61, 1, 60, 1, 6)
    assert ids(store) == sorted(changed["answer_id"].to_list())
