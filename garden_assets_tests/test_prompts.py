"""The Dolly format and the RAG prompt."""

from __future__ import annotations

import pytest

from garden_assets.llm import prompts


def test_prompt_with_context():
    text = prompts.dolly_prompt("Why do my tomatoes split?", "They crack after rain.")
    assert text == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nWhy do my tomatoes split?"
        "\n\nInput:\nThey crack after rain."
        "\n\n### Response:\n"
    )


@pytest.mark.parametrize("context", [None, "", "   \n"])
def test_prompt_without_context(context):
    text = prompts.dolly_prompt("  Why do my tomatoes split? ", context)
    assert "Input:" not in text
    assert text.endswith("### Instruction:\nWhy do my tomatoes split?\n\n### Response:\n")


def test_completion_and_full_text():
    assert prompts.dolly_completion(" Water evenly.\n") == "Water evenly.\n\n### End"
    full = prompts.dolly_text("Q?", "ctx", "A.")
    assert full == prompts.dolly_prompt("Q?", "ctx") + "A.\n\n### End"


def test_empty_instruction():
    with pytest.raises(ValueError, match="instruction"):
        prompts.dolly_prompt("  ", "context")


def test_extract_response():
    prompt = prompts.dolly_prompt("Q?")
    assert prompts.extract_response(prompt + "Mulch it.\n\n### End\nBelow is junk") == "Mulch it."
    assert prompts.extract_response("Mulch it. ### End more") == "Mulch it."
    assert prompts.extract_response("no markers at all ") == "no markers at all"


def test_extract_response_drops_a_copied_rag_scaffold():
    prompt = prompts.rag_prompt("Slugs?", ["Ducks. Seriously."])
    assert prompts.extract_response(prompt + "Know this context:\n[1] Ducks. Seriously.\n\n### End") == "Ducks. Seriously."
    assert prompts.extract_response(prompt + "[2] Beer traps work.") == "Beer traps work."
    # Only a marker makes it scaffold: text of the answer's own is kept.
    assert prompts.extract_response("Mind the context:\nslugs hide by day.") == "Mind the context:\nslugs hide by day."
    assert prompts.extract_response("Use [1] part lime to [3] parts sand.") == "Use [1] part lime to [3] parts sand."


def test_rag_prompt():
    text = prompts.rag_prompt("How deep to plant garlic?", ["Plant cloves 5 cm deep.", " ", "Pointy end up."],
                              question_context="Zone 6, clay soil.")
    assert text.startswith(prompts.INTRO)
    assert (
        "### Instruction:\nKnowing this context:\n[1] Plant cloves 5 cm deep.\n\n[2] Pointy end up.\n\n"
        "Answer the question: How deep to plant garlic?\n\nInput:\nZone 6, clay soil.\n\n### Response:\n"
    ) in text
    assert prompts.rag_instruction("Q?", []) == "Answer the question: Q?"
    with pytest.raises(ValueError):
        prompts.rag_instruction("", ["x"])
