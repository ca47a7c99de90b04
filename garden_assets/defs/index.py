"""The retrieval path: qa_index (LanceDB), retrieval_eval, and the scheduled re-index job."""

import os

import dagster as dg
import polars as pl

from ..compute import ComputeSpec, load_profile
from ..retrieval.embedder import DEFAULT_KEY
from ..retrieval.metrics import GRID_KEYS, evaluate_grid
from ..retrieval.search import MODES
from ..retrieval.store import CommitConflict, open_store
from ..settings import lance_storage_options
from .metadata import counts, markdown_table
from .plots import png_markdown, pyplot
from .resources import GardenPaths

EMBEDDING = load_profile(asset="embedding", defaults=ComputeSpec(device="auto", batch_size=32))
RETRIES = 2  # qa_index attempts after a LanceDB commit conflict (the only error a retry can fix)


class IndexConfig(dg.Config):
    """Which table qa_index writes: the key (what is embedded) and the embedding model. Search settings (mode,
    k) are the readers' own: evaluation_answers' ``retrieval`` config, ``garden search/ask`` flags."""

    key: str = DEFAULT_KEY  # one of retrieval.embedder.KEYS (docs/retrieval.md has the measurements)
    model: str = ""  # a sentence-transformers name or path; empty: the packaged all-MiniLM-L6-v2


def built_index(instance: dg.DagsterInstance, key: str = DEFAULT_KEY) -> IndexConfig:
    """The ``key`` table of the index as qa_index last built it: with the embedding model of its latest
    materialization (a custom model has its own table), the packaged model when there is none yet."""
    event = instance.get_latest_materialization_event(dg.AssetKey("qa_index"))
    model = event.asset_materialization.metadata.get("model") if event and event.asset_materialization else None
    return IndexConfig(key=key, model=str(model.value) if model is not None else "")


def store_for(paths: GardenPaths, config: IndexConfig, spec: ComputeSpec = EMBEDDING):
    return open_store(
        paths.lance_uri, key=config.key, model=config.model or None, device=spec.device,
        precision=spec.precision, batch_size=spec.batch_size or 32, storage_options=lance_storage_options(),
    )


@dg.asset(
    group_name="retrieval",
    kinds={"lancedb", "pytorch"},
    op_tags=EMBEDDING.op_tags(),
    pool=EMBEDDING.pool or "lancedb_writer",  # one writer per table at a time (pool limit 1, deploy/*.yaml)
    automation_condition=dg.AutomationCondition.eager(),
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


class RetrievalEvalConfig(dg.Config):
    keys: list[str] = list(GRID_KEYS)  # question+answer is measured as body+answer (query = title)
    modes: list[str] = list(MODES)
    model: str = ""


@dg.asset(
    group_name="retrieval",
    kinds={"lancedb"},
    deps=[qa_index],
    op_tags=EMBEDDING.op_tags(),
    automation_condition=dg.AutomationCondition.eager(),
    description="Success@5 / MRR@10 per key × mode (query = question title; relevant = that question's answers).",
)
def retrieval_eval(config: RetrievalEvalConfig, qa_pairs: pl.DataFrame) -> dg.MaterializeResult:
    from ..retrieval.embedder import Embedder

    embedder = Embedder(config.model or None, device=EMBEDDING.device, precision=EMBEDDING.precision,
                        batch_size=EMBEDDING.batch_size or 32)
    rows = [r.to_dict() for r in evaluate_grid(qa_pairs, embedder, config.keys, config.modes)]
    table = pl.DataFrame(rows).select("key", "mode", "success_at_5", "mrr_at_10", "queries", "query_ms_p50")
    md = markdown_table(table)
    best = table.sort("success_at_5", descending=True).row(0, named=True)
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(md + "\n\n" + _bar_plot(table)),
            "best": f"{best['key']} / {best['mode']}: Success@5 {best['success_at_5']}",
            "queries": dg.MetadataValue.int(int(table["queries"][0])),
        }
    )


def _bar_plot(table: pl.DataFrame) -> str:
    """A bar chart of Success@5 per key × mode, as an inline PNG for the markdown metadata."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    labels = [f"{k}\n{m}" for k, m in zip(table["key"], table["mode"])]
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
