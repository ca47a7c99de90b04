"""The streaming ingestion assets: a drop bigger than one byte range goes through the parallel fast path into
staged Parquet (same rows as the whole-file reader), a bad row fails naming file and line and leaves the previous
outputs as they were, and qa_pairs over lazily scanned drops equals the in-memory join."""

import os
import re
import subprocess
import sys

import dagster as dg
import polars as pl
import pytest

from garden_assets.defs import posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths
from garden_assets.stackexchange.ingest import RANGE_BYTES
from garden_assets.stackexchange.qa import build_pairs, newest_posts, write_pairs
from garden_assets.stackexchange.reader import read_posts
from garden_assets.stackexchange.text import clean_posts

from .conftest import a, q, write_dump

ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs]
SITE = "beer.stackexchange.com"
NO_FILTER = {"ops": {"clean_posts": {"config": {"min_score": -1000, "max_body_chars": 10**9}}}}
BODY = "<p>" + "Dry hop on day three; " * 90 + "</p>"  # ~2 kB a row: 3,000 questions make two byte ranges


def big_rows(n_questions: int, bad_at: int | None = None) -> list[str]:
    """Questions with two answers each (the second an edit of the first answer's id on some: duplicates)."""
    rows = []
    for i in range(n_questions):
        qid = 3 * i + 1
        rows += [q(qid, title=f"Hops question {i}?", body=BODY, score=5 + i % 7),
                 a(qid + 1, qid, body=BODY + f"<p>answer {i}</p>", score=i % 11),
                 a(qid + 2, qid, body=f"<p>short {i} &amp; sweet</p>", score=6)]
    if bad_at is not None:
        rows[bad_at] = '  <row Id="99999999" PostTypeId="2" Body="<p>a raw tag in an attribute</p>" />'
    return rows


@pytest.fixture
def env(tmp_path):
    drops = tmp_path / "drops"
    instance = dg.DagsterInstance.ephemeral()
    storage = tmp_path / "home" / "storage"
    resources = {"paths": GardenPaths(home=str(tmp_path / "home"), drops=str(drops)),
                 "io_manager": AtomicParquetIOManager(base_dir=str(storage))}
    return instance, resources, drops, storage


def ingest(instance, resources, key, run_config=None):
    instance.add_dynamic_partitions("drops", [key])
    return dg.materialize(ASSETS, selection=ASSETS[:2], partition_key=key, instance=instance, resources=resources,
                          raise_on_error=False, run_config=run_config)


def test_multi_range_drop_streams_the_same_rows_as_the_whole_file_reader(env):
    instance, resources, drops, storage = env
    dump = write_dump(drops / SITE / "Posts.xml", big_rows(3000))
    assert dump.stat().st_size > 2 * RANGE_BYTES  # several byte ranges, read in parallel
    result = ingest(instance, resources, SITE, NO_FILTER)
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    expected, _ = newest_posts(read_posts(dump, drop=SITE), SITE)
    raw = pl.read_parquet(storage / "raw_posts" / f"{SITE}.parquet")
    assert raw.columns == expected.columns and raw.sort("id").equals(expected.sort("id"))
    assert raw["id"].is_sorted()  # file order (the dump's), the same file for the same input
    clean = pl.read_parquet(storage / "clean_posts" / f"{SITE}.parquet")
    assert clean.sort("id").equals(clean_posts(expected)[0].sort("id"))
    meta = result.asset_materializations_for_node("clean_posts")[0].metadata
    assert meta["rows_out"].value == clean.height == 9000 and meta["rows_in"].value == 9000
    assert meta["dagster/partition_row_count"].value == 9000
    assert not list((storage / ".staging").iterdir())  # staged files were renamed into place


def test_bad_row_in_a_big_drop_names_file_and_line_and_keeps_the_previous_outputs(env):
    instance, resources, drops, storage = env
    dump = write_dump(drops / SITE / "Posts.xml", big_rows(3000))
    assert ingest(instance, resources, SITE).success
    stored = {name: (storage / name / f"{SITE}.parquet").read_bytes() for name in ("raw_posts", "clean_posts")}
    # The next dump of the site has a malformed row in a later byte range (line 3 + 7000: after the prolog).
    write_dump(dump, big_rows(3000, bad_at=7000))
    result = ingest(instance, resources, SITE)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert f"{dump}:7003: malformed XML" in message and "attribute" in message
    for name, before in stored.items():
        assert (storage / name / f"{SITE}.parquet").read_bytes() == before
    assert not list((storage / ".staging").iterdir()) and not list(storage.rglob("*.tmp-*"))


def test_qa_pairs_over_scanned_drops_equals_the_in_memory_join(env):
    instance, resources, drops, storage = env
    write_dump(drops / "first" / "Posts.xml", big_rows(40))
    # a later dump edits answer 2 and question 4 and adds a question: the newer versions win
    write_dump(drops / "second" / "Posts.xml", [
        q(4, title="Hops question 1 (updated)?", body=BODY, last="2024-01-01T00:00:00.000"),
        a(2, 1, body="<p>edited answer</p>", last="2024-01-01T00:00:00.000"),
        q(500, title="New?"), a(501, 500)])
    for key in ("first", "second"):
        assert ingest(instance, resources, key, NO_FILTER).success
    result = dg.materialize(ASSETS, selection=ASSETS[2:], instance=instance, resources=resources)
    assert result.success
    pairs = pl.read_parquet(storage / "qa_pairs.parquet")
    clean = pl.concat([pl.read_parquet(storage / "clean_posts" / f"{k}.parquet") for k in ("first", "second")])
    # the reference: newest-wins done eagerly on the whole frame (sort, keep the last per post), then the join
    newest = clean.sort(["site", "id", "last_activity_date", "drop"]).unique(["site", "id"], keep="last")
    expected, stats = build_pairs(newest)
    assert stats["posts_superseded"] == 0 and pairs.equals(expected)
    meta = result.asset_materializations_for_node("qa_pairs")[0].metadata
    assert meta["posts_superseded"].value == clean.height - newest.height == 2
    assert pairs.filter(pl.col("answer_id") == 2)["response"].to_list() == ["edited answer"]
    assert pairs.filter(pl.col("question_id") == 4)["instruction"].unique().to_list() == ["Hops question 1 (updated)?"]


