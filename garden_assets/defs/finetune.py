"""The fine-tune path: base_model, finetune_dataset, tuned_model (trainer run through Dagster Pipes)."""

import json
import os
from pathlib import Path

import dagster as dg
import polars as pl

from ..compute import ComputeSpec, load_profile
from ..llm.dataset import RAFT_K, DatasetOptions, RagTarget, prepare_finetune_dataset
from ..llm.gguf_export import export_gguf, has_converter, scripts_dir
from ..llm.models import PACKAGED_GEMMA, base_model_spec, resolve_base_model, tuned_adapter_path, tuned_model_path
from ..llm.rag import DEFAULT_RETRIEVAL
from ..files import file_sha256
from ..settings import Layout
from ..training.config import tune_config
from .index import EMBEDDING, SplitConfig, built_index, qa_index, store_for
from ..training.launch import plan_launch
from .plots import png_markdown, pyplot
from .resources import GardenPaths

TRAINING = load_profile(asset="training", defaults=ComputeSpec(device="auto", batch_size=4))


class BaseModel(dg.ConfigurableResource):
    """Which causal LM to start from: ``packaged:gemma3-270m`` (offline default), a local checkpoint or a Hub id."""

    spec: str = base_model_spec()

    def resolve(self, paths: GardenPaths):
        return resolve_base_model(self.spec, cache_dir=layout(paths).models)


@dg.asset(
    group_name="finetune",
    kinds={"huggingface", "pytorch"},
    # Not on_missing(): that fires only when an asset *becomes* missing after the sensor's first evaluation, so
    # on a fresh deployment base_model would never run and everything downstream would wait for it forever.
    # A failed attempt is not retried by automation (materialize it by hand once the cause is fixed).
    automation_condition=(dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress()
                          & ~dg.AutomationCondition.execution_failed()).with_label("missing_and_not_failed"),
    description="The base checkpoint directory (the packaged Gemma 3 270M GGUF is converted once) and its GGUF "
                "for the llama.cpp backend (the packaged one as is; others converted when the converter is there).",
)
def base_model(context: dg.AssetExecutionContext, paths: GardenPaths, model: BaseModel) -> dg.MaterializeResult:
    info = model.resolve(paths)
    meta = info.to_metadata()
    gguf = _gguf_metadata(context, info.path) if info.spec == PACKAGED_GEMMA or has_converter() else {
        "gguf": f"none: {_no_converter()}"}
    return dg.MaterializeResult(
        metadata={**{k: v for k, v in meta.items() if k != "path"}, "path": dg.MetadataValue.path(info.path), **gguf},
        data_version=dg.DataVersion(f"{info.spec}:{info.parameters}:{info.dtype}"),
    )


def _no_converter() -> str:
    return (f"llama.cpp's converter is not installed ({scripts_dir()}); generation uses transformers "
            "(make setup installs the llama-cpp-python extra)")


def _gguf_metadata(context: dg.AssetExecutionContext, checkpoint, **merged_from) -> dict:
    """Export ``checkpoint``'s GGUF. The fast backend is an optimisation: a model llama.cpp's converter refuses
    (an architecture or tokenizer it does not know) is a warning and a ``none: …`` entry — generation then uses
    transformers — not a failed asset; the previous GGUF is never replaced by a partial one."""
    try:
        gguf = export_gguf(checkpoint, **merged_from)
    except RuntimeError as e:
        context.log.warning(f"GGUF export of {checkpoint} failed; generation uses transformers: {e}")
        return {"gguf": f"none: conversion failed: {str(e).splitlines()[-1]}"}
    context.log.info(f"GGUF {gguf.format}, {gguf.size_mb} MB at {gguf.path} ({'reused' if gguf.reused else f'{gguf.seconds} s'})")
    return {"gguf": dg.MetadataValue.path(gguf.path), "gguf_format": gguf.format, "gguf_size_mb": gguf.size_mb,
            "gguf_conversion_s": gguf.seconds}


_DATASET = DatasetOptions()


