"""Generation backends side by side, on the path `garden ask` and `evaluation_answers` take: the held-out
questions of `make run`'s home, answered with RAG (`rag.Assistant`: retrieval, the fitted prompt, generation).

Rows, all in one process on the same prompts, greedy:
- ``transformers-fp32-plain``: one prompt per ``model.generate`` call (the plain recipe; the issue's 1.0× anchor);
- ``transformers-fp32`` / ``transformers-bf16``: our batched `Generator`;
- ``llama.cpp``: the GGUF of the same checkpoint (`tuned_model_gguf`), batched;
- ``ctranslate2-int8`` (when ctranslate2 is installed; not a project backend — measured to choose one).
Per row: tokens/s and answers/s of the whole set (the plain anchor: of its first ``--plain-questions``), ratio to
the anchor's tokens/s, exact-match share and ROUGE-L against the batched fp32 answers, token F1 / ROUGE-L
against the references; for what ``garden ask`` runs (llama.cpp, transformers bf16) also the p50 wall of one
96-token RAG answer with the model loaded (``ask_wall_s``) and of a whole ``garden ask`` process (``process_wall_s``).

    python benchmarks/generate.py                       # the tuned model of `make run`
    python benchmarks/generate.py --json --questions 16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from garden_assets.llm import backends, llamacpp  # noqa: E402
from garden_assets.llm.evaluation import load_test_questions, score  # noqa: E402
from garden_assets.llm.generate import GenerationSettings, GeneratedText, Generator  # noqa: E402
from garden_assets.llm.metrics import rouge_l  # noqa: E402
from garden_assets.llm.models import DEFAULT_BASE_MODEL, base_model_path, load_causal_lm, tuned_model_path  # noqa: E402
from garden_assets.llm.prompts import dolly_prompt, extract_response  # noqa: E402
from garden_assets.llm.rag import DEFAULT_RETRIEVAL, Assistant, Question  # noqa: E402
from garden_assets.retrieval.store import open_store  # noqa: E402
from garden_assets.settings import Layout, lance_storage_options, lance_uri  # noqa: E402

WINDOW = 2048  # garden ask's --max-context-tokens default


class PlainGenerate(Generator):
    """The plain recipe: one ``model.generate`` per prompt, stopping at EOS only, cut at ``### End`` afterwards."""

    backend = "transformers-fp32-plain"

    def generate(self, prompts, settings=None):
        import torch

        settings = settings or GenerationSettings()
        out = []
        for ids in self.encode(prompts, settings):
            began = time.perf_counter()
            with torch.inference_mode():
                row = self.model.generate(torch.tensor([ids]), max_new_tokens=settings.max_new_tokens, do_sample=False)
            new = row[0, len(ids):]
            s = time.perf_counter() - began
            out.append([GeneratedText(extract_response(self.tokenizer.decode(new, skip_special_tokens=True)), len(ids),
                                   len(new), s, len(new) / s, len(new) < settings.max_new_tokens)])
        return out


class CTranslate2Int8(Generator):
    """CTranslate2 int8 (converted from the checkpoint in a temp dir), batched, greedy; EOS or ``### End`` stop."""

    backend = "ctranslate2-int8"

    def __init__(self, path: Path, tokenizer, tmp: Path, batch_size: int) -> None:
        import ctranslate2
        from ctranslate2.converters import TransformersConverter

        began = time.perf_counter()
        out = TransformersConverter(str(path)).convert(str(tmp / "ct2"), quantization="int8")
        self.convert_s = round(time.perf_counter() - began, 1)
        self.model = ctranslate2.Generator(out, device="cpu", inter_threads=1, intra_threads=os.cpu_count() or 2)
        self.tokenizer, self.batch_size, self.context_window = tokenizer, batch_size, WINDOW

    def generate(self, prompts, settings=None):
        settings = settings or GenerationSettings()
        encoded = self.encode(prompts, settings)
        out = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start:start + self.batch_size]
            began = time.perf_counter()
            res = self.model.generate_batch([self.tokenizer.convert_ids_to_tokens(ids) for ids in chunk],
                                            max_length=settings.max_new_tokens, sampling_topk=1,
                                            include_prompt_in_result=False, end_token=["<eos>", "<end_of_turn>"])
            s = time.perf_counter() - began
            rate = sum(len(r.sequences_ids[0]) for r in res) / s
            for ids, r in zip(chunk, res):
                new = r.sequences_ids[0]
                out.append([GeneratedText(extract_response(self.tokenizer.decode(new, skip_special_tokens=True)),
                                       len(ids), len(new), s, rate, len(new) < settings.max_new_tokens)])
        return out


