"""Where things live, from the environment (shared by the Dagster layer and the CLI; no dagster import)."""

import json
import os
from pathlib import Path


def garden_home() -> Path:
    return Path(os.environ.get("GARDEN_HOME", ".garden")).absolute()


def drops_folder() -> Path:
    return Path(os.environ.get("GARDEN_DROPS", "data/drops")).absolute()


def lance_uri() -> str:
    """The LanceDB index: ``GARDEN_LANCE_URI`` (e.g. ``s3://bucket/garden``), else GARDEN_HOME/lancedb."""
    return os.environ.get("GARDEN_LANCE_URI") or str(garden_home() / "lancedb")


def lance_storage_options() -> dict[str, str] | None:
    """Object-store options for the index URI, as JSON in ``GARDEN_LANCE_STORAGE_OPTIONS``
    (e.g. ``{"aws_endpoint": "http://127.0.0.1:9000", "allow_http": "true"}``); credentials may also come from
    the usual ``AWS_*`` variables, which LanceDB reads itself."""
    raw = os.environ.get("GARDEN_LANCE_STORAGE_OPTIONS")
    return json.loads(raw) if raw else None
