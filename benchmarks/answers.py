"""The whole answer path on a real dump, from ingest to evaluation, through the project's own assets.

A throw-away GARDEN_HOME gets DUMP as its only drop; raw_posts → clean_posts → qa_pairs → qa_index →
finetune_dataset → tuned_model → evaluation_answers are materialized in-process exactly as `make run` does (the
run config below only relaxes the ingest filters so that a small dump still holds ≥ 40 held-out questions, and asks
the evaluation for every held-out question). Prints one line per variant — token F1, ROUGE-L, answers that ended
by themselves, repeated 4-grams, faithfulness, seconds — and the wall time of each stage.

    python benchmarks/answers.py ../shared/data/stackexchange/coffee/Posts.xml
    python benchmarks/answers.py DUMP --json            # + one JSON line per variant
    python benchmarks/answers.py DUMP --tune '{"max_train_seconds": 120}' --keep /tmp/home   # try a recipe
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from garden_assets.settings import Layout  # noqa: E402

# Relaxed for small dumps (the pipeline's defaults are min_score 5, max_body_chars 1000, a 20 % test cap): both
# shared dumps keep only 33–66 questions under the defaults, far from 40 held out.
RELAXED_CLEAN = {"min_score": 0, "max_body_chars": 2000}
TEST_FRACTION = 0.25
STAGES = ("ingest", "pairs+index", "base_model", "dataset", "training", "evaluation")
COLUMNS = ("variant", "questions", "token_f1", "rouge_l", "ended", "repeated_4grams", "faithfulness", "quoted",
           "declined", "seconds")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump", type=Path, help="a Posts.xml (or a folder / site .7z holding one)")
    parser.add_argument("--site", default=None, help="the dump's site, e.g. coffee.stackexchange.com (default: from the dump's folder name)")
    parser.add_argument("--base-model", default=None,
                        help="checkpoint dir (default: this checkout's converted Gemma in .garden/models if present, "
                             "else the packaged GGUF, converted once into the temporary home)")
    parser.add_argument("--tune", type=json.loads, default={}, help="tuned_model run config (JSON), e.g. a recipe")
    parser.add_argument("--dataset", type=json.loads, default={}, help="finetune_dataset run config (JSON)")
    parser.add_argument("--generation", type=json.loads, default={}, help="evaluation generation settings (JSON)")
    parser.add_argument("--variants", default=None, help="comma list (default: all five)")
    parser.add_argument("--evaluation", type=json.loads, default={},
                        help="more evaluation_answers run config (JSON), e.g. a generation_sweep")
    parser.add_argument("--keep", type=Path, default=None, help="use this folder as GARDEN_HOME and keep it")
    parser.add_argument("--start", choices=STAGES, default=STAGES[0],
                        help="skip the stages before this one (their outputs must be in --keep)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    dump = args.dump.resolve()
    if not dump.exists():
        parser.error(f"{dump} does not exist")
    work = args.keep or Path(tempfile.mkdtemp(prefix="garden-answers-"))
    home, drops = work / "home", work / "drops"
    name = (dump.parent.name if dump.is_file() else dump.name) or "dump"
    (drops / name).mkdir(parents=True, exist_ok=True)
    target = drops / name / (dump.name if dump.is_file() else "Posts.xml")
    if not target.exists():
        os.symlink(dump if dump.is_file() else dump / "Posts.xml", target)
    site = args.site or f"{name.replace('-meta', '.meta')}.stackexchange.com"
    (drops / name / "site.yaml").write_text(f"site: {site}\n")  # the drop names its site (links, identity)
    base = args.base_model or _local_gemma()
    try:
        figures = run(home, drops, name, site, base, args)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    for line in figures["table"]:
        print(json.dumps(line) if args.json else "  ".join(f"{k} {_fmt(v)}" for k, v in line.items()))
    print(f"# {figures['questions']} held-out questions; stages (s): {figures['stages']}; "
          f"wall {figures['wall_s']:.0f} s; filters relaxed: clean_posts {RELAXED_CLEAN}, test fraction {TEST_FRACTION}",
          file=sys.stderr)
    return 0


def _local_gemma() -> str | None:
    path = Layout(Path(__file__).resolve().parents[1] / ".garden").models / "gemma3-270m"
    return str(path) if (path / "config.json").is_file() else None


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def run(home: Path, drops: Path, name: str, site: str, base: str | None, args) -> dict:
    import dagster as dg
    import polars as pl

    from garden_assets.defs import evaluation, finetune, index, posts
    from garden_assets.defs.pipes import CompleteLineMessageReader
    from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths
    from garden_assets.llm.evaluation import summarize

    assets = [posts.raw_posts, posts.clean_posts, posts.qa_pairs, index.qa_index, finetune.base_model,
              finetune.finetune_dataset, finetune.tuned_model, finetune.tuned_model_gguf, evaluation.evaluation_answers]
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(posts.drops_partitions.name, [name])
    resources = {
        "paths": GardenPaths(home=str(home), drops=str(drops)),
        "io_manager": AtomicParquetIOManager(base_dir=str(Layout(home).storage)),
        "model": finetune.BaseModel(**({"spec": base} if base else {})),
        "pipes_subprocess_client": dg.PipesSubprocessClient(message_reader=CompleteLineMessageReader()),
    }
    evaluation_config = {"questions": 100_000, "generation": args.generation, **args.evaluation}
    if args.variants:
        evaluation_config["variants"] = args.variants.split(",")
    config = {"ops": {
        "clean_posts": {"config": RELAXED_CLEAN},
        "finetune_dataset": {"config": {"max_test_fraction": TEST_FRACTION, **args.dataset}},
        "tuned_model": {"config": args.tune},
        "evaluation_answers": {"config": evaluation_config},
    }}
    stages: dict[str, float] = {}
    began = time.perf_counter()
    selections = [(assets[:2], name), (assets[2:4], None), (assets[4:5], None), (assets[5:6], None),
                  (assets[6:8], None), (assets[8:9], None)]  # training: the checkpoint and its GGUF, as make run
    for label, (selection, partition) in list(zip(STAGES, selections))[STAGES.index(args.start):]:
        t0 = time.perf_counter()
        ops = {k: v for k, v in config["ops"].items() if k in {a.key.path[-1] for a in selection}}
        result = dg.materialize(assets, selection=selection, partition_key=partition, instance=instance,
                                resources=resources, run_config={"ops": ops}, raise_on_error=False)
        stages[label] = round(time.perf_counter() - t0, 1)
        if not result.success:
            failure = [e for e in result.all_events if e.is_step_failure]
            raise SystemExit(f"{label} failed: {failure[0].step_failure_data.error or failure[0].step_failure_data}"
                             if failure else f"{label} failed")
    rows = pl.read_parquet(Layout(home).storage / "evaluation_answers.parquet")
    table = [{**({} if r["sweep"] == "main" else {k: r[k] for k in ("sweep", "setting", "retrieval")}),
              **{k: r[k] for k in COLUMNS}} for r in summarize(rows).iter_rows(named=True)]
    return {"table": table, "questions": rows["question_id"].n_unique(), "stages": stages,
            "wall_s": time.perf_counter() - began}


if __name__ == "__main__":
    sys.exit(main())
