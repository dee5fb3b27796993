"""RAG: retrieve passages for the user's turn and give them to the Thinker as untrusted data.

::

    agent = Agent(thinker=..., middleware=[RAG(k=3)])            # the default collection
    agent = Agent(thinker=..., middleware=[RAG(VectorMemory("acme-support"), min_score=0.4)])
    agent = Agent(thinker=..., middleware=[RAG(my_langchain_retriever)])

On the input hook the middleware retrieves the top ``k`` passages for the turn's text and
adds those scoring at least ``min_score`` as :class:`~omni_agent.events.Context` items
(``untrusted=True``, one per passage, with its citation). The agent renders them
(:func:`omni_agent.context.render_context`, re-exported here) inside clear delimiters and a
warning that their content is data, not instructions, with their markup made inert
(:func:`make_inert`, also the core's: tool-call and reasoning markup in any spelling, tags and
chat-template tokens are escaped). When no passage reaches ``min_score`` nothing is added and
the trace says so (a greeting does not drag in random documents).

Citations go into the trace (``trace.citations``) and, at the end of the answer, into the
display text as a display-only utterance (``Sources: museum.md#0``) that is never spoken.
"""

from __future__ import annotations

import os
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable, Mapping

from omni_agent.bus import Middleware, RoundEnd, TurnContext
from omni_agent.context import UNTRUSTED_NOTICE, make_inert, render_context
from omni_agent.events import Context, ErrorEvent, Event, ToolCall, UserTurn, Utterance
from omni_agent.memory.paths import DEFAULT_COLLECTION, default_data_dir

from .injection import looks_like_injection

if TYPE_CHECKING:
    from omni_agent.memory.vector import Passage

__all__ = ["RAG", "render_context", "make_inert", "format_citations", "default_rag", "default_rag_config",
           "UNTRUSTED_NOTICE", "looks_like_injection"]


def format_citations(citations: Iterable[Mapping[str, Any]]) -> str:
    """``Sources: museum.md#0, museum.md#2`` — one short line for the display text."""
    seen: list[str] = []
    for c in citations:
        name = c.get("name") or (Path(str(c.get("source", ""))).name if c.get("source") else c.get("id", "?"))
        label = f"{name}#{c.get('position', 0)}" if "position" in c else str(name)
        if label not in seen:
            seen.append(label)
    return "Sources: " + ", ".join(seen) if seen else ""


