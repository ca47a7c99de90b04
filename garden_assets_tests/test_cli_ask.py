"""`garden ask` bad input: clear messages naming what to fix, before any model is loaded."""

import json

import pytest

from garden_assets.cli import main
from garden_assets.llm.rag import MIN_SIMILARITY, NOT_FOUND
from .tiny_models import tiny_random_model
from garden_assets.retrieval.store import open_store
from garden_assets.retrieval.testing import sample_pairs


def ask(*argv):
    """The one stderr line of a refused ``garden ask`` (exit 2)."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(["ask", *argv])
        except SystemExit as e:  # argparse's own refusals
            code = e.code
    assert code == 2, err.getvalue()
    return err.getvalue().strip()


def test_ask_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GARDEN_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GARDEN_LANCE_URI", raising=False)
    monkeypatch.delenv("GARDEN_BASE_MODEL", raising=False)
    assert ask("   ") == "garden: ask: the question is empty"
    assert "must be ≥ 1" in ask("Why?", "--max-context-tokens", "0")
    assert "top_p must be in (0, 1]" in ask("Why?", "--top-p", "1.5")
    assert "max_new_tokens must be 1..4096" in ask("Why?", "--max-new-tokens", "0")
    assert "materialize the tuned_model asset first" in ask("Why?")
    assert "materialize the base_model asset first" in ask("Why?", "--model", "base")
    tiny = tiny_random_model(tmp_path / "tiny", max_positions=128)
    monkeypatch.setenv("GARDEN_BASE_MODEL", str(tiny))
    assert "materialize the qa_index asset first" in ask("Why?", "--model", "base")
    open_store(tmp_path / "home" / "lancedb").upsert(sample_pairs())
    assert "context window (128)" in ask("soil " * 200, "--model", "base", "--no-rag", "--max-new-tokens", "8")
    # within the window: an answer (random weights, so any text) and the sources it used
    capsys.readouterr()
    assert main(["ask", "Can I compost citrus peels?", "--model", "base", "--k", "1", "--max-new-tokens", "4",
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [s["answer_id"] for s in answer["sources"]] == [51] and answer["rag"] and answer["new_tokens"] <= 4
    # --no-model: the anchor a user has without any model, the top hit as is (no model is loaded)
    monkeypatch.setenv("GARDEN_BASE_MODEL", str(tmp_path / "nowhere"))
    assert main(["ask", "Can I compost citrus peels?", "--no-model", "--json"]) == 0
    pasted = json.loads(capsys.readouterr().out)
    assert pasted["answer"] == sample_pairs().filter(answer_id=51)["response"].item()
    assert [s["answer_id"] for s in pasted["sources"]] == [51] and pasted["model"] is None and pasted["ended"]
    assert "cannot go with --no-rag" in ask("Why?", "--no-model", "--no-rag")
    # a question the index has nothing close to: withheld (real MiniLM similarities), unless the floor is off
    assert "expected a cosine similarity -1..1 or none" in ask("Why?", "--min-similarity", "2")
    off_topic = "How do I configure a Kubernetes ingress controller?"
    assert main(["ask", off_topic, "--no-model", "--json"]) == 0
    withheld = json.loads(capsys.readouterr().out)
    assert withheld["declined"] and withheld["answer"] == NOT_FOUND and withheld["sources"] == []
    assert main(["ask", off_topic, "--no-model", "--min-similarity", "none", "--json"]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert not forced["declined"] and len(forced["sources"]) == 1
    # withheld before any model is loaded
    import garden_assets.llm.backends as backends

    monkeypatch.setenv("GARDEN_BASE_MODEL", str(tiny))
    monkeypatch.setattr(backends, "load_generator", lambda *a, **kw: pytest.fail("a model was loaded"))
    assert main(["ask", off_topic, "--model", "base", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["declined"]
    # search still lists the nearest answers, each with its similarity and whether ask would use it
    assert main(["search", off_topic, "--k", "2"]) == 0
    listed = capsys.readouterr().out
    assert listed.count(f"< {MIN_SIMILARITY}: ask would not use it") == 2 and "similarity 0." in listed
    assert main(["search", "Can I compost citrus peels?", "--k", "1"]) == 0
    assert "ask would not use it" not in capsys.readouterr().out
