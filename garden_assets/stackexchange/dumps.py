"""Where a dump's bytes come from: a ``Posts.xml`` (plain, in a folder) or the member of a site ``.7z``, as a
stream of chunks (a ``.7z`` is decompressed by py7zr in a background thread into a bounded queue, so the archive is
never held in memory), and the file-like view of such a stream that lxml pulls from."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

CHUNK = 1 << 20


class DumpError(ValueError):
    """A dump that cannot be read; the message names the file (and line where there is one)."""


def find_posts(path: str | Path) -> tuple[Path, str | None]:
    """Resolve a drop (a ``Posts.xml``, a folder holding one or a ``.7z``, or a ``.7z``) to (file, 7z member)."""
    path = Path(path)
    if path.is_dir():
        if path.name.lower() == "posts.xml" and not (path / path.name).exists():
            raise DumpError(f"{path}: is a folder, not a Posts.xml file")
        candidates = sorted(p for p in [*path.glob("Posts.xml"), *path.glob("*.7z")] if p.is_file())
        if not candidates:
            raise DumpError(f"{path}: folder holds neither Posts.xml nor a .7z archive")
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise DumpError(f"{path}: folder holds {len(candidates)} candidate dumps ({names}): keep one per folder")
        path = candidates[0]
    if not path.exists():
        raise DumpError(f"{path}: no such file")
    if path.is_dir():
        raise DumpError(f"{path}: is a folder, not a dump file")
    if path.suffix.lower() == ".7z":
        return path, _posts_member(path)
    return path, None


def _posts_member(archive: Path) -> str:
    import py7zr

    try:
        with py7zr.SevenZipFile(archive, "r") as z:
            names = z.getnames()
    except (py7zr.exceptions.Bad7zFile, py7zr.exceptions.ArchiveError, EOFError, OSError) as e:
        raise DumpError(f"{archive}: not a readable 7z archive ({e})") from e
    posts = [n for n in names if Path(n).name.lower() == "posts.xml"]
    if not posts:
        raise DumpError(f"{archive}: archive has no Posts.xml (members: {', '.join(names[:10]) or 'none'})")
    return posts[0]


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def sevenzip_chunks(archive: Path, member: str) -> Iterator[bytes]:
    """Stream one member out of a .7z: py7zr writes into a bounded queue from a thread; we read from it."""
    import py7zr
    from py7zr.io import Py7zIO, WriterFactory

    q: queue.Queue = queue.Queue(maxsize=8)
    stop = threading.Event()
    done = object()

    class QueueIO(Py7zIO):
        def __init__(self) -> None:
            self.n = 0

        def write(self, s):
            if stop.is_set():
                raise InterruptedError("reader stopped")
            q.put(bytes(s))
            self.n += len(s)
            return len(s)

        def read(self, size=None):
            return b""

        def seek(self, offset, whence=0):
            return 0

        def flush(self):
            pass

        def size(self):
            return self.n

    class QueueFactory(WriterFactory):
        def create(self, filename):
            return QueueIO()

    def pump() -> None:
        try:
            with py7zr.SevenZipFile(archive, "r") as z:
                z.extract(targets=[member], factory=QueueFactory())
            q.put(done)
        except BaseException as e:  # handed to the consumer, which raises it with the file name
            q.put(e)

    t = threading.Thread(target=pump, daemon=True, name="7z-reader")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise DumpError(f"{archive}!{member}: cannot decompress ({item})") from item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # drain so the writer thread can finish
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


class ChunkStream:
    """A file-like ``read(n)`` over an iterator of byte chunks, so lxml's C-level ``iterparse`` can pull from it."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks = chunks
        self.buffer = b""
        self.pos = 0
        self.seen = 0
        self.eof = False

    def read(self, n: int = -1) -> bytes:
        while self.pos >= len(self.buffer):
            chunk = next(self.chunks, None)
            if chunk is None:
                self.eof = True
                return b""
            self.buffer, self.pos = chunk, 0
        end = len(self.buffer) if n < 0 else self.pos + n
        out = self.buffer[self.pos : end]
        self.pos += len(out)
        self.seen += len(out)
        return out


def drop_name(path: str | Path) -> str:
    """The drop a dump belongs to: its folder's name for a ``Posts.xml``, else the file or folder name."""
    path = Path(path)
    return path.parent.name if path.name.lower() == "posts.xml" else path.name
