"""Vector memory on Chroma: passages with source and position, searched by meaning.

One class for both kinds of Chroma: an embedded ``PersistentClient`` on a local data
directory (the default) or a Chroma server through ``HttpClient`` (pass ``url``). The code
path is the same; only the client differs.

Embeddings always come from the bundled all-MiniLM-L6-v2 (:class:`MiniLMEmbedding`), passed
to Chroma explicitly on create *and* on reopen: Chroma's own default embedding function
downloads a model at run time and fails offline.

>>> mem = VectorMemory("my-agent")                       # ~/.cache/omni-agent/chroma
>>> mem.upsert(["The Zorblax museum opens at 9:40 am."], metadatas=[{"source": "notes"}])
>>> mem.search("When does the museum open?", k=1)[0].text
'The Zorblax museum opens at 9:40 am.'
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

from omni_agent.errors import ConfigError, OmniAgentError

from .embeddings import MiniLMEmbedding
from .paths import DEFAULT_COLLECTION, default_data_dir, default_home

__all__ = [
    "VectorMemory",
    "Passage",
    "VectorStoreError",
    "DEFAULT_COLLECTION",
    "default_home",
    "default_data_dir",
]


class VectorStoreError(OmniAgentError):
    """The vector store cannot be used: server down, data directory missing or unreadable,
    collection missing. The message says what to do."""


@dataclass(slots=True)
class Passage:
    """One stored passage. ``score`` is cosine similarity to the query (1 = same meaning,
    ~0 = unrelated); ``None`` when the passage was fetched by id rather than searched."""

    text: str
    score: float | None
    source: str
    position: int
    id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def citation(self) -> dict[str, Any]:
        """A small JSON-safe record of where this passage came from (for traces)."""
        c: dict[str, Any] = {"id": self.id, "source": self.source, "position": self.position}
        if self.score is not None:
            c["score"] = round(self.score, 4)
        for key in ("name", "heading", "page"):
            if key in self.metadata:
                c[key] = self.metadata[key]
        return c

    @property
    def label(self) -> str:
        """Short human label: ``name#position`` (file name when known)."""
        name = self.metadata.get("name") or self.source or self.id
        return f"{name}#{self.position}"


def text_id(text: str, namespace: str = "") -> str:
    """A stable id for a text (so re-adding the same text does not duplicate it)."""
    return hashlib.sha1(f"{namespace}\x00{text}".encode()).hexdigest()[:32]


def _settings() -> Any:
    from chromadb.config import Settings

    # Telemetry would try to reach the network; every client in this process must use the
    # same settings (Chroma refuses a second client on a path with different ones).
    return Settings(anonymized_telemetry=False)


def _is_connection_error(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, (httpx.TransportError, ConnectionError)):
        return True
    text = str(exc).lower()
    return "could not connect" in text or "connection refused" in text


