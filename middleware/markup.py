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

It holds text only while a tag or a JSON call may be opening ("<th", "{"), so display
and speech are delayed by a few characters at most, except inside a tool call, which is
held until it closes (and then never released). Every removal is in the trace.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Literal

import regex

from omni_agent.bus import Middleware, RoundEnd, TurnContext
from omni_agent.errors import ConfigError
from omni_agent.events import Event, ReasoningDelta, TextDelta, ToolCall, ToolResult, Utterance

from ._scan import partial_start

__all__ = ["MarkupGuard", "parse_tool_calls"]

_REASONING = {
    "<think>": ("</think>",),
    "<thinking>": ("</thinking>",),
    "<reasoning>": ("</reasoning>",),
    "<thought>": ("</thought>",),
    "◁think▷": ("◁/think▷",),
    "<|begin_of_thought|>": ("<|end_of_thought|>",),
}
# Tool-call openers and what closes them (None: the end of the round).
_TOOL = {
    "<tool_call>": ("</tool_call>",),
    "<tool_calls>": ("</tool_calls>",),
    "<function_call>": ("</function_call>",),
    "<functioncall>": ("</functioncall>",),
    "<|tool_call_start|>": ("<|tool_call_end|>",),
    "<|tool_calls_section_begin|>": ("<|tool_calls_section_end|>",),
    "<｜tool▁calls▁begin｜>": ("<｜tool▁calls▁end｜>",),
    "<start_function_call>": ("<end_function_call>",),
    "[TOOL_CALLS]": None,
    "<|python_tag|>": ("<|eom_id|>", "<|eot_id|>"),
    "```tool_code": ("```",),
    "```tool_call": ("```",),
}
_STRAY = ["</think>", "</thinking>", "</reasoning>", "</thought>", "◁/think▷", "<|end_of_thought|>",
          "</tool_call>", "</tool_calls>", "</function>", "</function_call>"]


def _alt(words: list[str]) -> str:
    return "|".join(regex.escape(w) for w in sorted(words, key=len, reverse=True))


_OPENERS = regex.compile(
    r"(?P<harmony><\|channel\|>(?P<chan>[^<\n]{0,80})<\|message\|>)"
    rf"|(?P<think>{_alt(list(_REASONING))})"
    rf"|(?P<tool>{_alt(list(_TOOL))})"
    r"|(?P<func><function=(?P<fname>[A-Za-z0-9_.\-]{1,64})>)"
    r"|(?P<json>(?:```(?:json)?[ \t]*\n?[ \t]*)?(?:\[\s*)?\{\s*\"(?:name|function|tool|tool_name|tool_calls)\"\s*:)"
    rf"|(?P<stray>{_alt(_STRAY)})"
    r"|(?P<special><\|start\|>(?:assistant|user|system|developer|tool)?|<\|[A-Za-z0-9_.\-]{1,40}\|>|<｜[^｜<>\n]{1,40}｜>)",
    regex.VERSION0,
)
_REASONING_CHANNELS = ("analysis",)
_OPENER_STARTS = regex.compile(r"(?=[<{\[`◁])")


