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
  start of a call is held back; a call's markup is never shown or spoken. The text is
  read by the core's markup parser (:mod:`omni_agent.markup_protocol`), the same one the
  local Thinker backends and MarkupGuard use. In a round that offers no tools (the
  router found none, or the round limit was reached: ``tool_choice="none"``; or no tool
  is registered) call markup is never run: it is kept off speech, and the trace says so.

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
import uuid
from time import monotonic
from typing import (
    Any,
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
    cast,
)

import anyio
import anyio.to_thread

from omni_agent.bus import Middleware, RoundEnd, TurnContext, is_cancellation
from omni_agent.errors import ToolError
from omni_agent.events import ErrorEvent, Event, ReasoningDelta, TextDelta, TextPart, ToolCall, ToolResult, Utterance
from omni_agent.markup_protocol import (
    HERMES,
    BadCall,
    MarkupEvent,
    MarkupFormat,
    MarkupParser,
    ParsedCall,
    Reasoning,
    TagFormat,
    Text,
    ToolCalls,
    read_calls,
)
from omni_agent.protocols import PromptWarmer
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest
from omni_agent.tools.registry import Tool, ToolRegistry

__all__ = ["ToolCalling", "TagFormat", "HERMES", "TextCallParser", "ParsedCall",
           "parse_call_body", "ConfirmPolicy"]

# confirm(call, tool, ctx) -> True to let the call run.
ConfirmPolicy = Callable[[ToolCall, Tool, TurnContext], "bool | Awaitable[bool]"]


# The text call formats and their parser live in the core (one parser for every backend
# and middleware); these names stay importable from here.
def parse_call_body(body: str) -> list[ParsedCall]:
    """Parse what stood between the tags: one call object or a list of them (never empty:
    an item with ``error`` says why the markup held no call). The core's
    :func:`~omni_agent.markup_protocol.read_calls`."""
    return read_calls(body)


class TextCallParser:
    """Finds calls in streamed text, chunk by chunk (ToolCalling's view of
    :class:`~omni_agent.markup_protocol.MarkupParser`).

    ``feed(text)`` returns a list of plain-text strings and :class:`ParsedCall` items in
    stream order; text that may be the start of an opening tag is held until the next
    chunk decides it. ``flush()`` ends the round: held text is released, an unclosed call
    is parsed as it stands (generation often stops before the closing tag). Markup that
    holds no call is one :class:`ParsedCall` with ``error`` set.
    """

    __slots__ = ("parser",)

    def __init__(self, formats: Sequence[MarkupFormat] = (HERMES,)):
        self.parser = MarkupParser(formats)

    @property
    def formats(self) -> tuple[MarkupFormat, ...]:
        return self.parser.grammar.formats

    @property
    def idle(self) -> bool:
        return self.parser.idle

    def feed(self, text: str) -> list[str | ParsedCall]:
        return _pieces(self.parser.feed(text))

    def flush(self) -> list[str | ParsedCall]:
        return _pieces(self.parser.close())


def _pieces(events: list[MarkupEvent]) -> list[str | ParsedCall]:
    out: list[str | ParsedCall] = []
    for ev in events:
        if type(ev) is Text:
            out.append(ev.text)
        elif type(ev) is ToolCalls:
            out.extend(ev.calls)
        elif type(ev) is BadCall and (ev.closed or ev.body.strip()):
            out.append(ParsedCall("", "", ev.body, ev.error))
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