class VectorMemory:
    """A Chroma collection of passages for one agent or tenant.

    ``collection``: the name (one per agent or tenant; 3-512 characters of letters,
    digits, ``.``, ``_``, ``-``). ``data_dir``: the embedded store's directory (default
    ``$OMNI_AGENT_HOME/chroma`` or ``~/.cache/omni-agent/chroma``). ``url``: a Chroma server
    (``http://localhost:8000``); when given, ``data_dir`` is ignored. ``create``: make the
    directory and collection if missing (``False`` raises :class:`VectorStoreError` instead,
    which is what readers such as the RAG middleware want). ``embedding``: the embedding
    function (default the bundled MiniLM). ``client``: an already made Chroma client.
    """

    def __init__(
        self,
        collection: str = DEFAULT_COLLECTION,
        *,
        data_dir: str | Path | None = None,
        url: str | None = None,
        create: bool = True,
        embedding: MiniLMEmbedding | None = None,
        client: Any = None,
        tenant: str | None = None,
        database: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        self.collection_name = collection
        self.embedding = embedding or MiniLMEmbedding()
        self.url = url if url is not None else (os.environ.get("OMNI_AGENT_CHROMA_URL") or None)
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self.client = client if client is not None else self._connect(create, tenant, database, headers)
        self.collection = self._open_collection(create)

    # ------------------------------------------------------------------ opening

    @property
    def location(self) -> str:
        """Where the store lives, for messages: the server URL or the data directory."""
        return self.url or str(self.data_dir)

    def _connect(self, create: bool, tenant: str | None, database: str | None,
                 headers: Mapping[str, str] | None) -> Any:
        import chromadb
        from chromadb.config import DEFAULT_DATABASE, DEFAULT_TENANT

        kw = {"tenant": tenant or DEFAULT_TENANT, "database": database or DEFAULT_DATABASE}
        if self.url:
            parts = urlsplit(self.url if "://" in self.url else f"http://{self.url}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"bad Chroma server URL {self.url!r}: use http://HOST:PORT")
            port = parts.port or (443 if parts.scheme == "https" else 8000)
            try:
                return chromadb.HttpClient(host=parts.hostname, port=port, ssl=parts.scheme == "https",
                                           headers=dict(headers or {}), settings=_settings(), **kw)
            except Exception as e:  # noqa: BLE001 - Chroma raises ValueError for a dead server
                raise VectorStoreError(
                    f"cannot reach the Chroma server at {self.url} ({e}). Start one with "
                    "`chroma run --path DIR --port PORT`, or check the URL (--chroma-url / "
                    "OMNI_AGENT_CHROMA_URL).") from e
        d = self.data_dir
        if d.exists() and not d.is_dir():
            raise VectorStoreError(f"the vector memory path {d} is a file, not a directory: "
                                   "pass another --data-dir")
        if not create and d.is_dir() and not (d / "chroma.sqlite3").is_file():
            raise VectorStoreError(
                f"no vector memory at {d} (the directory holds no Chroma store): ingest documents "
                "first (`omni-agent ingest PATH`) or pass the right --data-dir / OMNI_AGENT_HOME")
        if not d.is_dir():
            if not create:
                raise VectorStoreError(
                    f"no vector memory at {d}: ingest documents first (`omni-agent ingest PATH`) "
                    "or pass the right --data-dir / OMNI_AGENT_HOME")
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise VectorStoreError(f"cannot create the vector memory directory {d}: {e}") from e
        try:
            return chromadb.PersistentClient(path=str(d), settings=_settings(), **kw)
        except Exception as e:  # noqa: BLE001 - a corrupt or unreadable store
            raise VectorStoreError(f"cannot open the vector memory at {d} ({type(e).__name__}: {e}). "
                                   "If the directory is damaged, move it aside and ingest again.") from e

    def _open_collection(self, create: bool) -> Any:
        from chromadb.errors import InvalidArgumentError, NotFoundError

        name = self.collection_name
        try:
            with self._guard(f"opening collection {name!r}"):
                if create:
                    return self.client.get_or_create_collection(
                        name, embedding_function=self.embedding,
                        configuration={"hnsw": {"space": "cosine"}})
                return self.client.get_collection(name, embedding_function=self.embedding)
        except VectorStoreError as e:
            cause = e.__cause__
            if isinstance(cause, InvalidArgumentError):
                raise ConfigError(f"bad collection name {name!r}: use 3-512 letters, digits, '.', "
                                  "'_' or '-', starting and ending with a letter or digit") from cause
            if not isinstance(cause, NotFoundError):
                raise
        except ValueError as e:  # older Chroma: "Collection x does not exist"
            if "not exist" not in str(e):
                raise
        names = self.list_collections(self.client)
        known = ", ".join(names) if names else "none yet"
        raise VectorStoreError(
            f"no collection {name!r} in the vector memory at {self.location} (collections: "
            f"{known}). Ingest documents into it first: omni-agent ingest PATH --collection {name}")

    @staticmethod
    def list_collections(client: Any) -> list[str]:
        """Names of the collections a Chroma client holds."""
        cols = client.list_collections()
        return sorted(c if isinstance(c, str) else c.name for c in cols)

    @classmethod
    def exists(cls, collection: str = DEFAULT_COLLECTION, *, data_dir: str | Path | None = None,
               url: str | None = None) -> bool:
        """True when ``collection`` exists and holds passages. Loads no model, creates nothing;
        any failure (no directory, server down) reads as ``False``."""
        url = url if url is not None else (os.environ.get("OMNI_AGENT_CHROMA_URL") or None)
        d = Path(data_dir).expanduser() if data_dir else default_data_dir()
        if not url and not (d / "chroma.sqlite3").is_file():
            return False  # cheap check first: no store there, don't even import chromadb
        try:
            mem = cls(collection, data_dir=d, url=url, create=False)
            return mem.count() > 0
        except OmniAgentError:
            return False

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn Chroma and connection failures into VectorStoreError naming the store."""
        try:
            yield
        except (OmniAgentError, NotImplementedError):
            raise
        except Exception as e:  # noqa: BLE001 - re-raised as ours
            from chromadb.errors import NotFoundError

            if self.url and _is_connection_error(e):
                raise VectorStoreError(
                    f"the Chroma server at {self.url} is not reachable while {what} ({e}); "
                    "start it again (`chroma run --path DIR --port PORT`). Passages already "
                    "stored there are kept by the server.") from e
            if isinstance(e, NotFoundError):
                raise VectorStoreError(f"{what}: the collection {self.collection_name!r} is gone from "
                                       f"{self.location} (deleted by someone else?)") from e
            if isinstance(e, (ValueError, TypeError)):
                raise  # a bad argument (e.g. a malformed where filter): Chroma's message says which
            raise VectorStoreError(f"{what} failed on {self.location}: {type(e).__name__}: {e}") from e

    # ------------------------------------------------------------------ writing

    def upsert(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        embeddings: Sequence[Sequence[float]] | None = None,
    ) -> list[str]:
        """Add or replace passages; returns their ids.

        Without ``ids`` each text gets a stable id from its content and source, so
        upserting the same text again replaces it instead of duplicating it. Metadata values
        must be str, int, float or bool (``None`` values are left out); ``source`` and
        ``position`` are what search results and citations report.
        """
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"{len(metadatas)} metadatas for {len(texts)} texts")
        if ids is not None and len(ids) != len(texts):
            raise ValueError(f"{len(ids)} ids for {len(texts)} texts")
        metas = [_clean_meta(m) for m in (metadatas or [None] * len(texts))]
        out_ids = list(ids) if ids is not None else [
            text_id(t, str(m.get("source", ""))) for t, m in zip(texts, metas)]
        if not texts:
            return out_ids
        # Given, or computed here (numpy rows): both are sequences of vectors.
        vectors: Sequence[Any] = embeddings if embeddings is not None else self.embedding(texts)
        step = self._max_batch()
        for i in range(0, len(texts), step):
            with self._guard("storing passages"):
                self.collection.upsert(ids=out_ids[i:i + step], documents=texts[i:i + step],
                                       metadatas=[m or None for m in metas[i:i + step]],
                                       embeddings=list(vectors[i:i + step]))
        return out_ids

    add = upsert  # adding is idempotent here: same id, same passage

    def delete(self, ids: Sequence[str] | None = None, *, where: Mapping[str, Any] | None = None) -> None:
        """Delete passages by id and/or metadata filter (e.g. ``where={"source": path}``)."""
        if not ids and not where:
            raise ValueError("delete needs ids or a where filter (use drop() to delete everything)")
        with self._guard("deleting passages"):
            self.collection.delete(ids=list(ids) if ids else None, where=dict(where) if where else None)

    def drop(self) -> None:
        """Delete the whole collection (this memory cannot be used afterwards)."""
        with self._guard(f"deleting collection {self.collection_name!r}"):
            self.client.delete_collection(self.collection_name)

    # ------------------------------------------------------------------ reading

    def count(self) -> int:
        """How many passages the collection holds."""
        with self._guard("counting passages"):
            return int(self.collection.count())

    def get(self, ids: Sequence[str] | None = None, *, where: Mapping[str, Any] | None = None,
            limit: int | None = None) -> list[Passage]:
        """Fetch passages by id and/or metadata filter (``score`` is None)."""
        with self._guard("reading passages"):
            res = self.collection.get(ids=list(ids) if ids else None, where=dict(where) if where else None,
                                      limit=limit, include=["documents", "metadatas"])
        return [_passage(i, d, m, None) for i, d, m in
                zip(res["ids"], res["documents"] or [], res["metadatas"] or [])]

    def metadata_by_id(self, *, where: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """``{id: metadata}`` of the passages matching ``where`` (no text; for ingest)."""
        with self._guard("reading passage metadata"):
            res = self.collection.get(where=dict(where), include=["metadatas"])
        return {i: dict(m or {}) for i, m in zip(res["ids"], res["metadatas"] or [])}

    def search(
        self,
        query: str,
        k: int = 4,
        *,
        where: Mapping[str, Any] | None = None,
        where_document: Mapping[str, Any] | None = None,
        min_score: float | None = None,
    ) -> list[Passage]:
        """The ``k`` passages closest in meaning to ``query``, best first.

        ``where`` filters on metadata (Chroma syntax: ``{"source": "a.md"}``,
        ``{"position": {"$lt": 3}}``); ``min_score`` drops passages whose cosine similarity
        is below it. This is also the API behind the ``memory_search`` tool.
        """
        if k < 1 or not query or not query.strip():
            return []
        vec = self.embedding.embed_one(query)
        with self._guard("searching"):
            res = self.collection.query(query_embeddings=[vec], n_results=k,
                                        where=dict(where) if where else None,
                                        where_document=dict(where_document) if where_document else None,
                                        include=["documents", "metadatas", "distances"])
        out = [_passage(i, d, m, 1.0 - float(dist)) for i, d, m, dist in
               zip(res["ids"][0], (res["documents"] or [[]])[0], (res["metadatas"] or [[]])[0],
                   (res["distances"] or [[]])[0])]
        if min_score is not None:
            out = [p for p in out if p.score is not None and p.score >= min_score]
        return out

    def timed_search(self, query: str, k: int = 4, **kw: Any) -> tuple[list[Passage], float]:
        """:meth:`search` and the seconds it took (query embedding included)."""
        t0 = perf_counter()
        out = self.search(query, k, **kw)
        return out, perf_counter() - t0

    def as_retriever(self, k: int = 4, *, where: Mapping[str, Any] | None = None,
                     min_score: float | None = None) -> Any:
        """This memory as a langchain-core ``BaseRetriever`` (needs langchain-core)."""
        from .interop import VectorMemoryRetriever

        return VectorMemoryRetriever(memory=self, k=k, where=dict(where) if where else None,
                                     min_score=min_score)

    # ------------------------------------------------------------------ internals

    def _max_batch(self) -> int:
        try:
            return max(1, int(self.client.get_max_batch_size()))
        except Exception:  # noqa: BLE001 - older servers: a safe size
            return 1000

    def __repr__(self) -> str:
        return f"VectorMemory({self.collection_name!r}, at={self.location!r})"


def _clean_meta(m: Mapping[str, Any] | None) -> dict[str, Any]:
    if not m:
        return {}
    out = {}
    for key, v in m.items():
        if v is None:
            continue
        if not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"metadata {key!r} must be str, int, float or bool, not {type(v).__name__}")
        out[str(key)] = v
    return out


def _passage(pid: str, doc: str | None, meta: Mapping[str, Any] | None, score: float | None) -> Passage:
    m = dict(meta or {})
    pos = m.get("position", 0)
    return Passage(text=doc or "", score=score, source=str(m.get("source", "")),
                   position=int(pos) if isinstance(pos, (int, float)) else 0, id=pid, metadata=m)
