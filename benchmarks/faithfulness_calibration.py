"""Calibrate `metrics.SUPPORT_THRESHOLD`: how the faithfulness score separates supported from unsupported sentences.

For held-out questions of a home built by `make run` (or the benchmark), with the evaluation's retrieval:
- sources: the question's top-k retrieved answers (its own excluded, as in evaluation);
- unsupported: sentences of answers to *other* questions (random, same site) — a model that writes on-topic text
  its sources do not say;
- related: sentences of the question's own reference answers (true for the question, but not what the sources say);
- copied: sentences of the sources themselves (1.0 by construction).
Prints the score percentiles of each set and the share judged supported at candidate thresholds. The threshold is
the 95th percentile of the *related* set — the hardest negatives: on-topic, true, but not what the sources say —
so 5 % of those and (on the bundled sample) none of the unrelated ones pass.

    python benchmarks/faithfulness_calibration.py                 # GARDEN_HOME (default .garden)
    python benchmarks/faithfulness_calibration.py --home /tmp/coffee/home --questions 60
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main() -> int:
    from garden_assets.llm.evaluation import load_test_questions
    from garden_assets.llm.metrics import SUPPORT_THRESHOLD, sentences, support_scores
    from garden_assets.llm.rag import DEFAULT_RETRIEVAL, retrieve
    from garden_assets.retrieval.store import open_store
    from garden_assets.settings import Layout, garden_home

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    home = args.home or garden_home()
    layout = Layout(Path(home))
    store = open_store(str(layout.lancedb), key=DEFAULT_RETRIEVAL.key)
    questions = load_test_questions(layout.dataset / "test.jsonl", limit=args.questions)
    others = [s for a in store.open().to_arrow()["response"].to_pylist() for s in sentences(a)]
    rng = random.Random(args.seed)
    embed = store.embedder.embed
    scores: dict[str, list[float]] = {"copied": [], "related": [], "unsupported": []}
    for q in questions:
        hits = retrieve(store, q.instruction, k=DEFAULT_RETRIEVAL.k, mode=DEFAULT_RETRIEVAL.mode,
                        exclude=[q.question_id])
        passages = [h.text for h in hits]
        if not passages:
            continue
        own = {s for h in hits for s in sentences(h.text)}
        scores["copied"] += support_scores(" ".join(sentences(passages[0])[:3]), passages, embed)
        scores["related"] += support_scores(" ".join(sentences(q.references[0])[:3]), passages, embed)
        unrelated = [s for s in rng.sample(others, min(5, len(others))) if s not in own]
        scores["unsupported"] += support_scores(" ".join(unrelated), passages, embed)
    print(f"{len(questions)} held-out questions from {home}; current SUPPORT_THRESHOLD {SUPPORT_THRESHOLD}")
    for name, values in scores.items():
        v = np.asarray(values)
        print(f"{name:<12} n={v.size:<4} p5 {np.percentile(v, 5):.3f}  p50 {np.percentile(v, 50):.3f}  "
              f"p95 {np.percentile(v, 95):.3f}")
    unsupported = np.asarray(scores["unsupported"])
    for t in (0.6, 0.65, 0.7, 0.75, 0.8, 0.85):
        supported = {name: float(np.mean(np.asarray(v) >= t)) for name, v in scores.items()}
        print(f"threshold {t:.2f}: judged supported — " + ", ".join(f"{k} {v:.2f}" for k, v in supported.items()))
    print(f"p95 of related (the threshold rule): {np.percentile(np.asarray(scores['related']), 95):.3f}; "
          f"p95 of unsupported: {np.percentile(unsupported, 95):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
