"""The llama.cpp generation backend: a GGUF model (quantized), batched greedy/sampled decoding on CPU.

Prompts are tokenized by the GGUF's own vocabulary (`LlamaTokenizer`: the ids the checkpoint's Hugging Face
tokenizer gives, a test checks it, without the seconds transformers takes to load a 262 k vocabulary) and decoded
several at a time, one llama.cpp sequence per prompt each in its own KV cache stream — the pattern of llama.cpp's ``examples/batched``. llama-cpp-python's high-level ``Llama``
answers one prompt at a time, hence the low-level API. The next token is chosen by `sampling.SequenceState`
(transformers' meaning of every setting); beam search is refused.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..compute import LLAMA_CPP as BACKEND
from ..compute import cpu_has_amx
from .generate import GeneratedText, GenerationSettings, LoopGuard, TokenBudget
from .prompts import END_KEY, extract_response
from .sampling import SequenceState

PROMPT_CHUNK = 512  # prompt tokens per llama_decode call (llama.cpp's default n_batch)
UNCAPPED_WINDOW = 4096  # the KV cache is allocated up front, per sequence: the window when no cap is given


def installed() -> bool:
    """llama-cpp-python is an optional extra (a source build): is it importable here?"""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def check_settings(settings: GenerationSettings) -> None:
    """Refuse what this backend cannot do, naming it (every other setting keeps transformers' meaning)."""
    if settings.num_beams > 1:
        raise ValueError(f"num_beams={settings.num_beams}: the {BACKEND} backend has no beam search "
                         "(use backend transformers)")


def model_params(lib):
    """llama.cpp's model parameters for a load on this CPU."""
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0
    # llama.cpp's "extra" CPU buffer types repack weights for faster kernels; on a CPU with AMX that means its AMX
    # matmul, which crashed the process (SIGSEGV in ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36 built
    # natively, Gemma 3 Q4_K_M; seen 2026-12-06; upstream: ggml-org/llama.cpp#20824, Q4_K_M too, no fix), so on
    # AMX CPUs the model keeps the plain CPU kernels.
    params.use_extra_bufts = not cpu_has_amx()
    return params


def _load(gguf: Path):
    """``(llama_cpp, model)``: a GGUF loaded on CPU, llama.cpp's own logging off (its errors raise here)."""
    import llama_cpp as lib

    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL + 1)
    if not gguf.is_file():
        raise FileNotFoundError(f"no GGUF model at {gguf}")
    lib.llama_backend_init()
    model = lib.llama_model_load_from_file(str(gguf).encode(), model_params(lib))
    if not model:
        raise ValueError(f"llama.cpp could not load {gguf}")
    return lib, model


class LlamaTokenizer:
    """The two calls `rag` and the backends make of a tokenizer (``tok(text)["input_ids"]``, ``tok.decode``),
    answered by llama.cpp's own tokenizer; special tokens written in the text are parsed, as transformers does."""

    def __init__(self, lib, vocab) -> None:
        self._lib, self._vocab = lib, vocab

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        data = text.encode("utf-8")
        room = len(data) + 8
        while True:
            ids = (self._lib.llama_token * room)()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), ids, room, add_special_tokens, True)
            if n >= 0:
                return {"input_ids": list(ids[:n])}
            room = -n  # a negative count: the room it needs

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        tokens = (self._lib.llama_token * max(1, len(ids)))(*ids)
        room = 8 * len(ids) + 16
        while True:
            buf = ctypes.create_string_buffer(room)
            n = self._lib.llama_detokenize(self._vocab, tokens, len(ids), buf, room, skip_special_tokens,
                                           not skip_special_tokens)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            room = -n