class _TurnCalls:
    """ToolCalling's state in one turn: the round's text and calls as the parser reads
    them, and the holds that keep a repetition (rule 4) or an echoed tool error (rule 7)
    from being spoken. Its methods take a bus event and return the events to pass on."""

    __slots__ = ("mw", "ctx", "parser", "no_tools", "tools_off", "said", "calls", "errors", "dropped",
                 "guard", "guard_buf", "echo", "rounds", "filler_said")

    def __init__(self, mw: "ToolCalling", ctx: TurnContext, no_tools: bool):
        self.mw = mw
        self.ctx = ctx
        self.parser = MarkupParser(mw.formats) if mw.formats else None
        self.no_tools = no_tools      # the registry is empty: no round offers a tool
        self.tools_off = no_tools     # this round offers no tool: call markup is not run
        self.said: list[str] = []          # this round's text before its first call
        self.calls: list[ToolCall] = []    # this round's calls, in order
        self.errors: dict[str, str] = {}   # call id -> why its markup was not a valid call
        self.dropped: list[str] = []       # text after a call, not passed on
        self.guard: str | None = None      # text said before the previous round's calls
        self.guard_buf = ""
        self.echo: _ErrorEcho | None = None  # the previous round's tool errors, not to be read out
        self.rounds = 0
        self.filler_said = False

    @property
    def plain(self) -> bool:
        """Nothing held, no call yet, no guard: the next text may take the fast path."""
        return (self.guard is None and self.echo is None and not self.calls
                and (self.parser is None or self.parser.idle))

    def text(self, ev: TextDelta) -> list[Event]:
        """A text delta of the Thinker."""
        if self.parser is None:
            return self._take([Text(ev.text)], ev)
        return self._take(self.parser.feed(ev.text), ev)

    def native(self, ev: ToolCall) -> list[Event]:
        """A native tool call: text held before it is released first."""
        out: list[Event] = []
        if self.parser is not None and not self.parser.idle and not self.calls:
            out = self._take(self.parser.flush(), ev)
        if self.guard_buf and not self.calls:  # held as a possible repetition: it was not one
            self.said.append(self.guard_buf)
            out.append(TextDelta(self.guard_buf, session_id=ev.session_id, turn_id=ev.turn_id))
        self.guard, self.guard_buf = None, ""
        if not ev.id:
            ev.id = _new_id()
        self.calls.append(ev)
        out.append(ev)
        return out

    def end_text(self, ev: RoundEnd) -> list[Event]:
        """The round's end for its text: what is held is released, the echo and the
        repetition guard are settled, dropped text goes to the trace."""
        ctx, label = self.ctx, self.mw.label
        out = self._take(self.parser.close(), ev) if self.parser is not None else []
        echo = self.echo
        if echo is not None:
            rest = echo.finish()
            for o in self.mw._after_echo(echo, ctx, ev):
                self.said.append(o.text)
                out.append(o)
            if echo.echoed:
                ctx.trace.record(label, "stream", "replace", echo.held, self.mw.error_apology,
                                 "the Thinker repeated a tool's error; the user hears an apology")
            if rest and not self.calls:
                self.said.append(rest)
                out.append(TextDelta(rest, session_id=ev.session_id, turn_id=ev.turn_id))
            self.echo = None
        if self.guard_buf:
            # The round ended while its text still matched part of what was said: a
            # partial repetition is still the model's answer; let it through.
            self.said.append(self.guard_buf)
            out.append(TextDelta(self.guard_buf, session_id=ev.session_id, turn_id=ev.turn_id))
        self.guard, self.guard_buf = None, ""
        if self.dropped and "".join(self.dropped).strip():
            ctx.trace.record(label, "stream", "drop", "".join(self.dropped), None,
                             "text after a tool call in the same round is not spoken; "
                             "the answer follows the tool results")
        self.dropped = []
        return out

    def _take(self, pieces: list[MarkupEvent], ev: Event) -> list[Event]:
        out: list[Event] = []
        for p in pieces:
            t = type(p)
            if t is Text:
                self._say(p.text, ev, out)  # type: ignore[union-attr]
            elif t is ToolCalls or t is BadCall:
                self._markup_call(p, ev, out)  # type: ignore[arg-type]
            elif t is Reasoning:
                out.append(ReasoningDelta(p.text, session_id=ev.session_id, turn_id=ev.turn_id))  # type: ignore[union-attr]
        return out

    def _say(self, p: str, ev: Event, out: list[Event]) -> None:
        """Text of the round: dropped after a call (rule 3), held while it may echo a tool
        error (rule 7) or repeat what was said before the calls (rule 4), else passed on."""
        if self.calls:
            self.dropped.append(p)
            return
        echo = self.echo
        if echo is not None:
            p = echo.feed(p)
            if echo.decided:
                for o in self.mw._after_echo(echo, self.ctx, ev):
                    self.said.append(o.text)
                    out.append(o)
                if not echo.echoed:
                    self.echo = None
            if not p:
                return
        if self.guard is not None:
            self.guard_buf += p
            k = _match_said(self.guard_buf, self.guard)
            if k is None:
                return  # may still be a repetition: hold
            if k >= 0:
                self.ctx.trace.record(self.mw.label, "stream", "drop", self.guard_buf[:k], None,
                                      "repeats what was said before the tool call")
                p = self.guard_buf[k:]
            else:
                p = self.guard_buf
            self.guard, self.guard_buf = None, ""
            if not p:
                return
        self.said.append(p)
        out.append(TextDelta(p, session_id=ev.session_id, turn_id=ev.turn_id, ts=ev.ts))

    def _markup_call(self, p: ToolCalls | BadCall, ev: Event, out: list[Event]) -> None:
        """Call markup in the text: each call is passed on as a ToolCall (rule 2); markup
        that holds no valid call is a call that gets an error result telling the Thinker
        how to write one. In a round that offers no tools it is never run."""
        if self.tools_off:
            self.ctx.trace.record(self.mw.label, "stream", "drop", p.markup, None,
                                  'tool-call markup in a round that offers no tools (tool_choice "none"): '
                                  "not run, not spoken")
            return
        if type(p) is BadCall:
            if not p.closed and not p.body.strip():
                return  # an opening tag the round ended right after: nothing to run or say
            items: Sequence[ParsedCall] = [ParsedCall("", "", p.body, p.error)]
        else:
            items = p.calls  # type: ignore[union-attr]
        for c in items:
            call = ToolCall(id=_new_id(), name=c.name or "invalid_call",
                            arguments=c.raw if c.error else c.arguments,
                            session_id=ev.session_id, turn_id=ev.turn_id)
            if c.error:
                self.errors[call.id] = _how_to_call(c.error)
            self.calls.append(call)
            out.append(call)


