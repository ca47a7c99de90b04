"""The one Definitions object: assets, checks, sensors, schedules, jobs and resources."""

import os
from pathlib import Path

import dagster as dg
import yaml

from dagster.components import load_defs

from . import defs as defs_folder
from .defs.resources import resources


def executor():
    """``k8s_job_executor`` (one pod per step, each with its asset's GPU op_tags) when GARDEN_EXECUTOR=k8s."""
    if os.environ.get("GARDEN_EXECUTOR", "").lower() != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    config = yaml.safe_load(os.environ.get("GARDEN_K8S_EXECUTOR_CONFIG") or "") or {}
    return k8s_job_executor.configured(config, name="garden_k8s") if config else k8s_job_executor


# Every module under defs/ registers its own definitions (assets, checks, jobs, schedules, sensors at module
# level): the dg convention of load_from_defs_folder, through load_defs on the package itself, so it needs no
# pyproject.toml at run time (the deploy image installs the package without one). Resources and the executor
# are the code location's, added here.
defs = dg.Definitions.merge(
    load_defs(defs_folder, project_root=Path(__file__).resolve().parent.parent),
    dg.Definitions(resources=resources(), executor=executor()),
)
