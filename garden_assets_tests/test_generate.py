"""Batched generation, settings validation, the RAG prompt within the window, answer metrics (tiny model)."""

import pytest
import torch

from garden_assets.llm.generate import GenerationSettings, Generator, LoopGuard
from garden_assets.llm.metrics import normalize_answer, rouge_l, token_f1
from .tiny_models import tiny_random_model
from garden_assets.llm.prompts import END_KEY, dolly_prompt, extract_response
from garden_assets.llm.rag import Assistant, Question, fit_rag_prompt
from garden_assets.retrieval.search import Hit

QUESTIONS = ["How deep do I plant garlic?", "Why are my tomato leaves yellow?", "When do I prune roses?",
             "Can I compost citrus peels and onion skins in a small worm bin on the balcony?", "Aphids?"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_random_model(tmp_path_factory.mktemp("tiny") / "model", max_positions=256)


@pytest.fixture(scope="module")
def generator(tiny):
    return Generator.load(tiny, batch_size=3)


def test_batched_greedy_matches_one_at_a_time_default_generate(generator):
    settings = GenerationSettings(max_new_tokens=12)
    prompts = [dolly_prompt(q) for q in QUESTIONS]
    batched = generator.generate(prompts, settings)
    tok, model = generator.tokenizer, generator.model
    for prompt, [got] in zip(prompts, batched):
        enc = tok(prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=12, do_sample=False)
        want = tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)
        assert got.text == extract_response(want)
        assert got.prompt_tokens == enc.input_ids.shape[1]
        assert 1 <= got.new_tokens <= 12 and got.latency_s > 0


def test_generation_stops_at_end_marker(generator, monkeypatch):
    """A row stops once its tail decodes to ``### End``; other rows of the batch go on."""
    tok = generator.tokenizer
    end_ids = tok(f"\n\n{END_KEY}", add_special_tokens=False)["input_ids"]
    real_generate = generator.model.generate

    def scripted(**kwargs):  # writes "A" + the end marker for the "first" prompt, "B" forever for the other
        stop = kwargs["stopping_criteria"][0]
        ids = kwargs["input_ids"]
        a_then_end = tok("A", add_special_tokens=False)["input_ids"] + end_ids  # for the "first" prompt
        script = [a_then_end if "first" in tok.decode(row) else [] for row in ids]
        b = tok("B", add_special_tokens=False)["input_ids"][0]
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        for step in range(kwargs["generation_config"].max_new_tokens):
            nxt = torch.tensor([[script[r][step] if step < len(script[r]) else b] for r in range(ids.shape[0])])
            nxt[done] = tok.pad_token_id
            ids = torch.cat([ids, nxt], dim=1)
            done |= stop(ids, None)
            if done.all():
                break
        return ids

    monkeypatch.setattr(generator.model, "generate", scripted)
    a, b = generator.generate(["first", "second"], GenerationSettings(max_new_tokens=20))
    assert a[0].text == "A" and a[0].new_tokens == 1 + len(end_ids) and a[0].ended
    assert b[0].text.startswith("BB") and b[0].new_tokens == 20 and not b[0].ended
    monkeypatch.setattr(generator.model, "generate", real_generate)


def test_sampling_and_beams_and_return_sequences(generator):
    prompts = [dolly_prompt(q) for q in QUESTIONS[:2]]
    sampled = generator.generate(prompts, GenerationSettings(max_new_tokens=6, do_sample=True, temperature=0.7,
                                                             top_p=0.9, top_k=20, num_return_sequences=3, seed=1))
    assert [len(x) for x in sampled] == [3, 3]
    again = generator.generate(prompts, GenerationSettings(max_new_tokens=6, do_sample=True, temperature=0.7,
                                                           top_p=0.9, top_k=20, num_return_sequences=3, seed=1))
    assert [[g.text for g in x] for x in sampled] == [[g.text for g in x] for x in again]  # seeded
    beams = generator.generate(prompts, GenerationSettings(max_new_tokens=6, num_beams=2, num_return_sequences=2,
                                                           repetition_penalty=1.3))
    assert [len(x) for x in beams] == [2, 2]


@pytest.mark.parametrize("bad, message", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 10**6}, "max_new_tokens"),
    ({"temperature": 0}, "temperature"), ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"),
    ({"num_beams": 0}, "num_beams"), ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"num_return_sequences": 2}, "needs do_sample"), ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ({"stop_loop_tokens": 2}, "stop_loop_tokens"), ({"beam_size": 3}, "unknown generation settings"),
])
def test_settings_out_of_range_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings.from_dict(bad)


