"""Ingest throughput and memory: ``garden ingest`` against the plain recipe, same files, same run.

    python benchmarks/ingest.py [--sizes 100 400] [--src COFFEE_POSTS_XML]

Builds Posts.xml files of the given sizes (MB) by repeating the shared coffee dump's rows with fresh ids, then
runs, each in its own process so peak RSS is its own: the plain recipe (lxml ``iterparse`` + ``lxml.html``
``text_content``, one process) and ``garden ingest`` (with and without ``--out``). Prints a table and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
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


def run(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    shared = os.environ.get("GARDEN_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/stackexchange"))
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=float, nargs="+", default=[100, 400])
    ap.add_argument("--src", default=f"{shared}/coffee/Posts.xml")
    args = ap.parse_args()
    garden = [sys.executable, "-m", "garden_assets.cli", "ingest"]
    print(f"{'input':>8} {'what':<22} {'MB/s':>7} {'peak RSS MB':>12} {'rows':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            dump = build(Path(args.src), Path(tmp) / f"Posts-{size:.0f}.xml", size)
            mb = dump.stat().st_size / 1e6
            plain = run([sys.executable, "-c", PLAIN, str(dump)])
            ours = run([*garden, str(dump)])
            ours_out = run([*garden, str(dump), "--out", str(Path(tmp) / "out.parquet")])
            for name, r in (("plain recipe", plain), ("garden ingest", ours), ("garden ingest --out", ours_out)):
                print(f"{mb:>7.0f}M {name:<22} {r['mb_per_s']:>7.1f} {r['peak_rss_mb']:>12.0f} {r['rows']:>8}")
            print(f"{'':>8} ratio (garden ingest / plain): {ours['mb_per_s'] / plain['mb_per_s']:.2f}x"
                  f" (with --out: {ours_out['mb_per_s'] / plain['mb_per_s']:.2f}x)")
            dump.unlink()


if __name__ == "__main__":
    main()
