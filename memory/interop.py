"""LangChain interop, both ways.

* :class:`VectorMemoryRetriever` — our :class:`~omni_agent.memory.vector.VectorMemory` as a
  langchain-core ``BaseRetriever`` (``memory.as_retriever(k=4)``), for LangChain chains.
* :func:`passage_source` — anything that retrieves (a ``VectorMemory``, a langchain-core
  ``BaseRetriever``, or a plain function ``(query, k) -> passages``) as one async callable,
  which is what the RAG middleware calls.

langchain-core is imported only here, and only when used.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import Any, Awaitable, Callable

from .vector import Passage, VectorMemory

__all__ = ["VectorMemoryRetriever", "passage_source", "passages_from_documents", "PassageSource"]

PassageSource = Callable[[str, int], Awaitable[list[Passage]]]

_SCORE_KEYS = ("score", "relevance_score", "similarity")


def _base_retriever() -> type:
    try:
        from langchain_core.retrievers import BaseRetriever
    except ImportError as e:  # pragma: no cover - langchain-core is in the dev/tools extras
        raise ImportError("LangChain interop needs langchain-core: pip install 'omni-agent[tools]'") from e
    return BaseRetriever


def passages_from_documents(docs: list[Any]) -> list[Passage]:
    """LangChain ``Document`` objects as passages. A score is read from the metadata keys
    ``score``, ``relevance_score`` or ``similarity`` when the retriever put one there;
    otherwise it is None (and a score threshold cannot apply)."""
    out = []
    for i, d in enumerate(docs):
        meta = dict(getattr(d, "metadata", None) or {})
        score = next((float(meta[k]) for k in _SCORE_KEYS if isinstance(meta.get(k), (int, float))), None)
        pos = meta.get("position", i)
        out.append(Passage(
            text=getattr(d, "page_content", str(d)),
            score=score,
            source=str(meta.get("source", "")),
            position=int(pos) if isinstance(pos, (int, float)) else i,
            id=str(getattr(d, "id", None) or meta.get("id") or f"doc-{i}"),
            metadata=meta,
        ))
    return out


def _make_retriever_class() -> type:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from pydantic import ConfigDict

    BaseRetriever = _base_retriever()

    class VectorMemoryRetriever(BaseRetriever):  # type: ignore[misc, valid-type]
        """A :class:`VectorMemory` as a langchain-core retriever.

        Each document's metadata carries the passage's own metadata plus ``id``,
        ``source``, ``position`` and ``score`` (cosine similarity).

        >>> docs = memory.as_retriever(k=2).invoke("When does the museum open?")
        """

        model_config = ConfigDict(arbitrary_types_allowed=True)

        memory: VectorMemory
        k: int = 4
        where: dict[str, Any] | None = None
        min_score: float | None = None

        def _get_relevant_documents(self, query: str, *,
                                    run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
            passages = self.memory.search(query, self.k, where=self.where, min_score=self.min_score)
            return [Document(page_content=p.text, id=p.id,
                             metadata={**p.metadata, "id": p.id, "source": p.source,
                                       "position": p.position, "score": p.score})
                    for p in passages]

        async def _aget_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
            # The search is CPU work (query embedding) plus a local index lookup: off the loop.
            return await asyncio.to_thread(self._get_relevant_documents, query, run_manager=run_manager)

    VectorMemoryRetriever.__qualname__ = "VectorMemoryRetriever"
    VectorMemoryRetriever.__module__ = __name__
    return VectorMemoryRetriever


_cls: type | None = None
VectorMemoryRetriever: type  # made on first access by __getattr__ below


def __getattr__(name: str) -> Any:
    # The class is built on first use so importing this module does not import LangChain.
    global _cls
    if name == "VectorMemoryRetriever":
        if _cls is None:
            _cls = _make_retriever_class()
        return _cls
    raise AttributeError(name)


def _is_langchain_retriever(obj: Any) -> bool:
    if "langchain_core" not in sys.modules and "langchain_core.retrievers" not in sys.modules:
        return False  # nobody imported LangChain, so obj cannot be one of its retrievers
    return isinstance(obj, _base_retriever())


def passage_source(obj: Any) -> PassageSource:
    """Adapt a retriever to ``async (query, k) -> list[Passage]``.

    Accepts a :class:`VectorMemory` (searched off the event loop), a langchain-core
    ``BaseRetriever`` (its own ``k`` applies; the list is cut to ``k``), or a function
    ``(query, k)`` returning passages or LangChain documents, sync or async.
    """
    if isinstance(obj, VectorMemory):
        mem = obj

        async def from_memory(query: str, k: int) -> list[Passage]:
            return await asyncio.to_thread(mem.search, query, k)

        return from_memory
    if _is_langchain_retriever(obj):
        retriever = obj

        async def from_langchain(query: str, k: int) -> list[Passage]:
            docs = await retriever.ainvoke(query)
            return passages_from_documents(list(docs)[:k])

        return from_langchain
    if callable(obj):
        fn = obj

        async def from_function(query: str, k: int) -> list[Passage]:
            if inspect.iscoroutinefunction(fn):
                res = await fn(query, k)
            else:
                res = await asyncio.to_thread(fn, query, k)
                if inspect.isawaitable(res):
                    res = await res
            res = list(res or [])
            if res and not isinstance(res[0], Passage):
                res = passages_from_documents(res)
            return res[:k]

        return from_function
    raise TypeError(f"{obj!r} cannot retrieve: pass a VectorMemory, a langchain-core BaseRetriever "
                    "or a function (query, k) -> passages")
