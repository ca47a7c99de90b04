"""Ingestion on the two real shared dumps (GARDEN_SHARED_DATA), through the CLI and through Dagster."""

import json
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest

from garden_assets.defs import posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths

EXPECTED = {"coffee": (225, 327), "datascience-meta": (257, 341)}


@pytest.mark.parametrize("site", sorted(EXPECTED))
def test_garden_ingest_counts(shared_data, site, tmp_path):
    out = tmp_path / "posts.parquet"
    proc = subprocess.run(
        [sys.executable, "-m", "garden_assets.cli", "ingest", str(shared_data / site / "Posts.xml"), "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (figures["questions"], figures["answers"]) == EXPECTED[site]
    assert figures["rows"] == sum(EXPECTED[site]) == pl.read_parquet(out).height
    assert figures["skipped"] > 0 and all(r.startswith("PostTypeId") for r in figures["skipped_by_reason"])
    assert set(figures) >= {"rows", "questions", "answers", "skipped", "seconds", "mb_per_s", "peak_rss_mb"}


@pytest.mark.parametrize("site", sorted(EXPECTED))
def test_real_dump_through_dagster(shared_data, tmp_path, site):
    # Drops are successive dumps of ONE site (post ids are the site's own), so each real site gets its own home.
    drops = tmp_path / "drops"
    (drops / site).mkdir(parents=True)
    (drops / site / "Posts.xml").symlink_to(shared_data / site / "Posts.xml")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("drops", [site])
    resources = {
        "paths": GardenPaths(home=str(tmp_path / "home"), drops=str(drops)),
        "io_manager": AtomicParquetIOManager(base_dir=str(tmp_path / "home" / "storage")),
    }
    assets = [posts.raw_posts, posts.clean_posts, posts.qa_pairs]
    no_filter = {"ops": {"clean_posts": {"config": {"min_score": -1000, "max_body_chars": 10**9}}}}
    result = dg.materialize(assets, selection=assets[:2], partition_key=site, instance=instance,
                            resources=resources, run_config=no_filter)
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    raw_meta = result.asset_materializations_for_node("raw_posts")[0].metadata
    assert (raw_meta["questions"].value, raw_meta["answers"].value) == EXPECTED[site]
    result = dg.materialize(assets, selection=assets[2:], instance=instance, resources=resources)
    assert result.success
    pairs = pl.read_parquet(tmp_path / "home" / "storage" / "qa_pairs.parquet")
    assert pairs.height == EXPECTED[site][1]  # every answer of these dumps has its question
    assert pairs["response"].str.contains("<p>", literal=True).sum() == 0


README_BASELINES = {"coffee": (0.741, 0.896), "datascience-meta": (0.452, 0.711)}  # BM25, MiniLM dense (answer key)


@pytest.mark.parametrize("site", sorted(README_BASELINES))
def test_eval_retrieval_default_beats_bm25_and_dense(shared_data, site):
    proc = subprocess.run(
        [sys.executable, "-m", "garden_assets.cli", "eval-retrieval", str(shared_data / site / "Posts.xml"),
         "--key", "answer", "--mode", "hybrid", "--json"],
        capture_output=True, text=True, check=True,
    )
    line = json.loads([l for l in proc.stdout.splitlines() if l.startswith("{")][-1])
    assert line["key"] == "answer" and line["mode"] == "hybrid" and line["docs"] == EXPECTED[site][1]
    assert line["success_at_5"] > max(README_BASELINES[site])


def test_search_without_index_names_the_asset(tmp_path):
    env = {**__import__("os").environ, "GARDEN_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "garden_assets.cli", "search", "blueberry soil"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "materialize the qa_index asset" in proc.stderr
