"""Join cleaned questions and answers into Q/A pairs (the ``qa_pairs`` contract)."""

from __future__ import annotations

import hashlib

import polars as pl

QA_COLUMNS = [
    "question_id", "answer_id", "instruction", "context", "response", "category", "is_accepted",
    "question_score", "answer_score", "tags", "source_url", "content_hash",
]


def content_hash(text: str) -> str:
    """A hash that stays the same across library versions (polars' own hash does not promise that)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def newest_posts(clean: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Keep one row per post id: the newest ``last_activity_date`` wins (later drop breaks ties)."""
    newest = clean.sort(["id", "last_activity_date", "drop"], nulls_last=False).unique("id", keep="last")
    return newest, clean.height - newest.height


def build_pairs(clean: pl.DataFrame, site_url: str = "https://gardening.stackexchange.com") -> tuple[pl.DataFrame, dict]:
    """``clean_posts`` rows of any number of drops → one row per answer whose question is present."""
    posts, superseded = newest_posts(clean)
    questions = posts.filter(pl.col("post_type") == 1).select(
        pl.col("id").alias("question_id"),
        pl.col("title").fill_null("").str.strip_chars().alias("instruction"),
        pl.col("text").alias("context"),
        pl.col("score").alias("question_score"),
        "accepted_answer_id",
        "tags",
    )
    answers = posts.filter(pl.col("post_type") == 2).select(
        pl.col("parent_id").alias("question_id"),
        pl.col("id").alias("answer_id"),
        pl.col("text").alias("response"),
        pl.col("score").alias("answer_score"),
    )
    pairs = answers.join(questions, on="question_id", how="inner")
    pairs = pairs.with_columns(
        pl.lit("closed_qa").alias("category"),
        (pl.col("accepted_answer_id") == pl.col("answer_id")).fill_null(False).alias("is_accepted"),
        pl.format("{}/a/{}", pl.lit(site_url.rstrip("/")), pl.col("answer_id")).alias("source_url"),
        pl.concat_str(["instruction", "context", "response"], separator="\x1f")
        .map_elements(content_hash, return_dtype=pl.String)
        .alias("content_hash"),
    ).select(QA_COLUMNS).sort("answer_id")
    stats = {
        "posts_superseded": superseded,
        "answers": answers.height,
        "orphan_answers": answers.height - pairs.height,
        "questions_without_answers": questions.join(answers, on="question_id", how="anti").height,
        "pairs": pairs.height,
    }
    return pairs, stats
