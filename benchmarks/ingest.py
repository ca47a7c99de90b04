"""Ingest throughput and memory: the asset path, ``garden ingest`` and the plain recipe, same files, same run.

    python benchmarks/ingest.py [--sizes 100 400] [--big] [--json] [--src COFFEE_POSTS_XML]

Builds Posts.xml files of the given sizes (MB; ``--big`` adds 4000) under a temporary folder by repeating the shared
coffee dump's rows with fresh ids (deleted afterwards), then runs, each in its own process so peak RSS is its own:

- ``plain``: the plain recipe (lxml ``iterparse`` + ``lxml.html`` ``text_content``, one process);
- ``cli``: ``garden ingest --out`` (cleaned Parquet written; the table also shows it without ``--out``);
- ``asset``: ``raw_posts`` → ``clean_posts`` of one drop materialized in-process by ``dagster.materialize`` (the code
  the graph runs, default filters, both Parquet outputs written); the time is the whole ``materialize`` call;
- ``qa_pairs``: then ``clean_posts`` again without filters and ``qa_pairs`` over that drop in a fresh process: its
  ``mb`` is the clean_posts Parquet size, ``rss_over_start_mb`` what qa_pairs added to the process (imports, Dagster).

``--json``: one line per (path, size): ``path, mb, mb_per_s, peak_rss_mb, ratio_vs_plain`` (+ ``seconds``, ``rows``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bigdump import build  # noqa: E402

PLAIN = r"""
import json, resource, sys, time
import lxml.html
from lxml import etree
path = sys.argv[1]
t = time.perf_counter()
rows = 0
for _, el in etree.iterparse(path, tag="row"):
    body = el.get("Body")
    text = lxml.html.fromstring(body).text_content() if body else ""
    rows += 1
    el.clear()
    while el.getprevious() is not None:
        del el.getparent()[0]
s = time.perf_counter() - t
import os
print(json.dumps({"rows": rows, "seconds": s, "mb_per_s": os.path.getsize(path) / 1e6 / s,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

# argv: dump, work folder, step (ingest: raw_posts + clean_posts; unfiltered: clean_posts without filters; pairs)
ASSET = r"""
import json, resource, sys, time
from pathlib import Path
import dagster as dg
from garden_assets.defs import posts
from garden_assets.defs.resources import AtomicParquetIOManager, GardenPaths
dump, work, step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
drop = work / "drops" / "bench.stackexchange.com"
if step == "ingest":
    drop.mkdir(parents=True, exist_ok=True)
    (drop / "Posts.xml").unlink(missing_ok=True)
    (drop / "Posts.xml").symlink_to(dump)
instance = dg.DagsterInstance.ephemeral()
instance.add_dynamic_partitions("drops", [drop.name])
storage = work / "home" / "storage"
resources = {"paths": GardenPaths(home=str(work / "home"), drops=str(drop.parent)),
             "io_manager": AtomicParquetIOManager(base_dir=str(storage))}
assets = [posts.raw_posts, posts.clean_posts, posts.qa_pairs]
no_filter = {"ops": {"clean_posts": {"config": {"min_score": -10**9, "max_body_chars": 10**9}}}}
start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
if step == "pairs":
    result = dg.materialize(assets, selection=assets[2:], instance=instance, resources=resources)
else:
    result = dg.materialize(assets, selection=assets[:2] if step == "ingest" else assets[1:2], partition_key=drop.name,
                            instance=instance, resources=resources, run_config=None if step == "ingest" else no_filter)
s = time.perf_counter() - t
assert result.success
node = "qa_pairs" if step == "pairs" else "clean_posts"
meta = result.asset_materializations_for_node(node)[0].metadata
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"rows": meta["pairs" if step == "pairs" else "rows_out"].value, "seconds": s,
                  "mb_per_s": dump.stat().st_size / 1e6 / s, "peak_rss_mb": rss, "rss_over_start_mb": rss - start_rss,
                  "clean_parquet_mb": (storage / "clean_posts" / f"{drop.name}.parquet").stat().st_size / 1e6}))
"""


def run(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[:4])} ... failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    shared = os.environ.get("GARDEN_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/stackexchange"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=float, nargs="+", default=[100, 400])
    ap.add_argument("--big", action="store_true", help="also a 4 GB (4000 MB) dump (needs ~10 GB free under TMPDIR)")
    ap.add_argument("--json", action="store_true", help="one JSON line per (path, size)")
    ap.add_argument("--no-pairs", action="store_true", help="skip the qa_pairs memory step")
    ap.add_argument("--src", default=f"{shared}/coffee/Posts.xml")
    args = ap.parse_args()
    sizes = [*args.sizes, *([4000.0] if args.big else [])]
    garden = [sys.executable, "-m", "garden_assets.cli", "ingest"]
    if not args.json:
        print(f"{'input':>8} {'what':<26} {'MB/s':>7} {'peak RSS MB':>12} {'rows':>8} {'vs plain':>8}")
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:  # one size at a time on disk
            dump = build(Path(args.src), Path(tmp) / f"Posts-{size:.0f}.xml", size)
            mb = dump.stat().st_size / 1e6
            plain = run([sys.executable, "-c", PLAIN, str(dump)])
            cli_count = run([*garden, str(dump)])
            cli = run([*garden, str(dump), "--out", str(Path(tmp) / "out.parquet")])
            Path(tmp, "out.parquet").unlink(missing_ok=True)
            work = Path(tmp) / "asset"
            asset = run([sys.executable, "-c", ASSET, str(dump), str(work), "ingest"])
            results = [("plain", "plain recipe", plain), ("cli", "garden ingest --out", cli),
                       (None, "garden ingest (no --out)", cli_count), ("asset", "raw_posts + clean_posts", asset)]
            shutil.rmtree(work / "home" / "storage" / "clean_posts")
            if not args.no_pairs:
                run([sys.executable, "-c", ASSET, str(dump), str(work), "unfiltered"])
                pairs = run([sys.executable, "-c", ASSET, str(dump), str(work), "pairs"])
                pairs["mb"] = pairs["clean_parquet_mb"]
                results.append(("qa_pairs", "qa_pairs (unfiltered drop)", pairs))
            for path, name, r in results:
                ratio = r["mb_per_s"] / plain["mb_per_s"]
                if args.json and path:
                    line = {"path": path, "mb": round(r.get("mb", mb), 1), "mb_per_s": round(r["mb_per_s"], 1),
                            "peak_rss_mb": round(r["peak_rss_mb"]), "ratio_vs_plain": round(ratio, 2),
                            "seconds": round(r["seconds"], 2), "rows": r["rows"]}
                    if path == "qa_pairs":
                        line |= {"input_mb": round(mb), "rss_over_start_mb": round(r["rss_over_start_mb"])}
                        del line["ratio_vs_plain"], line["mb_per_s"]
                    print(json.dumps(line), flush=True)
                elif not args.json:
                    extra = (f"  (clean_posts Parquet {r['clean_parquet_mb']:.0f} MB, qa_pairs added "
                             f"{r['rss_over_start_mb']:.0f} MB RSS)") if path == "qa_pairs" else ""
                    print(f"{mb:>7.0f}M {name:<26} {r['mb_per_s']:>7.1f} {r['peak_rss_mb']:>12.0f} {r['rows']:>8} "
                          f"{ratio:>7.2f}x{extra}", flush=True)
            dump.unlink()


if __name__ == "__main__":
    main()
