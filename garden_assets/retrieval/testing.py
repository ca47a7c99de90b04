"""Test helpers (for this package's tests and the Dagster-layer tests): a tiny ``qa_pairs`` frame, embedder doubles."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

QA = [
    # question_id, answer_id, title, question text, answer text
    (1, 11, "How deep do I plant garlic?", "I have a few bulbs from the market.",
     "Plant each clove about 5 cm deep with the pointy end up, in autumn, 15 cm apart."),
    (1, 12, "How deep do I plant garlic?", "I have a few bulbs from the market.",
     "Two knuckles deep is plenty; cover with straw mulch over winter."),
    (2, 21, "Why are my tomato leaves turning yellow?", "Lower leaves go yellow first, then brown.",
     "Yellow lower leaves on tomatoes usually mean nitrogen deficiency or early blight; remove them and feed."),
    (3, 31, "When should I prune roses?", "Climbing roses on a south wall.",
     "Prune roses in late winter or early spring, just as buds swell, cutting above an outward-facing bud."),
    (4, 41, "How often should I water succulents?", "Indoor pots by a window.",
     "Water succulents only when the soil is completely dry, roughly every two weeks; drainage matters most."),
    (5, 51, "Can I compost citrus peels?", "Worried about acidity in the bin.",
     "Yes, citrus peels compost fine in a hot heap; chop them small. Keep them out of a worm bin."),
    (6, 61, "What kills aphids on beans naturally?", "Broad beans covered in black fly.",
     "Pinch out the tips where black aphids cluster and spray with soapy water; ladybirds do the rest."),
    (6, 62, "What kills aphids on beans naturally?", "Broad beans covered in black fly.",
     "Plant nasturtiums nearby as a sacrificial crop and encourage hoverflies."),
]


def pair_hash(*parts: str) -> str:
    """A stand-in for qa_pairs' content_hash column (any stable digest of the texts will do in tests)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def sample_pairs(rows=QA) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "site": ["gardening.stackexchange.com"] * len(rows),
            "question_id": [r[0] for r in rows],
            "answer_id": [r[1] for r in rows],
            "instruction": [r[2] for r in rows],
            "context": [r[3] for r in rows],
            "response": [r[4] for r in rows],
            "category": ["closed_qa"] * len(rows),
            "is_accepted": [r[1] % 10 == 1 for r in rows],
            "question_score": [5] * len(rows),
            "answer_score": [3] * len(rows),
            "tags": [["garden"]] * len(rows),
            "source_url": [f"https://gardening.stackexchange.com/a/{r[1]}" for r in rows],
            "content_hash": [pair_hash(r[2], r[3], r[4]) for r in rows],
        },
        schema_overrides={"question_id": pl.Int64, "answer_id": pl.Int64, "question_score": pl.Int64,
                          "answer_score": pl.Int64},
    )


def edit_pair(pairs: pl.DataFrame, answer_id: int, **changes: str) -> pl.DataFrame:
    """Change text columns of one row and refresh its content_hash, as build_pairs would."""
    out = pairs.with_columns(
        *[pl.when(pl.col("answer_id") == answer_id).then(pl.lit(v)).otherwise(pl.col(c)).alias(c)
          for c, v in changes.items()])
    return out.with_columns(
        pl.struct("instruction", "context", "response")
        .map_elements(lambda s: pair_hash(s["instruction"], s["context"], s["response"]), return_dtype=pl.String)
        .alias("content_hash"))


class CountingEmbedder:
    """Wraps an embedder and records every text it embeds."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.dimension = inner.dimension
        self.index_id = inner.index_id
        self.seen: list[str] = []

    def embed(self, texts, *, progress=None):
        self.seen += list(texts)
        return self.inner.embed(texts, progress=progress)

    def embed_query(self, text):
        return self.inner.embed_query(text)


class HashEmbedder:
    """Deterministic pseudo-embeddings from a text hash: for index mechanics, not semantics."""

    def __init__(self, dimension: int = 32, name: str = "hash-embedder") -> None:
        self.dimension = dimension
        self.model_name = name
        self.index_id = name

    def embed(self, texts, *, progress=None):
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha1(t.encode()).digest()[:8], "little")
            out[i] = np.random.default_rng(seed).standard_normal(self.dimension)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    def embed_query(self, text):
        return self.embed([text])[0]