class DatasetConfig(SplitConfig):
    """The held-out split's fields (SplitConfig, shared with retriever_model and retrieval_eval), then these."""

    max_length: int = _DATASET.max_length  # tokens; longer rows are dropped and counted, never truncated
    # RAFT: passages retrieved into each training prompt (0: no context). The library's default is 0 (it needs no
    # index); the pipeline has qa_index, so its prompts hold RAFT_K.
    rag_k: int = RAFT_K
    oracle_share: float = _DATASET.oracle_share  # train rows whose own answer is one of the passages
    answer_tokens: int | None = _DATASET.answer_tokens  # longer train answers keep their leading sentences
    rag_target: RagTarget = _DATASET.rag_target  # extract: the passages' leads closest to the answer
    consensus_pool: int | None = _DATASET.consensus_pool  # None: passages in search order (see DatasetOptions)
    epochs: float = 1.0  # only for the tokens × epochs figure

    def options(self) -> DatasetOptions:
        return DatasetOptions(**self.model_dump(exclude={"epochs"}))


@dg.asset(
    group_name="finetune",
    kinds={"json"},
    deps=[base_model, qa_index],
    automation_condition=dg.AutomationCondition.eager(),
    description="Dolly-format train/valid/test.jsonl (prompt, completion, n_tokens) from qa_pairs; RAFT prompts "
                "with passages retrieved from qa_index (never from a held-out question).",
)
def finetune_dataset(context: dg.AssetExecutionContext, config: DatasetConfig, paths: GardenPaths, model: BaseModel,
                     qa_pairs: pl.DataFrame) -> dg.MaterializeResult:
    try:
        options = config.options()
        store = None
        if options.rag_k:
            store = store_for(paths, built_index(context.instance, DEFAULT_RETRIEVAL.key), EMBEDDING)
            if store.open() is None:
                raise ValueError(f"rag_k={options.rag_k} needs qa_index (key {DEFAULT_RETRIEVAL.key!r}): "
                                 "materialize qa_index first")
        files, stats = prepare_finetune_dataset(qa_pairs, model.resolve(paths).path, layout(paths).dataset, options,
                                                store)
    except ValueError as e:  # bad config / no pairs / every row too long: say so, keep the previous dataset
        raise dg.Failure(description=f"finetune_dataset: {e}") from None
    digest = file_sha256(files["train"], files["valid"], files["test"])[:16]
    hist = stats.length_histogram
    return dg.MaterializeResult(
        metadata={
            **{k: dg.MetadataValue.int(int(getattr(stats, k))) for k in (
                "rows_in", "rows_selected", "dropped_empty", "dropped_too_long", "answers_shortened",
                "dropped_long_answer", "train_rows", "valid_rows", "test_rows", "train_tokens", "test_tokens",
                "longest", "rag_k", "oracle_rows", "extract_rows")},
            **({} if stats.extract_f1 is None else {"extract_f1": dg.MetadataValue.float(stats.extract_f1)}),
            "tokens_x_epochs": dg.MetadataValue.int(int(stats.train_tokens * config.epochs)),
            "path": dg.MetadataValue.path(str(layout(paths).dataset)),
            "length_histogram": dg.MetadataValue.md(_histogram_png(hist)) if hist else "",
        },
        data_version=dg.DataVersion(digest),
    )


def layout(paths: GardenPaths) -> Layout:
    """The output paths under the ``paths`` resource's home."""
    return Layout(paths.home_path)


class TuneConfig(dg.Config):
    method: str = "lora"  # lora | full
    # the CPU demo is a time budget (faster code trains more); on a GPU the default is the whole dataset × epochs
    max_train_seconds: float | None = None  # None: CPU_DEMO_SECONDS on CPU, no limit on a GPU
    max_train_tokens: int | None = None
    epochs: float | None = None  # None: CPU_DEMO_EPOCHS on CPU (the time budget ends it first), 1 on a GPU
    learning_rate: float | None = None
    lora_r: int | None = None
    lora_targets: list[str] | None = None
    eval_steps: int = 10
    save_steps: int = 10


