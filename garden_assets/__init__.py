"""garden_assets: a Dagster asset graph over Stack Exchange dumps."""

import os

# polars' allocator (jemalloc) hands freed pages back to the OS at once instead of after ~10 s: the streaming assets
# free a batch's memory before reading the next, so peak RSS stays a few batches whatever the drop's size (measured
# on qa_pairs' join over a 100 MB drop in 2 MB buckets: peak +110 MB without this, +67 MB with it). polars appends
# this to its own defaults (the later value wins); read when polars first allocates, so it must be set before polars
# is imported. A value already in the environment wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")

# Arrow's buffers (Parquet reading and writing) from the C allocator instead of Arrow's bundled jemalloc, which keeps
# freed memory cached: raw_posts + clean_posts of a 100 MB drop peaked at 287 MB with it, 325 MB without (mimalloc:
# 334 MB). Read when pyarrow is imported.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
