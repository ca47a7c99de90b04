"""Join cleaned questions and answers into Q/A pairs (the ``qa_pairs`` contract)."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

QA_COLUMNS = [
    "site", "question_id", "answer_id", "instruction", "context", "response", "category", "is_accepted",
    "question_score", "answer_score", "tags", "source_url", "content_hash",
]


def content_hash(text: str) -> str:
    """A hash that stays the same across library versions (polars' own hash does not promise that)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


LINK = "https://{}/a/{}"  # an answer's public page from (site, answer id)
POST_KEY = ["site", "id"]  # a post's identity: ids are only unique within one site


def with_site(posts: pl.DataFrame | pl.LazyFrame, site: str | None):
    """``posts`` with a ``site`` column: kept when present, else ``site`` (required then)."""
    names = posts.collect_schema().names() if isinstance(posts, pl.LazyFrame) else posts.columns
    if "site" in names:
        return posts
    if not site:
        raise ValueError("posts have no site column: say which site they come from")
    return posts.with_columns(pl.lit(site, pl.String).alias("site"))


def superseded_rows(posts: pl.DataFrame | pl.LazyFrame, key: list[str] = POST_KEY,
                    newest: tuple[str, ...] = ("last_activity_date", "drop")) -> pl.Series:
    """Row numbers (0-based, in ``posts``' order) of every post version that a newer one replaces: per ``key``
    (a post, ``(site, id)``) the last row in ``newest`` order wins (the newest ``last_activity_date``, then the
    later drop), then the later row.
    Only those columns are read, so a lazy ``posts`` is never held in memory whole."""
    order = [*key, *newest]
    keys = posts.lazy().select(order).with_row_index("row")
    # the rows of duplicated keys only (few: ids are unique within a drop already)
    dupes = keys.filter(pl.struct(key).is_duplicated())
    winners = dupes.sort([*order, "row"], nulls_last=False).unique(key, keep="last")
    return dupes.join(winners.select("row"), on="row", how="anti").select("row").collect()["row"].sort()


def drop_rows(posts, rows: pl.Series):
    """``posts`` without the given row numbers, order kept (lazy in, lazy out)."""
    if rows.is_empty():
        return posts
    return posts.with_row_index("_row").filter(~pl.col("_row").is_in(rows.implode())).drop("_row")


def newest_posts(clean: pl.DataFrame, site: str | None = None) -> tuple[pl.DataFrame, int]:
    """Keep one row per post ``(site, id)``: the newest ``last_activity_date`` wins (later drop breaks ties).
    Ordered by ``(site, id)``: same input, same file."""
    clean = with_site(clean, site)
    newest = drop_rows(clean, superseded_rows(clean)).sort(POST_KEY, maintain_order=True)
    return newest, clean.height - newest.height


def _questions(posts):
    return posts.filter(pl.col("post_type") == 1).select(
        "site",
        pl.col("id").alias("question_id"),
        pl.col("title").fill_null("").str.strip_chars().alias("instruction"),
        pl.col("text").alias("context"),
        pl.col("score").alias("question_score"),
        "accepted_answer_id",
        "tags",
    )


def _answers(posts):
    return posts.filter(pl.col("post_type") == 2).select(
        "site",
        pl.col("parent_id").alias("question_id"),
        pl.col("id").alias("answer_id"),
        pl.col("text").alias("response"),
        pl.col("score").alias("answer_score"),
    )


def _pairs(answers, questions):
    return answers.join(questions, on=["site", "question_id"], how="inner").with_columns(
        pl.lit("closed_qa").alias("category"),
        (pl.col("accepted_answer_id") == pl.col("answer_id")).fill_null(False).alias("is_accepted"),
        pl.format(LINK, pl.col("site"), pl.col("answer_id")).alias("source_url"),
        pl.concat_str(["instruction", "context", "response"], separator="\x1f")
        .map_batches(_hash_series, return_dtype=pl.String)
        .alias("content_hash"),
    ).select(QA_COLUMNS).sort(["site", "answer_id"])


def build_pairs(clean: pl.DataFrame | pl.LazyFrame, site: str | None = None):
    """``clean_posts`` rows of any number of drops and sites → one row per answer whose question (same site) is
    present. ``site``: for rows without a ``site`` column. Links point at each row's own site.

    Everything is joined in memory (see ``write_pairs`` for drops stored as Parquet). Returns ``(pairs, stats)``."""
    posts = with_site(clean.lazy(), site)
    superseded = superseded_rows(posts)
    posts = drop_rows(posts, superseded)
    questions, answers = _questions(posts), _answers(posts)
    key = ["site", "question_id"]
    n_answers, n_unanswered = pl.collect_all(
        [answers.select(pl.len()), questions.select(key).join(answers.select(key), on=key, how="anti").select(pl.len())],
        engine="streaming",
    )
    pairs = _pairs(answers, questions).collect(engine="streaming")
    stats = {
        "posts_superseded": len(superseded),
        "answers": n_answers.item(),
        "orphan_answers": n_answers.item() - pairs.height,
        "questions_without_answers": n_unanswered.item(),
        "pairs": pairs.height,
    }
    return pairs, stats


# Uncompressed bytes of stored posts joined at once by write_pairs (its memory: a few times this).
PAIRS_BUCKET_BYTES = 4 << 20
_NEWEST = ["id", "last_activity_date", "drop", "_row"]


def _newest(posts: pl.LazyFrame) -> pl.LazyFrame:
    # newest-wins as superseded_rows does it (one site): per id the last in (last_activity_date, drop, row) order
    return posts.with_row_index("_row").sort(_NEWEST, nulls_last=False).unique("id", keep="last").drop("_row")


def write_pairs(files: list, out, bucket_bytes: int = PAIRS_BUCKET_BYTES) -> tuple[dict, dict]:
    """``build_pairs`` over ``clean_posts`` Parquet files (in the order given: later files win ties), written to
    ``out`` as it goes, in memory that does not grow with the posts.

    One pass over the key columns (``site``, ``id``, a row group at a time) counts the superseded versions and each
    site's id range; then each site's id range is cut into buckets of about ``bucket_bytes`` of stored posts. A
    bucket's posts (every version: newest-wins is decided inside the bucket, since all versions of a post share its
    id) give its answers; their questions are fetched by id (only matching rows are read), joined, sorted by answer id
    and appended. Buckets go in (site, id) order, so the file is ordered by (site, answer_id) as ``build_pairs``'.
    Returns ``(stats, summary)``: ``build_pairs``' stats, and ``accepted``, ``empty_rows``, ``pairs_by_site``."""
    from .ingest import write_tables
    from .keys import SeenIds, SeenKeys, open_parquet

    seen, ranges, total_bytes, rows = SeenKeys(), {}, 0, 0
    for file in files:
        pf = open_parquet(file)
        total_bytes += sum(pf.metadata.row_group(i).total_byte_size for i in range(pf.num_row_groups))
        for i in range(pf.num_row_groups):
            keys = pl.from_arrow(pf.read_row_group(i, columns=["site", "id"]))
            rows += keys.height
            seen.add(keys.to_arrow())
            for site, lo, hi, n in keys.group_by("site").agg(pl.col("id").min().alias("lo"), pl.col("id").max().alias("hi"), pl.len()).iter_rows():
                was = ranges.get(site, (lo, hi, 0))
                ranges[site] = (min(lo, was[0]), max(hi, was[1]), was[2] + n)
    posts = pl.concat([pl.scan_parquet(str(f)) for f in files], how="vertical_relaxed")
    stats = {"posts_superseded": seen.repeats, "answers": 0, "questions": 0}
    summary = {"accepted": 0, "empty_rows": 0, "pairs_by_site": {}}
    answered = {}  # site → question ids with a pair (distinct count = added - repeats)
    answer_side = ["site", "id", "post_type", "parent_id", "text", "score", "last_activity_date", "drop"]

    def buckets():
        for site in sorted(ranges, key=lambda s: (s is None, s)):
            lo, hi, n = ranges[site]
            k = max(1, -(-total_bytes * n // max(rows, 1) // bucket_bytes))
            step = -(-(hi - lo + 1) // k)
            here = posts.filter(pl.col("site") == site) if site is not None else posts.filter(pl.col("site").is_null())
            for start in range(lo, hi + 1, step):
                bucket = _newest(here.filter(pl.col("id").is_between(start, start + step, closed="left"))
                                 .select(answer_side)).collect()
                stats["questions"] += int((bucket["post_type"] == 1).sum())
                answers = _answers(bucket.lazy()).collect()
                stats["answers"] += answers.height
                if answers.is_empty():
                    continue
                needed = answers["question_id"].unique().drop_nulls()
                questions = _questions(_newest(here.filter(pl.col("id").is_in(needed.implode())))).collect()
                pairs = _pairs(answers.lazy(), questions.lazy()).collect()
                if pairs.is_empty():
                    continue
                answered.setdefault(site, SeenIds()).add(pairs["question_id"].to_numpy())
                summary["accepted"] += int(pairs["is_accepted"].sum())
                summary["empty_rows"] += int(((pairs["instruction"].str.strip_chars() == "")
                                              | (pairs["response"].str.strip_chars() == "")).sum())
                summary["pairs_by_site"][site] = summary["pairs_by_site"].get(site, 0) + pairs.height
                yield pairs.to_arrow()

    empty = _pairs(_answers(posts.head(0)), _questions(posts.head(0))).collect().to_arrow().schema
    n = write_tables(buckets(), out, schema=empty)
    with_pairs = sum(_distinct(s) for s in answered.values())
    questions = stats.pop("questions")
    stats |= {"orphan_answers": stats["answers"] - n["rows"], "questions_without_answers": questions - with_pairs,
              "pairs": n["rows"]}
    return stats, summary


def _distinct(seen) -> int:
    return int(np.unpackbits(seen.bits).sum()) + len(seen.others)


def _hash_series(s: pl.Series) -> pl.Series:
    # content_hash must stay sha256 (stable across library versions, the index compares it), so it runs in Python;
    # a whole batch per call instead of map_elements' per-row call.
    return pl.Series(s.name, [None if v is None else content_hash(v) for v in s.to_list()], dtype=pl.String)
