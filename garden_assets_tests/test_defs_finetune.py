"""base_model → finetune_dataset → tuned_model through Dagster, with the real trainer as a Pipes subprocess.

A tiny random Gemma-architecture model keeps this fast; the packaged Gemma runs in the slow tests and `make run`.
"""

import json

import dagster as dg
import pytest

from garden_assets.defs import finetune, index, posts
from .tiny_models import tiny_random_model

from .dagster_env import sample_env

ASSETS = [posts.raw_posts, posts.clean_posts, posts.qa_pairs, index.qa_index, finetune.base_model,
          finetune.finetune_dataset, finetune.tuned_model]
FAST = {"ops": {"tuned_model": {"config": {"max_train_tokens": 3000, "eval_steps": 2, "save_steps": 2}},
                "finetune_dataset": {"config": {"max_length": 384}}}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_random_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def env(tmp_path, tiny):
    instance, resources = sample_env(tmp_path, base_model=str(tiny))
    assert dg.materialize(ASSETS, selection=ASSETS[:2], partition_key="sample-gardening", instance=instance,
                          resources=resources).success
    assert dg.materialize(ASSETS, selection=ASSETS[2:4], instance=instance, resources=resources).success
    return instance, resources, tmp_path / "home"


def test_finetune_path_trains_through_pipes_and_does_not_retrain(env):
    instance, resources, home = env
    result = dg.materialize([*ASSETS, finetune.overfitting], selection=ASSETS[4:] + [finetune.overfitting],
                            instance=instance, resources=resources, run_config=FAST)
    assert result.success
    data = result.asset_materializations_for_node("finetune_dataset")[0].metadata
    assert data["train_rows"].value > 0 and data["test_rows"].value > 0
    assert data["test_rows"].value <= 0.2 * (data["train_rows"].value + data["test_rows"].value) + 1
    assert "data:image/png" in data["length_histogram"].value
    train = [json.loads(l) for l in (home / "finetune/dataset/train.jsonl").read_text().splitlines()]
    assert set(train[0]) >= {"instruction", "context", "response", "category", "prompt", "completion", "n_tokens"}
    assert max(r["n_tokens"] for r in train) <= 384
    tuned = result.asset_materializations_for_node("tuned_model")[0].metadata
    assert "loss_curve" in tuned and tuned["launcher"].value == "python"
    assert (home / "finetune/tuned/training_log.jsonl").exists()
    log_before = (home / "finetune/tuned/training_log.jsonl").read_text()
    mtime = (home / "finetune/tuned/metrics.json").stat().st_mtime
    # Same data, same config: the trainer recognizes the finished run and does not train again.
    tune_only = {"ops": {"tuned_model": FAST["ops"]["tuned_model"]}}
    again = dg.materialize(ASSETS, selection=[finetune.tuned_model], instance=instance, resources=resources, run_config=tune_only)
    assert again.success
    assert (home / "finetune/tuned/training_log.jsonl").read_text() == log_before
    assert (home / "finetune/tuned/metrics.json").stat().st_mtime == mtime

    # tuned_model_gguf: llama.cpp's converter refuses the tiny model's made-up tokenizer (or is not installed):
    # a warning and a `none:` note, not a failed run — generation falls back to transformers.
    gguf = dg.materialize([*ASSETS, finetune.tuned_model_gguf], selection=[finetune.tuned_model_gguf],
                          instance=instance, resources=resources)
    assert gguf.success
    note = gguf.asset_materializations_for_node("tuned_model_gguf")[0].metadata["gguf"].value
    assert note.startswith("none: ") and ("conversion failed" in note or "not installed" in note)
    [check] = gguf.get_asset_check_evaluations()
    assert check.check_name == "gguf_exported" and not check.passed
    assert not (home / "finetune/tuned/model/gguf").exists()


def test_every_row_too_long_is_a_clear_failure_and_keeps_old_dataset(env):
    instance, resources, home = env
    assert dg.materialize(ASSETS, selection=ASSETS[4:6], instance=instance, resources=resources,
                          run_config={"ops": {"finetune_dataset": FAST["ops"]["finetune_dataset"]}}).success
    before = (home / "finetune/dataset/train.jsonl").read_bytes()

    def failure(asset, config: dict) -> str:
        result = dg.materialize(ASSETS, selection=[asset], instance=instance, resources=resources,
                                run_config={"ops": {asset.key.path[-1]: {"config": config}}}, raise_on_error=False)
        assert not result.success
        return [e for e in result.all_events if e.is_step_failure][0].step_failure_data.user_failure_data.description

    assert "longer than max_length=8 tokens with its passages" in failure(finetune.finetune_dataset, {"max_length": 8})
    assert "oracle_share must be in [0, 1]" in failure(finetune.finetune_dataset, {"oracle_share": 1.5})
    assert (home / "finetune/dataset/train.jsonl").read_bytes() == before
    # a budget that cannot train fails before the trainer starts (no log is written)
    assert "max_train_seconds must be > 0" in failure(finetune.tuned_model, {"max_train_seconds": 0})
    assert not (home / "finetune/tuned/training_log.jsonl").exists()


def test_message_reader_waits_for_whole_lines(tmp_path):
    """A message written in two pieces (the reader catching the writer mid-line) arrives once, whole."""
    import threading

    from garden_assets.defs.pipes import CompleteLineMessageReader

    got = []

    class Handler:
        def handle_message(self, message):
            got.append(message)

        def report_pipes_framework_exception(self, *args):
            got.append(("error", args))

    reader = CompleteLineMessageReader()
    reader._path = str(tmp_path / "messages")
    done = threading.Event()
    with open(reader._path, "w") as f:
        f.write('{"method": "log", "params": {"mess')
        f.flush()
        thread = threading.Thread(target=reader._reader_thread, args=(Handler(), done))
        thread.start()
        import time

        time.sleep(0.1)  # the reader has now seen half a line
        f.write('age": "hi"}}\n')
        f.flush()
    time.sleep(0.1)
    done.set()
    thread.join(5)
    assert got == [{"method": "log", "params": {"message": "hi"}}]
