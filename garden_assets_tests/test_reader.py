import polars as pl
import pyarrow as pa
import pytest

from garden_assets.stackexchange.ingest import ingest, iter_clean
from garden_assets.stackexchange.reader import (
    DumpError, ReadStats, _read_range_fast, find_posts, iter_batches, plan_ranges, read_posts,
)

from .conftest import SAMPLE_DROPS, a, q, write_dump, xml_row


def test_reads_both_tag_formats_and_counts_skips(tmp_path):
    rows = [
        q(1, tags="|soil-ph|blueberries|", accepted=2),
        a(2, 1),
        q(3, tags="<tomatoes><blight>"),  # the old format
        xml_row(Id=4, PostTypeId=4, Body="<p>wiki</p>", OwnerUserId=-1),
        xml_row(Id=5, PostTypeId=5, Body="<p>wiki</p>", OwnerUserId=-1),
        q(1000000001, title="Placeholder", owner=-1),
        a(1000000010, 1000000001, owner=-1),
    ]
    path = write_dump(tmp_path / "d" / "Posts.xml", rows)
    stats = ReadStats()
    df = read_posts(path.parent, stats=stats)
    assert df["id"].to_list() == [1, 2, 3]
    assert df["drop"].unique().to_list() == ["d"]
    assert df["tags"].to_list() == [["soil-ph", "blueberries"], [], ["tomatoes", "blight"]]
    assert (stats.questions, stats.answers) == (2, 1)
    assert stats.skipped == {"PostTypeId 4": 1, "PostTypeId 5": 1, "fake post": 2}
    assert df.filter(df["id"] == 1)["accepted_answer_id"].item() == 2


def test_7z_is_streamed_and_matches_plain(tmp_path):
    py7zr = pytest.importorskip("py7zr")
    rows = [q(i, title=f"Question {i}") if i % 3 == 0 else a(i, i - i % 3) for i in range(3, 3000)]
    plain = write_dump(tmp_path / "Posts.xml", rows)
    archive = tmp_path / "site.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.write(plain, arcname="Posts.xml")
        z.writestr(b"<users/>", "Users.xml")
    assert find_posts(archive) == (archive, "Posts.xml")
    from_7z = read_posts(archive)
    assert from_7z.drop("drop").equals(read_posts(plain).drop("drop"))
    assert from_7z.height == 2997


@pytest.mark.parametrize(
    "content, expect",
    [
        ('<?xml version="1.0"?>\n<posts>\n  <row Id="1" PostTypeId="1" Score="1">\n</posts>\n', r"Posts.xml:4: malformed XML: Opening and ending tag mismatch: row line 3"),
        ('<?xml version="1.0"?>\n<posts>\n  <row Id="1" PostTypeId="1" Score="1" />\n  <row Id="2" PostTy', r"Posts.xml:4: malformed XML"),
        ('<?xml version="1.0"?>\n<posts>\n  <row Id="1" PostTypeId="1" Score="1" />\n', r"Posts.xml:4: malformed XML \(file cut short"),
        ("", "empty file"),
        ('<?xml version="1.0"?>\n<users>\n</users>\n', "expected <posts>"),
    ],
    ids=["mismatched-tag", "cut-mid-row", "no-closing-tag", "empty", "wrong-root"],
)
def test_malformed_files_name_file_and_line(tmp_path, content, expect):
    path = tmp_path / "Posts.xml"
    path.write_text(content)
    with pytest.raises(DumpError, match=expect):
        read_posts(path)


def test_non_utf8_file(tmp_path):
    path = tmp_path / "Posts.xml"
    path.write_bytes(b'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n  <row Id="1" PostTypeId="1" Body="caf\xe9" />\n</posts>\n')
    with pytest.raises(DumpError, match=r"Posts.xml:3: malformed XML \(the file is not valid UTF-8\)"):
        read_posts(path)


def test_7z_without_posts_and_corrupt_7z(tmp_path):
    py7zr = pytest.importorskip("py7zr")
    archive = tmp_path / "users-only.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.writestr(b"<users/>", "Users.xml")
    with pytest.raises(DumpError, match=r"users-only.7z: archive has no Posts.xml \(members: Users.xml\)"):
        read_posts(archive)
    corrupt = tmp_path / "corrupt.7z"
    corrupt.write_bytes(archive.read_bytes()[:40] + b"\x00garbage" * 10)
    with pytest.raises(DumpError, match="corrupt.7z"):
        read_posts(corrupt)
    folder = tmp_path / "empty-drop"
    folder.mkdir()
    with pytest.raises(DumpError, match="neither Posts.xml nor a .7z"):
        read_posts(folder)