class RAG(Middleware):
    """Retrieval-augmented generation as an input middleware.

    * ``retriever`` — a :class:`VectorMemory`, a langchain-core ``BaseRetriever``, or a
      function ``(query, k) -> passages`` (sync or async). Default: the vector memory
      ``collection`` at ``data_dir`` (or the Chroma server at ``url``), which must exist.
    * ``k`` — passages retrieved per turn; ``min_score`` — cosine similarity below which a
      passage is not used (when none reaches it, retrieval is skipped for the turn);
      a passage with no score (some LangChain retrievers) is always used.
    * ``where`` — a metadata filter for the default vector memory.
    * ``max_chars`` — cap on the retrieved text added per turn (small models have short
      context windows); passages are taken best first.
    * ``cite_in_display`` — add ``Sources: ...`` to the display text (never spoken).
    * ``drop_suspicious`` — leave out passages that look like prompt injections instead
      of only flagging them in the trace.
    """

    name = "rag"

    def __init__(
        self,
        retriever: Any = None,
        *,
        collection: str = DEFAULT_COLLECTION,
        data_dir: str | Path | None = None,
        url: str | None = None,
        k: int = 3,
        min_score: float = 0.3,
        where: Mapping[str, Any] | None = None,
        max_chars: int = 2000,
        cite_in_display: bool = True,
        drop_suspicious: bool = False,
        name: str | None = None,
        timeout: float | None = None,
    ):
        super().__init__(name=name, timeout=timeout)
        # Imported here: Chroma is a ~1 s import that an agent without RAG should not pay.
        from omni_agent.memory.interop import passage_source
        from omni_agent.memory.vector import VectorMemory

        if retriever is None:
            retriever = VectorMemory(collection, data_dir=data_dir, url=url, create=False)
        self.retriever = retriever
        if isinstance(retriever, VectorMemory) and where:
            mem, flt = retriever, dict(where)

            def filtered(query: str, k: int) -> list[Passage]:
                return mem.search(query, k, where=flt)

            self._source = passage_source(filtered)
        else:
            self._source = passage_source(retriever)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        self.k = k
        self.min_score = min_score
        self.max_chars = max_chars
        self.cite_in_display = cite_in_display
        self.drop_suspicious = drop_suspicious

    def warm_up(self, agent: Any = None) -> bool:
        """Load the embedding model now rather than on the first turn (``Agent.warm_up``
        calls this). Returns True when something was loaded."""
        load = getattr(getattr(self.retriever, "embedding", None), "load", None)
        if not callable(load):
            return False
        load()
        return True

    async def retrieve(self, query: str) -> list[Passage]:
        """The top ``k`` passages for ``query`` (no threshold applied), best first."""
        return await self._source(query, self.k)

    async def on_input(self, turn: UserTurn, ctx: TurnContext) -> UserTurn:
        query = turn.text.strip()
        if not query:
            return turn
        t0 = perf_counter()
        try:
            passages = await self.retrieve(query)
        except Exception as e:  # noqa: BLE001 - a failed lookup must not cost the user the turn
            # Fail open: retrieval only adds information, so the turn goes on without it.
            msg = f"{type(e).__name__}: {e}"
            ctx.trace.record(self.label, "input", "error", None, None,
                             f"retrieval failed, the turn goes on without documents ({msg})")
            ctx.trace.error(f"middleware:{self.label}", msg)
            ctx.emit(ErrorEvent(message=f"document retrieval failed ({msg}); answering without "
                                "documents", stage=f"middleware:{self.label}"))
            return turn
        ctx.trace.add_time(f"rag:{self.label}", perf_counter() - t0)
        used = [p for p in passages if p.score is None or p.score >= self.min_score]
        if not used:
            best = max((p.score for p in passages if p.score is not None), default=None)
            why = (f"no passage reached min_score {self.min_score} (best {best:.2f})"
                   if best is not None else "no passage found")
            ctx.trace.record(self.label, "input", "skip", None, None, f"retrieval skipped: {why}")
            return turn
        chosen: list[Passage] = []
        total = 0
        for p in used:
            if looks_like_injection(p.text):
                action = "left out" if self.drop_suspicious else "kept as untrusted data"
                ctx.trace.record(self.label, "input", "flag", None, p.label,
                                 f"passage {p.label} reads like instructions to the model; {action}")
                if self.drop_suspicious:
                    continue
            if chosen and total + len(p.text) > self.max_chars:
                break
            chosen.append(p)
            total += len(p.text)
        if not chosen:
            return turn
        for p in chosen:
            # The passage's own text: the agent's rendering (omni_agent.context.render_context)
            # makes it inert, markup grammar and delimiters both, as it does any untrusted context.
            ctx.add_context(Context(text=p.text, source=p.label, untrusted=True, citations=[p.citation()]))
        listed = ", ".join(f"{p.label} ({p.score:.2f})" if p.score is not None else p.label for p in chosen)
        ctx.trace.record(self.label, "input", "add", None, listed,
                         f"{len(chosen)} passage(s) added as untrusted context")
        ctx.state[self._key] = [p.citation() for p in chosen]
        return turn

    @property
    def _key(self) -> str:
        return f"rag:{self.label}:citations"

    async def stream(self, events: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        """Pass everything through; after the answer's last round, add the sources line
        to the display as an utterance with no spoken text."""
        tool_round = False
        async for ev in events:
            yield ev
            t = type(ev)
            if t is ToolCall:
                tool_round = True
            elif t is RoundEnd:
                # A round that called tools (or asked for another round) is not the answer.
                final = not tool_round and not ctx.has_followup
                tool_round = False
                cites = ctx.state.get(self._key)
                if final and cites and self.cite_in_display:
                    ctx.state.pop(self._key, None)
                    line = format_citations(cites)
                    yield Utterance(text="", display=f"[{line}]", original="",
                                    session_id=ctx.session_id, turn_id=ctx.turn_id)


def default_rag_config(collection: str = DEFAULT_COLLECTION, *, data_dir: str | Path | None = None,
                       url: str | None = None) -> dict[str, Any] | None:
    """``{"use": "rag", ...}`` for an agent config when the collection exists and holds
    passages (after ``omni-agent ingest``), else None. Loads no model, and imports no
    Chroma when there is no store at all (so an agent without documents starts fast)."""
    if url is None and not os.environ.get("OMNI_AGENT_CHROMA_URL"):
        d = Path(data_dir).expanduser() if data_dir else default_data_dir()
        if not (d / "chroma.sqlite3").is_file():
            return None
    from omni_agent.memory.vector import VectorMemory

    if not VectorMemory.exists(collection, data_dir=data_dir, url=url):
        return None
    cfg: dict[str, Any] = {"use": "rag"}
    if collection != DEFAULT_COLLECTION:
        cfg["collection"] = collection
    if data_dir is not None:
        cfg["data_dir"] = str(data_dir)
    if url is not None:
        cfg["url"] = url
    return cfg


def default_rag(collection: str = DEFAULT_COLLECTION, *, data_dir: str | Path | None = None,
                url: str | None = None, **options: Any) -> RAG | None:
    """A :class:`RAG` over the collection when it exists and holds passages, else None."""
    if default_rag_config(collection, data_dir=data_dir, url=url) is None:
        return None
    return RAG(collection=collection, data_dir=data_dir, url=url, **options)
