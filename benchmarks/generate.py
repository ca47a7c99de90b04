"""Answers/s and p50 latency: our batched `Generator` against one question at a time with default ``generate``;
and the same batched generation in bf16 (tokens/s, answers identical to fp32).

Same model object, same questions, same process; greedy on both sides. The baseline is the plain recipe: one
prompt per ``model.generate(max_new_tokens=N)`` call, stopping at EOS only, the answer cut at ``### End``
afterwards. Ours: prompts sorted by length and batched with left padding, each row stopping at ``### End``.
Prints both figures, the ratio, and how many answers are identical (the goal: ≥ 2× at identical answers).

    python benchmarks/generate.py                    # the tuned model of `make run` (else the base model)
    python benchmarks/generate.py --model PATH --questions 16 --batch-size 8 --max-new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from garden_assets.llm.generate import GenerationSettings, Generator  # noqa: E402
from garden_assets.llm.models import base_model_path, load_causal_lm, tuned_model_path  # noqa: E402
from garden_assets.llm.prompts import dolly_prompt, extract_response  # noqa: E402
from garden_assets.settings import garden_home  # noqa: E402

FALLBACK = ["What soil do blueberries like?", "How often should I water tomatoes in a raised bed?",
            "Why are the leaves of my basil turning yellow?", "When is the best time to prune apple trees?",
            "How do I keep slugs off my lettuce?", "Can I compost citrus peels?",
            "How deep should I plant garlic cloves?", "What is the best mulch for strawberries?"]


def default_model() -> Path:
    tuned = tuned_model_path(garden_home() / "finetune" / "tuned")
    return tuned if (tuned / "config.json").is_file() else base_model_path("packaged:gemma3-270m", garden_home() / "models")


def questions(n: int) -> list[tuple[str, str]]:
    test = garden_home() / "finetune" / "dataset" / "test.jsonl"
    if test.is_file():
        from garden_assets.llm.evaluation import load_test_questions

        qs = [(q.instruction, q.context) for q in load_test_questions(test, limit=n)]
    else:
        qs = [(q, "") for q in FALLBACK]
    return (qs * (n // len(qs) + 1))[:n]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    path = args.model or default_model()
    model, tok = load_causal_lm(path)
    prompts = [dolly_prompt(q, c) for q, c in questions(args.questions)]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    gen = Generator(model, tok, batch_size=args.batch_size)
    gen.generate(prompts[:1], GenerationSettings(max_new_tokens=2))  # warm-up (allocator, kernels)

    began = time.perf_counter()
    ours = [g[0] for g in gen.generate(prompts, settings)]
    ours_s = time.perf_counter() - began

    plain, latencies = [], []
    began = time.perf_counter()
    for p in prompts:
        t = time.perf_counter()
        enc = tok(p, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False)
        plain.append(extract_response(tok.decode(out[0, enc.input_ids.shape[1]:], skip_special_tokens=True)))
        latencies.append(time.perf_counter() - t)
    plain_s = time.perf_counter() - began

    # the same batched generation in bf16 (what `auto` picks on a CPU with native bf16)
    bf16_model, _ = load_causal_lm(path, precision="bf16")
    bf16_gen = Generator(bf16_model, tok, batch_size=args.batch_size)
    bf16_gen.generate(prompts[:1], GenerationSettings(max_new_tokens=2))
    began = time.perf_counter()
    bf16 = [g[0] for g in bf16_gen.generate(prompts, settings)]
    bf16_s = time.perf_counter() - began

    same = sum(a.text == b for a, b in zip(ours, plain))
    figures = {
        "model": str(path), "questions": len(prompts), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
        "ours_answers_per_s": round(len(prompts) / ours_s, 3), "plain_answers_per_s": round(len(prompts) / plain_s, 3),
        "ours_p50_latency_s": round(statistics.median(g.latency_s for g in ours), 2),
        "plain_p50_latency_s": round(statistics.median(latencies), 2),
        "ours_new_tokens": sum(g.new_tokens for g in ours), "ratio": round(plain_s / ours_s, 2),
        "identical_answers": f"{same}/{len(prompts)}",
        "fp32_tokens_per_s": round(sum(g.new_tokens for g in ours) / ours_s, 1),
        "bf16_tokens_per_s": round(sum(g.new_tokens for g in bf16) / bf16_s, 1),
        "bf16_ratio": round(ours_s / bf16_s * sum(g.new_tokens for g in bf16) / max(1, sum(g.new_tokens for g in ours)), 2),
        "bf16_identical_to_fp32": f"{sum(a.text == b.text for a, b in zip(ours, bf16))}/{len(prompts)}",
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>22}: {v}")
        for a, b in zip(ours, plain):
            if a.text != b:
                print(f"differs:\n  ours:  {a.text[:160]!r}\n  plain: {b[:160]!r}")
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
