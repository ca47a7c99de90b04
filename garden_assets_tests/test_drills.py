"""Reliability drills (docs/reliability.md): kill ingestion mid-write, the same dump dropped twice, a full disk."""

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from garden_assets.defs import posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths
from garden_assets.retrieval.store import QAStore
from garden_assets.retrieval.testing import HashEmbedder, edit_pair

from .conftest import SAMPLE_DROPS, a, q, write_dump

ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs]


def test_sigkill_during_ingest_keeps_the_previous_output(tmp_path):
    small = write_dump(tmp_path / "small" / "Posts.xml", [q(1), a(2, 1)])
    out = tmp_path / "posts.parquet"
    subprocess.run([sys.executable, "-m", "garden_assets.cli", "ingest", str(small), "--out", str(out)], check=True,
                   capture_output=True)
    good = out.read_bytes()
    body = "<p>" + "compost " * 400 + "</p>"
    big = write_dump(tmp_path / "big" / "Posts.xml", [q(i, body=body) for i in range(1, 60001)])
    proc = subprocess.Popen([sys.executable, "-m", "garden_assets.cli", "ingest", str(big), "--out", str(out),
                             "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(tmp_path.glob("posts.parquet.tmp-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "ingest finished before it could be killed; make the file bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.read_bytes() == good  # the half-written file never replaced the good one
    # The re-run completes and replaces it.
    subprocess.run([sys.executable, "-m", "garden_assets.cli", "ingest", str(big), "--out", str(out)], check=True,
                   capture_output=True)
    assert pl.scan_parquet(out).select(pl.len()).collect().item() == 60000


def test_same_dump_dropped_twice_gives_no_duplicate_pairs(tmp_path):
    drops = tmp_path / "drops"
    shutil.copytree(SAMPLE_DROPS / "sample-gardening", drops / "sample-gardening")
    shutil.copytree(SAMPLE_DROPS / "sample-gardening", drops / "sample-gardening-again")
    instance = dg.DagsterInstance.ephemeral()
    resources = {"paths": GardenPaths(home=str(tmp_path / "home"), drops=str(drops)),
                 "io_manager": AtomicParquetIOManager(base_dir=str(tmp_path / "home" / "storage"))}
    for key in ("sample-gardening", "sample-gardening-again"):
        instance.add_dynamic_partitions("drops", [key])
        assert dg.materialize(ASSETS, selection=ASSETS[:2], partition_key=key, instance=instance, resources=resources).success
    result = dg.materialize(ASSETS, selection=ASSETS[2:], instance=instance, resources=resources)
    assert result.success
    pairs = pl.read_parquet(tmp_path / "home" / "storage" / "qa_pairs.parquet")
    assert pairs["answer_id"].n_unique() == pairs.height
    meta = result.asset_materializations_for_node("qa_pairs")[0].metadata
    assert meta["posts_superseded"].value > 0


def _fill(disk: Path) -> Path:
    """Write a filler file until the file system reports ENOSPC; returns it (delete it to free the disk)."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to flush (and fail) on close
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def test_full_disk_fails_clearly_and_keeps_the_good_outputs(tmp_path):
    """The output folder on a small tmpfs; once it is full, new writes fail and what was there stays intact."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        drops = tmp_path / "drops"
        shutil.copytree(SAMPLE_DROPS / "sample-gardening", drops / "sample-gardening")
        instance = dg.DagsterInstance.ephemeral()
        storage = disk / "home" / "storage"
        resources = {"paths": GardenPaths(home=str(disk / "home"), drops=str(drops)),
                     "io_manager": AtomicParquetIOManager(base_dir=str(storage))}
        instance.add_dynamic_partitions("drops", ["sample-gardening"])
        assert dg.materialize(ASSETS, selection=ASSETS[:2], partition_key="sample-gardening", instance=instance,
                              resources=resources).success
        assert dg.materialize(ASSETS, selection=ASSETS[2:], instance=instance, resources=resources).success
        pairs = pl.read_parquet(storage / "qa_pairs.parquet")
        store = QAStore(disk / "home" / "lancedb", HashEmbedder())
        store.upsert(pairs)
        good_pairs = (storage / "qa_pairs.parquet").read_bytes()
        version = store.open().version

        filler = _fill(disk)
        # a new drop: its raw_posts write hits the full disk
        shutil.copy(SAMPLE_DROPS / "sample-update.7z", drops / "sample-update.7z")
        instance.add_dynamic_partitions("drops", ["sample-update.7z"])
        result = dg.materialize(ASSETS, selection=ASSETS[:1], partition_key="sample-update.7z", instance=instance,
                                resources=resources, raise_on_error=False)
        assert not result.success
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert "No space left on device" in str(failure.step_failure_data.error)
        assert not (storage / "raw_posts" / "sample-update.7z.parquet").exists()
        # qa_pairs rebuilt on a full disk: fails, the stored file is byte-identical, no temp file left
        result = dg.materialize(ASSETS, selection=ASSETS[2:], instance=instance, resources=resources,
                                raise_on_error=False)
        assert not result.success
        assert (storage / "qa_pairs.parquet").read_bytes() == good_pairs
        assert not list(storage.glob(".qa_pairs.parquet.tmp-*"))
        # an index update on a full disk: fails; the table still reads back at its version with every row
        edited = edit_pair(pairs, int(pairs["answer_id"][0]), response="Edited while the disk was full. " * 50)
        with pytest.raises(Exception, match="(?i)no space left|os error 28"):
            store.upsert(pl.concat([edited, edited.with_columns(pl.col("answer_id") + 10**9)]))
        assert store.open().version == version and store.count() == pairs.height
        assert store.search("blueberry soil", k=3, mode="vector")

        filler.unlink()  # space again: the same runs complete
        assert dg.materialize(ASSETS, selection=ASSETS[:2], partition_key="sample-update.7z", instance=instance,
                              resources=resources).success
        assert dg.materialize(ASSETS, selection=ASSETS[2:], instance=instance, resources=resources).success
        assert store.upsert(pl.read_parquet(storage / "qa_pairs.parquet")).embedded > 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
