"""The one held-out split, shared by finetune_dataset and the adapted retriever; what the retriever trains on."""

from __future__ import annotations

import polars as pl
import pytest

from garden_assets.llm.dataset import (DatasetOptions, SplitOptions, build_finetune_dataset, held_out_questions,
                                       question_folds, question_of)
from garden_assets.retrieval import adapt
from garden_assets.retrieval.metrics import queries_from_pairs

from .test_dataset import make_pairs
from .tiny_models import build_small_tokenizer


def two_sites(n_questions: int, answers_per_question: int = 2) -> pl.DataFrame:
    """Two sites whose question ids are the same numbers (a post is (site, id))."""
    a = make_pairs(n_questions, answers_per_question, seed=1)
    b = make_pairs(n_questions, answers_per_question, seed=2).with_columns(pl.lit("coffee.stackexchange.com").alias("site"))
    return pl.concat([a, b])


def test_finetune_dataset_holds_out_exactly_the_shared_split():
    pairs = two_sites(30)
    options = DatasetOptions(test_size=12, valid_size=6, answer_tokens=None)
    ds = build_finetune_dataset(pairs, build_small_tokenizer(), options)
    held = held_out_questions(pairs, options)
    assert held.test and held.valid and not held.test & held.valid
    assert {question_of(r) for r in ds.test} == held.test
    assert {question_of(r) for r in ds.valid} == held.valid
    assert not {question_of(r) for r in ds.train} & held.questions
    # the identity is (site, question_id): one id held out on one site only is still trained on the other
    assert {q for _, q in held.questions} & {q for _, q in map(question_of, ds.train)}
    # DatasetOptions' split fields are SplitOptions' (their defaults too)
    assert DatasetOptions().split_options() == SplitOptions()
    assert held_out_questions(pairs, options.split_options()) == held


def test_split_is_stable_when_new_questions_arrive():
    small, large = held_out_questions(make_pairs(50)), held_out_questions(make_pairs(60))
    assert small.test and small.test <= large.questions
    assert held_out_questions(make_pairs(50).reverse()) == small


class _Captured(Exception):
    pass


def test_the_retriever_trains_on_no_held_out_pair(monkeypatch):
    """What reaches the sentence-transformers trainer: every train-split pair and no pair of a held-out
    question, by (site, question_id)."""
    import sentence_transformers

    pairs = two_sites(20)
    held = held_out_questions(pairs, SplitOptions(test_size=10, valid_size=4))
    seen = {}

    class Recorder:
        def __init__(self, *, train_dataset, **kwargs):
            seen["rows"] = train_dataset.to_list()
            raise _Captured

    monkeypatch.setattr(sentence_transformers, "SentenceTransformerTrainer", Recorder)
    with pytest.raises(_Captured):
        adapt.adapt_embedder(pairs, held.questions, "/nonexistent/never-written", device="cpu")
    trained = {(r["anchor"], r["positive"]) for r in seen["rows"]}
    identity = list(zip(pairs["site"], pairs["question_id"]))
    is_held = pl.Series([q in held.questions for q in identity])
    held_pairs, train_pairs = pairs.filter(is_held), pairs.filter(~is_held)

    def texts(frame):  # the default positives: the answer, and the question's body with the answer
        titles, answers = frame["instruction"].str.strip_chars(), frame["response"].str.strip_chars()
        bodies = [f"{c or ''}\n\n{a}".strip() for c, a in zip(frame["context"], frame["response"])]
        return set(zip(titles, answers)) | set(zip(titles, bodies))

    assert held_pairs.height and not trained & texts(held_pairs)
    assert not {a for _, a in trained} & set(held_pairs["response"].str.strip_chars())
    assert trained == texts(train_pairs)
    assert len(seen["rows"]) == 2 * train_pairs.height


def test_held_out_queries_and_staleness(tmp_path):
    pairs = two_sites(10, answers_per_question=1)
    some = {("coffee.stackexchange.com", 101), ("gardening.stackexchange.com", 105)}
    queries, relevant = queries_from_pairs(pairs, some)
    assert len(queries) == 2 and {s for rel in relevant for s, _ in rel} == {s for s, _ in some}
    (tmp_path / adapt.INFO).write_text('{"held_out": [["coffee.stackexchange.com", 101], '
                                       '["gardening.stackexchange.com", 105], ["x", 1]]}')
    assert adapt.trained_outside(tmp_path, some)
    assert not adapt.trained_outside(tmp_path, some | {("gardening.stackexchange.com", 101)})


