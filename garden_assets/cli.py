"""``garden``: the command line over the library (no Dagster needed)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from .compute import BACKENDS
from .llm.rag import DEFAULT_RETRIEVAL, check_min_similarity
from .retrieval.embedder import DEFAULT_KEY, KEYS
from .retrieval.metrics import GRID_KEYS
from .retrieval.search import DEFAULT_MODE, MODES, SEARCH_K
from .stackexchange.reader import DumpError


class UsageError(Exception):
    """A bad argument or path: ``main`` prints it as one ``garden: …`` line and exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage + error
        self.exit(2, f"garden: {self.prog.removeprefix('garden').strip() or 'usage'}: {message}\n")


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, not {n}")
    return n


def _similarity_floor(text: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        floor = float(text)
        check_min_similarity(floor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cosine similarity -1..1 or none, not {text!r}") from None
    return floor


def _check_out(out: str, dump: str, force: bool) -> None:
    """``--out`` must name a new file or a Parquet output of ours (``--force``: any file) in a writable folder,
    and never the input dump."""
    from .stackexchange.ingest import is_ingest_output
    from .stackexchange.reader import find_posts

    path = Path(out)
    source, _ = find_posts(dump)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a folder; give a file name such as {path / 'posts.parquet'}")
    if not path.parent.is_dir():
        raise UsageError(f"--out {out}: no such folder {path.parent}")
    if path.exists() and path.samefile(source):
        raise UsageError(f"--out {out}: is the input dump; write the Parquet file elsewhere")
    if path.exists() and not force and not is_ingest_output(path):
        raise UsageError(f"--out {out}: exists and is not a Parquet file written by garden ingest (--force replaces it)")
    try:
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write in {path.parent} ({e.strerror})") from None


def _ingest(args: argparse.Namespace) -> int:
    from .stackexchange.ingest import ingest

    if args.out:
        _check_out(args.out, args.dump, args.force)
    figures = ingest(args.dump, out=args.out, min_score=args.min_score, max_body_chars=args.max_body_chars, workers=args.workers)
    print(json.dumps(figures))
    return 0


def _search(args: argparse.Namespace) -> int:
    from .llm.rag import RetrievalSetting, check_question, exclusion_filter
    from .retrieval.store import has_index, open_store
    from .settings import lance_storage_options, lance_uri

    try:  # the checks `garden ask` makes
        question = check_question(args.question)
        RetrievalSetting(k=args.k, key=args.key, mode=args.mode)
    except ValueError as e:
        raise UsageError(e) from None
    if not has_index(lance_uri(), key=args.key, model=args.model, storage_options=lance_storage_options()):
        raise UsageError(f"no index at {lance_uri()} for key {args.key!r}: materialize the qa_index asset first (make run)")
    store = open_store(lance_uri(), key=args.key, model=args.model, storage_options=lance_storage_options())
    hits = store.search(question, k=args.k, mode=args.mode, where=exclusion_filter(site=_site(args.site)))
    if args.json:
        print(json.dumps([dataclasses.asdict(h) for h in hits], default=str))
        return 0
    floor = DEFAULT_RETRIEVAL.min_similarity
    for i, h in enumerate(hits, 1):
        similar = "" if h.similarity is None else f", similarity {h.similarity:.2f}" + (
            f" < {floor}: ask would not use it" if floor is not None and h.similarity < floor else "")
        print(f"{i}. [{h.score:.3f}{similar}] {h.title}\n   {h.source_url}\n   {h.text[:200].replace(chr(10), ' ')}")
    return 0


def _eval_retrieval(args: argparse.Namespace) -> int:
    if args.folds is not None and not args.adapt:
        raise UsageError("eval-retrieval: --folds needs --adapt (it cross-validates the adapted model)")
    from .retrieval.embedder import Embedder
    from .retrieval.metrics import evaluate_grid
    from .stackexchange.qa import build_pairs
    from .stackexchange.reader import read_posts
    from .stackexchange.text import clean_posts

    from .drops import site_of

    clean, _ = clean_posts(read_posts(args.dump))  # no score/length filters: the README protocol
    pairs, _ = build_pairs(clean, site=site_of(args.dump).name)
    keys = list(GRID_KEYS) if args.key == "all" else [args.key]
    modes = list(MODES) if args.mode == "all" else [args.mode]
    if args.adapt or args.mpnet:
        return _eval_held_out(args, pairs, keys, modes)
    for r in evaluate_grid(pairs, Embedder(args.model), keys, modes):
        line = {"key": r.key, "mode": r.mode, "success_at_5": r.success_at_5, "mrr_at_10": r.mrr_at_10,
                "queries": r.queries, "docs": pairs.height, "docs_per_s": r.index_docs_per_s}
        print(json.dumps(line) if args.json else "{key:<16} {mode:<7} Success@5 {success_at_5:.3f}  MRR@10 {mrr_at_10:.3f}  ({queries} queries, {docs} docs)".format(**line))
    return 0


def _eval_held_out(args: argparse.Namespace, pairs, keys: list[str], modes: list[str]) -> int:
    """retrieval_eval's protocol from a dump: train the adapted model on the train split (as retriever_model
    does), score the held-out test questions (corpus: every answer). ``--folds K``: every question instead, each
    scored by one of K adapted models trained without its fold."""
    from .llm.dataset import held_out_questions, question_folds
    from .retrieval.adapt import adapt_embedder
    from .retrieval.embedder import Embedder
    from .retrieval.metrics import compare_models, cross_validate

    try:  # the split first: a bad --folds or a dump too small fails before any model loads
        if args.folds is not None:
            folds = question_folds(set(zip(pairs["site"].to_list(), pairs["question_id"].to_list())), args.folds)
        else:
            held = held_out_questions(pairs)
    except ValueError as e:
        raise UsageError(f"eval-retrieval: {args.dump}: {e}") from None
    if args.folds is None and not held.test:
        raise UsageError(f"eval-retrieval: {args.dump} has too few pairs to hold out a test question")
    with tempfile.TemporaryDirectory(prefix="garden_adapt_") as tmp:
        models = {"minilm": Embedder(args.model)}
        if args.mpnet:
            models["mpnet"] = Embedder(args.mpnet)
        weights = {"weights": args.weights} if args.weights else {}

        def adapted(held: frozenset, label: str, scored: int) -> Embedder:
            result = adapt_embedder(pairs, held, Path(tmp) / label, model=args.model)
            print(f"{label}: {result.pairs} train pairs ({result.questions} questions, {result.examples} examples), "
                  f"{result.epochs} epochs, {result.steps} steps in {result.seconds} s; {scored} held-out test "
                  "questions", file=sys.stderr, flush=True)
            return Embedder(result.path)

        if args.folds is not None:
            fold_label = {f: f"fold-{i + 1}-of-{len(folds)}" for i, f in enumerate(folds)}
            rows = cross_validate(pairs, models, lambda held: adapted(held, fold_label[held], len(held)), folds=folds,
                                  keys=keys, modes=modes, **weights)
        else:
            if args.adapt:
                models["adapted"] = adapted(held.questions, "adapted", len(held.test))
            rows = (r for key in keys for r in compare_models(pairs, models, key=key, modes=modes,
                                                               questions=held.test, **weights))
        for r in rows:
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                weight = "" if r["vector_weight"] is None else f" w={r['vector_weight']}"
                speed = "" if r["docs_per_s"] is None else f", {r['docs_per_s']} docs/s"
                scored = f"{r['folds']}-fold cross-validated" if r.get("folds") else "held-out"
                paired = (f"; vs {r['vs']}: Success@5 {r['success_at_5_delta']:+.3f} ± {r['success_at_5_delta_se']:.3f}, "
                          f"MRR@10 {r['mrr_at_10_delta']:+.3f} ± {r['mrr_at_10_delta_se']:.3f}") if "vs" in r else ""
                print(f"{r['model']:<8} {r['key']:<16} {r['mode'] + weight:<12} Success@5 {r['success_at_5']:.3f}  "
                      f"MRR@10 {r['mrr_at_10']:.3f}  ({r['queries']} {scored} queries{speed}{paired})", flush=True)
    return 0


def _add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `GenerationSettings` field (its type and help; unset flags keep the settings' defaults)."""
    from .llm.generate import GenerationSettings
    from .settings import typed_fields

    for name, kind, default, help in typed_fields(GenerationSettings):
        flag, shown = "--" + name.replace("_", "-"), f"{help} (default: {default})".strip()
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=shown)
        else:
            parser.add_argument(flag, type=kind, help=shown)


def _site(name: str | None) -> str | None:
    """``--site``: a host name (lower case), checked so it can go into a search filter."""
    from .drops import HOST

    if name is None:
        return None
    if not HOST.match(name.strip().lower()):
        raise UsageError(f"--site {name!r}: expected a host name such as coffee.stackexchange.com")
    return name.strip().lower()


def _ask(args: argparse.Namespace) -> int:
    from .compute import LLAMA_CPP, ComputeSpec, load_profile
    from .llm.backends import describe, load_generator, query_embedder, resolve_backend
    from .llm.generate import GenerationSettings
    from .llm.models import base_model_path, base_model_spec, require_checkpoint, tuned_model_path
    from .llm.rag import Answer, Assistant, Question, check_question, pasted_answer, relevant_hits
    from .retrieval.store import QAStore, open_store
    from .settings import Layout, lance_storage_options, lance_uri

    def note(line: str) -> None:
        print(f"garden: {line}", file=sys.stderr)

    profile = load_profile(asset="generation", defaults=ComputeSpec(device="auto"))
    layout = Layout.from_env()
    try:
        question = check_question(args.question)
        settings = GenerationSettings.from_dict(
            {}, **{f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationSettings)})
        if args.no_model:
            path = None
        elif args.model == "tuned":
            path = require_checkpoint(tuned_model_path(layout.tuned), "tuned_model")
        else:
            path = require_checkpoint(base_model_path(base_model_spec(), layout.models), "base_model")
        if args.no_model and args.no_rag:
            raise ValueError("--no-model pastes the top retrieved answer: it cannot go with --no-rag")
        backend = None if args.no_model else resolve_backend(
            args.backend or profile.backend, profile.resolve_device(), path, log=note)
        store = None
        if not args.no_rag:  # with llama.cpp generating, llama.cpp embeds the question too (no torch import)
            embedder = query_embedder(args.key, layout.models, log=note) if backend == LLAMA_CPP else None
            store = (QAStore(lance_uri(), embedder, key=args.key, storage_options=lance_storage_options()) if embedder
                     else open_store(lance_uri(), key=args.key, storage_options=lance_storage_options()))
            if store.open() is None:
                raise FileNotFoundError(f"no index at {lance_uri()} for key {args.key!r}: materialize the "
                                        "qa_index asset first (make run)")
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"ask: {e}") from None
    label = "retrieved (no model)" if args.no_model else f"{args.model} model"
    try:
        if args.no_model:
            answer = pasted_answer(store, Question(question, args.context or ""), k=args.k, mode=args.mode,
                                   site=_site(args.site), min_similarity=args.min_similarity)
        elif store is not None and not relevant_hits(
                store, question, k=args.k, mode=args.mode, consensus_pool=DEFAULT_RETRIEVAL.consensus_pool,
                site=_site(args.site), min_similarity=args.min_similarity):
            # nothing close enough to answer from: withheld before any model is loaded (the Assistant below would
            # find the same nothing; for a question it answers, this is one extra search, tens of milliseconds)
            answer, label = Answer.withheld(question), f"{label} not loaded"
        else:
            generator = load_generator(path, backend=backend, device=profile.resolve_device(),
                                       precision=profile.resolve_precision(),
                                       max_context_tokens=args.max_context_tokens, log=note)
            label += f" via {describe(generator)}"
            [answer] = Assistant(generator, store, k=args.k, mode=args.mode, site=_site(args.site),
                                 quote_unsupported=not args.no_quote_unsupported,
                                 min_similarity=args.min_similarity).ask(
                [Question(question, args.context or "")], settings, rag=not args.no_rag)
    except ValueError as e:
        raise UsageError(f"ask: {e}") from None
    if args.json:
        print(json.dumps({"model": None if args.no_model else args.model, "path": str(path) if path else None,
                          **answer.to_dict()}, default=str))
        return 0
    print(answer.answer or "(the model wrote nothing before ### End)")
    if answer.declined:
        note(f"no indexed answer is similar enough to the question (cosine similarity ≥ {args.min_similarity}), so "
             f"no model ran; `garden search` lists the nearest ones, --min-similarity none answers anyway")
    if answer.quoted:
        note(f"the model's answer was not supported by its source, so this is the source itself "
             f"(--no-quote-unsupported shows the model's): {answer.model_answer!r}")
    for alt in answer.alternatives:
        print(f"\n--- alternative ---\n{alt}")
    if answer.sources:
        print("\nSources:")
        for i, s in enumerate(answer.sources, 1):
            print(f"  [{i}] {s.title} — {s.url}{' (trimmed to fit)' if s.trimmed else ''}")
    dropped = f", {answer.docs_dropped} dropped" if answer.docs_dropped else ""
    ending = ("" if answer.ended else "; stopped: it began repeating itself (the repeat cut)" if answer.looped
              else "; stopped at max_new_tokens")
    rag = " + RAG" if answer.rag and not args.no_model and not answer.declined else ""
    print(f"\n({label}{rag}; {answer.new_tokens} new tokens in {answer.latency_s:.1f} s{dropped}{ending})",
          file=sys.stderr)
    return 0



