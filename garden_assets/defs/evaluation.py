"""evaluation_answers: held-out questions answered by the pasted top hit (retrieved), base, base+RAG, tuned and
tuned+RAG, scored, with sweeps."""

import functools
import time

import dagster as dg
import polars as pl

from ..compute import TRANSFORMERS, ComputeSpec, load_profile
from ..llm.evaluation import (
    VARIANTS, AnswerCache, EvalPlan, RetrievalSetting, fingerprint, load_test_questions, question_limit,
    required_checkpoints, run_evaluation, summarize,
)
from ..llm.backends import check_backend, describe, load_generator, resolve_backend
from ..llm.generate import GenerationSettings
from ..llm.models import base_model_path, tuned_model_path
from .finetune import (BaseModel, base_model, finetune_dataset, layout, read_training_log, tuned_model,
                       tuned_model_gguf)
from .index import EMBEDDING, built_index, qa_index, store_for
from .configs import config_class
from .metadata import counts, markdown_table
from .plots import png_markdown, pyplot
from .resources import GardenPaths

GENERATION = load_profile(asset="generation", defaults=ComputeSpec(device="auto", batch_size=8))
CPU_QUESTIONS = 8  # the default with transformers on CPU (the fallback): the model variants in ≈ 2 min on 2 cores
# WARN checks: tuned+rag must match or beat this variant on mean token F1
CHECKS = {"tuned_rag_vs_base_rag": "base+rag", "tuned_rag_vs_retrieved": "retrieved"}
# tuned_rag_grounded: WARN when more than this share of tuned+RAG answers were unsupported by their passages (quoted
# instead, rag.grounded) — the symptom of a model trained for too few steps (seen: 6 steps on a shared CPU)
MAX_QUOTED = 0.25
# relevance_floor: WARN when the floor (RetrievalSetting.min_similarity) withholds more than this share of held-out
# questions, which the corpus usually answers: a floor that does not suit this corpus or embedder (coffee: 5 %,
# datascience-meta and the sample: 0 %, docs/evaluation.md)
MAX_WITHHELD = 0.1


class _GenerationConfig(dg.Config):
    def settings(self) -> GenerationSettings:
        return GenerationSettings.from_dict(self.model_dump())


class _RetrievalConfig(dg.Config):
    def setting(self) -> RetrievalSetting:
        return RetrievalSetting(**self.model_dump())


Generation = config_class(
    GenerationSettings, "Generation", base=_GenerationConfig,
    doc="transformers generation settings (GenerationSettings); a sweep entry names only what it changes.")
GenerationChange = config_class(
    GenerationSettings, "GenerationChange", change=True,
    doc="One sweep row: the settings it names replace the main ``generation`` settings; the rest are kept.")
Retrieval = config_class(
    RetrievalSetting, "Retrieval", base=_RetrievalConfig,
    doc="The RAG variants' search (RetrievalSetting): k passages, the qa_index key (its table must exist), mode, "
        "passage_tokens / context_tokens (each passage's / the question body's leading sentences within this), "
        "consensus_pool and the quote_unsupported guard.")
RetrievalChange = config_class(
    RetrievalSetting, "RetrievalChange", change=True, doc="One sweep row: the retrieval fields it names "
    "replace the main ``retrieval`` ones.")


def _changed(base: dict, change: dg.Config) -> dict:
    return {**base, **{k: v for k, v in change.model_dump().items() if v is not None}}


class EvalConfig(dg.Config):
    questions: int | None = None  # None: the whole test split, but CPU_QUESTIONS with transformers on a CPU
    backend: str | None = None  # auto | transformers | llama.cpp; None: the generation compute profile's
    variants: list[str] = list(VARIANTS)
    generation: Generation = Generation()
    retrieval: Retrieval = Retrieval()
    generation_sweep: list[GenerationChange] = []  # e.g. [{num_beams: 4}, {do_sample: true, temperature: 0.7}]
    generation_sweep_variant: str = "tuned"
    retrieval_sweep: list[RetrievalChange] = []  # e.g. [{k: 1}, {k: 5}, {mode: vector}]
    retrieval_sweep_variant: str = "tuned+rag"
    max_context_tokens: int = 2048  # the prompt + answer window (capped by the model's own)


