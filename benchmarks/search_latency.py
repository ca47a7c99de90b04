"""Search latency per mode on a synthetic index (default 100k rows): p50/p95 in ms, k=5.

    .venv/bin/python benchmarks/search_latency.py [--rows 100000] [--queries 200] [--dir /tmp/garden_latency]

Rows have Zipf-distributed synthetic words (so posting lists look like text) and clustered random unit vectors
(dimension 384, like MiniLM); building them needs no model. Query vectors are precomputed, so the figures are
the index's cost; one line adds the packaged MiniLM's query-embedding time for the end-to-end figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from garden_assets.retrieval.search import MODES  # noqa: E402
from garden_assets.retrieval.store import QAStore  # noqa: E402

DIM = 384


class RandomEmbedder:
    """Clustered random unit vectors: an index-only stand-in for a model (no semantics, no model cost)."""

    model_name = "synthetic-random"
    index_id = "synthetic-random"
    dimension = DIM

    def __init__(self, seed: int = 0, clusters: int = 1000) -> None:
        self.rng = np.random.default_rng(seed)
        self.centers = self.rng.standard_normal((clusters, DIM)).astype(np.float32)

    def embed(self, texts, *, progress=None) -> np.ndarray:
        c = self.centers[self.rng.integers(0, len(self.centers), len(texts))]
        v = c + 0.5 * self.rng.standard_normal(c.shape).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def synthetic_pairs(n: int, seed: int = 0, vocab: int = 20_000) -> tuple[pl.DataFrame, list[str]]:
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(vocab)])
    p = 1.0 / np.arange(1, vocab + 1) ** 1.05
    p /= p.sum()
    lens = rng.integers(30, 150, n)
    flat = words[rng.choice(vocab, size=int(lens.sum()), p=p)]
    cuts = np.cumsum(lens)[:-1]
    texts = [" ".join(chunk) for chunk in np.split(flat, cuts)]
    queries = [" ".join(words[rng.choice(vocab, size=8, p=p)]) for _ in range(1000)]
    ids = np.arange(1, n + 1)
    df = pl.DataFrame({
        "question_id": ids // 2, "answer_id": ids, "instruction": [t[:60] for t in texts], "context": [""] * n,
        "response": texts, "category": ["closed_qa"] * n, "is_accepted": ids % 3 == 0,
        "question_score": np.ones(n, dtype=np.int64), "answer_score": np.ones(n, dtype=np.int64),
        "tags": [["t"]] * n, "source_url": [f"https://example.invalid/a/{i}" for i in ids],
        "content_hash": [str(i) for i in ids],
    })
    return df, queries


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/garden_latency")
    ap.add_argument("--ann-min-rows", type=int, default=None, help="default: the store's own threshold")
    args = ap.parse_args()

    shutil.rmtree(args.dir, ignore_errors=True)
    pairs, queries = synthetic_pairs(args.rows)
    emb = RandomEmbedder()
    kw = {} if args.ann_min_rows is None else {"ann_min_rows": args.ann_min_rows}
    store = QAStore(args.dir, emb, key="answer", **kw)
    t = time.perf_counter()
    store.upsert(pairs)
    built = time.perf_counter() - t
    idx = [ix.index_type for ix in store.open().list_indices()]
    print(f"rows {args.rows}: built in {built:.1f} s (indexes: {', '.join(idx)})")

    qs = queries[: args.queries]
    qvecs = [emb.embed_query(q) for q in qs]
    res = {}
    for mode in MODES:
        for q, v in zip(qs[:10], qvecs[:10]):  # warm caches
            store.search(q, k=args.k, mode=mode, vector=v)
        lat = []
        for q, v in zip(qs, qvecs):
            s = time.perf_counter()
            store.search(q, k=args.k, mode=mode, vector=v)
            lat.append((time.perf_counter() - s) * 1e3)
        res[mode] = lat
        print(f"{mode:7s} p50 {pct(lat, 50):6.1f} ms   p95 {pct(lat, 95):6.1f} ms")
    # recall of the vector leg against exact brute-force cosine (the ANN index is approximate)
    data = store.open().search().select(["answer_id", "vector"]).limit(None).to_arrow()
    mat = np.stack(data["vector"].to_numpy(zero_copy_only=False))
    all_ids = data["answer_id"].to_numpy()
    recall = []
    for q, v in zip(qs[:100], qvecs[:100]):
        exact = set(all_ids[np.argsort(-(mat @ v))[: args.k]].tolist())
        got = {h.answer_id for h in store.search(q, k=args.k, mode="vector", vector=v)}
        recall.append(len(exact & got) / args.k)
    print(f"vector recall@{args.k} vs exact search: {np.mean(recall):.3f}")
    goal = 20.0
    print(f"hybrid p50 / goal ({goal:.0f} ms): {pct(res['hybrid'], 50) / goal:.2f}")
    print(f"hybrid p50 / vector p50: {pct(res['hybrid'], 50) / pct(res['vector'], 50):.2f}")

    from garden_assets.retrieval.embedder import Embedder

    model = Embedder()
    model.embed_query("warm up")
    lat = []
    for q in qs[:100]:
        s = time.perf_counter()
        model.embed_query(q)
        lat.append((time.perf_counter() - s) * 1e3)
    print(f"query embedding ({model.model_name}, {model.precision}): p50 {pct(lat, 50):.1f} ms, "
          f"p95 {pct(lat, 95):.1f} ms"
          f" → end-to-end hybrid p50 ≈ {pct(res['hybrid'], 50) + pct(lat, 50):.1f} ms")


if __name__ == "__main__":
    main()
