"""An index built with a custom embedding model is the one its readers search (issue 14's first defect: the
readers opened the packaged model's table, which a custom model never writes)."""

import json
import os
import shutil

import dagster as dg
import polars as pl

from garden_assets.defs import evaluation, finetune, index, posts
from garden_assets.retrieval.embedder import packaged_minilm_path
from garden_assets.settings import Layout

from .dagster_env import PARTITION, sample_env

ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs, index.qa_index, evaluation.evaluation_answers]


def test_evaluation_searches_the_table_of_the_model_qa_index_was_built_with(tmp_path):
    # a "custom" model: the packaged MiniLM's files under another path (another model name, another table)
    custom = tmp_path / "my-embedder"
    shutil.copytree(packaged_minilm_path(), custom, copy_function=os.symlink)
    instance, resources = sample_env(tmp_path)
    resources["model"] = finetune.BaseModel()
    assert dg.materialize(ASSETS, selection=ASSETS[:2], partition_key=PARTITION, instance=instance,
                          resources=resources).success
    assert dg.materialize(ASSETS, selection=[posts.qa_pairs], instance=instance, resources=resources).success
    built = dg.materialize(ASSETS, selection=[index.qa_index], instance=instance, resources=resources,
                           run_config={"ops": {"qa_index": {"config": {"model": str(custom)}}}})
    assert str(custom) in built.asset_materializations_for_node("qa_index")[0].metadata["model"].value
    # two held-out questions, written as finetune_dataset writes them (the asset reads only the file)
    pairs = pl.read_parquet(resources["paths"].home_path / "storage" / "qa_pairs.parquet").unique(
        ["site", "question_id"], maintain_order=True).head(2)
    dataset = Layout(resources["paths"].home_path).dataset
    dataset.mkdir(parents=True)
    (dataset / "test.jsonl").write_text("".join(json.dumps(
        {k: r[k] for k in ("site", "question_id", "instruction", "context", "response")}) + "\n"
        for r in pairs.iter_rows(named=True)))
    result = dg.materialize(ASSETS, selection=[evaluation.evaluation_answers], instance=instance,
                            resources=resources, raise_on_error=False,
                            run_config={"ops": {"evaluation_answers": {"config": {"variants": ["retrieved"]}}}})
    failures = [e.step_failure_data.user_failure_data for e in result.all_events if e.is_step_failure]
    assert result.success, failures
    rows = pl.read_parquet(resources["paths"].home_path / "storage" / "evaluation_answers.parquet")
    assert rows.height == 2 and (rows["sources"].list.len() == 1).all()
    assert index.built_index(instance).model == str(custom.resolve())


def test_index_config_names_only_what_qa_index_reads():
    """IndexConfig once claimed to set garden search's mode and k, which nothing read (issue 14's second defect):
    search settings are the readers' own (evaluation_answers' retrieval config, garden search/ask flags)."""
    assert set(index.IndexConfig.model_fields) == {"key", "model"}
