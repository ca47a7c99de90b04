"""Finetune dataset: ``qa_pairs`` → Dolly-format train/valid/test rows with token counts.

Rows longer than ``max_length`` tokens (prompt + completion + EOS, in the base model's tokenizer) are dropped
and counted, never truncated. The split is by question (no question in two splits) and stable: a question is
held out when its seeded hash ranks among the smallest (test first, then valid — the rows that pick the published
checkpoint), so new drops change the held-out sets only by new questions. It is the project's one held-out split:
`held_out_questions` answers it from qa_pairs alone (no tokenizer) through the same functions, and the adapted
retriever (retriever_model) trains outside exactly those questions.

RAFT-style prompts (``rag_k > 0``, Zhang et al. 2024, "RAFT: Adapting Language Model to Domain Specific RAG"):
each prompt holds ``rag_k`` passages retrieved for the question, built by `rag.fit_rag_prompt` exactly as
answering builds them. In a share ``oracle_share`` of train rows the row's own answer is one of the passages (at
a seeded random place); the other rows — and every valid/test row, as in evaluation — get distractors only:
answers to *other* questions, never to a held-out one (no test answer leaks into training). A train/valid RAG
row's completion is its own answer, or with ``rag_target="extract"`` the leads of its passages that best reproduce
that answer (`extractive.oracle_extract`): what a grounded model can write for a question whose own answer is not
among the passages, as for every evaluated question.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence, get_args

from garden_assets.llm.extractive import oracle_extract
from garden_assets.llm.prompts import dolly_completion, dolly_prompt
from garden_assets.llm.rag import (DEFAULT_RETRIEVAL, Question, capped_question, check_cap, check_consensus_pool,
                                   fit_rag_prompt, lead_within, rag_passages)
from garden_assets.settings import MAX_LENGTH

ROW_COLUMNS = ("instruction", "context", "response", "category", "prompt", "completion", "n_tokens")
ID_COLUMNS = ("site", "question_id", "answer_id", "source_url")
RagTarget = Literal["answer", "extract"]  # what a train/valid RAG row's completion is (DatasetOptions.rag_target)
_REQUIRED = ("question_id", "answer_id", "instruction", "context", "response", "is_accepted", "answer_score")


@dataclass
class SplitOptions:
    """The held-out split of questions (one for the whole project: finetune_dataset, retriever_model,
    retrieval_eval and evaluation_answers all see the same questions held out)."""

    test_size: int = field(default=200, metadata={"help": "held-out test rows, capped at max_test_fraction of the rows"})
    max_test_fraction: float = 0.2
    seed: int = field(default=42, metadata={"help": "the held-out hash's seed (and the RAFT oracle draws')"})
    answers: Literal["accepted", "all"] = field(
        default="all", metadata={"help": "accepted: only accepted answers; all: every answer (min_answer_score)"})
    min_answer_score: int | None = field(default=None, metadata={"help": "keep answers scoring at least this"})
    valid_size: int = field(default=24, metadata={
        "help": "held-out rows (capped at max_test_fraction of the rest) that pick the published checkpoint"})

    def __post_init__(self) -> None:
        if self.answers not in ("accepted", "all"):
            raise ValueError(f"answers must be 'accepted' or 'all', got {self.answers!r}")
        if self.test_size < 0 or self.valid_size < 0 or not 0 <= self.max_test_fraction < 1:
            raise ValueError("test_size and valid_size must be ≥ 0 and max_test_fraction in [0, 1)")

    def split_options(self) -> "SplitOptions":
        """Only the split's fields (a `DatasetOptions` is a `SplitOptions` with more)."""
        return SplitOptions(**{f: getattr(self, f) for f in SplitOptions.__dataclass_fields__})


# passages per RAFT training prompt in the pipeline: the oracle or a distractor beside another distractor, so the
# model learns to tell the passage that answers apart (answering then shows it the consensus top alone, rag.py)
RAFT_K = 2


