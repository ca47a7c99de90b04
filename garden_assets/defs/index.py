"""The retrieval path: retriever_model (the adapted embedder), qa_index (LanceDB), retrieval_eval, and the
scheduled re-index job."""

import os

import dagster as dg
import polars as pl

from ..compute import ComputeSpec, load_profile
from ..llm.dataset import SplitOptions, held_out_questions
from ..retrieval.adapt import AdaptOptions
from ..retrieval.embedder import DEFAULT_KEY
from ..retrieval.metrics import GRID_KEYS, compare_models
from ..retrieval.search import MODES, VECTOR_WEIGHT
from ..retrieval.store import CommitConflict, open_store
from ..settings import Layout, lance_storage_options
from .configs import config_class
from .metadata import counts, markdown_table
from .plots import png_markdown, pyplot
from .resources import GardenPaths

EMBEDDING = load_profile(asset="embedding", defaults=ComputeSpec(device="auto", batch_size=32))
RETRIES = 2  # qa_index attempts after a LanceDB commit conflict (the only error a retry can fix)
ADAPTED = "adapted"  # qa_index's `model:` for retriever_model's output
_ADAPT = AdaptOptions()


class _SplitConfig(dg.Config):
    def split_options(self) -> SplitOptions:
        return SplitOptions(**{f: getattr(self, f) for f in SplitOptions.__dataclass_fields__})


SplitConfig = config_class(
    SplitOptions, "SplitConfig", base=_SplitConfig,
    doc="The project's held-out split (llm.dataset.SplitOptions): finetune_dataset, retriever_model and "
        "retrieval_eval each take it, so change it in all three run configs or in none.")


def retriever_dir(paths: GardenPaths):
    return Layout(paths.home_path).retriever


class RetrieverConfig(SplitConfig):
    model: str = ""  # the sentence-transformers model to adapt; empty: the packaged all-MiniLM-L6-v2
    epochs: float = _ADAPT.epochs
    max_train_seconds: float | None = _ADAPT.max_seconds  # the CPU budget; None: no limit (GPU)
    batch_size: int = _ADAPT.batch_size  # pairs per step: more in-batch negatives
    learning_rate: float = _ADAPT.learning_rate
    max_seq_length: int = _ADAPT.max_seq_length
    anchor: str = _ADAPT.anchor  # "title" or "title+body"
    positives: list[str] = list(_ADAPT.positives)  # "answer" and/or "body+answer" (retrieval.adapt.POSITIVES)

    def adapt_options(self) -> AdaptOptions:
        return AdaptOptions(epochs=self.epochs, max_seconds=self.max_train_seconds, batch_size=self.batch_size,
                            learning_rate=self.learning_rate, max_seq_length=self.max_seq_length,
                            anchor=self.anchor, positives=tuple(self.positives), seed=self.seed)


@dg.asset(
    group_name="retrieval",
    kinds={"pytorch", "huggingface"},
    op_tags=EMBEDDING.op_tags(),
    pool=EMBEDDING.pool,
    # No automation condition: a training run (150 s on 2 cores) that only `qa_index` with `model: adapted` reads.
    # Materialize it by hand (or let `make run` do it when IndexConfig's default model is `adapted`); qa_index and
    # retrieval_eval neither wait for it nor run because it is missing.
    description="The embedder fine-tuned (MultipleNegativesRankingLoss, in-batch negatives) on the train split's "
                "(question title → answer, question title → body + answer) pairs; qa_index uses it with "
                "`model: adapted`.",
)
def retriever_model(context: dg.AssetExecutionContext, config: RetrieverConfig, paths: GardenPaths,
                    qa_pairs: pl.DataFrame) -> dg.MaterializeResult:
    from ..retrieval.adapt import adapt_embedder

    try:
        held = held_out_questions(qa_pairs, config.split_options())
        result = adapt_embedder(qa_pairs, held.questions, retriever_dir(paths), model=config.model or None,
                                options=config.adapt_options(), device=EMBEDDING.device,
                                precision=EMBEDDING.precision, log=context.log.info)
    except ValueError as e:  # bad config, too few pairs: the previous model is kept
        raise dg.Failure(description=f"retriever_model: {e}") from None
    return dg.MaterializeResult(
        metadata={
            **counts(pairs=result.pairs, examples=result.examples, questions=result.questions,
                     held_out_questions=len(held.questions), steps=result.steps),
            "epochs": dg.MetadataValue.float(result.epochs),
            "seconds": dg.MetadataValue.float(result.seconds),
            "stopped_by_budget": result.stopped_by_budget,
            "reused": result.reused,  # same pairs, split and options as the last run: the model on disk was kept
            "base_model": result.base_model,
            "final_loss": dg.MetadataValue.float(result.loss[-1][1] if result.loss else float("nan")),
            "loss_curve": dg.MetadataValue.md(_loss_png(result.loss)),
            "path": dg.MetadataValue.path(result.path),
        },
        data_version=dg.DataVersion(result.fingerprint),
    )


