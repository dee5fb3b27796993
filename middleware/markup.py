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
characters do not pass the guard. :func:`find_markup` and :func:`escape_markup` use the
same grammar for text that must not act (retrieved documents).

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
from .normalize import is_normal, normalize, visible

__all__ = ["MarkupGuard", "parse_tool_calls", "find_markup", "escape_markup"]

# The tags, as a grammar rather than a list of spellings: a tag is its punctuation and its
# name, in any case, with spaces between the parts and (XML-like tags) attributes, matched
# on the normalised text (NFKC, invisible characters removed), so "<THINK>", "< think >",
# '<think type="x">', "<thi\u200bnk>" and DeepSeek's "<｜tool▁calls▁begin｜>" (NFKC: "<|...|>")
# are all the tags they look like.
_ATTRS = r"""(?:\s+[\w\-:.]{1,40}\s*=\s*(?:"[^"<>]{0,120}"|'[^'<>]{0,120}'|[^\s<>"']{1,120})){0,8}\s*"""


def _xml_open(name: str) -> str:
    return rf"<\s*{name}{_ATTRS}>"


def _xml_close(name: str) -> str:
    return rf"<\s*/\s*{name}\s*>"


def _token(name: str) -> str:
    """A chat-template token: ``<|name|>``."""
    return rf"<\s*\|\s*{name}\s*\|\s*>"


# Blocks: (kind, opener, closer; None: the end of the round).
_BLOCKS: list[tuple[str, str, str | None]] = [
    *(("think", _xml_open(n), _xml_close(n)) for n in ("think", "thinking", "reasoning", "thought")),
    ("think", r"◁\s*think\s*▷", r"◁\s*/\s*think\s*▷"),
    ("think", _token("begin_of_thought"), _token("end_of_thought")),
    *(("tool", _xml_open(n), _xml_close(n)) for n in ("tool_call", "tool_calls", "function_call", "functioncall")),
    ("tool", _token("tool_call_start"), _token("tool_call_end")),
    ("tool", _token("tool_calls_section_begin"), _token("tool_calls_section_end")),
    ("tool", _token("tool[▁_ ]calls[▁_ ]begin"), _token("tool[▁_ ]calls[▁_ ]end")),  # DeepSeek
    ("tool", r"<\s*start_function_call\s*>", r"<\s*end_function_call\s*>"),
    ("tool", r"\[\s*TOOL_CALLS\s*\]", None),
    ("tool", _token("python_tag"), _token("eom_id") + "|" + _token("eot_id")),
    ("tool", r"```[ \t]*tool_code", r"```"),
    ("tool", r"```[ \t]*tool_call", r"```"),
]
_KNOWN = r"(?:think|thinking|reasoning|thought|tool_calls?|function_call|functioncall|function|start_function_call)"
_TOKEN_NAME = r"[A-Za-z0-9_.▁\-]{1,40}"
_STRAY = (rf"{_xml_close(_KNOWN)}|<\s*{_KNOWN}\s*/\s*>|◁\s*/\s*think\s*▷|<\s*end_function_call\s*>")

_OPENERS = regex.compile(
    r"(?i)"
    + "".join(f"(?P<b{i}>{op})|" for i, (_, op, _c) in enumerate(_BLOCKS))
    + rf"(?P<harmony>{_token('channel')}(?P<chan>[^<\n]{{0,80}}){_token('message')})"
    r"|(?P<func><\s*function\s*=\s*(?P<fname>[A-Za-z0-9_.\-]{1,64})\s*>)"
    r"|(?P<json>(?:```(?:json)?[ \t]*\n?[ \t]*)?(?:\[\s*)?\{\s*\"(?:name|function|tool|tool_name|tool_calls)\"\s*:)"
    rf"|(?P<stray>{_STRAY})"
    rf"|(?P<special>{_token('start')}(?:assistant|user|system|developer|tool)?|{_token(_TOKEN_NAME)})",
    regex.VERSION0,
)
_KINDS = ("harmony", "func", "json", "stray", "special")
_CLOSERS = {f"b{i}": regex.compile(f"(?i){c}", regex.VERSION0) if c is not None else None
            for i, (_, _o, c) in enumerate(_BLOCKS)}
_BLOCK_KIND = {f"b{i}": k for i, (k, _o, _c) in enumerate(_BLOCKS)}
_THINK_CLOSER = _CLOSERS["b0"]
_HARMONY_REASONING_END = regex.compile(rf"(?i){_token('end')}|{_token('start')}", regex.VERSION0)
_HARMONY_CALL_END = regex.compile(rf"(?i){_token('call')}|{_token('end')}", regex.VERSION0)
_FUNCTION_END = regex.compile(f"(?i){_xml_close('function')}", regex.VERSION0)
_REASONING_CHANNELS = ("analysis",)
_OPENER_STARTS = regex.compile(r"(?=[<{\[`◁])")
# A JSON call written with fullwidth brackets or quotes is scanned as the call it looks like.
_JSON_FOLD = str.maketrans("｛｝［］＂＼", '{}[]"\\')


