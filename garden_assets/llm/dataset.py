"""Finetune dataset: ``qa_pairs`` → Dolly-format train/test rows with token counts.

Rows longer than ``max_length`` tokens (prompt + completion + EOS, in the base model's tokenizer) are dropped
and counted, never truncated. The train/test split is by question (no question in both) and stable: a question
is held out when its seeded hash ranks among the smallest, so new drops change the test set only by new
questions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from garden_assets.llm.prompts import dolly_completion, dolly_prompt

ROW_COLUMNS = ("instruction", "context", "response", "category", "prompt", "completion", "n_tokens")
ID_COLUMNS = ("question_id", "answer_id", "source_url")
_REQUIRED = ("question_id", "answer_id", "instruction", "context", "response", "is_accepted", "answer_score")


@dataclass
class DatasetOptions:
    """test_size: held-out rows (capped at ``max_test_fraction`` of the rows); answers: ``accepted`` (only
    accepted answers) or ``all``; min_answer_score: keep answers scoring at least this (None: no floor);
    max_length: tokens per example, longer rows are dropped."""

    test_size: int = 200
    max_test_fraction: float = 0.2
    seed: int = 42
    answers: Literal["accepted", "all"] = "accepted"
    min_answer_score: int | None = None
    max_length: int = 1024

    def __post_init__(self) -> None:
        if self.answers not in ("accepted", "all"):
            raise ValueError(f"answers must be 'accepted' or 'all', got {self.answers!r}")
        if self.test_size < 0 or not 0 <= self.max_test_fraction < 1:
            raise ValueError("test_size must be ≥ 0 and max_test_fraction in [0, 1)")
        if self.max_length < 8:
            raise ValueError(f"max_length must be ≥ 8 tokens, got {self.max_length}")


@dataclass
class DatasetStats:
    rows_in: int
    rows_selected: int
    dropped_empty: int
    dropped_too_long: int
    train_rows: int
    test_rows: int
    train_tokens: int
    test_tokens: int
    max_length: int
    longest: int
    length_histogram: dict[str, list[int]] = field(default_factory=dict)  # bin_edges, train, test, dropped

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneDataset:
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    stats: DatasetStats


# -- tokenization shared with the trainer -------------------------------------------------------------------------
def encode_examples(tokenizer, prompts: Sequence[str], completions: Sequence[str]) -> list[tuple[list[int], int]]:
    """``(input_ids, n_prompt_tokens)`` per example: tokenizer(prompt) with its special tokens (BOS), then the
    completion without them, then EOS. Prompt and completion are tokenized apart so the loss mask boundary is
    exact. The trainer uses this same function, so ``n_tokens`` here is what it trains on."""
    if not prompts:
        return []
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    p_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    c_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return [(list(p) + list(c) + [eos], len(p)) for p, c in zip(p_ids, c_ids)]


# -- building ------------------------------------------------------------------------------------------------
def _holdout_rank(seed: int, question_id: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{question_id}".encode(), digest_size=8).digest()


def select_pairs(qa_pairs, options: DatasetOptions):
    """The qa_pairs rows that feed the dataset (answer filter), in a stable order."""
    import polars as pl

    missing = [c for c in _REQUIRED if c not in qa_pairs.columns]
    if missing:
        raise ValueError(f"qa_pairs lacks columns {missing}")
    frame = qa_pairs
    if options.answers == "accepted":
        frame = frame.filter(pl.col("is_accepted").fill_null(False))
    if options.min_answer_score is not None:
        frame = frame.filter(pl.col("answer_score") >= options.min_answer_score)
    return frame.sort(["question_id", "answer_id"])


def build_finetune_dataset(qa_pairs, tokenizer, options: DatasetOptions | None = None) -> FinetuneDataset:
    """Rows with ``instruction, context, response, category, prompt, completion, n_tokens`` (+ ids), split.

    Raises ValueError when there are no pairs, none pass the answer filter, or every row is too long.
    """
    options = options or DatasetOptions()
    rows_in = qa_pairs.height
    if rows_in == 0:
        raise ValueError("qa_pairs is empty: no Q/A pairs to build a finetune dataset from")
    frame = select_pairs(qa_pairs, options)
    if frame.height == 0:
        raise ValueError(
            f"none of the {rows_in} Q/A pairs pass the answer filter "
            f"(answers={options.answers!r}, min_answer_score={options.min_answer_score})"
        )

    rows: list[dict[str, Any]] = []
    dropped_empty = 0
    for rec in frame.iter_rows(named=True):
        instruction = (rec["instruction"] or "").strip()
        response = (rec["response"] or "").strip()
        if not instruction or not response:
            dropped_empty += 1
            continue
        context = (rec["context"] or "").strip()
        rows.append(
            {
                "instruction": instruction,
                "context": context,
                "response": response,
                "category": rec.get("category") or "closed_qa",
                "prompt": dolly_prompt(instruction, context),
                "completion": dolly_completion(response),
                "question_id": int(rec["question_id"]),
                "answer_id": int(rec["answer_id"]),
                "source_url": rec.get("source_url") or "",
            }
        )
    if not rows:
        raise ValueError(f"all {frame.height} selected Q/A pairs have an empty title or answer")

    encoded = encode_examples(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    kept: list[dict[str, Any]] = []
    dropped_lengths: list[int] = []
    for row, (ids, _) in zip(rows, encoded):
        if len(ids) > options.max_length:
            dropped_lengths.append(len(ids))
        else:
            row["n_tokens"] = len(ids)
            kept.append(row)
    if not kept:
        raise ValueError(
            f"every one of the {len(rows)} rows is longer than max_length={options.max_length} tokens "
            f"(shortest: {min(dropped_lengths)}); raise max_length"
        )

    train, test = split_by_question(kept, options)
    stats = DatasetStats(
        rows_in=rows_in,
        rows_selected=frame.height,
        dropped_empty=dropped_empty,
        dropped_too_long=len(dropped_lengths),
        train_rows=len(train),
        test_rows=len(test),
        train_tokens=sum(r["n_tokens"] for r in train),
        test_tokens=sum(r["n_tokens"] for r in test),
        max_length=options.max_length,
        longest=max(r["n_tokens"] for r in kept),
        length_histogram=length_histogram(
            [r["n_tokens"] for r in train], [r["n_tokens"] for r in test], dropped_lengths, options.max_length
        ),
    )
    return FinetuneDataset(train=train, test=test, stats=stats)


def split_by_question(rows: list[dict[str, Any]], options: DatasetOptions) -> tuple[list[dict], list[dict]]:
    """Hold out whole questions (lowest seeded hash first) up to min(test_size, max_test_fraction · rows) rows."""
    n_test = min(options.test_size, int(len(rows) * options.max_test_fraction))
    by_question: dict[int, list[dict]] = {}
    for row in rows:
        by_question.setdefault(row["question_id"], []).append(row)
    held: set[int] = set()
    count = 0
    for qid in sorted(by_question, key=lambda q: _holdout_rank(options.seed, q)):
        size = len(by_question[qid])
        if count + size <= n_test:
            held.add(qid)
            count += size
        if count >= n_test:
            break
    train = [r for r in rows if r["question_id"] not in held]
    test = [r for r in rows if r["question_id"] in held]
    return train, test


def length_histogram(
    train: Sequence[int], test: Sequence[int], dropped: Sequence[int], max_length: int, bins: int = 16
) -> dict[str, list[int]]:
    """Token-length counts on equal bins over [0, max_length]; dropped rows counted in one overflow figure."""
    width = max(1, -(-max_length // bins))
    edges = [i * width for i in range(bins + 1)]

    def counts(lengths: Iterable[int]) -> list[int]:
        out = [0] * bins
        for n in lengths:
            out[min(bins - 1, max(0, (n - 1) // width))] += 1
        return out

    return {"bin_edges": edges, "train": counts(train), "test": counts(test), "dropped": [len(dropped)]}


# -- files ---------------------------------------------------------------------------------------------------
def write_jsonl_atomic(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write JSON lines to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_dataset(dataset: FinetuneDataset, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """``train.jsonl``, ``test.jsonl`` and ``stats.json`` in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    paths = {
        "train": write_jsonl_atomic(dataset.train, out / "train.jsonl"),
        "test": write_jsonl_atomic(dataset.test, out / "test.jsonl"),
    }
    stats_tmp = out / ".stats.json.tmp"
    stats_tmp.write_text(json.dumps(dataset.stats.to_metadata(), indent=2))
    os.replace(stats_tmp, out / "stats.json")
    paths["stats"] = out / "stats.json"
    return paths


def prepare_finetune_dataset(
    qa_pairs, base_model: str | os.PathLike[str], out_dir: str | os.PathLike[str], options: DatasetOptions | None = None
) -> tuple[dict[str, Path], DatasetStats]:
    """The ``finetune_dataset`` asset in one call: tokenizer of ``base_model`` (a checkpoint dir), build, write."""
    from garden_assets.llm.models import load_tokenizer

    dataset = build_finetune_dataset(qa_pairs, load_tokenizer(base_model), options)
    return write_dataset(dataset, out_dir), dataset.stats


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a bad line raises naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
    return rows
