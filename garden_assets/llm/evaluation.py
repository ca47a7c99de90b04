"""Answer held-out questions every way the talk compares and score them against the reference answers.

Variants: ``base``, ``base+rag``, ``tuned``, ``tuned+rag``. Sweeps add rows: generation settings (one row per
setting, on one variant) and retrieval settings (k, key, mode) on one RAG variant — the talk's "Generation
Tuning" and "Database Search Tuning" tables. Each model is loaded once; each (variant, setting) is one batched
generation over all questions. Retrieval skips the held-out question's own answers (they are its references).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import polars as pl

from ..retrieval.embedder import KEYS
from ..retrieval.search import check_mode
from .generate import GenerationSettings, Generator
from .metrics import rouge_l, token_f1
from .rag import Assistant, Question

VARIANTS = ("base", "base+rag", "tuned", "tuned+rag")


@dataclass(frozen=True)
class RetrievalSetting:
    k: int = 3
    key: str = "question+answer"
    mode: str = "hybrid"

    def __post_init__(self) -> None:
        if not isinstance(self.k, int) or not 1 <= self.k <= 50:
            raise ValueError(f"retrieval k must be 1..50, got {self.k!r}")
        if self.key not in KEYS:
            raise ValueError(f"retrieval key must be one of {KEYS}, got {self.key!r}")
        check_mode(self.mode)

    def label(self) -> str:
        return f"k={self.k}, {self.key}, {self.mode}"


@dataclass
class EvalQuestion:
    question_id: int
    instruction: str
    context: str
    references: list[str]


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
            if v not in VARIANTS:
                raise ValueError(f"variant must be one of {VARIANTS}, got {v!r}")
        if self.retrieval_sweep and not self.retrieval_sweep_variant.endswith("+rag"):
            raise ValueError(f"the retrieval sweep needs a +rag variant, got {self.retrieval_sweep_variant!r}")

    def jobs(self) -> Iterator[tuple[str, str, GenerationSettings, RetrievalSetting]]:
        """``(sweep, variant, settings, retrieval)`` for every batch of answers to produce."""
        for v in self.variants:
            yield "main", v, self.settings, self.retrieval
        for s in self.generation_sweep:
            yield "generation", self.generation_sweep_variant, s, self.retrieval
        for r in self.retrieval_sweep:
            yield "retrieval", self.retrieval_sweep_variant, self.settings, r


def load_test_questions(path: str | os.PathLike[str], limit: int | None = None) -> list[EvalQuestion]:
    """Distinct questions of a finetune ``test.jsonl`` (file order), each with all its reference answers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: materialize finetune_dataset first")
    by_id: dict[int, EvalQuestion] = {}
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                qid, instruction, response = int(row["question_id"]), str(row["instruction"]), str(row["response"])
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: not a test row with question_id/instruction/response ({e})") from None
            if qid not in by_id:
                by_id[qid] = EvalQuestion(qid, instruction, str(row.get("context") or ""), [])
            by_id[qid].references.append(response)
    questions = list(by_id.values())
    if not questions:
        raise ValueError(f"{path} holds no test questions")
    return questions[:limit] if limit else questions


def score(answer: str, references: Sequence[str]) -> tuple[float, float]:
    """``(rouge_l, token_f1)``: the best over the question's reference answers, as SQuAD scores several."""
    return max(rouge_l(answer, r) for r in references), max(token_f1(answer, r) for r in references)


def run_evaluation(
    questions: Sequence[EvalQuestion], plan: EvalPlan, *, load_generator: Callable[[str], Generator],
    open_store: Callable[[str], object], log: Callable[[str], None] = print,
) -> pl.DataFrame:
    """One row per (job, question); ``load_generator("base"|"tuned")`` and ``open_store(key)`` are called once each."""
    jobs = list(plan.jobs())
    stores: dict[str, object] = {}
    rows: list[dict] = []
    asked = [Question(q.instruction, q.context) for q in questions]
    exclude = [q.question_id for q in questions]
    for model in ("base", "tuned"):
        mine = [j for j in jobs if j[1].split("+")[0] == model]
        if not mine:
            continue
        generator = load_generator(model)
        for sweep, variant, settings, retrieval in mine:
            rag = variant.endswith("+rag")
            store = None
            if rag:
                if retrieval.key not in stores:
                    stores[retrieval.key] = open_store(retrieval.key)
                store = stores[retrieval.key]
            assistant = Assistant(generator, store, k=retrieval.k, mode=retrieval.mode)
            answers = assistant.ask(asked, settings, rag=rag, exclude_question_ids=exclude)
            for q, a in zip(questions, answers):
                r, f = score(a.answer, q.references)
                rows.append({
                    "sweep": sweep, "variant": variant, "setting": settings.label(),
                    "retrieval": retrieval.label() if rag else "", "question_id": q.question_id,
                    "question": q.instruction, "reference": q.references[0], "answer": a.answer,
                    "sources": [s.url for s in a.sources], "source_ids": [s.answer_id for s in a.sources],
                    "rouge_l": round(r, 4), "token_f1": round(f, 4), "latency_s": a.latency_s,
                    "new_tokens": a.new_tokens, "prompt_tokens": a.prompt_tokens,
                    "tokens_per_s": a.batch_tokens_per_s, "docs_trimmed": a.docs_trimmed, "docs_dropped": a.docs_dropped,
                })
            mean = statistics.fmean(x["rouge_l"] for x in rows[-len(answers):])
            log(f"{sweep}: {variant} [{settings.label()}{'; ' + retrieval.label() if rag else ''}] "
                f"ROUGE-L {mean:.3f} over {len(answers)} questions")
        del generator
    return pl.DataFrame(rows, schema_overrides={"sources": pl.List(pl.String), "source_ids": pl.List(pl.Int64)})


def summarize(rows: pl.DataFrame) -> pl.DataFrame:
    """One line per (sweep, variant, setting, retrieval) with mean scores, p50 latency and tokens/s."""
    return (
        rows.group_by("sweep", "variant", "setting", "retrieval", maintain_order=True)
        .agg(
            pl.len().alias("questions"),
            pl.col("rouge_l").mean().round(4),
            pl.col("token_f1").mean().round(4),
            pl.col("latency_s").median().round(2).alias("latency_p50_s"),
            pl.col("tokens_per_s").mean().round(1),
            pl.col("new_tokens").mean().round(1).alias("new_tokens_mean"),
            pl.col("docs_trimmed").sum(),
            pl.col("docs_dropped").sum(),
        )
    )
