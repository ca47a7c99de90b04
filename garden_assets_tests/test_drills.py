"""Reliability drills (docs/reliability.md): kill ingestion mid-write, the same dump dropped twice."""

import shutil
import signal
import subprocess
import sys
import time

import dagster as dg
import polars as pl

from garden_assets.defs import posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths

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
