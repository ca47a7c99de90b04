"""The trainer: loss, batch planning, real LoRA/full runs as subprocesses on a tiny model, crash-and-resume,
DeepSpeed ZeRO-3 and two-process DDP on CPU, and (slow) a real Gemma 3 270M LoRA run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from garden_assets.llm.dataset import write_jsonl_atomic
from garden_assets.llm.models import load_causal_lm

from .tiny_models import tiny_random_model
from garden_assets.llm.prompts import dolly_completion, dolly_prompt
from garden_assets.training import checkpoint as ckpt
from garden_assets.training.data import IGNORE_INDEX, Example, collate, load_examples, plan_epoch, plan_steps
from garden_assets.training.deepspeed import build_deepspeed_config, write_deepspeed_config
from garden_assets.training.trainer import loss_sum

ROOT = Path(__file__).resolve().parents[1]
WORDS = "soil water tomato basil prune compost mulch seed leaf root sun shade frost pot bed weed slug aphid".split()


def write_rows(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        instruction = f"How do I {rng.choice(WORDS)} my {rng.choice(WORDS)}?"
        context = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 15)))
        response = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        rows.append({"instruction": instruction, "context": context, "response": response, "category": "closed_qa",
                     "prompt": dolly_prompt(instruction, context), "completion": dolly_completion(response),
                     "question_id": i, "answer_id": i})
    return write_jsonl_atomic(rows, path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    model = tiny_random_model(root / "tiny")
    return {"root": root, "model": model, "train": write_rows(root / "train.jsonl", 48, 0),
            "test": write_rows(root / "test.jsonl", 10, 1), "threads": 1}


def trainer(setup, out: Path, *args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "garden_assets.training", "--train-file", str(setup["train"]), "--test-file",
           str(setup["test"]), "--base-model", str(setup["model"]), "--output-dir", str(out), "--device", "cpu",
           "--batch-size", "4", *args]
    if setup.get("threads"):
        cmd += ["--num-threads", str(setup["threads"])]
    # one thread for the tiny model: OpenMP threads spinning on a busy 2-core box make tiny steps ~100× slower
    threads = str(setup.get("threads") or 1)
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads,
                **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]


# -- units -----------------------------------------------------------------------------------------------------------
def test_completion_loss_equals_full_loss(setup):
    import torch

    model, tok = load_causal_lm(setup["model"])
    examples, _ = load_examples(str(setup["train"]), tok, 1024)
    batch = collate(examples[:4], tok.pad_token_id, pad_to_multiple_of=8)
    with torch.no_grad():
        ours, n = loss_sum(model, batch, "completion")
        theirs, m = loss_sum(model, batch, "full")  # the model's own loss over all logits
        fallback, k = loss_sum(model, batch, "completion", logits_mask=False)
    assert n == m == k == sum(e.n_loss_tokens for e in examples[:4])
    assert torch.allclose(ours, theirs, rtol=1e-5) and torch.allclose(ours, fallback, rtol=1e-5)


def test_collate_masks_prompt_and_padding():
    batch = collate([Example([2, 5, 6, 7, 1], 3), Example([2, 8, 9, 1], 2)], pad_id=0, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"][0].tolist() == [IGNORE_INDEX] * 3 + [7, 1] + [IGNORE_INDEX] * 3
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] * 2 + [9, 1] + [IGNORE_INDEX] * 4
    assert batch["attention_mask"].sum().item() == 9


def test_plans():
    rng = random.Random(0)
    examples = [Example(list(range(rng.randint(20, 400))), 10) for _ in range(103)]
    lengths = [e.n_tokens for e in examples]

    def padded_positions(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    grouped = plan_epoch(lengths, 4, seed=1, epoch=0, grouped=True)
    random_order = plan_epoch(lengths, 4, seed=1, epoch=0, grouped=False)
    assert sorted(i for b in grouped for i in b) == list(range(103))
    assert padded_positions(grouped) < 0.8 * padded_positions(random_order)
    assert plan_epoch(lengths, 4, seed=1, epoch=0, grouped=True) == grouped  # deterministic
    assert plan_epoch(lengths, 4, seed=1, epoch=1, grouped=True) != grouped

    common = dict(batch_size=4, grad_accum=2, world_size=2, seed=0, grouped=True)
    one = plan_steps(examples, epochs=1, max_steps=None, max_train_tokens=None, **common)
    assert len(one) == 26 // 4 and all(len(s.micro) == 4 for s in one)  # 26 micro-batches, 4 per step
    assert len(plan_steps(examples, epochs=2.5, max_steps=None, max_train_tokens=None, **common)) == 6 + 6 + 3
    assert len(plan_steps(examples, epochs=1, max_steps=20, max_train_tokens=None, **common)) == 20
    budget = plan_steps(examples, epochs=1, max_steps=None, max_train_tokens=5000, **common)
    assert sum(s.tokens for s in budget) >= 5000 > sum(s.tokens for s in budget[:-1])
    step = one[0]
    assert step.tokens == sum(lengths[i] for b in step.micro for i in b)
    assert step.loss_tokens == step.tokens - 10 * sum(len(b) for b in step.micro)
    with pytest.raises(ValueError, match="no training examples"):
        plan_steps([], epochs=1, max_steps=None, max_train_tokens=None, **common)
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        plan_steps(examples[:3], epochs=1, max_steps=None, max_train_tokens=None, **common)


# -- real runs (subprocesses) ----------------------------------------------------------------------------------------------
def test_lora_run(setup, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    text = trainer(setup, out, "--max-steps", "6", "--eval-steps", "3", "--save-steps", "2", "--lr", "1e-3")
    assert "trainer: lora on cpu" in text
    log = read_log(out)
    steps = [r for r in log if "step_time_s" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_s"] > 0 and r["step_tokens"] > 0 for r in steps)
    assert "eval_loss" in steps[2] and log[-1]["final"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["method"] == "lora" and metrics["eval_loss"] == log[-1]["eval_loss"]
    assert 0 < metrics["trainable_params"] < metrics["total_params"]
    assert metrics["train_tokens"] == steps[-1]["tokens"]
    assert not (out / "checkpoints").exists()  # a finished run needs no checkpoints
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == {"q_proj", "v_proj"} and adapter["r"] == 8

    merged, _ = load_causal_lm(out / "model")  # merged weights load as a plain checkpoint
    base = AutoModelForCausalLM.from_pretrained(setup["model"])
    via_adapter = PeftModel.from_pretrained(base, out / "adapter").merge_and_unload()
    import torch

    for (name, a), b in zip(merged.state_dict().items(), via_adapter.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name

    # re-running a finished run with --resume does nothing
    again = trainer(setup, out, "--max-steps", "6", "--eval-steps", "3", "--save-steps", "2", "--lr", "1e-3",
                    "--resume")
    assert "nothing to do" in again and read_log(out) == log


def test_time_budget_and_the_best_eval_loss_weights_are_published(setup, tmp_path):
    """A time budget ends the run (not the planned steps); with a learning rate that overshoots, the published
    weights are those of the evaluation with the lowest loss, not the last step's."""
    from accelerate import Accelerator

    from garden_assets.llm.models import load_tokenizer
    from garden_assets.training.data import load_examples
    from garden_assets.training.trainer import evaluate

    out = tmp_path / "budget"
    text = trainer(setup, out, "--max-steps", "100000", "--max-train-seconds", "3", "--eval-steps", "2",
                   "--save-steps", "0", "--lr", "0.3", "--warmup-ratio", "0")
    assert "time budget reached" in text
    metrics = json.loads((out / "metrics.json").read_text())
    evals = [(r["step"], r["eval_loss"]) for r in read_log(out) if r.get("eval_loss") is not None]
    best_step, best_loss = min(evals, key=lambda e: e[1])
    assert metrics["planned_steps"] == 100000 and 2 <= metrics["steps"] < 100000
    # the budget bounds the loop's wall time: periodic evals spend it too (a user waits for them as well)
    assert metrics["eval_time_s"] > 0 and metrics["train_time_s"] + metrics["eval_time_s"] >= 3
    assert (metrics["published_step"], metrics["best_eval_loss"]) == (best_step, best_loss)
    # the published checkpoint really holds those weights: its eval loss is the best one, not the last one
    model, _ = load_causal_lm(out / "model")
    examples, _ = load_examples(str(setup["test"]), load_tokenizer(out / "model"), 1024)
    loss = evaluate(model, examples, batch_size=8, pad_id=load_tokenizer(out / "model").pad_token_id,
                    accelerator=Accelerator(cpu=True), logits_mask=True)
    assert abs(loss - best_loss) < 1e-3
    if best_step != metrics["steps"]:
        assert abs(loss - evals[-1][1]) > 1e-3


