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


def newest_posts(clean: pl.DataFrame, site: str | None = None) -> tuple[pl.DataFrame, int]:
    """Keep one row per post ``(site, id)``: the newest ``last_activity_date`` wins (later drop breaks ties)."""
    clean = with_site(clean, site)
    newest = (clean.sort([*POST_KEY, "last_activity_date", "drop"], nulls_last=False)
              .unique(POST_KEY, keep="last", maintain_order=True))  # ordered by (site, id): same input, same file
    return newest, clean.height - newest.height


def build_pairs(clean: pl.DataFrame, site: str | None = None) -> tuple[pl.DataFrame, dict]:
    """``clean_posts`` rows of any number of drops and sites → one row per answer whose question (same site) is
    present. ``site``: for rows without a ``site`` column. Links point at each row's own site."""
    posts, superseded = newest_posts(clean, site)
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
        .map_elements(content_hash, return_dtype=pl.String)
        .alias("content_hash"),
    ).select(QA_COLUMNS).sort(["site", "answer_id"])
    stats = {
        "posts_superseded": superseded,
        "answers": answers.height,
        "orphan_answers": answers.height - pairs.height,
        "questions_without_answers": questions.join(answers, on=["site", "question_id"], how="anti").height,
        "pairs": pairs.height,
    }
    return pairs, stats
