"""The tool-calling middleware: recognises the Thinker's tool calls, runs them, feeds the
results back and continues the turn.

::

    agent = Agent(thinker=..., tools=[current_time, calculator])   # put first automatically
    agent = Agent(thinker=..., tools=[...],
                  middleware=[ToolCalling(timeout=5, filler="One moment.", confirm=ask_user)])

What it recognises, per Thinker round:

* native :class:`~omni_agent.events.ToolCall` events (the HTTP backends assemble them
  from OpenAI tool-call deltas; the transformers backend from the model's text);
* calls written as text, by default the Hermes/Qwen form
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` — even when the tags and
  the JSON are split across stream chunks. Only text that may still turn out to be the
  start of a call is held back; a call's markup is never shown or spoken.

Ordering rules for a round that has both text and calls (each one is tested):

1. Text before the first call streams on at once; it is spoken before any tool runs (the
   round's end is passed on first, so the segmenter flushes the last clause).
2. The call markup is never passed on as text; each call is passed on as a ToolCall event
   where it occurred, then its ToolResult when it finishes.
3. Text after a call in the same round is dropped (a model that goes on writing after
   a call is guessing the result); the trace records the drop.
4. The next round gets the round's text as the assistant message with the calls, so the
   Thinker knows it was said; if the next round starts by repeating that text anyway, the
   repetition is dropped: text before a call is spoken once, never repeated.
5. If the round's tools take longer than ``filler_after`` seconds and nothing was said
   before the calls, the ``filler`` line is spoken (at most once per turn).
6. When every call of a round is to a tool whose result is the answer (``@tool(return_direct=
   True)``, or named in ``return_direct``) and each succeeded, the results are the answer:
   they are passed on as text — through the segmenter and the utterance middleware like any
   clause — and no further Thinker round runs. An error result always goes back to the
   Thinker instead.
7. A tool's error text is never read out to the user: if the Thinker's next round starts by
   repeating the error, that round's text is dropped (the trace keeps it) and the
   ``error_apology`` line is said instead.

Bounds: at most ``max_rounds`` tool rounds per turn (then the calls get an error result
and the Thinker is asked to answer without tools); each call has a timeout (the tool's own
``timeout`` or this middleware's); a tool error, invalid arguments, an unknown tool, a
timeout or a refused confirmation become an error :class:`ToolResult` the Thinker can
react to — never a crash. Tools of one round run in parallel as tasks in the turn's own
task group (``ctx.task_group``): the round cancels them when it is closed, the turn
cancels them on barge-in and awaits them before it ends — none outlives its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
import uuid
from dataclasses import dataclass
from time import monotonic
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence

import anyio
import anyio.to_thread

from omni_agent.bus import Middleware, RoundEnd, TurnContext, is_cancellation
from omni_agent.errors import ToolError
from omni_agent.events import ErrorEvent, Event, TextDelta, TextPart, ToolCall, ToolResult, Utterance
from omni_agent.thinker import Message
from omni_agent.tools.registry import Tool, ToolRegistry

__all__ = ["ToolCalling", "TagFormat", "HERMES", "TextCallParser", "ParsedCall",
           "parse_call_body", "ConfirmPolicy"]

# confirm(call, tool, ctx) -> True to let the call run.
ConfirmPolicy = Callable[[ToolCall, Tool, TurnContext], "bool | Awaitable[bool]"]


@dataclass(frozen=True, slots=True)
class TagFormat:
    """A text format that wraps each call in tags, with JSON inside:
    ``{"name": ..., "arguments": {...}}`` (``"parameters"`` is accepted too), or a list
    of such objects."""

    open: str
    close: str


HERMES = TagFormat("<tool_call>", "</tool_call>")
"""Hermes / Qwen2.5 / Qwen3 (and many fine-tunes' chat templates)."""


@dataclass(slots=True)
class ParsedCall:
    """A call found in text. ``error`` is set when the markup held no valid call."""

    name: str
    arguments: str
    raw: str
    error: str | None = None


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


def parse_call_body(body: str) -> list[ParsedCall]:
    """Parse what stood between the tags: one call object or a list of them."""
    raw = body
    s = _FENCE.sub("", body.strip())
    try:
        obj = json.loads(s)
    except ValueError:
        # Models sometimes write a valid object followed by junk: take the object.
        start = s.find("{")
        try:
            obj, _ = json.JSONDecoder().raw_decode(s[start:]) if start >= 0 else (None, 0)
        except ValueError as e:
            return [ParsedCall("", "", raw, f"the tool call is not valid JSON ({e})")]
    objs = obj if isinstance(obj, list) else [obj]
    out = []
    for o in objs:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or not o["name"]:
            out.append(ParsedCall("", "", raw, 'the tool call has no "name"'))
            continue
        args = o.get("arguments", o.get("parameters", {}))
        if args is None:
            args = {}
        out.append(ParsedCall(o["name"], args if isinstance(args, str) else json.dumps(args), raw))
    return out


class TextCallParser:
    """Finds calls in streamed text, chunk by chunk.

    ``feed(text)`` returns a list of plain-text strings and :class:`ParsedCall` items in
    stream order; text that may be the start of an opening tag is held until the next
    chunk decides it. ``flush()`` ends the round: held text is released, an unclosed call
    is parsed as it stands (generation often stops before the closing tag).
    """

    __slots__ = ("formats", "held", "fmt", "body")

    def __init__(self, formats: Sequence[TagFormat] = (HERMES,)):
        self.formats = tuple(formats)
        self.held = ""
        self.fmt: TagFormat | None = None
        self.body = ""

    @property
    def idle(self) -> bool:
        return self.fmt is None and not self.held

    def feed(self, text: str) -> list[str | ParsedCall]:
        out: list[str | ParsedCall] = []
        s = self.held + text
        self.held = ""
        while s:
            if self.fmt is not None:
                self.body += s
                s = ""
                j = self.body.find(self.fmt.close)
                if j < 0:
                    break
                body, s = self.body[:j], self.body[j + len(self.fmt.close):]
                self.body, self.fmt = "", None
                out.extend(parse_call_body(body))
                continue
            best, best_fmt = -1, None
            for f in self.formats:
                i = s.find(f.open)
                if i >= 0 and (best < 0 or i < best):
                    best, best_fmt = i, f
            if best_fmt is not None:
                if best:
                    out.append(s[:best])
                self.fmt, self.body = best_fmt, ""
                s = s[best + len(best_fmt.open):]
                continue
            keep = self._partial_open(s)
            if keep:
                self.held = s[-keep:]
                s = s[:-keep]
            if s:
                out.append(s)
            break
        return out

    def _partial_open(self, s: str) -> int:
        """Length of the longest tail of ``s`` that starts some opening tag."""
        best = 0
        n = len(s)
        for f in self.formats:
            first = f.open[0]
            for k in range(max(0, n - len(f.open) + 1), n):
                if s[k] == first and f.open.startswith(s[k:]):
                    best = max(best, n - k)
                    break
        return best

    def flush(self) -> list[str | ParsedCall]:
        out: list[str | ParsedCall] = []
        if self.fmt is not None:
            body, self.body, self.fmt = self.body, "", None
            if body.strip():
                out.extend(parse_call_body(body))
        elif self.held:
            out.append(self.held)
        self.held = ""
        return out


def _match_said(buf: str, said: str) -> int | None:
    """Compare ``buf`` with ``said`` ignoring whitespace and case.

    Returns the index in ``buf`` just past a full repetition of ``said``; ``None`` while
    ``buf`` is still a prefix of it; ``-1`` once they differ.
    """
    i = j = 0
    n, m = len(buf), len(said)
    while True:
        while j < m and said[j].isspace():
            j += 1
        if j == m:
            return i
        while i < n and buf[i].isspace():
            i += 1
        if i == n:
            return None
        if buf[i].lower() != said[j].lower():
            return -1
        i += 1
        j += 1


class _ErrorEcho:
    """Decides whether a Thinker round repeats a tool's error text (rule 7).

    The round's first characters are held until they show an echo (they start with
    "error", or share a run of ``window`` characters with an error message) or not
    (``decide_at`` characters without one, or the round's end). Once an echo is seen the
    rest of the round is swallowed.
    """

    window = 20
    decide_at = 48

    def __init__(self, errors: list[str]):
        self.errors = [" ".join(e.lower().removeprefix("error:").split()) for e in errors]
        self.held = ""
        self.decided = False
        self.echoed = False
        self.apologised = False

    def _is_echo(self, text: str) -> bool:
        t = " ".join(text.lower().split())
        if t.startswith("error") or t.startswith("sorry, error"):
            return True
        w = self.window
        return any(e[i:i + w] in t for e in self.errors for i in range(0, max(1, len(e) - w + 1), 4)
                   if len(e) >= w)

    def feed(self, text: str) -> str:
        """Take text of the round; returns what may pass on now."""
        if self.decided:
            if self.echoed:
                self.held += text  # swallowed, kept for the trace
                return ""
            return text
        self.held += text
        if self._is_echo(self.held):
            self.decided = self.echoed = True
        elif len(self.held.strip()) >= self.decide_at:
            self.decided = True
        return ""

    def finish(self) -> str:
        """The round ended: decide with what there is; returns held text that may pass."""
        if not self.decided:
            self.decided = True
            self.echoed = self._is_echo(self.held)
        if self.echoed:
            return ""
        held, self.held = self.held, ""
        return held


def _how_to_call(error: str) -> str:
    return (f"{error}. Write calls as "
            f'{HERMES.open}{{"name": "<tool>", "arguments": {{...}}}}{HERMES.close}')


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


class ToolCalling(Middleware):
    """Runs the Thinker's tool calls on the bus (a stream-level middleware).

    * ``registry`` — the tools (a :class:`ToolRegistry` or a list); ``None`` uses the
      agent's (``Agent(tools=...)``);
    * ``timeout`` — seconds per call unless the tool sets its own;
    * ``max_rounds`` — tool rounds per turn;
    * ``filler`` / ``filler_after`` — the line spoken when tools run longer than that many
      seconds (``None``: never);
    * ``confirm`` — policy ``(call, tool, ctx) -> bool`` (sync or async) asked before each
      call of a tool made with ``confirm=True``; without a policy such tools are refused;
    * ``formats`` — text call formats to recognise (``[]`` for native calls only);
    * ``return_direct`` — names of tools whose result is the answer (besides tools made
      with ``return_direct=True``): no second Thinker round after them (rule 6);
    * ``error_apology`` — what is said instead of a Thinker answer that repeats a tool's
      error (rule 7);
    * ``router`` — a :class:`~omni_agent.tools.router.ToolRouter` that picks the tool for
      a turn from the user's words (for small models, see docs/tools.md); with it, the
      first round is constrained to a valid call of the picked tool and later rounds
      answer without tools;
    * ``constrain`` — with a router, use schema-constrained decoding for the call
      (the transformers backend honours it); ``few_shot`` — show the tools' examples to
      the model in that round.
    """

    name = "tools"

    def __init__(self, registry: ToolRegistry | Iterable[Any] | None = None, *,
                 timeout: float = 30.0, max_rounds: int = 4,
                 filler: str | None = "One moment…", filler_after: float = 1.0,
                 confirm: ConfirmPolicy | None = None,
                 formats: Sequence[TagFormat] = (HERMES,),
                 router: Any = None, constrain: bool = True, few_shot: bool = True,
                 return_direct: Iterable[str] = (),
                 error_apology: str = "Sorry, I couldn't do that.",
                 name: str | None = None):
        super().__init__(name=name)
        if registry is not None and not isinstance(registry, ToolRegistry):
            registry = ToolRegistry(registry)
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.registry: ToolRegistry | None = registry
        self.tool_timeout = timeout
        self.max_rounds = max_rounds
        self.filler = filler
        self.filler_after = filler_after
        self.confirm = confirm
        self.formats = tuple(formats)
        if router is True:
            from omni_agent.tools.router import ToolRouter

            router = ToolRouter()
        elif isinstance(router, dict):
            from omni_agent.tools.router import ToolRouter

            router = ToolRouter(**router)
        self.router = router or None
        self.constrain = constrain
        self.few_shot = few_shot
        self.return_direct = frozenset(return_direct)
        self.error_apology = error_apology
        # The hot path checks one character: the first of every opening tag.
        self._open_chars = "".join(sorted({f.open[0] for f in self.formats}))

    def warm_up(self, agent: Any = None) -> bool:
        """Load what the first routed turn would load (the router's embedding model, the
        constrained decoder's view of the tokenizer). Returns True if anything was loaded."""
        if self.router is None:
            return False
        registry = self.registry or getattr(agent, "tools", None) or ToolRegistry()
        warm = getattr(self.router, "warm", None)
        if callable(warm):
            warm(registry)
        thinker = getattr(agent, "thinker", None)
        warm_constraints = getattr(thinker, "warm_constraints", None)
        if self.constrain and callable(warm_constraints):  # llama.cpp: its grammar tokenizer
            warm_constraints()
            return True
        tok = getattr(thinker, "tokenizer", None) or getattr(thinker, "_tokenizer", None)
        if self.constrain and tok is not None and len(registry):
            from omni_agent.tools.constrained import ToolCallConstraint

            ToolCallConstraint(registry, registry.names[:1])(tok)
        return True

    # ------------------------------------------------------------------ helpers

    def _registry(self, ctx: TurnContext) -> ToolRegistry:
        if self.registry is not None:
            return self.registry
        reg = getattr(ctx.agent, "tools", None)
        return reg if isinstance(reg, ToolRegistry) else ToolRegistry()

    async def _route(self, ctx: TurnContext, registry: ToolRegistry) -> None:
        """Before the first round: let the router pick a tool and shape the request."""
        users = [m for m in ctx.messages if m.role == "user"]
        if not users or not len(registry):
            return
        user = users[-1]
        earlier = users[-2].text if len(users) > 1 else None
        t0 = monotonic()
        args: tuple[Any, ...] = (user.text, registry)
        if len(inspect.signature(self.router.route).parameters) >= 3:
            args += (earlier,)  # the previous request, for follow-ups ("And in Paris?")
        pick = await anyio.to_thread.run_sync(self.router.route, *args, abandon_on_cancel=True)
        ctx.trace.add_time("tool_router", monotonic() - t0)
        from omni_agent.tools.prompting import with_calls_as_text, with_tool_examples

        opts = ctx.next_round()
        # Earlier turns' calls are shown as text: a small model's template cannot render
        # tool_calls, and an empty assistant turn would confuse it.
        opts.prompt = with_calls_as_text
        if pick is None:
            # The router speaks for the model: no tool fits, so none is offered.
            opts.tool_choice = "none"
            ctx.trace.record(self.label, "input", "route", user.text, None,
                             "no tool matches the request")
            return
        name, score = pick
        ctx.trace.record(self.label, "input", "route", user.text, name,
                         f"router picked {name!r} (similarity {score:.2f})")
        opts.tool_choice = name
        if self.constrain:
            from omni_agent.tools.constrained import ToolCallConstraint

            opts.constraint = ToolCallConstraint(registry, [name])
        if self.few_shot:
            def prompt(messages: list[Message]) -> list[Message]:
                return with_tool_examples(with_calls_as_text(messages), registry, focus=name)

            opts.prompt = prompt

    # ------------------------------------------------------------------ the stream

    async def stream(self, events: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:  # noqa: C901
        registry = self._registry(ctx)
        if self.router is not None and ctx.round == 0:
            try:
                await self._route(ctx, registry)
            except Exception as e:  # noqa: BLE001 - a failed router leaves the turn unrouted
                ctx.trace.error(f"middleware:{self.label}", f"router failed: {type(e).__name__}: {e}")
        parser = TextCallParser(self.formats) if self.formats else None
        open_chars = self._open_chars
        single = open_chars if len(self.formats) == 1 else None
        open_tag = self.formats[0].open if single is not None else ""
        rounds = 0
        filler_said = False
        said: list[str] = []          # this round's text before its first call
        calls: list[ToolCall] = []    # this round's calls, in order
        errors: dict[str, str] = {}   # call id -> why its markup was not a valid call
        dropped: list[str] = []       # text after a call, not passed on
        guard: str | None = None      # text said before the previous round's calls
        guard_buf = ""
        echo: _ErrorEcho | None = None  # the previous round's tool errors, not to be read out
        plain = True                  # nothing held, no call yet, no guard: the fast path

        async for ev in events:
            t = type(ev)
            if t is TextDelta:
                text = ev.text
                if plain:
                    if single is not None:
                        # A '<' that neither opens a tag here nor may start one at the end
                        # of this chunk is plain text too.
                        k = text.rfind(single)
                        clear = k < 0 or (open_tag not in text and not open_tag.startswith(text[k:]))
                    else:
                        clear = not any(c in text for c in open_chars)
                    if clear:
                        said.append(text)
                        yield ev
                        continue
                pieces: list[Any] = parser.feed(text) if parser is not None else [text]
                for p in pieces:
                    if type(p) is str:
                        if calls:
                            dropped.append(p)
                            continue
                        if echo is not None:
                            p = echo.feed(p)
                            if echo.decided:
                                for out in self._after_echo(echo, ctx, ev):
                                    said.append(out.text)
                                    yield out
                                if not echo.echoed:
                                    echo = None
                            if not p:
                                continue
                        if guard is not None:
                            guard_buf += p
                            k = _match_said(guard_buf, guard)
                            if k is None:
                                continue  # may still be a repetition: hold
                            if k >= 0:
                                ctx.trace.record(self.label, "stream", "drop",
                                                 guard_buf[:k], None,
                                                 "repeats what was said before the tool call")
                                p = guard_buf[k:]
                            else:
                                p = guard_buf
                            guard, guard_buf = None, ""
                            if not p:
                                continue
                        said.append(p)
                        yield TextDelta(p, session_id=ev.session_id, turn_id=ev.turn_id, ts=ev.ts)
                    else:
                        call = ToolCall(id=_new_id(), name=p.name, arguments=p.arguments,
                                        session_id=ev.session_id, turn_id=ev.turn_id)
                        if p.error:
                            errors[call.id] = _how_to_call(p.error)
                            call.name = p.name or "invalid_call"
                            call.arguments = p.raw
                        calls.append(call)
                        yield call
                plain = parser is None or parser.idle
                plain = plain and not calls and guard is None and echo is None
            elif t is ToolCall:
                if parser is not None and not parser.idle and not calls:
                    for p in parser.flush():  # held text before a native call is text
                        if type(p) is str:
                            said.append(p)
                            yield TextDelta(p, session_id=ev.session_id, turn_id=ev.turn_id)
                if guard_buf and not calls:  # held as a possible repetition: it was not one
                    said.append(guard_buf)
                    yield TextDelta(guard_buf, session_id=ev.session_id, turn_id=ev.turn_id)
                guard, guard_buf = None, ""
                if not ev.id:
                    ev.id = _new_id()
                calls.append(ev)
                plain = False
                yield ev
            elif t is RoundEnd:
                if parser is not None:
                    for p in parser.flush():
                        if type(p) is str:
                            if calls:
                                dropped.append(p)
                            elif guard is not None:
                                guard_buf += p
                            else:
                                said.append(p)
                                yield TextDelta(p, session_id=ev.session_id, turn_id=ev.turn_id)
                        else:
                            call = ToolCall(id=_new_id(), name=p.name or "invalid_call",
                                            arguments=p.arguments if not p.error else p.raw,
                                            session_id=ev.session_id, turn_id=ev.turn_id)
                            if p.error:
                                errors[call.id] = _how_to_call(p.error)
                            calls.append(call)
                            yield call
                if echo is not None:
                    rest = echo.finish()
                    for out in self._after_echo(echo, ctx, ev):
                        said.append(out.text)
                        yield out
                    if echo.echoed:
                        ctx.trace.record(self.label, "stream", "replace", echo.held, self.error_apology,
                                         "the Thinker repeated a tool's error; the user hears an "
                                         "apology")
                    if rest and not calls:
                        said.append(rest)
                        yield TextDelta(rest, session_id=ev.session_id, turn_id=ev.turn_id)
                    echo = None
                if guard_buf:
                    # The round ended while its text still matched part of what was said:
                    # a partial repetition is still the model's answer; let it through.
                    said.append(guard_buf)
                    yield TextDelta(guard_buf, session_id=ev.session_id, turn_id=ev.turn_id)
                guard, guard_buf = None, ""
                if dropped and "".join(dropped).strip():
                    ctx.trace.record(self.label, "stream", "drop", "".join(dropped), None,
                                     "text after a tool call in the same round is not spoken; "
                                     "the answer follows the tool results")
                dropped = []
                if not calls:
                    said, plain = [], True
                    yield ev
                    continue
                # Rule 1: the round's end goes on first, so its text is spoken now.
                yield ev
                rounds += 1
                text_before = "".join(said)
                round_calls, round_errors = calls, errors
                calls, errors, said = [], {}, []
                if rounds > self.max_rounds + 1:
                    # The Thinker was told to answer without tools and called again.
                    msg = (f"the Thinker kept calling tools after the limit of {self.max_rounds} "
                           "tool rounds; the turn ends here")
                    ctx.trace.error(f"middleware:{self.label}", msg)
                    yield ErrorEvent(message=msg, stage="tools", session_id=ctx.session_id,
                                     turn_id=ctx.turn_id)
                    plain = True
                    continue
                results: dict[str, ToolResult] = {}
                over = rounds > self.max_rounds
                quiet = not filler_said and not text_before.strip()
                running = self._run_round(round_calls, round_errors, registry, ctx, rounds, over,
                                          quiet, results)
                try:
                    async for out in running:
                        if type(out) is Utterance:
                            filler_said = True
                        yield out
                finally:
                    # Closing this stream (barge-in, consumer gone) must reach the tasks.
                    await running.aclose()
                exchange = ([Message("assistant", text_before, tool_calls=[
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in round_calls])]
                    + [Message("tool", results[c.id].content, tool_call_id=c.id, name=c.name)
                       for c in round_calls])
                exchange.extend(self._media(round_calls, results, ctx))
                if not over and self._direct(round_calls, results, registry):
                    # Rule 6: the results are the answer; the turn ends with them.
                    ctx.messages.extend(exchange)  # remembered with the turn, no new round
                    answer = " ".join(results[c.id].content.strip() for c in round_calls)
                    ctx.trace.record(self.label, "stream", "return_direct", None, answer,
                                     "the result of " + ", ".join(c.name for c in round_calls)
                                     + " is the answer: no second Thinker round")
                    yield TextDelta(answer, session_id=ctx.session_id, turn_id=ctx.turn_id)
                    yield RoundEnd(round=ev.round, session_id=ctx.session_id, turn_id=ctx.turn_id)
                    plain = True
                    continue
                ctx.continue_with(exchange)
                failed = [results[c.id].content for c in round_calls if results[c.id].is_error]
                if failed and self.error_apology:
                    echo = _ErrorEcho(failed)
                if over or self.router is not None:
                    # After the limit, or when a router decided for a small model: answer now.
                    nxt = ctx.next_round()
                    nxt.tool_choice = "none"
                    if self.router is not None:
                        from omni_agent.tools.prompting import with_calls_as_text

                        nxt.prompt = with_calls_as_text
                if text_before.strip():
                    guard = text_before
                plain = guard is None and echo is None and (parser is None or parser.idle)
            else:
                yield ev

    @staticmethod
    def _media(calls: list[ToolCall], results: dict[str, ToolResult], ctx: TurnContext) -> list[Message]:
        """The media the round's tools returned, for a Thinker that takes them: one user
        message after the tool results (chat APIs carry only text in tool messages). Media of
        a kind the Thinker cannot take stay out; the result's text says what they were."""
        thinker = getattr(ctx.agent, "thinker", None)
        accepts = getattr(thinker, "accepts", frozenset({"text"}))
        parts: list[Any] = []
        for c in calls:
            shown = [p for p in results[c.id].parts if getattr(p, "kind", None) in accepts]
            if shown:
                parts.append(TextPart(f"(what the tool {c.name!r} returned)"))
                parts.extend(shown)
        return [Message("user", parts)] if parts else []

    def _direct(self, calls: list[ToolCall], results: dict[str, ToolResult],
                registry: ToolRegistry) -> bool:
        """Rule 6: every call of the round is to a return-direct tool, and all succeeded."""
        for c in calls:
            t = registry.get(c.name)
            if t is None or results[c.id].is_error:
                return False
            if not (t.return_direct or t.name in self.return_direct):
                return False
        return True

    def _after_echo(self, echo: "_ErrorEcho", ctx: TurnContext, ev: Event) -> list[TextDelta]:
        """What to pass on once ``echo`` is decided: the apology (once) or the held text."""
        if echo.echoed:
            if echo.apologised:
                return []
            echo.apologised = True
            return [TextDelta(self.error_apology, session_id=ev.session_id, turn_id=ev.turn_id)]
        held, echo.held = echo.held, ""
        return [TextDelta(held, session_id=ev.session_id, turn_id=ev.turn_id)] if held else []

    # ------------------------------------------------------------------ running calls

    async def _run_round(self, calls: list[ToolCall], errors: dict[str, str],
                         registry: ToolRegistry, ctx: TurnContext, rnd: int, over: bool,
                         quiet: bool, results: dict[str, ToolResult]) -> AsyncIterator[Event]:
        """Run one round's calls in parallel; yields a filler (maybe) and each ToolResult
        as it finishes.

        The calls run in the turn's task group, each in a cancel scope of this round, so no
        task group spans this generator's ``yield``: closing the round (barge-in, consumer
        gone) cancels the calls; the turn awaits them."""
        jobs: list[tuple[Callable[..., Awaitable[ToolResult]], tuple[Any, ...]]] = []
        for c in calls:
            if over:
                jobs.append((self._refuse, (c, ctx, rnd, "not run: this turn already used its "
                             f"{self.max_rounds} tool rounds. Answer the user with what you have.",
                             "not_run")))
            else:
                jobs.append((self._run_one, (c, errors.get(c.id), registry, ctx, rnd)))
        tg = ctx.task_group
        if tg is None:
            # A bare bus (no agent turn): run the round to its end here, then hand it on.
            done: list[ToolResult] = []
            async with anyio.create_task_group() as local:
                for c, (fn, args) in zip(calls, jobs):
                    local.start_soon(self._call_into, fn, args, c, ctx, rnd, done.append, None)
            order = {c.id: i for i, c in enumerate(calls)}
            for res in sorted(done, key=lambda r: order[r.call_id]):
                results[res.call_id] = res
                yield res
            return
        # Each call puts exactly one result: the queue never holds more than the round.
        finished: asyncio.Queue[ToolResult] = asyncio.Queue(maxsize=len(calls))
        scopes = []
        for c, (fn, args) in zip(calls, jobs):
            scope = anyio.CancelScope()
            scopes.append(scope)
            tg.start_soon(self._call_into, fn, args, c, ctx, rnd, finished.put_nowait, scope)
        filler_due = quiet and bool(self.filler) and not over
        try:
            for _ in calls:
                res = None
                if filler_due:
                    with anyio.move_on_after(self.filler_after):
                        res = await finished.get()
                    if res is None:
                        filler_due = False
                        yield Utterance(text=self.filler, display=self.filler, original=self.filler,
                                        session_id=ctx.session_id, turn_id=ctx.turn_id)
                if res is None:
                    res = await finished.get()
                results[res.call_id] = res
                yield res
        finally:
            for scope in scopes:
                scope.cancel()

    async def _call_into(self, fn: Callable[..., Awaitable[ToolResult]], args: tuple[Any, ...],
                         call: ToolCall, ctx: TurnContext, rnd: int,
                         put: Callable[[ToolResult], None], scope: anyio.CancelScope | None) -> None:
        """One call as a task: its result (an error result if anything escaped) goes to ``put``."""
        with scope if scope is not None else contextlib.nullcontext():
            try:
                res = await fn(*args)
            except BaseException as e:  # noqa: BLE001 - a tool never takes the turn down
                if is_cancellation(e):
                    raise
                res = self._result(call, ctx, rnd, f"Error: the tool {call.name!r} failed: "
                                   f"{type(e).__name__}: {e}", "error", 0.0)
            put(res)

    def _result(self, call: ToolCall, ctx: TurnContext, rnd: int, content: str, status: str,
                seconds: float) -> ToolResult:
        is_error = status != "ok"
        ctx.trace.tool_calls.append({
            "id": call.id, "name": call.name, "arguments": call.arguments, "result": content,
            "is_error": is_error, "status": status, "seconds": round(seconds, 6), "round": rnd})
        ctx.trace.add_time(f"tool:{call.name}", seconds)
        return ToolResult(call_id=call.id, name=call.name, content=content, is_error=is_error,
                          session_id=ctx.session_id, turn_id=ctx.turn_id)

    async def _refuse(self, call: ToolCall, ctx: TurnContext, rnd: int, why: str,
                      status: str) -> ToolResult:
        return self._result(call, ctx, rnd, f"Error: {why}", status, 0.0)

    async def _run_one(self, call: ToolCall, parse_error: str | None, registry: ToolRegistry,
                       ctx: TurnContext, rnd: int) -> ToolResult:
        t0 = monotonic()
        if parse_error:
            return self._result(call, ctx, rnd, f"Error: {parse_error}", "invalid", 0.0)
        t = registry.get(call.name)
        if t is None:
            return self._result(call, ctx, rnd, f"Error: {registry._unknown(call.name)}",
                                "unknown", 0.0)
        try:
            kwargs = t.parse_arguments(call.arguments)
        except ToolError as e:
            return self._result(call, ctx, rnd, f"Error: {e}", "invalid", monotonic() - t0)
        if t.confirm:
            ok, why = await self._confirmed(call, t, ctx)
            if not ok:
                return self._result(call, ctx, rnd, f"Error: {why}", "denied", monotonic() - t0)
        timeout = t.timeout if t.timeout is not None else self.tool_timeout
        t1 = monotonic()
        try:
            with anyio.fail_after(timeout):
                output = await t.invoke_output(kwargs, ctx)
        except TimeoutError:
            return self._result(call, ctx, rnd, f"Error: the tool {t.name!r} did not finish "
                                f"within {timeout:g} s", "timeout", monotonic() - t1)
        except ToolError as e:
            return self._result(call, ctx, rnd, f"Error: {e}", "error", monotonic() - t1)
        except BaseException as e:  # noqa: BLE001 - a failing tool is a result, not a crash
            if is_cancellation(e):
                raise
            return self._result(call, ctx, rnd, f"Error: the tool {t.name!r} failed: "
                                f"{type(e).__name__}: {e}", "error", monotonic() - t1)
        res = self._result(call, ctx, rnd, output.text, "ok", monotonic() - t1)
        res.parts = list(output.parts)
        return res

    async def _confirmed(self, call: ToolCall, t: Tool, ctx: TurnContext) -> tuple[bool, str]:
        if self.confirm is None:
            return False, (f"the tool {t.name!r} needs the user's confirmation and no "
                           "confirmation policy is set; tell the user it was not done")
        try:
            answer = self.confirm(call, t, ctx)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as e:  # noqa: BLE001 - a failing policy refuses (fail-closed)
            return False, (f"the confirmation for {t.name!r} failed ({type(e).__name__}: {e}); "
                           "the tool was not run")
        if answer:
            return True, ""
        return False, (f"the user did not allow calling {t.name!r}; it was not run. Tell the "
                       "user it was not done")