@dataclass
class DatasetOptions(SplitOptions):
    """The split's fields (`SplitOptions`), then: max_length: tokens per example, longer rows are dropped."""

    max_length: int = MAX_LENGTH
    rag_k: int = 0  # passages per prompt (RAFT); 0: the plain Dolly prompt
    oracle_share: float = 0.8  # train rows whose own answer is among the passages (the RAFT paper's ≈ 80 %)
    rag_mode: str = DEFAULT_RETRIEVAL.mode
    passage_tokens: int | None = DEFAULT_RETRIEVAL.passage_tokens  # as answering cuts them (rag.cap_passage)
    context_tokens: int | None = DEFAULT_RETRIEVAL.context_tokens  # question bodies, too (rag.capped_question)
    # None: training prompts keep the search order. Choosing them by consensus as answering does
    # (rag.rag_passages) was measured to teach worse answers (docs/evaluation.md, consensus reranking)
    consensus_pool: int | None = None
    # train/valid answers keep their leading sentences within this many tokens, cut as passages are cut
    # (rag.lead_within), so an oracle row's target is exactly the passage it shows: the model learns to quote one
    # passage and stop, not to run on past it (test rows keep whole answers: they are the references). None: whole.
    answer_tokens: int | None = DEFAULT_RETRIEVAL.passage_tokens
    # what a train/valid RAG row's completion is. answer: its own answer (the RAFT paper's target). extract: the
    # leads of its passages that best reproduce that answer (extractive.oracle_extract, within answer_tokens; the
    # own answer when no lead shares a word with it). Measured: extract ties answer, ends less often (recipe runs
    # E13–E15, docs/evaluation.md), so answer stays the default.
    rag_target: RagTarget = "answer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rag_target not in get_args(RagTarget):
            raise ValueError(f"rag_target must be one of {get_args(RagTarget)}, got {self.rag_target!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be ≥ 8 tokens, got {self.max_length}")
        if not isinstance(self.rag_k, int) or not 0 <= self.rag_k <= 50:
            raise ValueError(f"rag_k must be 0..50 passages, got {self.rag_k!r}")
        if self.answer_tokens is not None and self.answer_tokens < 8:
            raise ValueError(f"answer_tokens must be ≥ 8 (None: whole answers), got {self.answer_tokens!r}")
        check_consensus_pool(self.consensus_pool)
        check_cap("context_tokens", self.context_tokens)
        if not 0 <= self.oracle_share <= 1:
            raise ValueError(f"oracle_share must be in [0, 1], got {self.oracle_share!r}")


@dataclass
class DatasetStats:
    rows_in: int
    rows_selected: int
    dropped_empty: int
    dropped_too_long: int
    answers_shortened: int  # train/valid answers cut to their leading sentences (answer_tokens)
    dropped_long_answer: int  # train/valid answers whose first sentence alone exceeds answer_tokens
    train_rows: int
    valid_rows: int
    test_rows: int
    train_tokens: int
    test_tokens: int
    max_length: int
    longest: int
    rag_k: int = 0
    oracle_rows: int = 0  # train rows whose own answer is among their passages
    extract_rows: int = 0  # train/valid rows whose completion is an extract of their passages (rag_target)
    extract_f1: float | None = None  # their mean token F1 against the own answer: how answerable from the passages
    length_histogram: dict[str, list[int]] = field(default_factory=dict)  # bin_edges, train, test, dropped

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FinetuneDataset:
    train: list[dict[str, Any]]
    valid: list[dict[str, Any]]
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
def question_of(row: dict[str, Any]) -> tuple[str, int]:
    """A row's question identity ``(site, question_id)`` (ids repeat across sites)."""
    return row.get("site") or "", int(row["question_id"])


def _holdout_rank(seed: int, question_id: int) -> bytes:
    return hashlib.blake2b(f"{seed}:{question_id}".encode(), digest_size=8).digest()


