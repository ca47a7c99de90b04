"""Where things live (``GARDEN_HOME``, ``GARDEN_DROPS``) and the Parquet IO manager."""


import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
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


@dataclasses.dataclass(frozen=True)
class StagedParquet:
    """An output the asset already wrote, a table at a time, as a complete Parquet file (see ``staging_path``): the IO
    manager moves it into place instead of being handed a frame that holds the whole drop in memory."""

    path: Path
    rows: int

    @classmethod
    def of(cls, path: Path) -> "StagedParquet":
        return cls(Path(path), pq.read_metadata(path).num_rows)


@dataclasses.dataclass(frozen=True)
class StoredParquet:
    """An input handed over as its stored Parquet file, for assets that read it a row group at a time (see
    ``keys.open_parquet``: bounded memory, no memory map) instead of a polars scan. Annotate an input with it (or
    ``dict[str, StoredParquet]`` for partitions)."""

    path: Any  # a Path, or a UPath on an object store

    @property
    def local(self) -> bool:
        return getattr(self.path, "protocol", "") in ("", "file", "local")

    def open(self):
        from ..stackexchange.keys import open_parquet

        return open_parquet(Path(str(self.path)) if self.local else self.path)


def _wants_stored(dagster_type) -> bool:
    t = getattr(dagster_type, "typing_type", None)
    return t is StoredParquet or (getattr(t, "__origin__", None) is dict and t.__args__[-1] is StoredParquet)


def staging_path(paths: GardenPaths, name: str) -> Path:
    """A file for an asset to write its output into before the IO manager moves it: under the home's storage (the
    IO manager's folder by default, so the move is a rename), one per process."""
    folder = paths.home_path / "storage" / ".staging"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{os.getpid()}.parquet"


@contextlib.contextmanager
def staged_parquet(paths: GardenPaths, name: str) -> Iterator[Path]:
    """`staging_path`, removed when the block fails: only a finished file is handed to the IO manager."""
    staged = staging_path(paths, name)
    try:
        yield staged
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


class AtomicParquetIOManager(PolarsParquetIOManager):
    """dagster-polars' Parquet IO manager, but a local file is written under a temporary name and renamed.

    The upstream manager writes straight to the final path, so a run killed mid-write would leave a torn
    file where the last good output was; object stores are atomic per PUT already and go to the parent.
    """

    def dump_to_path(self, context, obj, path):
        if not isinstance(obj, StagedParquet):
            return super().dump_to_path(context, obj, path)
        try:
            if getattr(path, "protocol", "") not in ("", "file", "local"):
                # an object store: a streaming upload of the staged file (one PUT, atomic)
                return self.sink_df_to_path(context, pl.scan_parquet(obj.path), path)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(obj.path, path)  # the staged file is complete: the rename is the whole write
            except OSError:  # another file system: copy under a temporary name, then rename
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                try:
                    shutil.copyfile(obj.path, tmp)
                    os.replace(tmp, path)
                finally:
                    Path(str(tmp)).unlink(missing_ok=True)
        finally:
            obj.path.unlink(missing_ok=True)

    def load_from_path(self, context, path):
        if _wants_stored(context.dagster_type):
            if not path.exists():
                raise FileNotFoundError(f"File {path} does not exist")  # allow_missing_partitions relies on it
            return StoredParquet(path)
        return super().load_from_path(context, path)

    def load_partitions(self, context):
        # Upstream hands one partition over bare even to an input typed ``dict[str, ...]`` (which then fails
        # Dagster's type check): keep it a dict, so qa_pairs over a single drop works like over several.
        loaded = super().load_partitions(context)
        typing_type = getattr(context.dagster_type, "typing_type", None)
        if len(context.asset_partition_keys) == 1 and getattr(typing_type, "__origin__", None) is dict:
            return {context.asset_partition_keys[0]: loaded}
        return loaded

    def get_metadata(self, context, obj):
        if isinstance(obj, StagedParquet):  # the asset reports its own previews and counts
            key = "dagster/partition_row_count" if context.has_partition_key else "dagster/row_count"
            return {key: dg.MetadataValue.int(obj.rows)}
        return super().get_metadata(context, obj)

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
