"""Calibrate `rag.MIN_SIMILARITY`: how often the relevance floor withholds an answer it should give, and how often
it withholds one it should.

For each home built by `make run` (or `benchmarks/answers.py --keep`), with the RAG answers' own search
(`rag.rag_passages`: hybrid, the consensus pool; a held-out question's own answers excluded, as in evaluation):
- held-out: the home's test questions, which its index answers — withholding one is a false decline;
- off-topic: the questions of ``--probes`` (written for this, outside every corpus used here) — all should be
  withheld;
- other homes: each other home's held-out questions asked of this index — mostly other domains, but a corpus may
  legitimately overlap (coffee plants in a gardening corpus), so read these by eye.
Prints, per set, the best hit's similarity (percentiles) and the share withheld at each ``--floors`` value.

    python benchmarks/relevance_floor.py .garden /tmp/coffee/home /tmp/dsm/home [--floors 0.2 0.25 0.3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

PROBES = Path(__file__).with_name("off_topic_questions.txt")


def best_similarity(store, question: str, exclude=()) -> float:
    """The highest similarity among the hits a RAG answer chooses from (no floor): below the floor, it is withheld."""
    from garden_assets.llm.rag import DEFAULT_RETRIEVAL, rag_passages

    r = DEFAULT_RETRIEVAL
    pool = max(r.k, r.consensus_pool or 0)
    hits = rag_passages(store, question, k=pool, mode=r.mode, passage_tokens=None, consensus_pool=None,
                        exclude=exclude, min_similarity=None)
    return max((h.similarity for h in hits if h.similarity is not None), default=-1.0)


def main() -> int:
    from garden_assets.llm.evaluation import load_test_questions
    from garden_assets.llm.rag import DEFAULT_RETRIEVAL, MIN_SIMILARITY
    from garden_assets.retrieval.store import open_store
    from garden_assets.settings import Layout

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("homes", type=Path, nargs="+", help="GARDEN_HOME folders (index + finetune test split)")
    parser.add_argument("--probes", type=Path, default=PROBES, help="off-topic questions, one per line (# comments)")
    parser.add_argument("--floors", type=float, nargs="+", default=[0.2, MIN_SIMILARITY, 0.3])
    parser.add_argument("--json", action="store_true", help="one JSON line per (home, set)")
    args = parser.parse_args()
    probes = [line.strip() for line in args.probes.read_text().splitlines() if line.strip() and not line.startswith("#")]
    held_out = {home: load_test_questions(Layout(home).dataset / "test.jsonl") for home in args.homes}
    for home in args.homes:
        store = open_store(str(Layout(home).lancedb), key=DEFAULT_RETRIEVAL.key)
        sets = {"held-out": [best_similarity(store, q.instruction, [(q.site, q.question_id) if q.site else q.question_id])
                             for q in held_out[home]],
                "off-topic": [best_similarity(store, q) for q in probes]}
        for other in args.homes:
            if other != home:
                sets[f"from {other}"] = [best_similarity(store, q.instruction) for q in held_out[other]]
        for name, sims in sets.items():
            sims = np.array(sims)
            withheld = {f: round(float((sims < f).mean()), 3) for f in args.floors}
            pct = dict(zip(("p5", "p50", "p95"), np.percentile(sims, [5, 50, 95]).round(3).tolist()))
            if args.json:
                print(json.dumps({"home": str(home), "set": name, "questions": len(sims), **pct,
                                  "withheld": {str(f): w for f, w in withheld.items()}}), flush=True)
            else:
                shares = "  ".join(f"<{f}: {w:>5.1%}" for f, w in withheld.items())
                print(f"{str(home):<28} {name:<34} n={len(sims):<4} best sim p5/p50/p95 "
                      f"{pct['p5']:.2f}/{pct['p50']:.2f}/{pct['p95']:.2f}  withheld {shares}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
