#!/usr/bin/env bash
# A short FULL fine-tune of Gemma 3 270M on one GPU with DeepSpeed ZeRO-3 bf16; prints tokens/s and MFU, for
# our trainer and (unless SKIP_DOLLY=1) the dolly recipe (padded random batches, full logits) on the same data.
#
#   bash benchmarks/gpu_finetune.sh                 # from the repository root, in an env with the project
#                                                   # installed (CUDA torch, deepspeed: DS_BUILD_OPS=0 is fine)
# Settings (env): PYTHON, WORK (default /tmp/garden-gpu-bench), STEPS (30), BATCH (16 rows/micro-batch),
#   MAX_LENGTH (512), ROWS (2000 synthetic rows unless POSTS=/path/Posts.xml), PEAK_TFLOPS (else from the GPU
#   name: H100/H200 989, A100 312, L4 121, A10 125 — dense bf16), SKIP_DOLLY=1.
# Needs no network: the base model is the packaged GGUF, converted once under $WORK/models.
set -euo pipefail

PYTHON=${PYTHON:-python}
WORK=${WORK:-/tmp/garden-gpu-bench}
STEPS=${STEPS:-30}
BATCH=${BATCH:-16}
MAX_LENGTH=${MAX_LENGTH:-512}
ROWS=${ROWS:-2000}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$WORK"
cd "$(dirname "$0")/.."

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__, 'capability', torch.cuda.get_device_capability())"

# -- model, data, DeepSpeed config -----------------------------------------------------------------------------------
"$PYTHON" - "$WORK" "$ROWS" "$MAX_LENGTH" <<'EOF'
import json, os, random, sys, time
from pathlib import Path
work, rows, max_length = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
from garden_assets.llm.models import PACKAGED_GEMMA, resolve_base_model, load_tokenizer
from garden_assets.llm.dataset import DatasetOptions, build_finetune_dataset, write_dataset
from garden_assets.training.deepspeed import build_deepspeed_config, write_deepspeed_config
t = time.time()
info = resolve_base_model(PACKAGED_GEMMA, cache_dir=work / "models")
print(f"base model {info.path} ({info.parameters:,} params) ready in {time.time() - t:.0f} s")
(work / "model_path").write_text(info.path)
import polars as pl
posts = os.environ.get("POSTS")
if posts:
    sys.path.insert(0, "benchmarks")
    from train import pairs_from_posts
    pairs = pairs_from_posts(Path(posts))
else:  # synthetic Q/A of Stack-Exchange-like lengths (~250 tokens, ~half of them completion)
    rng = random.Random(0)
    words = ("soil water tomato basil prune compost mulch seed leaf root sun shade frost pot bed weed slug aphid "
             "drainage clay sandy nitrogen potassium cutting graft bloom harvest yield spacing trellis").split()
    text = lambda a, b: " ".join(rng.choice(words) for _ in range(rng.randint(a, b))) + "."
    pairs = pl.DataFrame([{
        "question_id": i, "answer_id": 10**6 + i, "instruction": text(5, 14).capitalize() + "?",
        "context": text(10, 140), "response": text(15, 170), "category": "closed_qa", "is_accepted": True,
        "question_score": 1, "answer_score": 1, "tags": ["x"], "source_url": "", "content_hash": ""} for i in range(rows)])
ds = build_finetune_dataset(pairs, load_tokenizer(info.path), DatasetOptions(max_length=max_length, test_size=64,
                                                                              answers="all"))
write_dataset(ds, work / "data")
print("data:", {k: v for k, v in ds.stats.to_metadata().items() if k != "length_histogram"})
write_deepspeed_config(build_deepspeed_config("bf16"), work / "ds_zero3_bf16.json")
EOF
MODEL=$(cat "$WORK/model_path")

# -- runs -------------------------------------------------------------------------------------------------------------
run() {  # name, extra trainer args...
  local name=$1; shift
  rm -rf "$WORK/run-$name"
  "$PYTHON" -m garden_assets.training \
    --train-file "$WORK/data/train.jsonl" --test-file "$WORK/data/test.jsonl" --base-model "$MODEL" \
    --output-dir "$WORK/run-$name" --method full --device cuda --precision bf16 \
    --deepspeed "$WORK/ds_zero3_bf16.json" --batch-size "$BATCH" --max-length "$MAX_LENGTH" \
    --max-steps "$STEPS" --lr 2e-5 --save-steps 0 --eval-max-rows 64 "$@" 2>&1 | tee "$WORK/$name.log" | grep -E "^(trainer|data|step=|done)" || true
  test -f "$WORK/run-$name/metrics.json" || { echo "run $name failed, see $WORK/$name.log"; exit 1; }
}
run ours
if [ "${SKIP_DOLLY:-0}" != "1" ]; then run dolly --batching padded --loss full; fi

# -- figures ----------------------------------------------------------------------------------------------------------
"$PYTHON" - "$WORK" <<'EOF'
import json, os, subprocess, sys
from pathlib import Path
work = Path(sys.argv[1])
name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                      text=True).stdout.strip().splitlines()[0] if os.path.exists("/usr/bin/nvidia-smi") else ""
table = {"H100": 989, "H200": 989, "GH200": 989, "A100": 312, "L40S": 362, "L4": 121, "A10": 125, "4090": 165}
peak = float(os.environ.get("PEAK_TFLOPS") or next((v for k, v in table.items() if k in name), 0))
results = {}
for run in ("ours", "dolly"):
    path = work / f"run-{run}"
    if not (path / "metrics.json").exists():
        continue
    m = json.loads((path / "metrics.json").read_text())
    steps = [json.loads(l) for l in (path / "training_log.jsonl").read_text().splitlines()]
    steps = [s for s in steps if "step_time_s" in s][3:]  # steady state: skip warm-up steps
    tps = sum(s["step_tokens"] for s in steps) / sum(s["step_time_s"] for s in steps)
    flops = 6 * m["total_params"] * tps  # MFU convention: 6 N FLOPs per trained token
    mfu = flops / (peak * 1e12) if peak else float("nan")
    results[run] = (tps, mfu, m["eval_loss"])
    print(f"{run:6s} {name or 'GPU'}: {tps:,.0f} tokens/s (steady), MFU {mfu:.1%} (6N, peak {peak:.0f} TFLOPS bf16), "
          f"eval loss {m['eval_loss']:.4f}, {m['steps']} steps, peak mem see {path}")
if len(results) == 2:
    (a, _, la), (b, _, lb) = results["ours"], results["dolly"]
    print(f"speed-up ours/dolly: {a / b:.2f}x tokens/s; eval loss ratio {la / lb:.4f}")
EOF