def test_a_budget_that_ends_at_an_eval_does_not_evaluate_the_same_weights_again(setup, tmp_path):
    """The budget runs out in step 1's eval (its seconds count): the final eval is that one, not a second pass."""
    out = tmp_path / "at_eval"
    text = trainer(setup, out, "--max-steps", "100", "--max-train-seconds", "0.001", "--eval-steps", "1",
                   "--save-steps", "0")
    evals = [r for r in read_log(out) if r.get("eval_loss") is not None]
    assert [(r["step"], bool(r.get("final"))) for r in evals] == [(1, False), (1, True)]
    assert evals[0]["eval_loss"] == evals[1]["eval_loss"]
    assert "final eval: step 1's periodic eval" in text
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] == evals[0]["eval_loss"]


def test_full_finetune_run(setup, tmp_path):
    import torch

    out = tmp_path / "full"
    trainer(setup, out, "--method", "full", "--max-steps", "3", "--lr", "1e-3", "--batching", "padded",
            "--loss", "full", "--gradient-checkpointing")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_params"] == metrics["total_params"] and metrics["adapter_dir"] is None
    assert not (out / "adapter").exists()
    tuned, _ = load_causal_lm(out / "model")
    base, _ = load_causal_lm(setup["model"])
    changed = [n for (n, a), b in zip(tuned.state_dict().items(), base.state_dict().values()) if not torch.equal(a, b)]
    assert changed


