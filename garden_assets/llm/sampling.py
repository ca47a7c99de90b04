"""Next-token choice with transformers' meaning of every `GenerationSettings` knob, in numpy, for backends
that hand back raw logits (llama.cpp).

Hand-written rather than llama.cpp's sampler chain because that chain means different things: its repetition
penalty sees only the last 64 generated tokens (transformers': the whole sequence, prompt included), it has no
no-repeat-n-gram rule, and it applies top-k/top-p *before* the temperature. Here the order is transformers':
repetition penalty, no-repeat-n-gram, then (sampling only) temperature, top-k, top-p.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from .generate import GenerationSettings


class SequenceState:
    """One sequence's tokens (prompt + generated) and the state its logits rules need, kept incrementally."""

    def __init__(self, prompt: list[int], settings: GenerationSettings, rng: np.random.Generator) -> None:
        self.settings = settings
        self.rng = rng
        self.tokens: list[int] = []
        self._seen: set[int] = set()
        self._followers: dict[tuple[int, ...], set[int]] = defaultdict(set)  # (n-1)-gram → tokens seen after it
        for t in prompt:
            self.append(t)
        self.prompt_len = len(prompt)

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    def append(self, token: int) -> None:
        self.tokens.append(int(token))
        self._seen.add(int(token))
        n = self.settings.no_repeat_ngram_size
        if n and len(self.tokens) >= n:
            self._followers[tuple(self.tokens[-n:-1])].add(int(token))

    def choose(self, logits: np.ndarray) -> int:
        """The next token from this step's logits (a float32 row over the vocabulary; not modified)."""
        scores = self.scores(logits)
        if not self.settings.do_sample:
            return int(np.argmax(scores))
        return int(self.rng.choice(scores.size, p=_softmax(scores)))

    def scores(self, logits: np.ndarray) -> np.ndarray:
        """The logits after every rule of the settings (removed tokens at -inf), as transformers' logits
        processors and warpers would leave them."""
        s = self.settings
        scores = logits.astype(np.float32, copy=True)
        if s.repetition_penalty != 1.0:  # RepetitionPenaltyLogitsProcessor
            seen = np.fromiter(self._seen, dtype=np.int64)
            picked = scores[seen]
            scores[seen] = np.where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty)
        n = s.no_repeat_ngram_size
        if n and len(self.tokens) >= n - 1:  # NoRepeatNGramLogitsProcessor
            banned = self._followers.get(tuple(self.tokens[len(self.tokens) - n + 1:]), ())
            if banned:
                scores[list(banned)] = -np.inf
        if not s.do_sample:
            return scores
        scores /= s.temperature
        if 0 < s.top_k < scores.size:  # TopKLogitsWarper
            kth = np.partition(scores, -s.top_k)[-s.top_k]
            scores[scores < kth] = -np.inf
        if s.top_p < 1.0:  # TopPLogitsWarper: drop the low tail whose mass is ≤ 1 - top_p, keep ≥ 1 token
            order = np.argsort(scores, kind="stable")
            tail = np.cumsum(_softmax(scores)[order]) <= 1 - s.top_p
            tail[-1] = False
            scores[order[tail]] = -np.inf
        return scores


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max())
    return e / e.sum()
