"""Which of the search's top hits to show: choosers measured offline on a home built by `answers.py --keep`.

For every held-out question of HOME's finetune_dataset (its own answers excluded, as the evaluation does), the
search's top `--pool` hits are scored by token F1 against the question's references; each chooser picks one hit
and the mean F1 of its picks is printed, with the oracle (the best hit) as the ceiling. Choosers: the search's
top hit (the `retrieved` anchor), consensus (`consensus.py`, the default), the most up-voted hit, the accepted
answer first, consensus with votes in the weights, and a pointwise ridge reranker learnt on the train split's
questions (their own answers as labels; held-out answers never retrieved) over the same features (scikit-learn's
Ridge: installed with sentence-transformers, which requires it).

    python benchmarks/answers.py DUMP --keep /tmp/home      # (or stop it once finetune_dataset exists)
    python benchmarks/rerankers.py /tmp/home/home
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path, help="a GARDEN_HOME holding qa_pairs, qa_index and finetune_dataset")
    parser.add_argument("--pool", type=int, default=6)
    args = parser.parse_args()
    os.environ["GARDEN_HOME"] = str(args.home.resolve())

    import numpy as np
    import polars as pl
    from sklearn.linear_model import Ridge

    from garden_assets.llm.consensus import consensus_order, consensus_scores
    from garden_assets.llm.evaluation import load_test_questions
    from garden_assets.llm.metrics import token_f1
    from garden_assets.llm.rag import retrieve
    from garden_assets.retrieval.store import open_store
    from garden_assets.settings import lance_storage_options, lance_uri

    dataset = args.home / "finetune" / "dataset"
    test = load_test_questions(dataset / "test.jsonl")
    valid = {int(json.loads(line)["question_id"]) for line in (dataset / "valid.jsonl").open() if line.strip()}
    held = {q.question_id for q in test} | valid
    pairs = pl.read_parquet(args.home / "storage" / "qa_pairs.parquet")
    train = (pairs.filter(~pl.col("question_id").is_in(sorted(held))).group_by("question_id", maintain_order=True)
             .agg(pl.col("instruction").first(), pl.col("response")))
    store = open_store(lance_uri(), key="question+answer", storage_options=lance_storage_options())

    def features(hits) -> np.ndarray:
        texts, w = [h.text for h in hits], [max(h.score, 0.0) for h in hits]
        expected = consensus_scores(texts, w)
        others = [(agreement - 1) / max(len(hits) - 1, 1) for agreement in consensus_scores(texts)]  # unweighted
        return np.array([[w[i] / (max(w) or 1), i, expected[i] / (max(expected) or 1), math.log1p(max(h.answer_score, 0)),
                          float(h.is_accepted), math.log1p(len(h.text.split())), others[i]] for i, h in enumerate(hits)])

    def scored(question: str, exclude, references):
        hits = retrieve(store, question, k=args.pool, mode="hybrid", exclude=exclude)
        return hits, np.array([max(token_f1(h.text, r) for r in references) for h in hits])

    xs, ys = [], []
    for row in train.iter_rows(named=True):
        hits, f1 = scored(row["instruction"], [row["question_id"], *held], row["response"])
        if len(hits):
            xs.append(features(hits))
            ys.append(f1 - f1.mean())  # centred per question: only the order within a question matters
    ridge = Ridge(alpha=1.0).fit(np.vstack(xs), np.concatenate(ys))

    choosers = {
        "search's top hit": lambda hits, x: 0,
        "consensus (default)": lambda hits, x: consensus_order([h.text for h in hits], [h.score for h in hits])[0],
        "most up-voted": lambda hits, x: max(range(len(hits)), key=lambda i: (hits[i].answer_score, -i)),
        "accepted first": lambda hits, x: next((i for i, h in enumerate(hits) if h.is_accepted), 0),
        "consensus, votes in the weights": lambda hits, x: consensus_order(
            [h.text for h in hits], [h.score * (1 + math.log1p(max(h.answer_score, 0))) for h in hits])[0],
        "learnt (ridge, train split)": lambda hits, x: int(np.argmax(ridge.predict(x))),
    }
    picks: dict[str, list[float]] = {name: [] for name in [*choosers, "oracle"]}
    for q in test:
        hits, f1 = scored(q.instruction, [(q.site, q.question_id) if q.site else q.question_id], q.references)
        if not len(hits):
            continue
        x = features(hits)
        for name, choose in choosers.items():
            picks[name].append(float(f1[choose(hits, x)]))
        picks["oracle"].append(float(f1.max()))
    base = np.array(picks["consensus (default)"])
    print(f"# {len(base)} held-out questions, top {args.pool}; ridge on {len(xs)} train questions, "
          f"coefficients {np.round(ridge.coef_, 3).tolist()}")
    for name, values in picks.items():
        d = np.array(values) - base
        print(f"{name:34s} token F1 {np.mean(values):.3f}   − consensus {d.mean():+.3f} ± {d.std(ddof=1) / math.sqrt(len(d)):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