def test_settings_label_names_what_differs():
    assert GenerationSettings().label() == "greedy"
    assert GenerationSettings(num_beams=4, repetition_penalty=1.2).label() == "num_beams=4, repetition_penalty=1.2"


def test_prompt_longer_than_window_is_an_error(generator):
    with pytest.raises(ValueError, match=r"prompt 1 is \d+ tokens; the context window \(256\)"):
        generator.generate(["short", "word " * 300], GenerationSettings(max_new_tokens=8))
    assistant = Assistant(generator)
    with pytest.raises(ValueError, match="question is empty"):
        assistant.ask([Question("   ")], rag=False)
    with pytest.raises(ValueError, match="context window"):
        assistant.ask([Question("soil " * 400)], rag=False)
    with pytest.raises(ValueError, match="materialize qa_index"):
        assistant.ask([Question("soil?")], rag=True)


def _hit(i, words):
    return Hit(answer_id=i, question_id=100 + i, title=f"t{i}", text=" ".join(["mulch"] * words),
               source_url=f"https://x/a/{i}", is_accepted=False, answer_score=1, score=1.0 / i)


def test_rag_prompt_fits_window_trims_and_drops(generator):
    tok = generator.tokenizer
    count = generator.count_tokens
    hits = [_hit(1, 40), _hit(2, 500), _hit(3, 3), _hit(4, 3)]
    q = Question("What mulch for strawberries?")
    full = fit_rag_prompt(q, hits[:1], count, 10_000, tokenizer=tok)
    assert full.docs_trimmed == full.docs_dropped == 0 and [s.answer_id for s in full.sources] == [1]
    limit = full.prompt_tokens + 60  # room for part of the long doc
    fitted = fit_rag_prompt(q, hits, count, limit, tokenizer=tok)
    assert fitted.prompt_tokens <= limit
    assert [s.answer_id for s in fitted.sources] == [1, 2] and fitted.sources[1].trimmed
    assert fitted.docs_trimmed == 1 and fitted.docs_dropped == 2  # the prompt is full after the cut
    assert "Knowing this context:" in fitted.prompt and "Answer the question: What mulch" in fitted.prompt
    # no tokenizer to cut with: the long document is dropped and the short ones after it still fit
    dropped = fit_rag_prompt(q, hits, count, limit)
    assert [s.answer_id for s in dropped.sources] == [1, 3, 4] and dropped.docs_dropped == 1
    with pytest.raises(ValueError, match="context window leaves 5"):
        fit_rag_prompt(q, hits, count, 5)


def test_token_f1_and_rouge_l():
    assert normalize_answer("The Soil, an acid one!") == "soil acid one"
    assert token_f1("acidic soil", "The soil must be acidic") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("clay", "sand") == 0.0
    assert rouge_l("plant garlic deep", "plant garlic deep") == 1.0
    assert 0 < rouge_l("plant the garlic cloves", "plant garlic 5 cm deep") < 1
    assert rouge_l("", "anything") == 0.0


def test_no_repeat_ngram_size_stops_a_loop(generator):
    """A random tiny model loops within a few tokens; the setting reaches generate and forbids repeated 3-grams."""
    tok, model = generator.tokenizer, generator.model
    enc = tok(dolly_prompt(QUESTIONS[0]), return_tensors="pt")

    def new_ids(settings):
        with torch.inference_mode():
            out = model.generate(**enc, generation_config=settings.to_generation_config(tok))
        ids = out[0, enc.input_ids.shape[1]:].tolist()
        return len(ids) - 2 - len({tuple(ids[i:i + 3]) for i in range(len(ids) - 2)})

    assert new_ids(GenerationSettings(max_new_tokens=40)) > 0  # the loop the setting must remove
    assert new_ids(GenerationSettings(max_new_tokens=40, no_repeat_ngram_size=3)) == 0


def test_loop_guard_stops_at_the_first_verbatim_repeat():
    cycle = [5, 6, 7, 8, 9]
    guard = LoopGuard(8)
    pushed = 0
    for t in [1, 2] + cycle * 6:
        pushed += 1
        if guard.push(t):
            break
    assert guard.looped and pushed == 2 + 8 + len(cycle)  # the newest 8 tokens first equal an earlier span
    assert guard.kept == pushed - 8
    assert LoopGuard.cut([1, 2] + cycle * 6, 8) == (guard.kept, True)
    assert LoopGuard.cut(list(range(100)), 8) == (100, False)  # no span repeats
    assert LoopGuard.cut(cycle * 6, 0) == (30, False)  # 0: never


