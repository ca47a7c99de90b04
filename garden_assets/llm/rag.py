"""Answers with or without retrieval: the "Knowing this context: … Answer the question: …" prompt, fitted to
the context window, and `Assistant`, which retrieves, prompts, generates and returns answers with sources.

Fitting: documents go in rank order. One that does not fit whole is trimmed to the room left (when at least
``min_doc_tokens`` remain; the prompt is then full) or dropped (a later, shorter one may still fit). Both are
counted and only documents that made it into the prompt are returned as sources.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

from ..retrieval.embedder import DEFAULT_KEY, KEYS
from ..retrieval.search import DEFAULT_K, DEFAULT_MODE, check_mode
from .consensus import consensus_order
from .generate import GenerationSettings, TokenBudget
from .metrics import faithfulness, sentences
from .prompts import dolly_prompt, rag_prompt

MIN_DOC_TOKENS = 32
# a passage's and a question body's cap in a prompt: below max_new_tokens, so a model that copies one whole still
# ends within its budget (docs/evaluation.md, recipe runs)
TEXT_TOKENS = 192
QUOTE_BELOW = 0.5  # `grounded`: a majority of the answer's judged sentences unsupported → quote the source
# RetrievalSetting.min_similarity: a passage less similar to the question than this (cosine, the packaged MiniLM) is
# never shown, and a question with none above it gets NOT_FOUND, not the nearest passage pasted confidently. Chosen on
# our own data (benchmarks/relevance_floor.py): the bundled sample's held-out questions all find an answer at ≥ 0.31;
# 73 % of our 30 written off-topic questions find none at 0.25 (docs/evaluation.md). Another embedder needs its own.
MIN_SIMILARITY = 0.25
NOT_FOUND = "I found nothing in the indexed posts that answers this question."


@dataclass(frozen=True)
class RetrievalSetting:
    k: int = DEFAULT_K  # passages per RAG prompt (RAFT training prompts: dataset.RAFT_K)
    key: str = DEFAULT_KEY
    mode: str = DEFAULT_MODE
    passage_tokens: int | None = TEXT_TOKENS  # each passage keeps its leading sentences within this (None: whole)
    # the question's body (the prompt's Input: block) likewise, in every prompt, RAG or not, as in training: the
    # tuned model sometimes restates a long body instead of answering
    context_tokens: int | None = TEXT_TOKENS
    # the k passages: those of this many search hits with the highest expected agreement with the others, weighted
    # by the search's scores (consensus.py; measured in docs/evaluation.md); None or ≤ k: the search order
    consensus_pool: int | None = 6
    # a model answer whose passages support fewer than half of its sentences is replaced by the top passage it cites
    # (`grounded`): a RAG answer never says what its source does not
    quote_unsupported: bool = True
    # hits less similar to the question (cosine) are dropped before the consensus; none left: the answer is withheld
    # (NOT_FOUND, ``declined``). None: no floor (``fts`` mode has no similarities: no floor either)
    min_similarity: float | None = MIN_SIMILARITY

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or not 1 <= self.k <= 50:
            raise ValueError(f"retrieval k must be 1..50, got {self.k!r}")
        if self.key not in KEYS:
            raise ValueError(f"retrieval key must be one of {KEYS}, got {self.key!r}")
        check_mode(self.mode)
        for name in ("passage_tokens", "context_tokens"):
            check_cap(name, getattr(self, name))
        check_consensus_pool(self.consensus_pool)
        check_min_similarity(self.min_similarity)

    def label(self) -> str:
        named = ("passage_tokens", "context_tokens", "consensus_pool", "quote_unsupported", "min_similarity")
        changed = "".join(f", {name}={getattr(self, name)}" for name in named
                          if getattr(self, name) != getattr(DEFAULT_RETRIEVAL, name))
        return f"k={self.k}, {self.key}, {self.mode}{changed}"


def check_cap(name: str, tokens: int | None) -> None:
    if tokens is not None and not (isinstance(tokens, int) and tokens >= MIN_DOC_TOKENS):
        raise ValueError(f"{name} must be ≥ {MIN_DOC_TOKENS} tokens (None: whole), got {tokens!r}")


def check_consensus_pool(pool: int | None) -> None:
    if pool is not None and not (isinstance(pool, int) and 1 <= pool <= 50):
        raise ValueError(f"consensus_pool must be 1..50 hits (None: the search order), got {pool!r}")


def check_min_similarity(floor: float | None) -> None:
    if floor is not None and not (isinstance(floor, (int, float)) and -1.0 <= floor <= 1.0):
        raise ValueError(f"min_similarity is a cosine similarity, -1..1 (None: no floor), got {floor!r}")


DEFAULT_RETRIEVAL = RetrievalSetting()
DEFAULT_PASSAGE_TOKENS = DEFAULT_RETRIEVAL.passage_tokens


def leading_sentences(text: str, fits) -> str | None:
    """``text`` if ``fits(text)``, else its longest run of leading sentences that fits; None if none does."""
    if fits(text):
        return text
    parts, best = sentences(text, min_words=1), None
    for n in range(1, len(parts) + 1):
        if not fits(" ".join(parts[:n])):
            break
        best = " ".join(parts[:n])
    return best


def lead_within(text: str, tokenizer, max_tokens: int) -> str | None:
    """``text``'s leading sentences within ``max_tokens`` tokens (None when even the first is longer): the one cut
    for passages and for the fine-tune's answers, so an oracle passage and its training target are the same text."""
    return leading_sentences(text, lambda t: len(tokenizer(t, add_special_tokens=False)["input_ids"]) <= max_tokens)


