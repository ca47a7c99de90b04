"""Retrieval metrics and the answer-retrieval evaluation of the shared dumps' README.

Protocol (README of the shared Stack Exchange samples): one query per question that has answers, the query is the
question *title*; the corpus is every answer; the relevant documents are that question's answers. Reported:
Success@5 (a relevant answer in the top 5) and MRR@10. ``questions`` restricts the queries to a set of
``(site, question_id)``s (the held-out split) while the corpus stays every answer.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Collection, Hashable, Mapping, Sequence

import polars as pl

from .search import DEFAULT_MODE, VECTOR_WEIGHT


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


def queries_from_pairs(pairs: pl.DataFrame, questions: Collection[tuple[str, int]] | None = None,
                       ) -> tuple[list[str], list[set[tuple[str, int]]]]:
    """The README's queries: each question's title once (first-seen order), relevant = its ``(site, answer id)``s;
    ``questions``: only these ``(site, question_id)``s."""
    grouped = _query_frame(pairs, questions)
    return grouped["instruction"].to_list(), _relevant(grouped)


def _query_frame(pairs: pl.DataFrame, questions: Collection[tuple[str, int]] | None) -> pl.DataFrame:
    """One row per question: ``_site, question_id, instruction`` (its title), ``answer_id`` (a list)."""
    site = pl.col("site") if "site" in pairs.columns else pl.lit("")
    frame = pairs.with_columns(site.alias("_site"))
    if questions is not None:
        wanted = pl.DataFrame([(str(s), int(q)) for s, q in questions], orient="row",
                              schema={"_site": pl.String, "question_id": pl.Int64})
        frame = frame.with_columns(pl.col("_site").cast(pl.String), pl.col("question_id").cast(pl.Int64)).join(
            wanted, on=["_site", "question_id"], how="semi", maintain_order="left")
    return frame.group_by("_site", "question_id", maintain_order=True).agg(
        pl.col("instruction").first(), pl.col("answer_id"))


def _relevant(grouped: pl.DataFrame) -> list[set[tuple[str, int]]]:
    return [{(s, a) for a in ids} for s, ids in zip(grouped["_site"].to_list(), grouped["answer_id"].to_list())]


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
        return _run(pairs, index, index.key, mode, None)[0]
    if key == "question+answer":
        raise ValueError("key question+answer holds the query (the title) itself; evaluate body+answer instead")
    with tempfile.TemporaryDirectory(prefix="garden_eval_") as tmp:
        store = QAStore(tmp, index, key=key)
        stats = store.upsert(pairs)
        return _run(pairs, store, key, mode, stats.docs_per_s)[0]


def _run(pairs, store, key, mode, docs_per_s, questions=None, weight: float = VECTOR_WEIGHT,
         ) -> tuple[EvalResult, dict[tuple[str, int], tuple[float, float]]]:
    """The result, and per question ``(site, question_id)``: (relevant in the top 5: 0/1, reciprocal rank ≤ 10)."""
    grouped = _query_frame(pairs, questions)
    queries, relevant = grouped["instruction"].to_list(), _relevant(grouped)
    ranked, ms = [], []
    for q in queries:
        start = time.perf_counter()
        hits = store.search(q, k=10, mode=mode, weight=weight) if q.strip() else []
        ms.append((time.perf_counter() - start) * 1e3)
        ranked.append([(h.site, h.answer_id) for h in hits])
    per_query = {question: (success_at_k([r], [rel], 5), mrr_at_k([r], [rel], 10)) for question, r, rel in
                 zip(zip(grouped["_site"].to_list(), grouped["question_id"].to_list()), ranked, relevant)}
    result = EvalResult(key=key, mode=mode, queries=len(queries),
                        success_at_5=round(success_at_k(ranked, relevant, 5), 4),
                        mrr_at_10=round(mrr_at_k(ranked, relevant, 10), 4), index_docs_per_s=docs_per_s,
                        query_ms_p50=round(sorted(ms)[len(ms) // 2], 2))
    return result, per_query


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


def compare_models(pairs: pl.DataFrame, embedders: Mapping[str, object], *, key: str = "answer",
                   modes: Sequence[str] = ("fts", "vector", "hybrid"),
                   questions: Collection[tuple[str, int]] | None = None,
                   weights: Sequence[float] = (VECTOR_WEIGHT,), per_query: bool = False) -> list[dict]:
    """One row per (model, mode[, hybrid weight]): ``model, key, mode, vector_weight, success_at_5, mrr_at_10,
    queries, docs_per_s``. One index per model (built once, all modes searched on it); ``fts`` is the same for
    every model and comes once as model ``bm25``. ``question+answer`` is measured as ``body+answer``;
    ``questions``: the ``(site, question_id)``s queried (the held-out split), the corpus being every answer.
    ``per_query``: each row also maps every question to (relevant in the top 5: 0/1, reciprocal rank within 10)."""
    from .store import LONG_TEXT_BY_KEY, QAStore

    corpus_key = "body+answer" if key == "question+answer" else key
    rows: list[dict] = []
    for name, embedder in embedders.items():
        embedder.long_text = LONG_TEXT_BY_KEY[corpus_key]
        with tempfile.TemporaryDirectory(prefix="garden_eval_") as tmp:
            store = QAStore(tmp, embedder, key=corpus_key)
            docs_per_s = round(store.upsert(pairs).docs_per_s, 1)
            runs = [("bm25", "fts", None)] if "fts" in modes and not rows else []
            runs += [(name, "vector", None)] if "vector" in modes else []
            runs += [(name, "hybrid", w) for w in weights] if "hybrid" in modes else []
            for model, mode, weight in runs:
                r, outcomes = _run(pairs, store, corpus_key, mode, None, questions,
                                   VECTOR_WEIGHT if weight is None else weight)
                rows.append({"model": model, "key": key, "mode": mode, "vector_weight": weight,
                             "success_at_5": r.success_at_5, "mrr_at_10": r.mrr_at_10, "queries": r.queries,
                             "docs_per_s": None if model == "bm25" else docs_per_s,
                             **({"per_query": outcomes} if per_query else {})})
    return rows


def cross_validate(pairs: pl.DataFrame, fixed: Mapping[str, object], train: Callable[[frozenset], object], *,
                   folds: Sequence[Collection[tuple[str, int]]], keys: Sequence[str] = GRID_KEYS,
                   modes: Sequence[str] = ("fts", "vector", "hybrid"), weights: Sequence[float] = (VECTOR_WEIGHT,),
                   name: str = "adapted") -> list[dict]:
    """`compare_models`' rows, every question of ``folds`` held out once: ``train(held)`` returns an embedder
    trained without the pairs of ``held``, which then scores those questions only; the ``fixed`` embedders (and
    bm25) score all of them. The trained model's rows pool its folds (means over every question, ``docs_per_s`` the
    folds' mean) and compare it, question by question, with the first fixed model at the same key, mode and weight:
    ``vs``, ``success_at_5_delta`` / ``mrr_at_10_delta`` (mean paired difference) and their ``…_se`` (its
    standard error). Every row carries ``folds``."""
    everyone = frozenset().union(*folds)
    rows = [r for key in keys for r in compare_models(pairs, fixed, key=key, modes=modes, questions=everyone,
                                                      weights=weights, per_query=True)]
    parts: dict[tuple, list[dict]] = {}
    for held in folds:
        model = train(frozenset(held))
        for key in keys:
            for r in compare_models(pairs, {name: model}, key=key, modes=[m for m in modes if m != "fts"],
                                    questions=held, weights=weights, per_query=True):
                parts.setdefault((key, r["mode"], r["vector_weight"]), []).append(r)
    anchor = next(iter(fixed), None)
    for (key, mode, weight), group in parts.items():
        ours = {q: v for p in group for q, v in p["per_query"].items()}
        row = {**group[0], "queries": len(ours),
               "docs_per_s": round(statistics.fmean(p["docs_per_s"] for p in group), 1),
               **{field: round(statistics.fmean(v[i] for v in ours.values()), 4)
                  for i, field in enumerate(("success_at_5", "mrr_at_10"))}}
        ref = next((r for r in rows if (r["model"], r["key"], r["mode"], r["vector_weight"]) ==
                    (anchor, key, mode, weight)), None)
        if ref is not None:
            row["vs"] = anchor
            for i, field in enumerate(("success_at_5", "mrr_at_10")):
                row[f"{field}_delta"], row[f"{field}_delta_se"] = _paired(
                    [ours[q][i] - theirs[i] for q, theirs in ref["per_query"].items()])
        rows.append(row)
    return [{**{k: v for k, v in r.items() if k != "per_query"}, "folds": len(folds)} for r in rows]


def _paired(differences: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of paired per-question differences (no error for fewer than 2)."""
    se = statistics.stdev(differences) / len(differences) ** 0.5 if len(differences) > 1 else 0.0
    return round(statistics.fmean(differences), 4), round(se, 4)
