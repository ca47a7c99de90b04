"""qa_pairs → finetune dataset: format, filters, dropping, split, files."""

from __future__ import annotations

import json
import random
from dataclasses import replace

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
from .tiny_models import build_small_tokenizer
from garden_assets.llm.prompts import dolly_completion, dolly_prompt

PLAIN = {"valid_size": 0, "answer_tokens": None}  # whole answers, no valid split: row counts are the pairs'
WORDS = "soil water tomato basil prune compost mulch seed leaf root sun shade frost pot bed weed slug aphid".split()


def make_pairs(n_questions: int, answers_per_question: int = 1, seed: int = 0, words: tuple[int, int] = (5, 40)):
    """A qa_pairs frame with the contract's columns; the first answer of each question is accepted."""
    rng = random.Random(seed)
    rows = []
    for q in range(n_questions):
        for a in range(answers_per_question):
            rows.append({
                "site": "gardening.stackexchange.com",
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
        schema={"site": pl.String, "question_id": pl.Int64, "answer_id": pl.Int64, "instruction": pl.String, "context": pl.String,
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
        build_finetune_dataset(pairs, tok, DatasetOptions(answers="accepted"))


def test_every_row_too_long(tok):
    with pytest.raises(ValueError, match="every one of the 10 rows is longer than max_length=20"):
        build_finetune_dataset(make_pairs(10), tok, DatasetOptions(max_length=20))


def test_long_rows_dropped_never_truncated(tok):
    pairs = make_pairs(30, words=(5, 200))
    ds = build_finetune_dataset(pairs, tok, DatasetOptions(max_length=200, test_size=0, **PLAIN))
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
    ds = build_finetune_dataset(make_pairs(50), tok, DatasetOptions(test_size=200, **PLAIN))
    assert (ds.stats.train_rows, ds.stats.test_rows) == (40, 10)
    ds = build_finetune_dataset(make_pairs(50), tok, DatasetOptions(test_size=3))
    assert ds.stats.test_rows == 3
    ds = build_finetune_dataset(make_pairs(3), tok, DatasetOptions(**PLAIN))
    assert ds.stats.test_rows == 0 and ds.stats.train_rows == 3


def test_answer_selection_and_question_split(tok):
    pairs = make_pairs(40, answers_per_question=3)
    accepted = build_finetune_dataset(pairs, tok, DatasetOptions(answers="accepted", test_size=5))
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
    ds = build_finetune_dataset(pairs, tok, DatasetOptions(test_size=0, **PLAIN))
    assert ds.stats.dropped_empty == 3 and ds.stats.train_rows == 7


def test_files_written_atomically(tok, tmp_path):
    ds = build_finetune_dataset(make_pairs(20), tok, DatasetOptions(test_size=4))
    paths = write_dataset(ds, tmp_path / "ft")
    assert read_jsonl(paths["train"]) == ds.train and read_jsonl(paths["test"]) == ds.test
    assert json.loads(paths["stats"].read_text())["test_rows"] == 4
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["stats.json", "test.jsonl", "train.jsonl", "valid.jsonl"]

    # a failure while writing leaves the previous file intact and no temporary behind
    def rows():
        yield {"ok": 1}
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(rows(), paths["train"])
    assert read_jsonl(paths["train"]) == ds.train
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["stats.json", "test.jsonl", "train.jsonl", "valid.jsonl"]


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
                                            DatasetOptions(test_size=2, **PLAIN))
    assert stats.train_rows == 18 and len(read_jsonl(paths["train"])) == 18 and len(read_jsonl(paths["test"])) == 2


@pytest.fixture(scope="module")
def raft_store(tmp_path_factory):
    """A real LanceDB index (pseudo-embeddings: retrieval mechanics, not semantics) over 40 questions × 2 answers."""
    from garden_assets.retrieval.store import QAStore
    from garden_assets.retrieval.testing import HashEmbedder

    pairs = make_pairs(40, answers_per_question=2)
    store = QAStore(tmp_path_factory.mktemp("raft") / "lancedb", HashEmbedder())
    store.upsert(pairs)
    store.ensure_indexes()
    return pairs, store


def test_raft_prompts_hold_passages_and_never_a_held_out_answer(tok, raft_store):
    pairs, store = raft_store
    options = DatasetOptions(answers="all", test_size=16, valid_size=8, rag_k=2, oracle_share=0.5, max_length=2048,
                             answer_tokens=None, rag_mode="vector")
    ds = build_finetune_dataset(pairs, tok, options, store)
    assert ds.stats.rag_k == 2 and ds.stats.valid_rows == 8 and ds.stats.test_rows == 16
    held_out = {r["question_id"] for r in ds.valid + ds.test}
    leaks = pairs.filter(pl.col("question_id").is_in(list(held_out)))["response"].to_list()
    for row in ds.train + ds.valid + ds.test:
        assert row["prompt"].count("Knowing this context:") == 1 and row["passages"] == 2
        own = pairs.filter(pl.col("answer_id") == row["answer_id"])["response"].item()
        # no held-out answer in any prompt, except a held-out row never sees its own answer either
        assert not [t for t in leaks if t in row["prompt"]]
        assert (own in row["prompt"]) == row["oracle"]
    oracle = [r["oracle"] for r in ds.train]
    assert ds.stats.oracle_rows == sum(oracle) and 0.3 < sum(oracle) / len(oracle) < 0.7  # ≈ oracle_share
    assert not any(r["oracle"] for r in ds.valid + ds.test)  # as in evaluation: distractors only
    # the same prompt module as answering: a RAG prompt ends like every Dolly prompt
    assert all(r["prompt"].endswith("### Response:\n") for r in ds.train)


def test_raft_config_that_cannot_work_fails_before_anything_is_built(tok, raft_store, tmp_path):
    from garden_assets.retrieval.store import QAStore
    from garden_assets.retrieval.testing import HashEmbedder

    pairs, _ = raft_store
    small = QAStore(tmp_path / "lancedb", HashEmbedder())
    small.upsert(make_pairs(3))
    with pytest.raises(ValueError, match="more than 3 answers; qa_index holds 3"):
        build_finetune_dataset(pairs, tok, DatasetOptions(rag_k=3), small)
    with pytest.raises(ValueError, match="needs the qa_index"):
        build_finetune_dataset(pairs, tok, DatasetOptions(rag_k=2))
    for bad in ({"oracle_share": -0.1}, {"oracle_share": 1.5}, {"rag_k": -1}, {"answer_tokens": 0},
                {"rag_target": "summary"}, {"context_tokens": 8}):
        with pytest.raises(ValueError):
            DatasetOptions(**bad)


def test_long_train_answers_keep_their_leading_sentences(tok):
    from garden_assets.llm.rag import cap_passage, lead_within

    answer = "Water deeply once a week. Mulch keeps the soil moist. " * 20
    lead = lead_within(answer, tok, 60)
    assert lead and answer.startswith(lead) and lead.endswith(".")
    assert len(tok(lead, add_special_tokens=False)["input_ids"]) <= 60
    assert lead_within("short answer.", tok, 60) == "short answer."
    assert lead_within("x" * 500, tok, 60) is None  # no sentence fits: the train row is dropped (counted)
    # a passage in a RAG prompt is cut the same way; one with no sentence that fits gets a token prefix + " …"
    assert cap_passage(answer, tok, 60) == lead
    assert cap_passage("x" * 500, tok, 60).endswith(" …") and cap_passage(answer, tok, None) == answer


@pytest.mark.parametrize("rag_k", [0, 2])
def test_every_prompt_shows_a_long_body_cut_as_answering_cuts_it(tok, raft_store, rag_k):
    """A question body longer than context_tokens keeps its leading sentences in train, valid and test prompts,
    RAG or plain (as `Assistant.ask` cuts it); the row's context column keeps the whole body."""
    from garden_assets.llm.rag import Question, capped_question

    pairs, store = raft_store
    body = "My tomato leaves curl at the edges. " + "The plants sit in full sun all day long. " * 30
    long = pairs.with_columns(pl.lit(body).alias("context"))
    options = DatasetOptions(answers="all", test_size=8, valid_size=4, rag_k=rag_k, max_length=4096,
                             rag_mode="vector", context_tokens=40)
    ds = build_finetune_dataset(long, tok, options, store if rag_k else None)
    lead = capped_question(Question("q", body), tok, 40).context
    assert body.startswith(lead) and lead.endswith(".") and len(tok(lead)["input_ids"]) <= 41
    for r in ds.train + ds.valid + ds.test:
        assert r["context"] == body.strip() and lead in r["prompt"] and body.strip() not in r["prompt"]
    whole = build_finetune_dataset(long, tok, replace(options, context_tokens=None), store if rag_k else None)
    assert all(body.strip() in r["prompt"] for r in whole.train)


def test_an_oracle_rows_target_is_the_passage_it_shows(tok, raft_store):
    """With long answers, an oracle train row's completion is the very (capped) passage in its prompt, so the model
    learns to quote one passage and stop; test rows keep whole answers (the references)."""
    from garden_assets.llm.rag import cap_passage

    pairs, store = raft_store
    long = pairs.with_columns((pl.col("response") + " " + pl.col("response").str.replace_all("Water", "Rain")
                               + ". More on this later. " * 30).alias("response"))
    ds = build_finetune_dataset(long, tok, DatasetOptions(answers="all", test_size=8, valid_size=4, rag_k=2,
                                                          passage_tokens=48, answer_tokens=48, max_length=2048,
                                                          rag_mode="vector", rag_target="answer"), store)
    oracle = [r for r in ds.train if r["oracle"]]
    assert oracle and ds.stats.answers_shortened >= len(oracle)
    for r in oracle:
        target = r["completion"].removesuffix(dolly_completion(""))
        assert target.strip() and target != r["response"] and target in r["prompt"]
        assert target == cap_passage(r["response"], tok, 48)
    assert all(r["completion"] == dolly_completion(r["response"]) for r in ds.test)


def test_oracle_extract_takes_the_passage_leads_that_reproduce_the_answer():
    from garden_assets.llm.extractive import PASSAGE_JOIN, oracle_extract
    from garden_assets.llm.metrics import token_f1

    words = lambda t: len(t.split())
    passages = ["Beer traps catch slugs at night. Slugs hide under boards by day. Tomatoes like sun.",
                "Copper tape keeps slugs off raised beds. Roses need pruning in March."]
    reference = "Set beer traps at night and put copper tape round the beds to keep slugs off."
    extract, f1 = oracle_extract(passages, reference, words)
    # the lead of each passage, in passage order, each from its own passage; the off-topic rest left out
    assert extract == "Beer traps catch slugs at night." + PASSAGE_JOIN + "Copper tape keeps slugs off raised beds."
    assert f1 == pytest.approx(token_f1(extract, reference)) and f1 > max(token_f1(p, reference) for p in passages)
    # only a lead can be taken: a matching sentence behind an off-topic first one is out of reach
    buried, _ = oracle_extract(["Roses need pruning in March. Beer traps catch slugs at night."], reference, words)
    assert buried == ""
    # the token budget: only the single best lead fits in 7 words
    short, _ = oracle_extract(passages, reference, words, max_tokens=7)
    assert words(short) <= 7 and PASSAGE_JOIN not in short and short in " ".join(passages)
    assert oracle_extract(passages, "Zucchini flowers.", words) == ("", 0.0)  # nothing shared: no target


def test_extract_targets_are_made_of_the_rows_own_passages(tok, raft_store):
    """rag_target="extract": a train/valid row's completion is built only from sentences of the passages in its
    prompt, within answer_tokens; test rows keep their whole answers (the references)."""
    from garden_assets.llm.extractive import PASSAGE_JOIN

    pairs, store = raft_store
    options = DatasetOptions(answers="all", test_size=8, valid_size=4, rag_k=2, max_length=2048, rag_mode="vector",
                             answer_tokens=40, rag_target="extract")
    ds = build_finetune_dataset(pairs, tok, options, store)
    extracts = [r for r in ds.train + ds.valid if "extract_f1" in r]
    assert ds.stats.extract_rows == len(extracts) >= len(ds.train) // 2
    assert 0 < ds.stats.extract_f1 <= 1
    for r in extracts:
        target = r["completion"].removesuffix(dolly_completion(""))
        assert target and all(part in r["prompt"] for part in target.split(PASSAGE_JOIN))
        assert len(tok(target, add_special_tokens=False)["input_ids"]) <= 40
    # a distractor-only row's target is not its own answer, which its prompt does not hold
    assert any(not r["oracle"] and r["response"] not in r["completion"] for r in extracts)
    assert all(r["completion"] == dolly_completion(r["response"]) for r in ds.test)
    answer = build_finetune_dataset(pairs, tok, replace(options, rag_target="answer"), store)
    assert answer.stats.extract_rows == 0 and not any("extract_f1" in r for r in answer.train)


def test_consensus_puts_the_answer_the_others_restate_first():
    from garden_assets.llm.consensus import consensus_order

    texts = ["Water it weekly in summer.",
             "Use rainwater and ericaceous compost; blueberries need acid soil.",
             "Blueberries want acid soil: ericaceous compost, rainwater, pH 4.5 to 5.5.",
             "Acid soil and rainwater suit blueberries; ericaceous compost in pots."]
    order = consensus_order(texts)  # equal weights: agreement alone decides
    assert order[-1] == 0 and set(order[:3]) == {1, 2, 3}
    assert consensus_order(texts, [1.0, 0.95, 0.9, 0.9])[-1] == 0  # scores alike: still agreement
    assert consensus_order(["same words", "same words", "same words"]) == [0, 1, 2]  # ties keep the order
    # a hit the search is sure of keeps its place against short off-topic answers that share a few words
    slugs = ["Ducks. Seriously, a couple of runner ducks cleared my allotment.",
             "Horse manure is the culprit. Ask me how I know.", "Onion seed is the one that lets me down."]
    assert consensus_order(slugs)[0] != 0 and consensus_order(slugs, [1.0, 0.26, 0.24])[0] == 0


def _garlic_store(tmp_path, first_answer: str):
    """A six-answer index for "How deep do I plant garlic?": ``first_answer``, three clove answers that restate
    each other, two off-topic ones."""
    from garden_assets.retrieval.store import QAStore
    from garden_assets.retrieval.testing import HashEmbedder, sample_pairs

    rows = [(1, 11, "Garlic?", "Garlic planting depth?", first_answer),
            (2, 21, "Cloves?", "How to plant cloves", "Plant each clove 5 cm deep, pointy end up, in autumn; garlic likes sun."),
            (3, 31, "Autumn garlic", "When", "Plant each clove about 5 cm deep with the pointy end up in autumn; garlic."),
            (4, 41, "Bulbs", "Bulbs", "Each clove goes 5 cm deep, pointy end up, planted in autumn; that is garlic."),
            (5, 51, "Roses", "Roses", "Prune roses in late winter."),
            (6, 61, "Succulents", "Water", "Water succulents every two weeks.")]
    store = QAStore(tmp_path / "lancedb", HashEmbedder())
    store.upsert(sample_pairs(rows))
    store.ensure_indexes()
    return store


def test_pasted_anchors_search_top_and_consensus_top(tmp_path):
    """`retrieved` pastes the search's top hit; `reranked` pastes the consensus top of the pool, whole — here an
    answer that only repeats the question's words tops the search, and a clove answer the others restate wins."""
    from garden_assets.llm.consensus import consensus_order
    from garden_assets.llm.rag import Question, pasted_answer as paste, retrieve

    def pasted_answer(*args, **kw):  # hash embeddings have no meaning: no relevance floor
        return paste(*args, min_similarity=None, **kw)

    store = _garlic_store(tmp_path, "Garlic? Plant garlic deep, garlic likes it deep.")
    question = Question("How deep do I plant garlic?")
    pool = retrieve(store, question.text, k=6, mode="hybrid")
    top = pool[consensus_order([h.text for h in pool], [h.score for h in pool])[0]]
    assert pool[0].answer_id == 11 and top.answer_id in {21, 31, 41}
    assert pasted_answer(store, question).sources[0].answer_id == 11
    for pool_size in (None, 1):  # no pool, or a pool of one: the search's top hit
        assert pasted_answer(store, question, consensus_pool=pool_size).sources[0].answer_id == 11
    reranked = pasted_answer(store, question, consensus_pool=6)
    assert [s.answer_id for s in reranked.sources] == [top.answer_id] and reranked.answer == top.text
    assert pasted_answer(store, question, consensus_pool=6, exclude=[top.question_id]).sources[0].answer_id != top.answer_id


def test_rag_passages_choose_by_consensus_among_the_pool(tmp_path):
    """The k passages come from the top consensus_pool hits, in consensus order (here the off-topic second hit
    gives way to an answer the others restate); a pool ≤ k or None keeps the search order."""
    from garden_assets.llm.consensus import consensus_order
    from garden_assets.llm.rag import rag_passages, retrieve
    store = _garlic_store(tmp_path, "Garlic garlic planting depth: depends on garlic.")
    question = "How deep do I plant garlic?"
    pool = retrieve(store, question, k=6, mode="hybrid")
    chosen = [h.answer_id for h in rag_passages(store, question, k=2, mode="hybrid", passage_tokens=None,
                                                consensus_pool=6)]
    assert chosen == [pool[i].answer_id for i in consensus_order([h.text for h in pool], [h.score for h in pool])[:2]]
    assert chosen != [h.answer_id for h in pool[:2]] and chosen[1] in {21, 41}  # a restated clove answer
    for same in (None, 2):
        assert [h.answer_id for h in rag_passages(store, question, k=2, mode="hybrid", passage_tokens=None,
                                                  consensus_pool=same)] == [h.answer_id for h in pool[:2]]
    with pytest.raises(ValueError, match="consensus_pool"):
        DatasetOptions(rag_k=2, consensus_pool=0)
