import polars as pl

from garden_assets.stackexchange.qa import QA_COLUMNS, build_pairs
from garden_assets.stackexchange.reader import read_posts
from garden_assets.stackexchange.text import clean_posts, has_html, html_to_text

from .conftest import a, q, write_dump


def test_html_to_text_keeps_structure():
    html = (
        "<p>Test &amp; adjust pH to 4.5&ndash;5.5 &deg;</p>\n\n<ul>\n<li>sulfur</li>\n<li>pine <a href='x'>bark</a></li>\n</ul>\n"
        "<pre><code>week 1: 10 g\n    week 2: 5 g &lt;- less\n</code></pre>\n<blockquote><p>quoted</p></blockquote>"
        '<p><img src="a.jpg" alt="yellow leaves"> and <strong>bold</strong><br>next line</p>'
    )
    text = html_to_text(html)
    assert text.splitlines() == [
        "Test & adjust pH to 4.5–5.5 °", "- sulfur", "- pine bark", "", "week 1: 10 g", "    week 2: 5 g <- less",
        "", "quoted", "", "[image: yellow leaves] and bold", "next line",
    ]
    assert not has_html(text)
    assert has_html("left <p>over</p>") and not has_html("pH < 5 and > 4")
    assert html_to_text("") == "" and html_to_text(None) == ""


def test_clean_posts_filters_and_counts(tmp_path):
    long_body = "<p>" + "mulch " * 300 + "</p>"
    path = write_dump(tmp_path / "Posts.xml", [q(1, score=9), a(2, 1, score=2), a(3, 1, score=8, body=long_body), a(4, 1, body="<p></p>")])
    raw = read_posts(path)
    clean, counts = clean_posts(raw, min_score=5, max_body_chars=1000)
    assert clean["id"].to_list() == [1]
    assert counts == {"rows_in": 4, "removed_empty_text": 1, "removed_min_score": 1, "removed_max_body_chars": 1, "rows_out": 1}
    assert "body_html" not in clean.columns and "text" in clean.columns
    unfiltered, counts = clean_posts(raw)
    assert unfiltered.height == 3 and "removed_min_score" not in counts


def test_clean_posts_converts_only_the_rows_the_score_filter_keeps(tmp_path, monkeypatch):
    """The HTML conversion (the costly part) runs after the score filter, on the rows it keeps; same rows out."""
    from garden_assets.stackexchange import text

    seen = []
    real = text.html_to_text_series
    monkeypatch.setattr(text, "html_to_text_series", lambda bodies: seen.append(len(bodies)) or real(bodies))
    path = write_dump(tmp_path / "Posts.xml", [q(1, score=9), a(2, 1, score=2), a(3, 1, score=1), a(4, 1, score=7)])
    clean, counts = text.clean_posts(read_posts(path), min_score=5)
    assert seen == [2] and clean["id"].to_list() == [1, 4] and counts["removed_min_score"] == 2


def test_pairs_newest_wins_orphans_and_accepted(tmp_path):
    d1 = write_dump(tmp_path / "d1" / "Posts.xml", [q(1, accepted=2, title="Old title"), a(2, 1), a(3, 1), a(9, 404)])
    d2 = write_dump(
        tmp_path / "d2" / "Posts.xml",
        [q(1, accepted=2, title="New title", last="2024-05-01T00:00:00.000"), a(3, 1, body="<p>edited</p>", last="2024-05-01T00:00:00.000"),
         a(2, 1, body="<p>stale copy</p>", last="2022-01-01T00:00:00.000")],
    )
    clean = pl.concat([clean_posts(read_posts(d))[0] for d in (d1, d2)])
    pairs, stats = build_pairs(clean, site="garden.example")
    assert pairs.columns == QA_COLUMNS
    assert pairs["answer_id"].to_list() == [2, 3]
    assert pairs["instruction"].to_list() == ["New title", "New title"]
    assert pairs["response"].to_list() == ["Plant cloves 5 cm deep, pointy end up.", "edited"]
    assert pairs["is_accepted"].to_list() == [True, False]
    assert pairs["source_url"][0] == "https://garden.example/a/2" and pairs["site"].unique().to_list() == ["garden.example"]
    assert stats["orphan_answers"] == 1 and stats["posts_superseded"] == 3
    assert pairs["content_hash"].n_unique() == 2
    # The hash follows content only.
    again, _ = build_pairs(clean, site="garden.example")
    assert again["content_hash"].to_list() == pairs["content_hash"].to_list()


def test_html_to_text_series_matches_reference_rules_and_unescape():
    # The fast path (bare-tag Aho-Corasick pass, gated regexes, blank stripping) must equal the plain rule list
    # followed by html.unescape, also on rows it hands back to the plain rules (a '<' inside a tag, '>' in alt).
    import html as html_mod

    from garden_assets.stackexchange.text import _RULES, html_to_text_series

    entities = ["&amp;", "&amp", "&amp;lt;", "&AMP", "&lt", "&gt;", "&quot", "&#39;", "&#39", "&#x27;", "&#X27", "&#0;", "&#128;",
                "&#1114112;", "&#xD800;", "&nbsp;", "&nbsp", "&notit;", "&ampx", "&&", "& ;", "&#;", "&unknown;", "&lt;p&gt;"]
    bodies = [f"<p>a{e}b <code>{e};</code></p>" for e in entities] + [
        "<ul>\n<li>x</li>\n<li class='y'>z<br/>w<br  /></li></ul>", "<pre class=\"p\"><code>  a \t \n\n\n\n    b  \n</code></pre>",
        '<table><tr><th>h</th><td>d</td></tr></table>', '<p><img src="a.png" alt="al &amp; t"><img src="b"></p>',
        "<li <p>x</p>", '<img alt="a><p>b"> <p>c</p>', "<p <b>y</b>", "<h2 id=t>T</h2><hr /><blockquote><p>q</p></blockquote>",
        "tail \t\n\n- item  \n \n- next", "<p>x</p>\n\n\n\n<p>- y</p>", None, "",
    ]
    series = pl.Series(bodies, dtype=pl.String)
    expected = series.fill_null("")
    for pattern, repl in _RULES:
        expected = expected.str.replace_all(pattern, repl)
    expected = [html_mod.unescape(v) for v in expected.str.strip_chars().to_list()]
    assert html_to_text_series(series).to_list() == expected
    assert html_to_text_series(series[::-1]).to_list() == expected[::-1]
