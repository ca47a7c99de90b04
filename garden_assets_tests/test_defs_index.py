"""qa_index, retrieval_eval and the reindex job through Dagster on the bundled sample (real MiniLM, real LanceDB)."""

import dagster as dg
import polars as pl
import pytest

from garden_assets.defs import index, posts
from garden_assets.defs.resources import AtomicParquetIOManager
from garden_assets.retrieval.store import open_store

from .dagster_env import sample_env

ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs, index.qa_index, index.retrieval_eval]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("index")
    instance, resources = sample_env(tmp)
    paths = resources["paths"]
    assert dg.materialize(ASSETS, selection=ASSETS[:2], partition_key="sample-gardening", instance=instance,
                          resources=resources).success
    assert dg.materialize(ASSETS, selection=ASSETS[2:3], instance=instance, resources=resources).success
    return instance, resources, paths


def test_index_incremental_eval_and_reindex(env):
    instance, resources, paths = env
    first = dg.materialize(ASSETS, selection=ASSETS[3:], instance=instance, resources=resources)
    assert first.success
    meta = first.asset_materializations_for_node("qa_index")[0].metadata
    pairs = pl.read_parquet(paths.home_path / "storage" / "qa_pairs.parquet")
    assert meta["embedded"].value == meta["rows"].value == pairs.height
    assert "MiniLM" in meta["model"].value and meta["dimension"].value == 384 and meta["key"].value == "question+answer"
    table = first.asset_materializations_for_node("retrieval_eval")[0].metadata["table"].value
    assert "success_at_5" in table and "data:image/png" in table
    # Re-materializing with the same pairs embeds nothing.
    again = dg.materialize(ASSETS, selection=[index.qa_index], instance=instance, resources=resources)
    meta = again.asset_materializations_for_node("qa_index")[0].metadata
    assert (meta["embedded"].value, meta["unchanged"].value) == (0, pairs.height)
    hits = open_store(paths.lance_uri).search("how acidic should blueberry soil be", k=3)
    assert hits and "blueberr" in hits[0].title.lower() and hits[0].source_url.startswith("https://")
    # The maintenance job compacts and rebuilds indexes; the index still answers.
    result = index.reindex_job.execute_in_process(instance=instance, resources=resources)
    assert result.success
    assert open_store(paths.lance_uri).count() == pairs.height


def test_empty_pairs_fail_clearly_and_keep_the_index(env, tmp_path):
    instance, resources, paths = env
    store = open_store(paths.lance_uri)
    before = store.count()
    empty = pl.read_parquet(paths.home_path / "storage" / "qa_pairs.parquet").head(0)

    @dg.asset(name="qa_pairs")
    def empty_pairs() -> pl.DataFrame:
        return empty

    io = AtomicParquetIOManager(base_dir=str(tmp_path / "storage"))
    result = dg.materialize([empty_pairs, index.qa_index], instance=dg.DagsterInstance.ephemeral(),
                            resources={"paths": paths, "io_manager": io}, raise_on_error=False)
    assert not result.success
    failure = [e for e in result.all_events if e.is_step_failure][0]
    assert "qa_pairs is empty" in failure.step_failure_data.user_failure_data.description
    assert open_store(paths.lance_uri).count() == before
