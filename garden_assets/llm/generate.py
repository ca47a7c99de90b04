"""Batched generation with every setting the talk tunes, stopping at ``### End``.

`Generator.generate` sorts prompts by length, left-pads them into batches (little padding, one forward per
step for the whole batch) and stops each row at ``### End`` or EOS; the whole batch stops when every row has.
Greedy answers are the ones `model.generate` gives one prompt at a time (benchmarks/generate.py checks it).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..compute import TRANSFORMERS
from .prompts import END_KEY, extract_response

MAX_NEW_TOKENS_LIMIT = 4096


@dataclass(frozen=True)
class GenerationSettings:
    """The generation knobs of the talk's "Generation Tuning" table (transformers' names and meanings).

    The one definition of a generation setting: ``garden ask``'s flags and the Dagster run config
    (``evaluation_answers``' ``generation`` and ``generation_sweep``) are generated from these fields
    (`settings.typed_fields`: type, default, and the ``help`` metadata)."""

    max_new_tokens: int = field(default=224, metadata={
        "help": "room for a whole capped passage (rag.py passage_tokens) and the end marker"})
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = field(default=0, metadata={
        "help": "> 0: no token n-gram of this size occurs twice in an answer"})
    num_return_sequences: int = 1
    seed: int = field(default=0, metadata={"help": "the sampling seed (with do_sample)"})
    stop_loop_tokens: int = field(default=32, metadata={
        "help": "stop an answer once its newest N tokens repeat an earlier span of it verbatim, and cut the "
                "repeat (0: never); such an answer has not ended by itself"})

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"generation setting {what}")

        need(isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT,
             f"max_new_tokens must be 1..{MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens!r}")
        need(isinstance(self.num_beams, int) and 1 <= self.num_beams <= 16, f"num_beams must be 1..16, got {self.num_beams!r}")
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature!r}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}")
        need(isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an int ≥ 0, got {self.top_k!r}")
        need(0 < self.repetition_penalty <= 10, f"repetition_penalty must be in (0, 10], got {self.repetition_penalty!r}")
        need(isinstance(self.no_repeat_ngram_size, int) and 0 <= self.no_repeat_ngram_size <= 64,
             f"no_repeat_ngram_size must be 0..64, got {self.no_repeat_ngram_size!r}")
        need(isinstance(self.stop_loop_tokens, int) and (self.stop_loop_tokens == 0 or self.stop_loop_tokens >= 4),
             f"stop_loop_tokens must be 0 (never) or ≥ 4, got {self.stop_loop_tokens!r}")
        need(isinstance(self.num_return_sequences, int) and self.num_return_sequences >= 1,
             f"num_return_sequences must be ≥ 1, got {self.num_return_sequences!r}")
        need(self.do_sample or self.num_return_sequences <= self.num_beams,
             f"num_return_sequences ({self.num_return_sequences}) > num_beams ({self.num_beams}) needs do_sample=true")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None, **overrides: Any) -> "GenerationSettings":
        """From a run-config mapping; unknown keys are an error (a typo must not silently do nothing)."""
        values = {**(data or {}), **{k: v for k, v in overrides.items() if v is not None}}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown generation settings {unknown}; known: {sorted(names)}")
        return cls(**values)

    def label(self) -> str:
        """The settings that differ from the defaults, e.g. ``num_beams=4, repetition_penalty=1.2`` (or ``greedy``)."""
        default = GenerationSettings()
        diff = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                if f.name != "seed" and getattr(self, f.name) != getattr(default, f.name)]
        return ", ".join(diff) or "greedy"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_generation_config(self, tokenizer, eos_token_id: int | list[int] | None = None):
        """A transformers ``GenerationConfig`` (sampling knobs only when sampling, so transformers does not warn).

        ``eos_token_id``: the model's own end tokens (its generation_config's; Gemma has two), else the tokenizer's.
        """
        from transformers import GenerationConfig

        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens, num_beams=self.num_beams, do_sample=self.do_sample,
            repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size,
            num_return_sequences=self.num_return_sequences,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=eos_token_id or tokenizer.eos_token_id,
        )
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:  # greedy/beam: neutral values, so the model's own sampling defaults do not leak in
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return GenerationConfig(**kwargs)


@dataclass
class GeneratedText:
    """One generated answer. ``latency_s`` is the wall time of the batch it was generated in."""

    text: str  # the answer: after ``### Response:``, cut at ``### End``
    prompt_tokens: int
    new_tokens: int
    latency_s: float
    batch_tokens_per_s: float  # new tokens of the whole batch / batch wall time
    ended: bool = True  # stopped by itself (``### End`` or an end token) before max_new_tokens
    looped: bool = False  # stopped because it began repeating itself (`LoopGuard`), the repeat cut


class LoopGuard:
    """Watches an answer's tokens one at a time: ``looped`` once its newest ``n`` tokens repeat an earlier span of
    the answer verbatim — a greedy decoder that does so has entered a cycle it will not leave (the untuned base
    model's answers are one sentence repeated to ``max_new_tokens``). Stopping there saves the rest of the budget;
    ``kept`` is the answer without the repeat. Hand-written: transformers has no such stopping criterion
    (``no_repeat_ngram_size`` changes the text instead of stopping it), llama.cpp's sampler chain neither."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tokens: list[int] = []
        self._spans: set[tuple[int, ...]] = set()
        self.looped = False

    def push(self, token: int) -> bool:
        """Add the next token; True once looped (and from then on)."""
        self.tokens.append(int(token))
        if self.n and not self.looped and len(self.tokens) >= self.n:
            span = tuple(self.tokens[-self.n:])
            self.looped = span in self._spans
            self._spans.add(span)
        return self.looped

    @property
    def kept(self) -> int:
        """Tokens of the answer to keep: all of them, or (looped) those before the repeated span."""
        return len(self.tokens) - self.n if self.looped else len(self.tokens)

    @classmethod
    def cut(cls, tokens: Sequence[int], n: int) -> tuple[int, bool]:
        """(tokens to keep, looped) for a finished answer, as if it had been watched token by token."""
        guard = cls(n)
        for t in tokens:
            if guard.push(t):
                break
        return (guard.kept, True) if guard.looped else (len(tokens), False)


def _stop_at_end_marker(tokenizer, prompt_len: int, marker: str = END_KEY):
    """A stopping criterion: a row is done once its generated tail decodes to text containing ``marker``.

    Hand-written instead of ``generate(stop_strings=...)`` because transformers precomputes stop-string tables
    over the whole vocabulary (262 k tokens for Gemma: ≈ 5 s per process on 2 cores); decoding the last few
    tokens of each row is microseconds.
    """
    import torch
    from transformers import StoppingCriteria

    window = len(marker) + 2  # every token is at least one character

    class StopAtMarker(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            tail = input_ids[:, max(prompt_len, input_ids.shape[1] - window):]
            texts = tokenizer.batch_decode(tail, skip_special_tokens=True)
            return torch.tensor([marker in t for t in texts], dtype=torch.bool, device=input_ids.device)

    return StopAtMarker()


def _stop_at_loop(prompt_len: int, n: int):
    """A stopping criterion: a row is done once its newest ``n`` generated tokens occurred earlier in it (the
    `LoopGuard` rule, vectorised; beam search reorders rows between steps, so no per-row state is kept)."""
    import torch
    from transformers import StoppingCriteria

    class StopAtLoop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            new = input_ids[:, prompt_len:]
            if new.shape[1] <= n:
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            spans = new.unfold(1, n, 1)  # (rows, positions, n)
            return (spans[:, :-1] == spans[:, -1:]).all(-1).any(-1)

    return StopAtLoop()


class TokenBudget:
    """What every backend shares: the tokenizer, the context window, and prompts checked against it."""

    backend: str
    tokenizer: Any
    context_window: int
    batch_size: int

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def prompt_budget(self, settings: GenerationSettings) -> int:
        """Tokens a prompt may use so that ``max_new_tokens`` still fit in the context window."""
        return self.context_window - settings.max_new_tokens

    def encode(self, prompts: Sequence[str], settings: GenerationSettings) -> list[list[int]]:
        """Token ids of each prompt; a prompt that leaves no room for ``max_new_tokens`` is an error."""
        encoded = [self.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        budget = self.prompt_budget(settings)
        for i, ids in enumerate(encoded):
            if len(ids) > budget:
                raise ValueError(
                    f"prompt {i} is {len(ids)} tokens; the context window ({self.context_window}) leaves "
                    f"{budget} after max_new_tokens={settings.max_new_tokens}")
        return encoded


class Generator(TokenBudget):
    """The reference backend: a transformers causal LM + tokenizer ready for batched generation."""

    backend = TRANSFORMERS

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_context_tokens: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        window = getattr(config, "max_position_embeddings", None) or 2048
        self.context_window = min(window, max_context_tokens) if max_context_tokens else window

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str = "cpu", precision: str = "fp32", batch_size: int = 8,
             max_context_tokens: int | None = None) -> "Generator":
        from .models import load_causal_lm

        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no model checkpoint at {path} (no config.json)")
        model, tokenizer = load_causal_lm(path, device=device, precision=precision)
        return cls(model, tokenizer, batch_size=batch_size, max_context_tokens=max_context_tokens)

    def generate(self, prompts: Sequence[str], settings: GenerationSettings | None = None) -> list[list[GeneratedText]]:
        """For each prompt, ``num_return_sequences`` generations (best first for beam search), in prompt order."""
        import torch

        settings = settings or GenerationSettings()
        if not prompts:
            return []
        encoded = self.encode(prompts, settings)
        own = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        gen_config = settings.to_generation_config(self.tokenizer, own)
        if settings.do_sample:
            torch.manual_seed(settings.seed)
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))  # similar lengths share a batch
        results: list[list[GeneratedText]] = [[] for _ in prompts]
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):  # left padding: every row's next token is at the right edge
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            began = time.perf_counter()
            stops = [_stop_at_end_marker(self.tokenizer, width)]
            if settings.stop_loop_tokens:
                stops.append(_stop_at_loop(width, settings.stop_loop_tokens))
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_config,
                    stopping_criteria=stops,
                )
            seconds = time.perf_counter() - began
            new = out[:, width:].cpu()
            ends = [_new_length(row, pad, gen_config.eos_token_id) for row in new]
            rate = sum(n for n, _ in ends) / seconds if seconds > 0 else 0.0
            n = settings.num_return_sequences
            for j, (row, (length, eos)) in enumerate(zip(new, ends)):
                i = chunk[j // n]
                tokens = row[:length].tolist()
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                ended = eos or END_KEY in text
                keep, looped = (length, False) if ended else LoopGuard.cut(tokens, settings.stop_loop_tokens)
                if looped:
                    text = self.tokenizer.decode(tokens[:keep], skip_special_tokens=True)
                results[i].append(GeneratedText(text=extract_response(text), prompt_tokens=len(encoded[i]),
                                             new_tokens=length, latency_s=seconds, batch_tokens_per_s=rate,
                                             ended=ended, looped=looped))
        return results


def _new_length(row, pad_id: int, eos_id) -> tuple[int, bool]:
    """(generated tokens in a row without the padding after a finished row — its EOS counts, whether it hit EOS)."""
    eos = set(eos_id if isinstance(eos_id, (list, tuple)) else [eos_id])
    tokens = row.tolist()
    for n, t in enumerate(tokens):
        if t in eos:
            return n + 1, True
    while tokens and tokens[-1] == pad_id:
        tokens.pop()
    return len(tokens), False
