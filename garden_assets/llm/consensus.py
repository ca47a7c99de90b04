"""Consensus reranking of retrieved answers: the one the other candidates (and the question) agree with most goes
first.

Minimum Bayes risk selection (as in MBR decoding, with token F1 as the agreement) over the search's candidates,
written here because it is a few lines over ``metrics.token_f1``. Why: among the top hits the search order is
nearly flat as a predictor of the better answer (docs/evaluation.md, consensus reranking), while an answer that
several independent answers restate is more often the one a reference restates too. The question votes as well: in
a small or mixed index the other hits may be about something else, and then only the question can tell which
answer is on topic (a test: the one citrus answer among unrelated ones stays first).
"""

from __future__ import annotations

from collections.abc import Sequence

from .metrics import token_f1


def consensus_order(texts: Sequence[str], question: str | None = None) -> list[int]:
    """Indices of ``texts``, highest mean token F1 against the other texts (and ``question``) first; ties, and a
    single text, keep the given order."""
    n = len(texts)
    voters = n - 1 + (question is not None)
    if n < 2 or voters < 2:
        return list(range(n))
    f1 = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            f1[i][j] = f1[j][i] = token_f1(texts[i], texts[j])
    asked = [token_f1(t, question) if question is not None else 0.0 for t in texts]
    agreement = [(sum(row) + a) / voters for row, a in zip(f1, asked)]
    return sorted(range(n), key=lambda i: -agreement[i])
