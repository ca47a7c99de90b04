"""qa_pairs → finetune dataset: format, filters, dropping, split, files."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from garden_assets.llm.dataset import (
    DatasetOptions,
    build_finetune_dataset,
    encode_examples,
    read_jsonl,
    write_dataset,
    write_jsonl_atomic,
)
from garden_assets.llm.models import build_small_tokenizer
from garden_assets.llm.prompts import dolly_completion, dolly_prompt

WORDS = "soil water tomato basil prune compost mulch seed leaf root sun shade frost pot bed weed slug aphid".split()


def make_pairs(n_questions: int, answers_per_question: int = 1, seed: int = 0, words: tuple[int, int] = (5, 40)):
    """A qa_pairs frame with the contract's columns; the first answer of each question is accepted."""
    rng = random.Random(seed)
    rows = []
    for q in range(n_questions):
        for a in range(answers_per_question):
            rows.append({
                "question_id": 100 + q,
                "answer_id": 10_000 + q * 10 + a,
                "instruction": f"How do I {rng.choice(WORDS)} my {rng.choice(WORDS)}?",
                "context": " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 20))),
                "response": " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))),
                "category": "closed_qa",
                "is_accepted": a == 0,
                "question_score": rng.randint(0, 10),
                "answer_score": a * 3,
                "tags": ["vegetables"],
                "source_url": f"https://gardening.stackexchange.com/a/{10_000 + q * 10 + a}",
                "content_hash": f"h{q}-{a}",
            })
    schema = {"question_id": pl.Int64, "answer_id": pl.Int64, "question_score": pl.Int64, "answer_score": pl.Int64,
              "tags": pl.List(pl.String)}
    return pl.DataFrame(rows, schema_overrides=schema) if rows else pl.DataFrame(
        schema={"question_id": pl.Int64, "answer_id": pl.Int64, "instruction": pl.String, "context": pl.String,
                "response": pl.String, "category": pl.String, "is_accepted": pl.Boolean,
                "question_score": pl.Int64, "answer_score": pl.Int64, "tags": pl.List(pl.String),
                "source_url": pl.String, "content_hash": pl.String})


@pytest.fixture(scope="module")
def tok():
    return build_small_tokenizer()


def test_rows_have_the_contract_columns(tok):
    ds = build_finetune_dataset(make_pairs(20), tok, DatasetOptions(test_size=4))
    row = ds.train[0]
    for col in ("instruction", "context", "response", "category", "prompt", "completion", "n_tokens"):
        assert col in row
    assert row["category"] == "closed_qa"
    assert row["prompt"] == dolly_prompt(row["instruction"], row["context"])
    assert row["completion"] == dolly_completion(row["response"])
    ids, n_prompt = encode_examples(tok, [row["prompt"]], [row["completion"]])[0]
    assert row["n_tokens"] == len(ids)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and 0 < n_prompt < len(ids)


def test_no_pairs(tok):
    with pytest.raises(ValueError, match="empty"):
        build_finetune_dataset(make_pairs(0), tok)


def test_nothing_passes_filter(tok):
    pairs = make_pairs(5).with_columns(pl.lit(False).alias("is_accepted"))
    with pytest.raises(ValueError, match="answer filter"):
        build_finetune_dataset(pairs, tok)


def test_every_row_too_long(tok):
    with pytest.raises(ValueError, match="every one of the 10 rows is longer than max_length=20"):
        build_finetune_dataset(make_pairs(10), tok, DatasetOptions(max_length=20))


def test_long_rows_dropped_never_truncated(tok):
    pairs = make_pairs(30, words=(5, 200))
    ds = build_finetune_dataset(pairs, tok, DatasetOptions(max_length=200, test_size=0))
    assert ds.stats.dropped_too_long > 0
    assert ds.stats.train_rows + ds.stats.dropped_too_long == 30
    assert all(r["n_tokens"] <= 200 for r in ds.train)
    kept = {r["answer_id"]: r for r in ds.train}
    for rec in pairs.iter_rows(named=True):  # kept answers are whole
        if rec["answer_id"] in kept:
            assert kept[rec["answer_id"]]["response"] == rec["response"].strip()
    hist = ds.stats.length_histogram
    assert sum(hist["train"]) == ds.stats.train_rows and hist["dropped"] == [ds.stats.dropped_too_long]
    assert hist["bin_edges"][-1] >= 200


