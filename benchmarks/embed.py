"""Embedding throughput: our Embedder vs plain ``SentenceTransformer.encode`` on the same texts, same run.

    GARDEN_SHARED_DATA=/work/shared/data/stackexchange .venv/bin/python benchmarks/embed.py [--rounds 3]

Texts: every answer of the shared dumps (the ``answer`` key). Runs are interleaved round by round and the median
is reported, so a busy machine hurts all contenders alike. Quality check: Success@5 of brute-force cosine search
with the README protocol, per contender (goal: ≥ 1.5× docs/s with Success@5 within 0.005 of plain encode).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from garden_assets.retrieval import Embedder, packaged_minilm_path, queries_from_pairs, success_at_k  # noqa: E402
from garden_assets.stackexchange.qa import build_pairs  # noqa: E402
from garden_assets.stackexchange.reader import read_posts  # noqa: E402
from garden_assets.stackexchange.text import clean_posts  # noqa: E402


def success5(pairs, docs: np.ndarray, queries: np.ndarray) -> float:
    _, relevant = queries_from_pairs(pairs)
    ids = pairs["answer_id"].to_numpy()
    top = np.argsort(-(queries @ docs.T), axis=1)[:, :5]
    return success_at_k([ids[row].tolist() for row in top], relevant, 5)


def main() -> None:
    from sentence_transformers import SentenceTransformer

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("GARDEN_SHARED_DATA"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not args.data:
        sys.exit("set GARDEN_SHARED_DATA or pass --data")
    dumps = [build_pairs(clean_posts(read_posts(p))[0])[0] for p in sorted(Path(args.data).glob("*/Posts.xml"))]
    texts = [t for pairs in dumps for t in pairs["response"].to_list()]

    plain = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
    ours = Embedder(device="cpu")
    ours_fp32 = Embedder(device="cpu", precision="fp32")
    contenders = {
        "plain encode (fp32, batch 32)": lambda x: plain.encode(x, batch_size=32, normalize_embeddings=True),
        f"Embedder fp32 (token-sorted, batch {ours_fp32.batch_size})": ours_fp32.embed,
        f"Embedder auto → {ours.precision} (batch {ours.batch_size})": ours.embed,
    }
    names = list(contenders)
    query_fn = {
        names[0]: lambda x: plain.encode(x, normalize_embeddings=True),
        names[1]: lambda x: np.stack([ours_fp32.embed_query(q) for q in x]),
        names[2]: lambda x: np.stack([ours.embed_query(q) for q in x]),
    }
    for fn in contenders.values():
        fn(texts[:32])  # warm up
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    vectors = {}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            vectors[name] = fn(texts)
            rates[name].append(len(texts) / (time.perf_counter() - start))
    print(f"{len(texts)} answers from {len(dumps)} dumps, {args.rounds} interleaved rounds, torch threads "
          f"{__import__('torch').get_num_threads()}\n")
    print("| contender | docs/s (median) | × plain | Success@5 per dump | Δ vs plain |")
    print("|---|---|---|---|---|")
    base_rate = statistics.median(rates["plain encode (fp32, batch 32)"])
    base_s5 = None
    for name in contenders:
        s5, off = [], 0
        for pairs in dumps:
            docs = vectors[name][off: off + pairs.height]
            off += pairs.height
            queries, _ = queries_from_pairs(pairs)
            s5.append(success5(pairs, docs, np.asarray(query_fn[name](queries))))
        base_s5 = base_s5 or s5
        rate = statistics.median(rates[name])
        print(f"| {name} | {rate:.1f} | {rate / base_rate:.2f} | {' / '.join(f'{x:.3f}' for x in s5)} |"
              f" {' / '.join(f'{a - b:+.3f}' for a, b in zip(s5, base_s5))} |")


if __name__ == "__main__":
    main()
