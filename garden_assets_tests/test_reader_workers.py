"""Same acceptance at any size and worker count (issue 15, item 6): each bad or odd dump, big enough for the
parallel byte-range reader, gives the same figures or the same error with --workers 1 and the default."""

import json

import pytest

from garden_assets.cli import main
from garden_assets.stackexchange.ingest import RANGE_BYTES

from .conftest import a, q

HEAD = '\ufeff<?xml version="1.0" encoding="utf-8"?>\n'
BODY = "<p>" + "Mulch keeps the soil moist and cool. " * 25 + "</p>"


def rows(n: int) -> list[str]:
    out = []
    for i in range(1, n, 2):
        out += [q(i, body=BODY), a(i + 1, i, body=BODY)]
    return out


N = RANGE_BYTES // 1400 * 2  # two ranges or more (a row is ≈ 1.1 kB)
LATE = N - 5  # a row in the last range
ODD = {
    # a DOCTYPE whose entity is used only in the last range: only a whole-file reader knows it
    "doctype-entity": lambda r: HEAD + '<!DOCTYPE posts [<!ENTITY c "compost">]>\n<posts>\n'
    + "\n".join(r[:LATE] + [r[LATE].replace("Mulch", "&c;")] + r[LATE + 1:]) + "\n</posts>\n",
    "comment-in-prolog": lambda r: HEAD + "<!-- a dump -->\n<posts>\n" + "\n".join(r) + "\n</posts>\n",
    "root-attribute": lambda r: HEAD + '<posts site="gardening">\n' + "\n".join(r) + "\n</posts>\n",
    "namespace": lambda r: HEAD + '<posts xmlns="urn:x">\n' + "\n".join(r) + "\n</posts>\n",
    "cut-short": lambda r: HEAD + "<posts>\n" + "\n".join(r)[:-40],
    "late-bad-xml": lambda r: HEAD + "<posts>\n" + "\n".join(r[:LATE] + ['  <row Id="1" Body="a < b" />'] + r[LATE:])
    + "\n</posts>\n",
    "late-duplicate-attribute": lambda r: HEAD + "<posts>\n"
    + "\n".join(r[:LATE] + ['  <row Id="9" Id="9" PostTypeId="1" />'] + r[LATE:]) + "\n</posts>\n",
    "late-row-on-two-lines": lambda r: HEAD + "<posts>\n"
    + "\n".join(r[:LATE] + [r[LATE].replace(' Score=', '\n    Score=')] + r[LATE + 1:]) + "\n</posts>\n",
    "late-comment": lambda r: HEAD + "<posts>\n" + "\n".join(r[:LATE] + ["  <!-- note -->"] + r[LATE:]) + "\n</posts>\n",
    "late-bad-values": lambda r: HEAD + "<posts>\n"
    + "\n".join(r[:LATE] + ['  <row Id="x" PostTypeId="1" />', '  <row Id="7" PostTypeId="9" />'] + r[LATE:])
    + "\n</posts>\n",
    "crlf": lambda r: (HEAD + "<posts>\n" + "\n".join(r) + "\n</posts>\n").replace("\n", "\r\n"),
    "trailing-garbage": lambda r: HEAD + "<posts>\n" + "\n".join(r) + "\n</posts>\n<extra/>\n",
}


def outcome(capsys, path, *flags):
    rc = main(["ingest", str(path), *flags])
    out, err = capsys.readouterr()
    figures = json.loads(out) if rc == 0 else {}
    for timing in ("seconds", "mb_per_s", "peak_rss_mb"):
        figures.pop(timing, None)
    return rc, figures, err


@pytest.mark.parametrize("case", sorted(ODD) + ["late-non-utf8"])
def test_workers_1_and_default_agree(tmp_path, capsys, case):
    base = rows(N)
    path = tmp_path / case / "Posts.xml"
    path.parent.mkdir()
    if case == "late-non-utf8":
        text = (HEAD + "<posts>\n" + "\n".join(base) + "\n</posts>\n").encode()
        cut = text.index(b"Mulch", len(text) - 4000)
        path.write_bytes(text[:cut] + b"\xff" + text[cut + 1:])
    else:
        path.write_text(ODD[case](base), encoding="utf-8", newline="")
    assert path.stat().st_size > RANGE_BYTES * 1.2  # the default mode reads it in ranges
    one, default = outcome(capsys, path, "--workers", "1"), outcome(capsys, path)
    assert one == default, case
    if case in ("doctype-entity", "comment-in-prolog", "root-attribute", "late-row-on-two-lines", "late-comment",
                "late-bad-values", "crlf"):
        assert one[0] == 0 and one[1]["rows"] == N, one
    else:
        assert one[0] == 2 and one[2].startswith("garden: ") and f"{path}" in one[2], one
