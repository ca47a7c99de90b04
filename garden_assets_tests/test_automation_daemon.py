"""Hands-free: with the real daemon running, copying a drop into GARDEN_DROPS materializes everything downstream
through evaluation_answers with no click; touching it again (same content) starts nothing.

A real ``dagster-daemon`` (sensors, automation-condition evaluation, run queue, subprocess run launcher) on a
temporary instance; the small bundled `.7z` drop, MiniLM embeddings, and a tiny random Gemma-architecture model
as the base model (GARDEN_BASE_MODEL), so the whole chain takes a few minutes on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import time

import dagster as dg
import pytest

from .tiny_models import tiny_random_model

from .ui_helpers import ROOT, DagsterUI

pytestmark = pytest.mark.timeout(900)
DROP = ROOT / "data" / "drops" / "sample-update.7z"
EVERY_ASSET = ["raw_posts", "clean_posts", "qa_pairs", "qa_index", "retrieval_eval", "base_model",
               "finetune_dataset", "tuned_model", "evaluation_answers"]


def wait_for(instance: dg.DagsterInstance, ui: DagsterUI, asset: str, timeout: float) -> dg.EventLogEntry:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ui._check_alive()
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is not None:
            return event
        failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
        if failed:
            logs = "\n".join(e.message for r in failed for e in instance.all_logs(r.run_id) if e.message)[-6000:]
            raise AssertionError(f"run {failed[0].run_id} failed:\n{logs}")
        time.sleep(2)
    raise TimeoutError(f"{asset} not materialized after {timeout:.0f} s\n{ui.diagnostics()}")


def test_new_drop_flows_to_evaluation_then_unchanged_drop_starts_nothing(tmp_path):
    tiny = tiny_random_model(tmp_path / "tiny")
    drops = tmp_path / "drops"
    drops.mkdir()
    ui = DagsterUI(home=tmp_path / "home", drops=drops, logs=tmp_path / "logs", extra_env={
        "GARDEN_DROP_SETTLE_S": "0", "GARDEN_SENSOR_INTERVAL_S": "5", "GARDEN_BASE_MODEL": str(tiny),
        "GARDEN_PROFILE": "cpu-local",
    })
    ui.prepare("drops", [])
    try:
        ui.start(only=("daemon",))
        shutil.copy(DROP, drops / DROP.name)  # the only thing a person does
        with dg.DagsterInstance.from_config(str(ui.dagster_home)) as instance:
            wait_for(instance, ui, "evaluation_answers", timeout=720)
            assert instance.get_dynamic_partitions("drops") == ["sample-update.7z"]
            for asset in EVERY_ASSET:
                assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None, asset
            # retriever_model has no automation condition (nothing reads it by default); qa_index and
            # retrieval_eval ran without it
            assert instance.get_latest_materialization_event(dg.AssetKey("retriever_model")) is None
            runs = instance.get_runs()
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs if r.is_finished)
            tags = [r.tags for r in runs]
            assert any(t.get("dagster/sensor_name") == "drops_sensor" for t in tags)
            assert any(t.get("dagster/sensor_name") == "garden_automation" for t in tags)
            assert (ui.storage / "evaluation_answers.parquet").is_file()

            # Same content, new mtime: the sensor re-hashes, finds the same hash, and requests nothing.
            while any(not r.is_finished for r in instance.get_runs()):
                time.sleep(2)
            before = len(instance.get_runs())
            os.utime(drops / DROP.name)
            time.sleep(25)  # several sensor ticks (5 s interval)
            assert len(instance.get_runs()) == before
    finally:
        ui.stop()
