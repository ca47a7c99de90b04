"""Trainer speed: our trainer vs the dolly recipe, same model and data, one run; plus the CPU demo's wall time.

    .venv/bin/python benchmarks/train.py                      # real Gemma 3 270M (packaged GGUF → checkpoint)
    .venv/bin/python benchmarks/train.py --model tiny         # tiny random Gemma 3 (Gemma tokenizer if converted)
    .venv/bin/python benchmarks/train.py --demo-only          # just time the default CPU demo

The dolly recipe = the databricks dolly-v2 trainer's choices: random-order batches padded to the longest row
(multiple of 8), loss from full logits over every position (``--batching padded --loss full``). Ours = length-
grouped batches + logits only at completion positions (the defaults). Same model (LoRA r=8 on q/v, fp32), same
rows.

Three measurements:
1. interleaved speed (the headline ratio): both recipes in one process on one model, alternating step by step,
   so background load on a shared machine hits both alike; reports total and median-of-pairs ratios;
2. two end-to-end trainer runs (subprocesses, one epoch each, sequential): tokens/s as the trainer logs it and
   the final eval loss on the same held-out rows with the same evaluator (must agree within 5%);
3. the default CPU demo (`training.config.demo_config`: ≈ 15k tokens) on all train rows: wall time.

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
    args = p.parse_args()

    from garden_assets.llm.models import PACKAGED_GEMMA, load_tokenizer, resolve_base_model, tiny_random_model

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
