"""Retrieval metrics and the answer-retrieval evaluation of the shared dumps' README.

Protocol (README of the shared Stack Exchange samples): one query per question that has answers, the query is the
question *title*; the corpus is every answer; the relevant documents are that question's answers. Reported:
Success@5 (a relevant answer in the top 5) and MRR@10.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Hashable, Sequence

import polars as pl

from .search import DEFAULT_MODE


def success_at_k(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[set], k: int) -> float:
    """Share of queries with at least one relevant id among their first ``k`` ranked ids."""
    _check(ranked, relevant)
    return sum(any(d in rel for d in ids[:k]) for ids, rel in zip(ranked, relevant)) / len(ranked)


def mrr_at_k(ranked: Sequence[Sequence[Hashable]], relevant: Sequence[set], k: int) -> float:
    """Mean over queries of 1/rank of the first relevant id within the first ``k`` (0 when none)."""
    _check(ranked, relevant)
    total = 0.0
    for ids, rel in zip(ranked, relevant):
        total += next((1.0 / (r + 1) for r, d in enumerate(ids[:k]) if d in rel), 0.0)
    return total / len(ranked)


def _check(ranked, relevant) -> None:
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} rankings but {len(relevant)} relevance sets")
    if not ranked:
        raise ValueError("no queries")


def queries_from_pairs(pairs: pl.DataFrame) -> tuple[list[str], list[set[tuple[str, int]]]]:
    """The README's queries: each question's title once (first-seen order), relevant = its ``(site, answer id)``s."""
    site = pl.col("site") if "site" in pairs.columns else pl.lit("")
    grouped = pairs.with_columns(site.alias("_site")).group_by("_site", "question_id", maintain_order=True).agg(
        pl.col("instruction").first(), pl.col("answer_id"))
    return grouped["instruction"].to_list(), [{(s, a) for a in ids} for s, ids in
                                              zip(grouped["_site"].to_list(), grouped["answer_id"].to_list())]


@dataclass
class EvalResult:
    key: str
    mode: str
    queries: int
    success_at_5: float
    mrr_at_10: float
    index_docs_per_s: float | None  # None when an existing store was evaluated (nothing was embedded)
    query_ms_p50: float

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(pairs: pl.DataFrame, index, *, key: str = "answer", mode: str = DEFAULT_MODE) -> EvalResult:
    """Success@5 / MRR@10 of ``mode`` search over ``pairs`` with the README protocol.

    ``index``: an ``Embedder`` (a throw-away store with ``key`` is built in a temporary folder, so the figure
    covers the real LanceDB path and gives docs/s) or an already filled ``QAStore`` (its own key is used).
    The key ``question+answer`` is refused: it contains the title, which is the query; the README's
    question-side key is ``body+answer``.
    """
    from .store import QAStore

    if isinstance(index, QAStore):
        return _run(pairs, index, index.key, mode, None)
    if key == "question+answer":
        raise ValueError("key question+answer holds the query (the title) itself; evaluate body+answer instead")
    with tempfile.TemporaryDirectory(prefix="garden_eval_") as tmp:
        store = QAStore(tmp, index, key=key)
        stats = store.upsert(pairs)
        return _run(pairs, store, key, mode, stats.docs_per_s)


def _run(pairs, store, key, mode, docs_per_s) -> EvalResult:
    queries, relevant = queries_from_pairs(pairs)
    ranked, ms = [], []
    for q in queries:
        start = time.perf_counter()
        hits = store.search(q, k=10, mode=mode) if q.strip() else []
        ms.append((time.perf_counter() - start) * 1e3)
        ranked.append([(h.site, h.answer_id) for h in hits])
    return EvalResult(key=key, mode=mode, queries=len(queries),
                      success_at_5=round(success_at_k(ranked, relevant, 5), 4),
                      mrr_at_10=round(mrr_at_k(ranked, relevant, 10), 4), index_docs_per_s=docs_per_s,
                      query_ms_p50=round(sorted(ms)[len(ms) // 2], 2))


GRID_KEYS = ("answer", "question+answer")  # what retrieval_eval / garden eval-retrieval measure by default


def evaluate_grid(pairs: pl.DataFrame, embedder, keys: Sequence[str], modes: Sequence[str]) -> list[EvalResult]:
    """``evaluate`` for every key × mode with the default store's long-text setting per key (one model load).

    ``question+answer`` is measured as ``body+answer``: the query is the title (the README protocol).
    """
    from .store import LONG_TEXT_BY_KEY

    results = []
    for key in keys:
        corpus_key = "body+answer" if key == "question+answer" else key
        embedder.long_text = LONG_TEXT_BY_KEY[corpus_key]
        for mode in modes:
            result = evaluate(pairs, embedder, key=corpus_key, mode=mode)
            result.key = key
            results.append(result)
    return results
