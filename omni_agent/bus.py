"""The bus: an ordered chain of middleware between user, Thinker, tools and Talker.

A middleware is a small class with optional hooks (sync or async)::

    class NoShouting(Middleware):
        def on_utterance(self, utt, ctx):
            utt.text = utt.text.lower()
            return utt

Each hook gets the item and the turn's :class:`TurnContext` and returns the item
(changed or not), ``None`` to drop it, or raises :class:`~omni_agent.errors.Blocked` to
block it. Any other exception, or overrunning ``timeout`` seconds, also blocks the item
(fail-closed) and is recorded in the trace; the turn goes on.

Hook points, in the order content flows:

* ``on_input(turn, ctx)``      — the user's turn, before the Thinker sees it;
* ``on_event(event, ctx)``     — every Thinker stream event (text delta, reasoning, tool call);
* ``stream(events, ctx)``      — stream-level control: an async generator over the whole
  Thinker stream, for middleware that must hold text until a pattern is complete;
* ``on_utterance(utt, ctx)``   — each clause before the Talker (and before it is shown);
* ``on_audio(chunk, ctx)``     — each audio chunk the Talker made.

Per-event hooks of neighbouring middleware are fused into one plain loop of function
calls (no task, no queue per middleware), so a pass-through hook costs well under a
microsecond per event.
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from time import monotonic, perf_counter
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable

import anyio
import anyio.to_thread

from .errors import Blocked
from .events import (
    AudioChunk,
    Context,
    ErrorEvent,
    Event,
    TextDelta,
    UserTurn,
    Utterance,
)
from .thinker import GenerationSettings, Message
from .trace import Trace

__all__ = ["Middleware", "TurnContext", "RoundEnd", "RoundOptions", "Bus", "hook", "as_middleware"]


def is_cancellation(exc: BaseException) -> bool:
    """True when ``exc`` is this task being cancelled (barge-in, shutdown) — the one
    exception a hook must let through. A hook that raises ``CancelledError`` on its own
    while nobody cancels its task is a broken hook, contained like any other error."""
    if not isinstance(exc, asyncio.CancelledError):
        return False
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return task is None or cancelling is None or cancelling() > 0


@dataclass(slots=True)
class RoundOptions:
    """How the next Thinker round is asked, set by a middleware for that round only
    (``ctx.next_round().tool_choice = "none"``). ``None`` keeps the agent's default."""

    tool_choice: Any = None
    #: Shapes the round's prompt without changing the turn's messages (tool examples).
    prompt: Callable[[list[Message]], list[Message]] | None = None
    settings: GenerationSettings | None = None
    #: Constrained decoding for the round (e.g. a tool-call JSON schema).
    constraint: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RoundEnd(Event):
    """Marks the end of one Thinker generation round within a turn.

    Stream-level middleware should flush anything they hold when they see it, and pass
    it on. A tool middleware answers it by running the calls of the round and asking for
    another round with :meth:`TurnContext.continue_with`.
    """

    round: int = 0
    #: Why the Thinker stopped this round ("stop", "length", "tool_calls"; None when the
    #: backend did not say), from its :class:`~omni_agent.events.Finish` event.
    finish_reason: str | None = None


