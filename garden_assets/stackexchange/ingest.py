"""One pass: dump → cleaned posts (optionally Parquet), with throughput and memory figures.

A plain ``Posts.xml`` is split into line-aligned byte ranges (``plan_ranges``) that worker processes read
and clean in parallel, results kept in file order; a ``.7z`` (no random access) or a file that is not one
row per line is streamed by one process. Either way memory stays bounded by a range, not the file.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .reader import ByteRange, ReadStats, drop_name, find_posts, iter_batches, plan_ranges
from .text import clean_posts


def _clean_batches(dump, drop, stats, byte_range, min_score, max_body_chars) -> Iterator[pa.Table]:
    for batch in iter_batches(dump, drop=drop, stats=stats, byte_range=byte_range):
        clean, _ = clean_posts(batch, min_score=min_score, max_body_chars=max_body_chars)
        yield clean.to_arrow()


def _work(args):
    """Read and clean one byte range in a worker process; returns its tables and read counts."""
    stats = ReadStats()
    return list(_clean_batches(args[0], args[1], stats, *args[2:])), stats


def iter_clean(
    dump: str | Path,
    stats: ReadStats,
    min_score: int | None = None,
    max_body_chars: int | None = None,
    workers: int | None = None,
    range_bytes: int = 8 << 20,
) -> Iterator[pa.Table]:
    """Cleaned ``clean_posts`` tables in file order; read counts are merged into ``stats``."""
    file, member = find_posts(dump)
    drop = drop_name(dump)
    workers = workers or os.cpu_count() or 1
    ranges: list[ByteRange] | None = None if member or workers == 1 else plan_ranges(file, range_bytes)
    if not ranges or len(ranges) == 1:
        yield from _clean_batches(dump, drop, stats, None, min_score, max_body_chars)
        return
    jobs = [(dump, drop, r, min_score, max_body_chars) for r in ranges]
    # forkserver, not fork: forking after polars' thread pool has run can deadlock the child; the server
    # imports this module once and forks clean workers from it.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    # One polars thread per worker: the workers already fill the cores; more threads only contend.
    saved = os.environ.get("POLARS_MAX_THREADS")
    os.environ["POLARS_MAX_THREADS"] = "1"
    try:
        pool = ctx.Pool(min(workers, len(ranges)))
    finally:
        if saved is None:
            os.environ.pop("POLARS_MAX_THREADS")
        else:
            os.environ["POLARS_MAX_THREADS"] = saved
    with pool:
        for tables, got in pool.imap(_work, jobs):  # imap keeps file order; at most a few ranges in flight
            stats.merge(got)
            yield from tables


def ingest(
    dump: str | Path,
    out: str | Path | None = None,
    min_score: int | None = None,
    max_body_chars: int | None = None,
    workers: int | None = None,
) -> dict:
    """Read, clean and (if ``out``) write a dump; return the figures ``garden ingest`` prints.

    The Parquet file is written to a temporary name and renamed, so a failed ingest never leaves a partial file.
    """
    started = time.perf_counter()
    file, _ = find_posts(dump)
    stats = ReadStats()
    rows = questions = answers = 0
    writer = None
    tmp = Path(f"{out}.tmp-{os.getpid()}") if out else None
    try:
        for table in iter_clean(dump, stats, min_score, max_body_chars, workers):
            post_type = table.column("post_type").to_numpy()
            rows += table.num_rows
            questions += int((post_type == 1).sum())
            answers += int((post_type == 2).sum())
            if tmp is not None:
                writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table)
        if writer is not None:
            writer.close()
            os.replace(tmp, out)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "questions": questions,
        "answers": answers,
        "skipped": stats.skipped_total,
        "skipped_by_reason": dict(stats.skipped),
        "seconds": round(seconds, 3),
        "mb_per_s": round(file.stat().st_size / 1e6 / seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process or any finished worker, whichever is larger (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)
