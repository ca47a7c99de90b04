"""Two index writers at once never leave duplicate rows; a loser fails with CommitConflict (the one error qa_index
retries) and its retry completes."""

import multiprocessing as mp
import sys

from garden_assets.retrieval.store import CommitConflict, QAStore
from garden_assets.retrieval.testing import HashEmbedder, sample_pairs

LOST_RACE = 3  # exit code of a writer that got CommitConflict


def _upsert(uri: str) -> None:
    try:
        QAStore(uri, HashEmbedder(), key="answer").upsert(sample_pairs())
    except CommitConflict:
        sys.exit(LOST_RACE)


def test_concurrent_writers_no_duplicates_and_retry_completes(tmp_path):
    uri = str(tmp_path / "lance")
    procs = [mp.get_context("spawn").Process(target=_upsert, args=(uri,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert any(p.exitcode == 0 for p in procs)
    assert all(p.exitcode in (0, LOST_RACE) for p in procs), [p.exitcode for p in procs]  # nothing else failed
    store = QAStore(uri, HashEmbedder(), key="answer")
    ids = store.open().to_arrow().column("answer_id").to_pylist()
    assert len(ids) == len(set(ids)) == sample_pairs().height
    # What a retry of a losing writer does: nothing left to embed, still no duplicates.
    stats = store.upsert(sample_pairs())
    assert stats.embedded == 0 and stats.unchanged == sample_pairs().height
    assert store.count() == sample_pairs().height