class TurnContext:
    """What a hook may know and do about the current turn."""

    __slots__ = (
        "session_id",
        "turn_id",
        "trace",
        "messages",
        "state",
        "session_state",
        "agent",
        "lang",
        "round",
        "_followup",
        "_contexts",
        "_emitted",
        "_note",
        "_next",
        "interrupted",
        "interrupt_reason",
        "block_fallback",
        "task_group",
        "finish_reason",
    )

    def __init__(
        self,
        session_id: str = "",
        turn_id: int = 0,
        trace: Trace | None = None,
        messages: list[Message] | None = None,
        agent: Any = None,
        session_state: dict[str, Any] | None = None,
        lang: str | None = None,
    ):
        self.session_id = session_id
        self.turn_id = turn_id
        self.trace = trace if trace is not None else Trace(session_id, turn_id)
        self.messages: list[Message] = messages if messages is not None else []
        self.state: dict[str, Any] = {}  # per turn, free for middleware (key by your name)
        self.session_state: dict[str, Any] = session_state if session_state is not None else {}
        self.agent = agent
        self.lang = lang
        self.round = 0
        self._followup: list[Message] = []
        self._contexts: list[Context] = []
        self._emitted: list[Event] = []
        self._note = ""
        self._next: RoundOptions | None = None
        #: True once the turn was interrupted (barge-in); ``interrupt_reason`` says why.
        self.interrupted = False
        self.interrupt_reason: str | None = None
        #: The fallback line a ``Blocked(fallback=...)`` asked for, for the block in hand.
        self.block_fallback: str | None = None
        #: The turn's anyio task group: middleware that run work concurrently within the
        #: turn (tool calls) start it here, so the turn owns, cancels and awaits it.
        #: None outside an agent turn (a bare Bus).
        self.task_group: Any = None
        #: Why the Thinker stopped its latest round ("stop", "length", "tool_calls"), or
        #: None when the backend did not say.
        self.finish_reason: str | None = None

    def note(self, reason: str) -> None:
        """Say why the current hook changed its item; the trace records it with the change.

        ``ctx.note("phone number")`` then ``return changed_item``."""
        self._note = reason

    def add_context(self, context: Context) -> None:
        """Give the Thinker extra context for this turn (RAG passages, notes)."""
        context.session_id, context.turn_id = self.session_id, self.turn_id
        self._contexts.append(context)
        self.trace.citations.extend(context.citations)

    @property
    def contexts(self) -> list[Context]:
        return self._contexts

    def continue_with(self, messages: Iterable[Message]) -> None:
        """Ask for another Thinker round after this one, with these messages appended
        (an assistant message with tool calls and the tool results, typically)."""
        self._followup.extend(messages)

    @property
    def has_followup(self) -> bool:
        """True when another Thinker round was asked for (so this round is not the last)."""
        return bool(self._followup)

    def take_followup(self) -> list[Message]:
        out, self._followup = self._followup, []
        return out

    def emit(self, event: Event) -> None:
        """Put an extra event into the turn's output (e.g. a filler utterance).

        Stream-level middleware should rather ``yield`` it; this is for hooks."""
        event.session_id, event.turn_id = self.session_id, self.turn_id
        self._emitted.append(event)

    def take_emitted(self) -> list[Event]:
        """The events hooks emitted since the last call (and forget them)."""
        if not self._emitted:
            return []
        out = list(self._emitted)
        self._emitted.clear()
        return out

    def next_round(self) -> RoundOptions:
        """The options of the next Thinker round (created on first use), to change how
        that one round is asked: ``ctx.next_round().tool_choice = "none"``."""
        if self._next is None:
            self._next = RoundOptions()
        return self._next

    def take_next_round(self) -> RoundOptions | None:
        """The next round's options, once (the agent reads them when it builds the round)."""
        out, self._next = self._next, None
        return out


