"""Consensus reranking of retrieved answers: the one the other candidates agree with most goes first.

Minimum Bayes risk selection (as in MBR decoding, with token F1 as the agreement) over the search's candidates,
written here because it is a few lines over ``metrics.token_f1``. Why: among the top hits the search order is
nearly flat as a predictor of the better answer (docs/evaluation.md, passage analysis), while an answer that
several independent answers restate is more often the one a reference restates too.
"""

from __future__ import annotations

from collections.abc import Sequence

from .metrics import token_f1


def consensus_order(texts: Sequence[str]) -> list[int]:
    """Indices of ``texts``, highest mean token F1 against the other texts first; ties (and fewer than three
    texts, where agreement is symmetric) keep the given order."""
    n = len(texts)
    if n < 3:
        return list(range(n))
    f1 = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            f1[i][j] = f1[j][i] = token_f1(texts[i], texts[j])
    agreement = [sum(row) / (n - 1) for row in f1]
    return sorted(range(n), key=lambda i: -agreement[i])
