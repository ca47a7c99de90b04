"""The setup the Dagster-layer tests share: the sample drop in a temporary home, an ephemeral instance, resources."""

import shutil
from pathlib import Path

import dagster as dg

from garden_assets.defs.finetune import BaseModel
from garden_assets.defs.pipes import CompleteLineMessageReader
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths

from .conftest import SAMPLE_DROPS

PARTITION = "sample-gardening"


def sample_env(tmp: Path, base_model: str | None = None) -> tuple[dg.DagsterInstance, dict]:
    """A copy of the sample drop under ``tmp/drops``, an instance that knows its partition, and the resources
    (with the base model and the Pipes client when ``base_model`` is given). Outputs go to ``tmp/home``."""
    drops = tmp / "drops"
    shutil.copytree(SAMPLE_DROPS / PARTITION, drops / PARTITION)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("drops", [PARTITION])
    resources = {"paths": GardenPaths(home=str(tmp / "home"), drops=str(drops)),
                 "io_manager": AtomicParquetIOManager(base_dir=str(tmp / "home" / "storage"))}
    if base_model:
        resources["model"] = BaseModel(spec=base_model)
        resources["pipes_subprocess_client"] = dg.PipesSubprocessClient(message_reader=CompleteLineMessageReader())
    return instance, resources
