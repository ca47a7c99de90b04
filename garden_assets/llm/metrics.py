"""Answer scores against a reference: ROUGE-L F-measure (rouge-score, stemmed) and SQuAD-style token F1.

Token F1 is the SQuAD v1.1 evaluation script's ``f1_score`` (lower-case, strip punctuation and articles, bag-of-
token overlap). It is a dozen lines and not on PyPI as a library of its own (``evaluate`` fetches its metric
scripts from the Hub, which this machine cannot reach), so it is written here.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure in [0, 1]; 0 when either side is empty."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 in [0, 1]."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# -- answer hygiene: loops and grounding ----------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
MIN_SENTENCE_WORDS = 4  # shorter fragments ("Yes.", "Hope this helps!") carry no claim to check
# Calibrated with benchmarks/faithfulness_calibration.py on the bundled sample (docs/evaluation.md): the 95th
# percentile of the score of *related* sentences (the question's own reference answers: on-topic and true, but not
# what the retrieved sources say) — 5 % of those pass, ≈ 0 % of unrelated ones, ≥ 98 % of copied ones.
SUPPORT_THRESHOLD = 0.75


def repeated_ngram_share(text: str, n: int = 4) -> float:
    """Share of the word n-grams of ``text`` that repeat an earlier one (0: no loop; → 1: one phrase over and over)."""
    words = normalize_answer(text).split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def sentences(text: str, min_words: int = MIN_SENTENCE_WORDS) -> list[str]:
    """The sentences of ``text`` with at least ``min_words`` words.

    A regex on end punctuation and line breaks rather than a trained splitter (nltk's punkt needs a data download
    this machine cannot make); answers here are plain text, where it splits the same places."""
    parts = (s.strip() for s in _SENTENCE_END.split(text or ""))
    return [s for s in parts if len(s.split()) >= min_words]


def support_scores(answer: str, passages: list[str], embed) -> list[float]:
    """For each sentence of ``answer``, its best cosine similarity to a sentence (or the whole) of a passage.

    ``embed(texts) -> (n, d)`` unit vectors (the index's embedder)."""
    claims = sentences(answer)
    evidence = [s for p in passages for s in (sentences(p, 1) + [p.strip()]) if s]
    if not claims or not evidence:
        return []
    import numpy as np

    vectors = embed(claims + evidence)
    sims = np.asarray(vectors[: len(claims)]) @ np.asarray(vectors[len(claims):]).T
    return [float(x) for x in sims.max(axis=1)]


class MemoizedEmbed:
    """``embed`` computing each distinct text once. The evaluation judges the same passages for every RAG variant
    and the grounded guard's sentences again when it scores them; a pasted answer is its own passage. Written here
    because functools caches whole calls, not the texts inside a batch."""

    def __init__(self, embed) -> None:
        self._embed, self._vectors = embed, {}

    def __call__(self, texts):
        import numpy as np

        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            self._vectors.update(zip(missing, self._embed(missing)))
        return np.stack([self._vectors[t] for t in texts]) if texts else self._embed([])


def faithfulness(answer: str, passages: list[str], embed, threshold: float = SUPPORT_THRESHOLD) -> float | None:
    """Share of the answer's sentences supported by the cited passages (best cosine ≥ ``threshold``).

    None when there is nothing to judge (no passages, or no sentence of ≥ MIN_SENTENCE_WORDS words)."""
    if not passages:
        return None
    scores = support_scores(answer, passages, embed)
    if not scores:
        return None
    return sum(s >= threshold for s in scores) / len(scores)
