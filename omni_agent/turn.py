"""One running turn: the machinery between a user's turn and its TurnEnd.

A turn flows: speech recognition (when the Thinker cannot hear) -> input hooks ->
Thinker rounds -> event hooks / stream middleware -> segmenter -> utterance hooks ->
Talker -> audio hooks. The Thinker side (:meth:`TurnRunner.think`) is a chain of plain
async generators, no task per stage; the Talker side (:meth:`TurnRunner.talk`) runs
beside it, joined by a bounded queue, so the Talker starts on the first approved clause
while the Thinker is still generating, and a slow Talker slows the Thinker down instead of
letting memory grow. Everything the turn produces goes to one bounded output queue that
the session's reader drains (:meth:`TurnRunner.events`).

:class:`~omni_agent.agent.Session` makes one :class:`TurnRunner` per turn; its
``interrupt()`` is :meth:`TurnRunner.interrupt` (barge-in cancels the turn's scope).
"""

from __future__ import annotations

import asyncio
import contextlib
from time import monotonic
from typing import TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator, Awaitable, Callable, cast

import anyio

from .bus import Middleware, RoundEnd, TurnContext
from .errors import UnsupportedInputError
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
from .redaction import redact, redacted_event, redacted_message
from .talker import Talker
from .tasks import task_group
from .thinker import Message
from .trace import Segment, Trace

if TYPE_CHECKING:
    from .agent import Session

__all__ = ["TurnRunner", "STALE"]

#: Output that an interruption makes moot if it is still on its way to the reader.
STALE = frozenset({AudioChunk, Utterance, TextDelta, ReasoningDelta})


