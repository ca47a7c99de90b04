"""The ingestion assets, checks and drops sensor on a real (temporary) Dagster instance."""

import shutil

import dagster as dg
import polars as pl
import pytest

from garden_assets.defs import automation, posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths

from .conftest import SAMPLE_DROPS, a, q, write_dump

ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs]


@pytest.fixture
def env(tmp_path):
    drops = tmp_path / "drops"
    drops.mkdir()
    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "paths": GardenPaths(home=str(tmp_path / "home"), drops=str(drops)),
        "io_manager": AtomicParquetIOManager(base_dir=str(tmp_path / "home" / "storage")),
    }
    return instance, resources, drops, tmp_path / "home" / "storage"


def ingest(instance, resources, key, run_config=None):
    instance.add_dynamic_partitions("drops", [key])
    return dg.materialize(
        ASSETS, partition_key=key, instance=instance,
        resources=resources, raise_on_error=False, run_config=run_config,
        selection=dg.AssetSelection.assets(posts.raw_posts, posts.clean_posts),
    )


def pairs(instance, resources):
    return dg.materialize(ASSETS, instance=instance, resources=resources,
                          selection=dg.AssetSelection.assets(posts.qa_pairs), raise_on_error=False)


def test_sample_drops_end_to_end_newest_wins(env):
    instance, resources, drops, storage = env
    shutil.copytree(SAMPLE_DROPS / "sample-gardening", drops / "sample-gardening")
    shutil.copy(SAMPLE_DROPS / "sample-update.7z", drops)
    for key in ("sample-gardening", "sample-update.7z"):
        result = ingest(instance, resources, key)
        assert result.success
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks)
    raw_meta = instance.get_latest_materialization_event(dg.AssetKey("raw_posts")).asset_materialization.metadata
    assert "preview" in raw_meta
    result = pairs(instance, resources)
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    qa = pl.read_parquet(storage / "qa_pairs.parquet")
    meta = result.asset_materializations_for_node("qa_pairs")[0].metadata
    assert meta["pairs"].value == qa.height > 150
    assert meta["posts_superseded"].value > 0
    # Drop 2 edits a few answers and a title of drop 1 (newer LastActivityDate): the edit wins.
    edited = qa.filter(pl.col("response").str.contains("Edit (2025)", literal=True))
    assert edited.height >= 5
    assert qa.filter(pl.col("instruction").str.ends_with("(updated)?")).height >= 1
    assert qa["answer_id"].n_unique() == qa.height
    assert not qa["instruction"].str.contains("Placeholder").any()
    clean = pl.read_parquet(storage / "clean_posts" / "sample-gardening.parquet")
    assert clean["score"].min() >= 5 and clean["text"].str.len_chars().max() <= 1000


def test_bad_drop_fails_alone_and_keeps_good_output(env):
    instance, resources, drops, storage = env
    write_dump(drops / "good" / "Posts.xml", [q(1, accepted=2), a(2, 1), a(3, 1, score=9)])
    assert ingest(instance, resources, "good").success
    stored = storage / "clean_posts" / "good.parquet"
    before = stored.read_bytes()
    # A corrupt drop beside it fails only its own partition, and pairs still build from the good one.
    (drops / "broken").mkdir()
    (drops / "broken" / "Posts.xml").write_text('<?xml version="1.0"?>\n<posts>\n  <row Id="1" PostTypeId="1"\n')
    bad = ingest(instance, resources, "broken")
    assert not bad.success
    failure = [e for e in bad.all_events if e.is_step_failure][0]
    assert "broken/Posts.xml:4: malformed XML (file cut short?)" in failure.step_failure_data.user_failure_data.description
    result = pairs(instance, resources)
    assert result.success
    assert pl.read_parquet(storage / "qa_pairs.parquet")["answer_id"].to_list() == [2, 3]
    # The good drop turning bad later never replaces its good output.
    (drops / "good" / "Posts.xml").write_text("")
    assert not ingest(instance, resources, "good").success
    assert stored.read_bytes() == before


def test_run_config_filters(env):
    instance, resources, drops, storage = env
    write_dump(drops / "d" / "Posts.xml", [q(1, score=1), a(2, 1, score=2), a(3, 1, score=50)])
    cfg = {"ops": {"clean_posts": {"config": {"min_score": 0, "max_body_chars": 5000}}}}
    result = ingest(instance, resources, "d", run_config=cfg)
    assert result.success
    assert pl.read_parquet(storage / "clean_posts" / "d.parquet").height == 3
    assert ingest(instance, resources, "d").success  # defaults: min_score 5
    assert pl.read_parquet(storage / "clean_posts" / "d.parquet")["id"].to_list() == [3]


