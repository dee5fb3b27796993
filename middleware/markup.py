"""MarkupGuard: tool-call markup and reasoning never reach speech.

Models served without a tool or reasoning parser write their tool calls and their
thinking into the answer text, and a Talker would read them aloud (Qwen3-Omni users
report hearing tool names and JSON arguments). MarkupGuard is a stream-level middleware
that takes them out of the text stream before the segmenter:

* reasoning — ``<think>…</think>`` (also ``<thinking>``, ``<reasoning>``, ``<thought>``,
  ``◁think▷``, ``<|begin_of_thought|>``, the gpt-oss ``analysis`` channel) becomes
  :class:`~omni_agent.events.ReasoningDelta` events: never spoken or shown, kept in
  ``trace.reasoning``;
* tool calls — ``<tool_call>…</tool_call>`` (Qwen/Hermes), ``<function=name>…</function>``
  (Llama), ``<|python_tag|>``, ``[TOOL_CALLS]`` (Mistral), ``<|tool_call_start|>``,
  ``<start_function_call>``, DeepSeek's tool-call tokens, gemma's ```` ```tool_code ````
  fences, and bare JSON calls ``{"name": …, "arguments": …}`` (also in a ```` ```json ````
  fence) are removed. Calls it can read become :class:`~omni_agent.events.ToolCall`
  events (``tool_calls="event"``, the default) so a tool middleware later in the chain
  can run them; ``tool_calls="drop"`` only removes them;
* stray chat-template tokens (``<|im_end|>``, ``<|eot_id|>``) are removed.

A tag is matched as what it looks like, not as one spelling: in any case, with spaces
inside (``< think >``, ``</ tool_call >``), with attributes (``<think type="plan">``), on
the normalised text (:mod:`.normalize`), so a zero-width or fullwidth character in a tag
name hides nothing; ``<thinking is fun>`` (no attribute syntax) stays text. Invisible
characters do not pass the guard. :func:`find_markup` and :func:`escape_markup` (the core's,
from :mod:`omni_agent.markup_protocol`, re-exported here) use the same grammar for text that
must not act (retrieved documents).

The markup is parsed by the one sans-IO parser of the core,
:class:`omni_agent.markup_protocol.MarkupParser`, with every format family it knows
(:data:`~omni_agent.markup_protocol.GUARD_FORMATS`) and normalised matching; this module
turns its events into the bus's events and the trace's records.

It holds text only while a tag or a JSON call may be opening ("<th", "{"), so display
and speech are delayed by a few characters at most, except inside a tool call, which is
held until it closes (and then never released). Every removal is in the trace.
"""

from __future__ import annotations

from typing import AsyncIterator, Literal, cast

from omni_agent.bus import Middleware, RoundEnd, TurnContext
from omni_agent.errors import ConfigError
from omni_agent.events import Event, ReasoningDelta, TextDelta, ToolCall, ToolResult, Utterance
from omni_agent.markup_protocol import (
    GUARD_FORMATS,
    BadCall,
    Dropped,
    Grammar,
    MarkupEvent,
    MarkupParser,
    Reasoning,
    Text,
    ToolCalls,
    escape_markup,
    find_markup,
    read_calls,
)

from .normalize import visible

__all__ = ["MarkupGuard", "parse_tool_calls", "find_markup", "escape_markup"]

# The grammar MarkupGuard parses with; find_markup and escape_markup (the core's, re-exported
# here) use the same one.
_GUARD = Grammar.of(GUARD_FORMATS)


def parse_tool_calls(text: str, name: str | None = None) -> list[tuple[str, str]]:
    """The calls written in tool-call markup content, as (name, arguments JSON) pairs.

    Reads JSON objects (``{"name", "arguments"|"parameters"}``, OpenAI-style
    ``{"function": {...}}``, lists of them) and Qwen3-Coder style
    ``<function=f><parameter=x>1</parameter></function>``. ``name`` is the function named
    by the opener (Llama's ``<function=name>{args}``). Invisible characters are ignored;
    a call that only reads as one after normalisation (fullwidth brackets) is read so.
    (The reader is :func:`omni_agent.markup_protocol.read_calls`.)
    """
    return [(c.name, c.arguments) for c in read_calls(text, name) if c.error is None]


