"""A write killed mid-way (SIGKILL) leaves the previous version readable; the next upsert completes it."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import polars as pl

from garden_assets.retrieval import QAStore
from garden_assets.retrieval.testing import HashEmbedder, sample_pairs

ROOT = Path(__file__).resolve().parents[1]
N = 5000

CHILD = """
import sys, time
import pyarrow as pa
from lancedb.merge import LanceMergeInsertBuilder
from garden_assets.retrieval import QAStore
from garden_assets.retrieval.testing import HashEmbedder
from garden_assets_tests.test_retrieval_crash import big_pairs

execute = LanceMergeInsertBuilder.execute

def slow_execute(self, table, *args, **kwargs):  # feed the rows as a slow stream: the kill lands inside the write
    def batches():
        for i, batch in enumerate(table.to_batches(max_chunksize=250)):
            if i == 2:
                print("WRITING", flush=True)
            if i >= 2:
                time.sleep(0.1)
            yield batch
    return execute(self, pa.RecordBatchReader.from_batches(table.schema, batches()), *args, **kwargs)

LanceMergeInsertBuilder.execute = slow_execute
QAStore(sys.argv[1], HashEmbedder(16, "crash"), key="answer", ann_min_rows=10**9).upsert(big_pairs())
print("DONE", flush=True)
"""


def big_pairs() -> pl.DataFrame:
    extra = [(10_000 + i, 10_000 + i, f"Question {i}", "", f"filler answer number {i} " * 20) for i in range(N)]
    return pl.concat([sample_pairs(), sample_pairs(extra)])


def test_sigkill_mid_write_keeps_previous_version(tmp_path):
    store = QAStore(tmp_path, HashEmbedder(16, "crash"), key="answer", ann_min_rows=10**9)
    store.upsert(sample_pairs())
    version = store.open().version

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 120
        while "WRITING" not in line and time.monotonic() < deadline:
            line = child.stdout.readline()
            assert line or child.poll() is None, "child exited before writing"
        time.sleep(0.2)
        child.send_signal(signal.SIGKILL)
        rest = child.communicate(timeout=30)[0]
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL and "DONE" not in rest

    after = QAStore(tmp_path, HashEmbedder(16, "crash"), key="answer", ann_min_rows=10**9)
    assert after.open().version == version and after.count() == 8  # the old version, whole
    assert after.search("garlic clove", k=1, mode="fts")[0].answer_id == 11
    assert len(after.search("garlic", k=3, mode="hybrid")) == 3

    stats = after.upsert(big_pairs())  # the next run completes the work
    assert stats.inserted == N and after.count() == N + 8
    answer_ids = after.open().search().select(["answer_id"]).limit(None).to_arrow()["answer_id"].to_pylist()
    assert len(answer_ids) == len(set(answer_ids))
    after.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)  # also drops the killed write's files
    assert after.count() == N + 8 and after.search("filler answer number 42", k=1, mode="fts")


APPEND_CHILD = """
import sys, time
import pyarrow as pa
from garden_assets.retrieval import QAStore
from garden_assets.retrieval.testing import HashEmbedder
from garden_assets_tests.test_retrieval_crash import big_pairs

store = QAStore(sys.argv[1], HashEmbedder(16, "crash"), key="answer", ann_min_rows=10**9)
df = store._prepare(big_pairs())
table = store._arrow(df, store.embedder.embed(df["key_text"].to_list()))

def batches():  # a slow stream: LanceDB writes it to a temporary file as it comes
    for i, batch in enumerate(table.to_batches(max_chunksize=250)):
        if i == 2:
            print("WRITING", flush=True)
        if i >= 2:
            time.sleep(0.1)
        yield batch

store.open().add(pa.RecordBatchReader.from_batches(table.schema, batches()))
"""


def test_sigkill_mid_append_leaves_a_temp_file_that_the_next_write_removes(tmp_path):
    store = QAStore(tmp_path, HashEmbedder(16, "crash"), key="answer", ann_min_rows=10**9)
    store.upsert(sample_pairs())
    child = subprocess.Popen([sys.executable, "-c", APPEND_CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        while "WRITING" not in (line := child.stdout.readline()):
            assert line or child.poll() is None, "child exited before writing"
        time.sleep(0.3)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    [left] = list(tmp_path.rglob(".tmp*"))  # the killed writer's file (0 bytes here), never read by LanceDB
    assert store.upsert(sample_pairs()).embedded == 0 and left.exists()  # fresh: it could be a live writer's
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    store.upsert(sample_pairs())
    assert not left.exists() and store.count() == 8