class LlamaCppGenerator(TokenBudget):
    """A GGUF model ready for batched generation through llama.cpp."""

    backend = BACKEND

    def __init__(self, gguf: str | os.PathLike[str], *, lora: str | os.PathLike[str] | None = None,
                 batch_size: int = 8, max_context_tokens: int | None = None, threads: int | None = None) -> None:
        self.gguf = Path(gguf)
        lib, self._model = _load(self.gguf)
        self._lib = lib
        self.batch_size = max(1, int(batch_size))
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.tokenizer = LlamaTokenizer(lib, self._vocab)
        self.n_vocab = lib.llama_vocab_n_tokens(self._vocab)
        window = lib.llama_model_n_ctx_train(self._model) or UNCAPPED_WINDOW
        self.context_window = min(window, max_context_tokens or UNCAPPED_WINDOW)
        threads = threads or len(os.sched_getaffinity(0))
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self.batch_size * self.context_window  # each sequence of a batch: its own window of cells
        cparams.n_batch = PROMPT_CHUNK
        cparams.n_ubatch = PROMPT_CHUNK
        cparams.n_seq_max = self.batch_size
        cparams.kv_unified = False  # one cache stream per sequence: Gemma's sliding-window layers in a unified
        # cache let identical prompts of one batch decode differently (measured); separate streams do not
        cparams.n_threads = cparams.n_threads_batch = threads
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ValueError(f"llama.cpp could not create a context for {self.gguf} ({cparams.n_ctx} tokens)")
        self._lora = None
        if lora is not None:  # a LoRA adapter GGUF applied on top of the model at scale 1
            self._lora = lib.llama_adapter_lora_init(self._model, str(lora).encode())
            if not self._lora or lib.llama_set_adapters_lora(
                    self._ctx, (lib.llama_adapter_lora_p_ctypes * 1)(self._lora), 1, (ctypes.c_float * 1)(1.0)) != 0:
                raise ValueError(f"llama.cpp could not apply the LoRA adapter {lora} to {self.gguf}")
        self._batch = lib.llama_batch_init(max(PROMPT_CHUNK, self.batch_size), 0, 1)

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        if getattr(self, "_batch", None) is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_lora", None):
            lib.llama_adapter_lora_free(self._lora)
            self._lora = None
        if getattr(self, "_model", None):
            lib.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may be gone already
            pass

    # -- decoding ---------------------------------------------------------------------------------------------
    def _decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of (token, position, sequence, want_logits) items."""
        b = self._batch
        for i, (token, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq
        b.n_tokens = len(items)
        rc = self._lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}) on {self.gguf.name}")

    def _logits(self, i: int) -> np.ndarray:
        """The logits of the ``i``-th token of the last decoded batch (a view into llama.cpp's buffer)."""
        return np.ctypeslib.as_array(self._lib.llama_get_logits_ith(self._ctx, i), shape=(self.n_vocab,))

    def generate(self, prompts: Sequence[str], settings: GenerationSettings | None = None) -> list[list[GeneratedText]]:
        """For each prompt, ``num_return_sequences`` generations, in prompt order (`Generator.generate`'s contract)."""
        settings = settings or GenerationSettings()
        check_settings(settings)
        encoded = self.encode(prompts, settings)
        n = settings.num_return_sequences
        rows = [(i, j) for i in range(len(prompts)) for j in range(n)]  # one llama.cpp sequence per answer
        rows.sort(key=lambda r: -len(encoded[r[0]]))  # similar lengths share a batch
        results: list[list[GeneratedText | None]] = [[None] * n for _ in prompts]
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            began = time.perf_counter()
            states = [SequenceState(encoded[i], settings, np.random.default_rng([settings.seed, i, j]))
                      for i, j in chunk]
            guards = [LoopGuard(settings.stop_loop_tokens) for _ in states]
            done = self._run(states, settings, guards)
            seconds = time.perf_counter() - began
            rate = sum(len(s.new_tokens) for s in states) / seconds if seconds > 0 else 0.0
            for (i, j), state, guard, ended in zip(chunk, states, guards, done):
                kept = state.new_tokens[:guard.kept] if guard.looped else state.new_tokens
                text = self.tokenizer.decode(kept, skip_special_tokens=True)
                results[i][j] = GeneratedText(text=extract_response(text), prompt_tokens=len(encoded[i]),
                                           new_tokens=len(state.new_tokens), latency_s=seconds,
                                           batch_tokens_per_s=rate, ended=ended, looped=guard.looped)
        return results  # type: ignore[return-value]

    def _run(self, states: list[SequenceState], settings: GenerationSettings,
             guards: list[LoopGuard] | None = None) -> list[bool]:
        """Decode one batch of sequences to their ends (``guards``, one per sequence, stop one that loops);
        returns whether each ended by itself."""
        guards = guards or [LoopGuard(settings.stop_loop_tokens) for _ in states]
        lib = self._lib
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        items = [(t, pos, seq, pos == len(s.tokens) - 1) for seq, s in enumerate(states) for pos, t in enumerate(s.tokens)]
        logits: dict[int, np.ndarray] = {}
        for start in range(0, len(items), PROMPT_CHUNK):  # the prompts, a chunk of tokens per call
            piece = items[start:start + PROMPT_CHUNK]
            self._decode(piece)
            for index, (_, _, seq, wanted) in enumerate(piece):
                if wanted:
                    logits[seq] = self._logits(index).copy()  # the next call overwrites the logits
        active = list(range(len(states)))
        ended = [False] * len(states)
        window = len(END_KEY) + 2
        while active:
            step = []
            for seq in active:
                s = states[seq]
                token = s.choose(logits[seq])
                s.append(token)
                if lib.llama_vocab_is_eog(self._vocab, token):
                    ended[seq] = True
                elif END_KEY in self.tokenizer.decode(s.new_tokens[-window:], skip_special_tokens=True):
                    ended[seq] = True
                elif guards[seq].push(token):
                    pass  # looping: stop here, the repeat is cut
                elif len(s.new_tokens) < settings.max_new_tokens:
                    step.append(seq)
            active = step
            if active:
                self._decode([(states[seq].tokens[-1], len(states[seq].tokens) - 1, seq, True) for seq in active])
                logits = {seq: self._logits(k) for k, seq in enumerate(active)}
        return ended



class LlamaCppEmbedder:
    """Query vectors from a sentence-transformers model converted to GGUF (mean pooling as the model's
    ``1_Pooling`` says, then L2-normalised), for the interactive path: ``garden ask`` with the llama.cpp backend
    embeds its question without importing torch and sentence-transformers (≈ 5 s of a 9 s process). It stands
    in for the `Embedder` that built the index — same ``model_name``/``index_id``/``dimension``, so the same
    table — and a test checks its vectors against sentence-transformers'."""

    def __init__(self, gguf: str | os.PathLike[str], *, model_name: str, index_id: str, max_tokens: int = 256,
                 threads: int | None = None) -> None:
        self.gguf = Path(gguf)
        lib, self._model = _load(self.gguf)
        self._lib = lib
        self.model_name, self.index_id, self.max_tokens = model_name, index_id, max_tokens
        self.tokenizer = LlamaTokenizer(lib, lib.llama_model_get_vocab(self._model))
        self.dimension = lib.llama_model_n_embd(self._model)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = max_tokens  # an encoder reads a text in one pass
        cparams.embeddings = True
        cparams.n_threads = cparams.n_threads_batch = threads or len(os.sched_getaffinity(0))
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ValueError(f"llama.cpp could not create an embedding context for {self.gguf}")
        self._batch = lib.llama_batch_init(max_tokens, 0, 1)

    def embed_query(self, text: str) -> np.ndarray:
        lib, b = self._lib, self._batch
        ids = self.tokenizer(text)["input_ids"]
        if len(ids) > self.max_tokens:  # the model's window, as sentence-transformers truncates: keep [SEP]
            ids = ids[: self.max_tokens - 1] + ids[-1:]
        for i, token in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, i, 1, True
            b.seq_id[i][0] = 0
        b.n_tokens = len(ids)
        lib.llama_memory_clear(lib.llama_get_memory(self._ctx), True)
        if lib.llama_decode(self._ctx, b) != 0:
            raise RuntimeError(f"llama_decode failed on {self.gguf.name}")
        vec = np.ctypeslib.as_array(lib.llama_get_embeddings_seq(self._ctx, 0), shape=(self.dimension,)).copy()
        return vec / max(float(np.linalg.norm(vec)), 1e-12)

    def embed(self, texts, *, progress=None) -> np.ndarray:
        return np.stack([self.embed_query(t) for t in texts]) if texts else np.empty((0, self.dimension), np.float32)

    def __del__(self) -> None:
        try:
            self._lib.llama_batch_free(self._batch)
            self._lib.llama_free(self._ctx)
            self._lib.llama_model_free(self._model)
        except Exception:
            pass
