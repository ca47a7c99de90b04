"""Build a large Posts.xml by repeating a real dump's rows with fresh ids (shared by the ingest benchmarks)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

_ID = re.compile(rb'\b(Id|ParentId|AcceptedAnswerId)="(\d+)"')


def build(src: Path, dst: Path, target_mb: float) -> Path:
    rows = [l for l in src.read_bytes().splitlines() if l.lstrip().startswith(b"<row ")]
    top = max(int(m.group(2)) for l in rows for m in _ID.finditer(l) if m.group(1) == b"Id") + 1
    with open(dst, "wb") as f:
        f.write(b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        copy = 0
        while f.tell() < target_mb * 1e6:
            for line in rows:
                f.write(_ID.sub(lambda m: m.group(1) + b'="' + str(int(m.group(2)) + copy * top).encode() + b'"', line) + b"\n")
            copy += 1
        f.write(b"</posts>\n")
    return dst


if __name__ == "__main__":
    build(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]))