def test_bad_rows_are_counted_skips_with_lines(tmp_path):
    rows = [
        q(1),
        xml_row(PostTypeId=1, Score=3, Body="<p>no id</p>"),
        xml_row(Id=7, Score=3, Body="<p>no type</p>"),
        q(8).replace('Score="6"', 'Score="lots"'),
        a(2, 1),
    ]
    path = write_dump(tmp_path / "Posts.xml", rows)
    stats = ReadStats()
    df = read_posts(path, stats=stats)
    assert df["id"].to_list() == [1, 2]
    assert stats.skipped["missing Id or PostTypeId"] == 2
    assert sum(n for r, n in stats.skipped.items() if r.startswith("bad value")) == 1
    assert any(e.endswith("Posts.xml:4: missing Id or PostTypeId") for e in stats.examples)
    assert any(":6: bad value" in e for e in stats.examples)


def test_parallel_ranges_match_sequential_and_keep_line_numbers(tmp_path):
    rows = [q(i, title=f"Q{i}", body="<p>" + "soil " * 40 + "</p>") if i % 2 else a(i, i - 1) for i in range(1, 4001)]
    path = write_dump(tmp_path / "Posts.xml", rows)
    ranges = plan_ranges(path, range_bytes=64 << 10)
    assert len(ranges) > 5 and ranges[0].first and ranges[-1].last
    assert sum(r.end - r.start for r in ranges) == path.stat().st_size
    sequential = pa.concat_tables(list(iter_clean(path, ReadStats(), workers=1)))
    parallel = pa.concat_tables(list(iter_clean(path, ReadStats(), workers=2, range_bytes=64 << 10)))
    assert parallel.equals(sequential)
    # A broken row deep in the file is reported at its true line by whichever worker reads it.
    broken = rows[:]
    broken[3500] = broken[3500].replace('Id="3501"', 'Id="3501" Id="3501"')  # duplicate attribute on line 3503
    write_dump(path, broken)
    with pytest.raises(DumpError, match=r"Posts.xml:3503: malformed XML: Attribute Id redefined"):
        list(iter_clean(path, ReadStats(), workers=2, range_bytes=64 << 10))


