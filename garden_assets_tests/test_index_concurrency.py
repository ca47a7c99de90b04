"""Two index writers at once never leave duplicate rows; the loser's retry completes (qa_index retries)."""

import multiprocessing as mp


from garden_assets.retrieval.store import QAStore
from garden_assets.retrieval.testing import HashEmbedder, sample_pairs


def _upsert(uri: str) -> None:
    QAStore(uri, HashEmbedder(), key="answer").upsert(sample_pairs())


def test_concurrent_writers_no_duplicates_and_retry_completes(tmp_path):
    uri = str(tmp_path / "lance")
    procs = [mp.get_context("spawn").Process(target=_upsert, args=(uri,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert any(p.exitcode == 0 for p in procs)
    store = QAStore(uri, HashEmbedder(), key="answer")
    ids = store.open().to_arrow().column("answer_id").to_pylist()
    assert len(ids) == len(set(ids)) == sample_pairs().height
    # What a retry of a losing writer does: nothing left to embed, still no duplicates.
    stats = store.upsert(sample_pairs())
    assert stats.embedded == 0 and stats.unchanged == sample_pairs().height
    assert store.count() == sample_pairs().height
