"""One pass: dump → cleaned posts (optionally Parquet), with throughput and memory figures.

A plain ``Posts.xml`` is split into line-aligned byte ranges (``plan_ranges``) that threads read and clean in
parallel, results kept in file order; a ``.7z`` (no random access) or a file that is not one row per line is
streamed by one thread. Either way memory stays bounded by a few ranges, not the file.
"""

from __future__ import annotations

import os
import resource
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from .reader import (BATCH_ROWS, ByteRange, ReadStats, drop_name, find_posts, first_range, iter_batches, plain_prolog,
                     plan_ranges)
from .malloc import streaming_allocations
from .text import HTML_TAG, clean_posts

# A range per thread: 6 MB keeps peak RSS near 260 MB with two threads and three ranges in flight (8 MB: ~300 MB,
# 4 MB: ~8% slower from more, smaller polars calls).
RANGE_BYTES = 6 << 20
RANGE_BATCH_ROWS = 1 << 14  # a range is cleaned in one batch
OUTPUT_MARK = (b"written_by", b"garden ingest")  # Parquet schema metadata of our outputs (see is_ingest_output)
SKIP_EXAMPLES = 5  # "file:line: reason" of the first skipped rows, in the figures


def _clean_batches(dump, drop, stats, byte_range, min_score, max_body_chars, raw=False) -> Iterator[pa.Table]:
    # A range is cleaned in one batch (fewer, larger polars calls); a whole stream keeps small batches.
    batch_rows = RANGE_BATCH_ROWS if byte_range is not None else BATCH_ROWS
    for batch in iter_batches(dump, drop=drop, stats=stats, byte_range=byte_range, batch_rows=batch_rows):
        if raw:
            yield batch.to_arrow()
            continue
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
    drop: str | None = None,
    raw: bool = False,
) -> Iterator[pa.Table]:
    """Cleaned ``clean_posts`` tables in file order (``raw``: the ``raw_posts`` rows, uncleaned); read counts are
    merged into ``stats``. ``drop``: the drop column's value (default: ``drop_name(dump)``).

    Ranges are read by ``workers`` threads. Threads, not processes: nearly all the work runs inside polars, which
    releases the GIL, so threads fill the cores without the quarter second a process needs to import polars and
    pyarrow, and without pickling results back. At most ``workers + 1`` ranges are in flight (memory stays flat).
    """
    file, member = find_posts(dump)
    drop = drop if drop is not None else drop_name(dump)
    workers = workers or os.cpu_count() or 1
    if member or workers == 1 or file.stat().st_size <= range_bytes or not plain_prolog(file):
        yield from _clean_batches(dump, drop, stats, None, min_score, max_body_chars, raw)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ingest")
    try:
        # The first range starts before the ranges are planned (a pass over the file).
        first = first_range(file, range_bytes)
        pending = deque([pool.submit(_work, (dump, drop, first, min_score, max_body_chars, raw))])
        ranges: list[ByteRange] | None = plan_ranges(file, range_bytes)
        if not ranges or len(ranges) == 1 or ranges[0] != first:  # not one row per line after all
            pending.popleft().cancel()
            yield from _clean_batches(dump, drop, stats, None, min_score, max_body_chars, raw)
            return
        jobs = [(dump, drop, r, min_score, max_body_chars, raw) for r in ranges[1:]]
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


def iter_raw(dump: str | Path, stats: ReadStats, drop: str | None = None, workers: int | None = None,
             range_bytes: int | None = None) -> Iterator[pa.Table]:
    """``raw_posts`` tables of a dump in file order, read by the same parallel fast path as ``garden ingest``."""
    return iter_clean(dump, stats, workers=workers, drop=drop, raw=True, range_bytes=range_bytes or RANGE_BYTES)


