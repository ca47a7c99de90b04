"""The Parquet IO manager on a local folder and on an fsspec object store (fsspec's in-memory one), in real runs."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from upath import UPath

from garden_assets.defs.resources import AtomicParquetIOManager, StagedParquet, StoredParquet

parts = dg.StaticPartitionsDefinition(["a", "b"])


@pytest.fixture(autouse=True)
def stage_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STAGE_DIR", str(tmp_path))


@dg.asset
def frame() -> pl.DataFrame:
    return pl.DataFrame({"id": [1, 2, 3], "text": ["x", "y", "z"]})


@dg.asset
def lazy_reader(frame: pl.LazyFrame) -> pl.DataFrame:
    assert isinstance(frame, pl.LazyFrame)
    return frame.filter(pl.col("id") > 1).collect()


@dg.asset(partitions_def=parts)
def staged(context: dg.AssetExecutionContext) -> StagedParquet:
    # Written outside the storage folder (STAGE_DIR): the manager moves or uploads it into place.
    out = Path(os.environ["STAGE_DIR"]) / f"staged-{context.partition_key}.parquet"
    pl.DataFrame({"id": [10, 20], "part": [context.partition_key] * 2}).write_parquet(out)
    return StagedParquet.of(out)


def _concat(staged: dict[str, StoredParquet]) -> pl.DataFrame:
    return pl.concat(pl.from_arrow(s.open().read()) for _, s in sorted(staged.items()))


@dg.asset
def gathered(staged: dict[str, StoredParquet]) -> pl.DataFrame:
    return _concat(staged)


@dg.asset(ins={"staged": dg.AssetIn(partition_mapping=dg.SpecificPartitionsPartitionMapping(["a"]))})
def first_only(staged: dict[str, StoredParquet]) -> pl.DataFrame:
    return _concat(staged)


def _run(assets, base_dir: str, selection=None, partition=None, **kw):
    return dg.materialize(assets, selection=selection, partition_key=partition, instance=dg.DagsterInstance.ephemeral(),
                          resources={"io_manager": AtomicParquetIOManager(base_dir=base_dir)}, **kw)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_frames_staged_files_and_partitions_round_trip(tmp_path, where):
    base = str(tmp_path / "storage") if where == "local" else f"memory://{tmp_path.name}/storage"
    result = _run([frame, lazy_reader], base)
    assert result.success
    assert result.output_for_node("lazy_reader")["id"].to_list() == [2, 3]
    meta = result.asset_materializations_for_node("frame")[0].metadata
    assert meta["dagster/row_count"].value == 3
    assert [c.name for c in meta["dagster/column_schema"].schema.columns] == ["id", "text"]
    stored = UPath(base) / "frame.parquet"
    assert stored.exists() and not [p for p in stored.parent.iterdir() if ".tmp-" in p.name]

    for key in ("a", "b"):
        assert _run([staged], base, partition=key).success
    result = _run([staged, gathered], base, selection=[gathered])
    assert result.success
    assert result.output_for_node("gathered")["part"].to_list() == ["a", "a", "b", "b"]
    assert not list(tmp_path.glob("staged-*.parquet"))  # moved or uploaded, never left behind


def test_a_single_partition_still_comes_as_a_dict(tmp_path):
    base = str(tmp_path / "storage")
    assert _run([staged], base, partition="a").success
    result = _run([staged, first_only], base, selection=[first_only])
    assert result.success and result.output_for_node("first_only")["part"].to_list() == ["a", "a"]


def test_a_failed_write_keeps_the_last_good_file(tmp_path, monkeypatch):
    base = str(tmp_path / "storage")
    assert _run([frame], base).success
    good = (tmp_path / "storage" / "frame.parquet").read_bytes()

    def broken(self, file, *a, **k):
        with open(file, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", broken)
    result = _run([frame], base, raise_on_error=False)
    assert not result.success
    assert (tmp_path / "storage" / "frame.parquet").read_bytes() == good
    assert [p.name for p in (tmp_path / "storage").iterdir()] == ["frame.parquet"]


def test_other_outputs_are_refused_by_name(tmp_path):
    @dg.asset
    def rows() -> list:
        return [1, 2]

    result = _run([rows], str(tmp_path), raise_on_error=False)
    assert not result.success
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert "rows: the Parquet IO manager stores a polars DataFrame or a StagedParquet, not list" in str(error.cause or error)


def test_a_run_process_imports_no_pandas():
    # The reason this manager exists: dagster-polars' imports pandas (via pyarrow.dataset) into every run process.
    code = "import sys, garden_assets.definitions; print('pandas' in sys.modules, 'pyarrow.dataset' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
