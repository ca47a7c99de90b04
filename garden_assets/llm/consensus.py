"""Consensus reranking of retrieved answers: minimum Bayes risk selection over the search's candidates.

Each candidate's expected agreement with the answer under the search's own belief: ``w_i + Σ_j≠i w_j · F1(i, j)``,
with ``w`` the hits' relevance scores and token F1 as the agreement (as in MBR decoding, a candidate counts as fully
agreeing with itself). A hit the search is sure of keeps its place; among hits it scores alike, the one the others
restate goes first. Written here because it is a few lines over ``metrics.token_f1``. Why: among the top hits of a
real dump the search order is nearly flat as a predictor of the better answer (docs/evaluation.md, consensus
reranking), while an answer that several independent answers restate is more often the one a reference restates
too. The weights matter in a small index, where most hits are off topic: unweighted, short off-topic answers agree
with each other on a few common words and outvote the one relevant hit.
"""

from __future__ import annotations

from collections.abc import Sequence

from .metrics import token_f1


def consensus_scores(texts: Sequence[str], weights: Sequence[float] | None = None) -> list[float]:
    """Each text's expected agreement (``weights``: the hits' relevance scores, higher is better; negative ones
    count as 0; None or all 0: equal)."""
    n = len(texts)
    w = [max(float(x), 0.0) for x in weights] if weights is not None else [1.0] * n
    if not any(w):
        w = [1.0] * n
    expected = list(w)
    for i in range(n):
        for j in range(i + 1, n):
            f1 = token_f1(texts[i], texts[j])
            expected[i] += w[j] * f1
            expected[j] += w[i] * f1
    return expected


def consensus_order(texts: Sequence[str], weights: Sequence[float] | None = None) -> list[int]:
    """Indices of ``texts`` by expected agreement (`consensus_scores`), highest first. Ties keep the given order."""
    expected = consensus_scores(texts, weights)
    return sorted(range(len(texts)), key=lambda i: -expected[i])