def clean_tables(
    tables: Iterable[pa.Table | pl.DataFrame],
    counts: Counter,
    min_score: int | None = None,
    max_body_chars: int | None = None,
    workers: int | None = None,
) -> Iterator[pa.Table]:
    """``clean_posts`` of a stream of ``raw_posts`` tables, in order, ``workers`` tables cleaned at once (threads:
    polars releases the GIL); the filter counts and ``rows_with_html`` (text still holding a tag) add to ``counts``.
    At most ``workers + 1`` tables are in flight."""
    workers = workers or os.cpu_count() or 1

    def work(table):
        df, c = clean_posts(table if isinstance(table, pl.DataFrame) else pl.from_arrow(table),
                            min_score=min_score, max_body_chars=max_body_chars)
        c["rows_with_html"] = int(df["text"].str.contains(HTML_TAG.pattern).sum())
        return df.to_arrow(), c

    with ThreadPoolExecutor(workers, thread_name_prefix="clean") as pool:
        pending: deque = deque()
        for table in tables:
            pending.append(pool.submit(work, table))
            while len(pending) > workers:
                out, c = pending.popleft().result()
                counts.update(c)
                yield out
        while pending:
            out, c = pending.popleft().result()
            counts.update(c)
            yield out


# Long, unique text: no dictionary pages (trying them costs time and falls back to plain pages anyway) and no
# min/max statistics: nothing filters on them, and the writer keeps every row group's metadata in memory until it
# closes (≈ 10× its serialized size), as does every reader of the file. raw_posts' footer: ≈ 15 kB per row group
# with them, 1.4 kB without (a 4 GB drop has ≈ 2 k row groups).
_LONG_TEXT = {"title", "body_html", "text"}


def write_tables(
    tables: Iterable[pa.Table],
    out: str | Path,
    schema: pa.Schema | None = None,
    constants: dict[str, str] | None = None,
    metadata: dict[bytes, bytes] | None = None,
) -> dict[str, int]:
    """Write ``tables`` one at a time (memory stays one table) to a zstd Parquet file at ``out``: under a temporary
    name, renamed when complete, so a failure never leaves a partial file (nor replaces an older one). ``schema``:
    written when no table comes (an empty file with the right columns). ``constants``: string columns added with one
    value each (``site``). Returns rows, questions and answers written. The tables are produced (read, cleaned,
    joined) as this consumes them, under ``streaming_allocations``."""
    with streaming_allocations():
        return _write_tables(tables, Path(out), schema, constants, metadata)


def _write_tables(tables, out: Path, schema, constants, metadata) -> dict[str, int]:
    tmp = Path(f"{out}.tmp-{os.getpid()}")
    n = {"rows": 0, "questions": 0, "answers": 0}
    writer = None
    try:
        for table in tables:
            for name, value in (constants or {}).items():
                table = table.append_column(name, pa.array([value] * table.num_rows, pa.string()))
            if metadata:
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
            _add_counts(n, table)
            if writer is None:
                writer = _writer(tmp, table.schema)
            writer.write_table(table)
        if writer is None:
            if schema is None:
                return n
            for name in constants or {}:
                schema = schema.append(pa.field(name, pa.string()))
            writer = _writer(tmp, schema.with_metadata({**(schema.metadata or {}), **(metadata or {})}))
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return n


def _writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    short = [f.name for f in schema if f.name not in _LONG_TEXT]
    return pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=short, write_statistics=short)


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
    tables = iter_clean(dump, stats, min_score, max_body_chars, workers)
    if out:
        n = write_tables(tables, out, metadata={OUTPUT_MARK[0]: OUTPUT_MARK[1]})
    else:
        n = _count(tables)
    rows, questions, answers = n["rows"], n["questions"], n["answers"]
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


def _count(tables: Iterable[pa.Table]) -> dict[str, int]:
    n = {"rows": 0, "questions": 0, "answers": 0}
    for table in tables:
        _add_counts(n, table)
    return n


def _add_counts(n: dict[str, int], table: pa.Table) -> None:
    n["rows"] += table.num_rows
    if "post_type" not in table.schema.names:  # not posts (qa_pairs)
        return
    post_type = table.column("post_type").to_numpy()
    n["questions"] += int((post_type == 1).sum())
    n["answers"] += int((post_type == 2).sum())


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
