"""Runs whose process is gone are failed, so they never hold a pool slot or a run-queue slot.

Dagster's run monitoring fails a STARTED run only when the run launcher says its worker is dead, and the
``DefaultRunLauncher`` cannot say (``supports_check_run_worker_health`` is False): a ``kill -9`` of
``make run`` or of ``dagster asset materialize`` (runs executed in that process, not launched) stayed STARTED
forever, holding the ``lancedb_writer`` slot and the one run slot of deploy/dagster.local.yaml.
``LocalRunLauncher`` (that file's run launcher) answers from the pid each run records in its event log, so the
daemon's run monitoring fails dead runs and frees their slots; ``fail_dead_runs`` does the same at ``make run``
start, where no daemon runs. Pids are local: this is for one-machine (SQLite) instances.
"""

from __future__ import annotations

import dagster as dg
import psutil
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus  # not re-exported by `dagster`

IN_PROGRESS = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def run_process(instance: dg.DagsterInstance, run_id: str) -> tuple[int, float] | None:
    """(pid, timestamp) of the process that executes the run, from its latest run-level engine event with a pid
    ("Started process for run", "Executing steps in process", the multiprocess executor's parent pid)."""
    for record in reversed(instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)):
        event = record.dagster_event
        data = event.engine_event_data if event is not None and event.step_key is None else None
        if data is not None and "pid" in data.metadata:
            return int(data.metadata["pid"].value), record.timestamp
    return None


def process_gone(pid: int, since: float) -> bool:
    """True when ``pid`` is not running, is a zombie, or is a newer process that reused the number."""
    try:
        proc = psutil.Process(pid)
        return proc.status() == psutil.STATUS_ZOMBIE or proc.create_time() > since + 1
    except psutil.NoSuchProcess:  # includes ZombieProcess
        return True
    except psutil.AccessDenied:  # someone else's process: it exists
        return False


def dead_run_message(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str | None:
    """Why ``run`` (in progress) is dead, or None when its process runs or it recorded none yet."""
    found = run_process(instance, run.run_id)
    if found is None or not process_gone(*found):
        return None
    return f"the run's process (pid {found[0]}) is gone (killed?): marked failed, its pool slots freed"


def fail_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail in-progress runs whose process is gone and free the pool slots ended runs still hold; returns the
    ids of the runs failed."""
    failed = []
    for run in instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS)):
        message = dead_run_message(instance, run)
        if message is not None:
            instance.report_run_failed(run, message)
            failed.append(run.run_id)
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits:
        holding = storage.get_concurrency_run_ids()
        ended = instance.get_runs(dg.RunsFilter(run_ids=list(holding), statuses=FINISHED)) if holding else []
        for run in ended:
            storage.free_concurrency_slots_for_run(run.run_id)
    return failed



class LocalRunLauncher(dg.DefaultRunLauncher):
    """The DefaultRunLauncher, plus a worker health check from the run's recorded pid (for run monitoring)."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        message = dead_run_message(self._instance, run)
        if message is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.FAILED, message)
