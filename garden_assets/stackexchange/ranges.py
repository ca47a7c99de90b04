"""Line-aligned byte ranges of a plain ``Posts.xml`` in the standard layout (one ``<row .../>`` per line), planned
so that several workers can read one dump, each range parsing as a document of its own."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from .dumps import CHUNK
from .row_grammar import PROLOG


def range_chunks(path: Path, start: int, end: int, first: bool, last: bool) -> Iterator[bytes]:
    """One line-aligned byte range of a dump, wrapped so it parses as a document of its own."""
    if not first:
        yield b"<posts>"
    with open(path, "rb") as f:
        f.seek(start)
        left = end - start
        while left > 0 and (chunk := f.read(min(CHUNK, left))):
            left -= len(chunk)
            yield chunk
    if not last:
        yield b"</posts>"


@dataclasses.dataclass(frozen=True)
class ByteRange:
    start: int
    end: int
    first_line: int
    first: bool
    last: bool


def plan_ranges(path: str | Path, range_bytes: int = 8 << 20) -> list[ByteRange] | None:
    """Split a plain ``Posts.xml`` into line-aligned ranges that start at a ``<row`` line, for parallel reading.

    Dumps write one ``<row>`` per line; a file that does not (boundary lines that are not rows) returns None
    and is read sequentially instead.
    """
    path = Path(path)
    size = path.stat().st_size
    starts, lines = [0], [1]
    with open(path, "rb") as f:
        newlines = 0
        pos = range_bytes
        while pos < size:
            f.seek(starts[-1])
            newlines_here = f.read(pos - starts[-1]).count(b"\n")
            f.readline()
            line_start = f.tell()
            newlines_here += 1
            if line_start >= size:
                break
            if not f.read(64).lstrip().startswith(b"<row"):
                if f.tell() >= size:  # only the closing tag is left: it stays with the last range
                    break
                return None
            newlines += newlines_here
            starts.append(line_start)
            lines.append(newlines + 1)
            pos = line_start + range_bytes
    ends = starts[1:] + [size]
    n = len(starts)
    return [ByteRange(s, e, l, i == 0, i == n - 1) for i, (s, e, l) in enumerate(zip(starts, ends, lines))]


def plain_prolog(path: str | Path, head_bytes: int = 1 << 16) -> bool:
    """True when everything before the first row is what every range can do without: an XML declaration and a
    bare ``<posts>``. A DOCTYPE (entities used later in the file), comments, processing instructions or root
    attributes (namespaces) are seen only by a reader of the whole file, so such a file is read in one lxml pass."""
    with open(path, "rb") as f:
        head = f.read(head_bytes)
    end = head.find(b"<row")
    try:
        return end >= 0 and PROLOG.fullmatch(head[:end].decode("utf-8")) is not None
    except UnicodeDecodeError:
        return False


def first_range(path: str | Path, range_bytes: int = 8 << 20) -> ByteRange:
    """What ``plan_ranges`` will make the first range, found without reading the file through."""
    size = Path(path).stat().st_size
    if range_bytes >= size:
        return ByteRange(0, size, 1, True, True)
    with open(path, "rb") as f:
        f.seek(range_bytes)
        f.readline()
        end = f.tell()
    return ByteRange(0, end, 1, True, end >= size)