def cap_passage(text: str, tokenizer, max_tokens: int | None) -> str:
    """A passage cut to its leading sentences within ``max_tokens`` (a token prefix + " …" when even the first
    sentence is longer). Short passages keep a small model's copy short: it learns to quote, then stop."""
    if max_tokens is None or tokenizer is None:
        return text
    lead = lead_within(text, tokenizer, max_tokens)
    if lead is not None:
        return lead
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: max_tokens - 2]
    return tokenizer.decode(ids, skip_special_tokens=True).strip() + " …"


def capped_question(question: "Question", tokenizer, max_tokens: int | None) -> "Question":
    """``question`` with its body cut as a passage is (`cap_passage`): what every prompt shows of it."""
    if not question.context or max_tokens is None or tokenizer is None:
        return question
    return replace(question, context=cap_passage(question.context, tokenizer, max_tokens))


@dataclass(frozen=True)
class Source:
    answer_id: int
    question_id: int
    title: str
    url: str
    score: float
    trimmed: bool = False
    site: str = ""


@dataclass
class FittedPrompt:
    prompt: str
    sources: list[Source]
    prompt_tokens: int
    docs_retrieved: int
    docs_trimmed: int
    docs_dropped: int
    passages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Question:
    """What is asked: a title-like question and, optionally, its body (the Dolly ``Input:`` block)."""

    text: str
    context: str = ""


@dataclass
class Answer:
    question: str
    answer: str
    sources: list[Source] = field(default_factory=list)
    rag: bool = False
    prompt_tokens: int = 0
    new_tokens: int = 0
    latency_s: float = 0.0  # retrieval + the generation batch it was in
    retrieval_s: float = 0.0
    batch_tokens_per_s: float = 0.0
    docs_retrieved: int = 0
    docs_trimmed: int = 0
    docs_dropped: int = 0
    ended: bool = True  # the answer stopped by itself before max_new_tokens
    looped: bool = False  # stopped because it began repeating itself (GenerationSettings.stop_loop_tokens)
    alternatives: list[str] = field(default_factory=list)  # num_return_sequences > 1
    passages: list[str] = field(default_factory=list)  # the source texts as the prompt showed them
    quoted: bool = False  # the model's answer was unsupported by its passages: ``answer`` is the top passage
    model_answer: str | None = None  # what the model wrote, when ``quoted``
    model_faithfulness: float | None = None  # and how much of it all its passages supported, when ``quoted``
    declined: bool = False  # no passage retrieved at or above the relevance floor: ``answer`` is NOT_FOUND, no model ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def withheld(cls, question: str, seconds: float = 0.0) -> "Answer":
        """The answer to a question nothing retrieved is relevant to (`relevant_hits` empty): no model ran."""
        return cls(question=question.strip(), answer=NOT_FOUND, rag=True, latency_s=round(seconds, 3),
                   retrieval_s=round(seconds, 4), declined=True)


