"""HTML → readable text for Stack Exchange bodies, and the ``clean_posts`` filters.

Stack Exchange stores sanitized HTML from a small, known tag set, so a handful of regular expressions run
by polars (Rust, whole column at once) convert it faster than building an lxml tree per body (measured:
1.6× lxml ``text_content`` per batch, 5× the same rules in Python ``re``). Paragraphs stay paragraphs, list items become ``- item``
lines, ``<pre>`` blocks keep their line breaks and indentation, links keep their text, images their alt text.
"""

from __future__ import annotations

import html
import re

import polars as pl

HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")  # used by the "no HTML left" check

# (pattern, replacement) applied in order over the whole column. Dumps write lowercase tags, so no (?i).
# Whitespace is left alone, so <pre> blocks keep their layout.
_RULES = [
    (r"<li\b[^>]*>", "\n- "),
    (r"<br\s*/?>", "\n"),
    (r"</t[dh]>", " | "),
    (r'<img\b[^>]*?\balt="([^"]+)"[^>]*>', "[image: $1]"),
    (r"</?(?:p|div|h[1-6]|blockquote|ul|ol|table|tr|hr|pre)\b[^>]*>", "\n\n"),
    (r"<[^>]+>", ""),
    (r"[ \t]+\n", "\n"),
    (r"\n\n+- ", "\n- "),  # list items sit on consecutive lines
    (r"\n{3,}", "\n\n"),
]


def html_to_text_series(bodies: pl.Series) -> pl.Series:
    """Vectorized HTML → text on a polars string column (Rust regex; entities decoded only where present)."""
    expr = pl.col("b").fill_null("")
    for pattern, repl in _RULES:
        expr = expr.str.replace_all(pattern, repl)
    text = pl.DataFrame({"b": bodies}).select(expr.str.strip_chars()).to_series()
    # html.unescape knows all 2,231 HTML5 entities; only the few rows that still hold an '&' pay for it.
    idx = text.str.contains("&", literal=True).arg_true()
    if len(idx):
        text = text.scatter(idx, [html.unescape(v) for v in text.gather(idx).to_list()])
    return text


def html_to_text(body: str | None) -> str:
    """Convert one sanitized Stack Exchange HTML body into plain text."""
    return html_to_text_series(pl.Series([body], dtype=pl.String))[0] if body else ""


def has_html(text: str) -> bool:
    return bool(HTML_TAG.search(text))


def clean_posts(
    raw: pl.DataFrame, min_score: int | None = None, max_body_chars: int | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """``raw_posts`` → ``clean_posts``: ``body_html`` replaced by ``text``, then the optional filters.

    Returns the frame and counts: rows in, rows removed by each filter, rows out. No filter unless given.
    """
    df = raw.with_columns(html_to_text_series(raw["body_html"]).alias("text")).drop("body_html")
    counts = {"rows_in": raw.height}
    empty = pl.col("text").str.len_chars() == 0
    counts["removed_empty_text"] = df.filter(empty).height
    df = df.filter(~empty)
    if min_score is not None:
        low = pl.col("score") < min_score
        counts["removed_min_score"] = df.filter(low).height
        df = df.filter(~low)
    if max_body_chars is not None:
        long = pl.col("text").str.len_chars() > max_body_chars
        counts["removed_max_body_chars"] = df.filter(long).height
        df = df.filter(~long)
    counts["rows_out"] = df.height
    return df, counts
