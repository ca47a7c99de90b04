"""A qa_index run killed with SIGKILL never wedges the instance (issue 15, item 1).

Real parts: a persistent SQLite instance configured by the shipped deploy/dagster.local.yaml, real
``dagster asset materialize`` processes killed mid qa_index, the real daemon (run queue, run monitoring with
``LocalRunLauncher``), MiniLM embeddings on the bundled sample drops.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import polars as pl
import psutil
import pytest
import yaml

from garden_assets.defs import index, posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths
from garden_assets.defs.runs import fail_dead_runs, run_process
from .tiny_models import tiny_random_model
from garden_assets.retrieval.store import open_store

from .conftest import SAMPLE_DROPS
from .ui_helpers import DagsterUI, dagster_bin

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]
ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs, index.qa_index]
POOL = "lancedb_writer"


def started_step(instance: dg.DagsterInstance, step: str, timeout: float, exclude=()) -> str:
    """The id of the first run (not in ``exclude``) whose ``step`` has started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
            if run.run_id not in exclude and any(
                    e.dagster_event.step_key == step
                    for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)):
                return run.run_id
        time.sleep(0.2)
    raise TimeoutError(f"no run started {step} within {timeout:.0f} s")


def kill_tree(pid: int) -> None:
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        p.send_signal(signal.SIGKILL)


def kill_cli_qa_index(instance: dg.DagsterInstance, env: dict, exclude=()) -> str:
    """``dagster asset materialize --select qa_index`` (steps run in that process tree), SIGKILLed once the
    qa_index step has started; returns the run id, left STARTED with the pool slot held."""
    cli = subprocess.Popen([dagster_bin("dagster"), "asset", "materialize", "-m", "garden_assets.definitions",
                            "--select", "qa_index"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        run_id = started_step(instance, "qa_index", timeout=180, exclude=exclude)
        kill_tree(cli.pid)
    finally:
        os.killpg(cli.pid, signal.SIGKILL)
        cli.wait()
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED
    assert run_id in instance.event_log_storage.get_concurrency_run_ids()  # the slot the next run waits for
    return run_id


def wait_status(instance: dg.DagsterInstance, run_id: str, timeout: float) -> dg.DagsterRunStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = instance.get_run_by_id(run_id).status
        if status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED):
            return status
        time.sleep(1)
    raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s")


def test_killed_qa_index_runs_never_wedge_the_instance(tmp_path):
    drops, home = tmp_path / "drops", tmp_path / "home"
    shutil.copytree(SAMPLE_DROPS / "sample-gardening", drops / "sample-gardening")
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True)
    (tmp_path / "logs").mkdir()
    config = yaml.safe_load((ROOT / "deploy" / "dagster.local.yaml").read_text())
    config["run_monitoring"]["poll_interval_seconds"] = 3  # the shipped file, only looking more often
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))
    tiny = tiny_random_model(tmp_path / "tiny")
    ui = DagsterUI(home=home, drops=drops, logs=tmp_path / "logs", extra_env={
        "GARDEN_DROP_SETTLE_S": "0", "GARDEN_SENSOR_INTERVAL_S": "3", "GARDEN_BASE_MODEL": str(tiny)})
    env = ui.env()
    resources = {"paths": GardenPaths(home=str(home), drops=str(drops)),
                 "io_manager": AtomicParquetIOManager(base_dir=str(home / "storage"))}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert type(instance.run_launcher).__name__ == "LocalRunLauncher"
        instance.add_dynamic_partitions("drops", ["sample-gardening"])
        assert dg.materialize(ASSETS, selection=ASSETS[:2], partition_key="sample-gardening", instance=instance,
                              resources=resources).success
        assert dg.materialize(ASSETS, selection=ASSETS[2:3], instance=instance, resources=resources).success

        # 1. No daemon (make run): the next run_local fails the dead run and frees its slot first.
        dead = kill_cli_qa_index(instance, env)
        assert run_process(instance, dead) is not None
        assert fail_dead_runs(instance) == [dead]
        run = instance.get_run_record_by_id(dead)
        assert run.dagster_run.status == dg.DagsterRunStatus.FAILURE
        assert "process" in instance.all_logs(dead, of_type=dg.DagsterEventType.RUN_FAILURE)[-1].message
        assert dead not in instance.event_log_storage.get_concurrency_run_ids()
        assert fail_dead_runs(instance) == []  # a live or finished run is never touched
        assert dg.materialize(ASSETS, selection=[index.qa_index], instance=instance, resources=resources).success

        # 2. Under the daemon: run monitoring fails a killed CLI run, so the queued runs of a new drop start;
        # a daemon-launched qa_index run killed in turn is failed too, and the next qa_index run completes.
        dead = kill_cli_qa_index(instance, env)
        ui.start(only=("daemon",))
        try:
            shutil.copy(SAMPLE_DROPS / "sample-update.7z", drops / "sample-update.7z")
            assert wait_status(instance, dead, timeout=120) == dg.DagsterRunStatus.FAILURE
            launched = started_step(instance, "qa_index", timeout=300, exclude={dead})
            worker = run_process(instance, launched)
            assert worker is not None and worker[0] != os.getpid()
            kill_tree(worker[0])
            assert wait_status(instance, launched, timeout=120) == dg.DagsterRunStatus.FAILURE
            # The daemon frees the killed run's slot; the next qa_index run gets it.
            assert dg.materialize(ASSETS, selection=[index.qa_index], instance=instance, resources=resources).success
        finally:
            ui.stop()
        pairs = pl.read_parquet(home / "storage" / "qa_pairs.parquet")
        assert open_store(home / "lancedb").count() == pairs.height
