"""Memory: conversation history and vector memory (Chroma).

* :class:`ConversationMemory` — per-session history on disk with a token budget (the
  agent's ``history``).
* :class:`RedisHistory` — the same on a Redis server, shared by several agent servers
  (async; needs ``omni-agent[redis]``).
* :class:`VectorMemory` — passages in a Chroma collection (embedded or a server), searched
  by meaning with the bundled all-MiniLM-L6-v2 embeddings.
* :func:`ingest` — chunk and store documents (text, markdown, PDF).

Names are imported on first use, so conversation memory alone does not import Chroma.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ConversationMemory",
    "StoredTurn",
    "HistoryError",
    "estimate_tokens",
    "tokenizer_counter",
    "RedisHistory",
    "HistoryStoreDown",
    "VectorMemory",
    "Passage",
    "VectorStoreError",
    "DEFAULT_COLLECTION",
    "MiniLMEmbedding",
    "ingest",
    "IngestReport",
    "IngestError",
    "chunk_text",
    "chunk_markdown",
    "VectorMemoryRetriever",
    "passage_source",
    "default_home",
    "default_data_dir",
]

_WHERE = {
    "ConversationMemory": "conversation",
    "StoredTurn": "conversation",
    "HistoryError": "conversation",
    "estimate_tokens": "conversation",
    "tokenizer_counter": "conversation",
    "RedisHistory": "redis_history",
    "HistoryStoreDown": "redis_history",
    "VectorMemory": "vector",
    "Passage": "vector",
    "VectorStoreError": "vector",
    "DEFAULT_COLLECTION": "vector",
    "MiniLMEmbedding": "embeddings",
    "ingest": "ingest",
    "IngestReport": "ingest",
    "IngestError": "ingest",
    "chunk_text": "ingest",
    "chunk_markdown": "ingest",
    "VectorMemoryRetriever": "interop",
    "passage_source": "interop",
    "default_home": "paths",
    "default_data_dir": "paths",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
