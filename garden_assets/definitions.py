"""The one Definitions object: assets, checks, sensors, schedules, jobs and resources."""

import os

import dagster as dg
import yaml

from .defs import automation, evaluation, finetune, index, posts
from .defs.resources import resources


def executor():
    """``k8s_job_executor`` (one pod per step, each with its asset's GPU op_tags) when GARDEN_EXECUTOR=k8s."""
    if os.environ.get("GARDEN_EXECUTOR", "").lower() != "k8s":
        return None
    from dagster_k8s import k8s_job_executor

    config = yaml.safe_load(os.environ.get("GARDEN_K8S_EXECUTOR_CONFIG") or "") or {}
    return k8s_job_executor.configured(config, name="garden_k8s") if config else k8s_job_executor


defs = dg.Definitions(
    assets=[
        posts.raw_posts, posts.clean_posts, posts.qa_pairs, index.qa_index, index.retrieval_eval,
        finetune.base_model, finetune.finetune_dataset, finetune.tuned_model, finetune.tuned_model_gguf,
        evaluation.evaluation_answers,
    ],
    asset_checks=[finetune.overfitting],
    jobs=[index.reindex_job],
    schedules=[index.reindex_schedule],
    sensors=[automation.drops_sensor, automation.automation_sensor],
    resources=resources(),
    executor=executor(),
)
