"""Retrieval over Q/A pairs: embedder, LanceDB store (upsert, vector / full-text / hybrid search), metrics.

Library code: no dagster import; torch and lancedb load on first use.
"""

from .embedder import DEFAULT_KEY, DEFAULT_MODEL, KEYS, Embedder, build_key_text, packaged_minilm_path
from .metrics import EvalResult, evaluate, mrr_at_k, queries_from_pairs, success_at_k
from .search import DEFAULT_K, DEFAULT_MODE, MODES, SEARCH_K, Hit, fuse
from .store import ANN_MIN_ROWS, LONG_TEXT_BY_KEY, QAStore, UpsertStats, open_store, table_name

__all__ = [
    "ANN_MIN_ROWS", "DEFAULT_K", "DEFAULT_KEY", "DEFAULT_MODE", "SEARCH_K", "DEFAULT_MODEL", "KEYS", "LONG_TEXT_BY_KEY", "MODES",
    "EvalResult", "Embedder", "Hit", "QAStore", "UpsertStats", "build_key_text", "evaluate", "fuse", "mrr_at_k",
    "open_store", "packaged_minilm_path", "queries_from_pairs", "success_at_k", "table_name",
]
