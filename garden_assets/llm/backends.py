"""Which generation backend answers: transformers (the reference) or llama.cpp (a quantized GGUF on CPU).

Both give `Generator`'s interface (``backend``, ``tokenizer``, ``context_window``, ``count_tokens``,
``prompt_budget``, ``generate``), so `rag.Assistant`, ``garden ask`` and ``evaluation_answers`` take either.
``auto`` picks llama.cpp on CPU when llama-cpp-python is installed and the checkpoint has its GGUF
(`gguf_export`), else transformers — saying why in one log line.
"""

from __future__ import annotations

import os
from typing import Callable

from ..compute import BACKENDS, LLAMA_CPP, TRANSFORMERS
from . import llamacpp
from .generate import Generator
from .gguf_export import adapter_path, gguf_path, read_info


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}; known: {', '.join(BACKENDS)}")
    return name


def resolve_backend(requested: str, device: str, checkpoint: str | os.PathLike[str] | None = None,
                    *, log: Callable[[str], None] = print) -> str:
    """``transformers`` or ``llama.cpp`` for ``requested`` on ``device``; an explicit choice that cannot work
    is an error, ``auto`` falls back to transformers (logging why)."""
    check_backend(requested)
    if requested == TRANSFORMERS:
        return TRANSFORMERS
    why = None
    if device != "cpu":
        why = f"the {LLAMA_CPP} backend is built for CPU here; device is {device}"
    elif not llamacpp.installed():
        why = "llama-cpp-python is not installed (make setup installs it: pip install -e '.[llamacpp]')"
    elif checkpoint is not None and not gguf_path(checkpoint).is_file():
        why = f"no GGUF at {gguf_path(checkpoint)} (base_model / tuned_model_gguf write it; make run does)"
    if why is None:
        return LLAMA_CPP
    if requested == LLAMA_CPP:
        raise ValueError(f"backend {LLAMA_CPP}: {why}")
    if device == "cpu":
        log(f"generating with {TRANSFORMERS}: {why}")
    return TRANSFORMERS


def load_generator(checkpoint: str | os.PathLike[str], *, backend: str = "auto", device: str = "cpu",
                   precision: str = "fp32", batch_size: int = 8, max_context_tokens: int | None = None,
                   log: Callable[[str], None] = print):
    """A ready generator for ``checkpoint`` (a transformers directory; llama.cpp reads its ``gguf/model.gguf``)."""
    chosen = resolve_backend(backend, device, checkpoint, log=log)
    if chosen == TRANSFORMERS:
        return Generator.load(checkpoint, device=device, precision=precision, batch_size=batch_size,
                              max_context_tokens=max_context_tokens)
    return llamacpp.LlamaCppGenerator(gguf_path(checkpoint), lora=adapter_path(checkpoint), batch_size=batch_size,
                                      max_context_tokens=max_context_tokens)


def query_embedder(key: str, cache_dir: str | os.PathLike[str], *, model=None, log: Callable[[str], None] = print):
    """For the llama.cpp path (`garden ask`): the index's embedding model as a GGUF (converted once, f32, into
    ``cache_dir/embedders/``) behind `llamacpp.LlamaCppEmbedder` — or None, with one log line, when that cannot
    be (the caller then embeds with sentence-transformers, as the index was built)."""
    from pathlib import Path

    from ..retrieval.embedder import index_id_for, model_slug, resolve_model
    from ..retrieval.store import LONG_TEXT_BY_KEY
    from .gguf_export import export_gguf

    model_name, load_from = resolve_model(model)
    try:
        info = export_gguf(load_from, outtype="f32", out_dir=Path(cache_dir) / "embedders" / model_slug(model_name))
        return llamacpp.LlamaCppEmbedder(info.path, model_name=model_name,
                                         index_id=index_id_for(model_name, LONG_TEXT_BY_KEY[key]))
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as e:
        log(f"embedding the question with sentence-transformers: {str(e).splitlines()[0]}")
        return None


def describe(generator) -> str:
    """``transformers bf16`` / ``llama.cpp q8_0``: the backend and the weights' number format, for metadata/logs."""
    if generator.backend == LLAMA_CPP:
        return f"{LLAMA_CPP} {read_info(generator.gguf).get('format', 'gguf')}"
    dtype = str(next(generator.model.parameters()).dtype).removeprefix("torch.")
    return f"{TRANSFORMERS} {dtype}"