def test_generation_stops_a_loop_and_cuts_the_repeat(generator):
    """The tiny random model loops within a few tokens: with stop_loop_tokens it stops there (not ended, looped)
    and its text is the start of the unstopped answer; with 0 it runs to max_new_tokens."""
    prompts = [dolly_prompt(q) for q in QUESTIONS[:3]]
    free = generator.generate(prompts, GenerationSettings(max_new_tokens=80, stop_loop_tokens=0))
    stopped = generator.generate(prompts, GenerationSettings(max_new_tokens=80, stop_loop_tokens=8))
    assert all(f[0].new_tokens == 80 and not f[0].looped for f in free if not f[0].ended)
    looped = [(f[0], s[0]) for f, s in zip(free, stopped) if s[0].looped]
    assert looped, "the random model should loop"
    for f, s in looped:
        assert not s.ended and s.new_tokens < 80
        assert f.text.startswith(s.text) and len(s.text) < len(f.text)


def bag_of_words(texts):
    """Unit bag-of-words vectors: identical sentences → cosine 1.0, disjoint ones → 0.0 (a stand-in embedder)."""
    import numpy as np

    vocab = sorted({w for t in texts for w in t.lower().split()})
    v = np.array([[t.lower().split().count(w) for w in vocab] for t in texts], dtype=float)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)


def test_repeated_ngrams_and_faithfulness():
    embed = bag_of_words
    from garden_assets.llm.metrics import faithfulness, repeated_ngram_share, sentences

    assert repeated_ngram_share("water the roots deeply once a week") == 0.0
    loop = "I have had problems with acidic soil. " * 4
    assert repeated_ngram_share(loop) > 0.6 and repeated_ngram_share("") == 0.0
    assert sentences("Yes. Water them deeply every week. Hope this helps!") == ["Water them deeply every week."]

    source = "Blueberries want acidic soil around pH 5. Add pine needles as mulch every spring."
    assert faithfulness("Blueberries want acidic soil around pH 5.", [source], embed) == 1.0
    half = "Blueberries want acidic soil around pH 5. Roses love a sunny south wall."
    assert faithfulness(half, [source], embed) == 0.5
    assert faithfulness(half, [], embed) is None and faithfulness("Yes.", [source], embed) is None


def test_a_quoted_passage_fits_the_answer_budget():
    """The defaults agree: a model that quotes one whole (capped) passage still writes ``### End`` in budget, and
    the fine-tune's answers are cut as passages are (the target of an oracle row is its passage)."""
    from garden_assets.llm.dataset import DatasetOptions
    from garden_assets.llm.rag import DEFAULT_RETRIEVAL

    budget = GenerationSettings().max_new_tokens
    assert DEFAULT_RETRIEVAL.passage_tokens + 8 <= budget  # "\n\n### End" and EOS are < 8 tokens
    assert DEFAULT_RETRIEVAL.context_tokens + 8 <= budget  # so does one that restates the question's body
    assert DatasetOptions().answer_tokens == DEFAULT_RETRIEVAL.passage_tokens
    assert DatasetOptions().context_tokens == DEFAULT_RETRIEVAL.context_tokens  # training prompts cut bodies alike


SOURCE = "Blueberries want acidic soil around pH 5. Add pine needles as mulch every spring."


def test_an_unsupported_rag_answer_is_replaced_by_its_top_source():
    from garden_assets.llm.rag import Answer, Source, grounded

    sources = [Source(1, 10, "Soil for blueberries?", "https://x/a/1", 0.9), Source(2, 20, "Roses?", "https://x/a/2", 0.5)]
    passages = [SOURCE, "Roses love a sunny south wall."]

    def answer(text):
        return Answer(question="What soil do blueberries like?", answer=text, sources=sources, rag=True,
                      passages=passages)

    kept = answer("Blueberries want acidic soil around pH 5. Roses love a sunny south wall.")
    assert grounded(kept, bag_of_words) is kept  # every sentence supported (by either passage)
    half = answer("Blueberries want acidic soil around pH 5. I think my cat ate the hose pipe.")
    assert grounded(half, bag_of_words) is half  # half supported: not a majority unsupported
    short = answer("Pine needles.")  # nothing long enough to judge: kept
    assert grounded(short, bag_of_words) is short
    for text in ("I'm not sure what you're talking about.", ""):
        quoted = grounded(answer(text), bag_of_words)
        assert quoted.quoted and quoted.model_answer == text
        assert quoted.answer == SOURCE and quoted.passages == [SOURCE] and [s.answer_id for s in quoted.sources] == [1]


