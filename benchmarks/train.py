"""Trainer speed: our trainer vs the dolly recipe, same model and data, one run; plus the CPU demo's wall time.

    .venv/bin/python benchmarks/train.py                      # real Gemma 3 270M (packaged GGUF → checkpoint)
    .venv/bin/python benchmarks/train.py --model tiny         # tiny random Gemma 3 (Gemma tokenizer if converted)
    .venv/bin/python benchmarks/train.py --demo-only          # just time the default CPU demo
    .venv/bin/python benchmarks/train.py --interleaved-steps 0 --skip-runs --skip-demo --json   # only ours vs TRL

The dolly recipe = the databricks dolly-v2 trainer's choices: random-order batches padded to the longest row
(multiple of 8), loss from full logits over every position (``--batching padded --loss full``). Ours = length-
grouped batches + logits only at completion positions (the defaults). Same model (LoRA r=8 on q/v, fp32), same
rows.

Three measurements:
1. interleaved speed (the headline ratio): both recipes in one process on one model, alternating step by step,
   so background load on a shared machine hits both alike; reports total and median-of-pairs ratios;
2. two end-to-end trainer runs (subprocesses, one epoch each, sequential): tokens/s as the trainer logs it and
   the final eval loss on the same held-out rows with the same evaluator (must agree within 5%);
3. the default CPU demo (`training.config.demo_config`: ≈ 15k tokens) on all train rows: wall time;
4. ours vs TRL's ``SFTTrainer`` (``--trl-steps N``, 0: skip; needs ``pip install -e '.[bench]'``): the tuned_model
   recipe's LoRA (r=16, alpha 32, all linear layers, lr 1e-3, batch 4, fp32 CPU) for N steps on the same train rows,
   each trainer in its own subprocess; TRL gets the rows as ``{"prompt", "completion"}`` with
   ``completion_only_loss=True``, the same schedule and, by default, the very batches our trainer plans
   (``--trl-sampler``), no gradient checkpointing and fp32 (its defaults would be bf16 autocast and checkpointing).
   Reports tokens/s (non-pad tokens per second of training steps, collation included) and the final eval loss of
   both models on the same test rows with the same evaluator (ours, `training.trainer.evaluate`). TRL 1.16 has no option for logits only at label positions on CPU: its fused
   LM head scores only the label positions on CUDA/XPU (Triton) and every position, in vocabulary chunks, elsewhere.
   ``--json``: one line per trainer, ``trainer, tokens_per_s, eval_loss, steps, seconds``. Then (the figure that
   holds up on a loaded machine) ``--trl-interleaved-steps``: both loss paths in one process on one model,
   alternating step by step on the same batches, like measurement 1.

Data: a Stack Exchange ``Posts.xml`` (default: the shared coffee dump) turned into qa_pairs by the project's
ingestion library, or ``--pairs some.parquet``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_POSTS = Path(os.environ.get("GARDEN_SHARED_DATA", ROOT.parent / "shared/data/stackexchange")) / "coffee/Posts.xml"


# -- data ------------------------------------------------------------------------------------------------------------
def pairs_from_posts(path: Path, max_body_chars: int = 1000):
    """qa_pairs from a Posts.xml through the project's own ingestion path (no score filter, the talk's length cap)."""
    from garden_assets.stackexchange.qa import build_pairs
    from garden_assets.stackexchange.reader import read_posts
    from garden_assets.stackexchange.text import clean_posts

    clean, _ = clean_posts(read_posts(path), max_body_chars=max_body_chars)
    return build_pairs(clean)[0]


def prepare_data(tokenizer, args, work: Path) -> dict:
    import polars as pl

    from garden_assets.llm.dataset import DatasetOptions, build_finetune_dataset, write_jsonl_atomic

    pairs = pl.read_parquet(args.pairs) if args.pairs else pairs_from_posts(Path(args.posts))
    ds = build_finetune_dataset(pairs, tokenizer, DatasetOptions(answers="all", max_length=args.max_length,
                                                                  test_size=args.test_rows))
    train = ds.train[: args.train_rows] if args.train_rows else ds.train
    write_jsonl_atomic(train, work / "train.jsonl")
    write_jsonl_atomic(ds.test, work / "test.jsonl")
    write_jsonl_atomic(ds.train, work / "train_all.jsonl")
    return {"pairs": pairs.height, "train_rows": len(train), "train_tokens": sum(r["n_tokens"] for r in train),
            "test_rows": len(ds.test), "all_train_rows": len(ds.train), "all_train_tokens": ds.stats.train_tokens,
            "dropped_too_long": ds.stats.dropped_too_long}


# -- runs ------------------------------------------------------------------------------------------------------------
def run_trainer(argv: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, "-m", "garden_assets.training", *argv], stdout=fh,
                              stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        sys.exit(f"trainer failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - start


def summarize(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    steps = [r for r in map(json.loads, (out / "training_log.jsonl").read_text().splitlines()) if "step_time_s" in r]
    warm = steps[1:] or steps  # steady state: without the first (warm-up) step
    metrics["steady_tokens_per_s"] = sum(r["step_tokens"] for r in warm) / sum(r["step_time_s"] for r in warm)
    return metrics


def padding_stats(train_file: Path, tokenizer, batch_size: int, seed: int) -> dict:
    """Fraction of padded positions, and of positions whose logits count, under both batchings."""
    from garden_assets.training.data import load_examples, plan_epoch

    examples, _ = load_examples(str(train_file), tokenizer, 10**9)
    lengths = [e.n_tokens for e in examples]
    real = sum(lengths)
    loss = sum(e.n_loss_tokens for e in examples)
    out = {}
    for name, grouped, mult in (("dolly", False, 8), ("ours", True, 1)):
        padded = 0
        for b in plan_epoch(lengths, batch_size, seed=seed, epoch=0, grouped=grouped):
            width = -(-max(lengths[i] for i in b) // mult) * mult
            padded += width * len(b)
        out[name] = {"positions": padded, "pad_fraction": 1 - real / padded, "logit_fraction":
                     (padded if name == "dolly" else loss) / padded}
    return out


def interleaved_speed(model_path: str, train_file: Path, batch_size: int, steps: int, seed: int = 42) -> dict:
    """Both recipes in ONE process on one LoRA model, alternating step by step (who goes first alternates too), so
    background load on a shared machine hits both alike. Same code as the trainer: plan_epoch, collate, loss_sum."""
    import torch
    from peft import LoraConfig, get_peft_model

    from garden_assets.llm.models import load_causal_lm
    from garden_assets.training.data import collate, load_examples, plan_epoch
    from garden_assets.training.trainer import loss_sum

    model, tok = load_causal_lm(model_path)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                                             task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    examples, _ = load_examples(str(train_file), tok, 10**9)
    lengths = [e.n_tokens for e in examples]
    recipes = {"dolly": (plan_epoch(lengths, batch_size, seed=seed, epoch=0, grouped=False), 8, "full"),
               "ours": (plan_epoch(lengths, batch_size, seed=seed, epoch=0, grouped=True), None, "completion")}
    steps = min(steps, *(len(plan) for plan, _, _ in recipes.values()))
    tokens = {name: 0 for name in recipes}
    seconds = {name: 0.0 for name in recipes}
    pair_ratios = []  # per back-to-back pair: ours tokens/s ÷ dolly tokens/s (robust to load that drifts)
    for i in range(steps):
        order = list(recipes) if i % 2 == 0 else list(reversed(recipes))
        rate = {}
        for name in order:
            plan, multiple, mode = recipes[name]
            batch = collate([examples[j] for j in plan[i]], tok.pad_token_id, multiple)
            start = time.perf_counter()
            loss, count = loss_sum(model, batch, mode)
            (loss / count).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            rate[name] = int(batch["attention_mask"].sum()) / elapsed
            if i > 0:  # the first pair warms up
                seconds[name] += elapsed
                tokens[name] += int(batch["attention_mask"].sum())
        if i > 0:
            pair_ratios.append(rate["ours"] / rate["dolly"])
        print(f"  pair {i}: dolly {rate['dolly']:.1f} tokens/s, ours {rate['ours']:.1f} tokens/s", flush=True)
    pair_ratios.sort()
    return {name: {"tokens": tokens[name], "seconds": seconds[name], "tokens_per_s": tokens[name] / seconds[name]}
            for name in recipes} | {"steps_timed": steps - 1, "median_pair_ratio": pair_ratios[len(pair_ratios) // 2]}


# -- ours vs TRL's SFTTrainer -----------------------------------------------------------------------------------------
def trl_missing() -> str | None:
    """Why the TRL baseline cannot run here (None: it can)."""
    import importlib.util

    missing = [m for m in ("trl", "datasets") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def recipe_argv(model_path: str, work: Path, args) -> list[str]:
    """Our trainer on the tuned_model recipe's LoRA settings (training.config.tune_config, CPU) for --trl-steps."""
    from garden_assets.training.config import RECIPE_LORA_R, RECIPE_LORA_TARGETS, RECIPE_LR

    return ["--train-file", str(work / "train.jsonl"), "--test-file", str(work / "test.jsonl"),
            "--base-model", model_path, "--output-dir", str(work / "run-ours-recipe"), "--no-merge",
            "--device", "cpu", "--precision", "fp32", "--batch-size", str(args.batch_size),
            "--max-length", str(args.max_length), "--lr", str(RECIPE_LR), "--lora-r", str(RECIPE_LORA_R),
            "--lora-alpha", str(2 * RECIPE_LORA_R), "--lora-targets", ",".join(RECIPE_LORA_TARGETS),
            "--max-steps", str(args.trl_steps), "--save-steps", "0"]