def test_ingest_writes_parquet_atomically(tmp_path):
    good = write_dump(tmp_path / "good" / "Posts.xml", [q(1, score=1), a(2, 1, score=9)])
    out = tmp_path / "posts.parquet"
    figures = ingest(good, out=out)
    assert (figures["rows"], figures["questions"], figures["answers"]) == (2, 1, 1)
    assert ingest(good, min_score=5)["rows"] == 1
    before = out.read_bytes()
    bad = write_dump(tmp_path / "bad" / "Posts.xml", [q(1), a(2, 1)], close=False)
    with pytest.raises(DumpError):
        ingest(bad, out=out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_batches_are_bounded(tmp_path):
    path = write_dump(tmp_path / "Posts.xml", [q(i) for i in range(1, 1001)])
    sizes = [b.height for b in iter_batches(path, batch_rows=300)]
    assert sizes == [300, 300, 300, 100]


# The polars fast path for plan_ranges ranges must read exactly what lxml reads, and leave anything outside its
# strict row grammar to lxml (same rows, same counts, same errors).
TRICKY_ROWS = [
    xml_row(Id=9001, PostTypeId=1, Score=2, Title='5 < 6 & "quoted" \'x\'', Body="<p>a &amp; b</p>\nline two\r\n",
            Tags="<a><b>", OwnerUserId=3),
    '  <row Id="9002" PostTypeId="1" Score="1" Title="&#65;&#x42;&#x1F600; &#xa;" Body="x&#10;y&#xD;&#x9;z" />',
    '  <row Body="&lt;p&gt;b&lt;/p&gt;" Score="2" PostTypeId="2" ParentId="9001" Id="9003"/>',
    "  <row />",
    '  <row Id="9004" PostTypeId="1" Title="ends with Id=" Body="x" />',
    '  <row Title=" Id=" Id="9005" PostTypeId="1" Body="" Tags="" CreationDate="2023-01-01T00:00:00" />',
    '  <row Id="9006" PostTypeId="1" Score="lots" Body="&amp;lt;p&amp;gt; &amp;#65;" />',
    '  <row Id="9007" PostTypeId="1" Body="tab\tinside" />',  # XML turns the tab into a space: lxml's job
    '\t<row Id="9008" PostTypeId="2" ParentId="9001" Body="café ☕ 𝄞" a-b.c="1" />   ',
]


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_fast_ranges_read_what_lxml_reads(tmp_path, crlf):
    rows = [q(i, body="<p>" + "soil " * 30 + "</p>") if i % 2 else a(i, i - 1) for i in range(1, 1201)]
    for k, row in enumerate(TRICKY_ROWS):
        rows.insert(100 + 97 * k, row)
    path = write_dump(tmp_path / "Posts.xml", rows)
    if crlf:
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    ranges = plan_ranges(path, range_bytes=16 << 10)
    assert len(ranges) > 10
    sequential, parallel = ReadStats(), ReadStats()
    expected = read_posts(path, stats=sequential)
    got = pl.concat([b for r in ranges for b in iter_batches(path, stats=parallel, byte_range=r)])
    assert got.equals(expected)
    assert (parallel.rows, parallel.skipped, parallel.examples) == (sequential.rows, sequential.skipped, sequential.examples)
    # and the plain ranges really took the fast path
    fast = [_read_range_fast(path, r, ReadStats(), str(path), "d", 2000) is not None for r in ranges]
    assert sum(fast) >= len(ranges) - len(TRICKY_ROWS)


@pytest.mark.parametrize(
    "bad, expect",
    [
        ('  <row Id="7" PostTypeId="1" Body="a & b" />', "malformed XML"),
        ('  <row Id="7" PostTypeId="1" Body="a&#0;b" />', "malformed XML"),
        ('  <row Id="7" PostTypeId="1" Body="a<b" />', "malformed XML"),
        ('  <row Id="7" PostTypeId="1"Score="1" />', "malformed XML"),
        ('  <row Id="7" PostTypeId="1" ViewCount="1" ViewCount="2" />', "Attribute ViewCount redefined"),
        ('  <row Id="7" PostTypeId="1" Body="cut', "1504: malformed XML.*Unescaped '<'"),  # seen on the next line
        ("</posts>", "1504: malformed XML: Extra content"),
    ],
    ids=["bare-amp", "bad-char-ref", "lt-in-value", "no-space", "dup-attr", "cut-row", "early-close"],
)
def test_bad_row_inside_a_range_is_reported_by_lxml(tmp_path, bad, expect):
    rows = [q(i) if i % 2 else a(i, i - 1) for i in range(1, 2001)]
    rows[1500] = bad  # line 1503
    path = write_dump(tmp_path / "Posts.xml", rows)
    expect = expect if expect.startswith("1504") else f"1503: .*{expect}"
    with pytest.raises(DumpError, match=rf"Posts.xml:{expect}"):
        list(iter_clean(path, ReadStats(), workers=2, range_bytes=16 << 10))


def test_non_utf8_inside_a_range(tmp_path):
    rows = [q(i) if i % 2 else a(i, i - 1) for i in range(1, 2001)]
    path = write_dump(tmp_path / "Posts.xml", rows)
    path.write_bytes(path.read_bytes().replace(b'Id="1501"', b'Id="1501" Title="caf\xe9"'))
    with pytest.raises(DumpError, match=r"Posts.xml:1503: malformed XML \(the file is not valid UTF-8\)"):
        list(iter_clean(path, ReadStats(), workers=2, range_bytes=16 << 10))


def test_rows_over_several_lines_are_read_in_one_stream(tmp_path):
    rows = [(q(i) if i % 2 else a(i, i - 1)).replace(' PostTypeId="', '\n    PostTypeId="') for i in range(1, 2001)]
    path = write_dump(tmp_path / "Posts.xml", rows)
    assert plan_ranges(path, range_bytes=16 << 10) is None
    sequential = pa.concat_tables(list(iter_clean(path, ReadStats(), workers=1)))
    parallel = pa.concat_tables(list(iter_clean(path, ReadStats(), workers=2, range_bytes=16 << 10)))
    assert parallel.equals(sequential) and parallel.num_rows == 2000


def test_small_batches_read_the_same_rows():
    """Batch boundaries that land on rows detached by an earlier clear() (events still queued) read on."""
    from garden_assets.stackexchange.reader import iter_batches, read_posts

    for dump in (SAMPLE_DROPS / "sample-gardening" / "Posts.xml", SAMPLE_DROPS / "sample-update.7z"):
        small = pl.concat(list(iter_batches(dump, batch_rows=7)))
        assert small.equals(read_posts(dump))
