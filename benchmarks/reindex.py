"""Incremental re-index: a full build vs the re-materialization after a drop that adds 1 % more answers.

    python benchmarks/reindex.py [--dumps coffee datascience-meta]

Pairs come from the shared real dumps (GARDEN_SHARED_DATA); the first build indexes all but 1 % of them with
the default configuration (``open_store``: packaged MiniLM, key question+answer), then the full set is upserted
as qa_index does after a new drop. Prints both times, the ratio, and how many unchanged rows were re-embedded.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import polars as pl

from garden_assets.retrieval.store import open_store
from garden_assets.stackexchange.qa import build_pairs
from garden_assets.stackexchange.reader import read_posts
from garden_assets.stackexchange.text import clean_posts


def load_pairs(shared: Path, dumps: list[str]) -> pl.DataFrame:
    frames = []
    for i, name in enumerate(dumps):
        pairs, _ = build_pairs(clean_posts(read_posts(shared / name / "Posts.xml"))[0])
        # two sites share id ranges: offset each site's ids so they stay distinct in one index
        frames.append(pairs.with_columns(pl.col("answer_id") + i * 10_000_000, pl.col("question_id") + i * 10_000_000))
    return pl.concat(frames)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dumps", nargs="+", default=["coffee", "datascience-meta"])
    args = ap.parse_args()
    shared = Path(os.environ.get("GARDEN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data/stackexchange"))
    pairs = load_pairs(shared, args.dumps).sample(fraction=1.0, shuffle=True, seed=0)
    n_new = max(1, round(pairs.height * 0.01))
    before, after = pairs.head(pairs.height - n_new), pairs
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(tmp)
        store.embedder.embed(["warm-up"])  # model load is not part of either figure
        t = time.perf_counter()
        full = store.upsert(before)
        full_s = time.perf_counter() - t
        t = time.perf_counter()
        incr = store.upsert(after)
        incr_s = time.perf_counter() - t
    print(f"full build:  {full.embedded} rows embedded in {full_s:.2f} s ({full.docs_per_s:.1f} docs/s)")
    print(f"new drop:    +{n_new} answers: embedded {incr.embedded}, unchanged {incr.unchanged}, deleted {incr.deleted} in {incr_s:.2f} s")
    print(f"ratio: {incr_s / full_s:.3f} of the full build (goal <= 0.05); unchanged rows re-embedded: {incr.embedded - n_new}")


if __name__ == "__main__":
    main()
