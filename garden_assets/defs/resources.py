"""Where things live (``GARDEN_HOME``, ``GARDEN_DROPS``) and the Parquet IO manager."""


import contextlib
import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
from pydantic import PrivateAttr

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
        return _is_local(self.path)

    @property
    def location(self):
        """A plain ``Path`` for a local file, else the UPath."""
        return Path(str(self.path)) if self.local else self.path

    def open(self):
        from ..stackexchange.keys import open_parquet

        return open_parquet(self.location)


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


class AtomicParquetIOManager(dg.ConfigurableIOManager, dg.UPathIOManager):
    """One Parquet file per asset (partition) under ``base_dir``: a folder, or an fsspec URL (``s3://bucket/dir``,
    with ``fs_options``). Outputs: a ``pl.DataFrame``, or a ``StagedParquet`` the asset already wrote (moved into
    place). Inputs, by annotation: ``pl.DataFrame``, ``pl.LazyFrame``, or ``StoredParquet`` (where the file is).
    A local file is written under a temporary name and renamed, so a run killed mid-write never leaves a torn file
    where the last good output was; an object store's PUT is atomic already.

    Written on Dagster's own ``UPathIOManager`` rather than taken from dagster-polars: its Parquet manager imports
    ``pyarrow.dataset``, which imports pandas into every run process for features these assets do not use
    (datasets, Delta, patito): importing the definitions took 182 MB and 3.6 s with it, 146 MB and 1.5 s without."""

    base_dir: str | None = None  # None: the Dagster instance's storage folder
    fs_options: dict[str, Any] | None = None  # fsspec options for an object-store base_dir (credentials, endpoint)
    extension: ClassVar[str] = ".parquet"
    _base_path: Any = PrivateAttr()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        from upath import UPath

        base = self.base_dir or context.instance.storage_directory()
        self._base_path = UPath(base, **(self.fs_options or {}))

    def dump_to_path(self, context: dg.OutputContext, obj, path):
        if isinstance(obj, StagedParquet):
            try:
                _put_file(obj.path, path)
            finally:
                obj.path.unlink(missing_ok=True)
        elif isinstance(obj, pl.DataFrame):
            if not _is_local(path):
                with path.open("wb") as f:
                    obj.write_parquet(f)
                return
            tmp = Path(str(path)).with_name(f".{path.name}.tmp-{os.getpid()}")
            try:
                obj.write_parquet(tmp)
                os.replace(tmp, str(path))
            finally:
                tmp.unlink(missing_ok=True)
        else:
            raise TypeError(f"{context.asset_key.to_user_string()}: the Parquet IO manager stores a polars DataFrame "
                            f"or a StagedParquet, not {type(obj).__name__}")

    def load_from_path(self, context: dg.InputContext, path):
        wanted = _typing_type(context.dagster_type)
        if not path.exists():
            raise FileNotFoundError(f"File {path} does not exist")  # allow_missing_partitions relies on it
        if wanted is StoredParquet:
            return StoredParquet(path)
        if _is_local(path):
            frame = pl.scan_parquet(str(path))
        else:
            with path.open("rb") as f:
                frame = pl.read_parquet(f).lazy()
        return frame if wanted is pl.LazyFrame else frame.collect()

    def load_partitions(self, context: dg.InputContext):
        # Upstream hands one partition over bare even to an input typed ``dict[str, ...]`` (which then fails
        # Dagster's type check): keep it a dict, so qa_pairs over a single drop works like over several.
        loaded = super().load_partitions(context)
        typing_type = getattr(context.dagster_type, "typing_type", None)
        if len(context.asset_partition_keys) == 1 and getattr(typing_type, "__origin__", None) is dict:
            return {context.asset_partition_keys[0]: loaded}
        return loaded

    def get_metadata(self, context: dg.OutputContext, obj) -> dict:
        key = "dagster/partition_row_count" if context.has_partition_key else "dagster/row_count"
        if isinstance(obj, StagedParquet):  # the asset reports its own previews and counts
            return {key: dg.MetadataValue.int(obj.rows)}
        columns = [dg.TableColumn(name, str(dtype)) for name, dtype in obj.schema.items()]
        return {key: dg.MetadataValue.int(obj.height), "dagster/column_schema": dg.TableSchema(columns=columns)}


def _is_local(path) -> bool:
    return getattr(path, "protocol", "") in ("", "file", "local")


def _typing_type(dagster_type):
    """The annotation an input asked for; for a partitioned input (``dict[str, X]``), X."""
    t = getattr(dagster_type, "typing_type", None)
    return t.__args__[-1] if getattr(t, "__origin__", None) is dict else t


def _put_file(staged: Path, path) -> None:
    """Moves a finished local file to ``path``: a rename on the same file system, else a copy under a temporary
    name then a rename; to an object store, one upload (atomic per PUT)."""
    if not _is_local(path):
        path.fs.put_file(str(staged), path.path)
        return
    path = Path(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(staged, path)
    except OSError:  # another file system
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            shutil.copyfile(staged, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def resources() -> dict:
    from .finetune import BaseModel
    from .pipes import CompleteLineMessageReader

    return {
        "paths": GardenPaths(home=str(garden_home()), drops=str(drops_folder()), lance=lance_uri()),
        "io_manager": AtomicParquetIOManager(base_dir=str(garden_home() / "storage")),
        "model": BaseModel(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(message_reader=CompleteLineMessageReader()),
    }
