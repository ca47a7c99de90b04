"""qa_index, retrieval_eval, retriever_model and the reindex job through Dagster on the bundled sample (real
MiniLM, real LanceDB, a real short contrastive training run)."""

import json
import subprocess

import dagster as dg
import polars as pl
import pytest

from garden_assets.defs import index, posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths
from garden_assets.llm.dataset import held_out_questions
from garden_assets.retrieval.store import QAStore, open_store

from .dagster_env import sample_env

ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs, index.qa_index, index.retrieval_eval,
          index.retriever_model]
SHORT = {"ops": {"retriever_model": {"config": {"epochs": 1.0, "max_train_seconds": 40.0}}}}  # a real, short run


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
    first = dg.materialize(ASSETS, selection=ASSETS[3:5], instance=instance, resources=resources)
    assert first.success
    meta = first.asset_materializations_for_node("qa_index")[0].metadata
    pairs = pl.read_parquet(paths.home_path / "storage" / "qa_pairs.parquet")
    assert meta["embedded"].value == meta["rows"].value == pairs.height
    assert "MiniLM" in meta["model"].value and meta["dimension"].value == 384 and meta["key"].value == "question+answer"
    eval_meta = first.asset_materializations_for_node("retrieval_eval")[0].metadata
    table = eval_meta["table"].value
    assert "success_at_5" in table and "data:image/png" in table
    # held-out test questions only (the split finetune_dataset uses); no adapted row before retriever_model ran
    test = held_out_questions(pairs, index.RetrievalEvalConfig().split_options()).test
    assert eval_meta["queries"].value == eval_meta["held_out_questions"].value == len(test) < pairs["question_id"].n_unique()
    assert "| minilm " in table and "| bm25 " in table and "| adapted " not in table
    assert eval_meta["adapted_model"].value.startswith("not materialized")
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


def test_retriever_model_trains_outside_the_held_out_split(env):
    instance, resources, paths = env
    trained = dg.materialize(ASSETS, selection=[index.retriever_model], instance=instance, resources=resources,
                             run_config=SHORT)
    assert trained.success
    meta = trained.asset_materializations_for_node("retriever_model")[0].metadata
    pairs = pl.read_parquet(paths.home_path / "storage" / "qa_pairs.parquet")
    held = held_out_questions(pairs, index.RetrieverConfig().split_options())
    assert held.test and meta["held_out_questions"].value == len(held.questions)
    outside = [q not in held.questions for q in zip(pairs["site"], pairs["question_id"])]
    assert meta["pairs"].value == sum(outside) < pairs.height
    assert meta["steps"].value >= 1 and meta["seconds"].value > 0 and "data:image/png" in meta["loss_curve"].value
    folder = index.retriever_dir(paths)
    info = json.loads((folder / "adapt.json").read_text())
    assert info["steps"] == meta["steps"].value and (folder / "config.json").exists()
    assert {tuple(q) for q in info["held_out"]} == held.questions
    # trained on 128-token texts, saved with the base model's own window (what the index embeds with)
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(folder), device="cpu").max_seq_length == 256
    # the same pairs and options again: no retraining
    again = dg.materialize(ASSETS, selection=[index.retriever_model], instance=instance, resources=resources,
                           run_config=SHORT).asset_materializations_for_node("retriever_model")[0].metadata
    assert again["reused"].value is True and again["steps"].value == meta["steps"].value
    assert meta["reused"].value is False
    # qa_index with `model: adapted` embeds with it (its own table; the default table stays MiniLM's)
    adapted = dg.materialize(ASSETS, selection=[index.qa_index], instance=instance, resources=resources,
                             run_config={"ops": {"qa_index": {"config": {"model": "adapted"}}}})
    qa_meta = adapted.asset_materializations_for_node("qa_index")[0].metadata
    assert qa_meta["model"].value == str(folder) and qa_meta["embedded"].value == pairs.height
    assert "MiniLM" in open_store(paths.lance_uri).metadata()["embedding_model"]
    # retrieval_eval now scores the adapted model too, on the same held-out questions
    table = dg.materialize(ASSETS, selection=[index.retrieval_eval], instance=instance, resources=resources,
                           run_config={"ops": {"retrieval_eval": {"config": {"keys": ["answer"]}}}},
                           ).asset_materializations_for_node("retrieval_eval")[0].metadata["table"].value
    assert all(f"| {m} " in table for m in ("minilm", "adapted", "bm25"))


def test_qa_index_config_adapted_without_the_model_fails_clearly(tmp_path):
    with pytest.raises(dg.Failure, match="materialize it first"):
        index.embedding_model(GardenPaths(home=str(tmp_path), drops=str(tmp_path)), index.ADAPTED)
    assert not index.trains_retriever() and index.trains_retriever(index.IndexConfig(model="adapted"))


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


def _attempts(result: dg.ExecuteInProcessResult) -> tuple[int, int]:
    """(retries requested, step failures) of qa_index in one run."""
    events = [e for e in result.all_events if e.step_key == "qa_index"]
    return (sum(e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY for e in events),
            sum(e.is_step_failure for e in events))


def test_commit_conflict_is_retried_and_completes(env, monkeypatch):
    instance, resources, paths = env
    upsert, calls = QAStore._upsert, []

    def lose_the_first_race(self, *args):
        calls.append(1)
        if len(calls) == 1:  # what LanceDB raises when another writer committed first
            raise RuntimeError("lance error: Retryable commit conflict for version 3: concurrent merge_insert")
        return upsert(self, *args)

    monkeypatch.setattr(QAStore, "_upsert", lose_the_first_race)
    result = dg.materialize(ASSETS, selection=[index.qa_index], instance=instance, resources=resources)
    assert result.success and _attempts(result) == (1, 0) and len(calls) == 2


def test_read_only_index_folder_fails_at_once_before_embedding(env, tmp_path):
    """A permanent error is not retried: one attempt, its message, no row embedded."""
    instance, resources, paths = env
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        ro = {**resources, "paths": GardenPaths(home=paths.home, drops=paths.drops, lance=str(disk / "lancedb"))}
        result = dg.materialize(ASSETS, selection=[index.qa_index], instance=instance, resources=ro,
                                raise_on_error=False)
        assert not result.success and _attempts(result) == (0, 1)
        [failure] = [e for e in result.all_events if e.is_step_failure]
        assert f"Read-only file system: '{disk / 'lancedb'}'" in failure.step_failure_data.error.to_string()
        assert not any("embedded" in (e.message or "") for e in instance.all_logs(result.run_id))
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
