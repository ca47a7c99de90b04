"""One pass: dump → cleaned posts (optionally Parquet), with throughput and memory figures.

A plain ``Posts.xml`` is split into line-aligned byte ranges (``plan_ranges``) that threads read and clean in
parallel, results kept in file order; a ``.7z`` (no random access) or a file that is not one row per line is
streamed by one thread. Either way memory stays bounded by a few ranges, not the file.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .reader import (BATCH_ROWS, ByteRange, ReadStats, drop_name, find_posts, first_range, iter_batches, plain_prolog,
                     plan_ranges)
from .text import clean_posts

# A range per thread: 6 MB keeps peak RSS near 260 MB with two threads and three ranges in flight (8 MB: ~300 MB,
# 4 MB: ~8% slower from more, smaller polars calls).
RANGE_BYTES = 6 << 20
RANGE_BATCH_ROWS = 1 << 14  # a range is cleaned in one batch
OUTPUT_MARK = (b"written_by", b"garden ingest")  # Parquet schema metadata of our outputs (see is_ingest_output)
SKIP_EXAMPLES = 5  # "file:line: reason" of the first skipped rows, in the figures


def _clean_batches(dump, drop, stats, byte_range, min_score, max_body_chars) -> Iterator[pa.Table]:
    # A range is cleaned in one batch (fewer, larger polars calls); a whole stream keeps small batches.
    batch_rows = RANGE_BATCH_ROWS if byte_range is not None else BATCH_ROWS
    for batch in iter_batches(dump, drop=drop, stats=stats, byte_range=byte_range, batch_rows=batch_rows):
        clean, _ = clean_posts(batch, min_score=min_score, max_body_chars=max_body_chars)
        yield clean.to_arrow()


def _work(args):
    """Read and clean one byte range (in a pool thread); returns its tables and read counts."""
    stats = ReadStats()
    return list(_clean_batches(args[0], args[1], stats, *args[2:])), stats


def iter_clean(
    dump: str | Path,
    stats: ReadStats,
    min_score: int | None = None,
    max_body_chars: int | None = None,
    workers: int | None = None,
    range_bytes: int = RANGE_BYTES,
) -> Iterator[pa.Table]:
    """Cleaned ``clean_posts`` tables in file order; read counts are merged into ``stats``.

    Ranges are read by ``workers`` threads. Threads, not processes: nearly all the work runs inside polars, which
    releases the GIL, so threads fill the cores without the quarter second a process needs to import polars and
    pyarrow, and without pickling results back. At most ``workers + 1`` ranges are in flight (memory stays flat).
    """
    file, member = find_posts(dump)
    drop = drop_name(dump)
    workers = workers or os.cpu_count() or 1
    if member or workers == 1 or file.stat().st_size <= range_bytes or not plain_prolog(file):
        yield from _clean_batches(dump, drop, stats, None, min_score, max_body_chars)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ingest")
    try:
        # The first range starts before the ranges are planned (a pass over the file).
        first = first_range(file, range_bytes)
        pending = deque([pool.submit(_work, (dump, drop, first, min_score, max_body_chars))])
        ranges: list[ByteRange] | None = plan_ranges(file, range_bytes)
        if not ranges or len(ranges) == 1 or ranges[0] != first:  # not one row per line after all
            pending.popleft().cancel()
            yield from _clean_batches(dump, drop, stats, None, min_score, max_body_chars)
            return
        jobs = [(dump, drop, r, min_score, max_body_chars) for r in ranges[1:]]
        for job in jobs[:workers]:
            pending.append(pool.submit(_work, job))
        nxt = workers
        while pending:
            tables, got = pending.popleft().result()  # a range's error is raised in file order
            if nxt < len(jobs):
                pending.append(pool.submit(_work, jobs[nxt]))
                nxt += 1
            stats.merge(got)
            yield from tables
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), OUTPUT_MARK[0]: OUTPUT_MARK[1]})
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
        "skipped_examples": stats.examples[:SKIP_EXAMPLES],
        "seconds": round(seconds, 3),
        "mb_per_s": round(file.stat().st_size / 1e6 / seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


def is_ingest_output(path: str | Path) -> bool:
    """Whether ``path`` is a Parquet file ``ingest`` wrote (safe to replace)."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return False
    return metadata.get(OUTPUT_MARK[0]) == OUTPUT_MARK[1]


def peak_rss_mb() -> float:
    """Peak resident memory of this process or any finished worker, whichever is larger (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024, 1)