class _Raise:
    """Carries an exception from the turn's driver to its reader (bad input found late)."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


class TurnRunner:
    """Runs one turn of a session and holds what only that turn needs: its context, its
    output queue, the cancel scope an interruption cancels, and the text said so far.

    ``drive(turn)`` does the whole turn (the session starts it in the turn's task group);
    ``events()`` reads its output; ``interrupt()`` stops it.
    """

    def __init__(self, session: Session, ctx: TurnContext, out: asyncio.Queue[Any], *,
                 commit: Callable[[], Awaitable[bool]] | None = None):
        self.session = session
        self.agent = session.agent
        self.ctx = ctx
        self.out = out
        self.session_id = session.id
        self.turn_id = ctx.turn_id
        #: Cancelled by an interruption; None once the turn's work is over (nothing left to stop).
        self.scope: anyio.CancelScope | None = anyio.CancelScope()
        #: Interrupted with forget=True: the turn leaves nothing in the history.
        self.forget = False
        #: Awaited when the work is done, before memory; False: the turn is forgotten.
        self.commit = commit
        self.clause_mode = self.agent.display == "clause"
        self.display: list[str] = []  # what was shown, clause by clause or token by token
        self.notes: list[str] = []  # display-only lines (sources): shown, never spoken

    # ------------------------------------------------------------------ control

    def interrupt(self, reason: str, *, forget: bool = False) -> bool:
        """Cancel the turn's work (see :meth:`Session.interrupt <omni_agent.agent.Session.interrupt>`).
        False when there is nothing left to stop."""
        ctx, scope, out = self.ctx, self.scope, self.out
        if scope is None or ctx.interrupted:
            return False
        ctx.interrupted = True
        ctx.interrupt_reason = reason
        self.forget = forget
        ctx.trace.mark("interrupted")
        scope.cancel()
        # Output queued but not yet read is moot now (it will not be played); the rest (the
        # user's turn, errors, the turn's end) stays, so the reader still learns all of it.
        kept = []
        while not out.empty():
            ev = out.get_nowait()
            if type(ev) not in STALE:
                kept.append(ev)
        for ev in kept:
            out.put_nowait(ev)
        return True

    async def events(self, ended: list[bool]) -> AsyncGenerator[Event, None]:
        """The events of the turn, in order, until its end (``ended`` gets a mark)."""
        out, ctx = self.out, self.ctx
        while True:
            ev = await out.get()
            if ev is _END:
                ended.append(True)
                return
            if type(ev) is _Raise:
                ended.append(True)
                raise ev.exc
            if ctx.interrupted and type(ev) in STALE:
                continue  # made just before the interruption landed: moot
            yield ev

    # ------------------------------------------------------------------ the turn

    async def drive(self, turn: UserTurn) -> None:
        """The whole turn, inside one cancel scope (``interrupt()`` cancels it), then its
        end: Interruption (if any), memory, TurnEnd."""
        agent, ctx, out = self.agent, self.ctx, self.out
        first_new: int | None = None
        refused: str | None = None
        assert self.scope is not None
        with self.scope:
            try:
                await self._hear(turn)
                self._check_modalities(turn)
            except Exception as e:  # noqa: BLE001 - raised to the consumer, as it was given
                await out.put(_Raise(e))
                return
            history, history_error = await agent._history_calls.load_for_turn(
                self.session_id, self.turn_id, ctx.trace)
            await out.put(turn)
            if history_error is not None:
                await out.put(history_error)
            accepted, blocker = await agent.bus.process_input(turn, ctx)
            for emitted in ctx.take_emitted():
                await out.put(emitted)
            if accepted is None:
                refused = await self._refuse(blocker)
            else:
                ctx.messages = self._prompt(history, accepted)
                first_new = len(ctx.messages) - 1  # the user message and what follows are this turn's
                await self._answer()
        # The turn's work is over: from here on an interrupt() has nothing left to stop.
        self.scope = None
        if ctx.interrupted:
            await out.put(Interruption(reason=ctx.interrupt_reason or "barge-in",
                                       session_id=self.session_id, turn_id=self.turn_id))
        if refused is not None and not ctx.interrupted:
            await self._end("blocked", refused, refused if agent.talker else "")
        else:
            await self._finish(first_new)

    async def _answer(self) -> None:
        """The Thinker side and the Talker side of an accepted turn, in the turn's task group."""
        agent, ctx = self.agent, self.ctx
        talker = agent.talker
        try:
            async with task_group() as tg:
                ctx.task_group = tg
                if talker is None:
                    await self.think(None)
                else:
                    # The Thinker side is the task (its start-up cost lands before the first
                    # token); the Talker side runs here, already waiting for the first clause.
                    utt_q: asyncio.Queue[Any] = asyncio.Queue(maxsize=agent.talker_buffer)
                    tg.start_soon(self.think, utt_q)
                    await self.talk(utt_q, talker)
        finally:
            ctx.task_group = None

    async def _finish(self, first_new: int | None) -> None:
        """The end of a turn that was answered (or interrupted): memory, then TurnEnd."""
        agent, ctx, trace = self.agent, self.ctx, self.ctx.trace
        talker = agent.talker
        interrupted = ctx.interrupted
        said = (" " if self.clause_mode else "").join(self.display).strip()
        text = " ".join([said, *self.notes]).strip()
        reason = "interrupted" if interrupted else ("error" if trace.errors and not text else "completed")
        if reason == "completed" and ctx.finish_reason == "length":
            reason = "max_tokens"  # the answer was cut by the token limit: say so
        _finish_segments(trace, interrupted, talker is not None)
        spoken = trace.spoken_text if talker is not None else ""
        remembered = said  # display-only notes (sources) are not part of the conversation
        if interrupted:
            # Memory keeps what the user actually heard (or saw, for a text agent).
            remembered = spoken if talker is not None else text
        if agent._show_redact:
            for call in trace.tool_calls:
                call["arguments"] = redact(agent._show_redact, call.get("arguments"))
                call["result"] = redact(agent._show_redact, call.get("result"))
        if self.commit is not None and not await self.commit():
            self.forget = interrupted = True  # a discarded draft: nothing of it is kept
        # A failed turn (the Thinker could not answer) is not remembered: its input would
        # otherwise be re-sent, and fail again, on every later turn. Nor is one interrupted
        # with forget=True (a draft that was never the user's turn).
        if reason != "error" and first_new is not None and not (interrupted and self.forget):
            await self._remember(ctx.messages[first_new:], remembered, interrupted)
        await self._end(reason, text, spoken)

    async def _remember(self, turn_msgs: list[Message], reply: str, interrupted: bool) -> None:
        agent = self.agent
        if agent._keep_redact:
            turn_msgs = [redacted_message(m, agent._keep_redact) for m in turn_msgs]
        turn_msgs.append(Message("assistant", reply))
        saved = await agent._history_calls.save_for_turn(self.session_id, self.turn_id, self.ctx.trace,
                                                         turn_msgs, interrupted)
        if saved is not None:
            await self.out.put(saved)

    async def _end(self, reason: str, text: str, spoken: str) -> None:
        self.ctx.trace.mark("end")
        await self.out.put(TurnEnd(reason=reason, text=text, spoken=spoken, session_id=self.session_id,
                                   turn_id=self.turn_id))
        await self.out.put(_END)

    # ------------------------------------------------------------------ before the Thinker

    async def _hear(self, turn: UserTurn) -> None:
        """Transcribe audio parts when the Thinker cannot take audio itself."""
        agent, trace = self.agent, self.ctx.trace
        audio = [p for p in turn.parts if isinstance(p, AudioPart) and p.transcript is None]
        if not audio or "audio" in agent.thinker.accepts:
            return
        ears = agent.ears
        if ears is None:
            raise UnsupportedInputError(
                f"the {agent.thinker.name} Thinker cannot hear audio and the agent has no "
                "ears: pass Agent(ears=Ears()) (speech recognition) or use a Thinker that takes "
                "audio (qwen3-omni, vllm-omni)")
        t0 = monotonic()
        trace.mark("asr_start", t0)
        for p in audio:
            p.transcript = await ears.transcribe(p)
        trace.add_time("asr", monotonic() - t0)

    def _check_modalities(self, turn: UserTurn) -> None:
        thinker = self.agent.thinker
        accepts = thinker.accepts
        missing = set()
        for p in turn.parts:
            if p.kind not in accepts and not (isinstance(p, AudioPart) and p.transcript is not None):
                missing.add(p.kind)
        if missing:
            kinds = ", ".join(sorted(missing))
            raise UnsupportedInputError(
                f"the {thinker.name} Thinker cannot take {kinds} input (it takes "
                f"{', '.join(sorted(accepts))}): use a Thinker that does (qwen3-omni, vllm-omni, "
                "an OpenAI-compatible multimodal server) or leave the attachment out")

    def _prompt(self, history: list[Message], turn: UserTurn) -> list[Message]:
        agent, ctx = self.agent, self.ctx
        msgs: list[Message] = []
        system = self.session.system_prompt
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

    async def _refuse(self, blocker: Middleware | None) -> str:
        """The input rails blocked the user's turn: say the fallback line, run no Thinker.
        Runs inside the turn's scope, so an interruption stops the line mid-way."""
        ctx, out = self.ctx, self.out
        line = ctx.block_fallback or (blocker.fallback if blocker else None) or self.agent.fallback or ""
        ctx.block_fallback = None
        talker = self.agent.talker
        if line:
            utt = Utterance(text=line, display=line, fallback=True, session_id=self.session_id,
                            turn_id=self.turn_id)
            seg = Segment(0, None, line, line, "blocked", fallback=True, delivered=talker is None)
            ctx.trace.segments.append(seg)
            await out.put(utt)
            if talker is not None:
                chunks = talker.speak(utt)
                try:
                    async for chunk in chunks:
                        chunk.session_id, chunk.turn_id = self.session_id, self.turn_id
                        await out.put(chunk)
                finally:
                    await _close(chunks)  # an interruption mid-line reaches the Talker now
                seg.delivered = True
        return line

    # ------------------------------------------------------------------ the Thinker side

    async def rounds(self) -> AsyncIterator[Event]:
        """The Thinker's stream over all rounds of the turn (tool rounds included)."""
        agent, ctx = self.agent, self.ctx
        trace = ctx.trace
        sid, tid = self.session_id, self.turn_id
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

    async def segmented(self, stream: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Cut display text into utterances; pass every other event on."""
        seg = self.agent.make_segmenter()
        ctx = self.ctx
        trace = ctx.trace
        sid, tid, lang = self.session_id, self.turn_id, ctx.lang
        n = 0
        try:
            async for ev in stream:
                t = type(ev)
                if t is TextDelta:
                    yield ev
                    for clause in seg.feed(cast(TextDelta, ev).text):
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
                    utt = cast(Utterance, ev)
                    utt.added = True
                    utt.index = n
                    n += 1
                    if utt.original is None:
                        utt.original = utt.text
                    yield utt
                else:
                    if t is ReasoningDelta:
                        trace.reasoning += cast(ReasoningDelta, ev).text
                    yield ev
            for clause in seg.flush():
                yield Utterance(text=clause, display=clause, original=clause, index=n, lang=lang,
                                session_id=sid, turn_id=tid)
                n += 1
        finally:
            await _close(stream)  # the stage upstream ends with this one

    async def approved(self, stream: AsyncIterator[Event]) -> AsyncGenerator[Event, None]:
        """Run each utterance through the utterance hooks; blocked ones become the fallback."""
        agent, ctx = self.agent, self.ctx
        bus, trace = agent.bus, ctx.trace
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
                                    session_id=self.session_id, turn_id=self.turn_id)
        finally:
            await _close(stream)  # the stage upstream ends with this one

    async def think(self, utt_q: asyncio.Queue[Any] | None) -> None:
        """The Thinker side: rounds -> bus -> segmenter -> approval, into the output queue
        (and approved clauses to the Talker). Plain generators: no task per stage."""
        agent, ctx, out = self.agent, self.ctx, self.out
        display, notes, clause_mode = self.display, self.notes, self.clause_mode
        show_redact = agent._show_redact
        chain = self.approved(self.segmented(agent.bus.process_stream(self.rounds(), ctx)))
        try:
            async with contextlib.aclosing(chain):
                async for ev in chain:
                    t = type(ev)
                    if t is Utterance:
                        utt = cast(Utterance, ev)
                        if utt.added and not utt.text.strip() and utt.display:
                            notes.append(utt.display)  # display only (e.g. sources): shown, not spoken
                        elif clause_mode and utt.display:
                            display.append(utt.display)
                        await out.put(utt)  # shown before its audio
                        if utt_q is not None and utt.text.strip():
                            await utt_q.put(utt)  # display-only utterances (no spoken text) skip the Talker
                            # Let the Talker start on it now, even if the Thinker never waits.
                            await asyncio.sleep(0)
                        continue
                    elif t is TextDelta and not clause_mode:
                        display.append(cast(TextDelta, ev).text)
                    elif (t is ToolCall or t is ToolResult) and show_redact:
                        # a copy: the Thinker keeps the real one
                        ev = redacted_event(cast("ToolCall | ToolResult", ev), show_redact)
                    await out.put(ev)
        except Exception as e:  # noqa: BLE001 - a failed Thinker ends the turn, not the session
            msg = str(e) or type(e).__name__
            ctx.trace.error("thinker", msg)
            await out.put(ErrorEvent(message=msg, stage="thinker", recoverable=True,
                                     session_id=self.session_id, turn_id=self.turn_id))
        if utt_q is not None:
            await utt_q.put(None)

    # ------------------------------------------------------------------ the Talker side

    async def talk(self, utt_q: asyncio.Queue[Any], talker: Talker) -> None:
        """The Talker side: speak approved utterances one by one as they come."""
        by_index: dict[int, Segment] = {}
        trace = self.ctx.trace
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
                await self._speak(utt, talker, seg)
            except Exception as e:  # noqa: BLE001 - the text side goes on without this clause
                msg = f"{type(e).__name__}: {e}"
                trace.error("talker", msg)
                if seg is not None:
                    seg.status = "failed"
                await self.out.put(ErrorEvent(message=f"the Talker failed on clause {utt.index} ({msg})",
                                              stage="talker", session_id=self.session_id, turn_id=self.turn_id))

    async def _speak(self, utt: Utterance, talker: Talker, seg: Segment | None) -> None:
        """One utterance through the Talker and the audio hooks, into the output queue."""
        ctx, out = self.ctx, self.out
        bus, trace = self.agent.bus, ctx.trace
        sid, tid = self.session_id, self.turn_id
        chunks = talker.speak(utt)
        try:
            async for chunk in chunks:
                trace.mark("talker_first_audio")
                chunk.session_id, chunk.turn_id = sid, tid
                processed = await bus.process_audio(chunk, ctx)
                if processed is not None:
                    await out.put(processed)
        finally:
            await _close(chunks)
            if seg is not None:
                seg.ended = monotonic() - trace.started
        if seg is not None:
            seg.delivered = True
            if seg.status == "speaking":
                seg.status = "spoken"


def _finish_segments(trace: Trace, interrupted: bool, has_talker: bool) -> None:
    """The segments' final status: shown (a text agent's), or interrupted mid-way."""
    for s in trace.segments:
        if not has_talker and not interrupted and s.status in ("pending", "blocked"):
            s.delivered = True
            if s.status == "pending":
                s.status = "shown"
        elif interrupted and s.status in ("pending", "speaking"):
            s.status = "interrupted"


async def _close(it: Any) -> None:
    """Close an async iterator that can be closed (an async generator)."""
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()
