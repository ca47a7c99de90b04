"""Ingestion assets: raw_posts[drop] → clean_posts[drop] → qa_pairs (all drops), with their checks."""


import dagster as dg
import polars as pl

from ..drops import content_hash, locate, site_of
from ..stackexchange.qa import build_pairs, newest_posts
from ..stackexchange.reader import DumpError, ReadStats, find_posts, read_posts
from ..stackexchange.text import clean_posts as clean_frame
from ..stackexchange.text import has_html
from .metadata import counts, preview
from .resources import GardenPaths

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
    stats = ReadStats()
    try:
        entry = locate(paths.drops_path, context.partition_key)
        file, member = find_posts(entry)
        site = site_of(entry, paths.drops_path)
        df = read_posts(entry, drop=context.partition_key, stats=stats)
    except DumpError as e:  # a bad drop: say which file and line, fail only this partition
        raise dg.Failure(description=str(e), allow_retries=False) from None
    if site.source == "default":
        context.log.warning(f"drop {context.partition_key} names no site: taken as {site.name}; name it after its site "
                            f"(beer.stackexchange.com.7z) or add a site.yaml (`site: beer.stackexchange.com`)")
    df, duplicates = newest_posts(df, site.name)
    if duplicates:
        stats.skip("duplicate id (older row dropped)", str(file), n=duplicates)
    if df.height == 0:
        raise dg.Failure(f"{file}: no question or answer rows in this drop", metadata=_skips(stats))
    for line in stats.examples[:10]:
        context.log.warning(f"skipped {line}")
    digest = content_hash(file)
    yield dg.Output(
        df,
        metadata={
            "source": dg.MetadataValue.path(f"{file}!{member}" if member else str(file)),
            "content_hash": digest,
            "site": site.name,
            "site_from": site.source,
            **counts(rows=df.height, questions=stats.questions, answers=stats.answers),
            **_skips(stats),
            "preview": preview(df, ["id", "post_type", "parent_id", "score", "title", "tags", "last_activity_date"]),
        },
    )
    yield unique_ids_check(df, ["site", "id"])


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
def clean_posts(config: CleanConfig, raw_posts: pl.DataFrame):
    df, c = clean_frame(raw_posts, min_score=config.min_score, max_body_chars=config.max_body_chars)
    yield dg.Output(
        df,
        metadata={
            **counts(**{k: v for k, v in c.items()}),
            "min_score": config.min_score,
            "max_body_chars": config.max_body_chars,
            "preview": preview(df, ["id", "post_type", "score", "title", "text"]),
        },
    )
    tagged = df.filter(pl.col("text").map_elements(has_html, return_dtype=pl.Boolean))
    yield unique_ids_check(df, ["site", "id"], check_name="plain_text", rows_with_html=tagged.height)


@dg.asset(
    group_name="ingest",
    kinds={"polars", "parquet"},
    ins={"clean_posts": dg.AssetIn(metadata={"allow_missing_partitions": True})},
    automation_condition=follow_upstream,
    description="One row per answer joined to its question, over all drops; the newest version of a post wins.",
    check_specs=[dg.AssetCheckSpec("complete_pairs", asset="qa_pairs", blocking=True, description="Every pair has a non-empty instruction and response; answer ids unique.")],
)
def qa_pairs(context: dg.AssetExecutionContext, clean_posts):
    # The IO manager hands over a dict of partition → frame, or a bare frame when only one drop exists.
    by_drop = clean_posts if isinstance(clean_posts, dict) else {context.asset_partition_keys_for_input("clean_posts")[0]: clean_posts}
    frames = [df for df in by_drop.values() if df.height]
    if not frames:
        raise dg.Failure("no cleaned posts in any drop: materialize raw_posts/clean_posts for a drop first")
    old = sorted(k for k, df in by_drop.items() if "site" not in df.columns)
    if old:  # an older home (one site for all drops): never guess, rebuild
        raise dg.Failure(f"clean_posts of drops {old} predate per-site post ids (no site column): re-materialize "
                         f"raw_posts and clean_posts for them (`make run` does), then qa_pairs")
    pairs, stats = build_pairs(pl.concat(frames, how="vertical_relaxed"))
    context.log.info(f"pairs from drops {sorted(by_drop)}: {stats}")
    yield dg.Output(
        pairs,
        metadata={
            **counts(**stats, drops=len(by_drop), accepted=int(pairs["is_accepted"].sum())),
            "pairs_by_site": dg.MetadataValue.json(dict(pairs.group_by("site").len().sort("site").iter_rows())),
            "preview": preview(pairs, ["site", "question_id", "answer_id", "instruction", "response", "is_accepted"]),
        },
    )
    empty = pairs.filter((pl.col("instruction").str.strip_chars() == "") | (pl.col("response").str.strip_chars() == ""))
    yield unique_ids_check(pairs, ["site", "answer_id"], check_name="complete_pairs", empty_rows=empty.height)


def unique_ids_check(df: pl.DataFrame, key: list[str], check_name: str = "unique_ids", **failures: int):
    """Passes when the ``key`` columns are unique together and every other named failure count is zero."""
    dupes = df.height - df.select(key).n_unique()
    return dg.AssetCheckResult(
        check_name=check_name,
        passed=dupes == 0 and not any(failures.values()),
        metadata={f"duplicate_{key[-1]}s": dupes, **failures, "rows": df.height},
    )
