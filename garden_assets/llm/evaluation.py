"""Answer held-out questions every way the talk compares and score them against the reference answers.

Variants: ``retrieved`` (the top retrieved answer pasted as is — no model: the honest anchor), ``reranked`` (the
top answer after consensus reranking, pasted — no model: what the reranker alone gives), ``base``,
``base+rag``, ``tuned``, ``tuned+rag``. Every answer is also checked for hygiene: did it end by itself, how much
of it repeats (4-grams), and how much of it its cited sources support (`metrics.faithfulness`); a RAG answer they
mostly do not support is replaced by its top passage, as `garden ask` does (`rag.grounded`; counted as ``quoted``).
Sweeps add rows: generation settings (one row per setting, on one variant) and retrieval settings (k, key, mode,
...) on one RAG variant — the talk's "Generation Tuning" and "Database Search Tuning" tables. Each model is loaded
once; each (variant, setting) is one batched generation over all questions. Retrieval skips the held-out
question's own answers (they are its references).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import polars as pl

from ..files import update_sha256, write_atomic
from .generate import GenerationSettings, TokenBudget
from .models import require_checkpoint
from .metrics import MemoizedEmbed, faithfulness, repeated_ngram_share, rouge_l, token_f1
from .rag import Answer, Assistant, Question, RetrievalSetting, pasted_answer

PASTED = ("retrieved", "reranked")  # no model: a search hit pasted as is
VARIANTS = (*PASTED, "base", "base+rag", "tuned", "tuned+rag")
ROWS_VERSION = 7  # bump when a row's columns, a metric's definition, how passages are chosen or how answers are cut change: cached answers are redone


@dataclass(frozen=True)
class Variant:
    """A variant name parsed once: which model answers (None: no model, the pasted top hit) and whether it retrieves."""

    name: str
    model: str | None
    rag: bool

    @classmethod
    def parse(cls, name: str) -> "Variant":
        if name not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")
        if name in PASTED:
            return cls(name, None, True)
        model, _, rag = name.partition("+")
        return cls(name, model, rag == "rag")


@dataclass
class EvalQuestion:
    question_id: int
    instruction: str
    context: str
    references: list[str]
    site: str = ""


@dataclass
class EvalPlan:
    variants: Sequence[str] = VARIANTS
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    retrieval: RetrievalSetting = field(default_factory=RetrievalSetting)
    generation_sweep: Sequence[GenerationSettings] = ()
    generation_sweep_variant: str = "tuned"
    retrieval_sweep: Sequence[RetrievalSetting] = ()
    retrieval_sweep_variant: str = "tuned+rag"

    def __post_init__(self) -> None:
        for v in [*self.variants, self.generation_sweep_variant, self.retrieval_sweep_variant]:
            Variant.parse(v)
        if self.generation_sweep and Variant.parse(self.generation_sweep_variant).model is None:
            raise ValueError(f"the generation sweep needs a model variant, not {self.generation_sweep_variant!r}")
        if self.retrieval_sweep and not Variant.parse(self.retrieval_sweep_variant).rag:
            raise ValueError(f"the retrieval sweep needs a +rag variant, got {self.retrieval_sweep_variant!r}")

    def jobs(self) -> Iterator[tuple[str, Variant, GenerationSettings, RetrievalSetting]]:
        """``(sweep, variant, settings, retrieval)`` for every batch of answers to produce."""
        for v in self.variants:
            yield "main", Variant.parse(v), self.settings, self.retrieval
        for s in self.generation_sweep:
            yield "generation", Variant.parse(self.generation_sweep_variant), s, self.retrieval
        for r in self.retrieval_sweep:
            yield "retrieval", Variant.parse(self.retrieval_sweep_variant), self.settings, r

    def models(self) -> list[str]:
        """The checkpoints the jobs need (``base``, ``tuned``)."""
        return sorted({v.model for _, v, _, _ in self.jobs() if v.model})

    def rag_keys(self) -> list[str]:
        """The index tables the jobs search."""
        return sorted({r.key for _, v, _, r in self.jobs() if v.rag})


def required_checkpoints(plan: EvalPlan, where: dict[str, Path]) -> dict[str, Path]:
    """The checkpoints the plan's model variants need (``where``: ``base``/``tuned`` → path), each checked to be
    there (FileNotFoundError naming the asset to materialize otherwise)."""
    return {m: require_checkpoint(where[m], f"{m}_model") for m in plan.models()}


def question_limit(requested: int | None, slow: bool, slow_default: int) -> int | None:
    """How many questions to answer: ``requested``; unset, ``slow_default`` on a slow setup, else all (None)."""
    return requested if requested is not None else (slow_default if slow else None)


def fingerprint(settings: Sequence[object], test_file: str | os.PathLike[str], models: dict[str, Path]) -> str:
    """What the answers depend on: the row version, ``settings`` (anything JSON can write: the run config, the
    question limit, backends, index versions, compute), the test split's bytes and the models' files."""
    h = hashlib.sha256(json.dumps([ROWS_VERSION, *settings], sort_keys=True, default=str).encode())
    update_sha256(h, test_file)
    for path in models.values():  # a checkpoint is rewritten as a whole: names, sizes and mtimes identify it
        for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):  # its GGUF too
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class AnswerCache:
    """The latest evaluation's answers, keyed by the `fingerprint` of their inputs: same inputs, same answers."""

    folder: Path

    def path(self, digest: str) -> Path:
        return self.folder / f"answers-{digest}.parquet"

    def read(self, digest: str) -> pl.DataFrame | None:
        path = self.path(digest)
        return pl.read_parquet(path) if path.is_file() else None

    def write(self, rows: pl.DataFrame, digest: str) -> Path:
        """Keep the latest answers only (written under a temporary name and renamed)."""
        for old in self.folder.glob("answers-*.parquet") if self.folder.is_dir() else ():
            if old != self.path(digest):
                old.unlink()
        return write_atomic(self.path(digest), rows.write_parquet)