class Middleware:
    """Base class for middleware. Override only the hooks you need.

    Attributes a subclass (or instance) may set:

    * ``name`` — shown in the trace (defaults to the class name);
    * ``timeout`` — time budget in seconds for each hook call; overrunning blocks the
      item (fail-closed). ``None``: no budget;
    * ``fallback`` — the line spoken instead of an utterance this middleware blocked
      (else the agent's fallback).
    """

    name: str = ""
    timeout: float | None = None
    fallback: str | None = None

    def __init__(self, *, name: str | None = None, timeout: float | None = None,
                 fallback: str | None = None):
        if name is not None:
            self.name = name
        if timeout is not None:
            self.timeout = timeout
        if fallback is not None:
            self.fallback = fallback

    @property
    def label(self) -> str:
        return self.name or type(self).__name__

    # Hooks: the base versions are never called (the bus only calls overridden ones).
    def on_input(self, turn: UserTurn, ctx: TurnContext) -> UserTurn | None | Awaitable[UserTurn | None]:
        return turn

    def on_event(self, event: Event, ctx: TurnContext) -> Event | None | Awaitable[Event | None]:
        return event

    def stream(self, events: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        return events

    def on_utterance(self, utt: Utterance, ctx: TurnContext) -> Utterance | None | Awaitable[Utterance | None]:
        return utt

    def on_audio(self, chunk: AudioChunk, ctx: TurnContext) -> AudioChunk | None | Awaitable[AudioChunk | None]:
        return chunk


class _FunctionMiddleware(Middleware):
    """A middleware made from plain functions (see :func:`hook`)."""

    def __init__(self, fns: dict[str, Callable[..., Any]], **kw: Any):
        super().__init__(**kw)
        for point, fn in fns.items():
            setattr(self, f"on_{point}" if point != "stream" else "stream", fn)


_POINTS = ("input", "event", "utterance", "audio", "stream")


def hook(point: str = "utterance", *, name: str | None = None, timeout: float | None = None,
         fallback: str | None = None) -> Callable[[Callable[..., Any]], Middleware]:
    """Turn a function into a middleware for one hook point::

        @hook("utterance", timeout=0.05)
        def no_secrets(utt, ctx):
            if "password" in utt.text:
                raise Blocked("mentions a password")
            return utt
    """
    if point not in _POINTS:
        raise ValueError(f"unknown hook point {point!r}; use one of {', '.join(_POINTS)}")

    def wrap(fn: Callable[..., Any]) -> Middleware:
        return _FunctionMiddleware({point: fn}, name=name or fn.__name__, timeout=timeout,
                                   fallback=fallback)

    return wrap


def as_middleware(obj: Any) -> Middleware:
    """Accept a Middleware, a class of one, or a plain function (an utterance hook)."""
    if isinstance(obj, Middleware):
        return obj
    if isinstance(obj, type) and issubclass(obj, Middleware):
        return obj()
    if callable(obj):
        return hook("utterance")(obj)
    raise TypeError(f"{obj!r} is not a middleware: pass a Middleware instance, class or function")


def _overridden(mw: Middleware, attr: str) -> Callable[..., Any] | None:
    fn = getattr(mw, attr)
    base = getattr(Middleware, attr)
    if getattr(fn, "__func__", fn) is base:
        return None
    return fn


def _text_of(item: Any) -> str | None:
    t = getattr(item, "text", None)
    return t if isinstance(t, str) else (None if item is None else repr(item))


class _WrongType(TypeError):
    """A hook returned something other than its item, None, or a Blocked."""

    def __init__(self, h: "_Hook", point: str, out: Any):
        want = _EXPECTED[point].__name__
        super().__init__(f"on_{point} returned a {type(out).__name__}, not a {want}: return the "
                         f"{want} (changed or not), None to drop it, or raise Blocked")


_EXPECTED: dict[str, type] = {"input": UserTurn, "event": Event, "utterance": Utterance,
                              "audio": AudioChunk}


@dataclass(slots=True)
class _Hook:
    mw: Middleware
    fn: Callable[..., Any]
    is_async: bool
    label: str = ""
    timeout: float | None = None

    def __post_init__(self) -> None:
        self.label = self.mw.label
        self.timeout = self.mw.timeout


class Bus:
    """The ordered middleware chain, compiled once per agent.

    ``Bus(middleware)`` works out which hooks each middleware overrides and whether they
    are sync or async, so a turn only pays for hooks that exist.
    """

    def __init__(self, middleware: Iterable[Any] = ()):
        self.middleware: list[Middleware] = [as_middleware(m) for m in middleware]
        self.input_hooks = self._hooks("on_input")
        self.utterance_hooks = self._hooks("on_utterance")
        self.audio_hooks = self._hooks("on_audio")
        # Event stages: runs of per-event hooks fused, stream middleware as their own stage.
        self.event_stages: list[list[_Hook] | Middleware] = []
        run: list[_Hook] = []
        for mw in self.middleware:
            ev = _overridden(mw, "on_event")
            if ev is not None:
                run.append(_Hook(mw, ev, inspect.iscoroutinefunction(ev)))
            if _overridden(mw, "stream") is not None:
                if run:
                    self.event_stages.append(run)
                    run = []
                self.event_stages.append(mw)
        if run:
            self.event_stages.append(run)

    def _hooks(self, attr: str) -> list[_Hook]:
        out = []
        for mw in self.middleware:
            fn = _overridden(mw, attr)
            if fn is not None:
                out.append(_Hook(mw, fn, inspect.iscoroutinefunction(fn)))
        return out

    # ------------------------------------------------------------------ one item

    async def _call(self, h: _Hook, item: Any, ctx: TurnContext, point: str) -> tuple[Any, bool]:
        """Run one hook on one item. Returns (result, blocked)."""
        before = _text_of(item)  # taken first: hooks may change the item in place
        t0 = perf_counter()
        try:
            if h.timeout is None:
                out = h.fn(item, ctx)
                if inspect.isawaitable(out):
                    out = await out
            elif h.is_async:
                with anyio.fail_after(h.timeout):
                    out = await h.fn(item, ctx)
            else:
                # A sync hook with a budget runs on a worker thread: a hook that hangs
                # (a blocking HTTP call, a sleep) stalls only itself, never the loop and so
                # never the other sessions. Over budget, the thread is abandoned and the
                # item blocked (fail-closed).
                with anyio.fail_after(h.timeout):
                    out = await anyio.to_thread.run_sync(h.fn, item, ctx, abandon_on_cancel=True)
                    if inspect.isawaitable(out):
                        out = await out
            if h.timeout is not None and perf_counter() - t0 > h.timeout:
                raise TimeoutError  # a late answer is refused as well
            if out is not None and out is not item and not isinstance(out, _EXPECTED[point]):
                raise _WrongType(h, point, out)
        except BaseException as e:  # noqa: BLE001 - a crashing middleware must not end the session
            if is_cancellation(e):
                raise
            return self._failed(h, item, ctx, point, e)
        reason, ctx._note = ctx._note, ""
        if out is None:
            ctx.trace.record(h.label, point, "drop", before, None, reason)
        else:
            after = _text_of(out)
            if after != before or type(out) is not type(item):
                ctx.trace.record(h.label, point, "rewrite", before, after, reason)
        return out, False

    def _failed(self, h: _Hook, item: Any, ctx: TurnContext, point: str,
                exc: BaseException) -> tuple[None, bool]:
        """Record why a hook did not pass its item; the item is blocked (fail-closed)."""
        ctx._note = ""
        if isinstance(exc, Blocked):
            ctx.trace.record(h.label, point, "block", _text_of(item), None, exc.reason)
            if exc.fallback:
                # read (and cleared) by whoever handles the block, right after this hook
                ctx.block_fallback = exc.fallback
        elif isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            ctx.trace.record(h.label, point, "timeout", _text_of(item), None,
                             f"over its time budget of {h.timeout}s: blocked (fail-closed)")
        else:
            msg = f"{type(exc).__name__}: {exc}"
            ctx.trace.record(h.label, point, "error", _text_of(item), None,
                             f"{msg}; blocked (fail-closed)")
            ctx.trace.error(f"middleware:{h.label}", msg)
            ctx.emit(ErrorEvent(message=f"middleware {h.label!r} failed on {point} ({msg}); "
                                "the item was blocked and the turn goes on. Fix the middleware "
                                "or remove it from the agent.", stage=f"middleware:{h.label}"))
        return None, True

    async def run_hooks(self, hooks: list[_Hook], item: Any, ctx: TurnContext, point: str,
                        ) -> tuple[Any, Middleware | None]:
        """Pass ``item`` through ``hooks``. Returns (item or None, middleware that blocked)."""
        for h in hooks:
            if point == "utterance":
                t0 = perf_counter()
                item, blocked = await self._call(h, item, ctx, point)
                ctx.trace.add_time(f"utterance:{h.label}", perf_counter() - t0)
            else:
                item, blocked = await self._call(h, item, ctx, point)
            if blocked:
                return None, h.mw
            if item is None:
                return None, None
        return item, None

    async def process_input(self, turn: UserTurn, ctx: TurnContext) -> tuple[UserTurn | None, Middleware | None]:
        return await self.run_hooks(self.input_hooks, turn, ctx, "input")

    async def process_utterance(self, utt: Utterance, ctx: TurnContext) -> tuple[Utterance | None, Middleware | None]:
        if not self.utterance_hooks:
            return utt, None
        return await self.run_hooks(self.utterance_hooks, utt, ctx, "utterance")

    async def process_audio(self, chunk: AudioChunk, ctx: TurnContext) -> AudioChunk | None:
        if not self.audio_hooks:
            return chunk
        out, _ = await self.run_hooks(self.audio_hooks, chunk, ctx, "audio")
        return out

    # ------------------------------------------------------------------ the stream

    def process_stream(self, source: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        """Chain every event stage over the Thinker's stream; returns the output stream."""
        stream = source
        for stage in self.event_stages:
            if isinstance(stage, list):
                stream = self._hook_stage(stream, stage, ctx)
            else:
                stream = self._stream_stage(stream, stage, ctx)
        return stream

    async def _hook_stage(self, source: AsyncIterator[Event], hooks: list[_Hook],
                          ctx: TurnContext) -> AsyncGenerator[Event, None]:
        fast = all(not h.is_async and h.timeout is None for h in hooks)
        fns = [(h, h.fn) for h in hooks]
        emitted = ctx._emitted
        ev: Event | None  # a hook may drop it
        try:
            async for ev in source:
                if type(ev) is RoundEnd:
                    yield ev
                    continue
                if fast:
                    # The hot path: plain calls, no await, no timing. The text is read once
                    # per hook (after it): a hook that passes the event on unchanged costs a
                    # call, an identity check and a comparison.
                    before = getattr(ev, "text", None)
                    for h, fn in fns:
                        try:
                            out = fn(ev, ctx)
                        except BaseException as e:  # noqa: BLE001 - fail-closed, recorded
                            if is_cancellation(e):
                                raise
                            ev, _ = self._failed(h, ev, ctx, "event", e)
                            break
                        if out is ev:  # passed on, maybe changed in place
                            after = getattr(ev, "text", None)
                            if after != before:
                                ctx.trace.record(h.label, "event", "rewrite", before, after, ctx._note)
                                ctx._note = ""
                                before = after
                            continue
                        if out is None:
                            ctx.trace.record(h.label, "event", "drop", before, None, ctx._note)
                            ctx._note = ""
                            ev = None
                            break
                        if not isinstance(out, Event):
                            ev, _ = self._failed(h, ev, ctx, "event", _WrongType(h, "event", out))
                            break
                        after = getattr(out, "text", None)
                        if after != before:
                            ctx.trace.record(h.label, "event", "rewrite", before, after, ctx._note)
                            ctx._note = ""
                            before = after
                        ev = out
                else:
                    for h in hooks:
                        ev, blocked = await self._call(h, ev, ctx, "event")
                        if ev is None:
                            break
                if emitted:
                    for extra in emitted:
                        yield extra
                    emitted.clear()
                if ev is not None:
                    yield ev
        finally:
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()  # the stage upstream ends with this one

    async def _stream_stage(self, source: AsyncIterator[Event], mw: Middleware,
                            ctx: TurnContext) -> AsyncGenerator[Event, None]:
        """Run a stream-level middleware, measuring how long it holds content back."""
        label = mw.label
        pending_since: list[float | None] = [None]

        async def counted() -> AsyncGenerator[Event, None]:
            try:
                async for ev in source:
                    if pending_since[0] is None and type(ev) is TextDelta:
                        pending_since[0] = monotonic()
                    yield ev
            finally:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()

        upstream = counted()
        out = mw.stream(upstream, ctx)
        try:
            async for ev in out:
                since = pending_since[0]
                if since is not None:
                    held = monotonic() - since
                    pending_since[0] = None
                    if held > 0:
                        ctx.trace.add_hold(label, held)
                if ctx._emitted:
                    for e in ctx._emitted:
                        yield e
                    ctx._emitted.clear()
                yield ev
        except BaseException as e:  # noqa: BLE001 - contained: the turn goes on
            if is_cancellation(e) or isinstance(e, GeneratorExit):
                raise
            msg = f"{type(e).__name__}: {e}"
            ctx.trace.record(label, "stream", "error", None, None, f"{msg}; rest of the stream blocked (fail-closed)")
            ctx.trace.error(f"middleware:{label}", msg)
            yield ErrorEvent(message=f"middleware {label!r} failed in its stream ({msg}); the rest "
                             "of this answer was blocked. Fix the middleware or remove it.",
                             stage=f"middleware:{label}", session_id=ctx.session_id, turn_id=ctx.turn_id)
        finally:
            aclose = getattr(out, "aclose", None)
            if aclose is not None:
                await aclose()
            await upstream.aclose()  # also when the middleware crashed mid-stream