def _is_call(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    if isinstance(obj.get("function"), dict):
        return _is_call(obj["function"]) or "name" in obj["function"]
    if isinstance(obj.get("tool_calls"), list):
        return any(_is_call(c) for c in obj["tool_calls"])
    return isinstance(obj.get("name") or obj.get("tool_name") or obj.get("tool"), str) and any(
        k in obj for k in ("arguments", "parameters", "args", "input"))


def _calls_of(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, list):
        return [c for o in obj for c in _calls_of(o)]
    if not isinstance(obj, dict):
        return []
    if isinstance(obj.get("tool_calls"), list):
        return _calls_of(obj["tool_calls"])
    if isinstance(obj.get("function"), dict):
        return _calls_of({**obj["function"], **({} if "arguments" in obj["function"] else
                                                 {"arguments": obj.get("arguments", {})})})
    name = obj.get("name") or obj.get("tool_name") or obj.get("tool")
    if not isinstance(name, str):
        return []
    for k in ("arguments", "parameters", "args", "input"):
        if k in obj:
            return [(name, obj[k])]
    return [(name, {})]


_XML_FUNC = regex.compile(r"<function=([A-Za-z0-9_.\-]+)>(.*?)(?:</function>|$)", regex.S)
_XML_PARAM = regex.compile(r"<parameter=([A-Za-z0-9_.\-]+)>\s*(.*?)\s*</parameter>", regex.S)


def parse_tool_calls(text: str, name: str | None = None) -> list[tuple[str, str]]:
    """The calls written in tool-call markup content, as (name, arguments JSON) pairs.

    Reads JSON objects (``{"name", "arguments"|"parameters"}``, OpenAI-style
    ``{"function": {...}}``, lists of them) and Qwen3-Coder style
    ``<function=f><parameter=x>1</parameter></function>``. ``name`` is the function named
    by the opener (Llama's ``<function=name>{args}``).
    """
    out: list[tuple[str, str]] = []
    dec = json.JSONDecoder()
    if name is not None:
        s = text.strip()
        try:
            args, _ = dec.raw_decode(s) if s else ({}, 0)
        except ValueError:
            args = None
        if isinstance(args, dict):
            return [(name, json.dumps(args))]
    for m in _XML_FUNC.finditer(text):
        params = {k: _json_or_str(v) for k, v in _XML_PARAM.findall(m.group(2))}
        out.append((m.group(1), json.dumps(params)))
    if out:
        return out
    i = 0
    while i < len(text):
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            break
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        for n, a in _calls_of(obj):
            if isinstance(a, str):
                try:
                    json.loads(a)
                except ValueError:
                    a = json.dumps({"input": a})
            else:
                a = json.dumps(a)
            out.append((n, a))
        i = end
    return out


def _json_or_str(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def _closer_hold(buf: str, closers: tuple[str, ...]) -> int:
    """Index where a possible (incomplete) closer starts at the end of ``buf``."""
    best = len(buf)
    for c in closers:
        for k in range(min(len(c) - 1, len(buf)), 0, -1):
            if buf.endswith(c[:k]):
                best = min(best, len(buf) - k)
                break
    return best


class _JsonScan:
    """Finds where a JSON value that started in the stream ends (strings respected)."""

    __slots__ = ("depth", "in_str", "esc", "started")

    def __init__(self) -> None:
        self.depth = 0
        self.in_str = False
        self.esc = False
        self.started = False

    def feed(self, s: str, start: int = 0) -> int:
        """Scan ``s[start:]``; return the index just past the end of the value, or -1."""
        for i in range(start, len(s)):
            c = s[i]
            if self.in_str:
                if self.esc:
                    self.esc = False
                elif c == "\\":
                    self.esc = True
                elif c == '"':
                    self.in_str = False
                continue
            if c == '"':
                self.in_str = True
            elif c in "{[":
                self.depth += 1
                self.started = True
            elif c in "}]":
                self.depth -= 1
                if self.started and self.depth <= 0:
                    return i + 1
        return -1


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
        st = _State(self, ctx)
        async for ev in events:
            t = type(ev)
            if t is TextDelta:
                for e in st.feed(ev.text):
                    yield e
                continue
            if t is RoundEnd or t is ToolCall or t is ToolResult or t is Utterance:
                for e in st.flush(end_round=t is RoundEnd):
                    yield e
            yield ev
        for e in st.flush(end_round=True):
            yield e


class _State:
    """One turn of MarkupGuard: the mode (text, reasoning, tool, json) and held text."""

    def __init__(self, guard: MarkupGuard, ctx: TurnContext):
        self.g = guard
        self.ctx = ctx
        self.buf = ""
        self.out: list[Event] = []
        self.text_out: list[str] = []
        self.n_calls = 0
        self._begin_round()

    def _begin_round(self) -> None:
        self.mode = "reasoning" if self.g.reasoning_open else "text"
        self.closers: tuple[str, ...] | None = _REASONING["<think>"] if self.g.reasoning_open else None
        self.tool_text = ""
        self.tool_open = ""
        self.tool_name: str | None = None
        self.json: _JsonScan | None = None
        self.json_scanned = 0
        self.json_start = 0
        self.fenced = False
        self.eat_fence = False
        self.reasoned = False

    # ---------------------------------------------------------------- output

    def _text(self, s: str) -> None:
        if s:
            self.text_out.append(s)

    def _emit_text(self) -> None:
        if self.text_out:
            self.out.append(TextDelta("".join(self.text_out), session_id=self.ctx.session_id,
                                      turn_id=self.ctx.turn_id))
            self.text_out.clear()

    def _reason(self, s: str) -> None:
        if s:
            self._emit_text()
            if not self.reasoned:
                self.reasoned = True
                self.ctx.trace.record(self.g.label, "stream", "drop", None, None,
                                      "reasoning kept off speech (in trace.reasoning)")
            self.out.append(ReasoningDelta(s, session_id=self.ctx.session_id, turn_id=self.ctx.turn_id))

    def _record(self, before: str, reason: str) -> None:
        self.ctx.trace.record(self.g.label, "stream", "drop", before, None, reason)

    def _tool_done(self, markup: str, content: str) -> None:
        calls = parse_tool_calls(content, self.tool_name)
        names = ", ".join(n for n, _ in calls)
        if calls and self.g.tool_calls == "event":
            self._emit_text()
            for n, a in calls:
                self.n_calls += 1
                self.out.append(ToolCall(id=f"markup_{self.ctx.turn_id}_{self.n_calls}", name=n, arguments=a,
                                         session_id=self.ctx.session_id, turn_id=self.ctx.turn_id))
            self._record(markup, f"tool-call markup kept off speech; passed on as a tool call ({names})")
        else:
            self._record(markup, "tool-call markup kept off speech" + (f" ({names})" if names else ""))
        self.tool_text = ""
        self.tool_open = ""
        self.tool_name = None

    # ---------------------------------------------------------------- scanning

    def feed(self, text: str) -> list[Event]:
        self.buf += text
        self._run(final=False)
        self._emit_text()
        out, self.out = self.out, []
        return out

    def flush(self, end_round: bool) -> list[Event]:
        self._run(final=True)
        if end_round or self.mode != "text":
            self._end_block()
        self._emit_text()
        if end_round:
            self._begin_round()
        out, self.out = self.out, []
        return out

    def _end_block(self) -> None:
        """The round ended inside a block: close it."""
        if self.mode == "reasoning":
            self._reason(self.buf)
        elif self.mode == "tool":
            self.tool_text += self.buf
            self._tool_done(self.tool_open + self.tool_text, self.tool_text)
        elif self.mode == "json":
            held = self.buf
            if '"arguments"' in held or '"parameters"' in held:
                self._tool_done(held, held)
            else:
                self._text(held)
        elif self.buf:
            self._text(self.buf)
        self.buf = ""
        self.mode = "text"

    def _run(self, final: bool) -> None:
        while True:
            mode = self.mode
            if mode == "text":
                if not self._step_text(final):
                    return
            elif mode == "reasoning":
                if not self._step_block(final, reasoning=True):
                    return
            elif mode == "tool":
                if not self._step_block(final, reasoning=False):
                    return
            elif not self._step_json(final):
                return

    def _step_text(self, final: bool) -> bool:
        buf = self.buf
        if self.eat_fence:
            stripped = buf.lstrip()
            if stripped.startswith("```"):
                self.buf = buf = stripped[3:]
                self.eat_fence = False
            elif not final and "```".startswith(stripped):
                return False  # the closing fence may still come
            else:
                self.eat_fence = False
        if not buf:
            return False
        hold = len(buf) if final else partial_start(_OPENERS, buf, starts=_OPENER_STARTS, window=160)
        m = _OPENERS.search(buf)
        if m is None or m.start() >= hold:
            self._text(buf[:hold])
            self.buf = buf[hold:]
            return False
        self._text(buf[:m.start()])
        self.buf = buf[m.end():]
        kind = m.lastgroup if m.lastgroup in ("harmony", "think", "tool", "func", "json", "stray", "special") \
            else next(k for k in ("harmony", "think", "tool", "func", "json", "stray", "special") if m.group(k))
        tag = m.group()
        if kind == "think":
            self.mode, self.closers = "reasoning", _REASONING[tag]
        elif kind == "harmony":
            chan = m.group("chan")
            if any(c in chan for c in _REASONING_CHANNELS):
                self.mode, self.closers = "reasoning", ("<|end|>", "<|start|>")
            elif "to=" in chan or "commentary" in chan and "functions." in chan:
                to = regex.search(r"to=(?:functions\.)?([A-Za-z0-9_.\-]+)", chan)
                self.mode, self.closers = "tool", ("<|call|>", "<|end|>")
                self.tool_name = to.group(1) if to else None
                self.tool_open = tag
            else:
                self._record(tag, "chat-template markup kept off speech")
        elif kind == "tool":
            self.mode, self.closers = "tool", _TOOL[tag]
            self.tool_open = tag
        elif kind == "func":
            self.mode, self.closers = "tool", ("</function>",)
            self.tool_name = m.group("fname")
            self.tool_open = tag
        elif kind == "json":
            self.mode = "json"
            self.fenced = tag.startswith("```")
            first = min(i for i in (tag.find("{"), tag.find("[")) if i >= 0)
            self.buf = tag + self.buf
            self.json = _JsonScan()
            self.json_scanned = first
            self.json_start = first
        else:  # stray closers, template tokens
            self._record(tag, "chat-template markup kept off speech")
        return True

    def _step_block(self, final: bool, reasoning: bool) -> bool:
        buf = self.buf
        closers = self.closers
        if closers is None:  # until the end of the round
            self.tool_text += buf
            self.buf = ""
            return False
        idx, which = -1, ""
        for c in closers:
            i = buf.find(c)
            if i >= 0 and (idx < 0 or i < idx):
                idx, which = i, c
        if idx >= 0:
            body = buf[:idx]
            self.buf = buf[idx + len(which):]
            if reasoning:
                self._reason(body)
            else:
                self.tool_text += body
                self._tool_done(self.tool_open + self.tool_text + which, self.tool_text)
            self.mode = "text"
            return True
        keep = len(buf) if final else _closer_hold(buf, closers)
        if reasoning:
            self._reason(buf[:keep])
        else:
            self.tool_text += buf[:keep]
        self.buf = buf[keep:]
        return False

    def _step_json(self, final: bool) -> bool:
        buf = self.buf
        scan = self.json
        assert scan is not None
        end = scan.feed(buf, self.json_scanned)
        self.json_scanned = len(buf)
        if end < 0:
            if len(buf) > self.g.max_json:
                self._text(buf)  # never closed: not a call
                self.buf = ""
                self.mode = "text"
                return True
            return False
        block = buf[:end]
        body = block[self.json_start:]
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        self.buf = buf[end:]
        self.mode = "text"
        if obj is not None and (_is_call(obj) or (isinstance(obj, list) and obj and all(_is_call(o) for o in obj))):
            self._tool_done(block, body)
            self.eat_fence = self.fenced
        else:
            self._text(block)
        return True
