"""Progress reporting: stdout, ``training_log.jsonl``, and Dagster through dagster-pipes when launched by it.

Only the main process reports. Outside Dagster, ``open_dagster_pipes`` would warn and hand back a MagicMock; we
check `is_dagster_pipes_process` first and use no pipes context at all.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from ..files import write_atomic

log = logging.getLogger("garden_assets.training")

LOG_FILE = "training_log.jsonl"


def launched_by_dagster() -> bool:
    from dagster_pipes import PipesEnvVarParamsLoader

    return PipesEnvVarParamsLoader().is_dagster_pipes_process()


class Reporter:
    def __init__(self, output_dir: str | os.PathLike[str], *, main_process: bool = True):
        self.enabled = main_process
        self.log_path = Path(output_dir) / LOG_FILE
        self.pipes = None
        if self.enabled and launched_by_dagster():
            from dagster_pipes import open_dagster_pipes

            self.pipes = open_dagster_pipes()

    # -- messages ---------------------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, flush=True)
        if self.pipes is not None:
            self.pipes.log.info(message)

    def warning(self, message: str) -> None:
        if not self.enabled:
            return
        print(f"WARNING: {message}", flush=True)
        if self.pipes is not None:
            self.pipes.log.warning(message)

    # -- the training log -------------------------------------------------------------------------------------
    def read_log(self) -> list[dict[str, Any]]:
        if not self.log_path.is_file():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def truncate_log(self, last_step: int) -> None:
        """Forget entries after ``last_step`` (a resumed run re-does those steps); rewrite atomically."""
        if not self.enabled:
            return
        kept = [r for r in self.read_log() if r.get("step", 0) <= last_step]
        write_atomic(self.log_path, "".join(json.dumps(r) + "\n" for r in kept))

    def record(self, entry: dict[str, Any]) -> None:
        """Append one log entry; mirror it to Dagster as a custom message."""
        if not self.enabled:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        parts = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()]
        print("  ".join(parts), flush=True)
        if self.pipes is not None:
            self.pipes.report_custom_message({"kind": "train_log", **entry})

    # -- the end ------------------------------------------------------------------------------------------------
    def finish(self, metrics: dict[str, Any], *, materialize: bool = True) -> None:
        """Report the final metrics as the asset materialization's metadata, then close pipes."""
        if self.pipes is None:
            return
        if materialize:
            metadata = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) and v is not None}
            try:
                self.pipes.report_asset_materialization(metadata=metadata)
            except Exception as exc:  # e.g. launched from an op: no asset in scope; the metrics file still has it
                self.pipes.log.warning(f"could not report the materialization: {exc}")
        self.close()

    def close(self, exc: BaseException | None = None) -> None:
        if self.pipes is not None:
            if exc is not None:
                self.pipes.__exit__(type(exc), exc, exc.__traceback__)
            else:
                self.pipes.close()
            self.pipes = None
