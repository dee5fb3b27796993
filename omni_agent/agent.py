"""The agent: a Thinker, the bus, optionally a Talker, and per-session conversation state.

::

    agent = Agent(thinker=ScriptedThinker("Hi there."), middleware=[MyFilter()])
    session = agent.session()
    print(session.ask("hello").text)          # a script
    async for event in session.run("hello"):  # a live app
        ...

A turn flows: input hooks -> Thinker rounds -> event hooks / stream middleware ->
segmenter -> utterance hooks -> Talker -> audio hooks. The Thinker side and the Talker
run as two tasks joined by a bounded queue, so the Talker starts on the first approved
clause while the Thinker is still generating, and a slow Talker slows the Thinker down
instead of letting memory grow. Each stage is a method a subclass may override
(``build_request``, ``render_contexts``, ``make_segmenter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from dataclasses import dataclass
from time import monotonic
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import anyio

from . import otel as _otel
from .bus import Bus, Middleware, RoundEnd, RoundOptions, TurnContext
from .errors import OmniAgentError, UnsupportedInputError
from .events import (
    AudioChunk,
    AudioPart,
    ErrorEvent,
    Event,
    Finish,
    Interruption,
    ReasoningDelta,
    TextDelta,
    TextPart,
    ToolCall,
    ToolResult,
    TurnEnd,
    UserTurn,
    Utterance,
)
from .history import AsyncHistory, History, HistoryCalls, HistoryUnavailable
from .talker import Talker
from .tasks import task_group
from .thinker import GenerationSettings, Message, Thinker, ThinkerRequest
from .trace import Segment, Trace

__all__ = ["Agent", "Session", "TurnResult", "InMemoryHistory"]

log = logging.getLogger(__name__)


class InMemoryHistory:
    """Conversation history kept in process (the default). See ``omni_agent.memory`` for
    a persistent history with a token budget, and ``RedisHistory`` for one shared by
    several agent servers.

    It has both shapes of :mod:`omni_agent.history`: the sync methods for scripts, and
    async ones the agent awaits inline — a dict needs no worker thread (the bus is
    measured in microseconds; a thread hop costs tens of them)."""

    def __init__(self, max_messages: int = 200):
        self.max_messages = max_messages
        self._by_session: dict[str, list[Message]] = {}

    def load(self, session_id: str) -> list[Message]:
        return list(self._by_session.get(session_id, ()))

    def save_turn(self, session_id: str, messages: list[Message], *, interrupted: bool = False) -> None:
        msgs = self._by_session.setdefault(session_id, [])
        msgs.extend(messages)
        del msgs[: max(0, len(msgs) - self.max_messages)]

    def forget(self, session_id: str) -> None:
        """Delete the session's history."""
        self._by_session.pop(session_id, None)

    def revise_last_reply(self, session_id: str, text: str) -> bool:
        """Replace the text of the session's last assistant reply (barge-in: keep only
        what the user heard). Returns False when there is no reply to revise."""
        msgs = self._by_session.get(session_id) or []
        for i in range(len(msgs) - 1, -1, -1):
            m = msgs[i]
            if m.role == "assistant" and not m.tool_calls:
                msgs[i] = Message("assistant", text)
                return True
        return False

    async def aload(self, session_id: str) -> list[Message]:
        return self.load(session_id)

    async def asave_turn(self, session_id: str, messages: list[Message], *, interrupted: bool = False) -> None:
        self.save_turn(session_id, messages, interrupted=interrupted)

    async def aforget(self, session_id: str) -> None:
        self.forget(session_id)

    async def arevise_last_reply(self, session_id: str, text: str) -> bool:
        return self.revise_last_reply(session_id, text)


@dataclass
class TurnResult:
    """Everything one turn produced."""

    text: str
    spoken: str
    reason: str
    events: list[Event]
    trace: Trace
    audio: bytes = b""
    sample_rate: int | None = None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self.trace.tool_calls

    @property
    def utterances(self) -> list[Utterance]:
        return [e for e in self.events if isinstance(e, Utterance)]

    @property
    def errors(self) -> list[ErrorEvent]:
        return [e for e in self.events if isinstance(e, ErrorEvent)]