def _how_to_call(error: str) -> str:
    return (f"{error}. Write calls as "
            f'{HERMES.open}{{"name": "<tool>", "arguments": {{...}}}}{HERMES.close}')


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"


#: How many tools' routed prompts :meth:`ToolCalling.warm_up` evaluates ahead (the first
#: ones of the registry): each takes ~1-2 s on the embedded model, and ~10 MB pinned.
WARM_PROMPT_TOOLS = 4


def _routed_round(agent: Any, registry: ToolRegistry, name: str,
                  messages: list[Message] | None = None, exchanges: int = 1) -> ThinkerRequest:
    """The request of a first round routed to ``name``, built as a turn builds it
    (``ToolCalling._route`` shapes the prompt, ``Agent.build_request`` the rest): the
    agent's system prompt, the last ``exchanges`` of the conversation with their calls as
    text, the tool note and examples with ``name``'s last, the agent's tools,
    ``tool_choice=name``. ``messages``: system, history and the user's message (default:
    the system prompt and a stand-in; ``warm_prompt`` keeps only what comes before it)."""
    from omni_agent.tools.prompting import with_calls_as_text, with_tool_examples

    if messages is None:
        system = getattr(agent, "system_prompt", None) or ""
        messages = [Message("system", system)] if system else []
        messages.append(Message("user", "Hello."))
    shaped = with_tool_examples(with_calls_as_text(last_exchanges(messages, exchanges)), registry,
                                focus=name)
    return _first_round(agent, shaped, name)


