"""Answer-retrieval quality and indexing speed per configuration on the shared Stack Exchange dumps.

    GARDEN_SHARED_DATA=/work/shared/data/stackexchange .venv/bin/python benchmarks/retrieval_quality.py

Protocol of the dumps' README: query = question title, corpus = every answer, relevant = that question's answers;
Success@5 / MRR@10. Every figure goes through the real path (QAStore on LanceDB: native BM25 index, cosine vector
search, the library's fusion). ``rrf`` is reciprocal-rank fusion (k = 60) of the same two top-50 legs, for
comparison. docs/s = rows embedded per second of the whole index build (embedding dominates).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from garden_assets.retrieval import Embedder, QAStore, mrr_at_k, queries_from_pairs, success_at_k  # noqa: E402
from garden_assets.retrieval.metrics import evaluate  # noqa: E402
from garden_assets.retrieval.store import LONG_TEXT_BY_KEY  # noqa: E402
from garden_assets.stackexchange.qa import build_pairs  # noqa: E402
from garden_assets.stackexchange.reader import read_posts  # noqa: E402
from garden_assets.stackexchange.text import clean_posts  # noqa: E402

# README figures (bm25s BM25, brute-force MiniLM) for the answer key: the default must beat both.
README = {"coffee": {"bm25": 0.741, "dense": 0.896}, "datascience-meta": {"bm25": 0.452, "dense": 0.711}}
CONFIGS = [  # (key, long_text, modes)
    ("answer", "truncate", ("fts", "vector", "rrf", "hybrid")),
    ("answer", "mean", ("vector", "rrf", "hybrid")),
    ("body+answer", "truncate", ("fts", "vector", "rrf", "hybrid")),
    ("body+answer", "mean", ("vector", "hybrid")),
]


def rrf_eval(pairs, store: QAStore, pool: int = 50, k: int = 60) -> tuple[float, float]:
    queries, relevant = queries_from_pairs(pairs)
    ranked = []
    for q in queries:
        score: dict[int, float] = {}
        for mode in ("vector", "fts"):
            for r, h in enumerate(store.search(q, k=pool, mode=mode)):
                score[h.answer_id] = score.get(h.answer_id, 0.0) + 1.0 / (k + r + 1)
        ranked.append(sorted(score, key=lambda a: -score[a]))
    return success_at_k(ranked, relevant, 5), mrr_at_k(ranked, relevant, 10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("GARDEN_SHARED_DATA"))
    ap.add_argument("--model", default=None, help="sentence-transformers name or path (default: packaged MiniLM)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--keys", default="answer,body+answer", help="comma-separated keys to measure")
    args = ap.parse_args()
    if not args.data:
        sys.exit("set GARDEN_SHARED_DATA or pass --data (folder with <site>/Posts.xml)")
    dumps = sorted(p.parent for p in Path(args.data).glob("*/Posts.xml"))
    embedders = {lt: Embedder(args.model, precision=args.precision, long_text=lt) for lt in ("truncate", "mean")}
    print(f"model {embedders['truncate'].model_name}, precision {embedders['truncate'].precision}\n")
    print("| dump | key | long text | mode | Success@5 | MRR@10 | index docs/s | query p50 ms |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for dump in dumps:
        pairs, _ = build_pairs(clean_posts(read_posts(dump / "Posts.xml"))[0])
        for key, long_text, modes in [c for c in CONFIGS if c[0] in args.keys.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                store = QAStore(tmp, embedders[long_text], key=key)
                dps = store.upsert(pairs).docs_per_s
                for mode in modes:
                    if mode == "rrf":
                        s5, mrr, ms = *rrf_eval(pairs, store), float("nan")
                    else:
                        r = evaluate(pairs, store, mode=mode)
                        s5, mrr, ms = r.success_at_5, r.mrr_at_10, r.query_ms_p50
                    results[(dump.name, key, long_text, mode)] = s5
                    default = " **default**" if (mode == "hybrid" and long_text == LONG_TEXT_BY_KEY[key]) else ""
                    ms_text = "–" if ms != ms else f"{ms:.1f}"  # NaN for rrf (two searches per query)
                    print(f"| {dump.name} | {key} | {long_text} | {mode}{default} | {s5:.3f} | {mrr:.3f} | {dps:.0f} |"
                          f" {ms_text} |", flush=True)
    print()
    for name, ref in README.items():
        got = results.get((name, "answer", LONG_TEXT_BY_KEY["answer"], "hybrid"))
        if got is not None:
            print(f"{name}: default answer-key Success@5 {got:.3f} vs README BM25 {ref['bm25']:.3f} "
                  f"(×{got / ref['bm25']:.2f}), MiniLM dense {ref['dense']:.3f} (+{got - ref['dense']:.3f}): "
                  f"{'beats both' if got > max(ref.values()) else 'DOES NOT beat both'}")


if __name__ == "__main__":
    main()
