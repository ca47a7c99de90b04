"""Ingestion assets: raw_posts[drop] → clean_posts[drop] → qa_pairs (all drops), with their checks."""


import os
from collections import Counter
from pathlib import Path

import dagster as dg
import polars as pl
import pyarrow as pa

from ..drops import content_hash, locate, site_of
from ..stackexchange.ingest import clean_tables, iter_raw, write_tables
from ..stackexchange.keys import SeenKeys, count_repeats
from ..stackexchange.qa import drop_rows, write_pairs
from ..stackexchange.reader import DumpError, ReadStats, find_posts
from ..stackexchange.text import clean_posts as clean_frame
from .metadata import counts, preview
from .resources import GardenPaths, StagedParquet, StoredParquet, staged_parquet

# Memory above the ~180 MB a Dagster run process starts with (measured on a 100 MB drop): raw_posts with garden
# ingest's 6 MB byte ranges +190 MB, with 2 MB +115 MB (for ~20 % more CPU); clean_posts batches of 16 k rows
# +280 MB, of 4 k rows +137 MB, of 2 k +118 MB (same time, but a 28 % larger file: each batch is a row group),
# of 1 k +95 MB (20 % slower).
RAW_RANGE_BYTES = 2 << 20
CLEAN_BATCH_ROWS = 1 << 12

drops_partitions = dg.DynamicPartitionsDefinition(name="drops")

# A failed (bad) drop leaves its partition missing; that must not hold back the good ones.
follow_upstream = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())


@dg.asset(
    partitions_def=drops_partitions,
    group_name="ingest",
    kinds={"polars", "parquet"},
    description="Every question and answer row of one drop, as read from its Posts.xml (or site .7z).",
    check_specs=[dg.AssetCheckSpec("unique_ids", asset="raw_posts", blocking=True, description="Post ids are unique within the drop.")],
)
def raw_posts(context: dg.AssetExecutionContext, paths: GardenPaths):
    # Streamed through the `garden ingest` fast path (parallel byte ranges) into a staged Parquet file a table at a
    # time, so memory stays a few ranges whatever the drop's size; the IO manager renames the file into place.
    stats = ReadStats()
    key = context.partition_key
    with staged_parquet(paths, f"raw_posts-{key}") as staged:
        try:
            entry = locate(paths.drops_path, key)
            file, member = find_posts(entry)
            site = site_of(entry, paths.drops_path)
            seen, repeated = SeenKeys(), set()  # ids seen, one bit each: repeats found while writing

            def tracked(tables):
                for table in tables:
                    for ids in seen.add(table, site=site.name).values():
                        repeated.update(ids.tolist())
                    yield table

            tables = tracked(iter_raw(entry, stats, drop=key, range_bytes=RAW_RANGE_BYTES))
            written = write_tables(tables, staged, constants={"site": site.name})
        except DumpError as e:  # a bad drop: say which file and line, fail only this partition
            raise dg.Failure(description=str(e), allow_retries=False) from None
        if site.source == "default":
            context.log.warning(f"drop {key} names no site: taken as {site.name}; name it after its site "
                                f"(beer.stackexchange.com.7z) or add a site.yaml (`site: beer.stackexchange.com`)")
        if written["rows"] == 0:
            raise dg.Failure(f"{file}: no question or answer rows in this drop", metadata=_skips(stats))
        duplicates = _keep_newest(staged, repeated)
        if duplicates:
            stats.skip("duplicate id (older row dropped)", str(file), n=duplicates)
        for line in stats.examples[:10]:
            context.log.warning(f"skipped {line}")
        stored = pl.scan_parquet(staged)
        check = unique_ids_check(staged, ["site", "id"])
        metadata = {
            "source": dg.MetadataValue.path(f"{file}!{member}" if member else str(file)),
            "content_hash": content_hash(file),
            "site": site.name,
            "site_from": site.source,
            **counts(rows=written["rows"] - duplicates, questions=stats.questions, answers=stats.answers),
            **_skips(stats),
            "preview": preview(stored.head(5).collect(), ["id", "post_type", "parent_id", "score", "title", "tags", "last_activity_date"]),
        }
    yield dg.Output(StagedParquet.of(staged), metadata=metadata)
    yield check


def _keep_newest(staged: Path, repeated: set[int]) -> int:
    """Keep one row per post id in a staged drop (the newest wins, as in ``qa.newest_posts``); returns the rows
    dropped. ``repeated``: the ids that occur more than once (found while writing); only their key columns are
    read to pick the winners; the rewrite, if any, streams (file order kept)."""
    if not repeated:
        return 0
    stored = pl.scan_parquet(staged)
    keys = stored.select("id", "last_activity_date").with_row_index("row").filter(pl.col("id").is_in(sorted(repeated)))
    winners = keys.sort(["id", "last_activity_date", "row"], nulls_last=False).unique("id", keep="last")
    gone = keys.join(winners.select("row"), on="row", how="anti").select("row").collect()["row"].sort()
    tmp = staged.with_name(f"{staged.name}.newest")
    try:
        drop_rows(stored, gone).sink_parquet(tmp, compression="zstd")
        os.replace(tmp, staged)
    finally:
        tmp.unlink(missing_ok=True)
    return len(gone)


def _skips(stats: ReadStats) -> dict:
    meta = {"skipped": dg.MetadataValue.int(stats.skipped_total)}
    meta.update({f"skipped: {reason}": dg.MetadataValue.int(n) for reason, n in sorted(stats.skipped.items())})
    if stats.examples:
        meta["skipped examples"] = dg.MetadataValue.md("\n".join(f"- `{e}`" for e in stats.examples[:10]))
    return meta