def check_question(text: str) -> str:
    text = (text or "").strip()
    if not text:
        raise ValueError("the question is empty")
    return text


def _sql(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def exclusion_filter(questions=(), site: str | None = None) -> str | None:
    """A search ``where`` that keeps only ``site`` (None: all sites) and skips these questions' answers: each a
    ``(site, question_id)`` (a post's identity) or a bare question id (that id on every site). None: no filter."""
    by_site: dict[str | None, set[int]] = {}
    for q in questions or ():
        if q is None:
            continue
        qsite, qid = q if isinstance(q, tuple) else (None, q)
        by_site.setdefault(qsite or None, set()).add(int(qid))
    parts = [f"site = {_sql(site)}"] if site else []
    for qsite, ids in sorted(by_site.items(), key=lambda kv: kv[0] or ""):
        not_in = f"question_id NOT IN ({', '.join(map(str, sorted(ids)))})"
        parts.append(not_in if qsite is None else f"(site != {_sql(qsite)} OR {not_in})")
    return " AND ".join(parts) or None


def retrieve(store, question: str, *, k: int, mode: str, exclude=(), vector=None, site: str | None = None) -> list:
    """The top ``k`` hits for ``question`` (from ``site`` only, if given), none from the questions in ``exclude``
    (one search for RAG answers, the ``retrieved`` anchor and RAFT training prompts alike); ``vector``: the
    question's embedding, if known."""
    if store is None:
        raise ValueError("RAG needs an index: materialize qa_index first")
    return store.search(check_question(question), k=k, mode=mode, where=exclusion_filter(exclude, site),
                        vector=vector)


def above_floor(hits: Sequence, min_similarity: float | None) -> list:
    """The hits at least ``min_similarity`` similar to the question (a hit with no similarity, from a BM25-only
    search, is kept; None: all)."""
    if min_similarity is None:
        return list(hits)
    return [h for h in hits if h.similarity is None or h.similarity >= min_similarity]


def relevant_hits(store, question: str, *, k: int, mode: str, consensus_pool: int | None, exclude=(), vector=None,
                  site: str | None = None, min_similarity: float | None = None) -> list:
    """The hits `rag_passages` chooses from: the search's top ``max(k, consensus_pool)`` at least ``min_similarity``
    similar to the question. Empty: nothing relevant, the answer is withheld (``garden ask`` checks this before it
    loads a model)."""
    hits = retrieve(store, question, k=max(k, consensus_pool or 0), mode=mode, exclude=exclude, vector=vector, site=site)
    return above_floor(hits, min_similarity)


def rag_passages(store, question: str, *, k: int, mode: str, tokenizer=None, passage_tokens: int | None,
                 consensus_pool: int | None, exclude=(), vector=None, site: str | None = None,
                 min_similarity: float | None = None) -> list:
    """The ``k`` hits a RAG prompt shows: `relevant_hits` ordered by consensus over the passages as the prompt cuts
    them, weighted by the hits' scores, the first ``k`` (``consensus_pool`` None or ≤ k: the search's top k)."""
    hits = relevant_hits(store, question, k=k, mode=mode, consensus_pool=consensus_pool, exclude=exclude,
                         vector=vector, site=site, min_similarity=min_similarity)
    if (consensus_pool or 0) > k and len(hits) > 1:
        order = consensus_order([cap_passage(h.text, tokenizer, passage_tokens) for h in hits], [h.score for h in hits])
        hits = [hits[i] for i in order]
    return hits[:k]


def pasted_answer(store, question: Question, *, k: int = 1, mode: str = DEFAULT_MODE, exclude=(),
                  site: str | None = None, consensus_pool: int | None = None,
                  min_similarity: float | None = DEFAULT_RETRIEVAL.min_similarity) -> "Answer":
    """The anchor a user has without any model: the top retrieved answer, pasted as is, with its source (NOT_FOUND
    when no hit reaches ``min_similarity``). ``consensus_pool``: the top of that many hits by consensus instead
    (`rag_passages`, over whole answers: with no model there is no tokenizer to cut them as a prompt does) — what
    the reranker gives without a model."""
    began = time.perf_counter()
    hits = rag_passages(store, question.text, k=k, mode=mode, passage_tokens=None, consensus_pool=consensus_pool,
                        exclude=exclude, site=site, min_similarity=min_similarity)
    seconds = time.perf_counter() - began
    top = hits[:1]
    return Answer(question=question.text.strip(), answer=top[0].text if top else NOT_FOUND, rag=True,
                  sources=[Source(h.answer_id, h.question_id, h.title, h.source_url, round(float(h.score), 4),
                                  site=h.site) for h in top],
                  latency_s=round(seconds, 3), retrieval_s=round(seconds, 4), docs_retrieved=len(hits),
                  passages=[h.text for h in top], declined=not top)


def fit_rag_prompt(question: Question, hits: Sequence, count_tokens, max_prompt_tokens: int, *, tokenizer=None,
                   min_doc_tokens: int = MIN_DOC_TOKENS,
                   passage_tokens: int | None = DEFAULT_PASSAGE_TOKENS) -> FittedPrompt:
    """The RAG prompt with as many retrieved documents (``Hit``s, best first) as fit in ``max_prompt_tokens``.

    ``count_tokens(text)`` counts a prompt's tokens; ``tokenizer`` (to trim a document by tokens) is optional —
    without it a document that does not fit is dropped, never cut.
    """
    text = check_question(question.text)
    base = count_tokens(rag_prompt(text, [], question.context))
    if base > max_prompt_tokens:
        raise ValueError(f"the question is {base} tokens with its prompt; the context window leaves "
                         f"{max_prompt_tokens} for the prompt")
    used: list[tuple[Any, str, bool]] = []
    trimmed = dropped = 0
    for n, hit in enumerate(hits):
        passages = [t for _, t, _ in used]
        doc = cap_passage(hit.text, tokenizer, passage_tokens)
        if count_tokens(rag_prompt(text, passages + [doc], question.context)) <= max_prompt_tokens:
            used.append((hit, doc, doc != hit.text))
            continue
        cut = _trim_to_fit(text, question.context, passages, doc, count_tokens, max_prompt_tokens, tokenizer,
                           min_doc_tokens)
        if cut is None:
            dropped += 1
            continue
        used.append((hit, cut, True))
        trimmed += 1
        dropped += len(hits) - n - 1  # the prompt is full now
        break
    prompt = rag_prompt(text, [t for _, t, _ in used], question.context)
    sources = [Source(h.answer_id, h.question_id, h.title, h.source_url, round(float(h.score), 4), cut, h.site)
               for h, _, cut in used]
    return FittedPrompt(prompt, sources, count_tokens(prompt), len(hits), trimmed, dropped, [t for _, t, _ in used])


def _trim_to_fit(question, context, passages, doc, count_tokens, limit, tokenizer, min_doc_tokens) -> str | None:
    """The longest token prefix of ``doc`` (≥ ``min_doc_tokens``) that keeps the prompt within ``limit``."""
    if tokenizer is None:
        return None
    ids = tokenizer(doc, add_special_tokens=False)["input_ids"]
    room = limit - count_tokens(rag_prompt(question, passages + [""], context))
    n = min(room, len(ids))
    while n >= min_doc_tokens:  # decoding can re-merge tokens at the cut: shrink until the prompt fits
        cut = tokenizer.decode(ids[:n], skip_special_tokens=True).strip() + " …"
        if count_tokens(rag_prompt(question, passages + [cut], context)) <= limit:
            return cut
        n -= max(1, (n // 20))
    return None


def grounded(answer: "Answer", embed, threshold: float = QUOTE_BELOW) -> "Answer":
    """``answer`` if its passages support at least ``threshold`` of its sentences (`metrics.faithfulness`; an answer
    with no sentence long enough to judge is kept), else the top passage as the answer, with that one source and
    the model's text and its support kept (``model_answer``, ``model_faithfulness``). Why: a small tuned model
    sometimes restates the question or writes "I'm not sure what you're talking about." beside a passage that
    answers it; the passage is the better answer, and an unsupported one is what RAG must not print. The judge is
    the evaluation's own faithfulness measure, so the evaluation counts these answers (``quoted``) beside their
    scores."""
    empty = not answer.answer.strip()
    judged = faithfulness(answer.answer, answer.passages, embed) if answer.passages and not empty else None
    support = 0.0 if answer.passages and empty else judged
    if support is None or support >= threshold:
        return answer
    return replace(answer, answer=answer.passages[0], sources=answer.sources[:1], passages=answer.passages[:1],
                   quoted=True, model_answer=answer.answer, model_faithfulness=judged)


class Assistant:
    """Answers questions with one model, with or without retrieval from a `QAStore`."""

    def __init__(self, generator: TokenBudget, store=None, *, k: int = DEFAULT_RETRIEVAL.k,
                 mode: str = DEFAULT_RETRIEVAL.mode, passage_tokens: int | None = DEFAULT_PASSAGE_TOKENS,
                 consensus_pool: int | None = DEFAULT_RETRIEVAL.consensus_pool, site: str | None = None,
                 quote_unsupported: bool = DEFAULT_RETRIEVAL.quote_unsupported,
                 context_tokens: int | None = DEFAULT_RETRIEVAL.context_tokens,
                 min_similarity: float | None = DEFAULT_RETRIEVAL.min_similarity, judge_embed=None) -> None:
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        self.generator = generator
        self.store = store
        self.k = k
        self.mode = mode
        self.passage_tokens = passage_tokens
        self.consensus_pool = consensus_pool
        self.site = site  # retrieve from this site only (None: all)
        self.quote_unsupported = quote_unsupported  # RAG answers go through `grounded`
        self.context_tokens = context_tokens  # each question's body is cut to this (`capped_question`)
        self.min_similarity = min_similarity  # RAG: no passage this similar to the question → NOT_FOUND, no model
        # `grounded`'s embedding function (the evaluation passes a memoized one); None: the store's embedder
        self.judge_embed = judge_embed

    def ask(self, questions: Sequence[Question], settings: GenerationSettings | None = None, *, rag: bool = True,
            exclude_question_ids: Sequence[tuple[str, int] | int | None] | None = None) -> list[Answer]:
        """Answer each question (one batched generation). ``exclude_question_ids[i]``: retrieval skips that
        question's own answers (``(site, question_id)``) (a held-out question must not find its reference answer)."""
        settings = settings or GenerationSettings()
        gen = self.generator
        budget = gen.prompt_budget(settings)
        fitted: list[FittedPrompt | None] = []  # None: nothing relevant retrieved, the answer is withheld
        retrieval_s: list[float] = []
        for i, q in enumerate(questions):
            text = check_question(q.text)
            q = capped_question(q, gen.tokenizer, self.context_tokens)
            if not rag:  # a prompt too long for the window is Generator.generate's error
                prompt = dolly_prompt(text, q.context)
                fitted.append(FittedPrompt(prompt, [], gen.count_tokens(prompt), 0, 0, 0))
                retrieval_s.append(0.0)
                continue
            skip = [exclude_question_ids[i]] if exclude_question_ids else ()
            began = time.perf_counter()
            hits = rag_passages(self.store, text, k=self.k, mode=self.mode, tokenizer=gen.tokenizer,
                                passage_tokens=self.passage_tokens, consensus_pool=self.consensus_pool, exclude=skip,
                                site=self.site, min_similarity=self.min_similarity)
            retrieval_s.append(time.perf_counter() - began)
            fitted.append(fit_rag_prompt(q, hits, gen.count_tokens, budget, tokenizer=gen.tokenizer,
                                         passage_tokens=self.passage_tokens) if hits else None)
        prompts = [f.prompt for f in fitted if f is not None]
        generated = iter(gen.generate(prompts, settings) if prompts else [])
        answers = []
        for q, f, r in zip(questions, fitted, retrieval_s):
            if f is None:
                answers.append(Answer.withheld(q.text, r))
                continue
            outs = next(generated)
            best = outs[0]
            answer = Answer(
                question=q.text.strip(), answer=best.text, sources=f.sources, rag=rag, prompt_tokens=f.prompt_tokens,
                new_tokens=best.new_tokens, latency_s=round(r + best.latency_s, 3), retrieval_s=round(r, 4),
                batch_tokens_per_s=round(best.batch_tokens_per_s, 2), docs_retrieved=f.docs_retrieved,
                docs_trimmed=f.docs_trimmed, docs_dropped=f.docs_dropped, ended=best.ended, looped=best.looped,
                alternatives=[o.text for o in outs[1:]], passages=f.passages,
            )
            answers.append(grounded(answer, self.judge_embed or self.store.embedder.embed)
                           if rag and self.quote_unsupported else answer)
        return answers