class _Store:
    """A one-hit index: ``search`` always finds SOURCE; ``embedder`` is the bag-of-words stand-in."""

    class embedder:
        embed = staticmethod(bag_of_words)

    def search(self, question, k, mode, where=None, vector=None):
        return [Hit(answer_id=1, question_id=10, title="Soil for blueberries?", text=SOURCE,
                    source_url="https://x/a/1", is_accepted=True, answer_score=3, score=0.9)][:k]


def test_the_assistant_quotes_the_source_unless_told_not_to(generator, monkeypatch):
    """A real generation whose text is replaced by an unsupported sentence (the tiny random model writes token
    soup, too short to judge): by default the answer is the source; with ``quote_unsupported=False`` the model's."""
    import dataclasses

    unsure = "I'm not sure what you're talking about."
    real = generator.generate
    monkeypatch.setattr(generator, "generate", lambda prompts, settings: [
        [dataclasses.replace(o, text=unsure) for o in outs] for outs in real(prompts, settings)])
    settings = GenerationSettings(max_new_tokens=8)
    question = [Question("What soil do blueberries like?")]
    [quoted] = Assistant(generator, _Store()).ask(question, settings)
    [raw] = Assistant(generator, _Store(), quote_unsupported=False).ask(question, settings)
    assert not raw.quoted and raw.model_answer is None and raw.answer == unsure
    assert quoted.quoted and quoted.answer == SOURCE and quoted.model_answer == unsure
    assert quoted.new_tokens == raw.new_tokens > 0  # the generation is still reported
    [no_rag] = Assistant(generator, _Store()).ask(question, settings, rag=False)
    assert not no_rag.quoted and no_rag.answer == unsure  # nothing cited: nothing to quote


class _SimilarStore(_Store):
    """Hits with a cosine similarity that depends on the question: 0.6 for blueberries, 0.1 otherwise."""

    def search(self, question, k, mode, where=None, vector=None):
        import dataclasses

        [hit] = super().search(question, k, mode, where, vector)
        return [dataclasses.replace(hit, similarity=0.6 if "blueberr" in question.lower() else 0.1)]


def test_below_the_relevance_floor_the_answer_is_withheld_without_running_the_model(generator, monkeypatch):
    """A question whose nearest passage is less similar than ``min_similarity`` gets NOT_FOUND, no source, and no
    prompt reaches the model (the other question of the batch still does); ``None`` turns the floor off, and a hit
    with no similarity (BM25 alone) is never withheld."""
    import dataclasses

    from garden_assets.llm.rag import NOT_FOUND, above_floor, pasted_answer, relevant_hits

    prompts: list[str] = []
    real = generator.generate
    monkeypatch.setattr(generator, "generate", lambda ps, settings: prompts.extend(ps) or real(ps, settings))
    settings = GenerationSettings(max_new_tokens=2)
    questions = [Question("How do I configure a Kubernetes ingress?"), Question("What soil do blueberries like?")]
    off, on = Assistant(generator, _SimilarStore(), min_similarity=0.25).ask(questions, settings)
    assert off.declined and off.answer == NOT_FOUND and not off.sources and off.new_tokens == 0 and off.rag
    assert not on.declined and [s.answer_id for s in on.sources] == [1]
    assert len(prompts) == 1 and "blueberries" in prompts[0]
    prompts.clear()
    Assistant(generator, _SimilarStore(), min_similarity=None).ask(questions, settings)
    assert len(prompts) == 2
    prompts.clear()  # every question withheld: no generation at all
    [alone] = Assistant(generator, _SimilarStore(), min_similarity=0.25).ask(questions[:1], settings)
    assert alone.declined and not prompts
    # the no-model anchor withholds the same way
    pasted = pasted_answer(_SimilarStore(), questions[0], min_similarity=0.25)
    assert pasted.declined and pasted.answer == NOT_FOUND and not pasted.sources
    assert pasted_answer(_SimilarStore(), questions[0], min_similarity=None).answer == SOURCE
    # the floor applies to the whole pool the consensus chooses from, not to the search's top hit alone
    class _TwoHits(_Store):
        def search(self, question, k, mode, where=None, vector=None):
            [hit] = super().search(question, k, mode, where, vector)
            return [dataclasses.replace(hit, answer_id=2, similarity=0.1), dataclasses.replace(hit, similarity=0.6)][:k]

    assert [h.answer_id for h in relevant_hits(_TwoHits(), "q", k=1, mode="hybrid", consensus_pool=6,
                                               min_similarity=0.25)] == [1]
    assert not relevant_hits(_TwoHits(), "q", k=1, mode="hybrid", consensus_pool=None, min_similarity=0.25)
    bm25 = dataclasses.replace(_Store().search("q", 1, "fts")[0], similarity=None)
    assert above_floor([bm25], 0.99) == [bm25] and above_floor([bm25], None) == [bm25]