class MarkupGuard(Middleware):
    """Keeps tool-call markup and reasoning out of speech and display (see the module doc).

    * ``tool_calls`` — ``"event"``: calls it can read become ToolCall events (a tool
      middleware after it runs them); ``"drop"``: removed only;
    * ``reasoning_open`` — the model starts every round inside its reasoning (chat
      templates that put ``<think>`` in the prompt, as Qwen3 thinking models do): text
      until ``</think>`` is reasoning;
    * ``max_json`` — a bare ``{"name": …`` that has not closed after this many characters
      is released as text (it is not a call).
    """

    name = "markup"

    def __init__(self, *, tool_calls: Literal["event", "drop"] = "event", reasoning_open: bool = False,
                 max_json: int = 8192, name: str | None = None, timeout: float | None = None,
                 fallback: str | None = None):
        super().__init__(name=name, timeout=timeout, fallback=fallback)
        if tool_calls not in ("event", "drop"):
            raise ConfigError(f"markup: tool_calls must be 'event' or 'drop', not {tool_calls!r}")
        self.tool_calls = tool_calls
        self.reasoning_open = reasoning_open
        self.max_json = max_json

    async def stream(self, events: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        st = _GuardStream(self, ctx)
        parser = st.parser
        plain = parser.plain
        async for ev in events:
            t = type(ev)
            if t is TextDelta:
                text = cast(TextDelta, ev).text
                if plain(text):  # the fast path: nothing held, nothing that may be markup
                    if text:
                        st.last = text[-1]
                        yield ev
                    continue
                for e in st.events(parser.feed(text)):
                    yield e
                continue
            if t is RoundEnd:
                for e in st.events(parser.close()):
                    yield e
                st.reasoned = False
            elif t is ToolCall or t is ToolResult or t is Utterance:
                for e in st.events(parser.flush()):
                    yield e
            yield ev
        for e in st.events(parser.close()):
            yield e


class _GuardStream:
    """One turn of MarkupGuard: the parser's events as bus events, every removal in the trace."""

    __slots__ = ("g", "ctx", "parser", "n_calls", "last", "reasoned")

    def __init__(self, guard: MarkupGuard, ctx: TurnContext):
        self.g = guard
        self.ctx = ctx
        self.parser = MarkupParser(_GUARD, normalize=True, reasoning_open=guard.reasoning_open,
                                   max_json=guard.max_json)
        self.n_calls = 0
        self.last = ""  # the last character released, for visible()
        self.reasoned = False  # this round's reasoning is in the trace already

    def _record(self, before: str, reason: str) -> None:
        self.ctx.trace.record(self.g.label, "stream", "drop", before, None, reason)

    def events(self, evs: list[MarkupEvent]) -> list[Event]:
        if len(evs) == 1 and type(evs[0]) is Text:  # the common case: plain text
            s = visible(evs[0].text, self.last)
            if not s:
                return []
            self.last = s[-1]
            return [TextDelta(s, session_id=self.ctx.session_id, turn_id=self.ctx.turn_id)]
        out: list[Event] = []
        text: list[str] = []  # text is merged across removals that leave nothing in the stream
        sid, tid = self.ctx.session_id, self.ctx.turn_id
        for ev in evs:
            t = type(ev)
            if t is Text:
                text.append(ev.text)  # type: ignore[union-attr]
                continue
            if t is Dropped or t is BadCall:
                self._record(ev.markup, "chat-template markup kept off speech" if t is Dropped  # type: ignore[union-attr]
                             else "tool-call markup kept off speech")
                continue
            if t is ToolCalls:
                calls = ev.valid  # type: ignore[union-attr]
                names = ", ".join(c.name for c in calls)
                if not calls or self.g.tool_calls != "event":
                    self._record(ev.markup, "tool-call markup kept off speech"  # type: ignore[union-attr]
                                 + (f" ({names})" if names else ""))
                    continue
                self._text(text, out)
                for c in calls:
                    self.n_calls += 1
                    out.append(ToolCall(id=f"markup_{tid}_{self.n_calls}", name=c.name, arguments=c.arguments,
                                        session_id=sid, turn_id=tid))
                self._record(ev.markup, f"tool-call markup kept off speech; passed on as a tool call ({names})")  # type: ignore[union-attr]
            elif t is Reasoning:
                s = visible(ev.text)  # type: ignore[union-attr]
                if not s:
                    continue
                self._text(text, out)
                if not self.reasoned:
                    self.reasoned = True
                    self.ctx.trace.record(self.g.label, "stream", "drop", None, None,
                                          "reasoning kept off speech (in trace.reasoning)")
                out.append(ReasoningDelta(s, session_id=sid, turn_id=tid))
        self._text(text, out)
        return out

    def _text(self, parts: list[str], out: list[Event]) -> None:
        if not parts:
            return
        s = visible("".join(parts), self.last)
        parts.clear()
        if s:
            self.last = s[-1]
            out.append(TextDelta(s, session_id=self.ctx.session_id, turn_id=self.ctx.turn_id))