def _kind_of(m: regex.Match[str]) -> str:
    g = m.lastgroup
    if g is not None and (g in _CLOSERS or g in _KINDS):
        return g
    return next(k for k in (*_CLOSERS, *_KINDS) if m.group(k) is not None)


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


_XML_FUNC = regex.compile(r"(?i)<\s*function\s*=\s*([A-Za-z0-9_.\-]+)\s*>(.*?)(?:<\s*/\s*function\s*>|$)", regex.S)
_XML_PARAM = regex.compile(r"(?i)<\s*parameter\s*=\s*([A-Za-z0-9_.\-]+)\s*>\s*(.*?)\s*<\s*/\s*parameter\s*>",
                           regex.S)


def parse_tool_calls(text: str, name: str | None = None) -> list[tuple[str, str]]:
    """The calls written in tool-call markup content, as (name, arguments JSON) pairs.

    Reads JSON objects (``{"name", "arguments"|"parameters"}``, OpenAI-style
    ``{"function": {...}}``, lists of them) and Qwen3-Coder style
    ``<function=f><parameter=x>1</parameter></function>``. ``name`` is the function named
    by the opener (Llama's ``<function=name>{args}``). Invisible characters are ignored;
    a call that only reads as one after normalisation (fullwidth brackets) is read so.
    """
    plain = visible(text)
    calls = _parse_calls(plain, name)
    if not calls:
        norm = normalize(plain).text
        if norm != plain:
            calls = _parse_calls(norm, name)
    return calls


def _parse_calls(text: str, name: str | None) -> list[tuple[str, str]]:
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


def _json_value(s: str) -> Any:
    """The JSON value ``s`` holds (read as normalised text when it only parses so), or None."""
    for t in (s, normalize(s).text) if not s.isascii() else (s,):
        try:
            return json.loads(t)
        except ValueError:
            continue
    return None


