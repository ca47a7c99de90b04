"""``make run``: register the drops in GARDEN_DROPS and materialize every asset into GARDEN_HOME.

Runs go through the persistent Dagster instance in ``$DAGSTER_HOME`` (default ``GARDEN_HOME/dagster``), so
``make ui`` afterwards shows them. One run per drop for the partitioned ingestion assets, then one run for
everything downstream, in dependency order — except ``retriever_model`` (a training run) unless qa_index's default
config reads it (``model: adapted``).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import dagster as dg
import polars as pl

from .defs.automation import SENSOR_NAME, drop_run_tags
from .defs.index import retriever_model, trains_retriever
from .defs.posts import drops_partitions
from .defs.runs import fail_dead_runs
from .settings import Layout, drops_folder, garden_home
from .drops import run_key, scan_drops
from .files import file_sha256
from .stackexchange.reader import DumpError


def instance() -> dg.DagsterInstance:
    """The persistent instance in $DAGSTER_HOME; a fresh one gets deploy/dagster.local.yaml (run queue, pools)."""
    home = garden_home()
    os.environ.setdefault("DAGSTER_HOME", str(home / "dagster"))
    dagster_home = Path(os.environ["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        shutil.copy(Path(__file__).resolve().parents[1] / "deploy" / "dagster.local.yaml", config)
    return dg.DagsterInstance.get()


def main() -> int:
    from .definitions import defs

    started = time.time()
    inst = instance()
    for run_id in fail_dead_runs(inst):
        print(f"run {run_id[:8]}: its process is gone (killed?); marked failed, its pool slots freed", file=sys.stderr)
    try:
        drops, problems = scan_drops(drops_folder())
    except DumpError as e:
        print(f"garden: {e}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"skipping: {problem}", file=sys.stderr)
    if not drops:
        print(f"no drops in {drops_folder()}", file=sys.stderr)
        return 1
    keys = [d.key for d in drops]
    inst.add_dynamic_partitions(drops_partitions.name, [k for k in keys if not inst.has_dynamic_partition(drops_partitions.name, k)])
    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    partitioned = [k for k in graph.materializable_asset_keys if graph.get(k).partitions_def is not None]
    downstream = [k for k in graph.materializable_asset_keys if graph.get(k).partitions_def is None
                  and (k != retriever_model.key or trains_retriever())]
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    failed = []
    for drop in drops:
        # Tagged as the drops sensor's run of this content: its first tick under `make ui` finds the run key taken.
        digest = file_sha256(drop.file)
        tags = {**drop_run_tags(drop, digest), "dagster/run_key": run_key(drop, digest), "dagster/sensor_name": SENSOR_NAME}
        result = job.execute_in_process(instance=inst, partition_key=drop.key, asset_selection=partitioned,
                                        raise_on_error=False, run_config=quiet, tags=tags)
        print(f"drop {drop.key} ({drop.site}): {'ok' if result.success else 'FAILED'} (run {result.run_id[:8]})")
        if not result.success:
            failed.append(drop.key)
    result = job.execute_in_process(instance=inst, asset_selection=downstream, raise_on_error=False, run_config=quiet)
    print(f"{', '.join(k.to_user_string() for k in downstream)}: {'ok' if result.success else 'FAILED'} (run {result.run_id[:8]})")
    for check in result.get_asset_check_evaluations():  # WARN checks: the run succeeded, but say what they found
        if not check.passed:
            print(f"warning: {check.asset_key.to_user_string()} check {check.check_name} failed"
                  f"{': ' + check.description if check.description else ''}", file=sys.stderr)
    summary(inst, keys, failed, time.time() - started)
    return 0 if result.success and not failed else 1


def summary(inst: dg.DagsterInstance, keys: list[str], failed: list[str], seconds: float) -> None:
    storage = Layout.from_env().storage
    posts = sum(pl.scan_parquet(storage / "raw_posts" / f"{k}.parquet").select(pl.len()).collect().item()
                for k in keys if (storage / "raw_posts" / f"{k}.parquet").exists())
    pairs_file = storage / "qa_pairs.parquet"
    pairs = pl.scan_parquet(pairs_file).select(pl.len()).collect().item() if pairs_file.exists() else 0
    print("\n== garden_assets: done in %.0f s ==" % seconds)
    print(f"drops:   {len(keys)} ({', '.join(keys)}){'; failed: ' + ', '.join(failed) if failed else ''}")
    print(f"posts:   {posts} read")
    print(f"pairs:   {pairs} Q/A pairs -> {pairs_file}")
    if pairs_file.exists():  # a search per site, with that site's own best-scored question: never another corpus's
        best = (pl.scan_parquet(pairs_file).sort("question_score", descending=True).group_by("site", maintain_order=True)
                .agg(pl.col("instruction").first()).sort("site").collect())
        for site, title in best.iter_rows():
            print(f'         search: .venv/bin/garden search "{title}" --site {site}')
    answers = storage / "evaluation_answers.parquet"
    if answers.exists():
        from .llm.evaluation import summarize

        rows = pl.read_parquet(answers)
        main = summarize(rows).filter(pl.col("sweep") == "main")
        print(f"answers: {answers} ({main['questions'][0]} held-out questions)")
        print(f"         {'variant':<10} {'token F1':>8} {'ROUGE-L':>8} {'ended':>6} {'rep 4g':>7} {'faithful':>8} {'quoted':>6} {'withheld':>8} {'p50 s':>6}")
        for r in main.iter_rows(named=True):
            faithful = "—" if r["faithfulness"] is None else f"{r['faithfulness']:.2f}"
            print(f"         {r['variant']:<10} {r['token_f1']:>8.3f} {r['rouge_l']:>8.3f} {r['ended']:>6.0%} "
                  f"{r['repeated_4grams']:>7.1%} {faithful:>8} {r['quoted']:>6.0%} {r['declined']:>8.0%} {r['latency_p50_s']:>6.1f}")
        print(f'         ask: .venv/bin/garden ask "{rows["question"][0]}"')
    print(f"outputs: {storage}")
    print(f"runs:    {os.environ['DAGSTER_HOME']} (see them with `make ui`, http://127.0.0.1:3000)")


if __name__ == "__main__":
    sys.exit(main())