def test_bad_options_and_too_few_pairs_fail_clearly():
    with pytest.raises(ValueError, match="anchor"):
        adapt.AdaptOptions(anchor="body")
    with pytest.raises(ValueError, match="batch_size"):
        adapt.AdaptOptions(batch_size=1)
    pairs = make_pairs(3)
    rest = {question_of(r) for r in pairs.iter_rows(named=True)} - {("gardening.stackexchange.com", 100)}
    with pytest.raises(ValueError, match="at least 2 questions"):
        adapt.adapt_embedder(pairs, rest, "/nonexistent/x", device="cpu")


@pytest.mark.slow
def test_eval_retrieval_adapt_prints_one_json_line_per_row(capsys, monkeypatch):
    """`garden eval-retrieval DUMP --adapt --json` on the bundled sample, with a short real training run."""
    import functools
    import json

    from garden_assets.cli import main

    from .conftest import SAMPLE_DROPS

    monkeypatch.setattr(adapt, "adapt_embedder", functools.partial(
        adapt.adapt_embedder, options=adapt.AdaptOptions(epochs=1.0, max_seconds=30.0)))
    assert main(["eval-retrieval", str(SAMPLE_DROPS / "sample-gardening" / "Posts.xml"), "--adapt", "--key",
                 "answer", "--weights", "0.6", "0.7", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert {(r["model"], r["mode"], r["vector_weight"]) for r in rows} == {
        ("bm25", "fts", None), *{(m, "vector", None) for m in ("minilm", "adapted")},
        *{(m, "hybrid", w) for m in ("minilm", "adapted") for w in (0.6, 0.7)}}
    assert all(set(r) >= {"model", "mode", "success_at_5", "mrr_at_10", "queries", "docs_per_s"} for r in rows)
    assert len({r["queries"] for r in rows}) == 1 and "held-out test questions" in err


def test_positives_take_the_index_key_forms_and_only_train_pairs():
    """Each train pair gives one example per positive form: the answer, and the question's body with the answer
    (the default index's text without the title); held-out questions give neither."""
    pairs = two_sites(20)
    held = held_out_questions(pairs, SplitOptions(test_size=10, valid_size=4))
    answer = adapt.training_examples(pairs, held.questions, positives=("answer",))
    both = adapt.training_examples(pairs, held.questions, positives=("answer", "body+answer"))
    assert both.height == 2 * answer.height
    assert set(both["question_id"]) == set(answer["question_id"])
    assert held.questions and not set(zip(both["site"], both["question_id"])) & held.questions
    train = pairs.join(answer.select("site", "question_id").unique(), on=["site", "question_id"])
    with_body = {f"{c or ''}\n\n{r}".strip() for c, r in zip(train["context"], train["response"])}
    assert with_body - set(answer["positive"]) and set(both["positive"]) == set(answer["positive"]) | with_body
    with pytest.raises(ValueError, match="positives"):
        adapt.AdaptOptions(positives=("question+answer",))


def test_question_folds_partition_the_questions():
    questions = {(site, q) for site in ("a", "b") for q in range(23)}
    folds = question_folds(questions, 5)
    assert len(folds) == 5 and frozenset().union(*folds) == questions
    assert sum(map(len, folds)) == len(questions)  # disjoint
    assert {len(f) for f in folds} <= {9, 10}  # near-equal
    assert question_folds(sorted(questions, reverse=True), 5) == folds  # the order they come in does not matter
    for bad in (1, 47, 2.0):
        with pytest.raises(ValueError, match="folds"):
            question_folds(questions, bad)


@pytest.mark.slow
def test_eval_retrieval_cross_validates_every_question(capsys, monkeypatch):
    """`garden eval-retrieval DUMP --adapt --folds 2` on the bundled sample: two short real trainings, each
    without one fold; every question is scored once, by the model that did not see it."""
    import functools
    import json

    from garden_assets.cli import main

    from .conftest import SAMPLE_DROPS

    held_out = []
    train = functools.partial(adapt.adapt_embedder, options=adapt.AdaptOptions(epochs=1.0, max_seconds=15.0))
    monkeypatch.setattr(adapt, "adapt_embedder", lambda pairs, held, *a, **kw: held_out.append(held) or train(
        pairs, held, *a, **kw))
    dump = SAMPLE_DROPS / "sample-gardening" / "Posts.xml"
    assert main(["eval-retrieval", str(dump), "--adapt", "--folds", "2", "--key", "answer", "--mode", "hybrid",
                 "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {r["model"]: r for r in map(json.loads, out.splitlines())}
    assert set(rows) == {"minilm", "adapted"} and {r["folds"] for r in rows.values()} == {2}
    assert len(held_out) == 2 and not held_out[0] & held_out[1]
    assert rows["adapted"]["queries"] == rows["minilm"]["queries"] == len(held_out[0] | held_out[1])
    assert "fold-1-of-2" in err and "fold-2-of-2" in err