def build_sft_trainer(spec: dict):
    """(SFTTrainer, tokenizer, our planned micro-batches or None) for a spec (see `trl_comparison`): the recipe's
    LoRA, fp32, our schedule; with sampler "ours" it trains on exactly the batches our trainer plans."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from garden_assets.llm.dataset import read_jsonl
    from garden_assets.llm.models import load_tokenizer
    from garden_assets.training.config import TrainConfig
    from garden_assets.training.data import load_examples, plan_steps

    defaults = TrainConfig(train_file="", base_model="", output_dir="")  # warm-up, dropout, clipping, seed: ours
    tok = load_tokenizer(spec["model"])
    rows = read_jsonl(spec["train_file"])
    train = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    model.config.use_cache = False
    steps = spec["steps"]
    config = SFTConfig(
        output_dir=spec["output_dir"], max_steps=steps, per_device_train_batch_size=spec["batch_size"],
        learning_rate=spec["lr"], lr_scheduler_type="linear",
        warmup_steps=int(defaults.warmup_ratio * steps),  # ours: int(ratio × steps); a float ratio would round up
        weight_decay=defaults.weight_decay, max_grad_norm=defaults.max_grad_norm, seed=defaults.seed,
        completion_only_loss=True, max_length=spec["max_length"], packing=False,
        train_sampling_strategy="random" if spec["sampler"] == "random" else "group_by_length",
        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True,  # TRL defaults: checkpointing, bf16
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
    lora = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=defaults.lora_dropout,
                      target_modules=spec["lora_targets"], task_type="CAUSAL_LM")

    micro = None  # --trl-sampler ours: the very batches our trainer plans (plan_steps), in its order
    if spec["sampler"] == "ours":
        examples, dropped = load_examples(spec["train_file"], tok, spec["max_length"])
        if dropped:
            sys.exit(f"--trl-sampler ours: {dropped} train rows exceed --max-length (indices would not line up)")
        plan = plan_steps(examples, batch_size=spec["batch_size"], grad_accum=1, world_size=1, seed=defaults.seed,
                          grouped=True, epochs=defaults.epochs, max_steps=steps, max_train_tokens=None)
        micro = [b for sp in plan for b in sp.micro]
        if any(len(b) != spec["batch_size"] for b in micro):
            sys.exit("--trl-sampler ours: a planned batch is short of --batch-size; use --trl-sampler group_by_length")
    order = [i for b in micro for i in b] if micro else None

    class PlannedSFTTrainer(SFTTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return order if order is not None else super()._get_train_sampler(train_dataset)

    trainer = PlannedSFTTrainer(model=model, args=config, train_dataset=train, processing_class=tok, peft_config=lora)
    return trainer, tok, micro


def trl_worker(spec_file: str) -> None:
    """One SFTTrainer run (in its own process, like our trainer's): the spec in, metrics.json out."""
    spec = json.loads(Path(spec_file).read_text())
    from transformers import TrainerCallback

    from garden_assets.llm.dataset import encode_examples, read_jsonl
    from garden_assets.training.data import load_examples
    from garden_assets.training.trainer import evaluate, supports_logits_mask

    started = time.time()
    trainer, tok, _ = build_sft_trainer(spec)
    rows = read_jsonl(spec["train_file"])

    # TRL tokenizes prompt + completion + EOS text in one call; ours tokenizes prompt and completion apart
    ours = encode_examples(tok, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    theirs = trainer.train_dataset
    same_ids = sum(list(t) == ids for t, (ids, _) in zip(theirs["input_ids"], ours))
    same_mask = sum(list(t) == ids and list(lab) == [-100] * n + ids[n:] for t, lab, (ids, n)
                    in zip(theirs["input_ids"], theirs["labels"], ours))

    # per collated batch, in order: (seconds, non-pad tokens); the dataloader runs a batch ahead, so step k pops the
    # k-th batch rather than whatever was collated since the last step
    clock = {"batches": [], "begin": 0.0, "steps": []}
    collator = trainer.data_collator

    def timed_collator(features):
        t0 = time.perf_counter()
        batch = collator(features)
        clock["batches"].append((time.perf_counter() - t0, int(batch["attention_mask"].sum())))
        return batch

    trainer.data_collator = timed_collator  # the train dataloader is built in train(), from this attribute

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock["begin"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            # this step's forward/backward/optimizer + the collation of its batch (fetched before on_step_begin)
            collate_s, tokens = clock["batches"].pop(0)  # gradient_accumulation_steps is 1: one batch a step
            clock["steps"].append({"step_time_s": time.perf_counter() - clock["begin"] + collate_s,
                                   "step_tokens": tokens})

    trainer.add_callback(StepClock())
    trainer.train()
    step_log = clock["steps"]
    train_loss = [r["loss"] for r in trainer.state.log_history if "loss" in r]

    test, _ = load_examples(spec["test_file"], tok, spec["max_length"])
    eval_loss = evaluate(trainer.model, test, batch_size=spec["batch_size"] * 2, pad_id=tok.pad_token_id,
                         accelerator=trainer.accelerator, logits_mask=supports_logits_mask(trainer.model))
    tokens = sum(r["step_tokens"] for r in step_log)
    seconds = sum(r["step_time_s"] for r in step_log)
    warm = step_log[1:] or step_log
    metrics = {"steps": len(step_log), "train_tokens": tokens, "train_time_s": round(seconds, 3),
               "tokens_per_s": tokens / max(seconds, 1e-9),
               "steady_tokens_per_s": sum(r["step_tokens"] for r in warm) / sum(r["step_time_s"] for r in warm),
               "eval_loss": eval_loss, "train_loss": train_loss[-1] if train_loss else None,
               "rows": len(rows), "rows_same_tokens": same_ids, "rows_same_tokens_and_mask": same_mask,
               "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
               "activation_checkpointing": bool(getattr(trainer.model.get_base_model(), "is_activation_checkpointing",
                                                        False)),
               "step_log": step_log, "wall_time_s": round(time.time() - started, 2)}
    Path(spec["output_dir"], "metrics.json").write_text(json.dumps(metrics, indent=2))


def trl_interleaved(spec: dict, steps: int) -> dict:
    """Ours vs TRL's loss path in ONE process on one LoRA model, alternating step by step on the same batches (who
    goes first alternates), so background load hits both alike. Ours: collate + `loss_sum` (logits at completion
    positions only); TRL: its collator + `SFTTrainer.compute_loss` (fused chunked LM head, entropy/accuracy
    metrics); each + backward + AdamW step. The Trainer loop's own overhead is not in the TRL figure."""
    import torch

    from garden_assets.training.data import collate, load_examples
    from garden_assets.training.trainer import loss_sum, supports_logits_mask

    trainer, tok, micro = build_sft_trainer({**spec, "sampler": "ours", "steps": steps})
    model = trainer.model
    model.train()
    logits_mask = supports_logits_mask(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec["lr"])
    examples, _ = load_examples(spec["train_file"], tok, spec["max_length"])
    data = trainer.train_dataset
    steps = min(steps, len(micro))
    tokens = {"ours": 0, "trl": 0}
    seconds = {"ours": 0.0, "trl": 0.0}
    pair_ratios = []
    for i in range(steps):
        rate = {}
        for name in (("ours", "trl") if i % 2 == 0 else ("trl", "ours")):
            start = time.perf_counter()
            if name == "ours":
                batch = collate([examples[j] for j in micro[i]], tok.pad_token_id)
                loss, count = loss_sum(model, batch, "completion", logits_mask)
                (loss / count).backward()
            else:
                batch = trainer._prepare_inputs(trainer.data_collator(
                    [{"input_ids": data[j]["input_ids"], "labels": data[j]["labels"]} for j in micro[i]]))
                trainer.compute_loss(model, batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            n = int(batch["attention_mask"].sum())
            rate[name] = n / elapsed
            if i > 0:  # the first pair warms up
                seconds[name] += elapsed
                tokens[name] += n
        if i > 0:
            pair_ratios.append(rate["ours"] / rate["trl"])
        print(f"  pair {i}: ours {rate['ours']:.1f} tokens/s, trl {rate['trl']:.1f} tokens/s", flush=True)
    pair_ratios.sort()
    return {name: {"tokens": tokens[name], "seconds": seconds[name],
                   "tokens_per_s": tokens[name] / max(seconds[name], 1e-9)} for name in tokens} | {
        "steps_timed": steps - 1, "median_pair_ratio": pair_ratios[len(pair_ratios) // 2] if pair_ratios else None}


def trl_comparison(model_path: str, work: Path, args) -> dict | None:
    """Ours (tuned_model recipe's LoRA) vs TRL SFTTrainer, same rows, same steps, same eval; None if TRL is missing."""
    from garden_assets.training.config import RECIPE_LORA_R, RECIPE_LORA_TARGETS, RECIPE_LR

    why = trl_missing()
    if why:
        print(f"trl baseline skipped: {why} (install the benchmark extra: .venv/bin/pip install -e '.[bench]')")
        return None
    import trl

    out = work / "run-ours-recipe"
    wall = run_trainer(recipe_argv(model_path, work, args), work / "ours-recipe.log")
    ours = summarize(out) | {"wall_s": wall}

    trl_out = work / "run-trl"
    trl_out.mkdir(parents=True, exist_ok=True)
    (trl_out / "metrics.json").unlink(missing_ok=True)
    spec = {"model": model_path, "train_file": str(work / "train.jsonl"), "test_file": str(work / "test.jsonl"),
            "output_dir": str(trl_out), "steps": args.trl_steps, "batch_size": args.batch_size,
            "max_length": args.max_length, "lr": RECIPE_LR, "lora_r": RECIPE_LORA_R, "lora_alpha": 2 * RECIPE_LORA_R,
            "lora_targets": list(RECIPE_LORA_TARGETS), "sampler": args.trl_sampler}
    (trl_out / "spec.json").write_text(json.dumps(spec, indent=2))
    log = work / "trl.log"
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--trl-worker", str(trl_out / "spec.json")],
                              stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode:
        sys.exit(f"TRL SFTTrainer run failed (exit {proc.returncode}); see {log}")
    theirs = json.loads((trl_out / "metrics.json").read_text()) | {"wall_s": time.perf_counter() - start}

    result = {"trl_version": trl.__version__, "ours": ours, "trl": theirs,
              "tokens_per_s_ratio": ours["tokens_per_s"] / theirs["tokens_per_s"],
              "steady_tokens_per_s_ratio": ours["steady_tokens_per_s"] / theirs["steady_tokens_per_s"],
              "eval_loss_ratio": ours["eval_loss"] / theirs["eval_loss"]}
    print(f"ours vs TRL {trl.__version__} SFTTrainer ({args.trl_steps} steps each, LoRA r={RECIPE_LORA_R} on "
          f"{len(RECIPE_LORA_TARGETS)} linear layers, lr {RECIPE_LR:g}, batch {args.batch_size}, fp32 CPU; "
          f"TRL batches: {args.trl_sampler}; TRL tokenization = ours on "
          f"{theirs['rows_same_tokens_and_mask']}/{theirs['rows']} rows):")
    for name, m in (("ours", ours), ("trl", theirs)):
        print(f"  {name:4s} tokens/s {m['tokens_per_s']:7.1f} (steady {m['steady_tokens_per_s']:7.1f})  "
              f"{m['steps']} steps, {m['train_tokens']} tokens in {m['train_time_s']:.1f} s  "
              f"eval loss {m['eval_loss']:.4f}  {m['trainable_params']:,} trainable  wall {m['wall_s']:.0f} s")
    print(f"  ours/TRL: {result['tokens_per_s_ratio']:.2f}x tokens/s (steady {result['steady_tokens_per_s_ratio']:.2f}x); "
          f"eval loss ours/TRL = {result['eval_loss_ratio']:.4f}")
    if args.json:
        for name, m in (("ours", ours), ("trl", theirs)):
            print(json.dumps({"trainer": name, "tokens_per_s": round(m["tokens_per_s"], 2),
                              "eval_loss": round(m["eval_loss"], 5), "steps": m["steps"],
                              "seconds": round(m["train_time_s"], 3)}))
    if args.trl_interleaved_steps > 1:
        print(f"ours vs TRL interleaved ({args.trl_interleaved_steps} steps each, one process, one model):", flush=True)
        inter = trl_interleaved(spec | {"output_dir": str(work / "run-trl-interleaved")}, args.trl_interleaved_steps)
        result["interleaved"] = inter
        o, t = inter["ours"], inter["trl"]
        print(f"  interleaved: ours {o['tokens_per_s']:.1f} tokens/s, TRL {t['tokens_per_s']:.1f} tokens/s, "
              f"ours/TRL {o['tokens_per_s'] / t['tokens_per_s']:.2f}x (median of pairs {inter['median_pair_ratio']:.2f}x)")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma", help="gemma (packaged Gemma 3 270M), tiny, or a checkpoint dir")
    p.add_argument("--cache-dir", default=os.environ.get("GARDEN_HOME", str(Path.home() / ".cache" / "garden")) + "/models")
    p.add_argument("--posts", default=str(DEFAULT_POSTS))
    p.add_argument("--pairs", help="a qa_pairs parquet instead of --posts")
    p.add_argument("--work", default="/tmp/garden-bench-train")
    p.add_argument("--train-rows", type=int, default=48, help="rows both runs train on (one epoch)")
    p.add_argument("--test-rows", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--interleaved-steps", type=int, default=8, help="alternating timing steps per recipe (0: skip)")
    p.add_argument("--skip-runs", action="store_true", help="skip the two end-to-end trainer runs")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--demo-only", action="store_true")
    p.add_argument("--trl-steps", type=int, default=6,
                   help="steps of ours vs TRL SFTTrainer on the tuned_model recipe's LoRA (0: skip; needs .[bench])")
    p.add_argument("--trl-sampler", choices=["ours", "group_by_length", "random"], default="ours",
                   help="TRL's batches: ours (the same batches our trainer plans), transformers' length-grouped "
                        "sampler, or its default random order")
    p.add_argument("--trl-interleaved-steps", type=int, default=4,
                   help="then ours vs TRL's loss path alternating step by step in one process (0: skip)")
    p.add_argument("--json", action="store_true", help="one JSON line per trainer of the TRL comparison")
    p.add_argument("--trl-worker", help=argparse.SUPPRESS)  # internal: one SFTTrainer run from a spec file
    args = p.parse_args()
    if args.trl_worker:
        trl_worker(args.trl_worker)
        return

    from garden_assets.llm.models import PACKAGED_GEMMA, load_tokenizer, resolve_base_model
    from garden_assets_tests.tiny_models import tiny_random_model

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if args.model in ("gemma", "tiny"):
        gemma = resolve_base_model(PACKAGED_GEMMA, cache_dir=args.cache_dir)
        model_path = gemma.path
        if args.model == "tiny":
            model_path = str(tiny_random_model(work / "tiny-model", tokenizer_dir=gemma.path, hidden_size=128))
    else:
        model_path = args.model
    print(f"model: {args.model} at {model_path} (ready in {time.perf_counter() - t:.1f} s)")
    tokenizer = load_tokenizer(model_path)
    data = prepare_data(tokenizer, args, work)
    print(f"data: {json.dumps(data)}")

    common = ["--base-model", model_path, "--test-file", str(work / "test.jsonl"), "--device", "cpu",
              "--precision", "fp32", "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
              "--lr", str(args.lr), "--save-steps", "0", "--epochs", "1"]
    results = {}
    if args.interleaved_steps and not args.demo_only:
        speed = interleaved_speed(model_path, work / "train.jsonl", args.batch_size, args.interleaved_steps)
        results["interleaved"] = speed
        d, o = speed["dolly"], speed["ours"]
        print(f"interleaved ({speed['steps_timed']} timed steps each, one process, same LoRA model): "
              f"dolly {d['tokens_per_s']:.1f} tokens/s, ours {o['tokens_per_s']:.1f} tokens/s, "
              f"speed-up {o['tokens_per_s'] / d['tokens_per_s']:.2f}x (median of pairs {speed['median_pair_ratio']:.2f}x)")
    if not args.demo_only and not args.skip_runs:
        pad = padding_stats(work / "train.jsonl", tokenizer, args.batch_size, 42)
        for name, extra in (("dolly", ["--batching", "padded", "--loss", "full"]), ("ours", [])):
            out = work / f"run-{name}"
            wall = run_trainer(["--train-file", str(work / "train.jsonl"), "--output-dir", str(out), "--no-merge",
                                *common, *extra], work / f"{name}.log")
            results[name] = summarize(out) | {"wall_s": wall}
            m = results[name]
            print(f"{name:6s} tokens/s {m['tokens_per_s']:7.1f} (steady {m['steady_tokens_per_s']:7.1f})  "
                  f"train {m['train_time_s']:6.1f} s  eval loss {m['eval_loss']:.4f}  "
                  f"padding {pad[name]['pad_fraction']:.1%}  positions with logits {pad[name]['logit_fraction']:.1%}")
        d, o = results["dolly"], results["ours"]
        print(f"speed-up: {o['tokens_per_s'] / d['tokens_per_s']:.2f}x tokens/s "
              f"(steady {o['steady_tokens_per_s'] / d['steady_tokens_per_s']:.2f}x); "
              f"eval loss ours/dolly = {o['eval_loss'] / d['eval_loss']:.4f}")

    if args.trl_steps and not args.demo_only:
        comparison = trl_comparison(model_path, work, args)
        if comparison is not None:
            results["trl_comparison"] = comparison

    if not args.skip_demo:
        from garden_assets.training.config import demo_config

        cfg = demo_config(work / "train_all.jsonl", model_path, work / "run-demo", test_file=work / "test.jsonl",
                          resume=False)
        wall = run_trainer(cfg.to_argv(), work / "demo.log")
        m = summarize(work / "run-demo")
        results["demo"] = m | {"wall_s": wall}
        print(f"demo   {m['steps']} steps, {m['train_tokens']} tokens, {m['tokens_per_s']:.1f} tokens/s, "
              f"eval loss {m['eval_loss']:.4f}; wall {wall:.0f} s (model load, training, eval, merged save)")
    (work / "results.json").write_text(json.dumps({"data": data, "model": args.model, **results}, indent=2,
                                                  default=str))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