def load_test_questions(path: str | os.PathLike[str], limit: int | None = None) -> list[EvalQuestion]:
    """Distinct questions of a finetune ``test.jsonl`` (file order), each with all its reference answers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: materialize finetune_dataset first")
    by_id: dict[tuple[str, int], EvalQuestion] = {}
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                qid, instruction, response = int(row["question_id"]), str(row["instruction"]), str(row["response"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: not a test row with question_id/instruction/response ({e})") from None
            site = str(row.get("site") or "")
            if (site, qid) not in by_id:
                by_id[site, qid] = EvalQuestion(qid, instruction, str(row.get("context") or ""), [], site)
            by_id[site, qid].references.append(response)
    questions = list(by_id.values())
    if not questions:
        raise ValueError(f"{path} holds no test questions")
    return questions[:limit] if limit else questions


def score(answer: str, references: Sequence[str]) -> tuple[float, float]:
    """``(rouge_l, token_f1)``: the best over the question's reference answers, as SQuAD scores several."""
    return max(rouge_l(answer, r) for r in references), max(token_f1(answer, r) for r in references)


def run_evaluation(
    questions: Sequence[EvalQuestion], plan: EvalPlan, *, load_generator: Callable[[str], TokenBudget],
    open_store: Callable[[str], object], log: Callable[[str], None] = print,
) -> pl.DataFrame:
    """One row per (job, question); ``load_generator("base"|"tuned")`` and ``open_store(key)`` are called once each."""
    jobs = list(plan.jobs())
    stores: dict[str, object] = {}
    judges: dict[str, MemoizedEmbed] = {}  # per index key: faithfulness embeds each passage and sentence once
    rows: list[dict] = []
    asked = [Question(q.instruction, q.context) for q in questions]
    exclude = [(q.site, q.question_id) if q.site else q.question_id for q in questions]

    def store_of(variant: Variant, retrieval: RetrievalSetting):
        if not variant.rag:
            return None
        if retrieval.key not in stores:
            stores[retrieval.key] = open_store(retrieval.key)
            judges[retrieval.key] = MemoizedEmbed(stores[retrieval.key].embedder.embed)
        return stores[retrieval.key]

    def judge_of(variant: Variant, retrieval: RetrievalSetting):
        return judges[retrieval.key] if store_of(variant, retrieval) is not None else None

    def record(sweep, variant: Variant, settings, retrieval, answers: list[Answer], began: float) -> None:
        seconds = round(time.perf_counter() - began, 2)
        judge = judge_of(variant, retrieval)
        for q, a in zip(questions, answers):
            rows.append({**answer_row(sweep, variant, settings, retrieval, q, a, judge), "job_seconds": seconds})
        mean = statistics.fmean(x["token_f1"] for x in rows[-len(answers):])
        log(f"{sweep}: {variant.name} [{'' if variant.model is None else settings.label()}"
            f"{'; ' + retrieval.label() if variant.rag else ''}] token F1 {mean:.3f} over {len(answers)} questions")

    for sweep, variant, settings, retrieval in jobs:  # no model: a pasted hit
        if variant.model is None:
            began, store = time.perf_counter(), store_of(variant, retrieval)
            pool = retrieval.consensus_pool if variant.name == "reranked" else None
            record(sweep, variant, settings, retrieval, [
                pasted_answer(store, q, k=retrieval.k, mode=retrieval.mode, exclude=[qid], consensus_pool=pool,
                              min_similarity=retrieval.min_similarity)
                for q, qid in zip(asked, exclude)], began)
    for model in plan.models():
        generator = load_generator(model)
        for sweep, variant, settings, retrieval in jobs:
            if variant.model != model:
                continue
            began = time.perf_counter()
            assistant = Assistant(generator, store_of(variant, retrieval), k=retrieval.k, mode=retrieval.mode,
                                  passage_tokens=retrieval.passage_tokens, consensus_pool=retrieval.consensus_pool,
                                  quote_unsupported=retrieval.quote_unsupported,
                                  min_similarity=retrieval.min_similarity,
                                  context_tokens=retrieval.context_tokens, judge_embed=judge_of(variant, retrieval))
            record(sweep, variant, settings, retrieval,
                   assistant.ask(asked, settings, rag=variant.rag, exclude_question_ids=exclude), began)
        del generator
    return pl.DataFrame(rows, schema_overrides={"sources": pl.List(pl.String), "source_ids": pl.List(pl.Int64),
                                                "faithfulness": pl.Float64, "model_answer": pl.String,
                                                "model_token_f1": pl.Float64, "model_faithfulness": pl.Float64})


