"""Find data drops in a folder and fingerprint their content (used by the sensor and ``make run``; no dagster)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

from .stackexchange.reader import DumpError, find_posts


@dataclasses.dataclass(frozen=True)
class Drop:
    key: str  # the partition key: the entry's name in the drops folder
    path: Path  # the entry itself (a folder, a .7z or a Posts.xml)
    file: Path  # the file that holds the posts
    size: int
    mtime_ns: int


def scan_drops(folder: str | Path, settle_seconds: float = 0.0) -> tuple[list[Drop], list[str]]:
    """Drops in ``folder``: a sub-folder holding ``Posts.xml`` or a ``.7z``, a ``.7z`` file, or a ``Posts.xml``.

    Entries still being written (modified less than ``settle_seconds`` ago) and hidden or ``.tmp``/``.part``
    names are left for a later scan. Returns the drops and, for entries that are not drops, a reason each; a
    missing ``folder`` is a ``DumpError``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DumpError(f"{folder}: no such folder (GARDEN_DROPS names the folder that holds the drops)")
    drops, problems = [], []
    now = time.time()
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.suffix in (".tmp", ".part"):
            continue
        if entry.is_file() and entry.suffix.lower() != ".7z" and entry.name.lower() != "posts.xml":
            continue
        try:
            file, _member = find_posts(entry) if entry.is_dir() else (entry, None)
        except DumpError as e:
            problems.append(str(e))
            continue
        st = file.stat()
        if now - st.st_mtime < settle_seconds:
            continue
        drops.append(Drop(entry.name, entry, file, st.st_size, st.st_mtime_ns))
    return drops, problems


def content_hash(file: str | Path, block: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def locate(folder: str | Path, key: str) -> Path:
    """The drop entry for a partition key; a clear error when it is gone."""
    path = Path(folder) / key
    if not path.exists():
        raise DumpError(f"{path}: drop '{key}' is no longer in the drops folder {folder}")
    return path