def test_test_size_capped_at_20_percent(tok):
    ds = build_finetune_dataset(make_pairs(50), tok, DatasetOptions(test_size=200))
    assert (ds.stats.train_rows, ds.stats.test_rows) == (40, 10)
    ds = build_finetune_dataset(make_pairs(50), tok, DatasetOptions(test_size=3))
    assert ds.stats.test_rows == 3
    ds = build_finetune_dataset(make_pairs(3), tok)
    assert ds.stats.test_rows == 0 and ds.stats.train_rows == 3


def test_answer_selection_and_question_split(tok):
    pairs = make_pairs(40, answers_per_question=3)
    accepted = build_finetune_dataset(pairs, tok, DatasetOptions(test_size=5))
    assert accepted.stats.rows_selected == 40
    every = build_finetune_dataset(pairs, tok, DatasetOptions(answers="all", test_size=12))
    assert every.stats.rows_selected == 120 and every.stats.test_rows == 12
    scored = build_finetune_dataset(pairs, tok, DatasetOptions(answers="all", min_answer_score=3, test_size=0))
    assert scored.stats.rows_selected == 80
    # no question on both sides of the split
    assert not {r["question_id"] for r in every.train} & {r["question_id"] for r in every.test}


def test_split_is_deterministic_and_stable(tok):
    a = build_finetune_dataset(make_pairs(50), tok, DatasetOptions(test_size=5, seed=1))
    b = build_finetune_dataset(make_pairs(50).sample(fraction=1.0, shuffle=True, seed=3), tok,
                               DatasetOptions(test_size=5, seed=1))
    assert [r["answer_id"] for r in a.test] == [r["answer_id"] for r in b.test]
    # more questions arrive: a held-out question either stays held out or is displaced by a new one
    c = build_finetune_dataset(make_pairs(60), tok, DatasetOptions(test_size=5, seed=1))
    old, new = {r["question_id"] for r in a.test}, {r["question_id"] for r in c.test}
    assert all(q in old or q >= 150 for q in new)
    other = build_finetune_dataset(make_pairs(50), tok, DatasetOptions(test_size=5, seed=2))
    assert {r["question_id"] for r in other.test} != old


def test_empty_answers_counted(tok):
    pairs = make_pairs(10).with_columns(
        pl.when(pl.col("question_id") < 103).then(pl.lit("  ")).otherwise(pl.col("response")).alias("response"))
    ds = build_finetune_dataset(pairs, tok, DatasetOptions(test_size=0))
    assert ds.stats.dropped_empty == 3 and ds.stats.train_rows == 7


def test_files_written_atomically(tok, tmp_path):
    ds = build_finetune_dataset(make_pairs(20), tok, DatasetOptions(test_size=4))
    paths = write_dataset(ds, tmp_path / "ft")
    assert read_jsonl(paths["train"]) == ds.train and read_jsonl(paths["test"]) == ds.test
    assert json.loads(paths["stats"].read_text())["test_rows"] == 4
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["stats.json", "test.jsonl", "train.jsonl"]

    # a failure while writing leaves the previous file intact and no temporary behind
    def rows():
        yield {"ok": 1}
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(rows(), paths["train"])
    assert read_jsonl(paths["train"]) == ds.train
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["stats.json", "test.jsonl", "train.jsonl"]


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        read_jsonl(path)


def test_prepare_in_one_call(tok, tmp_path):
    """What the finetune_dataset asset calls: the base model's tokenizer, build, write."""
    from garden_assets.llm.dataset import prepare_finetune_dataset

    tok.save_pretrained(tmp_path / "base")
    paths, stats = prepare_finetune_dataset(make_pairs(20), tmp_path / "base", tmp_path / "ft",
                                            DatasetOptions(test_size=2))
    assert stats.train_rows == 18 and len(read_jsonl(paths["train"])) == 18 and len(read_jsonl(paths["test"])) == 2