def answer_row(sweep: str, variant: Variant, settings: GenerationSettings, retrieval: RetrievalSetting,
               q: EvalQuestion, a: Answer, embed) -> dict:
    """One scored answer: reference scores, hygiene (ended, repeated 4-grams) and faithfulness to its sources
    (``embed``: the index's embedding function; None for a variant without retrieval)."""
    r, f = score(a.answer, q.references)
    faithful = faithfulness(a.answer, a.passages, embed) if embed is not None else None
    # the model's own text, before `grounded` quoted its source instead (which judged it against all its passages)
    own_f1, own_faithful = (score(a.model_answer, q.references)[1], a.model_faithfulness) if a.quoted else (f, faithful)
    return {
        "sweep": sweep, "variant": variant.name, "setting": settings.label() if variant.model else "",
        "retrieval": retrieval.label() if variant.rag else "", "question_id": q.question_id,
        "question": q.instruction, "reference": q.references[0], "answer": a.answer,
        "sources": [s.url for s in a.sources], "source_ids": [s.answer_id for s in a.sources],
        "rouge_l": round(r, 4), "token_f1": round(f, 4), "ended": a.ended, "looped": a.looped, "quoted": a.quoted,
        "declined": a.declined,
        "model_answer": a.model_answer,
        "repeated_4grams": round(repeated_ngram_share(a.answer, 4), 4),
        "faithfulness": None if faithful is None else round(faithful, 4),
        "model_token_f1": round(own_f1, 4) if variant.model else None,
        "model_faithfulness": None if own_faithful is None or not variant.model else round(own_faithful, 4),
        "latency_s": a.latency_s, "new_tokens": a.new_tokens, "prompt_tokens": a.prompt_tokens,
        "tokens_per_s": a.batch_tokens_per_s, "docs_trimmed": a.docs_trimmed, "docs_dropped": a.docs_dropped,
    }


def summarize(rows: pl.DataFrame) -> pl.DataFrame:
    """One line per (sweep, variant, setting, retrieval): mean scores, share of answers that ended by themselves,
    share replaced by their top passage (`rag.grounded`), share withheld for want of a relevant passage
    (`RetrievalSetting.min_similarity`), mean share of repeated 4-grams, mean faithfulness (RAG
    variants), the model's own text's token F1 and faithfulness (quoted or not), p50 latency, tokens/s and the wall
    seconds of the whole batch of answers."""
    return (
        rows.group_by("sweep", "variant", "setting", "retrieval", maintain_order=True)
        .agg(
            pl.len().alias("questions"),
            pl.col("rouge_l").mean().round(4),
            pl.col("token_f1").mean().round(4),
            pl.col("ended").mean().round(3),
            pl.col("looped").mean().round(3),
            pl.col("quoted").mean().round(3),
            pl.col("declined").mean().round(3),
            pl.col("repeated_4grams").mean().round(4),
            pl.col("faithfulness").mean().round(3),
            pl.col("model_token_f1").mean().round(4),
            pl.col("model_faithfulness").mean().round(3),
            pl.col("latency_s").median().round(2).alias("latency_p50_s"),
            pl.col("job_seconds").first().alias("seconds"),
            pl.col("tokens_per_s").mean().round(1),
            pl.col("new_tokens").mean().round(1).alias("new_tokens_mean"),
            pl.col("docs_trimmed").sum(),
            pl.col("docs_dropped").sum(),
        )
    )
