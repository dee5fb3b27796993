"""Reasoning and tool-call markup in streamed text, parsed once: a sans-IO protocol.

Models write their reasoning and their tool calls into the text they generate —
``<think>…</think>``, ``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` and a dozen
other spellings. :class:`MarkupParser` is the one parser of that markup. The local Thinker
backends (transformers, llama.cpp, Qwen3-Omni, through :class:`TextRouter`), the tool
middleware (:class:`~omni_agent.middleware.tool_calling.ToolCalling`) and the markup guard
(:class:`~omni_agent.middleware.markup.MarkupGuard`) all use it, each with its own formats.
Like ``h11`` it does no I/O and knows nothing of asyncio: text goes in, events come out::

    parser = MarkupParser([THINK, HERMES])
    parser.feed("<think>2+2?</think>Sure. <tool_")   # [Reasoning('2+2?'), Text('Sure. ')]
    parser.feed('call>{"name": "add", "arguments": {"a": 2, "b": 2}}</tool_call>')
    # [ToolCalls(markup='<tool_call>{…}</tool_call>', calls=(ParsedCall(name='add', …),), …)]
    parser.close()                                   # [] (nothing was held)

Events: :class:`Text`, :class:`Reasoning`, :class:`ToolCalls` (a block that held calls),
:class:`BadCall` (a block that held none: its markup and why, never lost silently),
:class:`Dropped` (a chat-template token taken out of the text) and :class:`Stopped` (a stop
string: the round's text ends there).

Formats (which markup is recognised, per use):

* :class:`TagFormat` — literal tags, matched exactly: :data:`HERMES` (``<tool_call>``,
  Hermes / Qwen), :data:`THINK` (``<think>``), or your own;
* :class:`TagPattern`, :class:`HarmonyFormat`, :class:`JsonCallFormat` — markup as a
  grammar (any case, spaces and attributes inside tags); :data:`GUARD_FORMATS` is every
  family :class:`~omni_agent.middleware.markup.MarkupGuard` knows: :data:`REASONING_TAGS`
  (``<think>``, ``<thinking>``, ``<reasoning>``, ``<thought>``, ``◁think▷``,
  ``<|begin_of_thought|>``), :data:`TOOL_CALL_TAGS` (``<tool_call>``, ``[TOOL_CALLS]``,
  ``<|python_tag|>``, DeepSeek's tokens, ...), :data:`FUNCTION_TAG`
  (``<function=name>``), :data:`HARMONY` (gpt-oss channels), :data:`JSON_CALLS` (a bare
  ``{"name": …, "arguments": …}``) and :data:`TEMPLATE_TOKENS` (``<|im_end|>``, stray
  closers);
* ``stop=[...]`` — stop strings (outside blocks): the text before one is the round's last.

``normalize=True`` matches tags on the normalised text
(:func:`~omni_agent.text.normalize`: NFKC, invisible characters removed),
so ``<thi\\u200bnk>`` is the tag it looks like; what comes out keeps its own characters.

:func:`escape_markup` makes the same grammar inert in text that must not act (retrieved
documents: :func:`omni_agent.context.render_context` applies it); :func:`find_markup` finds it.

Only text that may still become an opener (outside a block) or the block's closer (inside
one) is held; the rest is released at once. Held text never depends on how the stream was
cut: any split of the same text gives the same events, once adjacent text is merged
(``tests/test_markup_protocol.py`` checks it). :meth:`MarkupParser.close` ends a round: held
text is released, a block still open is ended (an unclosed tool call is read as it stands:
generation often stops before the closing tag), and the parser is ready for the next round.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol, Sequence, Union

import regex

from omni_agent.errors import ConfigError
from omni_agent.events import Event, ReasoningDelta, TextDelta, ToolCall
from omni_agent.text import is_normal, normalize, partial_start, visible

__all__ = [
    # events
    "Text", "Reasoning", "ToolCalls", "BadCall", "Dropped", "Stopped", "MarkupEvent", "ParsedCall",
    # the parser
    "MarkupParser", "Grammar", "read_calls", "is_call",
    # formats
    "MarkupFormat", "Opening", "TagFormat", "TagPattern", "HarmonyFormat", "JsonCallFormat",
    "HERMES", "THINK", "REASONING_TAGS", "TOOL_CALL_TAGS", "FUNCTION_TAG", "HARMONY", "JSON_CALLS",
    "TEMPLATE_TOKENS", "GUARD_FORMATS",
    # making markup inert (untrusted text)
    "find_markup", "escape_markup",
    # for Thinker backends
    "TextRouter",
]


# ============================================================================ events


@dataclass(slots=True)
class Text:
    """Plain text of the answer."""

    text: str


@dataclass(slots=True)
class Reasoning:
    """Text inside a reasoning block (``<think>…</think>``), without its tags."""

    text: str


@dataclass(slots=True)
class ParsedCall:
    """One call read from tool-call markup: its name and its arguments as a JSON object
    string. ``raw`` is the block's content as written; ``error`` is set when this item
    held no valid call (a list entry without a ``"name"``)."""

    name: str
    arguments: str
    raw: str
    error: str | None = None


@dataclass(slots=True)
class ToolCalls:
    """A tool-call block that held at least one call.

    ``markup`` is the whole block as written (opener, content, closer), ``body`` its
    content; ``calls`` the items read, in order (an item with ``error`` set was not a
    call); ``closed`` is False when the round ended before the closing tag."""

    markup: str
    body: str
    calls: tuple[ParsedCall, ...]
    closed: bool = True

    @property
    def valid(self) -> list[ParsedCall]:
        """The items that are calls."""
        return [c for c in self.calls if c.error is None]


@dataclass(slots=True)
class BadCall:
    """A tool-call block that held no call (not JSON, no ``"name"``, empty): the markup as
    written and what was wrong, for the caller to keep as text, report or drop."""

    markup: str
    body: str
    error: str
    closed: bool = True


@dataclass(slots=True)
class Dropped:
    """Markup that is neither text nor a block (a chat-template token such as
    ``<|im_end|>``, a stray closing tag), taken out of the text."""

    markup: str


@dataclass(slots=True)
class Stopped:
    """A stop string was reached: nothing after it belongs to the round (the parser
    takes no more text until :meth:`MarkupParser.close`)."""

    stop: str


MarkupEvent = Union[Text, Reasoning, ToolCalls, BadCall, Dropped, Stopped]


# ============================================================================ reading calls


_XML_FUNC = regex.compile(r"(?i)<\s*function\s*=\s*([A-Za-z0-9_.\-]+)\s*>(.*?)(?:<\s*/\s*function\s*>|$)", regex.S)
_XML_PARAM = regex.compile(r"(?i)<\s*parameter\s*=\s*([A-Za-z0-9_.\-]+)\s*>\s*(.*?)\s*<\s*/\s*parameter\s*>",
                           regex.S)
_ARG_KEYS = ("arguments", "parameters", "args", "input")
_NO_NAME = 'the tool call has no "name"'


def _json_or_str(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def _arguments(a: Any) -> str:
    """A call's arguments as a JSON string: an object stays one, a string that is JSON is
    kept, any other string becomes ``{"input": ...}``."""
    if a is None:
        return "{}"
    if isinstance(a, str):
        try:
            json.loads(a)
        except ValueError:
            return json.dumps({"input": a})
        return a
    return json.dumps(a)


def _calls_in(obj: Any, raw: str, top: bool) -> list[ParsedCall]:
    """The calls in a decoded JSON value: ``{"name", "arguments"|"parameters"|...}``, an
    OpenAI-style ``{"function": {...}}``, ``{"tool_calls": [...]}`` or a list of them.
    ``top``: the value is the block's own (not found inside a broken one), so a part that
    is not a call is reported as an error item."""
    if isinstance(obj, list):
        return [c for o in obj for c in _calls_in(o, raw, top)]
    if not isinstance(obj, dict):
        return [ParsedCall("", "", raw, _NO_NAME)] if top else []
    if isinstance(obj.get("tool_calls"), list):
        return _calls_in(obj["tool_calls"], raw, top)
    f = obj.get("function")
    if isinstance(f, dict):
        return _calls_in(f if "arguments" in f else {**f, "arguments": obj.get("arguments", {})}, raw, top)
    name = obj.get("name") or obj.get("tool_name") or obj.get("tool")
    if not isinstance(name, str) or not name:
        return [ParsedCall("", "", raw, _NO_NAME)] if top else []
    args: Any = next((obj[k] for k in _ARG_KEYS if k in obj), {})
    return [ParsedCall(name, _arguments(args), raw)]


def _read(text: str, name: str | None, raw: str) -> list[ParsedCall]:
    dec = json.JSONDecoder()
    if name is not None:  # the opener named the function (<function=name>{args})
        s = text.strip()
        try:
            args, _ = dec.raw_decode(s) if s else ({}, 0)
        except ValueError:
            args = None
        if isinstance(args, dict):
            return [ParsedCall(name, json.dumps(args), raw)]
    xml = [ParsedCall(m.group(1), json.dumps({k: _json_or_str(v) for k, v in _XML_PARAM.findall(m.group(2))}), raw)
           for m in _XML_FUNC.finditer(text)]
    if xml:  # Qwen3-Coder: <function=f><parameter=x>1</parameter></function>
        return xml
    out: list[ParsedCall] = []
    first_error: ValueError | None = None
    clean = True  # every JSON value so far decoded: what is found next is the block's own
    i = 0
    while i < len(text):
        j = min((k for k in (text.find("{", i), text.find("[", i)) if k >= 0), default=-1)
        if j < 0:
            break
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError as e:
            if clean:
                first_error = e
            clean = False
            i = j + 1
            continue
        out.extend(_calls_in(obj, raw, clean))
        i = end
    if not out:
        why = (f"the tool call is not valid JSON ({first_error})" if first_error is not None
               else "the tool call holds no JSON object" if text.strip() else "the tool call is empty")
        out.append(ParsedCall("", "", raw, why))
    return out


def read_calls(body: str, name: str | None = None) -> list[ParsedCall]:
    """The calls written in a tool-call block's content (never empty: when it holds no
    call, one item with ``error`` says why).

    Reads JSON (``{"name", "arguments"|"parameters"}``, OpenAI-style ``{"function": …}``,
    lists of them; junk after the object is ignored) and Qwen3-Coder's
    ``<function=f><parameter=x>1</parameter></function>``. ``name`` is the function an
    opener named (Llama's ``<function=name>{args}``). Invisible characters are ignored; a
    call that only reads as one after normalisation (fullwidth brackets) is read so.

    ``read_calls('{"name": "add", "arguments": {"a": 1}}')`` ->
    ``[ParsedCall(name='add', arguments='{"a": 1}', raw=..., error=None)]``
    """
    plain = visible(body)
    calls = _read(plain, name, body)
    if all(c.error for c in calls) and not is_normal(plain):
        again = _read(normalize(plain).text, name, body)
        if not all(c.error for c in again):
            return again
    return calls


def is_call(obj: Any) -> bool:
    """True when a decoded JSON value reads as a call (a name and arguments), or a
    non-empty list of calls: how a bare JSON object is told from JSON data."""
    if isinstance(obj, list):
        return bool(obj) and all(_is_one_call(o) for o in obj)
    return _is_one_call(obj)


def _is_one_call(obj: Any) -> bool:
    if not isinstance(obj, dict):
        return False
    if isinstance(obj.get("function"), dict):
        return _is_one_call(obj["function"]) or "name" in obj["function"]
    if isinstance(obj.get("tool_calls"), list):
        return any(_is_one_call(c) for c in obj["tool_calls"])
    return isinstance(obj.get("name") or obj.get("tool_name") or obj.get("tool"), str) and any(
        k in obj for k in _ARG_KEYS)


# ============================================================================ formats


@dataclass(frozen=True, slots=True)
class Opening:
    """What a matched opener starts (a format's answer to the parser).

    ``kind``: ``"reasoning"`` or ``"tool"`` (a block up to ``closer``; ``None``: to the
    end of the round), ``"json"`` (a bare JSON call: up to the end of the JSON value whose
    first character is ``json_at`` characters into the match), ``"drop"`` (the match is
    taken out, nothing more) or ``"stop"``. ``name``: the function the opener named.
    ``trim_after``: characters dropped right after the block's closer (a newline after
    ``</think>``). ``closer_starts`` / ``closer_window`` bound where a closer in progress
    is looked for."""

    kind: Literal["reasoning", "tool", "json", "drop", "stop"]
    closer: regex.Pattern[str] | None = None
    closer_starts: regex.Pattern[str] | None = None
    closer_window: int = 64
    name: str | None = None
    trim_after: str = ""
    json_at: int = 0
    fenced: bool = False


class MarkupFormat(Protocol):
    """One kind of markup :class:`MarkupParser` recognises.

    ``pattern``: the opener (a ``regex`` pattern; named groups unique among the formats
    used together); ``starts``: every character an opener can begin with; ``window``: the
    longest opener in progress; ``literal``: the opener's exact text when it is one (a
    match of it can never grow); ``kind``: what it opens (as :class:`Opening`)."""

    @property
    def kind(self) -> str: ...

    @property
    def pattern(self) -> str: ...

    @property
    def starts(self) -> str: ...

    @property
    def window(self) -> int: ...

    @property
    def literal(self) -> str | None: ...

    def opening(self, m: regex.Match[str] | None) -> Opening:
        """What the match ``m`` of this format's opener starts (``m`` is None when a round
        starts inside a reasoning block)."""
        ...


def _lookahead(chars: str) -> regex.Pattern[str]:
    return regex.compile("(?=[" + "".join(regex.escape(c) for c in sorted(set(chars))) + "])")


@lru_cache(maxsize=256)
def _literal_opening(kind: str, close: str, trim_after: str) -> Opening:
    return Opening(kind, regex.compile(regex.escape(close)), _lookahead(close[0]), len(close),  # type: ignore[arg-type]
                   trim_after=trim_after)


@dataclass(frozen=True, slots=True)
class TagFormat:
    """Markup between two literal tags, matched exactly (case and spelling).

    ``kind="tool"`` (the default): a tool call with JSON inside,
    ``{"name": ..., "arguments": {...}}`` (``"parameters"`` is accepted too) or a list of
    such objects; ``kind="reasoning"``: reasoning text. ``trim_after``: characters
    dropped right after the closer.

    ``TagFormat("<function_call>", "</function_call>")``
    """

    open: str
    close: str
    kind: Literal["tool", "reasoning"] = "tool"
    trim_after: str = ""

    def __post_init__(self) -> None:
        if not self.open or not self.close:
            raise ConfigError(f"a tag format needs an opening and a closing tag (got {self.open!r}, {self.close!r})")
        if self.kind not in ("tool", "reasoning"):
            raise ConfigError(f"a tag format's kind is 'tool' or 'reasoning', not {self.kind!r}")

    @property
    def pattern(self) -> str:
        return regex.escape(self.open)

    @property
    def starts(self) -> str:
        return self.open[0]

    @property
    def window(self) -> int:
        return len(self.open)

    @property
    def literal(self) -> str | None:
        return self.open

    def opening(self, m: regex.Match[str] | None) -> Opening:
        return _literal_opening(self.kind, self.close, self.trim_after)


HERMES = TagFormat("<tool_call>", "</tool_call>")
"""Hermes / Qwen2.5 / Qwen3 tool calls (and many fine-tunes' chat templates)."""

THINK = TagFormat("<think>", "</think>", kind="reasoning", trim_after="\n")
"""``<think>…</think>`` reasoning, exactly so spelled (Qwen3, DeepSeek-R1); the newlines
after ``</think>`` are dropped."""


@dataclass(frozen=True, slots=True)
class _StopString:
    text: str

    kind = "stop"

    @property
    def pattern(self) -> str:
        return regex.escape(self.text)

    @property
    def starts(self) -> str:
        return self.text[0]

    @property
    def window(self) -> int:
        return len(self.text)

    @property
    def literal(self) -> str | None:
        return self.text

    def opening(self, m: regex.Match[str] | None) -> Opening:
        return Opening("stop")


_MARKUP_STARTS = _lookahead("<{[`◁")


@lru_cache(maxsize=256)
def _closer(source: str) -> regex.Pattern[str]:
    return regex.compile(f"(?i:{source})", regex.VERSION0)


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: cheap to look up
class TagPattern:
    """Markup as a grammar: an opener and a closer given as ``regex`` patterns, matched
    in any case. ``kind``: ``"reasoning"``, ``"tool"`` or ``"drop"`` (the opener alone is
    taken out); ``close=None``: the block runs to the end of the round; ``name_group``:
    the opener's group that names the function (``<function=name>``)."""

    kind: Literal["reasoning", "tool", "drop"]
    open: str
    close: str | None = None
    name_group: str | None = None
    starts: str = "<"
    window: int = 160

    @property
    def pattern(self) -> str:
        return f"(?i:{self.open})"

    @property
    def literal(self) -> str | None:
        return None

    def opening(self, m: regex.Match[str] | None) -> Opening:
        if self.kind == "drop":
            return Opening("drop")
        name = m.group(self.name_group) if (m is not None and self.name_group) else None
        closer = _closer(self.close) if self.close is not None else None
        return Opening(self.kind, closer, _MARKUP_STARTS, 64, name=name)


# The tags, as a grammar rather than a list of spellings: a tag is its punctuation and its
# name, in any case, with spaces between the parts and (XML-like tags) attributes, so
# "<THINK>", "< think >", '<think type="x">' and (normalised) "<thi\u200bnk>" and
# DeepSeek's "<｜tool▁calls▁begin｜>" (NFKC: "<|...|>") are all the tags they look like.
_ATTRS = r"""(?:\s+[\w\-:.]{1,40}\s*=\s*(?:"[^"<>]{0,120}"|'[^'<>]{0,120}'|[^\s<>"']{1,120})){0,8}\s*"""


def _xml_open(name: str) -> str:
    return rf"<\s*{name}{_ATTRS}>"


def _xml_close(name: str) -> str:
    return rf"<\s*/\s*{name}\s*>"


def _token(name: str) -> str:
    """A chat-template token: ``<|name|>``."""
    return rf"<\s*\|\s*{name}\s*\|\s*>"


REASONING_TAGS: tuple[TagPattern, ...] = (
    *(TagPattern("reasoning", _xml_open(n), _xml_close(n)) for n in ("think", "thinking", "reasoning", "thought")),
    TagPattern("reasoning", r"◁\s*think\s*▷", r"◁\s*/\s*think\s*▷", starts="◁"),
    TagPattern("reasoning", _token("begin_of_thought"), _token("end_of_thought")),
)
"""Reasoning blocks in every spelling MarkupGuard knows (``<think>`` first)."""

TOOL_CALL_TAGS: tuple[TagPattern, ...] = (
    *(TagPattern("tool", _xml_open(n), _xml_close(n))
      for n in ("tool_call", "tool_calls", "function_call", "functioncall")),
    TagPattern("tool", _token("tool_call_start"), _token("tool_call_end")),
    TagPattern("tool", _token("tool_calls_section_begin"), _token("tool_calls_section_end")),
    TagPattern("tool", _token("tool[▁_ ]calls[▁_ ]begin"), _token("tool[▁_ ]calls[▁_ ]end")),  # DeepSeek
    TagPattern("tool", r"<\s*start_function_call\s*>", r"<\s*end_function_call\s*>"),
    TagPattern("tool", r"\[\s*TOOL_CALLS\s*\]", None, starts="["),  # Mistral: to the round's end
    TagPattern("tool", _token("python_tag"), _token("eom_id") + "|" + _token("eot_id")),
    TagPattern("tool", r"```[ \t]*tool_code", r"```", starts="`"),
    TagPattern("tool", r"```[ \t]*tool_call", r"```", starts="`"),
)
"""Tool-call blocks: Qwen/Hermes, Mistral, Llama's python tag, LFM, DeepSeek, gemma fences."""

FUNCTION_TAG = TagPattern("tool", r"<\s*function\s*=\s*(?P<fname>[A-Za-z0-9_.\-]{1,64})\s*>",
                          _xml_close("function"), name_group="fname")
"""Llama / Qwen3-Coder ``<function=name>{args}</function>``."""


_HARMONY_REASONING_END = _closer(rf"{_token('end')}|{_token('start')}")
_HARMONY_CALL_END = _closer(rf"{_token('call')}|{_token('end')}")
_HARMONY_TO = regex.compile(r"to=(?:functions\.)?([A-Za-z0-9_.\-]+)")


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: cheap to look up
class HarmonyFormat:
    """gpt-oss channels, ``<|channel|>analysis<|message|>…``: the ``analysis`` channel is
    reasoning, a message ``to=functions.name`` a tool call, any other channel header is
    dropped."""

    kind = "harmony"
    starts = "<"
    window = 160

    @property
    def pattern(self) -> str:
        return rf"(?i:{_token('channel')}(?P<chan>[^<\n]{{0,80}}){_token('message')})"

    @property
    def literal(self) -> str | None:
        return None

    def opening(self, m: regex.Match[str] | None) -> Opening:
        chan = m.group("chan") if m is not None else ""
        if "analysis" in chan:
            return Opening("reasoning", _HARMONY_REASONING_END, _MARKUP_STARTS, 64)
        if "to=" in chan or "commentary" in chan and "functions." in chan:
            to = _HARMONY_TO.search(chan)
            return Opening("tool", _HARMONY_CALL_END, _MARKUP_STARTS, 64, name=to.group(1) if to else None)
        return Opening("drop")


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: cheap to look up
class JsonCallFormat:
    """A bare JSON call, ``{"name": …, "arguments": …}`` (a list of them, or one in a
    ```` ```json ```` fence, whose closing fence goes too). The value is held until it
    closes; JSON that is not a call is released as text, and so is a value still open
    after ``MarkupParser(max_json=...)`` characters."""

    kind = "json"
    starts = "{[`"
    window = 160

    @property
    def pattern(self) -> str:
        return (r"(?:```(?:json)?[ \t]*\n?[ \t]*)?(?:\[\s*)?"
                r"\{\s*\"(?:name|function|tool|tool_name|tool_calls)\"\s*:")

    @property
    def literal(self) -> str | None:
        return None

    def opening(self, m: regex.Match[str] | None) -> Opening:
        tag = m.group() if m is not None else "{"
        at = min(i for i in (tag.find("{"), tag.find("[")) if i >= 0)
        return Opening("json", json_at=at, fenced=tag.startswith("```"))


HARMONY = HarmonyFormat()
JSON_CALLS = JsonCallFormat()

_KNOWN = r"(?:think|thinking|reasoning|thought|tool_calls?|function_call|functioncall|function|start_function_call)"
_TOKEN_NAME = r"[A-Za-z0-9_.▁\-]{1,40}"
TEMPLATE_TOKENS: tuple[TagPattern, ...] = (
    TagPattern("drop", rf"{_xml_close(_KNOWN)}|<\s*{_KNOWN}\s*/\s*>|◁\s*/\s*think\s*▷|<\s*end_function_call\s*>",
               starts="<◁"),
    TagPattern("drop", rf"{_token('start')}(?:assistant|user|system|developer|tool)?|{_token(_TOKEN_NAME)}"),
)
"""Stray closing tags and chat-template tokens (``<|im_end|>``, ``<|eot_id|>``): dropped."""

GUARD_FORMATS: tuple[MarkupFormat, ...] = (*REASONING_TAGS, *TOOL_CALL_TAGS, HARMONY, FUNCTION_TAG, JSON_CALLS,
                                           *TEMPLATE_TOKENS)
"""Every family MarkupGuard takes out of speech, in the order they are tried."""


# ============================================================================ the grammar


class Grammar:
    """Formats compiled together: one opener pattern, the characters an opener starts
    with, the hold window. Built once per set of formats (:meth:`of`)."""

    __slots__ = ("formats", "openers", "starts", "starts_re", "window", "eager", "reasoning", "_groups")

    def __init__(self, formats: Sequence[MarkupFormat]):
        self.formats = tuple(formats)
        self._groups = {f"_f{i}": f for i, f in enumerate(self.formats)}
        self.openers: regex.Pattern[str] | None = regex.compile(
            "|".join(f"(?P<_f{i}>{f.pattern})" for i, f in enumerate(self.formats)),
            regex.VERSION0) if self.formats else None
        self.starts = "".join(sorted({c for f in self.formats for c in f.starts}))
        self.starts_re = _lookahead(self.starts) if self.starts else None
        self.window = max((f.window for f in self.formats), default=0)
        # Literal openers, none the start of another: a complete match can never grow, so
        # it is taken even at the very end of the text seen so far.
        lits = [f.literal for f in self.formats]
        self.eager = all(x is not None for x in lits) and not any(
            a != b and b.startswith(a) for a in lits for b in lits if a is not None and b is not None)
        self.reasoning: MarkupFormat | None = next((f for f in self.formats if f.kind == "reasoning"), None)

    @staticmethod
    @lru_cache(maxsize=64)
    def of(formats: tuple[MarkupFormat, ...]) -> "Grammar":
        """The grammar of ``formats`` (cached: formats are immutable)."""
        return Grammar(formats)

    def format_of(self, m: regex.Match[str]) -> MarkupFormat:
        """The format whose opener ``m`` (a match of :attr:`openers`) is."""
        g = m.lastgroup
        f = self._groups.get(g) if g is not None else None
        if f is not None:
            return f
        return next(f for g, f in self._groups.items() if m.group(g) is not None)


# ============================================================================ the parser


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


# A JSON call written with fullwidth brackets or quotes is scanned as the call it looks like.
_JSON_FOLD = str.maketrans("｛｝［］＂＼", '{}[]"\\')


def _json_value(s: str) -> Any:
    """The JSON value ``s`` holds (read as normalised text when it only parses so), or None."""
    for t in (s, normalize(s).text) if not s.isascii() else (s,):
        try:
            return json.loads(t)
        except ValueError:
            continue
    return None


class MarkupParser:
    """Turns a stream of text into :data:`MarkupEvent` items (see the module doc).

    * ``formats`` — what to recognise (default: Hermes tool calls only), or a
      :class:`Grammar` compiled from them once (for a parser made per turn);
    * ``stop`` — stop strings, outside blocks: the text before the first is the round's
      last (:class:`Stopped`; :attr:`done` is then True);
    * ``normalize`` — match on the normalised text (any invisible or compatibility
      character inside a tag is the tag it looks like);
    * ``reasoning_open`` — every round starts inside reasoning (chat templates that put
      ``<think>`` in the prompt): text up to the first reasoning format's closer;
    * ``max_json`` — a bare JSON call (:data:`JSON_CALLS`) still open after this many
      characters is released as text.

    ``feed(text)`` returns the events the text completes; ``flush()`` releases what is
    held and ends an open block (a seam in the stream, such as a native tool call);
    ``close()`` does that and starts the next round.
    """

    __slots__ = ("grammar", "normalize", "reasoning_open", "max_json", "done", "buf", "mode", "op",
                 "tool_open", "tool_text", "json", "json_scanned", "json_start", "eat_fence", "trim",
                 "_out", "_kind", "_parts")

    def __init__(self, formats: Sequence[MarkupFormat] | Grammar = (HERMES,), *, stop: Sequence[str] = (),
                 normalize: bool = False, reasoning_open: bool = False, max_json: int = 8192):
        if isinstance(formats, Grammar) and not stop:
            self.grammar = formats  # compiled once by the caller
        else:
            base = formats.formats if isinstance(formats, Grammar) else tuple(formats)
            self.grammar = Grammar.of(base + tuple(_StopString(s) for s in stop if s))
        if reasoning_open and self.grammar.reasoning is None:
            raise ConfigError("reasoning_open needs a reasoning format (e.g. THINK) among the formats")
        self.normalize = normalize
        self.reasoning_open = reasoning_open
        self.max_json = max_json
        self.done = False
        self.buf = ""
        self._out: list[MarkupEvent] = []
        self._kind: type | None = None  # Text or Reasoning: the kind of _parts
        self._parts: list[str] = []
        self._begin_round()

    def _begin_round(self) -> None:
        self.done = False
        self.mode = "text"  # text | reasoning | tool | json
        self.op: Opening | None = None
        if self.reasoning_open:
            assert self.grammar.reasoning is not None
            self.mode, self.op = "reasoning", self.grammar.reasoning.opening(None)
        self.tool_open = ""
        self.tool_text = ""
        self.json: _JsonScan | None = None
        self.json_scanned = 0
        self.json_start = 0
        self.eat_fence = False
        self.trim = ""

    @property
    def idle(self) -> bool:
        """Nothing held and no block open: the next text starts fresh."""
        return not self.buf and self.mode == "text" and not self.eat_fence and not self.trim

    def plain(self, text: str) -> bool:
        """True when ``text`` fed now would come out as that same text (the parser is idle
        and no opener can start in it): a caller may pass it on without feeding it."""
        if not self.idle:
            return False
        for c in self.grammar.starts:
            if c in text:
                return False
        return not self.normalize or is_normal(text)

    # ---------------------------------------------------------------- the interface

    def feed(self, text: str) -> list[MarkupEvent]:
        """Take the next piece of text; return the events it completes."""
        if self.done:
            return []
        if not self.buf and self.mode == "text" and not self.trim and not self.eat_fence:
            # The common case: nothing held and no character an opener starts with.
            for c in self.grammar.starts:
                if c in text:
                    break
            else:
                if not self.normalize or is_normal(text):
                    return [Text(text)] if text else []
        self.buf += text
        self._run(final=False)
        return self._take()

    def flush(self) -> list[MarkupEvent]:
        """Release everything held now and end an open block (as at the round's end), but
        stay in the round (a seam in the stream: a native tool call, a spoken line)."""
        if not self.done:
            self._run(final=True)
            self._end_block()
        return self._take()

    def close(self) -> list[MarkupEvent]:
        """End the round: what :meth:`flush` releases; then the parser starts a new round."""
        out = self.flush()
        self._begin_round()
        return out

    # ---------------------------------------------------------------- output

    def _put(self, kind: type, s: str) -> None:
        if not s:
            return
        if self._kind is not kind:
            self._settle()
            self._kind = kind
        self._parts.append(s)

    def _settle(self) -> None:
        if self._parts:
            assert self._kind is not None
            self._out.append(self._kind("".join(self._parts)))
            self._parts.clear()
        self._kind = None

    def _emit(self, ev: MarkupEvent) -> None:
        self._settle()
        self._out.append(ev)

    def _take(self) -> list[MarkupEvent]:
        self._settle()
        out, self._out = self._out, []
        return out

    def _tool_done(self, markup: str, body: str, name: str | None, closed: bool) -> None:
        calls = read_calls(body, name)
        if all(c.error for c in calls):
            self._emit(BadCall(markup, body, calls[0].error or "", closed))
        else:
            self._emit(ToolCalls(markup, body, tuple(calls), closed))
        self.tool_text = ""
        self.tool_open = ""

    # ---------------------------------------------------------------- scanning

    def _view(self, buf: str) -> tuple[str, Any]:
        """The text to match on and its map to ``buf`` (None: the text is ``buf``)."""
        if not self.normalize or is_normal(buf):
            return buf, None
        n = normalize(buf)
        return n.text, n

    def _end_block(self) -> None:
        """The round (or a seam) came inside a block: end it with what there is."""
        buf, mode = self.buf, self.mode
        if mode == "reasoning":
            self._put(Reasoning, buf)
        elif mode == "tool":
            self.tool_text += buf
            op = self.op
            self._tool_done(self.tool_open + self.tool_text, self.tool_text, op.name if op else None,
                            closed=op is None or op.closer is None)
        elif mode == "json":
            norm = normalize(buf).text if self.normalize else buf
            if '"arguments"' in norm or '"parameters"' in norm:  # a call cut off: never text
                self._tool_done(buf, buf, None, closed=False)
            else:
                self._put(Text, buf)
        else:
            self._put(Text, buf)
        self.buf = ""
        self.mode = "text"

    def _run(self, final: bool) -> None:
        while not self.done:
            mode = self.mode
            if mode == "text":
                go = self._step_text(final)
            elif mode == "json":
                go = self._step_json(final)
            else:
                go = self._step_block(final)
            if not go:
                return

    def _step_prefix(self, final: bool) -> bool:
        """Drop what must go right after a block (its trim characters, a JSON call's
        closing fence); False while that is still undecided."""
        buf = self.buf
        if self.trim:
            stripped = buf.lstrip(self.trim)
            if not stripped:
                self.buf = ""
                if final:
                    self.trim = ""
                return False
            self.buf = stripped
            self.trim = ""
        if self.eat_fence:
            view, n = self._view(self.buf)
            stripped = view.lstrip()
            if stripped.startswith("```"):
                cut = len(view) - len(stripped) + 3
                self.buf = self.buf[cut if n is None else n.end(cut):]
            elif not final and "```".startswith(stripped):
                return False  # the closing fence may still come
            self.eat_fence = False
        return True

    def _step_text(self, final: bool) -> bool:
        if (self.trim or self.eat_fence) and not self._step_prefix(final):
            return False
        buf = self.buf
        if not buf:
            return False
        g = self.grammar
        view, n = self._view(buf)
        for c in g.starts:
            if c in view:
                break
        else:  # every opener starts with one of these: nothing here can be or become markup
            self._put(Text, buf)
            self.buf = ""
            return False
        assert g.openers is not None
        hold = len(view) if final else partial_start(g.openers, view, starts=g.starts_re, window=g.window)
        m = g.openers.search(view)
        if m is None or m.start() > hold or (m.start() == hold and not (g.eager and m.end() == len(view))):
            cut = hold if n is None else n.start(hold)
            self._put(Text, buf[:cut])
            self.buf = buf[cut:]
            return False
        start, end = m.span() if n is None else n.span(m.start(), m.end())
        self._put(Text, buf[:start])
        self.buf = buf[end:]
        tag = buf[start:end]
        op = g.format_of(m).opening(m)
        kind = op.kind
        if kind == "reasoning" or kind == "tool":
            self.mode, self.op = kind, op
            self.tool_open = tag
        elif kind == "json":
            self.mode, self.op = "json", op
            first = m.start() + op.json_at
            self.buf = buf[start:]
            self.json = _JsonScan()
            self.json_scanned = self.json_start = (first if n is None else n.start(first)) - start
        elif kind == "stop":
            self._emit(Stopped(tag))
            self.buf = ""
            self.done = True
            return False
        else:  # stray closers, chat-template tokens
            self._emit(Dropped(tag))
        return True

    def _step_block(self, final: bool) -> bool:
        buf = self.buf
        op = self.op
        assert op is not None
        reasoning = self.mode == "reasoning"
        closer = op.closer
        if closer is None:  # until the end of the round
            self.tool_text += buf
            self.buf = ""
            return False
        view, n = self._view(buf)
        m = closer.search(view)
        if m is not None:
            start, end = m.span() if n is None else n.span(m.start(), m.end())
            body = buf[:start]
            self.buf = buf[end:]
            if reasoning:
                self._put(Reasoning, body)
                self.trim = op.trim_after
            else:
                self.tool_text += body
                self._tool_done(self.tool_open + self.tool_text + buf[start:end], self.tool_text, op.name,
                                closed=True)
            self.mode = "text"
            return True
        if final:
            keep = len(buf)
        else:
            k = partial_start(closer, view, starts=op.closer_starts, window=op.closer_window)
            keep = k if n is None else n.start(k)
        if reasoning:
            self._put(Reasoning, buf[:keep])
        else:
            self.tool_text += buf[:keep]
        self.buf = buf[keep:]
        return False

    def _step_json(self, final: bool) -> bool:
        buf = self.buf
        scan = self.json
        op = self.op
        assert scan is not None and op is not None
        # Only the first max_json characters may hold the value: what is decided never
        # depends on how much text happened to arrive at once.
        lim = self.max_json
        head = buf[:lim]
        end = scan.feed(head if head.isascii() else head.translate(_JSON_FOLD), self.json_scanned)
        self.json_scanned = len(head)
        if end < 0:
            if len(buf) > lim:
                # Not closed within max_json characters: not a call. Its opening is text;
                # the rest is read again as text (it may hold markup of its own).
                cut = self.json_start + 1
                self._put(Text, buf[:cut])
                self.buf = buf[cut:]
                self.mode = "text"
                return True
            return False
        block = buf[:end]
        body = block[self.json_start:]
        obj = _json_value(body)
        self.buf = buf[end:]
        self.mode = "text"
        if obj is not None and is_call(obj):
            self._tool_done(block, body, None, closed=True)
            self.eat_fence = op.fenced
        else:
            self._put(Text, block)
        return True


# ============================================================================ making markup inert


# The grammar of every family MarkupGuard knows: what must not act in untrusted text.
_GUARD = Grammar.of(GUARD_FORMATS)

_ENTITY = {"<": "&lt;", "[": "&#91;", "`": "&#96;", "{": "&#123;", "◁": "&#9665;"}


def _markup(norm: str, extra: re.Pattern[str] | regex.Pattern[str] | None) -> list[tuple[int, int, int]]:
    """(start, end, where) of the markup in normalised text; ``where`` is the index of the
    character whose escaping makes it inert."""
    found: list[tuple[int, int, int]] = []
    dec = json.JSONDecoder()
    assert _GUARD.openers is not None
    for m in _GUARD.openers.finditer(norm):
        if _GUARD.format_of(m) is JSON_CALLS:
            brace = m.start() + m.group().find("{")
            first = min(i for i in (m.group().find("{"), m.group().find("[")) if i >= 0) + m.start()
            try:
                obj, _ = dec.raw_decode(norm, first)
            except ValueError:
                continue
            if not is_call(obj):
                continue  # JSON data, not a call
            found.append((m.start(), m.end(), brace))
        else:
            found.append((m.start(), m.end(), m.start()))
    if extra is not None:
        for x in extra.finditer(norm):
            if x.end() > x.start() and not any(s <= x.start() < e for s, e, _ in found):
                found.append((x.start(), x.end(), x.start()))
        found.sort()
    return found


def find_markup(text: str) -> list[tuple[int, int]]:
    """Spans of ``text`` that the guard's grammar (:data:`GUARD_FORMATS`) reads as markup:
    reasoning and tool-call tags in any spelling it accepts, chat-template tokens, JSON tool
    calls (their opening). Matched on the normalised text, reported in ``text``'s positions.

    ``find_markup("ok <TOOL_CALL>")`` -> ``[(3, 14)]``
    """
    n = normalize(text)
    return [n.span(s, e) for s, e, _ in _markup(n.text, None)]


def escape_markup(text: str, extra: re.Pattern[str] | regex.Pattern[str] | None = None) -> str:
    """``text`` with everything the guard's grammar (:data:`GUARD_FORMATS`) reads as markup
    made inert, for text that must not act (retrieved documents): each tag's opening
    character becomes an HTML character reference (``<tool_call>`` -> ``&lt;tool_call>``,
    ``[TOOL_CALLS]`` -> ``&#91;TOOL_CALLS]``, a JSON call's ``{`` -> ``&#123;``), every ``<``
    inside it too; invisible characters are removed. ``extra`` (a pattern over normalised
    text) escapes more the same way. The rest of the text keeps its own characters.
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


# ============================================================================ for Thinker backends


class TextRouter:
    """Turns a local model's generated text into Thinker events (for the backends that
    generate text themselves: transformers, llama.cpp, Qwen3-Omni).

    * ``<think>…</think>`` becomes :class:`~omni_agent.events.ReasoningDelta`;
    * with ``parse_tools`` (tools were offered for the round),
      ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` becomes
      :class:`~omni_agent.events.ToolCall`; a block that is not a valid call, or that the
      generation left open, stays text (what the model wrote is never lost);
    * generation ends at the first stop string, which is not emitted (:attr:`done`).

    ``feed(delta)`` returns the events the text completes; ``finish()`` flushes what is
    held at the end of generation. ``n_calls`` counts the calls passed on.

    ::

        router = TextRouter(stop_strings=request.settings.stop, parse_tools=True)
        for piece in pieces:
            yield from router.feed(piece)
            if router.done:
                break
        yield from router.finish()
    """

    __slots__ = ("parser", "n_calls")

    def __init__(self, stop_strings: Sequence[str] | None = None, parse_tools: bool = False):
        self.parser = MarkupParser((THINK, HERMES) if parse_tools else (THINK,), stop=list(stop_strings or []))
        self.n_calls = 0

    @property
    def done(self) -> bool:
        """True once a stop string was reached."""
        return self.parser.done

    def feed(self, delta: str) -> list[Event]:
        """Take the next piece of generated text; return the events it completes."""
        return self._events(self.parser.feed(delta))

    def finish(self) -> list[Event]:
        """Flush held text at the end of generation."""
        if self.parser.done:
            return []
        return self._events(self.parser.flush())

    def _events(self, evs: list[MarkupEvent]) -> list[Event]:
        out: list[Event] = []
        for ev in evs:
            t = type(ev)
            if t is Text:
                out.append(TextDelta(ev.text))  # type: ignore[union-attr]
            elif t is Reasoning:
                out.append(ReasoningDelta(ev.text))  # type: ignore[union-attr]
            elif t is ToolCalls and ev.closed and all(c.error is None for c in ev.calls):  # type: ignore[union-attr]
                for c in ev.calls:  # type: ignore[union-attr]
                    self.n_calls += 1
                    out.append(ToolCall(id=_call_id(), name=c.name, arguments=c.arguments))
            elif t is ToolCalls or t is BadCall:
                out.append(TextDelta(ev.markup))  # type: ignore[union-attr]
        return out


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:12]}"