def test_write_pairs_in_many_buckets_equals_build_pairs(tmp_path, shared_data):
    """Two real sites and a newer drop of one of them (edited, deleted and new posts), joined a few kB of posts at
    a time: the same pairs, in the same order, and the same counts as the in-memory join."""
    coffee = clean_posts(read_posts(shared_data / "coffee" / "Posts.xml", drop="coffee"), min_score=-1000,
                         max_body_chars=10**9)[0].with_columns(pl.lit("coffee.stackexchange.com").alias("site"))
    meta = clean_posts(read_posts(shared_data / "datascience-meta" / "Posts.xml", drop="meta"), min_score=-1000,
                       max_body_chars=10**9)[0].with_columns(pl.lit("datascience.meta.stackexchange.com").alias("site"))
    newer = coffee.filter(pl.col("id") % 5 == 0).with_columns(
        pl.lit("coffee-2").alias("drop"), pl.col("text") + " (edited)",
        pl.col("last_activity_date").dt.offset_by("1d"))
    files = []
    for name, frame in [("a", coffee), ("b", meta), ("c", newer)]:
        frame.write_parquet(tmp_path / f"{name}.parquet", row_group_size=500)
        files.append(tmp_path / f"{name}.parquet")
    expected, stats = build_pairs(pl.concat([coffee, meta, newer], how="vertical_relaxed"))
    got_stats, summary = write_pairs(files, tmp_path / "pairs.parquet", bucket_bytes=64 << 10)
    pairs = pl.read_parquet(tmp_path / "pairs.parquet")
    assert pairs.equals(expected) and got_stats == stats and stats["posts_superseded"] == newer.height
    assert summary["accepted"] == expected["is_accepted"].sum()
    assert summary["pairs_by_site"] == dict(expected.group_by("site").len().iter_rows())


def test_written_files_keep_statistics_only_on_short_columns(tmp_path):
    """Long text columns get no min/max statistics (their footer would be kept in memory per row group); ids do."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from garden_assets.stackexchange.ingest import write_tables

    tables = [pa.table({"id": [i, i + 1], "body_html": ["<p>a</p>" * 50, "<p>b</p>"], "title": ["t", "u"]})
              for i in range(0, 6, 2)]
    write_tables(iter(tables), tmp_path / "out.parquet", constants={"site": "s"})
    md = pq.ParquetFile(tmp_path / "out.parquet").metadata
    assert md.num_row_groups == 3
    columns = {md.row_group(0).column(j).path_in_schema: md.row_group(0).column(j) for j in range(md.num_columns)}
    assert columns["id"].is_stats_set and columns["id"].statistics.max == 1
    assert columns["site"].is_stats_set
    assert not columns["body_html"].is_stats_set and not columns["title"].is_stats_set


def test_streaming_allocations_pin_the_mmap_threshold_once_and_restore_it(monkeypatch):
    """Nested uses pin glibc's mmap threshold on the way in and set it back (with a trim) only when
    the last one leaves; the calls go through to the real libc."""
    from garden_assets.stackexchange import malloc

    if malloc._LIBC is None:
        pytest.skip("not glibc")
    calls, real = [], malloc._LIBC

    class Recording:
        def mallopt(self, option, value):
            calls.append(("mallopt", option, value))
            return real.mallopt(option, value)

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return real.malloc_trim(pad)

    monkeypatch.setattr(malloc, "_LIBC", Recording())
    with malloc.streaming_allocations():
        with malloc.streaming_allocations():
            pass
        assert calls == [("mallopt", -3, malloc.STREAMING_MMAP_THRESHOLD)]
    assert calls[1:] == [("mallopt", -3, malloc.AFTER_MMAP_THRESHOLD), ("trim", 0)]


@pytest.mark.parametrize("preset", [None, "narenas:1"])
def test_polars_allocator_takes_the_package_settings_unless_the_user_set_them(preset):
    """Importing garden_assets before polars configures polars' jemalloc (one arena per usable core, no thread
    caches, 1 s decay) as jemalloc itself reports it; a value already in the environment is left alone."""
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"} | (
        {"_RJEM_MALLOC_CONF": preset} if preset else {})
    code = ("import os, garden_assets; os.environ['_RJEM_MALLOC_CONF'] += ',stats_print:true'\n"
            "import polars as pl; pl.DataFrame({'a': [1]})")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    opts = dict(re.findall(r"^\s+opt\.(narenas|tcache|dirty_decay_ms): (\w+)", out.stdout + out.stderr, re.M))
    if preset:
        assert opts["narenas"] == "1" and opts["tcache"] == "true"
    else:
        assert opts == {"narenas": str(len(os.sched_getaffinity(0))), "tcache": "false", "dirty_decay_ms": "1000"}