def test_crash_and_resume(setup, tmp_path):
    """Kill the trainer after a checkpoint; --resume continues from it and ends where an uninterrupted run ends."""
    args = ("--max-steps", "8", "--save-steps", "2", "--save-total-limit", "2", "--lr", "1e-3")
    reference = tmp_path / "reference"
    uninterrupted = trainer(setup, reference, *args, wait=False)  # runs alongside, to save wall time

    out = tmp_path / "crashed"
    proc = trainer(setup, out, *args, env={"GARDEN_TRAIN_SLEEP_PER_STEP": "0.3"}, wait=False)
    deadline = time.time() + 120
    while ckpt.last_checkpoint(out) is None or ckpt.read_state(ckpt.last_checkpoint(out))["step"] < 4:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    step = ckpt.read_state(ckpt.last_checkpoint(out))["step"]
    assert 4 <= step < 8 and not (out / "model").exists()
    assert len(ckpt.complete_checkpoints(out)) <= 2  # pruned to save_total_limit

    text = trainer(setup, out, *args, "--resume")
    reference_output = uninterrupted.communicate(timeout=300)[0]
    assert uninterrupted.returncode == 0, reference_output[-3000:]
    assert f"resumed from {ckpt.checkpoints_dir(out) / f'checkpoint-{step}'} (step {step}/8)" in text
    steps = [r["step"] for r in read_log(out) if "step_time_s" in r]
    assert steps == list(range(1, 9))  # steps after the checkpoint were dropped from the log and redone once
    ours, ref = read_log(out), read_log(reference)
    for a, b in zip(ours, ref):
        assert a["step"] == b["step"]
        if "train_loss" in b:
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert ours[-1]["eval_loss"] == pytest.approx(ref[-1]["eval_loss"], rel=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"].endswith(f"checkpoint-{step}") and metrics["train_tokens"] == ours[-2]["tokens"]


def test_deepspeed_zero3_on_cpu(setup, tmp_path):
    """The DeepSpeed path (ZeRO-3 engine, 16-bit gather on save, merged adapter) in one CPU process."""
    pytest.importorskip("deepspeed")
    ds = write_deepspeed_config(build_deepspeed_config("fp32"), tmp_path / "ds.json")
    out = tmp_path / "ds"
    text = trainer(setup, out, "--max-steps", "3", "--deepspeed", str(ds))
    assert "deepspeed" in text.splitlines()[0] or "(fp32, deepspeed)" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["deepspeed"] is True and metrics["total_params"] > 0
    load_causal_lm(out / "model")
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_two_processes_ddp(setup, tmp_path):
    """Two CPU processes (torchrun → accelerate MULTI_CPU): each step takes grad_accum × 2 micro-batches."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "garden_assets.training",
           "--train-file", str(setup["train"]), "--test-file", str(setup["test"]), "--base-model", str(setup["model"]),
           "--output-dir", str(out), "--device", "cpu", "--batch-size", "4", "--max-steps", "3", "--save-steps", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    single = plan_steps(load_examples(str(setup["train"]), load_causal_lm(setup["model"])[1], 1024)[0],
                        batch_size=4, grad_accum=1, world_size=2, seed=42, grouped=True, epochs=1, max_steps=3,
                        max_train_tokens=None)
    assert metrics["train_tokens"] == sum(s.tokens for s in single)
    assert len([r for r in read_log(out) if "step_time_s" in r]) == 3  # only the main process logs


# -- slow: the real model -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_gemma_lora_end_to_end(tmp_path):
    """Packaged Gemma 3 270M → a few LoRA steps on CPU → merged model answers in the Dolly format."""
    import torch

    from garden_assets.llm.models import PACKAGED_GEMMA, resolve_base_model
    from garden_assets.llm.prompts import extract_response

    cache = Path(os.environ.get("GARDEN_HOME", Path.home() / ".cache" / "garden")) / "models"
    base = resolve_base_model(PACKAGED_GEMMA, cache_dir=cache)  # converted once, reused by later runs
    setup = {"model": base.path, "train": write_rows(tmp_path / "train.jsonl", 16, 0),
             "test": write_rows(tmp_path / "test.jsonl", 4, 1), "threads": os.cpu_count()}
    out = tmp_path / "tuned"
    trainer(setup, out, "--max-steps", "3", "--batch-size", "2", "--max-length", "256", "--save-steps", "2")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["eval_loss"] < 10 and metrics["tokens_per_s"] > 0
    model, tok = load_causal_lm(out / "model")
    ids = tok(dolly_prompt("How do I water my tomato?"), return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert isinstance(extract_response(tok.decode(gen[0], skip_special_tokens=True)), str)
