"""The fast path's tokenizer: the strict per-line grammar of a standard dump's ``<row .../>`` lines, and polars
expressions that split such lines into raw attribute strings. Anything outside the grammar returns None and goes
to lxml, so what is accepted and every error message stay lxml's."""

from __future__ import annotations

import inspect
import re

import polars as pl
from lxml import etree

ATTRS = ["Id", "PostTypeId", "ParentId", "AcceptedAnswerId", "Score", "Title", "Body", "Tags", "CreationDate",
         "LastActivityDate", "OwnerUserId"]
_XML_CHAR = r'[^"<&\x00-\x1f\x{FFFE}\x{FFFF}]'  # XML Char minus '"', '<', '&' and the whitespace XML normalizes
_VALUE = rf'{_XML_CHAR}*(?:&(?:lt|gt|amp|quot|apos|#x[0-9A-Fa-f]+|#[0-9]+);{_XML_CHAR}*)*'
ROW_LINE = rf'^[ \t]*<row(?: [A-Za-z_][A-Za-z0-9_.-]*="{_VALUE}")* ?/>[ \t]*\r?$'  # \r: CRLF dumps
PROLOG = re.compile(r'\ufeff?(?:<\?xml version="1\.0"(?: encoding="(?i:utf-8)")?(?: standalone="(?:yes|no)")? ?\?>)?'
                     r'[ \t\r\n]*<posts>[ \t\r\n]*')
TRAILER = re.compile(r"[ \t\r\n]*</posts>[ \t\r\n]*")
BLANK = re.compile(r"[ \t\r\n]*")
# The entities decoded vectorized; any other character reference (&#NNN;, &#x2028; ...) sends its line to lxml,
# which also checks that it names a legal XML character.
_ENTITIES = {"&lt;": "<", "&gt;": ">", "&quot;": '"', "&apos;": "'", "&amp;": "&", "&#xA;": "\n", "&#xD;": "\r",
             "&#x9;": "\t"}
_OTHER_CHAR_REF = r"&#(?:[^x]|x[^AD9]|x[AD9][^;])"
# No list exploded here is empty, so either behaviour is right; recent polars warns unless it is named.
_EXPLODE_KW = {"empty_as_null": False} if "empty_as_null" in inspect.signature(pl.DataFrame.explode).parameters else {}


def tokenize_rows(rows: pl.Series, line: int) -> pl.DataFrame | None:
    """Row lines (all in the strict grammar) → raw attribute strings (``ATTRS`` + ``line``), or None if lxml must
    judge them (a duplicated attribute, an xmlns declaration, an illegal character reference)."""
    # In a line of the grammar '"' only opens or closes a value, so splitting on it alternates name / value pieces:
    # ['  <row Id=', '1', ' PostTypeId=', '2', ..., ' />']. Odd pieces are values; the piece before each is its name.
    parts = pl.DataFrame({"piece": rows.str.split('"')}).with_row_index("row")
    attrs = (
        parts.with_columns(j=pl.int_ranges(0, pl.col("piece").list.len(), dtype=pl.UInt32))
        .explode("piece", "j", **_EXPLODE_KW)
        .select("row", pl.col("piece").shift(1).alias("name"), pl.col("piece").alias("value"), "j")
        .filter(pl.col("j") % 2 == 1)
        .with_columns(pl.col("name").str.strip_chars_start(" \t").str.strip_prefix("<row ").str.strip_chars_end("="))
    )
    # A redefined attribute is an error lxml reports, an xmlns declaration changes the element's namespace: both go
    # to lxml. Pairs are compared by hash (a collision only sends a good range to lxml).
    pair = pl.col("name").hash(0) ^ pl.col("row").cast(pl.UInt64)
    if attrs.select(pair.n_unique()).item() != attrs.height or (attrs["name"] == "xmlns").any():
        return None
    raw = pl.DataFrame({"row": pl.int_range(0, len(rows), dtype=pl.UInt32, eager=True)}).join(
        attrs.filter(pl.col("name").is_in(ATTRS)).pivot(on="name", index="row", values="value"),
        on="row", how="left", maintain_order="left",
    )
    raw = raw.with_columns(*(pl.lit(None, pl.String).alias(a) for a in ATTRS if a not in raw.columns))
    with_entities = raw.select(pl.col(ATTRS).str.contains("&", literal=True).any()).row(0)
    raw = raw.select(
        *(pl.col(a).str.replace_many(list(_ENTITIES), list(_ENTITIES.values())) if amp else pl.col(a)
          for a, amp in zip(ATTRS, with_entities)),
        (pl.col("row").cast(pl.Int64) + line).alias("line"),
    )
    # Rare lines with other character references: lxml parses just those lines (and rejects illegal characters).
    special = rows.str.contains(_OTHER_CHAR_REF).arg_true()
    if not special.is_empty():
        try:
            parser = etree.XMLParser(huge_tree=True)
            fixed = [etree.fromstring(text, parser).attrib for text in rows.gather(special).to_list()]
        except etree.XMLSyntaxError:
            return None
        raw = raw.with_columns(raw[a].scatter(special, [el.get(a) for el in fixed]) for a in ATTRS)
    return raw
