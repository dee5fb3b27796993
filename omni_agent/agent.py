"""The agent and its sessions: a Thinker, the bus, optionally a Talker, and per-session
conversation state.

::

    agent = Agent(thinker=ScriptedThinker("Hi there."), middleware=[MyFilter()])
    session = agent.session()
    print(session.ask("hello").text)          # a script
    async for event in session.run("hello"):  # a live app
        ...

A turn's machinery (Thinker rounds, segmenter, approval, Talker) is in
:mod:`omni_agent.turn`; the conversation store's shapes and the default in-process one in
:mod:`omni_agent.history`. Each stage is a method a subclass may override
(``build_request``, ``render_contexts``, ``make_segmenter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable

import anyio

from . import otel as _otel
from .bus import Bus, Middleware, RoundOptions, TurnContext
from .context import render_context
from .errors import OmniAgentError, UnsupportedInputError
from .events import AudioChunk, Context, ErrorEvent, Event, TurnEnd, UserTurn, Utterance
from .history import AsyncHistory, History, HistoryCalls, HistoryUnavailable, InMemoryHistory
from .protocols import Closeable, Loadable, PreparesRounds, PromptWarmer, Transcriber, WarmsUp
from .redaction import redactors
from .segmenter import CutGuard, Segmenter, SegmenterProtocol
from .talker import Talker
from .tasks import task_group
from .thinker import GenerationSettings, Message, Thinker, ThinkerRequest
from .trace import Trace
from .turn import TurnRunner

if TYPE_CHECKING:
    from .tools import ToolRegistry

__all__ = ["Agent", "Session", "TurnResult", "InMemoryHistory"]

log = logging.getLogger(__name__)


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
      middleware (the built-in ``"tools"``, :class:`~omni_agent.middleware.tool_calling.ToolCalling`)
      is then put first in the chain, unless the chain has one already.
    * ``fallback`` — spoken (and shown) instead of a clause a middleware blocked.
    * ``keep_originals`` — False keeps the text before each intervention out of the trace.
    * ``display`` — "auto": clause by clause (approved utterances) when any utterance
      middleware is present, else token by token; or force "clause" / "stream".
    * ``ears`` — speech recognition for audio turns when the Thinker cannot hear (a
      :class:`~omni_agent.protocols.Transcriber`, e.g. :class:`~omni_agent.ears.Ears`).
    * ``history`` — conversation memory (``load``/``save_turn``, or async
      ``aload``/``asave_turn``: see :mod:`omni_agent.history`); in-process by default.
    * ``segmenter`` — makes a fresh segmenter per turn (a
      :class:`~omni_agent.segmenter.SegmenterProtocol`); the built-in
      :class:`~omni_agent.segmenter.Segmenter` by default.
    """

    def __init__(
        self,
        thinker: Thinker,
        *,
        talker: Talker | None = None,
        middleware: Iterable[Any] = (),
        tools: ToolRegistry | Iterable[Any] | None = None,
        system_prompt: str | None = None,
        fallback: str | None = "Sorry, I can't say that.",
        keep_originals: bool = True,
        display: str = "auto",
        ears: Transcriber | None = None,
        history: History | AsyncHistory | None = None,
        settings: GenerationSettings | None = None,
        max_rounds: int = 6,
        talker_buffer: int = 4,
        out_buffer: int = 64,
        lang: str | None = None,
        segmenter: Callable[[], SegmenterProtocol] | None = None,
    ):
        if thinker is None:
            raise OmniAgentError("Agent needs a thinker, e.g. Agent(thinker=TransformersThinker.default())")
        if display not in ("auto", "clause", "stream"):
            raise OmniAgentError(f"display must be 'auto', 'clause' or 'stream', not {display!r}")
        if ears is not None and not isinstance(ears, Transcriber):
            raise OmniAgentError(f"ears {type(ears).__name__} has no transcribe(part) method: give "
                                 "speech recognition, e.g. Agent(ears=omni_agent.ears.Ears())")
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
        self.tools: ToolRegistry | None = None
        if tools is not None and tools != []:
            from .tools import ToolRegistry

            self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
            _with_tool_calling(chain, self.tools)
        self.bus = Bus(chain)
        # Redacting middleware (PII) filter tool arguments and results too, wherever they are
        # shown (client events, the trace) or remembered — not only the spoken clauses.
        self._show_redact, self._keep_redact = redactors(self.bus.middleware, keep_originals=keep_originals)
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
            self._history_calls.forget_now(session_id)

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
            if isinstance(part, Loadable):
                t0 = monotonic()
                await asyncio.to_thread(part.load)
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
            if isinstance(mw, WarmsUp):
                t0 = monotonic()
                if await asyncio.to_thread(mw.warm_up, self):
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
            if isinstance(part, Closeable):
                await part.aclose()

    def close(self) -> None:
        """Release backends (sync form of :meth:`aclose`)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.run_until_complete(self.aclose())
            self._loop.close()

    # ------------------------------------------------------------------ overridable stages

    def make_segmenter(self) -> SegmenterProtocol:
        """A fresh segmenter for one turn (override to change how clauses are cut)."""
        if self._segmenter_factory is not None:
            return self._segmenter_factory()
        guards = [mw for mw in self.bus.middleware if isinstance(mw, CutGuard)]
        if not guards:
            return Segmenter()
        # A first phrase is cut short only where every such middleware allows it (PII).
        return Segmenter(cut_guard=lambda text, at: all(g.may_cut(text, at) for g in guards))

    def render_contexts(self, contexts: list[Context]) -> str:
        """Turn the turn's contexts into prompt text, untrusted ones marked as data
        (:func:`omni_agent.context.render_context`)."""
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
        self._running: TurnRunner | None = None  # the turn now running (see omni_agent.turn)
        self.last_trace: Trace | None = None

    @property
    def history(self) -> list[Message]:
        """The session's history, read with the store's sync ``load`` (for scripts and
        tests; in async code ``await session.ahistory()`` does not block the loop)."""
        store = self.agent.history
        if not isinstance(store, History):
            raise OmniAgentError(f"history {type(store).__name__} is async only: read it with "
                                 "`await session.ahistory()`")
        return store.load(self.id)

    async def ahistory(self) -> list[Message]:
        """The session's history, read the way a turn reads it (off the loop)."""
        return await self.agent._history_calls.load(self.id)

    @property
    def busy(self) -> bool:
        """Whether a turn is running (from its start, speech recognition included, to its end)."""
        return self._running is not None

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

    # ------------------------------------------------------------------ between turns

    @property
    def system_prompt(self) -> str:
        """This session's system prompt: its own instructions, else the agent's ("" none)."""
        return (self.instructions if self.instructions is not None else self.agent.system_prompt) or ""

    async def prepare_next_turn(self, history: list[Message] | None = None) -> int:
        """Let the Thinker read this conversation ahead of the next turn, while nobody waits
        (a live session calls it when a turn has ended, as the reply plays). The next
        turn's first round then evaluates only the user's new words, not the exchanges
        since the Thinker last saw this prompt (a tool round in between changes it).

        Which requests: what the middleware that shape the first round say it may be
        (:class:`~omni_agent.protocols.PreparesRounds`, e.g. the tool middleware: an
        unrouted round and a routed one per tool), else the plain request. Only with a
        Thinker that keeps prompt states (:class:`~omni_agent.protocols.PromptWarmer`);
        it stops as soon as a turn starts. ``history``: the session's, if the caller has just
        read it. Returns the prompt tokens now ready (0: none)."""
        agent = self.agent
        thinker = agent.thinker
        if not isinstance(thinker, PromptWarmer) or self.busy:
            return 0
        if history is None:
            history = await self.ahistory()
        system = self.system_prompt
        messages = [Message("system", system)] if system else []
        messages += [*history, Message("user", "Hello.")]  # a stand-in: only what precedes it counts
        requests: list[ThinkerRequest] = []
        for mw in agent.bus.middleware:
            if isinstance(mw, PreparesRounds):
                requests += mw.round_requests(agent, messages)
        if not requests:
            requests = [ThinkerRequest(messages=messages, settings=agent.settings,
                                       tools=agent.tools.openai_schemas() if agent.tools is not None else [])]
        ready = 0
        for request in requests:
            if self.busy:
                break  # a turn started: its own request goes first
            ready += await anyio.to_thread.run_sync(functools.partial(thinker.warm_prompt, request,
                                                                      pin=False))
        return ready

    # ------------------------------------------------------------------ barge-in

    def revise_last_reply(self, heard: str) -> bool:
        """After a barge-in, cut the last reply in memory to what the user actually heard
        (e.g. from the client's playback position). Returns False when the history
        backend cannot revise (it has no sync ``revise_last_reply``) or a turn is running."""
        return not self.busy and self.agent._history_calls.revise_now(self.id, heard)

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
        running = self._running
        return running is not None and running.interrupt(reason, forget=forget)

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
        if self._running is not None:
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
        self._running = running = TurnRunner(self, ctx, out, commit=commit)
        try:
            # The turn's own tasks never raise (their errors are events), so an exception
            # here came from the caller's block: task_group gives it back as raised.
            async with task_group() as tg:
                if span is None:
                    tg.start_soon(running.drive, turn)
                else:  # the turn's tasks run in its span: backends' requests carry traceparent
                    _otel.start_soon_in(span, tg.start_soon, running.drive, turn)
                ended: list[bool] = []
                events = running.events(ended)
                try:
                    yield events
                finally:
                    if not ended:  # the reader left early: stop what is still running
                        tg.cancel_scope.cancel()
                    await events.aclose()
        finally:
            self.last_trace = trace
            self._running = None
            if span is not None:
                _otel.end_turn(span, trace, turn, agent, agent._show_redact)


def _with_tool_calling(chain: list[Any], tools: ToolRegistry) -> None:
    """Put the tool middleware first in ``chain`` unless it has one. The core names it by
    its built-in short name (``"tools"``, as a config's ``use = "tools"`` does) instead of
    importing the plug-in: :mod:`omni_agent.registry` says where it lives."""
    from .registry import MIDDLEWARE, resolve

    tool_calling = resolve("tools", MIDDLEWARE)
    if not any(isinstance(m, tool_calling) for m in chain):
        chain.insert(0, tool_calling(tools))
