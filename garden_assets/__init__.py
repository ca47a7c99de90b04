"""garden_assets: a Dagster asset graph over Stack Exchange dumps."""

import os

# polars' allocator (jemalloc) hands freed pages back to the OS after 1 s instead of its default 10 s, so memory
# stays bounded by a second of allocations, not ten, whatever the drop's size. Not at once (0 ms): that costs an
# madvise per free — measured on a 400 MB drop, `garden ingest` 95 MB/s at 0 ms, 134 at 100 ms, 148-160 at 1 s, 147
# at the default (peak RSS 242 / 269 / 287-289 / 302 MB); raw_posts + clean_posts 7.0 s at 0 ms, 4.7 s at 1 s
# (323 / 352 MB). polars appends this to its own defaults (the later value wins); read when polars first allocates,
# so it must be set before polars is imported. A value already in the environment wins.
# Also one arena per usable core instead of jemalloc's four per CPU, and no per-thread caches (freed small blocks
# go back to their arena, not into each thread's cache): same speed, peak RSS of raw_posts + clean_posts 323 → 307 MB
# (100 MB drop), qa_pairs 360 → 328 MB (2026-12-07, `python benchmarks/ingest.py --json`, README). One arena in all
# measured 7 MB less again, but would make every polars thread of a many-core machine share one lock.
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
os.environ.setdefault("_RJEM_MALLOC_CONF", f"dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:{_CORES},tcache:false")

# Arrow's buffers (Parquet reading and writing) from the C allocator instead of Arrow's bundled jemalloc, which keeps
# freed memory cached: raw_posts + clean_posts of a 100 MB drop peaked at 287 MB with it, 325 MB without (mimalloc:
# 334 MB). Read when pyarrow is imported.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
