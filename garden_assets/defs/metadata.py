"""Small helpers that turn frames and counters into Dagster metadata."""


import dagster as dg
import polars as pl


def markdown_table(df: pl.DataFrame, str_lengths: int = 80) -> str:
    """The whole frame as a markdown table (polars renders it; strings cut at ``str_lengths`` characters)."""
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        fmt_str_lengths=str_lengths,
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_width_chars=65535,  # never wrap: a wrapped header is no longer a markdown table (the most u16 allows)
    ):
        return str(df)


def preview(df: pl.DataFrame, columns: list[str] | None = None, rows: int = 5) -> dg.MetadataValue:
    """A markdown table of the first rows (long strings cut at 60 characters)."""
    return dg.MetadataValue.md(markdown_table(df.select(columns or df.columns).head(rows), str_lengths=60))


def counts(**values: int) -> dict[str, dg.MetadataValue]:
    return {k: dg.MetadataValue.int(int(v)) for k, v in values.items()}