@dg.asset(
    group_name="finetune",
    kinds={"pytorch", "huggingface"},
    deps=[finetune_dataset, base_model],
    op_tags=TRAINING.op_tags(),
    pool=TRAINING.pool,
    code_version="trainer-1",
    automation_condition=dg.AutomationCondition.eager(),
    description="LoRA (or full) fine-tune of base_model on finetune_dataset; resumes from its last checkpoint.",
)
def tuned_model(
    context: dg.AssetExecutionContext, config: TuneConfig, paths: GardenPaths, model: BaseModel,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    data, out = layout(paths).dataset, layout(paths).tuned
    try:
        cfg = tune_config(TRAINING.resolve_device(), data / "train.jsonl", model.resolve(paths).path, out,
                          test_file=data / "valid.jsonl", **config.model_dump())
    except ValueError as e:  # a budget of 0, a bad method: before any training starts
        raise dg.Failure(description=f"tuned_model: {e}") from None
    plan = plan_launch(TRAINING, cfg)
    context.log.info(f"launching ({plan.launcher}, {plan.num_processes} process(es)): {' '.join(plan.command)}")
    result = pipes_subprocess_client.run(
        command=plan.command, context=context, env={**os.environ, **plan.env}, cwd=os.getcwd()
    ).get_materialize_result()
    log = read_training_log(out)
    meta = dict(result.metadata or {})
    meta["path"] = dg.MetadataValue.path(str(out))
    meta["launcher"] = plan.launcher
    if log:
        meta["loss_curve"] = dg.MetadataValue.md(_loss_png(log))
    return dg.MaterializeResult(metadata=meta)


def read_training_log(out: Path) -> list[dict]:
    """The trainer's log rows (training_log.jsonl in the tuned folder; none before a first training)."""
    path = out / "training_log.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


@dg.asset_check(asset=tuned_model, description="Warns when eval loss rises for several evaluations while train loss falls.")
def overfitting(paths: GardenPaths) -> dg.AssetCheckResult:
    from ..training.overfitting import overfitting_signal

    log = read_training_log(layout(paths).tuned)
    signal = overfitting_signal(log)
    return dg.AssetCheckResult(
        passed=not signal["overfitting"], severity=dg.AssetCheckSeverity.WARN,
        metadata={k: v for k, v in signal.items() if isinstance(v, (int, float, str, bool))},
    )


def _histogram_png(hist: dict) -> str:
    plt = pyplot()
    edges = hist["bin_edges"]
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    for name in ("train", "test"):
        ax.stairs(hist[name], edges, label=name)
    ax.set_xlabel(f"tokens per example ({hist['dropped'][0]} rows over max_length dropped)")
    ax.set_ylabel("rows")
    ax.legend()
    return png_markdown(fig, "length histogram")


def _loss_png(log: list[dict]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    for key in ("train_loss", "eval_loss"):
        pts = [(r["step"], r[key]) for r in log if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o" if key == "eval_loss" else None, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return png_markdown(fig, "loss curves")


@dg.asset(
    group_name="finetune",
    kinds={"llamacpp"},
    deps=[tuned_model],
    automation_condition=dg.AutomationCondition.eager(),
    description="tuned_model as GGUF for the llama.cpp backend of garden ask / evaluation_answers, once per "
                "training run: the packaged base GGUF + the LoRA adapter (convert_lora_to_gguf), or the merged "
                "checkpoint converted (convert_hf_to_gguf, q8_0); a note where llama.cpp is absent.",
    check_specs=[dg.AssetCheckSpec("gguf_exported", asset="tuned_model_gguf",
                                   description="Warns when llama.cpp's converter is absent or refused the model "
                                               "(generation then falls back to transformers).")],
)
def tuned_model_gguf(context: dg.AssetExecutionContext, paths: GardenPaths, model: BaseModel):
    tuned = layout(paths).tuned
    if not has_converter():
        context.log.info(_no_converter())
        meta = {"gguf": f"none: {_no_converter()}"}
    else:
        adapter = tuned_adapter_path(tuned)
        meta = _gguf_metadata(context, tuned_model_path(tuned), adapter=adapter,
                              base=model.resolve(paths).path if adapter else None)
    yield dg.MaterializeResult(metadata=meta)
    exported = not str(meta["gguf"]).startswith("none")
    yield dg.AssetCheckResult(check_name="gguf_exported", passed=exported, severity=dg.AssetCheckSeverity.WARN,
                              metadata={"gguf": str(meta["gguf"])})
