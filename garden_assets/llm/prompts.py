"""The one prompt format: Dolly (databricks-dolly-15k / dolly-v2 training format), plus the RAG prompt.

The finetune dataset, the trainer and generation all build text here, so training and inference can never
drift apart. A training example is ``prompt + completion``; generation sends ``prompt`` and cuts the output at
``END_KEY`` with `extract_response`.
"""

from __future__ import annotations

import re
from typing import Iterable

INTRO = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)
INSTRUCTION_KEY = "### Instruction:"
INPUT_KEY = "Input:"
RESPONSE_KEY = "### Response:"
END_KEY = "### End"


def dolly_prompt(instruction: str, context: str | None = None) -> str:
    """Everything the model sees before it answers; ends with ``### Response:`` and a newline.

    The ``Input:`` block appears only when ``context`` has non-blank text.
    """
    instruction = (instruction or "").strip()
    if not instruction:
        raise ValueError("a Dolly prompt needs a non-empty instruction")
    parts = [INTRO, f"{INSTRUCTION_KEY}\n{instruction}"]
    context = (context or "").strip()
    if context:
        parts.append(f"{INPUT_KEY}\n{context}")
    parts.append(f"{RESPONSE_KEY}\n")
    return "\n\n".join(parts)


def dolly_completion(response: str) -> str:
    """What the model learns to write after the prompt: the answer, then ``### End``."""
    return f"{(response or '').strip()}\n\n{END_KEY}"


def dolly_text(instruction: str, context: str | None, response: str) -> str:
    """The full training text (``prompt + completion``), as the Dolly recipe trains on it."""
    return dolly_prompt(instruction, context) + dolly_completion(response)


def extract_response(generated: str) -> str:
    """The answer in generated text: after ``### Response:`` if it is there, cut at ``### End``, without a copied
    passage marker (and the context header before it) at its start."""
    text = generated
    if RESPONSE_KEY in text:
        text = text.split(RESPONSE_KEY, 1)[1]
    if END_KEY in text:
        text = text.split(END_KEY, 1)[0]
    return _ECHOED_SCAFFOLD.sub("", text.strip(), count=1).strip()


def passage_marker(n: int) -> str:
    """What opens the ``n``-th passage (1-based) in a RAG prompt: the number its source is cited by."""
    return f"[{n}] "


# A model trained to quote a passage sometimes copies the RAG scaffold before it (seen: "Know this context:\n[1] Ducks.
# …"): a short header line ending in "context:" and the passage's marker belong to the prompt, not to the answer.
# The marker with any number is built from passage_marker, so the two cannot drift apart.
_ANY_MARKER = re.escape(passage_marker(0)).replace("0", r"\d+")
_ECHOED_SCAFFOLD = re.compile(r"^(?:[^\n]{0,40}\bcontext:[ \t]*\n+)?" + _ANY_MARKER, re.IGNORECASE)


def rag_instruction(question: str, passages: Iterable[str]) -> str:
    """The talk's RAG instruction: "Knowing this context: … Answer the question: …", each passage opened by its
    number. The markers show where a passage ends (passages hold blank lines of their own), so a model trained to
    quote one passage can learn to stop at its end rather than run on into the next one."""
    question = (question or "").strip()
    if not question:
        raise ValueError("a RAG prompt needs a non-empty question")
    kept = [p.strip() for p in passages if p and p.strip()]
    context = "\n\n".join(passage_marker(i) + p for i, p in enumerate(kept, 1))
    if not context:
        return f"Answer the question: {question}"
    return f"Knowing this context:\n{context}\n\nAnswer the question: {question}"


def rag_prompt(question: str, passages: Iterable[str], question_context: str | None = None) -> str:
    """A Dolly prompt whose instruction is `rag_instruction`; ``question_context`` (the question body)
    goes into the ``Input:`` block, as in the fine-tuning data."""
    return dolly_prompt(rag_instruction(question, passages), question_context)