def select_pairs(qa_pairs, options: SplitOptions):
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


def build_finetune_dataset(qa_pairs, tokenizer, options: DatasetOptions | None = None, store=None) -> FinetuneDataset:
    """Rows with ``instruction, context, response, category, prompt, completion, n_tokens`` (+ ids), split.

    ``store``: the `QAStore` the RAFT passages come from (needed when ``rag_k > 0``). Raises ValueError when there
    are no pairs, none pass the answer filter, the index is smaller than ``rag_k``, or every row is too long.
    """
    options = options or DatasetOptions()
    rows_in = qa_pairs.height
    if rows_in == 0:
        raise ValueError("qa_pairs is empty: no Q/A pairs to build a finetune dataset from")
    if options.rag_k:
        if store is None:
            raise ValueError(f"rag_k={options.rag_k} needs the qa_index to retrieve passages from")
        if store.count() < options.rag_k + 1:
            raise ValueError(f"rag_k={options.rag_k} passages need an index of more than {options.rag_k} answers; "
                             f"qa_index holds {store.count()}")
    frame, rows, dropped_empty = eligible_rows(qa_pairs, options)
    train, valid, test = split_rows(rows, options)
    held_out = {question_of(r) for r in valid + test}
    shortened = dropped_long_answer = 0
    if options.answer_tokens is not None:
        fitted: dict[str, list] = {"train": [], "valid": []}
        for name, rows_of in (("train", train), ("valid", valid)):
            for r in rows_of:
                lead = lead_within(r["response"], tokenizer, options.answer_tokens)
                if lead is None:
                    dropped_long_answer += 1
                    continue
                if lead != r["response"]:
                    r["completion"] = dolly_completion(lead)
                    shortened += 1
                fitted[name].append(r)
        train, valid = fitted["train"], fitted["valid"]
    for split, rows_of in (("train", train), ("valid", valid), ("test", test)):
        add_prompts(rows_of, tokenizer, options, store, held_out, oracle=split == "train", target=split != "test")

    dropped_lengths: list[int] = []
    kept_splits = []
    for rows_of in (train, valid, test):
        kept = []
        for row, (ids, _) in zip(rows_of, encode_examples(tokenizer, [r["prompt"] for r in rows_of],
                                                          [r["completion"] for r in rows_of])):
            if len(ids) > options.max_length:
                dropped_lengths.append(len(ids))
            else:
                row["n_tokens"] = len(ids)
                kept.append(row)
        kept_splits.append(kept)
    train, valid, test = kept_splits
    kept = train + valid + test
    if not kept:
        raise ValueError(
            f"every one of the {len(rows)} rows is longer than max_length={options.max_length} tokens "
            f"{'with its passages ' if options.rag_k else ''}(shortest: {min(dropped_lengths)}); raise max_length"
        )
    if not train:
        raise ValueError(f"no train row fits max_length={options.max_length} tokens; raise max_length")
    stats = DatasetStats(
        rows_in=rows_in,
        rows_selected=frame.height,
        dropped_empty=dropped_empty,
        dropped_too_long=len(dropped_lengths),
        answers_shortened=shortened,
        dropped_long_answer=dropped_long_answer,
        train_rows=len(train),
        valid_rows=len(valid),
        test_rows=len(test),
        train_tokens=sum(r["n_tokens"] for r in train),
        test_tokens=sum(r["n_tokens"] for r in test),
        max_length=options.max_length,
        longest=max(r["n_tokens"] for r in kept),
        rag_k=options.rag_k,
        oracle_rows=sum(bool(r.get("oracle")) for r in train),
        extract_rows=len(extracts := [r["extract_f1"] for r in train + valid if "extract_f1" in r]),
        extract_f1=round(sum(extracts) / len(extracts), 4) if extracts else None,
        length_histogram=length_histogram(
            [r["n_tokens"] for r in train], [r["n_tokens"] for r in test], dropped_lengths, options.max_length
        ),
    )
    return FinetuneDataset(train=train, valid=valid, test=test, stats=stats)


