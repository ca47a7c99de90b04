"""`garden` on bad arguments and paths: one `garden: …` line on stderr, exit 2, nothing overwritten, no model
loaded (issue 15, items 4 and 7)."""

import shutil
import subprocess

import polars as pl
import pytest

from garden_assets.cli import main

from .conftest import SAMPLE_DROPS

DUMP = SAMPLE_DROPS / "sample-gardening" / "Posts.xml"


def fails(capsys, *argv) -> str:
    """Runs ``garden argv`` in process; asserts exit 2, no stdout, and one stderr line; returns that line."""
    try:
        rc = main(list(map(str, argv)))
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2 and not out, (argv, rc, out, err)
    assert err.startswith("garden: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_bad_arguments_and_paths_are_one_line_each(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GARDEN_LANCE_URI", raising=False)
    dump = tmp_path / "drop" / "Posts.xml"
    dump.parent.mkdir()
    shutil.copy(DUMP, dump)
    before = dump.read_bytes()
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    (tmp_path / "folder" / "Posts.xml").mkdir(parents=True)
    two = tmp_path / "two"
    two.mkdir()
    shutil.copy(DUMP, two / "Posts.xml")
    shutil.copy(SAMPLE_DROPS / "sample-update.7z", two / "update.7z")
    cases = {
        ("ingest", dump, "--out", dump): "is the input dump",
        ("ingest", dump.parent, "--out", dump): "is the input dump",
        ("ingest", dump, "--out", dump, "--force"): "is the input dump",
        ("ingest", dump, "--out", tmp_path / "missing" / "x.parquet"): "no such folder",
        ("ingest", dump, "--out", tmp_path): "is a folder",
        ("ingest", dump, "--out", notes): "not a Parquet file written by garden ingest",
        ("ingest", dump, "--workers", "-1"): "--workers: must be ≥ 1, not -1",
        ("ingest", dump, "--workers", "two"): "not a whole number",
        ("ingest", dump, "--max-body-chars", "0"): "must be ≥ 1",
        ("ingest", tmp_path / "folder" / "Posts.xml"): "is a folder, not a Posts.xml file",
        ("ingest", tmp_path / "folder"): "folder holds neither Posts.xml nor a .7z",
        ("ingest", two): "2 candidate dumps (Posts.xml, update.7z)",
        ("ingest", tmp_path / "nothing.xml"): "no such file",
        ("eval-retrieval", tmp_path / "nothing.7z"): "no such file",
        ("eval-retrieval", dump, "--folds", "3"): "--folds needs --adapt",
        ("eval-retrieval", dump, "--adapt", "--folds", "1"): "folds must be 2..",
        ("eval-retrieval", dump, "--adapt", "--folds", "0"): "folds must be 2..",
        ("search", ""): "the question is empty",
        ("search", "   "): "the question is empty",
        ("search", "soil", "--k", "0"): "k must be 1..50, got 0",
        ("search", "soil", "--k", "51"): "k must be 1..50, got 51",
        ("search", "soil", "--mode", "bm25"): "invalid choice: 'bm25'",
        ("search", "soil"): "materialize the qa_index asset first",  # checked before any model is loaded
        (): "the following arguments are required: command",
    }
    for argv, expected in cases.items():
        assert expected in fails(capsys, *argv), argv
    assert dump.read_bytes() == before and notes.read_text() == "keep me"
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_out_replaces_only_its_own_outputs_unless_forced(tmp_path, capsys):
    out = tmp_path / "posts.parquet"
    assert main(["ingest", str(DUMP), "--out", str(out)]) == 0
    assert main(["ingest", str(DUMP), "--out", str(out), "--min-score", "5"]) == 0  # an earlier output: replaced
    figures = capsys.readouterr().out
    assert '"skipped_examples": ["' in figures and f"{DUMP}:839: PostTypeId 4" in figures
    other = tmp_path / "other.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(other)
    assert "not a Parquet file written by garden ingest" in fails(capsys, "ingest", DUMP, "--out", other)
    assert main(["ingest", str(DUMP), "--out", str(other), "--force"]) == 0
    assert "text" in pl.read_parquet(other).columns


def test_out_into_a_read_only_folder(tmp_path, capsys):
    disk = tmp_path / "ro"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        assert "cannot write in" in fails(capsys, "ingest", DUMP, "--out", disk / "posts.parquet")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_retrieval_flags_come_from_the_library_defaults():
    """--key offers every key an index can be built with, and every default is the library's (issue 14)."""
    from garden_assets.cli import build_parser
    from garden_assets.llm.rag import DEFAULT_RETRIEVAL
    from garden_assets.retrieval import DEFAULT_K, DEFAULT_KEY, DEFAULT_MODE, KEYS, MODES, SEARCH_K

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("search", "ask"):
        flags = {a.dest: a for a in sub[command]._actions}
        assert tuple(flags["key"].choices) == KEYS and flags["key"].default == DEFAULT_KEY
        assert tuple(flags["mode"].choices) == MODES and flags["mode"].default == DEFAULT_MODE
    assert {a.dest: a for a in sub["search"]._actions}["k"].default == SEARCH_K
    assert {a.dest: a for a in sub["ask"]._actions}["k"].default == DEFAULT_K == DEFAULT_RETRIEVAL.k
    assert set(KEYS) <= set({a.dest: a for a in sub["eval-retrieval"]._actions}["key"].choices)
