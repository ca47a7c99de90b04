"""Small helpers that turn frames and counters into Dagster metadata."""


import dagster as dg
import polars as pl


def preview(df: pl.DataFrame, columns: list[str] | None = None, rows: int = 5) -> dg.MetadataValue:
    """A markdown table of the first rows (polars renders it; long strings cut at 60 characters)."""
    head = df.select(columns or df.columns).head(rows)
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        fmt_str_lengths=60,
        tbl_rows=rows,
        tbl_cols=-1,
        tbl_width_chars=65535,  # never wrap: a wrapped header is no longer a markdown table (the most u16 allows)
    ):
        return dg.MetadataValue.md(str(head))


def counts(**values: int) -> dict[str, dg.MetadataValue]:
    return {k: dg.MetadataValue.int(int(v)) for k, v in values.items()}