def test_no_pairs_is_a_clear_failure(env):
    instance, resources, drops, _ = env
    write_dump(drops / "d" / "Posts.xml", [q(1, score=1)])
    assert ingest(instance, resources, "d").success
    result = pairs(instance, resources)
    assert not result.success


def _tick(instance, resources, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, resources={"paths": resources["paths"]})
    result = automation.drops_sensor(ctx)
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
    return result


def test_sensor_new_changed_unchanged(env, monkeypatch):
    monkeypatch.setattr(automation, "SETTLE_SECONDS", 0)
    instance, resources, drops, _ = env
    assert _tick(instance, resources).run_requests == []
    write_dump(drops / "first" / "Posts.xml", [q(1), a(2, 1)])
    shutil.copy(SAMPLE_DROPS / "sample-update.7z", drops / "update.7z")
    (drops / "notes.txt").write_text("not a drop")
    (drops / "empty-folder").mkdir()
    first = _tick(instance, resources)
    assert sorted(r.partition_key for r in first.run_requests) == ["first", "update.7z"]
    assert sorted(instance.get_dynamic_partitions("drops")) == ["first", "update.7z"]
    keys = {r.partition_key: r.run_key for r in first.run_requests}
    # Nothing changed: no run.
    assert _tick(instance, resources, first.cursor).run_requests == []
    # Changed content: a new run with a new run key; the other drop stays quiet.
    write_dump(drops / "first" / "Posts.xml", [q(1), a(2, 1), a(3, 1)])
    changed = _tick(instance, resources, first.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["first"]
    assert changed.run_requests[0].run_key != keys["first"]
    assert changed.run_requests[0].run_key.startswith("first:")
    # The same file, now said to be another site's dump: its posts change identity, so it runs again.
    (drops / "first" / "site.yaml").write_text("site: beer.stackexchange.com\n")
    resited = _tick(instance, resources, changed.cursor)
    assert [r.partition_key for r in resited.run_requests] == ["first"]
    assert resited.run_requests[0].run_key.endswith(":beer.stackexchange.com")
    assert _tick(instance, resources, resited.cursor).run_requests == []
    # A file still being copied (too new) waits for a later tick.
    monkeypatch.setattr(automation, "SETTLE_SECONDS", 3600)
    write_dump(drops / "late" / "Posts.xml", [q(1)])
    assert _tick(instance, resources, changed.cursor).run_requests == []


def test_definitions_load():
    from garden_assets.definitions import defs

    repo = defs.get_repository_def()
    assert {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()} >= {"raw_posts", "clean_posts", "qa_pairs"}
    assert repo.get_sensor_def("drops_sensor")


def test_automation_follows_new_drops_and_ignores_failed_ones(env):
    """Declarative automation: raw_posts[d] → clean_posts[d] → qa_pairs, even when another drop failed."""
    instance, resources, drops, _ = env
    defs = dg.Definitions(assets=ASSETS, resources=resources)
    write_dump(drops / "good" / "Posts.xml", [q(1), a(2, 1)])
    (drops / "bad").mkdir()
    (drops / "bad" / "Posts.xml").write_text("")
    instance.add_dynamic_partitions("drops", ["good", "bad"])
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)  # the daemon's first tick
    assert result.total_requested == 0  # raw_posts waits for the sensor; the rest waits for raw_posts
    dg.materialize(ASSETS, selection=[posts.raw_posts], partition_key="good", instance=instance, resources=resources)
    assert not dg.materialize(ASSETS, selection=[posts.raw_posts], partition_key="bad", instance=instance,
                              resources=resources, raise_on_error=False).success
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_requested_partitions(dg.AssetKey("clean_posts")) == {"good"}
    dg.materialize(ASSETS, selection=[posts.clean_posts], partition_key="good", instance=instance, resources=resources)
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.get_num_requested(dg.AssetKey("qa_pairs")) == 1
    dg.materialize(ASSETS, selection=[posts.qa_pairs], instance=instance, resources=resources)
    # Nothing new upstream: nothing requested again.
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert result.total_requested == 0


def test_duplicate_ids_within_a_drop_keep_the_newest(env):
    instance, resources, drops, storage = env
    write_dump(drops / "d" / "Posts.xml", [
        q(1), a(2, 1, body="<p>first version</p>", last="2023-01-03T00:00:00.000"),
        a(2, 1, body="<p>second version</p>", last="2023-06-01T00:00:00.000"),
    ])
    result = ingest(instance, resources, "d")
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    meta = result.asset_materializations_for_node("raw_posts")[0].metadata
    assert meta["skipped: duplicate id (older row dropped)"].value == 1
    raw = pl.read_parquet(storage / "raw_posts" / "d.parquet")
    assert raw.filter(pl.col("id") == 2)["body_html"].to_list() == ["<p>second version</p>"]
