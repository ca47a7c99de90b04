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
