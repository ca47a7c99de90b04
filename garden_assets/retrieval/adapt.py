"""Contrastive fine-tuning of the embedder on the site's own Q/A pairs (the ``retriever_model`` asset).

Anchor: the question title (``anchor="title+body"``: title and question text); positive: one of its answers, and
(``positives``) the question's body with that answer — the forms the index embeds; the other positives in the
batch are the negatives (``MultipleNegativesRankingLoss``, i.e. InfoNCE with in-batch
negatives). The no-duplicates batch sampler keeps two answers of one question out of the same batch (the other
would count as a negative). The sentence-transformers trainer runs it, on CPU or GPU unchanged.

Only the pairs whose question is outside the held-out split train: the caller passes ``held_out``, the
``(site, question_id)`` pairs that `garden_assets.llm.dataset.held_out_questions` (the split finetune_dataset
uses) holds out, and `training_examples` drops every pair of those questions. ``adapt.json`` records them, so a
reader can tell whether a later split's test questions were all kept out of this model (`trained_outside`).

Library code: no dagster import; torch, datasets and sentence-transformers load on first use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Collection, Literal

import polars as pl

from ..files import publish_dir, write_json_atomic
from .embedder import build_key_text, resolve_device, resolve_model, resolve_precision

Question = tuple[str, int]  # (site, question_id): a question's identity (ids repeat across sites)
INFO = "adapt.json"

ANCHORS = ("title", "title+body")
POSITIVES = ("answer", "body+answer")  # index keys whose text a positive can be (question+answer holds the title)


@dataclass(frozen=True)
class AdaptOptions:
    """epochs: passes over the pairs; max_seconds: the training stops after the step that passes it (None: no
    limit); batch_size: pairs per step (more in-batch negatives with more); max_seq_length: tokens per text."""

    epochs: float = 3.0
    max_seconds: float | None = 150.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    max_seq_length: int = 128  # training only (the index embeds with the model's own window): ≈ 2× the steps/s
    anchor: Literal["title", "title+body"] = "title"
    # each train pair gives one example per form: the answer alone, and the question's body with the answer (the
    # text the default question+answer index embeds, less the title that is the query). Both measured better than
    # the answer alone on the default key (docs/retrieval.md, "Positives")
    positives: tuple[str, ...] = ("answer", "body+answer")
    seed: int = 42

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, not {self.anchor!r}")
        if not self.positives or set(self.positives) - set(POSITIVES):
            raise ValueError(f"positives must be some of {POSITIVES}, not {self.positives!r}")
        if self.epochs <= 0 or self.batch_size < 2 or self.learning_rate <= 0 or self.max_seq_length < 8:
            raise ValueError("epochs and learning_rate must be > 0, batch_size ≥ 2 (in-batch negatives), "
                             "max_seq_length ≥ 8")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0 (None: no limit), not {self.max_seconds!r}")


@dataclass
class AdaptResult:
    path: str
    base_model: str
    pairs: int  # Q/A pairs trained on
    examples: int  # (anchor, positive) rows: one per pair and positive form
    questions: int
    epochs: float  # epochs actually run (a time budget can end training early)
    steps: int
    seconds: float
    stopped_by_budget: bool
    fingerprint: str = ""  # of the training pairs, options and base model: the same inputs reuse the model
    reused: bool = False
    loss: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)

    def to_dict(self) -> dict:
        return asdict(self)


def questions_frame(questions: Collection[Question]) -> pl.DataFrame:
    """``site, question_id`` rows of ``questions`` (to join against qa_pairs)."""
    return pl.DataFrame([(str(s), int(q)) for s, q in questions], schema={"site": pl.String, "question_id": pl.Int64},
                        orient="row")


def with_site(qa_pairs: pl.DataFrame) -> pl.DataFrame:
    """qa_pairs with a ``site`` column (``""`` where it has none) and Int64 question ids, for joins on identity."""
    site = pl.col("site").fill_null("") if "site" in qa_pairs.columns else pl.lit("")
    return qa_pairs.with_columns(site.cast(pl.String).alias("site"), pl.col("question_id").cast(pl.Int64))


def training_examples(qa_pairs: pl.DataFrame, held_out: Collection[Question], anchor: str = "title",
                      positives: Collection[str] = AdaptOptions.positives) -> pl.DataFrame:
    """``anchor, positive, site, question_id, answer_id`` for every pair whose ``(site, question_id)`` is not in
    ``held_out`` and every form in ``positives`` (`POSITIVES`), non-empty only."""
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, not {anchor!r}")
    needed = ("question_id", "answer_id", "instruction", "context", "response")
    missing = [c for c in needed if c not in qa_pairs.columns]
    if missing:
        raise ValueError(f"qa_pairs lacks columns {missing}")
    title = pl.col("instruction").fill_null("").str.strip_chars()
    text = title if anchor == "title" else pl.concat_str(
        [title, pl.col("context").fill_null("").str.strip_chars()], separator="\n\n").str.strip_chars()
    kept = with_site(qa_pairs).join(questions_frame(held_out), on=["site", "question_id"], how="anti",
                                    maintain_order="left")
    forms = [kept.select(text.alias("anchor"), build_key_text(kept, form).alias("positive"), "site", "question_id",
                         "answer_id") for form in positives]
    return pl.concat(forms).filter((pl.col("anchor").str.len_chars() > 0) & (pl.col("positive").str.len_chars() > 0))


def adapt_embedder(
    qa_pairs: pl.DataFrame, held_out: Collection[Question], out_dir: str | os.PathLike[str], *,
    model: str | Path | None = None, options: AdaptOptions | None = None, device: str = "auto",
    precision: str = "auto", log: Callable[[str], None] | None = None,
) -> AdaptResult:
    """Fine-tune ``model`` (None: the packaged MiniLM) on the pairs outside ``held_out``; write a
    sentence-transformers model folder to ``out_dir`` (built beside it, then swapped in by `files.publish_dir`)
    with ``adapt.json`` (the result, the options and the held-out questions)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (BatchSamplers,
                                                                          SentenceTransformerTrainingArguments)
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    options = options or AdaptOptions()
    examples = training_examples(qa_pairs, held_out, options.anchor, options.positives)
    pairs = examples.select("site", "answer_id").n_unique()
    questions = examples.select("site", "question_id").n_unique()
    if questions < 2:  # a question's own examples never share a batch (no-duplicates sampler)
        raise ValueError(f"{pairs} training pair(s) of {questions} question(s) outside the held-out questions: "
                         "in-batch negatives need at least 2 questions")
    batch = min(options.batch_size, max(2, examples.height))
    name, load_from = resolve_model(model)
    held = sorted([str(s), int(q)] for s, q in held_out)
    digest = hashlib.sha256(json.dumps([name, asdict(options), held, examples["anchor"].to_list(),
                                        examples["positive"].to_list()]).encode()).hexdigest()[:16]
    out = Path(out_dir)
    previous = json.loads((out / INFO).read_text()) if (out / INFO).exists() else {}
    if previous.get("fingerprint") == digest:  # same pairs, options and base model: nothing to retrain
        fields = {k: previous[k] for k in AdaptResult.__dataclass_fields__ if k in previous}
        return AdaptResult(**{**fields, "path": str(out), "reused": True,
                              "loss": [tuple(x) for x in previous.get("loss", [])]})
    device = resolve_device(device)
    # autocast in the embedder's precision rule: bf16 on Ampere+ GPUs and on CPUs with native bf16, fp16 on older
    # GPUs (docs/retrieval.md has the CPU figures, fp32 vs bf16)
    resolved = resolve_precision(precision, device)
    bf16, fp16 = resolved == "bf16", resolved == "fp16"
    st = SentenceTransformer(load_from, device=device)
    window = st.max_seq_length
    st.max_seq_length = min(options.max_seq_length, window)

    work = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    started = time.perf_counter()

    class Budget(TrainerCallback):
        stopped = False

        def on_step_end(self, args, state, control, **kwargs):
            if options.max_seconds is not None and time.perf_counter() - started >= options.max_seconds:
                control.should_training_stop = Budget.stopped = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if log and logs and "loss" in logs:
                log(f"step {state.global_step}/{state.max_steps}: loss {float(logs['loss']):.4f}")

    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "trainer"), num_train_epochs=options.epochs, per_device_train_batch_size=batch,
        learning_rate=options.learning_rate, warmup_steps=options.warmup_ratio, seed=options.seed,  # a float < 1: a ratio
        batch_sampler=BatchSamplers.NO_DUPLICATES, logging_steps=1, save_strategy="no", report_to="none",
        bf16=bf16, fp16=fp16, use_cpu=device == "cpu", dataloader_drop_last=examples.height >= 2 * batch,
        disable_tqdm=True,
    )
    trainer = SentenceTransformerTrainer(
        model=st, args=args, train_dataset=Dataset.from_polars(examples.select("anchor", "positive")),
        loss=MultipleNegativesRankingLoss(st), callbacks=[Budget()],
    )
    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout (garden eval-retrieval --json)
    try:
        trainer.train()
        seconds = time.perf_counter() - started
        shutil.rmtree(work / "trainer", ignore_errors=True)
        st.max_seq_length = window  # the saved model embeds with its own window, as the base model did
        st.save(str(work))
        history = trainer.state.log_history
        result = AdaptResult(
            path=str(out), base_model=name, pairs=pairs, examples=examples.height, questions=questions,
            epochs=round(float(trainer.state.epoch or 0.0), 3), steps=int(trainer.state.global_step),
            seconds=round(seconds, 1), stopped_by_budget=Budget.stopped, fingerprint=digest,
            loss=[(int(h["step"]), round(float(h["loss"]), 4)) for h in history if "loss" in h],
        )
        write_json_atomic(work / INFO, {**result.to_dict(), "options": asdict(options), "held_out": held})
        out.parent.mkdir(parents=True, exist_ok=True)
        publish_dir(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def read_adapt_info(path: str | os.PathLike[str]) -> dict:
    """What `adapt_embedder` wrote next to the model (``adapt.json``); a folder without it raises naming it."""
    info = Path(path) / INFO
    if not info.exists():
        raise FileNotFoundError(f"{path}: no adapted retriever here (no {INFO}): materialize retriever_model")
    return json.loads(info.read_text())


def trained_outside(path: str | os.PathLike[str], questions: Collection[Question]) -> bool:
    """Whether the adapted model at ``path`` was trained with every one of ``questions`` held out (a later,
    larger split can hold out questions an older model trained on: scoring those would be leakage)."""
    held = {(s, int(q)) for s, q in read_adapt_info(path).get("held_out", [])}
    return {(str(s), int(q)) for s, q in questions} <= held
