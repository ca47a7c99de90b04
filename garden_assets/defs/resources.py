"""Where things live (``GARDEN_HOME``, ``GARDEN_DROPS``) and the Parquet IO manager."""


import os
from pathlib import Path

import dagster as dg
import polars as pl
from dagster_polars import PolarsParquetIOManager

from ..settings import drops_folder, garden_home, lance_uri


class GardenPaths(dg.ConfigurableResource):
    """The drops folder the sensor watches, the home that holds every output, and the index URI."""

    home: str
    drops: str
    lance: str = ""  # empty: <home>/lancedb

    @property
    def lance_uri(self) -> str:
        return self.lance or str(Path(self.home) / "lancedb")

    @property
    def home_path(self) -> Path:
        return Path(self.home)

    @property
    def drops_path(self) -> Path:
        return Path(self.drops)


class AtomicParquetIOManager(PolarsParquetIOManager):
    """dagster-polars' Parquet IO manager, but a local file is written under a temporary name and renamed.

    The upstream manager writes straight to the final path, so a run killed mid-write would leave a torn
    file where the last good output was; object stores are atomic per PUT already and go to the parent.
    """

    def write_df_to_path(self, context, df: pl.DataFrame, path):
        if getattr(path, "protocol", "") not in ("", "file", "local"):
            return super().write_df_to_path(context, df, path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().write_df_to_path(context, df, tmp)
            os.replace(tmp, path)
        finally:
            Path(str(tmp)).unlink(missing_ok=True)


def resources() -> dict:
    from .finetune import BaseModel
    from .pipes import CompleteLineMessageReader

    return {
        "paths": GardenPaths(home=str(garden_home()), drops=str(drops_folder()), lance=lance_uri()),
        "io_manager": AtomicParquetIOManager(base_dir=str(garden_home() / "storage")),
        "model": BaseModel(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(message_reader=CompleteLineMessageReader()),
    }
