"""Extractive training targets: the leads of a prompt's passages that best reproduce the question's own answer.

A held-out question never finds its own answer in the index, so what a grounded model can write is a selection of
what the *retrieved* passages say. The target that teaches it is the greedy oracle of extractive summarisation
(Nallapati et al. 2017, SummaRuNNer) — add the sentence that raises token F1 against the reference answer most,
until none does or the token budget is spent — with one restriction: a passage's next sentence is the only one of
it that can be added, so the target is each chosen passage's leading sentences, in passage order. A 270M model
copies contiguous runs within a short fine-tune; free sentence picks it did not learn. `DatasetOptions.rag_target`
"extract" uses it; measured, it ties the own-answer target and ends less often (docs/evaluation.md, E13–E15).
A dozen lines over `metrics.token_f1`; no library takes a token budget in the model's tokenizer, so it is here.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .metrics import sentences, token_f1

# passages hold blank lines of their own; a blank line between the parts drawn from two passages keeps them apart
PASSAGE_JOIN = "\n\n"


def oracle_extract(passages: Sequence[str], reference: str, count_tokens: Callable[[str], int],
                   max_tokens: int | None = None) -> tuple[str, float]:
    """``(extract, its token F1 against reference)``: the passages' leads, each joined by spaces, the parts from two
    passages by a blank line; ``("", 0.0)`` when no passage's first sentence shares a token with the reference."""
    candidates = [(p, s, text) for p, passage in enumerate(passages)
                  for s, text in enumerate(sentences(passage, min_words=1))]
    sizes = {i: count_tokens(c[2]) for i, c in enumerate(candidates)}
    chosen: set[int] = set()
    best, used = 0.0, 0

    def render(picks) -> str:
        by_passage: dict[int, list[str]] = {}
        for i in sorted(picks):
            by_passage.setdefault(candidates[i][0], []).append(candidates[i][2])
        return PASSAGE_JOIN.join(" ".join(parts) for _, parts in sorted(by_passage.items()))

    while True:
        nexts = {}  # each passage's first sentence not chosen yet
        for i, (p, _, _) in enumerate(candidates):
            if i not in chosen:
                nexts.setdefault(p, i)
        gains = [(token_f1(render(chosen | {i}), reference), i) for i in nexts.values()
                 if max_tokens is None or used + sizes[i] <= max_tokens]
        score, pick = max(gains, default=(0.0, None))
        if pick is None or score <= best:
            return render(chosen), best
        chosen.add(pick)
        best, used = score, used + sizes[pick]
