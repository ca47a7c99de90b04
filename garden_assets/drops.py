"""Find data drops in a folder and fingerprint their content (used by the sensor and ``make run``; no dagster)."""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import yaml

from .files import file_sha256
from .stackexchange.qa import LINK
from .stackexchange.reader import DumpError, find_posts

DEFAULT_SITE = "gardening.stackexchange.com"  # a drop that names no site (older homes were all gardening)
SITE_FILE = "site.yaml"  # `site: beer.stackexchange.com` in a drop folder, or in the drops folder for all of its drops
HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,}$")


@dataclasses.dataclass(frozen=True)
class Site:
    """The site a drop is a dump of: its host name (the first half of every post's identity) and where it came from."""

    name: str  # e.g. "coffee.stackexchange.com"
    source: str  # "site.yaml <path>", "drop name", or "default"

    def link(self, answer_id: int) -> str:
        return LINK.format(self.name, answer_id)


def _site_from_yaml(file: Path) -> str:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DumpError(f"{file}: not a readable site file ({e})") from None
    name = data.get("site") if isinstance(data, dict) else None
    if not isinstance(name, str) or not HOST.match(name.strip().lower()):
        raise DumpError(f"{file}: expected a line `site: <host name>` such as `site: beer.stackexchange.com`, got {data!r}")
    return name.strip().lower()


def site_of(entry: str | Path, folder: str | Path | None = None) -> Site:
    """The site of a drop entry: its own ``site.yaml`` (a folder drop), else a host name as its name
    (``beer.stackexchange.com.7z``, a folder ``coffee.stackexchange.com/``), else the drops folder's ``site.yaml``,
    else ``GARDEN_SITE`` / gardening."""
    entry = Path(entry)
    if entry.is_file() and entry.name.lower() == "posts.xml" and folder is not None and entry.parent != Path(folder):
        entry = entry.parent
    if entry.is_file() and entry.name.lower() == "posts.xml" and folder is None:
        entry = entry.parent  # a bare Posts.xml (garden eval-retrieval): its folder is the drop
    own = entry / SITE_FILE
    if entry.is_dir() and own.is_file():
        return Site(_site_from_yaml(own), f"{SITE_FILE} {own}")
    name = entry.name.lower().removesuffix(".7z")
    if HOST.match(name):
        return Site(name, "drop name")
    shared = Path(folder) / SITE_FILE if folder is not None else None
    if shared is not None and shared.is_file():
        return Site(_site_from_yaml(shared), f"{SITE_FILE} {shared}")
    env = os.environ.get("GARDEN_SITE", "").strip().lower()
    if env:
        if not HOST.match(env):
            raise DumpError(f"GARDEN_SITE={env!r} is not a host name such as beer.stackexchange.com")
        return Site(env, "GARDEN_SITE")
    return Site(DEFAULT_SITE, "default")


@dataclasses.dataclass(frozen=True)
class Drop:
    key: str  # the partition key: the entry's name in the drops folder
    path: Path  # the entry itself (a folder, a .7z or a Posts.xml)
    file: Path  # the file that holds the posts
    size: int
    mtime_ns: int
    site: str = DEFAULT_SITE


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
        try:
            site = site_of(entry, folder).name
        except DumpError as e:
            problems.append(str(e))
            continue
        drops.append(Drop(entry.name, entry, file, st.st_size, st.st_mtime_ns, site))
    return drops, problems


def run_key(drop: Drop, digest: str) -> str:
    """The run key of a drop's ingestion run: its name, content hash and site (the sensor and ``make run`` alike)."""
    return f"{drop.key}:{digest[:16]}:{drop.site}"


content_hash = file_sha256  # a drop file's sha256: the name defs/posts.py imports (one function, files.py)


def locate(folder: str | Path, key: str) -> Path:
    """The drop entry for a partition key; a clear error when it is gone."""
    path = Path(folder) / key
    if not path.exists():
        raise DumpError(f"{path}: drop '{key}' is no longer in the drops folder {folder}")
    return path
