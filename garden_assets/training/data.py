"""Examples, batch plans and collation for the trainer.

Batches are planned up front as lists of example indices, deterministically from (seed, epoch), so a resumed run
replays exactly the batches it would have seen, and every rank knows every batch (token counts for loss
normalisation need no all-reduce).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from garden_assets.llm.dataset import encode_examples, read_jsonl

IGNORE_INDEX = -100  # the label value torch's cross_entropy ignores


@dataclass
class Example:
    input_ids: list[int]
    n_prompt: int  # the first n_prompt tokens are masked out of the loss

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss_tokens(self) -> int:
        """Predicted positions that count: the completion (its first token is predicted from the prompt's last)."""
        return len(self.input_ids) - self.n_prompt


def load_examples(path: str, tokenizer, max_length: int) -> tuple[list[Example], int]:
    """Encode a Dolly jsonl (prompt/completion columns) with the dataset's own encoder; drop over-long rows.

    Returns (examples, dropped)."""
    rows = read_jsonl(path)
    missing = [i for i, r in enumerate(rows, 1) if "prompt" not in r or "completion" not in r]
    if missing:
        raise ValueError(f"{path}: rows {missing[:5]} lack 'prompt'/'completion' (build it with llm.dataset)")
    encoded = encode_examples(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    examples = [Example(ids, n_prompt) for ids, n_prompt in encoded if len(ids) <= max_length]
    return examples, len(encoded) - len(examples)


def plan_epoch(
    lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, grouped: bool, megabatch: int = 50
) -> list[list[int]]:
    """Micro-batches (lists of indices) for one epoch.

    grouped: shuffle, cut into mega-batches of ``megabatch × batch_size``, sort each by length, slice into
    batches, shuffle the batches — the scheme of transformers' LengthGroupedSampler (which yields a flat index
    stream; we need whole batches per step to plan token counts and resume, hence this small re-implementation).
    padded: plain shuffled batches (the dolly recipe), padding to the longest row of each.
    """
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not grouped:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    size = megabatch * batch_size
    batches = []
    for start in range(0, len(order), size):
        mega = sorted(order[start : start + size], key=lambda i: lengths[i], reverse=True)
        batches += [mega[i : i + batch_size] for i in range(0, len(mega), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class StepPlan:
    """The micro-batches of one optimizer step, for all ranks: ``micro[k]`` is rank ``k % world``'s."""

    epoch: int
    micro: list[list[int]]
    tokens: int  # non-pad tokens in the step (all ranks)
    loss_tokens: int  # tokens whose loss counts (all ranks)


def plan_steps(
    examples: Sequence[Example],
    *,
    batch_size: int,
    grad_accum: int,
    world_size: int,
    seed: int,
    grouped: bool,
    epochs: float,
    max_steps: int | None,
    max_train_tokens: int | None,
) -> list[StepPlan]:
    """All optimizer steps of the run. An epoch's last micro-batches that do not fill a whole step
    (grad_accum × world_size micro-batches) are skipped, so every rank runs the same number of micro-steps."""
    if not examples:
        raise ValueError("no training examples (all dropped as too long, or an empty train file)")
    lengths = [e.n_tokens for e in examples]
    per_step = grad_accum * world_size
    epoch_cap = None if max_steps is not None else epochs  # max_steps overrides epochs
    steps: list[StepPlan] = []
    tokens = 0
    epoch = 0
    while epoch_cap is None or epoch < epoch_cap:
        batches = plan_epoch(lengths, batch_size, seed=seed, epoch=epoch, grouped=grouped)
        if len(batches) < per_step:
            raise ValueError(
                f"{len(examples)} examples make {len(batches)} micro-batches, fewer than one optimizer step needs "
                f"(grad_accum × processes = {per_step}); lower batch_size/grad_accum"
            )
        n_steps = len(batches) // per_step
        if epoch_cap is not None and epoch_cap - epoch < 1:  # a fractional last epoch
            n_steps = max(1, round(n_steps * (epoch_cap - epoch)))
        for s in range(n_steps):
            micro = batches[s * per_step : (s + 1) * per_step]
            step_tokens = sum(lengths[i] for b in micro for i in b)
            loss_tokens = sum(examples[i].n_loss_tokens for b in micro for i in b)
            steps.append(StepPlan(epoch, micro, step_tokens, loss_tokens))
            tokens += step_tokens
            if max_steps is not None and len(steps) >= max_steps:
                return steps
            if max_train_tokens is not None and tokens >= max_train_tokens:
                return steps
        epoch += 1
    return steps


def collate(examples: Sequence[Example], pad_id: int, pad_to_multiple_of: int | None = None):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (prompt and padding → -100)."""
    import torch

    width = max(e.n_tokens for e in examples)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    n = len(examples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids = torch.tensor(ex.input_ids, dtype=torch.long)
        input_ids[row, : ex.n_tokens] = ids
        attention_mask[row, : ex.n_tokens] = 1
        labels[row, ex.n_prompt : ex.n_tokens] = ids[ex.n_prompt :]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