def _first_round(agent: Any, messages: list[Message], tool_choice: str) -> ThinkerRequest:
    """A first round's request for ``messages`` as ``Agent.build_request`` makes it: the
    agent's tools and generation settings, ``tool_choice``."""
    tools = getattr(agent, "tools", None)
    return ThinkerRequest(messages=messages,
                          tools=tools.openai_schemas() if isinstance(tools, ToolRegistry) else [],
                          tool_choice=tool_choice,
                          settings=getattr(agent, "settings", None) or GenerationSettings())


def last_exchanges(messages: list[Message], n: int) -> list[Message]:
    """``messages`` (system, history, the user's request and what followed it) with only the
    last ``n`` exchanges of the history: each from a user message up to the next one. A
    routed round needs the request and, for a follow-up ("And in Paris?"), the exchange
    before it; the rest only costs the Thinker time (a small model gains nothing from it)."""
    head = messages[:1] if messages and messages[0].role == "system" else []
    body = messages[len(head):]
    users = [i for i, m in enumerate(body) if m.role == "user"]
    if not users:
        return list(messages)
    start = users[max(0, len(users) - 1 - max(0, n))]
    return head + body[start:]


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
      the model in that round; ``round_history`` — how many earlier exchanges of the
      conversation that round sees (1: the one before, for follow-ups like "And in
      Paris?"; the whole conversation would cost the Thinker time and help nothing).
    """

    name = "tools"

    def __init__(self, registry: ToolRegistry | Iterable[Any] | None = None, *,
                 timeout: float = 30.0, max_rounds: int = 4,
                 filler: str | None = "One moment…", filler_after: float = 1.0,
                 confirm: ConfirmPolicy | None = None,
                 formats: Sequence[MarkupFormat] = (HERMES,),
                 router: Any = None, constrain: bool = True, few_shot: bool = True,
                 round_history: int = 1, return_direct: Iterable[str] = (),
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
        self.round_history = max(0, int(round_history))
        self.return_direct = frozenset(return_direct)
        self.error_apology = error_apology
        # The hot path checks one character: the first of every opening tag.
        self._open_chars = "".join(sorted({c for f in self.formats for c in f.starts}))
        # One literal tag: a '<' is plain unless the tag is there or may start at the end.
        self._open_tag = self.formats[0].literal if len(self.formats) == 1 else None

    def warm_up(self, agent: Any = None) -> bool:
        """Load what the first routed turn would load (the router's embedding model, the
        constrained decoder's view of the tokenizer) and, with few-shot prompts on a Thinker
        that pins prompt states (``warm_prompt``: llama.cpp), evaluate the routed prompt of
        each of the first tools (at most :data:`WARM_PROMPT_TOOLS`) once, so that a tool round
        only evaluates the conversation. Returns True if anything was loaded."""
        if self.router is None:
            return False
        registry = self.registry or getattr(agent, "tools", None) or ToolRegistry()
        warm = getattr(self.router, "warm", None)
        if callable(warm):
            warm(registry)
        thinker = getattr(agent, "thinker", None)
        warm_constraints = getattr(thinker, "warm_constraints", None)
        tok = getattr(thinker, "tokenizer", None) or getattr(thinker, "_tokenizer", None)
        if self.constrain and callable(warm_constraints):  # llama.cpp: its grammar tokenizer
            warm_constraints()
        elif self.constrain and tok is not None and len(registry):
            from omni_agent.tools.constrained import ToolCallConstraint

            ToolCallConstraint(registry, registry.names[:1])(tok)
        if self.few_shot and isinstance(thinker, PromptWarmer):
            for name in registry.names[:WARM_PROMPT_TOOLS]:
                thinker.warm_prompt(_routed_round(agent, registry, name))
        return True

    def round_requests(self, agent: Any, messages: list[Message]) -> list[ThinkerRequest]:
        """The first-round requests the next turn may make (see :class:`PreparesRounds`):
        with a router, an unrouted round (no tool, the calls as text) and a routed round for
        each of the first tools (:data:`WARM_PROMPT_TOOLS`); else none (the Thinker's plain
        request is the agent's)."""
        if self.router is None:
            return []
        from omni_agent.tools.prompting import with_calls_as_text

        registry = self.registry or getattr(agent, "tools", None) or ToolRegistry()
        out = [_first_round(agent, with_calls_as_text(messages), "none")]
        if self.few_shot:
            out += [_routed_round(agent, registry, name, messages, self.round_history)
                    for name in registry.names[:WARM_PROMPT_TOOLS]]
        return out

    # ------------------------------------------------------------------ helpers

    def _registry(self, ctx: TurnContext) -> ToolRegistry:
        if self.registry is not None:
            return self.registry
        reg = getattr(ctx.agent, "tools", None)
        return reg if isinstance(reg, ToolRegistry) else ToolRegistry()

    async def _route(self, ctx: TurnContext, registry: ToolRegistry) -> bool:
        """Before the first round: let the router pick a tool and shape the request.
        Returns True when the round offers no tool (the router found none)."""
        users = [m for m in ctx.messages if m.role == "user"]
        if not users or not len(registry):
            return False
        user = users[-1]
        earlier = users[-2].text if len(users) > 1 else None
        router = self.router
        assert router is not None  # stream() routes only with a router
        t0 = monotonic()
        args: tuple[Any, ...] = (user.text, registry)
        if len(inspect.signature(router.route).parameters) >= 3:
            args += (earlier,)  # the previous request, for follow-ups ("And in Paris?")
        pick = await anyio.to_thread.run_sync(router.route, *args, abandon_on_cancel=True)
        ctx.trace.add_time("tool_router", monotonic() - t0)
        from omni_agent.tools.prompting import with_calls_as_text, with_tool_examples

        exchanges = self.round_history
        opts = ctx.next_round()
        # Earlier turns' calls are shown as text: a small model's template cannot render
        # tool_calls, and an empty assistant turn would confuse it.
        opts.prompt = with_calls_as_text
        if pick is None:
            # The router speaks for the model: no tool fits, so none is offered.
            opts.tool_choice = "none"
            ctx.trace.record(self.label, "input", "route", user.text, None,
                             "no tool matches the request")
            return True
        name, score = pick
        ctx.trace.record(self.label, "input", "route", user.text, name,
                         f"router picked {name!r} (similarity {score:.2f})")
        opts.tool_choice = name
        if self.constrain:
            from omni_agent.tools.constrained import ToolCallConstraint

            opts.constraint = ToolCallConstraint(registry, [name])
        if self.few_shot:
            def prompt(messages: list[Message]) -> list[Message]:
                return with_tool_examples(with_calls_as_text(last_exchanges(messages, exchanges)),
                                          registry, focus=name)

            opts.prompt = prompt
        return False

    # ------------------------------------------------------------------ the stream

    async def stream(self, events: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        registry = self._registry(ctx)
        st = _TurnCalls(self, ctx, no_tools=not len(registry))
        if self.router is not None and ctx.round == 0:
            try:
                st.tools_off = await self._route(ctx, registry) or st.no_tools
            except Exception as e:  # noqa: BLE001 - a failed router leaves the turn unrouted
                ctx.trace.error(f"middleware:{self.label}", f"router failed: {type(e).__name__}: {e}")
        open_chars = self._open_chars
        open_tag = self._open_tag or ""  # "" only when single is None: then unused
        single = open_tag[0] if open_tag else None
        said = st.said  # the round's text before its first call (cleared, never replaced)
        plain = True    # nothing held, no call yet, no guard: the fast path
        async for ev in events:
            t = type(ev)
            if t is TextDelta:
                if plain:
                    text = cast(TextDelta, ev).text
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
                for out in st.text(cast(TextDelta, ev)):
                    yield out
                plain = st.plain
            elif t is ToolCall:
                for out in st.native(cast(ToolCall, ev)):
                    yield out
                plain = False
            elif t is RoundEnd:
                async for out in self._end_round(st, cast(RoundEnd, ev), registry, ctx):
                    yield out
                plain = st.plain
            else:
                yield ev

    async def _end_round(self, st: "_TurnCalls", ev: RoundEnd, registry: ToolRegistry,
                         ctx: TurnContext) -> AsyncIterator[Event]:
        """A Thinker round ended: release its text, run its calls (rules 1, 5, 6) and ask
        for the next round."""
        for out in st.end_text(ev):
            yield out
        calls, errors = st.calls, st.errors
        st.tools_off = st.no_tools  # the next round offers the tools, unless said below
        if not calls:
            st.said.clear()
            yield ev
            return
        # Rule 1: the round's end goes on first, so its text is spoken now.
        yield ev
        st.rounds += 1
        rounds = st.rounds
        text_before = "".join(st.said)
        st.said.clear()
        st.calls, st.errors = [], {}
        if rounds > self.max_rounds + 1:
            # The Thinker was told to answer without tools and called again.
            msg = (f"the Thinker kept calling tools after the limit of {self.max_rounds} "
                   "tool rounds; the turn ends here")
            ctx.trace.error(f"middleware:{self.label}", msg)
            yield ErrorEvent(message=msg, stage="tools", session_id=ctx.session_id, turn_id=ctx.turn_id)
            return
        results: dict[str, ToolResult] = {}
        over = rounds > self.max_rounds
        quiet = not st.filler_said and not text_before.strip()
        running = self._run_round(calls, errors, registry, ctx, rounds, over, quiet, results)
        try:
            async for out in running:
                if type(out) is Utterance:
                    st.filler_said = True
                yield out
        finally:
            # Closing this stream (barge-in, consumer gone) must reach the tasks.
            await running.aclose()
        exchange = ([Message("assistant", text_before, tool_calls=[
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls])]
            + [Message("tool", results[c.id].content, tool_call_id=c.id, name=c.name) for c in calls])
        exchange.extend(self._media(calls, results, ctx))
        if not over and self._direct(calls, results, registry):
            # Rule 6: the results are the answer; the turn ends with them.
            ctx.messages.extend(exchange)  # remembered with the turn, no new round
            answer = " ".join(results[c.id].content.strip() for c in calls)
            ctx.trace.record(self.label, "stream", "return_direct", None, answer,
                             "the result of " + ", ".join(c.name for c in calls)
                             + " is the answer: no second Thinker round")
            yield TextDelta(answer, session_id=ctx.session_id, turn_id=ctx.turn_id)
            yield RoundEnd(round=ev.round, session_id=ctx.session_id, turn_id=ctx.turn_id)
            return
        ctx.continue_with(exchange)
        failed = [results[c.id].content for c in calls if results[c.id].is_error]
        if failed and self.error_apology:
            st.echo = _ErrorEcho(failed)
        if over or self.router is not None:
            # After the limit, or when a router decided for a small model: answer now.
            nxt = ctx.next_round()
            nxt.tool_choice = "none"
            st.tools_off = True
            if self.router is not None:
                from omni_agent.tools.prompting import with_calls_as_text

                nxt.prompt = with_calls_as_text
        if text_before.strip():
            st.guard = text_before

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
                         quiet: bool, results: dict[str, ToolResult]) -> AsyncGenerator[Event, None]:
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
                got: ToolResult | None = None
                if filler_due:
                    with anyio.move_on_after(self.filler_after):
                        got = await finished.get()
                    if got is None:
                        filler_due = False
                        filler = self.filler or ""  # filler_due: never empty here
                        yield Utterance(text=filler, display=filler, original=filler,
                                        session_id=ctx.session_id, turn_id=ctx.turn_id)
                if got is None:
                    got = await finished.get()
                results[got.call_id] = got
                yield got
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
