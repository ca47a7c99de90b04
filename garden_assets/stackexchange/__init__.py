"""Stack Exchange dumps: streaming reader, HTML → text, Q/A join (pure Python + polars, no dagster)."""
