"""``garden``: the command line over the library (no Dagster needed)."""

from __future__ import annotations

import argparse
import json
import sys

from .stackexchange.reader import DumpError


def _ingest(args: argparse.Namespace) -> int:
    from .stackexchange.ingest import ingest

    figures = ingest(args.dump, out=args.out, min_score=args.min_score, max_body_chars=args.max_body_chars, workers=args.workers)
    print(json.dumps(figures))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="garden", description="garden_assets: your Q&A dump → a domain assistant")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="read and clean a Posts.xml / site .7z; print one JSON line of figures")
    p.add_argument("dump", help="a Posts.xml, a site .7z, or a folder holding one")
    p.add_argument("--out", help="write the cleaned posts to this Parquet file")
    p.add_argument("--min-score", type=int, default=None, help="drop posts scored below N (default: keep all)")
    p.add_argument("--max-body-chars", type=int, default=None, help="drop posts whose text is longer (default: keep all)")
    p.add_argument("--workers", type=int, default=None, help="processes for a plain Posts.xml (default: all cores)")
    p.set_defaults(func=_ingest)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DumpError as e:
        print(f"garden: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