def _add_retrieval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=MODES, default=DEFAULT_MODE)
    parser.add_argument("--key", choices=KEYS, default=DEFAULT_KEY, help="the qa_index table (its key) to search")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="garden", description="garden_assets: your Q&A dump → a domain assistant")
    sub = parser.add_subparsers(dest="command", required=True)  # subcommands get _Parser too

    p = sub.add_parser("ingest", help="read and clean a Posts.xml / site .7z; print one JSON line of figures")
    p.add_argument("dump", help="a Posts.xml, a site .7z, or a folder holding one")
    p.add_argument("--out", help="write the cleaned posts to this Parquet file (new, or an earlier output)")
    p.add_argument("--force", action="store_true", help="let --out replace a file that is not an earlier output")
    p.add_argument("--min-score", type=int, default=None, help="drop posts scored below N (default: keep all)")
    p.add_argument("--max-body-chars", type=_at_least_one, default=None,
                   help="drop posts whose text is longer (default: keep all)")
    p.add_argument("--workers", type=_at_least_one, default=None, help="threads for a plain Posts.xml (default: all cores)")
    p.set_defaults(func=_ingest)

    p = sub.add_parser("search", help="search the current qa_index")
    p.add_argument("question")
    p.add_argument("--k", type=int, default=SEARCH_K, help="answers to list (1..50)")
    _add_retrieval_flags(p)
    p.add_argument("--model", default=None, help="the embedding model the index was built with (default: packaged MiniLM)")
    p.add_argument("--site", help="only answers from this site (e.g. coffee.stackexchange.com)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_search)

    p = sub.add_parser("ask", help="answer a question with the base or tuned model, with retrieved sources")
    p.add_argument("question")
    p.add_argument("--model", choices=["tuned", "base"], default="tuned")
    p.add_argument("--no-rag", action="store_true", help="answer from the model alone (no retrieval)")
    p.add_argument("--no-model", action="store_true",
                   help="no model: print the top retrieved answer as is (the evaluation's `retrieved` anchor)")
    p.add_argument("--k", type=int, default=DEFAULT_RETRIEVAL.k, help="documents to retrieve")
    p.add_argument("--min-similarity", type=_similarity_floor, default=DEFAULT_RETRIEVAL.min_similarity,
                   metavar="COSINE", help="withhold the answer when no retrieved answer is at least this similar to "
                   "the question (default: %(default)s, calibrated for the packaged MiniLM; none: answer anyway)")
    p.add_argument("--no-quote-unsupported", action="store_true",
                   help="print the model's answer even when its sources do not support it (default: the top source)")
    _add_retrieval_flags(p)
    p.add_argument("--site", help="retrieve only from this site (e.g. coffee.stackexchange.com)")
    p.add_argument("--context", help="more detail about the question (the Input: block; its leading sentences "
                   f"within {DEFAULT_RETRIEVAL.context_tokens} tokens, as in training)")
    p.add_argument("--max-context-tokens", type=_at_least_one, default=2048, help="prompt + answer window")
    p.add_argument("--backend", choices=BACKENDS, default=None,
                   help="generation backend (default: the generation compute profile's, auto: llama.cpp on CPU "
                        "when installed, else transformers)")
    _add_generation_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_ask)

    p = sub.add_parser("eval-retrieval", help="Success@5 / MRR@10 of a throw-away index built from a dump")
    p.add_argument("dump")
    p.add_argument("--key", choices=[*KEYS, "all"], default="all", help=f"all: {', '.join(GRID_KEYS)}")
    p.add_argument("--mode", choices=[*MODES, "all"], default="all")
    p.add_argument("--model", default=None, help="the off-the-shelf model (default: packaged MiniLM)")
    p.add_argument("--adapt", action="store_true",
                   help="held-out protocol: fine-tune the model on the dump's train split (as retriever_model "
                        "does), score minilm, adapted, bm25 and hybrids on its held-out test questions")
    p.add_argument("--folds", type=int, metavar="K",
                   help="with --adapt: K-fold cross-validation — every question held out once, scored by one of K "
                        "adapted models trained without its fold (K trainings; far less noise than one split)")
    p.add_argument("--mpnet", metavar="FOLDER", help="add an all-mpnet-base-v2 folder to the held-out table")
    p.add_argument("--weights", type=float, nargs="+", metavar="W",
                   help="hybrid vector weights to measure (held-out protocol; default: the search default)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_eval_retrieval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DumpError, UsageError, OSError) as e:  # OSError: a path the file system refused
        print(f"garden: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
