"""The Dagster layer: thin asset, check, sensor and schedule modules over the library."""