class CleanConfig(dg.Config):
    min_score: int = 5
    max_body_chars: int = 1000


@dg.asset(
    partitions_def=drops_partitions,
    group_name="ingest",
    kinds={"polars", "parquet"},
    automation_condition=dg.AutomationCondition.eager(),
    description="raw_posts with HTML turned into text, filtered by score and length (as in the talk).",
    check_specs=[dg.AssetCheckSpec("plain_text", asset="clean_posts", blocking=True, description="No HTML tags are left in any text; ids unique.")],
)
def clean_posts(context: dg.AssetExecutionContext, config: CleanConfig, paths: GardenPaths, raw_posts: StoredParquet):
    # raw_posts is read a few row groups at a time (not loaded, not memory-mapped): batches are cleaned in threads
    # and written one by one to a staged file.
    c = Counter(dict.fromkeys(["rows_in", "removed_min_score", "removed_empty_text", "removed_max_body_chars",
                               "rows_out", "rows_with_html"], 0))  # in the order the filters run
    with staged_parquet(paths, f"clean_posts-{context.partition_key}") as staged:
        source = raw_posts.open()
        empty = clean_frame(pl.from_arrow(source.schema_arrow.empty_table()))[0].to_arrow().schema
        batches = _row_group_batches(source, CLEAN_BATCH_ROWS)
        write_tables(clean_tables(batches, c, config.min_score, config.max_body_chars), staged, schema=empty)
        stored = pl.scan_parquet(staged)
        check = unique_ids_check(staged, ["site", "id"], check_name="plain_text", rows_with_html=c.pop("rows_with_html"))
        metadata = {
            **counts(**c),
            "min_score": config.min_score,
            "max_body_chars": config.max_body_chars,
            "preview": preview(stored.head(5).collect(), ["id", "post_type", "score", "title", "text"]),
        }
    yield dg.Output(StagedParquet.of(staged), metadata=metadata)
    yield check


@dg.asset(
    group_name="ingest",
    kinds={"polars", "parquet"},
    ins={"clean_posts": dg.AssetIn(metadata={"allow_missing_partitions": True})},
    automation_condition=follow_upstream,
    description="One row per answer joined to its question, over all drops; the newest version of a post wins.",
    check_specs=[dg.AssetCheckSpec("complete_pairs", asset="qa_pairs", blocking=True, description="Every pair has a non-empty instruction and response; answer ids unique.")],
)
def qa_pairs(context: dg.AssetExecutionContext, paths: GardenPaths, clean_posts: dict[str, StoredParquet]):
    # The IO manager hands over where each drop's file is: the pairs are joined a bucket of post ids at a time and
    # written as they come (qa.write_pairs), never all drops loaded first.
    by_drop = clean_posts
    old = sorted(k for k, f in by_drop.items() if "site" not in f.open().schema_arrow.names)
    if old:  # an older home (one site for all drops): never guess, rebuild
        raise dg.Failure(f"clean_posts of drops {old} predate per-site post ids (no site column): re-materialize "
                         f"raw_posts and clean_posts for them (`make run` does), then qa_pairs")
    files = [by_drop[k].location for k in sorted(by_drop)]
    if not files or not sum(by_drop[k].open().metadata.num_rows for k in by_drop):
        raise dg.Failure("no cleaned posts in any drop: materialize raw_posts/clean_posts for a drop first")
    with staged_parquet(paths, "qa_pairs") as staged:
        stats, summary = write_pairs(files, staged)  # a fixed order: same drops, same file
        context.log.info(f"pairs from drops {sorted(by_drop)}: {stats}")
        metadata = {
            **counts(**stats, drops=len(by_drop), accepted=summary["accepted"]),
            "pairs_by_site": dg.MetadataValue.json(dict(sorted(summary["pairs_by_site"].items()))),
            "preview": preview(pl.read_parquet(staged, n_rows=5),
                               ["site", "question_id", "answer_id", "instruction", "response", "is_accepted"]),
        }
        check = unique_ids_check(staged, ["site", "answer_id"], check_name="complete_pairs", empty_rows=summary["empty_rows"])
    yield dg.Output(StagedParquet.of(staged), metadata=metadata)
    yield check


def _row_group_batches(source, rows: int):
    """Tables of at least ``rows`` rows (whole row groups) from an open ``ParquetFile``, in file order."""
    group, n = [], 0
    for i in range(source.num_row_groups):
        table = source.read_row_group(i)
        group.append(table)
        n += table.num_rows
        if n >= rows:
            yield pa.concat_tables(group) if len(group) > 1 else group[0]
            group, n = [], 0
    if group:
        yield pa.concat_tables(group) if len(group) > 1 else group[0]


def unique_ids_check(df: pl.DataFrame | pl.LazyFrame | Path, key: list[str], check_name: str = "unique_ids", **failures: int):
    """Passes when the ``key`` columns are unique together and every other named failure count is zero. A stored
    file (a ``Path``; key ``[site, <id>]``) is read a row group at a time, only the key columns, ids kept as bits
    (``keys.SeenIds``): memory does not grow with the rows."""
    if isinstance(df, Path):
        assert key[0] == "site" and len(key) == 2
        rows, dupes = count_repeats([df], id_column=key[1])
    else:
        rows, distinct = df.lazy().select(pl.len(), pl.struct(key).n_unique()).collect(engine="streaming").row(0)
        dupes = rows - distinct
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=dupes == 0 and not any(failures.values()),
        metadata={f"duplicate_{key[-1]}s": dupes, **failures, "rows": rows},
    )