class Agent:
    """An agent: ``Agent(thinker=..., talker=None, middleware=[...], tools=[...])``.

    * ``middleware`` — Middleware instances, classes or plain functions (utterance hooks),
      in order.
    * ``tools`` — typed functions decorated with ``@tool`` (or a ToolRegistry); the tool
      middleware is then put first in the chain.
    * ``fallback`` — spoken (and shown) instead of a clause a middleware blocked.
    * ``keep_originals`` — False keeps the text before each intervention out of the trace.
    * ``display`` — "auto": clause by clause (approved utterances) when any utterance
      middleware is present, else token by token; or force "clause" / "stream".
    * ``ears`` — speech recognition for audio turns when the Thinker cannot hear.
    * ``history`` — conversation memory (``load``/``save_turn``, or async
      ``aload``/``asave_turn``: see :mod:`omni_agent.history`); in-process by default.
    """

    def __init__(
        self,
        thinker: Thinker,
        *,
        talker: Talker | None = None,
        middleware: Iterable[Any] = (),
        tools: Any = None,
        system_prompt: str | None = None,
        fallback: str | None = "Sorry, I can't say that.",
        keep_originals: bool = True,
        display: str = "auto",
        ears: Any = None,
        history: History | AsyncHistory | None = None,
        settings: GenerationSettings | None = None,
        max_rounds: int = 6,
        talker_buffer: int = 4,
        out_buffer: int = 64,
        lang: str | None = None,
        segmenter: Callable[[], Any] | None = None,
    ):
        if thinker is None:
            raise OmniAgentError("Agent needs a thinker, e.g. Agent(thinker=TransformersThinker.default())")
        if display not in ("auto", "clause", "stream"):
            raise OmniAgentError(f"display must be 'auto', 'clause' or 'stream', not {display!r}")
        self.thinker = thinker
        self.talker = talker
        self.system_prompt = system_prompt
        self.fallback = fallback
        self.keep_originals = keep_originals
        self.ears = ears
        self.history = history  # the setter below: None is the in-process default
        self.settings = settings or GenerationSettings()
        self.max_rounds = max_rounds
        self.talker_buffer = talker_buffer
        self.out_buffer = out_buffer
        self.lang = lang
        self._segmenter_factory = segmenter
        chain = list(middleware)
        self.tools = None
        if tools is not None and tools != []:
            from .tools import ToolRegistry
            from .middleware.tool_calling import ToolCalling

            self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
            if not any(isinstance(m, ToolCalling) for m in chain):
                chain.insert(0, ToolCalling(self.tools))
        self.bus = Bus(chain)
        # Redacting middleware (PII) filter tool arguments and results too, wherever they are
        # shown (client events, the trace) or remembered — not only the spoken clauses.
        self._show_redact: list[Callable[[str], str]] = []
        self._keep_redact: list[Callable[[str], str]] = []
        for mw in self.bus.middleware:
            redact = getattr(mw, "redact_json", None) or getattr(mw, "redact_text", None)
            if not callable(redact):
                continue
            if getattr(mw, "display", True) or not keep_originals:
                self._show_redact.append(redact)
            if getattr(mw, "memory", True):
                self._keep_redact.append(redact)
        self.display = display if display != "auto" else ("clause" if self.bus.utterance_hooks else "stream")
        self._sessions: dict[str, Session] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # The services' task group while the agent is entered (``async with agent``), and
        # the task that enters it for sync ``ask()`` (see _start_host).
        self._entered = 0
        self._services: tuple[contextlib.AsyncExitStack, Any] | None = None
        self._host: tuple[asyncio.Task[None], asyncio.Event] | None = None

    @property
    def middleware(self) -> list[Middleware]:
        return self.bus.middleware

    @property
    def history(self) -> History | AsyncHistory:
        """The conversation store; assigning one (None: a fresh :class:`InMemoryHistory`)
        also decides, once, how the agent calls it (see :class:`~omni_agent.history.HistoryCalls`)."""
        return self._history

    @history.setter
    def history(self, store: History | AsyncHistory | None) -> None:
        self._history = store if store is not None else InMemoryHistory()
        self._history_calls = HistoryCalls(self._history)

    @classmethod
    def from_config(cls, config: Any) -> "Agent":
        """Build an agent from a TOML file path, TOML text or a dict (see docs/config)."""
        from .config import build_agent, load_config

        return build_agent(load_config(config))

    # ------------------------------------------------------------------ sessions

    def session(self, session_id: str | None = None) -> "Session":
        """The session with this id (created on first use; a fresh id when None)."""
        sid = session_id or uuid.uuid4().hex[:12]
        s = self._sessions.get(sid)
        if s is None:
            s = self._sessions[sid] = Session(self, sid)
        return s

    def ask(self, text: str | UserTurn, session_id: str = "default") -> TurnResult:
        """One turn, synchronously, on the ``default`` session (for scripts)."""
        return self.session(session_id).ask(text)

    def close_session(self, session_id: str, *, forget: bool = False) -> None:
        """Drop the Session object (its running turn is interrupted). Its history stays in
        ``agent.history`` so ``session(session_id)`` resumes the conversation, unless
        ``forget`` is True and the history backend has ``forget(session_id)``."""
        s = self._sessions.pop(session_id, None)
        if s is not None:
            s.interrupt("session closed")
        if forget:
            drop = getattr(self.history, "forget", None)
            if drop is not None:
                drop(session_id)

    async def aclose_session(self, session_id: str, *, forget: bool = False) -> None:
        """:meth:`close_session` for async code: the history is forgotten off the loop
        (awaited, or in a worker thread for a sync store), and shielded, so a connection
        that is being cancelled still forgets what it was asked to."""
        s = self._sessions.pop(session_id, None)
        if s is not None:
            s.interrupt("session closed")
        if forget:
            with anyio.CancelScope(shield=True):
                await self._history_calls.forget(session_id)

    def _run_sync(self, coro: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise OmniAgentError("ask() is for scripts; inside async code use `await session.aask(...)`")
        # One loop per agent, kept: backends may hold loop-bound clients across turns.
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        if self._host is None and self.tool_sources():
            self._start_host(coro)
        return self._loop.run_until_complete(coro)

    def _start_host(self, coro: Any) -> None:
        """Sync use with tool sources (MCP servers): one task on the kept loop enters the
        agent (``async with self``) and holds it until :meth:`close`, which stops and
        awaits it — the owner of the servers' sessions between ``ask()`` calls."""
        assert self._loop is not None
        loop = self._loop
        started: asyncio.Future[None] = loop.create_future()
        stop = asyncio.Event()

        async def host() -> None:
            try:
                async with self:
                    started.set_result(None)
                    await stop.wait()
            except BaseException as e:
                if not started.done():
                    started.set_exception(e)
                    return
                raise

        self._host = (loop.create_task(host()), stop)
        try:
            loop.run_until_complete(started)
        except BaseException:
            task, self._host = self._host[0], None
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            coro.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def tool_sources(self) -> list[Any]:
        """The tool sources (MCP servers, docs/mcp.md) of the agent's registries."""
        from .tools import ToolRegistry

        out: list[Any] = []
        regs = [self.tools] + [getattr(mw, "registry", None) for mw in self.middleware]
        for reg in regs:
            if isinstance(reg, ToolRegistry):
                out.extend(s for s in reg.sources if s not in out)
        return out

    async def __aenter__(self) -> "Agent":
        """Run the agent's services for the block: each MCP server's owner task starts in
        the agent's task group, and the servers are started and listed before the block
        runs (:class:`~omni_agent.tools.mcp.MCPStartError` names one that does not start).
        Leaving the block cancels the group, which closes every server. Nested entries in
        the same task share one group. An agent without tool sources enters for free."""
        if self._entered:
            self._entered += 1
            return self
        stack = contextlib.AsyncExitStack()
        tg = await stack.enter_async_context(task_group())
        self._entered, self._services = 1, (stack, tg)
        try:
            sources = self.tool_sources()
            for src in sources:
                src.accepts = frozenset(self.thinker.accepts)
                await tg.start(src.serve)
            async with task_group() as starting:  # in parallel: one slow server is the wait
                for src in sources:
                    starting.start_soon(src.wait_started)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._entered -= 1
        if self._entered > 0 or self._services is None:
            return
        (stack, tg), self._services = self._services, None
        tg.cancel_scope.cancel()  # the owners close their servers as they unwind
        await stack.aclose()

    async def warm_up(self) -> dict[str, float]:
        """Load the models now (in a worker thread) instead of on the first turn, so the
        first turn's timings measure the turn. Returns seconds per part loaded."""
        loaded: dict[str, float] = {}
        for role, part in (("thinker", self.thinker), ("talker", self.talker), ("ears", self.ears)):
            load = getattr(part, "load", None)
            if callable(load):
                t0 = monotonic()
                await asyncio.to_thread(load)
                loaded[role] = monotonic() - t0
        sources = self.tool_sources()
        if sources:
            # Entered: the servers run already. Not entered (a server's warm-up in a loop of
            # its own): start and list them once, then close them — a server that does not
            # start fails here, naming its command, not on the first turn.
            t0 = monotonic()
            async with self:
                pass
            loaded["mcp"] = monotonic() - t0
        for mw in self.middleware:  # middleware with models of their own (the tool router)
            warm = getattr(mw, "warm_up", None)
            if callable(warm):
                t0 = monotonic()
                if await asyncio.to_thread(warm, self):
                    loaded[mw.label] = monotonic() - t0
        return loaded

    async def aclose(self) -> None:
        if self._host is not None and self._host[0].get_loop() is asyncio.get_running_loop():
            task, stop = self._host
            self._host = None
            stop.set()
            await task  # the sync host leaves the agent: its MCP servers are closed
        # A shared history store writes the turns it still buffers (and says what is lost).
        for part in (self.thinker, self.talker, self._history):
            close = getattr(part, "aclose", None)
            if close is not None:
                await close()

    def close(self) -> None:
        """Release backends (sync form of :meth:`aclose`)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self.aclose())
            self._loop.close()

    # ------------------------------------------------------------------ overridable stages

    def make_segmenter(self) -> Any:
        """A fresh segmenter for one turn (override to change how clauses are cut)."""
        if self._segmenter_factory is not None:
            return self._segmenter_factory()
        from .middleware.segmenter import Segmenter

        return Segmenter()

    def render_contexts(self, contexts: list[Any]) -> str:
        """Turn retrieved contexts into prompt text, marked as untrusted data."""
        from .middleware.rag import render_context

        return render_context(contexts)

    def build_request(self, ctx: TurnContext) -> ThinkerRequest:
        """The Thinker request for the next round of this turn."""
        opts = ctx.take_next_round() or RoundOptions()
        messages = list(ctx.messages)
        if opts.prompt is not None:
            # A middleware may shape one round's prompt (e.g. tool examples for a small
            # model) without changing the turn's messages.
            messages = list(opts.prompt(messages))
        return ThinkerRequest(
            messages=messages,
            tools=self.tools.openai_schemas() if self.tools is not None else [],
            tool_choice=opts.tool_choice if opts.tool_choice is not None else "auto",
            settings=opts.settings or self.settings,
            session_id=ctx.session_id,
            turn_id=ctx.turn_id,
            constraint=opts.constraint,
            extra=opts.extra,
        )


class Session:
    """One conversation with an agent: its history and its current turn.

    One turn runs at a time (a second one is refused at once, also while the first is
    still in speech recognition); :meth:`interrupt` cancels it (barge-in). A turn is an
    async context manager that owns every task of the turn::

        async with session.turn("hello") as events:
            async for event in events:
                ...

    :meth:`run` is the short form (an async generator: use it with ``aclosing`` when you
    may stop before the end), :meth:`aask` collects the whole turn.
    """

    def __init__(self, agent: Agent, session_id: str):
        self.agent = agent
        self.id = session_id
        self.turn_id = 0
        self.state: dict[str, Any] = {}  # per session, free for middleware
        #: This session's own system prompt, in place of the agent's (a Realtime client's
        #: ``session.update`` instructions); None: the agent's.
        self.instructions: str | None = None
        self._ctx: TurnContext | None = None
        self._scope: anyio.CancelScope | None = None
        self._out: asyncio.Queue[Any] | None = None
        self._forget = False  # the running turn was interrupted with forget=True
        self._commit: Callable[[], Awaitable[bool]] | None = None  # see turn(commit=)
        self.last_trace: Trace | None = None

    @property
    def history(self) -> list[Message]:
        """The session's history, read with the store's sync ``load`` (for scripts and
        tests; in async code ``await session.ahistory()`` does not block the loop)."""
        return self.agent.history.load(self.id)  # type: ignore[union-attr]

    async def ahistory(self) -> list[Message]:
        """The session's history, read the way a turn reads it (off the loop)."""
        return await self.agent._history_calls.load(self.id)

    @property
    def busy(self) -> bool:
        return self._ctx is not None

    # ------------------------------------------------------------------ sync / collected

    def ask(self, turn: str | UserTurn) -> TurnResult:
        """Run one turn to the end, synchronously (for scripts)."""
        return self.agent._run_sync(self.aask(turn))

    async def aask(self, turn: str | UserTurn) -> TurnResult:
        """Run one turn to the end and collect what it produced."""
        events: list[Event] = []
        audio = bytearray()
        sr = None
        end: TurnEnd | None = None
        async with self.turn(turn) as stream:
            async for ev in stream:
                events.append(ev)
                if isinstance(ev, AudioChunk):
                    audio += ev.pcm
                    sr = ev.sample_rate
                elif isinstance(ev, TurnEnd):
                    end = ev
        assert end is not None and self.last_trace is not None
        return TurnResult(end.text, end.spoken, end.reason, events, self.last_trace, bytes(audio), sr)

    # ------------------------------------------------------------------ barge-in

    def revise_last_reply(self, heard: str) -> bool:
        """After a barge-in, cut the last reply in memory to what the user actually heard
        (e.g. from the client's playback position). Returns False when the history
        backend cannot revise (it has no ``revise_last_reply``) or a turn is running."""
        revise = getattr(self.agent.history, "revise_last_reply", None)
        if revise is None or self.busy:
            return False
        return bool(revise(self.id, heard))

    async def arevise_last_reply(self, heard: str) -> bool:
        """:meth:`revise_last_reply` for async code: the store is awaited (or called in a
        worker thread), so a store across the network does not hold the loop. A store
        that cannot be reached returns False (nothing was revised) and logs why."""
        calls = self.agent._history_calls
        if not calls.can_revise or self.busy:
            return False
        try:
            return await calls.revise_last_reply(self.id, heard)
        except HistoryUnavailable as e:
            log.warning("session %s: the last reply was not cut to what was heard: %s", self.id, e)
            return False

    def interrupt(self, reason: str = "barge-in", *, forget: bool = False) -> bool:
        """Cancel the running turn — speech recognition, input hooks, Thinker, tools,
        Talker, a refusal's fallback line: whatever it is doing now stops. Returns False
        when no turn was running. The turn's stream then ends with Interruption and TurnEnd.

        ``forget``: the turn leaves nothing in the history (a live session's preemptive
        draft, started on an interim transcript that then changed, was never the user's
        turn). Without it, memory keeps the user's turn and what was heard of the reply."""
        ctx, scope, out = self._ctx, self._scope, self._out
        if ctx is None or scope is None or out is None or ctx.interrupted:
            return False
        ctx.interrupted = True
        ctx.interrupt_reason = reason
        self._forget = forget
        ctx.trace.mark("interrupted")
        scope.cancel()
        # Output queued but not yet read is moot now (it will not be played); the rest (the
        # user's turn, errors, the turn's end) stays, so the reader still learns all of it.
        kept = []
        while not out.empty():
            ev = out.get_nowait()
            if type(ev) not in _STALE:
                kept.append(ev)
        for ev in kept:
            out.put_nowait(ev)
        return True

    # ------------------------------------------------------------------ one turn

    async def run(self, turn: str | UserTurn) -> AsyncIterator[Event]:
        """Run one turn, yielding every event as it happens; ends with TurnEnd.

        The short form of :meth:`turn`. Use it with ``contextlib.aclosing`` if you may stop
        reading before the end, so the turn is cancelled in your task at once."""
        async with self.turn(turn) as events:
            async for ev in events:
                yield ev

    @contextlib.asynccontextmanager
    async def turn(self, turn: str | UserTurn, *,
                   commit: Callable[[], Awaitable[bool]] | None = None,
                   ) -> AsyncIterator[AsyncIterator[Event]]:
        """One turn as an async context manager: its task group owns the Thinker side,
        the Talker side and any tool calls; leaving the block cancels whatever is still
        running and waits for it. Raises :class:`OmniAgentError` at once when a turn is
        already running on this session.

        ``commit``: awaited when the turn's work is done, before it is saved to the
        history; False: the turn is forgotten (nothing saved). A live session's
        preemptive draft waits here until the user's end of turn is confirmed."""
        if self._ctx is not None:
            raise OmniAgentError(f"session {self.id} is already running a turn: wait for it "
                                 "or call interrupt() first")
        agent = self.agent
        if isinstance(turn, str):
            turn = UserTurn.of(turn)
        if not isinstance(turn, UserTurn):
            raise TypeError(f"a turn is a string or a UserTurn, not {type(turn).__name__}")
        if not turn.parts:
            raise UnsupportedInputError("the turn is empty: give text, audio, an image or a video")
        self.turn_id += 1
        trace = Trace(self.id, self.turn_id, agent.keep_originals)
        span = _otel.start_turn(trace, agent)  # None (and nothing else done) without tracing
        turn.session_id, turn.turn_id = self.id, self.turn_id
        ctx = TurnContext(self.id, self.turn_id, trace, agent=agent, session_state=self.state,
                          lang=agent.lang)
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=agent.out_buffer)
        # Claimed before the first await: a second turn is refused from now on.
        self._ctx, self._out, self._scope = ctx, out, anyio.CancelScope()
        self._forget = False
        self._commit = commit
        try:
            # The turn's own tasks never raise (their errors are events), so an exception
            # here came from the caller's block: task_group gives it back as raised.
            async with task_group() as tg:
                if span is None:
                    tg.start_soon(self._drive, turn, ctx, out, self._scope)
                else:  # the turn's tasks run in its span: backends' requests carry traceparent
                    _otel.start_soon_in(span, tg.start_soon, self._drive, turn, ctx, out, self._scope)
                ended: list[bool] = []
                events = _read(out, ctx, ended)
                try:
                    yield events
                finally:
                    if not ended:  # the reader left early: stop what is still running
                        tg.cancel_scope.cancel()
                    await events.aclose()
        finally:
            self.last_trace = trace
            self._ctx = self._out = self._scope = None
            if span is not None:
                _otel.end_turn(span, trace, turn, agent, agent._show_redact)

    async def _drive(self, turn: UserTurn, ctx: TurnContext, out: asyncio.Queue[Any],
                     scope: anyio.CancelScope) -> None:
        """The whole turn, inside one cancel scope (``interrupt()`` cancels it), then its
        end: Interruption (if any), memory, TurnEnd."""
        agent, trace = self.agent, ctx.trace
        talker = agent.talker
        clause_mode = agent.display == "clause"
        display: list[str] = []
        notes: list[str] = []
        first_new: int | None = None
        refused: str | None = None
        with scope:
            try:
                await self._hear(turn, trace)
                self._check_modalities(turn)
            except Exception as e:  # noqa: BLE001 - raised to the consumer, as it was given
                await out.put(_Raise(e))
                return
            history, history_error = await self._load_history(trace)
            await out.put(turn)
            if history_error is not None:
                await out.put(history_error)
            accepted, blocker = await agent.bus.process_input(turn, ctx)
            for e in ctx.take_emitted():
                await out.put(e)
            if accepted is None:
                refused = await self._refuse(ctx, blocker, out)
            else:
                ctx.messages = self._prompt(history, accepted, ctx)
                first_new = len(ctx.messages) - 1  # the user message and what follows are this turn's
                utt_q: asyncio.Queue[Any] | None = (asyncio.Queue(maxsize=agent.talker_buffer)
                                                    if talker is not None else None)
                try:
                    async with task_group() as tg:
                        ctx.task_group = tg
                        if talker is None:
                            await self._think(ctx, out, None, display, notes, clause_mode)
                        else:
                            # The Thinker side is the task (its start-up cost lands before
                            # the first token); the Talker side runs here, already waiting
                            # for the first approved clause.
                            assert utt_q is not None
                            tg.start_soon(self._think, ctx, out, utt_q, display, notes, clause_mode)
                            await self._talk(ctx, out, utt_q, talker)
                finally:
                    ctx.task_group = None
        # The turn's work is over: from here on an interrupt() has nothing left to stop.
        self._scope = None
        interrupted = ctx.interrupted
        if interrupted:
            await out.put(Interruption(reason=ctx.interrupt_reason or "barge-in",
                                       session_id=self.id, turn_id=self.turn_id))
        if refused is not None and not interrupted:
            trace.mark("end")
            await out.put(TurnEnd(reason="blocked", text=refused, spoken=refused if talker else "",
                                  session_id=self.id, turn_id=self.turn_id))
            await out.put(_END)
            return
        said = (" " if clause_mode else "").join(display).strip()
        text = " ".join([said, *notes]).strip()
        reason = "interrupted" if interrupted else ("error" if trace.errors and not text else "completed")
        if reason == "completed" and ctx.finish_reason == "length":
            reason = "max_tokens"  # the answer was cut by the token limit: say so
        self._finish_segments(trace, interrupted, talker is not None)
        spoken = trace.spoken_text if talker is not None else ""
        remembered = said  # display-only notes (sources) are not part of the conversation
        if interrupted:
            # Memory keeps what the user actually heard (or saw, for a text agent).
            remembered = spoken if talker is not None else text
        if agent._show_redact:
            for call in trace.tool_calls:
                call["arguments"] = _redact(agent._show_redact, call.get("arguments"))
                call["result"] = _redact(agent._show_redact, call.get("result"))
        if self._commit is not None and not await self._commit():
            self._forget = interrupted = True  # a discarded draft: nothing of it is kept
        if reason != "error" and first_new is not None and not (interrupted and self._forget):
            # A failed turn (the Thinker could not answer) is not remembered: its input
            # would otherwise be re-sent, and fail again, on every later turn.
            turn_msgs = ctx.messages[first_new:]
            if agent._keep_redact:
                turn_msgs = [_redacted_message(m, agent._keep_redact) for m in turn_msgs]
            turn_msgs.append(Message("assistant", remembered))
            saved = await self._save_history(trace, turn_msgs, interrupted)
            if saved is not None:
                await out.put(saved)
        trace.mark("end")
        await out.put(TurnEnd(reason=reason, text=text, spoken=spoken, session_id=self.id,
                              turn_id=self.turn_id))
        await out.put(_END)

    async def _load_history(self, trace: Trace) -> tuple[list[Message], ErrorEvent | None]:
        """The session's history for this turn. A store that fails does not fail the turn:
        it goes on with what the store could still give (``HistoryUnavailable.partial``)
        or none, and the error says so."""
        t0 = monotonic()
        try:
            return await self.agent._history_calls.load(self.id), None
        except Exception as e:  # noqa: BLE001 - the turn goes on; the error is reported
            partial = e.partial if isinstance(e, HistoryUnavailable) else []
            msg = (f"the conversation history could not be loaded ({e}); this turn goes on "
                   + (f"with the {len(partial)} message(s) this server still holds" if partial
                      else "without it"))
            trace.error("history", msg)
            log.warning("session %s: %s", self.id, msg)
            return partial, ErrorEvent(message=msg, stage="history", recoverable=True,
                                       session_id=self.id, turn_id=self.turn_id)
        finally:
            trace.add_time("history_load", monotonic() - t0)

    async def _save_history(self, trace: Trace, messages: list[Message], interrupted: bool) -> ErrorEvent | None:
        """Save the finished turn. Shielded: a reader that left early (or a barge-in
        landing now) must not cut a save in half; the store's own timeouts bound it."""
        t0 = monotonic()
        try:
            with anyio.CancelScope(shield=True):
                await self.agent._history_calls.save_turn(self.id, messages, interrupted=interrupted)
            return None
        except Exception as e:  # noqa: BLE001 - the answer was given; the error says what is lost
            msg = f"the turn was not written to the conversation history: {e}"
            trace.error("history", msg)
            log.warning("session %s: %s", self.id, msg)
            return ErrorEvent(message=msg, stage="history", recoverable=True,
                              session_id=self.id, turn_id=self.turn_id)
        finally:
            trace.add_time("history_save", monotonic() - t0)

    async def _hear(self, turn: UserTurn, trace: Trace) -> None:
        """Transcribe audio parts when the Thinker cannot take audio itself."""
        audio = [p for p in turn.parts if isinstance(p, AudioPart) and p.transcript is None]
        if not audio or "audio" in self.agent.thinker.accepts:
            return
        ears = self.agent.ears
        if ears is None:
            raise UnsupportedInputError(
                f"the {self.agent.thinker.name} Thinker cannot hear audio and the agent has no "
                "ears: pass Agent(ears=Ears()) (speech recognition) or use a Thinker that takes "
                "audio (qwen3-omni, vllm-omni)")
        t0 = monotonic()
        trace.mark("asr_start", t0)
        for p in audio:
            p.transcript = await ears.transcribe(p)
        trace.add_time("asr", monotonic() - t0)

    def _check_modalities(self, turn: UserTurn) -> None:
        accepts = self.agent.thinker.accepts
        missing = set()
        for p in turn.parts:
            if p.kind not in accepts and not (isinstance(p, AudioPart) and p.transcript is not None):
                missing.add(p.kind)
        if missing:
            kinds = ", ".join(sorted(missing))
            raise UnsupportedInputError(
                f"the {self.agent.thinker.name} Thinker cannot take {kinds} input (it takes "
                f"{', '.join(sorted(accepts))}): use a Thinker that does (qwen3-omni, vllm-omni, "
                "an OpenAI-compatible multimodal server) or leave the attachment out")

    def _prompt(self, history: list[Message], turn: UserTurn, ctx: TurnContext) -> list[Message]:
        agent = self.agent
        msgs: list[Message] = []
        system = (self.instructions if self.instructions is not None else agent.system_prompt) or ""
        if ctx.contexts:
            system = (system + "\n\n" if system else "") + agent.render_contexts(ctx.contexts)
        if system:
            msgs.append(Message("system", system))
        msgs.extend(history)
        parts: list[Any] = []
        for p in turn.parts:
            if isinstance(p, AudioPart) and p.transcript is not None and "audio" not in agent.thinker.accepts:
                parts.append(TextPart(p.transcript))
            else:
                parts.append(p)
        content: Any = parts[0].text if len(parts) == 1 and isinstance(parts[0], TextPart) else parts
        msgs.append(Message("user", content))
        return msgs

    async def _refuse(self, ctx: TurnContext, blocker: Middleware | None,
                      out: asyncio.Queue[Any]) -> str:
        """The input rails blocked the user's turn: say the fallback line, run no Thinker.
        Runs inside the turn's scope, so an interruption stops the line mid-way."""
        line = ctx.block_fallback or (blocker.fallback if blocker else None) or self.agent.fallback or ""
        ctx.block_fallback = None
        talker = self.agent.talker
        if line:
            utt = Utterance(text=line, display=line, fallback=True, session_id=self.id, turn_id=self.turn_id)
            seg = Segment(0, None, line, line, "blocked", fallback=True, delivered=talker is None)
            ctx.trace.segments.append(seg)
            await out.put(utt)
            if talker is not None:
                chunks = talker.speak(utt)
                try:
                    async for chunk in chunks:
                        chunk.session_id, chunk.turn_id = self.id, self.turn_id
                        await out.put(chunk)
                finally:
                    await _close(chunks)  # an interruption mid-line reaches the Talker now
                seg.delivered = True
        return line

    # ------------------------------------------------------------------ the two services

    async def _rounds(self, ctx: TurnContext) -> AsyncIterator[Event]:
        """The Thinker's stream over all rounds of the turn (tool rounds included)."""
        agent, trace = self.agent, ctx.trace
        sid, tid = self.id, self.turn_id
        for rnd in range(agent.max_rounds):
            ctx.round = rnd
            request = agent.build_request(ctx)
            started = monotonic() - trace.started
            if rnd == 0:
                trace.mark("thinker_start")
            first = True
            ctx.finish_reason = None
            usage: Finish | None = None
            stream = agent.thinker.stream(request)
            try:
                async for ev in stream:
                    if type(ev) is Finish:
                        # Kept on the round's end, not passed to the middleware.
                        ctx.finish_reason, usage = ev.reason, ev
                        continue
                    if first:
                        first = False
                        if rnd == 0:
                            trace.mark("thinker_first_token")
                    ev.session_id = sid
                    ev.turn_id = tid
                    yield ev
            finally:
                await _close(stream)  # barge-in reaches the backend now, not at GC
            trace.rounds.append({"round": rnd, "finish_reason": ctx.finish_reason,
                                 "prompt_tokens": usage.prompt_tokens if usage else None,
                                 "completion_tokens": usage.completion_tokens if usage else None,
                                 "start": started, "end": monotonic() - trace.started})
            yield RoundEnd(round=rnd, session_id=sid, turn_id=tid, finish_reason=ctx.finish_reason)
            follow = ctx.take_followup()
            if not follow:
                return
            ctx.messages.extend(follow)
        trace.error("agent", f"stopped after {agent.max_rounds} Thinker rounds")
        yield ErrorEvent(message=f"the turn needed more than {agent.max_rounds} Thinker rounds "
                         "(tool calls kept coming); raise Agent(max_rounds=...) if that is expected",
                         stage="agent", session_id=sid, turn_id=tid)

    async def _segmented(self, stream: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        """Cut display text into utterances; pass every other event on."""
        seg = self.agent.make_segmenter()
        trace = ctx.trace
        sid, tid, lang = self.id, self.turn_id, ctx.lang
        n = 0
        try:
            async for ev in stream:
                t = type(ev)
                if t is TextDelta:
                    yield ev
                    for clause in seg.feed(ev.text):
                        if n == 0:
                            trace.mark("first_utterance")
                        yield Utterance(text=clause, display=clause, original=clause, index=n, lang=lang,
                                        session_id=sid, turn_id=tid)
                        n += 1
                elif t is RoundEnd:
                    for clause in seg.flush():
                        if n == 0:
                            trace.mark("first_utterance")
                        yield Utterance(text=clause, display=clause, original=clause, index=n, lang=lang,
                                        session_id=sid, turn_id=tid)
                        n += 1
                elif t is Utterance:  # said by a middleware (a filler line, say)
                    ev.added = True
                    ev.index = n
                    n += 1
                    if ev.original is None:
                        ev.original = ev.text
                    yield ev
                else:
                    if t is ReasoningDelta:
                        trace.reasoning += ev.text
                    yield ev
            for clause in seg.flush():
                yield Utterance(text=clause, display=clause, original=clause, index=n, lang=lang,
                                session_id=sid, turn_id=tid)
                n += 1
        finally:
            await _close(stream)  # the stage upstream ends with this one

    async def _approved(self, stream: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        """Run each utterance through the utterance hooks; blocked ones become the fallback."""
        bus, trace, agent = self.agent.bus, ctx.trace, self.agent
        try:
            async for ev in stream:
                if type(ev) is not Utterance:
                    yield ev
                    continue
                original = ev.original if ev.original is not None else ev.text
                ctx.block_fallback = None
                out, blocker = await bus.process_utterance(ev, ctx)
                for e in ctx.take_emitted():
                    yield e
                keep = original if trace.keep_originals else None
                if out is not None:
                    if not trace.keep_originals:
                        out.original = None
                    trace.segments.append(Segment(ev.index, keep, out.display if out.display is not None else out.text,
                                                  out.text, "pending", fallback=out.fallback))
                    yield out
                    continue
                if blocker is None:  # dropped on purpose (nothing to say for this clause)
                    trace.segments.append(Segment(ev.index, keep, "", "", "dropped"))
                    continue
                line = ctx.block_fallback or blocker.fallback or agent.fallback
                ctx.block_fallback = None
                trace.segments.append(Segment(ev.index, keep, line or "", line or "", "blocked", fallback=bool(line)))
                if line:
                    yield Utterance(text=line, display=line, index=ev.index, lang=ev.lang, fallback=True,
                                    session_id=self.id, turn_id=self.turn_id)
        finally:
            await _close(stream)  # the stage upstream ends with this one

    async def _think(self, ctx: TurnContext, out: asyncio.Queue[Any], utt_q: asyncio.Queue[Any] | None,
                     display: list[str], notes: list[str], clause_mode: bool) -> None:
        """The Thinker side: rounds -> bus -> segmenter -> approval, into the output queue
        (and approved clauses to the Talker). Plain generators: no task per stage."""
        bus = self.agent.bus
        chain = self._approved(self._segmented(bus.process_stream(self._rounds(ctx), ctx), ctx), ctx)
        try:
            async with contextlib.aclosing(chain):
                async for ev in chain:
                    t = type(ev)
                    if t is Utterance:
                        if ev.added and not ev.text.strip() and ev.display:
                            notes.append(ev.display)  # display only (e.g. sources): shown, not spoken
                        elif clause_mode and ev.display:
                            display.append(ev.display)
                        await out.put(ev)  # shown before its audio
                        if utt_q is not None and ev.text.strip():
                            await utt_q.put(ev)  # display-only utterances (no spoken text) skip the Talker
                            # Let the Talker start on it now, even if the Thinker never waits.
                            await asyncio.sleep(0)
                        continue
                    elif t is TextDelta and not clause_mode:
                        display.append(ev.text)
                    elif (t is ToolCall or t is ToolResult) and self.agent._show_redact:
                        ev = _redacted_event(ev, self.agent._show_redact)  # a copy: the Thinker keeps the real one
                    await out.put(ev)
        except Exception as e:  # noqa: BLE001 - a failed Thinker ends the turn, not the session
            msg = str(e) or type(e).__name__
            ctx.trace.error("thinker", msg)
            await out.put(ErrorEvent(message=msg, stage="thinker", recoverable=True,
                                     session_id=self.id, turn_id=self.turn_id))
        if utt_q is not None:
            await utt_q.put(None)

    async def _talk(self, ctx: TurnContext, out: asyncio.Queue[Any], utt_q: asyncio.Queue[Any],
                    talker: Talker) -> None:
        """The Talker side: speak approved utterances one by one as they come."""
        bus, trace = self.agent.bus, ctx.trace
        by_index: dict[int, Segment] = {}
        while True:
            utt = await utt_q.get()
            if utt is None:
                return
            for s in trace.segments:
                by_index.setdefault(s.index, s)
            seg = by_index.get(utt.index)
            if seg is not None:
                seg.started = monotonic() - trace.started
                if seg.status == "pending":
                    seg.status = "speaking"
            try:
                chunks = talker.speak(utt)
                try:
                    async for chunk in chunks:
                        trace.mark("talker_first_audio")
                        chunk.session_id, chunk.turn_id = self.id, self.turn_id
                        chunk = await bus.process_audio(chunk, ctx)
                        if chunk is not None:
                            await out.put(chunk)
                finally:
                    await _close(chunks)
                    if seg is not None:
                        seg.ended = monotonic() - trace.started
                if seg is not None:
                    seg.delivered = True
                    if seg.status == "speaking":
                        seg.status = "spoken"
            except Exception as e:  # noqa: BLE001 - the text side goes on without this clause
                msg = f"{type(e).__name__}: {e}"
                trace.error("talker", msg)
                if seg is not None:
                    seg.status = "failed"
                await out.put(ErrorEvent(message=f"the Talker failed on clause {utt.index} ({msg})",
                                         stage="talker", session_id=self.id, turn_id=self.turn_id))

    @staticmethod
    def _finish_segments(trace: Trace, interrupted: bool, has_talker: bool) -> None:
        for s in trace.segments:
            if not has_talker and not interrupted and s.status in ("pending", "blocked"):
                s.delivered = True
                if s.status == "pending":
                    s.status = "shown"
            elif interrupted and s.status in ("pending", "speaking"):
                s.status = "interrupted"


class _Raise:
    """Carries an exception from the turn's driver to its reader (bad input found late)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()
#: Output that an interruption makes moot if it is still on its way to the reader.
_STALE = frozenset({AudioChunk, Utterance, TextDelta, ReasoningDelta})


async def _read(out: asyncio.Queue[Any], ctx: TurnContext, ended: list[bool]) -> AsyncIterator[Event]:
    """The events of one running turn, in order, until its end (``ended`` gets a mark)."""
    while True:
        ev = await out.get()
        if ev is _END:
            ended.append(True)
            return
        if type(ev) is _Raise:
            ended.append(True)
            raise ev.exc
        if ctx.interrupted and type(ev) in _STALE:
            continue  # made just before the interruption landed: moot
        yield ev


def _redact(fns: list[Callable[[str], str]], text: Any) -> Any:
    if isinstance(text, str):
        for fn in fns:
            text = fn(text)
    return text


def _redacted_event(ev: Any, fns: list[Callable[[str], str]]) -> Any:
    if type(ev) is ToolCall:
        return dataclasses.replace(ev, arguments=_redact(fns, ev.arguments))
    return dataclasses.replace(ev, content=_redact(fns, ev.content))


def _redacted_message(m: Message, fns: list[Callable[[str], str]]) -> Message:
    """A tool call or tool result message as memory keeps it (redacted); others as they are."""
    if m.role == "tool":
        return dataclasses.replace(m, content=_redact(fns, m.content))
    if m.tool_calls:
        calls = [{**c, "arguments": _redact(fns, c.get("arguments"))} for c in m.tool_calls]
        return dataclasses.replace(m, tool_calls=calls)
    return m


async def _close(it: Any) -> None:
    """Close an async iterator that can be closed (an async generator)."""
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