def _loss_png(loss: list[tuple[int, float]]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    if loss:
        ax.plot(*zip(*loss), label="train_loss (MNRL)")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return png_markdown(fig, "retriever loss curve")


# qa_index and retrieval_eval follow their inputs eagerly, except that a missing retriever_model (the default:
# nothing trains it unless asked) neither holds them back nor starts them; a new retriever_model does update them.
retriever_optional = dg.AutomationCondition.eager().replace(
    "any_deps_missing", dg.AutomationCondition.any_deps_missing().ignore(dg.AssetSelection.assets("retriever_model")),
).with_label("eager_retriever_optional")


class IndexConfig(dg.Config):
    """Which table qa_index writes: the key (what is embedded) and the embedding model. Search settings (mode,
    k) are the readers' own: evaluation_answers' ``retrieval`` config, ``garden search/ask`` flags."""

    key: str = DEFAULT_KEY  # one of retrieval.embedder.KEYS (docs/retrieval.md has the measurements)
    # a sentence-transformers name or path, or "adapted" (retriever_model's output); empty: the packaged
    # all-MiniLM-L6-v2 (the default: the adapted model's measured gain is below the +3-point goal, docs/retrieval.md)
    model: str = ""


def trains_retriever(config: IndexConfig | None = None) -> bool:
    """Whether qa_index with ``config`` (default: its default config) reads retriever_model's output."""
    return (config or IndexConfig()).model == ADAPTED


def embedding_model(paths: GardenPaths, model: str) -> str | None:
    """The model an ``IndexConfig.model`` names: None (packaged MiniLM), a name/path, or retriever_model's folder."""
    if model != ADAPTED:
        return model or None
    from ..retrieval.adapt import INFO

    folder = retriever_dir(paths)
    if not (folder / INFO).exists():
        raise dg.Failure(f"model: {ADAPTED} needs retriever_model's output in {folder}: materialize it first")
    return str(folder)


def built_index(instance: dg.DagsterInstance, key: str = DEFAULT_KEY) -> IndexConfig:
    """The ``key`` table of the index as qa_index last built it: with the embedding model of its latest
    materialization (a custom model has its own table), the packaged model when there is none yet."""
    event = instance.get_latest_materialization_event(dg.AssetKey("qa_index"))
    model = event.asset_materialization.metadata.get("model") if event and event.asset_materialization else None
    return IndexConfig(key=key, model=str(model.value) if model is not None else "")


def store_for(paths: GardenPaths, config: IndexConfig, spec: ComputeSpec = EMBEDDING):
    return open_store(
        paths.lance_uri, key=config.key, model=embedding_model(paths, config.model), device=spec.device,
        precision=spec.precision, batch_size=spec.batch_size or 32, storage_options=lance_storage_options(),
    )


@dg.asset(
    group_name="retrieval",
    kinds={"lancedb", "pytorch"},
    deps=[retriever_model],  # read only with `model: adapted`; an unchanged table re-embeds nothing
    op_tags=EMBEDDING.op_tags(),
    pool=EMBEDDING.pool or "lancedb_writer",  # one writer per table at a time (pool limit 1, deploy/*.yaml)
    automation_condition=retriever_optional,
    description="qa_pairs embedded into LanceDB (vector + full-text); re-runs embed only new or changed rows.",
)
def qa_index(context: dg.AssetExecutionContext, config: IndexConfig, paths: GardenPaths, qa_pairs: pl.DataFrame) -> dg.MaterializeResult:
    if qa_pairs.height == 0:
        raise dg.Failure("qa_pairs is empty: nothing to index (the previous index version is kept)")
    store = store_for(paths, config)
    last = [0]

    def progress(done: int, total: int) -> None:
        if done == total or done - last[0] >= 256:
            last[0] = done
            context.log.info(f"embedded {done}/{total}")

    try:
        stats = store.upsert(qa_pairs, progress=progress)
        created = store.ensure_indexes()
    except CommitConflict as e:
        # Without the pool limit two writers can race; LanceDB then rejects the later commit (never duplicate
        # rows) and the retry finds those rows unchanged. Any other error (permissions, a full disk) would fail
        # the same way again: it fails the step at once.
        raise dg.RetryRequested(max_retries=RETRIES, seconds_to_wait=5) from e
    meta = store.metadata()
    return dg.MaterializeResult(
        metadata={
            **counts(embedded=stats.embedded, updated=stats.updated, inserted=stats.inserted, deleted=stats.deleted,
                     unchanged=stats.unchanged, rows=store.count()),
            "seconds": dg.MetadataValue.float(round(stats.seconds, 2)),
            "docs_per_s": dg.MetadataValue.float(round(stats.docs_per_s, 1)),
            "table": stats.table,
            "table_version": dg.MetadataValue.int(int(store.open().version)),
            "uri": paths.lance_uri,
            "indexes_created": ", ".join(created) or "none",
            "model": meta.get("embedding_model", ""),
            "dimension": dg.MetadataValue.int(int(meta.get("embedding_dim", 0))),
            "key": meta.get("key", config.key),
        }
    )


class RetrievalEvalConfig(SplitConfig):
    keys: list[str] = list(GRID_KEYS)  # question+answer is measured as body+answer (query = title)
    modes: list[str] = list(MODES)
    model: str = ""  # the off-the-shelf model (empty: packaged MiniLM); retriever_model's output is added itself
    mpnet: str = ""  # a local all-mpnet-base-v2 folder to add as a row (not packaged offline)
    vector_weights: list[float] = [VECTOR_WEIGHT]  # hybrid fusion weights to measure


@dg.asset(
    group_name="retrieval",
    kinds={"lancedb"},
    deps=[qa_index, retriever_model],
    op_tags=EMBEDDING.op_tags(),
    automation_condition=retriever_optional,
    description="Success@5 / MRR@10 on the held-out test questions (query = title; corpus = every answer) for "
                "off-the-shelf MiniLM, adapted MiniLM (retriever_model, once materialized), BM25 and the hybrid "
                "of each.",
)
def retrieval_eval(context: dg.AssetExecutionContext, config: RetrievalEvalConfig, paths: GardenPaths,
                   qa_pairs: pl.DataFrame) -> dg.MaterializeResult:
    from ..retrieval.adapt import INFO, trained_outside
    from ..retrieval.embedder import Embedder

    try:
        test = held_out_questions(qa_pairs, config.split_options()).test
    except ValueError as e:
        raise dg.Failure(f"retrieval_eval: {e}") from None
    if not test:
        raise dg.Failure("retrieval_eval: the split holds out no test question (too few pairs, or test_size 0)")

    def embedder(model: str | None):
        return Embedder(model, device=EMBEDDING.device, precision=EMBEDDING.precision,
                        batch_size=EMBEDDING.batch_size or 32)

    models = {config.model or "minilm": embedder(config.model or None)}
    folder = retriever_dir(paths)
    if not (folder / INFO).exists():
        adapted = "not materialized (materialize retriever_model to add its rows)"
    elif not trained_outside(folder, test):  # an older, smaller split: some test questions were its train pairs
        adapted = "stale: trained on some of today's held-out questions (re-materialize retriever_model)"
        context.log.warning(f"retrieval_eval: {folder} {adapted}; its rows are left out")
    else:
        adapted, models[ADAPTED] = str(folder), embedder(str(folder))
    if config.mpnet:
        models["mpnet"] = embedder(config.mpnet)
    rows = [r for key in config.keys for r in compare_models(qa_pairs, models, key=key, modes=config.modes,
                                                              questions=test, weights=config.vector_weights)]
    table = pl.DataFrame(rows).select("model", "key", "mode", "vector_weight", "success_at_5", "mrr_at_10",
                                      "queries", "docs_per_s")
    md = markdown_table(table)
    best = table.sort("success_at_5", descending=True).row(0, named=True)
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(md + "\n\n" + _bar_plot(table)),
            "best": f"{best['model']} {best['key']} / {best['mode']}: Success@5 {best['success_at_5']}",
            "queries": dg.MetadataValue.int(int(table["queries"][0])),
            "held_out_questions": dg.MetadataValue.int(len(test)),
            "adapted_model": adapted,
        }
    )


def _bar_plot(table: pl.DataFrame) -> str:
    """A bar chart of Success@5 per model × key × mode, as an inline PNG for the markdown metadata."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=100)
    labels = [f"{model}\n{k}\n{m}" for model, k, m in zip(table["model"], table["key"], table["mode"])]
    ax.bar(labels, table["success_at_5"], color="#4c8c4a")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Success@5")
    ax.tick_params(axis="x", labelsize=7)
    return png_markdown(fig, "Success@5")


@dg.op(description="Compact the index, rebuild its full-text/ANN indexes and prune old versions.")
def reindex(context: dg.OpExecutionContext, config: IndexConfig, paths: GardenPaths) -> None:
    store = store_for(paths, config)
    if store.open() is None:
        raise dg.Failure("no index yet: materialize qa_index first")
    result = store.optimize()
    created = store.ensure_indexes(replace=True)
    context.log.info(f"optimized {store.count()} rows: {result}; indexes rebuilt: {created}")


@dg.job(description="Maintenance of the LanceDB index (also on a daily schedule).")
def reindex_job():
    reindex()


reindex_schedule = dg.ScheduleDefinition(
    job=reindex_job,
    cron_schedule=os.environ.get("GARDEN_REINDEX_CRON", "0 3 * * *"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