def _json_or_str(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


_ENTITY = {"<": "&lt;", "[": "&#91;", "`": "&#96;", "{": "&#123;", "◁": "&#9665;"}


def _markup(norm: str, extra: regex.Pattern[str] | None) -> list[tuple[int, int, int]]:
    """(start, end, where) of the markup in normalised text; ``where`` is the index of the
    character whose escaping makes it inert."""
    found: list[tuple[int, int, int]] = []
    dec = json.JSONDecoder()
    for m in _OPENERS.finditer(norm):
        if _kind_of(m) == "json":
            brace = m.start() + m.group().find("{")
            first = min(i for i in (m.group().find("{"), m.group().find("[")) if i >= 0) + m.start()
            try:
                obj, _ = dec.raw_decode(norm, first)
            except ValueError:
                continue
            if not (_is_call(obj) or (isinstance(obj, list) and obj and all(_is_call(o) for o in obj))):
                continue  # JSON data, not a call
            found.append((m.start(), m.end(), brace))
        else:
            found.append((m.start(), m.end(), m.start()))
    if extra is not None:
        for m in extra.finditer(norm):
            if m.end() > m.start() and not any(s <= m.start() < e for s, e, _ in found):
                found.append((m.start(), m.end(), m.start()))
        found.sort()
    return found


def find_markup(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` that MarkupGuard reads as markup: reasoning and tool-call tags in
    any spelling it accepts, chat-template tokens, JSON tool calls (their opening).
    Matched on the normalised text, reported in ``text``'s positions.

    ``find_markup("ok <TOOL_CALL>")`` -> ``[(3, 14)]``
    """
    n = normalize(text)
    return [n.span(s, e) for s, e, _ in _markup(n.text, None)]


def escape_markup(text: str, extra: regex.Pattern[str] | None = None) -> str:
    """``text`` with everything MarkupGuard reads as markup made inert, for text that must
    not act (retrieved documents): each tag's opening character becomes an HTML character
    reference (``<tool_call>`` -> ``&lt;tool_call>``, ``[TOOL_CALLS]`` -> ``&#91;TOOL_CALLS]``,
    a JSON call's ``{`` -> ``&#123;``), every ``<`` inside it too; invisible characters are
    removed. ``extra`` (a pattern over normalised text) escapes more the same way. The
    rest of the text keeps its own characters.
    """
    n = normalize(text)
    found = _markup(n.text, extra)
    if not found:
        return visible(text)
    out: list[str] = []
    last = 0
    for s, e, where in found:
        start, end = n.span(s, e)
        if start < last:
            continue
        out.append(text[last:start])
        piece = n.text[s:e]
        k = where - s
        c = piece[k]
        piece = piece[:k].replace("<", "&lt;") + _ENTITY.get(c, c) + piece[k + 1:].replace("<", "&lt;")
        out.append(piece)
        last = end
    out.append(text[last:])
    return visible("".join(out))


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
        self.text_plain = True  # text_out holds no invisible character (no need to clean it)
        self.n_calls = 0
        self.last = ""  # the last character released, for visible()
        self._begin_round()

    def _begin_round(self) -> None:
        self.mode = "reasoning" if self.g.reasoning_open else "text"
        self.closers: regex.Pattern[str] | None = _THINK_CLOSER if self.g.reasoning_open else None
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

    def _text(self, s: str, plain: bool = False) -> None:
        if s:
            self.text_out.append(s)
            self.text_plain = self.text_plain and plain

    def _emit_text(self) -> None:
        if self.text_out:
            text = "".join(self.text_out)
            if not self.text_plain:
                text = visible(text, self.last)
            self.text_out.clear()
            self.text_plain = True
            if text:
                self.last = text[-1]
                self.out.append(TextDelta(text, session_id=self.ctx.session_id, turn_id=self.ctx.turn_id))

    def _reason(self, s: str) -> None:
        s = visible(s)
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
            norm = normalize(held).text
            if '"arguments"' in norm or '"parameters"' in norm:  # a call cut off: never spoken
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
            n = normalize(buf)
            stripped = n.text.lstrip()
            if stripped.startswith("```"):
                self.buf = buf = buf[n.end(len(n.text) - len(stripped) + 3):]
                self.eat_fence = False
            elif not final and "```".startswith(stripped):
                return False  # the closing fence may still come
            else:
                self.eat_fence = False
        if not buf:
            return False
        # Tags are found in the normalised text; what is released or kept is the original
        # (n is None: the text is its own normal form, the common case).
        n = None if is_normal(buf) else normalize(buf)
        norm = buf if n is None else n.text
        if "<" not in norm and "{" not in norm and "[" not in norm and "`" not in norm and "◁" not in norm:
            # Every opener starts with one of these: nothing here can be or become markup.
            self._text(buf, plain=n is None)
            self.buf = ""
            return False
        hold = len(norm) if final else partial_start(_OPENERS, norm, starts=_OPENER_STARTS, window=160)
        m = _OPENERS.search(norm)
        if m is None or m.start() >= hold:
            cut = hold if n is None else n.start(hold)
            self._text(buf[:cut], plain=n is None)
            self.buf = buf[cut:]
            return False
        start, end = m.span() if n is None else n.span(m.start(), m.end())
        self._text(buf[:start], plain=n is None)
        self.buf = buf[end:]
        tag = buf[start:end]
        kind = _kind_of(m)
        if kind in _CLOSERS:
            closer = _CLOSERS[kind]
            if _BLOCK_KIND[kind] == "think":
                self.mode, self.closers = "reasoning", closer
            else:
                self.mode, self.closers = "tool", closer
                self.tool_open = tag
        elif kind == "harmony":
            chan = m.group("chan")
            if any(c in chan for c in _REASONING_CHANNELS):
                self.mode, self.closers = "reasoning", _HARMONY_REASONING_END
            elif "to=" in chan or "commentary" in chan and "functions." in chan:
                to = regex.search(r"to=(?:functions\.)?([A-Za-z0-9_.\-]+)", chan)
                self.mode, self.closers = "tool", _HARMONY_CALL_END
                self.tool_name = to.group(1) if to else None
                self.tool_open = tag
            else:
                self._record(tag, "chat-template markup kept off speech")
        elif kind == "func":
            self.mode, self.closers = "tool", _FUNCTION_END
            self.tool_name = m.group("fname")
            self.tool_open = tag
        elif kind == "json":
            self.mode = "json"
            ntag = m.group()
            self.fenced = ntag.startswith("```")
            first = m.start() + min(i for i in (ntag.find("{"), ntag.find("[")) if i >= 0)
            self.buf = buf[start:]
            self.json = _JsonScan()
            self.json_scanned = self.json_start = (first if n is None else n.start(first)) - start
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
        n = normalize(buf)
        m = closers.search(n.text)
        if m is not None:
            start, end = n.span(m.start(), m.end())
            body = buf[:start]
            which = buf[start:end]
            self.buf = buf[end:]
            if reasoning:
                self._reason(body)
            else:
                self.tool_text += body
                self._tool_done(self.tool_open + self.tool_text + which, self.tool_text)
            self.mode = "text"
            return True
        keep = len(buf) if final else n.start(partial_start(closers, n.text, starts=_OPENER_STARTS, window=64))
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
        end = scan.feed(buf if buf.isascii() else buf.translate(_JSON_FOLD), self.json_scanned)
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
        obj = _json_value(body)
        self.buf = buf[end:]
        self.mode = "text"
        if obj is not None and (_is_call(obj) or (isinstance(obj, list) and obj and all(_is_call(o) for o in obj))):
            self._tool_done(block, body)
            self.eat_fence = self.fenced
        else:
            self._text(block)
        return True