def eligible_rows(qa_pairs, options: SplitOptions) -> tuple[Any, list[dict[str, Any]], int]:
    """``(selected frame, rows, rows dropped for an empty title or answer)``: the rows the split is drawn from.
    Raises ValueError when there are none."""
    frame = select_pairs(qa_pairs, options)
    if frame.height == 0:
        raise ValueError(
            f"none of the {qa_pairs.height} Q/A pairs pass the answer filter "
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
        rows.append({
            "instruction": instruction, "context": (rec["context"] or "").strip(), "response": response,
            "category": rec.get("category") or "closed_qa", "completion": dolly_completion(response),
            "site": rec.get("site") or "", "question_id": int(rec["question_id"]), "answer_id": int(rec["answer_id"]),
            "source_url": rec.get("source_url") or "",
        })
    if not rows:
        raise ValueError(f"all {frame.height} selected Q/A pairs have an empty title or answer")
    return frame, rows, dropped_empty


def split_rows(rows: list[dict[str, Any]], options: SplitOptions) -> tuple[list[dict], list[dict], list[dict]]:
    """``(train, valid, test)``: the test questions first, then the valid ones from what is left."""
    train, test = split_by_question(rows, options)
    train, valid = split_by_question(train, replace(options.split_options(), test_size=options.valid_size))
    return train, valid, test


@dataclass(frozen=True)
class HeldOut:
    """The held-out questions, as ``(site, question_id)``: ``test`` (scored by every evaluation) and ``valid``
    (picks the published checkpoint). No trained thing sees either."""

    test: frozenset[tuple[str, int]]
    valid: frozenset[tuple[str, int]]

    @property
    def questions(self) -> frozenset[tuple[str, int]]:
        return self.test | self.valid


def question_folds(questions: Iterable[tuple[str, int]], folds: int, seed: int = SplitOptions.seed,
                   ) -> list[frozenset[tuple[str, int]]]:
    """``questions`` dealt into ``folds`` disjoint groups of near-equal size in the held-out hash's order: the
    cross-validated protocol holds out each group once, so every question is scored by a model that never saw it."""
    ordered = sorted(set(questions), key=lambda q: (_holdout_rank(seed, q[1]), q))
    if not isinstance(folds, int) or folds < 2 or len(ordered) < folds:
        raise ValueError(f"folds must be 2..{len(ordered)} (one question at least in each), got {folds!r}")
    return [frozenset(ordered[i::folds]) for i in range(folds)]


def held_out_questions(qa_pairs, options: SplitOptions | None = None) -> HeldOut:
    """The questions ``build_finetune_dataset`` holds out of ``qa_pairs`` with ``options`` (the same functions,
    without a tokenizer): what the retriever must not train on and what retrieval_eval scores."""
    _, rows, _ = eligible_rows(qa_pairs, options or SplitOptions())
    _, valid, test = split_rows(rows, options or SplitOptions())
    return HeldOut(test=frozenset(map(question_of, test)), valid=frozenset(map(question_of, valid)))


def add_prompts(rows: list[dict[str, Any]], tokenizer, options: DatasetOptions, store, held_out: set[tuple[str, int]], *,
                oracle: bool, target: bool = False) -> None:
    """Set each row's ``prompt``: plain Dolly, or (``rag_k``) a RAG prompt fitted by `fit_rag_prompt` into what
    ``max_length`` leaves after the completion, with the row's own answer as one passage when ``oracle`` and the
    row's seeded draw falls under ``oracle_share``. ``target`` (train/valid rows) with ``rag_target="extract"``:
    the completion becomes the passages' oracle extract."""
    def question(r) -> Question:
        return capped_question(Question(r["instruction"], r["context"]), tokenizer, options.context_tokens)

    if not options.rag_k:
        for r in rows:
            r["prompt"] = dolly_prompt(r["instruction"], question(r).context)
        return
    from garden_assets.retrieval.search import Hit

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    specials = count("")  # what add_special_tokens adds (BOS): a completion's own tokens are count(t) - specials

    vectors = store.embedder.embed([r["instruction"] for r in rows]) if rows else []
    for r, vector in zip(rows, vectors):
        rng = random.Random(f"{options.seed}:{r['answer_id']}")
        with_oracle = oracle and rng.random() < options.oracle_share
        hits = rag_passages(store, r["instruction"], k=options.rag_k, mode=options.rag_mode, tokenizer=tokenizer,
                            passage_tokens=options.passage_tokens, consensus_pool=options.consensus_pool,
                            vector=vector, exclude=held_out | {question_of(r)})
        if with_oracle:
            own = Hit(r["answer_id"], r["question_id"], r["instruction"], r["response"], r["source_url"], True, 0, 1.0,
                      r["site"])
            hits = hits[: options.rag_k - 1]
            hits.insert(rng.randrange(len(hits) + 1), own)
        completion = len(tokenizer(r["completion"], add_special_tokens=False)["input_ids"])
        room = options.max_length - completion - 1  # the EOS after the completion
        asked = question(r)
        try:
            fitted = fit_rag_prompt(asked, hits, count, room, tokenizer=tokenizer,
                                    passage_tokens=options.passage_tokens)
        except ValueError:  # the bare question does not fit: keep it whole, the length filter drops the row
            r.update(prompt=dolly_prompt(r["instruction"], asked.context), passages=0, oracle=False)
            continue
        r.update(prompt=fitted.prompt, passages=len(fitted.sources),
                 oracle=any((s.site, s.answer_id) == (r["site"], r["answer_id"]) for s in fitted.sources))
        if target and options.rag_target == "extract":
            extract, f1 = oracle_extract(fitted.passages, r["response"], lambda t: count(t) - specials,
                                         options.answer_tokens)
            if extract:
                r.update(completion=dolly_completion(extract), extract_f1=round(f1, 4))


def split_by_question(rows: list[dict[str, Any]], options: SplitOptions) -> tuple[list[dict], list[dict]]:
    """Hold out whole questions (lowest seeded hash first) up to min(test_size, max_test_fraction · rows) rows."""
    n_test = min(options.test_size, int(len(rows) * options.max_test_fraction))
    by_question: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        by_question.setdefault(question_of(row), []).append(row)
    held: set[tuple[str, int]] = set()
    count = 0
    # Ranked by the seeded hash of the question id (the same split as before sites), the site breaking ties.
    for qid in sorted(by_question, key=lambda q: (_holdout_rank(options.seed, q[1]), q[0])):
        size = len(by_question[qid])
        if count + size <= n_test:
            held.add(qid)
            count += size
        if count >= n_test:
            break
    train = [r for r in rows if question_of(r) not in held]
    test = [r for r in rows if question_of(r) in held]
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
    paths = {split: write_jsonl_atomic(getattr(dataset, split), out / f"{split}.jsonl")
             for split in ("train", "valid", "test")}
    stats_tmp = out / ".stats.json.tmp"
    stats_tmp.write_text(json.dumps(dataset.stats.to_metadata(), indent=2))
    os.replace(stats_tmp, out / "stats.json")
    paths["stats"] = out / "stats.json"
    return paths


def prepare_finetune_dataset(
    qa_pairs, base_model: str | os.PathLike[str], out_dir: str | os.PathLike[str], options: DatasetOptions | None = None,
    store=None,
) -> tuple[dict[str, Path], DatasetStats]:
    """The ``finetune_dataset`` asset in one call: tokenizer of ``base_model`` (a checkpoint dir), build, write."""
    from garden_assets.llm.models import load_tokenizer

    dataset = build_finetune_dataset(qa_pairs, load_tokenizer(base_model), options, store)
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