def test_the_relevance_floor_is_a_cosine():
    from garden_assets.llm.rag import RetrievalSetting

    for bad in (1.5, -2, "high"):
        with pytest.raises(ValueError, match="min_similarity is a cosine similarity"):
            RetrievalSetting(min_similarity=bad)
    assert "min_similarity=None" in RetrievalSetting(min_similarity=None).label()


def test_the_assistant_shows_a_long_body_cut_to_its_leading_sentences(generator, monkeypatch):
    """Every prompt, RAG or not, holds the question body cut to context_tokens (as training prompts do);
    ``context_tokens=None`` shows it whole."""
    from garden_assets.llm.rag import Question, capped_question

    body = "My blueberry leaves turn red in June. " + "The bed gets the afternoon sun and some wind. " * 3
    prompts: list[str] = []
    real = generator.generate
    monkeypatch.setattr(generator, "generate", lambda ps, settings: prompts.extend(ps) or real(ps, settings))
    question, settings = [Question("What soil do blueberries like?", body)], GenerationSettings(max_new_tokens=2)
    for rag in (True, False):
        Assistant(generator, _Store(), context_tokens=32).ask(question, settings, rag=rag)
        Assistant(generator, _Store(), context_tokens=None).ask(question, settings, rag=rag)
    lead = capped_question(question[0], generator.tokenizer, 32).context
    assert body.startswith(lead) and len(lead) < len(body) / 2
    capped, whole = prompts[0::2], prompts[1::2]
    assert all(lead in p and body.strip() not in p for p in capped) and all(body.strip() in p for p in whole)


def test_a_quoted_answer_is_scored_as_printed_and_as_the_model_wrote_it():
    from garden_assets.llm.evaluation import EvalQuestion, Variant, answer_row
    from garden_assets.llm.rag import DEFAULT_RETRIEVAL, Answer, Source, grounded

    unsure = "I'm not sure what you're talking about."
    quoted = grounded(Answer(question="Soil for blueberries?", answer=unsure, rag=True, passages=[SOURCE],
                             sources=[Source(1, 10, "Soil?", "https://x/a/1", 0.9)]), bag_of_words)
    q = EvalQuestion(question_id=5, instruction="Soil for blueberries?", context="",
                     references=["Acidic soil, pH 5, with pine needles as mulch."])
    row = answer_row("main", Variant.parse("tuned+rag"), GenerationSettings(), DEFAULT_RETRIEVAL, q, quoted,
                     bag_of_words)
    assert row["quoted"] and row["answer"] == SOURCE and row["model_answer"] == unsure
    assert row["token_f1"] == round(token_f1(SOURCE, q.references[0]), 4) > row["model_token_f1"] == 0.0
    assert row["faithfulness"] == 1.0 and row["model_faithfulness"] == 0.0


def test_memoized_embed_embeds_each_distinct_text_once_and_keeps_the_order():
    import numpy as np

    from garden_assets.llm.metrics import MemoizedEmbed, faithfulness

    calls: list[list[str]] = []

    def embed(texts):  # one fixed vector per text, whatever the batch
        calls.append(list(texts))
        return np.array([[len(t), t.count("o"), 1.0] for t in texts]) / 10

    memo = MemoizedEmbed(embed)
    first = memo(["soil", "pots", "soil"])
    again = memo(["pots", "roots", "soil"])
    assert calls == [["soil", "pots"], ["roots"]]
    assert np.array_equal(first, embed(["soil", "pots", "soil"]))
    assert np.array_equal(again, embed(["pots", "roots", "soil"]))
    answer, passages = "Blueberries want acidic soil. Roses want sun all day.", [SOURCE]
    assert faithfulness(answer, passages, MemoizedEmbed(bag_of_words)) == faithfulness(answer, passages, bag_of_words)