def run(generator, store, questions, settings) -> tuple[list, float]:
    assistant = Assistant(generator, store, k=DEFAULT_RETRIEVAL.k, mode=DEFAULT_RETRIEVAL.mode)
    asked = [Question(q.instruction, q.context) for q in questions]
    assistant.ask(asked[:1], GenerationSettings(max_new_tokens=2), exclude_question_ids=[questions[0].question_id])
    began = time.perf_counter()
    answers = assistant.ask(asked, settings, exclude_question_ids=[q.question_id for q in questions])
    return answers, time.perf_counter() - began


def ask_wall(generator, store, questions, n: int = 3) -> float:
    """p50 wall of one RAG answer of up to 96 new tokens (retrieval + generation), the model loaded."""
    assistant = Assistant(generator, store)
    walls = []
    for q in questions[:n]:
        began = time.perf_counter()
        assistant.ask([Question(q.instruction, q.context)], GenerationSettings(max_new_tokens=96),
                      exclude_question_ids=[q.question_id])
        walls.append(time.perf_counter() - began)
    return round(statistics.median(walls), 2)


def process_wall(backend: str, question: str, n: int = 2) -> float:
    """p50 wall of a whole ``garden ask`` process (start, imports, model load, retrieval, answer)."""
    walls = []
    for _ in range(n):
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "garden_assets.cli", "ask", question, "--backend", backend,
                               "--max-new-tokens", "96"], capture_output=True, text=True)
        walls.append(time.perf_counter() - began)
        if proc.returncode != 0:
            raise RuntimeError(f"garden ask --backend {backend} failed: {proc.stderr[-500:]}")
    return round(statistics.median(walls), 2)


