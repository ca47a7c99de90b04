"""The index answers whatever a killed run left: a table without its full-text index is searched in vector mode
(one warning line, also through `garden search`) and the next write rebuilds the index."""

import logging
import subprocess
import sys

from garden_assets.retrieval import QAStore
from garden_assets.retrieval.testing import HashEmbedder, sample_pairs

from .conftest import ROOT


def drop_fts(store: QAStore) -> None:
    tbl = store.open()
    [name] = [ix.name for ix in tbl.list_indices() if ix.columns == ["key_text"]]
    tbl.drop_index(name)


def test_missing_fts_index_searches_in_vector_mode_until_the_next_write(tmp_path, caplog):
    store = QAStore(tmp_path, HashEmbedder(), key="answer")
    store.upsert(sample_pairs())
    drop_fts(store)
    with caplog.at_level(logging.WARNING):
        for mode in ("hybrid", "fts"):
            assert [h.answer_id for h in store.search("garlic clove", k=3, mode=mode)] == \
                [h.answer_id for h in store.search("garlic clove", k=3, mode="vector")]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "no full-text index" in warnings[0] and "vector mode" in warnings[0]
    caplog.clear()
    assert store.upsert(sample_pairs()).embedded == 0  # nothing changed, and still the index is rebuilt
    assert store.search("garlic clove", k=1, mode="fts")[0].answer_id == 11
    assert not caplog.records


def test_garden_search_without_fts_index_warns_once_and_answers(tmp_path):
    from garden_assets.retrieval.store import open_store

    store = open_store(tmp_path / "lancedb")  # the CLI's default key and model
    store.upsert(sample_pairs())
    drop_fts(store)
    env = {"GARDEN_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "garden_assets.cli", "search", "garlic clove", "--k", "2"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1. [") and "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "full-text" in line]
    assert len(lines) == 1 and "vector mode" in lines[0]
