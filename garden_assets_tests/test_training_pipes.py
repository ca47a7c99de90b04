"""The trainer under Dagster: launched with PipesSubprocessClient, it reports per-step custom messages and the
final metrics as the asset's materialization metadata (the way the tuned_model asset will call it)."""

import random
from pathlib import Path

import dagster as dg

from garden_assets.compute import ComputeSpec
from garden_assets.llm.dataset import write_jsonl_atomic
from .tiny_models import tiny_random_model
from garden_assets.llm.prompts import dolly_completion, dolly_prompt
from garden_assets.training.config import TrainConfig
from garden_assets.training.launch import plan_launch

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = "soil water tomato basil prune compost mulch seed leaf root".split()
    out = []
    for _ in range(n):
        q, a = " ".join(rng.choices(words, k=4)) + "?", " ".join(rng.choices(words, k=rng.randint(3, 30)))
        out.append({"prompt": dolly_prompt(q), "completion": dolly_completion(a)})
    return out


def test_trainer_reports_through_pipes(tmp_path):
    model = tiny_random_model(tmp_path / "tiny")
    train = write_jsonl_atomic(_rows(24, 0), tmp_path / "train.jsonl")
    test = write_jsonl_atomic(_rows(6, 1), tmp_path / "test.jsonl")
    config = TrainConfig(train_file=str(train), test_file=str(test), base_model=str(model),
                         output_dir=str(tmp_path / "tuned"), max_steps=3, num_threads=1)
    plan = plan_launch(ComputeSpec(device="cpu", batch_size=4), config)
    seen: dict = {}

    @dg.asset
    def tuned_model(context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient):
        invocation = pipes.run(command=plan.command, context=context, env={**plan.env, "OMP_NUM_THREADS": "1"})
        seen["messages"] = invocation.get_custom_messages()
        return invocation.get_materialize_result()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([tuned_model], resources={"pipes": dg.PipesSubprocessClient(cwd=str(ROOT))},
                            instance=instance)
    assert result.success
    metadata = result.asset_materializations_for_node("tuned_model")[0].metadata
    assert metadata["steps"].value == 3
    assert metadata["eval_loss"].value > 0 and metadata["tokens_per_s"].value > 0
    assert metadata["model_dir"].value == "model"  # relative to the run's folder: the home can move
    steps = [m for m in seen["messages"] if m.get("kind") == "train_log" and "step_time_s" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("trainer: lora on cpu" in m for m in messages)  # the trainer's log lines reach Dagster


def test_standalone_without_dagster(tmp_path):
    """Outside Dagster there is no pipes context at all (no MagicMock, no warning)."""
    import warnings

    from garden_assets.training.report import Reporter, launched_by_dagster

    assert not launched_by_dagster()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reporter = Reporter(tmp_path)
        reporter.record({"step": 1, "train_loss": 1.0})
        reporter.finish({"steps": 1})
    assert reporter.pipes is None and reporter.read_log() == [{"step": 1, "train_loss": 1.0}]