def short_prompt_rates(path: Path, n: int = 64) -> list[dict]:
    """The issue's own measurement, on the packaged base model (it does not stop early): one short prompt, batch 1,
    ``n`` new tokens, greedy — decode speed without the cost of reading a long RAG prompt."""
    prompt = dolly_prompt("What soil do blueberries like?")
    fp32_model, tok = load_causal_lm(path)
    rows = []
    for name, gen in [("transformers-fp32-plain", PlainGenerate(fp32_model, tok, max_context_tokens=WINDOW)),
                      *([("llama.cpp", backends.load_generator(path, backend="llama.cpp", batch_size=1,
                                                                max_context_tokens=WINDOW))]
                        if llamacpp.installed() else [])]:
        gen.generate([prompt], GenerationSettings(max_new_tokens=2))
        began = time.perf_counter()
        [[g]] = gen.generate([prompt], GenerationSettings(max_new_tokens=n))
        rows.append({"backend": name, "prompt": "short, batch 1", "new_tokens": g.new_tokens,
                     "tokens_per_s": round(g.new_tokens / (time.perf_counter() - began), 1)})
        del gen
    for r in rows:
        r["ratio_vs_fp32"] = round(r["tokens_per_s"] / rows[0]["tokens_per_s"], 2)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a checkpoint (default: make run's tuned model)")
    parser.add_argument("--questions", type=int, default=None, help="held-out questions (default: all)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=GenerationSettings().max_new_tokens)
    parser.add_argument("--plain-questions", type=int, default=8,
                        help="questions for the one-prompt-at-a-time anchor (slow; its tokens/s is the 1.0×)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    layout = Layout.from_env()
    path = args.model or tuned_model_path(layout.tuned)
    questions = load_test_questions(layout.dataset / "test.jsonl", limit=args.questions)
    store = open_store(lance_uri(), key=DEFAULT_RETRIEVAL.key, storage_options=lance_storage_options())
    if store.open() is None:
        sys.exit(f"no qa_index at {lance_uri()}: run `make run` first")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)

    fp32_model, tok = load_causal_lm(path)
    rows: list[tuple[str, object]] = [  # batched fp32 first: the reference answers for agreement
        ("transformers-fp32", lambda: Generator(fp32_model, tok, batch_size=args.batch_size, max_context_tokens=WINDOW)),
        ("transformers-fp32-plain", lambda: PlainGenerate(fp32_model, tok, max_context_tokens=WINDOW))]
    rows.append(("transformers-bf16", lambda: Generator.load(path, precision="bf16", batch_size=args.batch_size,
                                                             max_context_tokens=WINDOW)))
    if llamacpp.installed():
        rows.append(("llama.cpp", lambda: backends.load_generator(path, backend="llama.cpp", batch_size=args.batch_size,
                                                                  max_context_tokens=WINDOW)))
    tmp = tempfile.TemporaryDirectory()
    try:
        import ctranslate2  # noqa: F401

        rows.append(("ctranslate2-int8", lambda: CTranslate2Int8(path, tok, Path(tmp.name), args.batch_size)))
    except ImportError:
        pass

    results, reference = [], {}
    anchor = "transformers-fp32-plain"
    for name, make in rows:
        generator = make()
        asked = questions[:args.plain_questions] if name == anchor else questions
        answers, seconds = run(generator, store, asked, settings)
        if name == "transformers-fp32":
            reference = {q.question_id: a.answer for q, a in zip(asked, answers)}
        scores = [score(a.answer, q.references) for a, q in zip(answers, asked)]
        tokens = sum(a.new_tokens for a in answers)
        row = {
            "backend": name, "questions": len(asked), "tokens_per_s": round(tokens / seconds, 1),
            "answers_per_s": round(len(answers) / seconds, 3), "ratio_vs_fp32": None,
            "ask_wall_s": None, "process_wall_s": None,
            "token_f1": round(statistics.fmean(f for _, f in scores), 4),
            "rouge_l": round(statistics.fmean(r for r, _ in scores), 4),
            "exact_match_vs_fp32": None, "rouge_l_vs_fp32": None,
            "ended": round(statistics.fmean(a.ended for a in answers), 3),
        }
        if reference:
            pairs = [(a.answer, reference[q.question_id]) for a, q in zip(answers, asked)]
            row["exact_match_vs_fp32"] = round(statistics.fmean(a == b for a, b in pairs), 3)
            row["rouge_l_vs_fp32"] = round(statistics.fmean(rouge_l(a, b) for a, b in pairs), 4)
        if name in ("transformers-bf16", "llama.cpp"):  # what garden ask runs (bf16: transformers' auto on this CPU)
            row["ask_wall_s"] = ask_wall(generator, store, questions)
            row["process_wall_s"] = process_wall("llama.cpp" if name == "llama.cpp" else "transformers",
                                                 questions[0].instruction)
        if isinstance(generator, CTranslate2Int8):
            row["conversion_s"] = generator.convert_s
        results.append(row)
        del generator
    base_rate = next(r["tokens_per_s"] for r in results if r["backend"] == anchor)
    for r in results:
        r["ratio_vs_fp32"] = round(r["tokens_per_s"] / base_rate, 2)
    tmp.cleanup()
    del fp32_model
    short = short_prompt_rates(base_model_path(DEFAULT_BASE_MODEL, layout.models))
    context = {"model": str(path), "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
               "threads": os.cpu_count(), "anchor": anchor, "load_avg_1m": round(os.getloadavg()[0], 2)}
    if args.json:
        for r in results:
            print(json.dumps({**r, **context}))
        for r in short:
            print(json.dumps({**r, **context}))
        return 0
    print(" ".join(f"{k}={v}" for k, v in context.items()))
    cols = ["backend", "tokens_per_s", "ratio_vs_fp32", "answers_per_s", "ask_wall_s", "process_wall_s",
            "token_f1", "rouge_l", "exact_match_vs_fp32", "rouge_l_vs_fp32", "ended"]
    print(" | ".join(cols))
    for r in results:
        print(" | ".join(str(r.get(c)) for c in cols))
    for r in short:
        print(f"{r['backend']} ({r['prompt']}, {r['new_tokens']} new tokens): {r['tokens_per_s']} tokens/s, "
              f"{r['ratio_vs_fp32']}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