def _plan(config: EvalConfig) -> EvalPlan:
    try:
        return EvalPlan(
            variants=config.variants, settings=config.generation.settings(), retrieval=config.retrieval.setting(),
            generation_sweep=[GenerationSettings.from_dict(_changed(config.generation.model_dump(), g))
                              for g in config.generation_sweep],
            generation_sweep_variant=config.generation_sweep_variant,
            retrieval_sweep=[RetrievalSetting(**_changed(config.retrieval.model_dump(), r))
                             for r in config.retrieval_sweep],
            retrieval_sweep_variant=config.retrieval_sweep_variant,
        )
    except ValueError as e:
        raise dg.Failure(description=f"evaluation_answers config: {e}") from None


@dg.asset(
    group_name="evaluation",
    kinds={"pytorch", "huggingface", "llamacpp"},
    deps=[base_model, finetune_dataset, tuned_model, tuned_model_gguf, qa_index],
    op_tags=GENERATION.op_tags(),
    pool=GENERATION.pool,
    automation_condition=dg.AutomationCondition.eager(),
    description="Held-out questions answered by the top retrieved answer and the top reranked answer (no model) / "
                "base / base+RAG / tuned / tuned+RAG, scored (ROUGE-L, token F1, ended, repeated 4-grams, "
                "faithfulness), with optional sweeps.",
    check_specs=[*(dg.AssetCheckSpec(name, asset="evaluation_answers",
                                     description=f"Warns when tuned+RAG scores below {anchor} (mean token F1).")
                   for name, anchor in CHECKS.items()),
                 dg.AssetCheckSpec("tuned_rag_grounded", asset="evaluation_answers",
                                   description=f"Warns when over {MAX_QUOTED:.0%} of tuned+RAG answers were not "
                                               "supported by their passages (quoted instead): train longer."),
                 dg.AssetCheckSpec("relevance_floor", asset="evaluation_answers",
                                   description=f"Warns when the relevance floor withholds over {MAX_WITHHELD:.0%} of "
                                               "the held-out questions: recalibrate min_similarity.")],
)
def evaluation_answers(context: dg.AssetExecutionContext, config: EvalConfig, paths: GardenPaths, model: BaseModel):
    plan, home = _plan(config), layout(paths)
    device = GENERATION.resolve_device()
    test_file = home.dataset / "test.jsonl"
    try:
        questions = load_test_questions(test_file)
        models = required_checkpoints(plan, {"base": base_model_path(model.spec, home.models),
                                             "tuned": tuned_model_path(home.tuned)})
        requested = check_backend(config.backend or GENERATION.backend)
        backends = {m: resolve_backend(requested, device, models[m], log=context.log.info) for m in models}
        limit = question_limit(config.questions, device == "cpu" and TRANSFORMERS in backends.values(),
                               CPU_QUESTIONS)
        questions = questions[:limit] if limit else questions
    except (FileNotFoundError, ValueError) as e:
        raise dg.Failure(description=str(e)) from None
    precision = GENERATION.resolve_precision()
    loaded: dict[str, str] = {}

    def load(which: str):
        context.log.info(f"loading the {which} model from {models[which]} ({backends[which]}, {device})")
        generator = load_generator(models[which], backend=backends[which], device=device, precision=precision,
                                   batch_size=GENERATION.batch_size or 8, max_context_tokens=config.max_context_tokens,
                                   log=context.log.info)
        loaded[which] = describe(generator)
        return generator

    @functools.cache
    def open_store(key: str):
        store = store_for(paths, built_index(context.instance, key), EMBEDDING)
        if store.open() is None:
            raise dg.Failure(description=f"no qa_index table for key {key!r} at {paths.lance_uri}: "
                                         f"materialize qa_index (with config key: {key}) first")
        return store

    index_versions = {k: open_store(k).open().version for k in plan.rag_keys()}
    digest = fingerprint([config.model_dump(), limit, backends, index_versions, GENERATION.to_dict()], test_file,
                         models)
    cache = AnswerCache(home.evaluation)
    rows = cache.read(digest)
    reused = rows is not None
    if reused:  # same questions, models, index versions and config: answering again would change nothing
        context.log.info(f"inputs unchanged since the last evaluation ({digest}): reusing {cache.path(digest)}")
    else:
        began = time.perf_counter()
        try:
            rows = run_evaluation(questions, plan, load_generator=load, open_store=open_store,
                                  log=context.log.info)
        except ValueError as e:  # a question that cannot fit the window, a bad setting
            raise dg.Failure(description=f"evaluation_answers: {e}") from None
        cache.write(rows, digest)
        context.log.info(f"answered {rows.height} times in {time.perf_counter() - began:.0f} s")
    table = summarize(rows)
    main = table.filter(pl.col("sweep") == "main")
    yield dg.Output(rows, metadata={
        **counts(rows=rows.height, questions=len(questions), answers_with_sources=int((rows["sources"].list.len() > 0).sum())),
        "comparison": dg.MetadataValue.md(_markdown(main) + "\n\n" + _score_plot(main)),
        **({"generation_sweep": dg.MetadataValue.md(_markdown(table.filter(pl.col("sweep") == "generation")))}
           if plan.generation_sweep else {}),
        **({"retrieval_sweep": dg.MetadataValue.md(_markdown(table.filter(pl.col("sweep") == "retrieval")))}
           if plan.retrieval_sweep else {}),
        "device": device, "generators": ", ".join(f"{m}: {d}" for m, d in loaded.items()) or "cached answers",
        "inputs_fingerprint": digest, "reused": reused,
    })
    for name, anchor in CHECKS.items():
        yield _compare_check(main, name, "tuned+rag", anchor)
    yield _grounded_check(main, read_training_log(home.tuned))
    yield _floor_check(main, plan.retrieval.min_similarity)


