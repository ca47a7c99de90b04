"""glibc's allocator settings for streaming Parquet work, so that RSS does not grow with the data.

Arrow's buffers come from the C allocator (``garden_assets/__init__.py``). glibc serves a large allocation with
``mmap`` and, when it is freed, raises its mmap threshold to that size (up to 32 MB), so from then on buffers of a
few MB come from the heap, where they fragment: writing a 2 GB drop's ``raw_posts`` grew RSS by 18-47 MB, steadily,
with the threshold left dynamic, and by 14-16 MB with it pinned at 1 MB (four runs each of the streaming writer
alone; 6-13 % more time there, every large buffer being a fresh mapping; no slower through the assets). Pinned only while streaming: torch (embedding,
training, in the same process under ``make run``) allocates large tensors each step and is faster with them
reused from the heap. There is no call that hands the threshold back to glibc's dynamic rule, so afterwards it is
set to 32 MB, where that rule ends up once a large buffer has been freed. Not glibc (macOS, musl): nothing is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
STREAMING_MMAP_THRESHOLD = 1 << 20
AFTER_MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: the dynamic rule's ceiling

_lock = threading.Lock()
_depth = 0


def _glibc():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_"):  # the user chose: leave it
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
    except OSError:
        return None


_LIBC = _glibc()


@contextmanager
def streaming_allocations() -> Iterator[None]:
    """Large buffers mapped and unmapped (not kept in the heap) while the block runs; nests and is thread-safe."""
    global _depth
    if _LIBC is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _LIBC.mallopt(_M_MMAP_THRESHOLD, STREAMING_MMAP_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _LIBC.mallopt(_M_MMAP_THRESHOLD, AFTER_MMAP_THRESHOLD)
                _LIBC.malloc_trim(0)  # hand the heap's free pages back: the next asset starts from less
