"""A site per drop: where the site comes from, and several sites side by side in one drops folder (the bundled
gardening sample plus the shared real coffee / datascience-meta dumps) with their own links and no id collisions."""

import shutil

import dagster as dg
import polars as pl
import pytest

from garden_assets.defs import posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths
from garden_assets.drops import DEFAULT_SITE, scan_drops, site_of
from garden_assets.llm.rag import exclusion_filter, retrieve
from garden_assets.retrieval.store import QAStore
from garden_assets.retrieval.testing import HashEmbedder
from garden_assets.stackexchange.qa import build_pairs
from garden_assets.stackexchange.reader import DumpError, read_posts
from garden_assets.stackexchange.text import clean_posts

from .conftest import SAMPLE_DROPS

GARDEN, COFFEE, DSMETA = "gardening.stackexchange.com", "coffee.stackexchange.com", "datascience.meta.stackexchange.com"


def test_site_from_yaml_name_folder_file_or_default(tmp_path, monkeypatch):
    monkeypatch.delenv("GARDEN_SITE", raising=False)
    drops = tmp_path / "drops"
    (drops / "beer.stackexchange.com").mkdir(parents=True)
    (drops / "mine").mkdir()
    (drops / "mine" / "site.yaml").write_text("site: Coffee.StackExchange.com\n")
    (drops / "beer.stackexchange.com.7z").write_bytes(b"")
    (drops / "plain").mkdir()
    assert site_of(drops / "mine", drops).name == COFFEE
    assert site_of(drops / "beer.stackexchange.com.7z", drops).name == "beer.stackexchange.com"
    assert site_of(drops / "beer.stackexchange.com", drops).source == "drop name"
    assert site_of(drops / "plain", drops) == site_of(drops / "plain", drops) and site_of(drops / "plain").source == "default"
    assert site_of(drops / "plain", drops).name == DEFAULT_SITE
    monkeypatch.setenv("GARDEN_SITE", "cooking.stackexchange.com")
    assert site_of(drops / "plain", drops).name == "cooking.stackexchange.com"
    (drops / "site.yaml").write_text("site: beer.stackexchange.com\n")  # the folder's default beats GARDEN_SITE
    assert site_of(drops / "plain", drops).name == "beer.stackexchange.com"
    assert site_of(drops / "mine", drops).name == COFFEE  # a drop's own site.yaml beats the folder's
    (drops / "mine" / "site.yaml").write_text("site: not a host\n")
    with pytest.raises(DumpError, match=r"mine/site.yaml: expected a line `site: <host name>`"):
        site_of(drops / "mine", drops)


def test_bundled_sample_says_gardening(monkeypatch):
    monkeypatch.setenv("GARDEN_SITE", "cooking.stackexchange.com")  # ignored: the sample names its site
    drops, problems = scan_drops(SAMPLE_DROPS)
    assert not problems and {d.key: d.site for d in drops} == {"sample-gardening": GARDEN, "sample-update.7z": GARDEN}


def test_bad_site_file_is_a_problem_of_that_drop_only(tmp_path):
    for name in ("good", "bad"):
        shutil.copytree(SAMPLE_DROPS / "sample-gardening", tmp_path / name)
    (tmp_path / "bad" / "site.yaml").write_text("site: [\n")
    drops, problems = scan_drops(tmp_path)
    assert [d.key for d in drops] == ["good"] and len(problems) == 1 and "bad/site.yaml" in problems[0]


def test_sample_and_real_sites_side_by_side(shared_data, tmp_path):
    drops = tmp_path / "drops"
    shutil.copytree(SAMPLE_DROPS, drops)  # the sample drops and their site.yaml (gardening)
    for folder, site in (("coffee", COFFEE), ("datascience-meta", DSMETA)):
        (drops / site).mkdir()
        (drops / site / "Posts.xml").symlink_to(shared_data / folder / "Posts.xml")
    found, problems = scan_drops(drops)
    assert not problems
    keys = [d.key for d in found]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("drops", keys)
    storage = tmp_path / "home" / "storage"
    resources = {"paths": GardenPaths(home=str(tmp_path / "home"), drops=str(drops)),
                 "io_manager": AtomicParquetIOManager(base_dir=str(storage))}
    assets = [posts.raw_posts, posts.clean_posts, posts.qa_pairs]
    no_filter = {"ops": {"clean_posts": {"config": {"min_score": -1000, "max_body_chars": 10**9}}}}
    for key in keys:
        result = dg.materialize(assets, selection=assets[:2], partition_key=key, instance=instance,
                                resources=resources, run_config=no_filter)
        assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    assert dg.materialize(assets, selection=assets[2:], instance=instance, resources=resources).success
    pairs = pl.read_parquet(storage / "qa_pairs.parquet")

    # Each site's pairs are exactly what that dump alone gives: nothing replaced by another site's posts.
    for folder, site in (("coffee", COFFEE), ("datascience-meta", DSMETA)):
        alone, _ = build_pairs(clean_posts(read_posts(shared_data / folder / "Posts.xml"))[0], site=site)
        mine = pairs.filter(pl.col("site") == site)
        assert mine.drop("site").equals(alone.drop("site")), site
        assert mine["source_url"].str.starts_with(f"https://{site}/a/").all()
    assert pairs.filter(pl.col("site") == GARDEN)["source_url"].str.starts_with(f"https://{GARDEN}/a/").all()
    assert set(pairs["site"]) == {GARDEN, COFFEE, DSMETA}
    # The ids really collide (the test could fail): the same answer id on two sites, two different answers.
    shared_ids = (pairs.group_by("answer_id").agg(pl.col("site").n_unique().alias("n")).filter(pl.col("n") > 1))
    assert shared_ids.height > 0 and pairs.select("site", "answer_id").is_unique().all()
    q6 = pairs.filter((pl.col("site") == COFFEE) & (pl.col("question_id") == 6))
    assert q6.height and "roasted" in q6["instruction"][0] and not q6["response"].str.contains("LaTeX").any()

    # The index keys rows by (site, answer id); search filters by site and skips held-out (site, question)s only.
    store = QAStore(tmp_path / "lance", HashEmbedder(32), key="answer")
    store.upsert(pairs)
    assert store.count() == pairs.height
    q = q6["instruction"][0]
    hits = retrieve(store, q, k=5, mode="fts", site=COFFEE)
    assert hits and {h.site for h in hits} == {COFFEE} and all(h.source_url.startswith(f"https://{COFFEE}/a/") for h in hits)
    assert any(h.question_id == 6 for h in hits)
    skipped = retrieve(store, q, k=50, mode="fts", site=COFFEE, exclude=[(COFFEE, 6)])
    assert skipped and not any(h.question_id == 6 for h in skipped)
    # Excluding coffee's question 6 keeps another site's question 6.
    other = pairs.filter((pl.col("site") != COFFEE) & (pl.col("question_id") == 6))
    if other.height:
        site6 = other["site"][0]
        kept = retrieve(store, other["instruction"][0], k=50, mode="fts", site=site6, exclude=[(COFFEE, 6)])
        assert any(h.question_id == 6 and h.site == site6 for h in kept)
    assert exclusion_filter([(COFFEE, 6), 7], site=GARDEN) == (
        f"site = '{GARDEN}' AND question_id NOT IN (7) AND (site != '{COFFEE}' OR question_id NOT IN (6))")
