"""Search modes and hits: what a query against the Q/A index returns.

``hybrid`` (the default) fuses the two rankings by a weighted sum of min–max normalised scores over a candidate
pool: the formula of LanceDB's ``LinearCombinationReranker`` with its default weight 0.7 on the vector side (not
tuned on our dumps). Reciprocal-rank fusion (LanceDB's default reranker) throws the score gaps away and loses to
dense-only retrieval on both shared dumps; the weighted sum keeps them and beats both legs (docs/retrieval.md).

``fuse`` re-implements that reranker instead of calling LanceDB's hybrid query because, in lancedb 0.40, the hybrid
query (a) logs a scanner deprecation warning per query that Python cannot switch off, and (b) turns every
candidate row into a Python dict; running the two legs ourselves and fusing in numpy is ≈ 1.5× faster at 100k rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa

Mode = Literal["vector", "fts", "hybrid"]
MODES: tuple[str, ...] = ("vector", "fts", "hybrid")
DEFAULT_MODE = "hybrid"
# passages per RAG answer (RetrievalSetting.k, garden ask --k): the consensus top alone — the tuned model quotes one
# passage, and with two it picks at chance (docs/evaluation.md, consensus reranking; RAFT training prompts hold 2)
DEFAULT_K = 1
SEARCH_K = 5  # answers `garden search` lists (and QAStore.search returns) unless told otherwise
VECTOR_WEIGHT = 0.7  # LanceDB LinearCombinationReranker default
CANDIDATES = 50  # rows each leg hands to the fusion (min–max over top-5 alone is too jumpy)

KEY = "uid"  # the index's row key: "site/answer_id" (a post's identity is (site, id))
ID_SCHEME = "site/answer_id"  # in table metadata: a table keyed otherwise (older homes) is rebuilt
HIT_COLUMNS = [KEY, "site", "answer_id", "question_id", "instruction", "response", "source_url", "is_accepted", "answer_score"]


@dataclass(frozen=True)
class Hit:
    """One retrieved answer with its source: ``score`` is higher-is-better within one result list; ``similarity``
    is the cosine similarity of the query's and the row's embeddings, comparable across queries (None in ``fts``
    mode, where nothing is embedded)."""

    answer_id: int
    question_id: int
    title: str
    text: str
    source_url: str
    is_accepted: bool
    answer_score: int
    score: float
    site: str = ""
    similarity: float | None = None


def uid_expr() -> pl.Expr:
    """The ``uid`` column from ``site`` and ``answer_id``."""
    return pl.format("{}/{}", pl.col("site"), pl.col("answer_id")).alias(KEY)


def _minmax(x: np.ndarray) -> np.ndarray:
    if x.size == 0:
        return x
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else x - lo


def fuse(vector: pa.Table, fts: pa.Table, weight: float = VECTOR_WEIGHT) -> pa.Table:
    """Weighted sum of min–max normalised leg scores (a row missing from a leg scores 0 there), best first.

    ``vector`` has ``_distance`` (cosine), ``fts`` has ``_score`` (BM25); both have ``uid``. The result has
    the union of rows with ``_relevance_score``.
    """
    v_ids = vector[KEY].to_numpy(zero_copy_only=False)
    f_ids = fts[KEY].to_numpy(zero_copy_only=False)
    v_score = weight * _minmax(1.0 - vector["_distance"].to_numpy().astype(np.float64))
    f_score = (1.0 - weight) * _minmax(fts["_score"].to_numpy().astype(np.float64))
    total = dict(zip(v_ids.tolist(), v_score.tolist()))
    for i, s in zip(f_ids.tolist(), f_score.tolist()):
        total[i] = total.get(i, 0.0) + s
    only_fts = ~np.isin(f_ids, v_ids)
    rows = pa.concat_tables([vector.drop_columns(["_distance"]),
                             fts.filter(pa.array(only_fts)).drop_columns(["_score"])])
    scores = np.array([total[i] for i in rows[KEY].to_pylist()])
    order = np.argsort(-scores, kind="stable")
    return rows.take(pa.array(order)).append_column("_relevance_score", pa.array(scores[order], pa.float32()))


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")


def hits_from_arrow(table: pa.Table, mode: str, k: int) -> list[Hit]:
    """Rows of a LanceDB result (best first) → hits; vector distances become similarities (1 − cosine distance);
    a hybrid result carries them in ``_similarity``."""
    rows = table.slice(0, k).to_pylist()
    if mode == "vector":
        scores = [1.0 - r["_distance"] for r in rows]
    elif mode == "fts":
        scores = [r["_score"] for r in rows]
    else:
        scores = [r["_relevance_score"] for r in rows]
    similarities = scores if mode == "vector" else [r.get("_similarity") for r in rows]
    return [
        Hit(answer_id=r["answer_id"], question_id=r["question_id"], title=r["instruction"], text=r["response"],
            source_url=r["source_url"], is_accepted=r["is_accepted"], answer_score=r["answer_score"], score=float(s),
            site=r.get("site") or "", similarity=None if sim is None else round(float(sim), 4))
        for r, s, sim in zip(rows, scores, similarities)
    ]


def cosine(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``vectors`` to ``query``."""
    vectors, query = np.asarray(vectors, np.float64), np.asarray(query, np.float64).ravel()
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)
    return np.divide(vectors @ query, norms, out=np.zeros(len(vectors)), where=norms > 0)
