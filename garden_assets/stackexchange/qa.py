"""Join cleaned questions and answers into Q/A pairs (the ``qa_pairs`` contract)."""

from __future__ import annotations

import hashlib

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


def build_pairs(clean: pl.DataFrame | pl.LazyFrame, site: str | None = None):
    """``clean_posts`` rows of any number of drops and sites → one row per answer whose question (same site) is
    present. ``site``: for rows without a ``site`` column. Links point at each row's own site.

    A ``LazyFrame`` (the drops' Parquet files) is joined by polars' streaming engine: the newest-wins pass reads
    only the key columns, and what is held in memory is the questions' side of the join and the pairs themselves.
    Returns ``(pairs, stats)``; the pairs are a ``DataFrame`` either way."""
    posts = with_site(clean.lazy(), site)
    superseded = superseded_rows(posts)
    posts = drop_rows(posts, superseded)
    questions = posts.filter(pl.col("post_type") == 1).select(
        "site",
        pl.col("id").alias("question_id"),
        pl.col("title").fill_null("").str.strip_chars().alias("instruction"),
        pl.col("text").alias("context"),
        pl.col("score").alias("question_score"),
        "accepted_answer_id",
        "tags",
    )
    answers = posts.filter(pl.col("post_type") == 2).select(
        "site",
        pl.col("parent_id").alias("question_id"),
        pl.col("id").alias("answer_id"),
        pl.col("text").alias("response"),
        pl.col("score").alias("answer_score"),
    )
    pairs = answers.join(questions, on=["site", "question_id"], how="inner")
    pairs = pairs.with_columns(
        pl.lit("closed_qa").alias("category"),
        (pl.col("accepted_answer_id") == pl.col("answer_id")).fill_null(False).alias("is_accepted"),
        pl.format(LINK, pl.col("site"), pl.col("answer_id")).alias("source_url"),
        pl.concat_str(["instruction", "context", "response"], separator="\x1f")
        .map_batches(_hash_series, return_dtype=pl.String)
        .alias("content_hash"),
    ).select(QA_COLUMNS).sort(["site", "answer_id"])
    key = ["site", "question_id"]
    n_answers, n_unanswered = pl.collect_all(
        [answers.select(pl.len()), questions.select(key).join(answers.select(key), on=key, how="anti").select(pl.len())],
        engine="streaming",
    )
    pairs = pairs.collect(engine="streaming")
    stats = {
        "posts_superseded": len(superseded),
        "answers": n_answers.item(),
        "orphan_answers": n_answers.item() - pairs.height,
        "questions_without_answers": n_unanswered.item(),
        "pairs": pairs.height,
    }
    return pairs, stats


def _hash_series(s: pl.Series) -> pl.Series:
    # content_hash must stay sha256 (stable across library versions, the index compares it), so it runs in Python;
    # a whole batch per call instead of map_elements' per-row call.
    return pl.Series(s.name, [None if v is None else content_hash(v) for v in s.to_list()], dtype=pl.String)