def _compare_check(main: pl.DataFrame, name: str, variant: str, anchor: str) -> dg.AssetCheckResult:
    """WARN unless ``variant``'s mean token F1 matches or beats ``anchor``'s."""
    means = dict(zip(main["variant"], main["token_f1"]))
    if variant not in means or anchor not in means:
        return dg.AssetCheckResult(check_name=name, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"note": f"{variant} or {anchor} was not evaluated"})
    passed = bool(means[variant] >= means[anchor])
    return dg.AssetCheckResult(
        check_name=name, passed=passed, severity=dg.AssetCheckSeverity.WARN,
        description=None if passed else f"{variant} token F1 {means[variant]:.3f} < {anchor} {means[anchor]:.3f}",
        metadata={f"{variant} token_f1": float(means[variant]), f"{anchor} token_f1": float(means[anchor])},
    )


def _grounded_check(main: pl.DataFrame, training_log: list[dict]) -> dg.AssetCheckResult:
    """WARN when tuned+RAG's quoted share exceeds MAX_QUOTED; says how many steps the model trained."""
    row = main.filter(pl.col("variant") == "tuned+rag")
    if row.is_empty():
        return dg.AssetCheckResult(check_name="tuned_rag_grounded", passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"note": "tuned+rag was not evaluated"})
    quoted, steps = float(row["quoted"][0]), max((r["step"] for r in training_log), default=0)
    return dg.AssetCheckResult(
        check_name="tuned_rag_grounded", passed=quoted <= MAX_QUOTED, severity=dg.AssetCheckSeverity.WARN,
        description=None if quoted <= MAX_QUOTED else (
            f"{quoted:.0%} of tuned+RAG answers were not supported by their passages and were replaced by their top "
            f"passage; the tuned model trained {steps} steps: give tuned_model more (max_train_seconds)"),
        metadata={"quoted_share": quoted, "max_quoted_share": MAX_QUOTED, "training_steps": steps},
    )


def _floor_check(main: pl.DataFrame, floor: float | None) -> dg.AssetCheckResult:
    """WARN when a retrieval variant withheld more than MAX_WITHHELD of the held-out questions (every retrieval
    variant searches the same way, so the largest share is theirs)."""
    shares = main.filter(pl.col("retrieval") != "")["declined"]
    withheld = float(shares.max()) if len(shares) else 0.0
    passed = withheld <= MAX_WITHHELD
    return dg.AssetCheckResult(
        check_name="relevance_floor", passed=passed, severity=dg.AssetCheckSeverity.WARN,
        description=None if passed else (
            f"{withheld:.0%} of held-out questions, which the corpus usually answers, found no passage at or above "
            f"min_similarity {floor}: the floor may not suit this corpus or embedder; `python "
            f"benchmarks/relevance_floor.py <home>` shows where its held-out and off-topic questions fall, then set "
            f"retrieval.min_similarity (and garden ask --min-similarity)"),
        metadata={"withheld_share": withheld, "max_withheld_share": MAX_WITHHELD,
                  "min_similarity": "none" if floor is None else floor},
    )


def _markdown(table: pl.DataFrame) -> str:
    return markdown_table(table.drop("sweep"))


def _score_plot(main: pl.DataFrame) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    x = range(main.height)
    ax.bar([i - 0.2 for i in x], main["rouge_l"], width=0.4, label="ROUGE-L", color="#4c8c4a")
    ax.bar([i + 0.2 for i in x], main["token_f1"], width=0.4, label="token F1", color="#a3c586")
    ax.set_xticks(list(x), main["variant"].to_list())
    ax.set_ylabel("mean score")
    ax.legend()
    return png_markdown(fig, "scores per variant")
