"""Writing files so that a reader never sees half of one, and hashing them (one definition of each).

`write_atomic` writes under a temporary name in the same folder and renames it over the target (a crash leaves
the old file or the new one, never a torn one); `publish_dir` swaps a finished directory into place the same way;
`file_sha256` streams a file through sha256. No dagster, no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any] | str | bytes) -> Path:
    """Write ``path`` through a temporary sibling and rename it into place.

    ``write``: the text or bytes to write, or a function that writes the temporary path it is given (a Parquet or
    other writer); the temporary file is removed if it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if isinstance(write, str):
            tmp.write_text(write, encoding="utf-8")
        elif isinstance(write, bytes):
            tmp.write_bytes(write)
        else:
            write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike[str], data: Any, *, indent: int | None = 2) -> Path:
    """``data`` as JSON (a trailing newline), written atomically."""
    return write_atomic(path, json.dumps(data, indent=indent) + "\n")


def publish_dir(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Swap the finished directory ``tmp`` into place at ``dest`` (the old one is removed only after the new one
    is there)."""
    tmp, dest = Path(tmp), Path(dest)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.rename(dest, old)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return dest


def file_sha256(*files: str | os.PathLike[str], block: int = 1 << 20) -> str:
    """sha256 (hex) of the bytes of ``files``, one after the other, streamed in blocks."""
    return update_sha256(hashlib.sha256(), *files, block=block).hexdigest()


def update_sha256(h: "hashlib._Hash", *files: str | os.PathLike[str], block: int = 1 << 20) -> "hashlib._Hash":
    """Feed the bytes of ``files`` into the hash ``h`` (returned), streamed in blocks."""
    for file in files:
        with open(file, "rb") as fh:
            while chunk := fh.read(block):
                h.update(chunk)
    return h
