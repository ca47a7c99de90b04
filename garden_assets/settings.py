"""Where things live, from the environment (shared by the Dagster layer and the CLI; no dagster import)."""

import os
from pathlib import Path


def garden_home() -> Path:
    return Path(os.environ.get("GARDEN_HOME", ".garden")).absolute()


def drops_folder() -> Path:
    return Path(os.environ.get("GARDEN_DROPS", "data/drops")).absolute()


def lance_uri() -> str:
    """The LanceDB index: ``GARDEN_LANCE_URI`` (e.g. ``s3://bucket/garden``), else GARDEN_HOME/lancedb."""
    return os.environ.get("GARDEN_LANCE_URI") or str(garden_home() / "lancedb")
