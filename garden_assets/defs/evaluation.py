"""evaluation_answers: held-out questions answered by the pasted top hit (retrieved), base, base+RAG, tuned and
tuned+RAG, scored, with sweeps."""

import functools
import hashlib
import json
import time
from pathlib import Path

import dagster as dg
import polars as pl

from ..compute import TRANSFORMERS, ComputeSpec, load_profile
from ..llm.evaluation import ROWS_VERSION, VARIANTS, EvalPlan, RetrievalSetting, load_test_questions, run_evaluation, summarize
from ..llm.backends import check_backend, describe, load_generator, resolve_backend
from ..llm.generate import GenerationSettings
from ..llm.models import base_model_path, require_checkpoint, tuned_model_path
from ..llm.rag import DEFAULT_RETRIEVAL
from .finetune import BaseModel, base_model, dataset_dir, finetune_dataset, tuned_model, tuned_model_gguf
from .index import EMBEDDING, IndexConfig, qa_index, store_for
from .metadata import counts, markdown_table
from .plots import png_markdown, pyplot
from .resources import GardenPaths

GENERATION = load_profile(asset="generation", defaults=ComputeSpec(device="auto", batch_size=8))
CPU_QUESTIONS = 8  # the default with transformers on CPU (the fallback): the five variants in ≈ 2 min on 2 cores
# WARN checks: tuned+rag must match or beat this variant on mean token F1
CHECKS = {"tuned_rag_vs_base_rag": "base+rag", "tuned_rag_vs_retrieved": "retrieved"}


class Generation(dg.Config):  # mirrors GenerationSettings (a test keeps them equal)
    """transformers generation settings (GenerationSettings); a sweep entry names only what it changes."""

    max_new_tokens: int = GenerationSettings().max_new_tokens
    do_sample: bool = False
    num_beams: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    num_return_sequences: int = 1
    seed: int = 0

    def settings(self) -> GenerationSettings:
        return GenerationSettings.from_dict(self.model_dump())


class GenerationChange(dg.Config):
    """One sweep row: the settings it names replace the main ``generation`` settings; the rest are kept."""

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    num_beams: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    num_return_sequences: int | None = None
    seed: int | None = None


class Retrieval(dg.Config):
    k: int = DEFAULT_RETRIEVAL.k
    key: str = DEFAULT_RETRIEVAL.key  # the qa_index table to search: qa_index must have been built with this key
    mode: str = DEFAULT_RETRIEVAL.mode
    passage_tokens: int | None = DEFAULT_RETRIEVAL.passage_tokens  # each passage's leading sentences within this

    def setting(self) -> RetrievalSetting:
        return RetrievalSetting(**self.model_dump())


class RetrievalChange(dg.Config):
    """One sweep row: k, key and/or mode replacing the main ``retrieval`` ones."""

    k: int | None = None
    key: str | None = None
    mode: str | None = None
    passage_tokens: int | None = None


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
    description="Held-out questions answered by the top retrieved answer (no model) / base / base+RAG / tuned / "
                "tuned+RAG, scored (ROUGE-L, token F1, ended, repeated 4-grams, faithfulness), with optional sweeps.",
    check_specs=[dg.AssetCheckSpec(name, asset="evaluation_answers",
                                   description=f"Warns when tuned+RAG scores below {anchor} (mean token F1).")
                 for name, anchor in CHECKS.items()],
)
def evaluation_answers(context: dg.AssetExecutionContext, config: EvalConfig, paths: GardenPaths, model: BaseModel):
    plan = _plan(config)
    device = GENERATION.resolve_device()
    try:
        questions = load_test_questions(dataset_dir(paths) / "test.jsonl")
        where = {"base": base_model_path(model.spec, paths.home_path / "models"),
                 "tuned": tuned_model_path(paths.home_path / "finetune" / "tuned")}
        models = {m: require_checkpoint(where[m], f"{m}_model") for m in plan.models()}
        requested = check_backend(config.backend or GENERATION.backend)
        backends = {m: resolve_backend(requested, device, models[m], log=context.log.info) for m in models}
        slow = device == "cpu" and TRANSFORMERS in backends.values()
        limit = config.questions if config.questions is not None else (CPU_QUESTIONS if slow else None)
        questions = questions[:limit] if limit else questions
    except (FileNotFoundError, ValueError) as e:
        raise dg.Failure(description=str(e)) from None
    precision = GENERATION.resolve_inference_precision()
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
        store = store_for(paths, IndexConfig(key=key), EMBEDDING)
        if store.open() is None:
            raise dg.Failure(description=f"no qa_index table for key {key!r} at {paths.lance_uri}: "
                                         f"materialize qa_index (with config key: {key}) first")
        return store

    digest = _fingerprint(config, limit, dataset_dir(paths) / "test.jsonl", models, backends,
                          {k: open_store(k).open().version for k in plan.rag_keys()})
    cache = paths.home_path / "evaluation" / f"answers-{digest}.parquet"
    reused = cache.is_file()
    if reused:  # same questions, models, index versions and config: answering again would change nothing
        context.log.info(f"inputs unchanged since the last evaluation ({digest}): reusing {cache}")
        rows = pl.read_parquet(cache)
    else:
        began = time.perf_counter()
        try:
            rows = run_evaluation(questions, plan, load_generator=load, open_store=open_store,
                                  log=context.log.info)
        except ValueError as e:  # a question that cannot fit the window, a bad setting
            raise dg.Failure(description=f"evaluation_answers: {e}") from None
        _write_cache(rows, cache)
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


def _fingerprint(config: EvalConfig, limit, test_file: Path, models: dict, backends: dict, index_versions: dict) -> str:
    """What the answers depend on: config, question limit, test split, models' files and backends, index versions."""
    h = hashlib.sha256(json.dumps([ROWS_VERSION, config.model_dump(), limit, backends, index_versions,
                                   GENERATION.to_dict()],
                                  sort_keys=True, default=str).encode())
    h.update(test_file.read_bytes())
    for path in models.values():  # a checkpoint is rewritten as a whole: names, sizes and mtimes identify it
        for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):  # its GGUF too
            st = f.stat()
            h.update(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _write_cache(rows: pl.DataFrame, cache: Path) -> None:
    """Keep the latest answers only, written under a temporary name and renamed."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp")
    rows.write_parquet(tmp)
    for old in cache.parent.glob("answers-*.parquet"):
        old.unlink()
    tmp.rename(cache)


def _compare_check(main: pl.DataFrame, name: str, variant: str, anchor: str) -> dg.AssetCheckResult:
    """WARN unless ``variant``'s mean token F1 matches or beats ``anchor``'s."""
    means = dict(zip(main["variant"], main["token_f1"]))
    if variant not in means or anchor not in means:
        return dg.AssetCheckResult(check_name=name, passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"note": f"{variant} or {anchor} was not evaluated"})
    return dg.AssetCheckResult(
        check_name=name, passed=bool(means[variant] >= means[anchor]), severity=dg.AssetCheckSeverity.WARN,
        metadata={f"{variant} token_f1": float(means[variant]), f"{anchor} token_f1": float(means[anchor])},
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
