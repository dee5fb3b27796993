"""What redacting middleware (PII) hide in tool calls and results, besides spoken clauses.

A middleware that redacts text (``redact_json`` preferred, else ``redact_text``) filters
tool arguments and results wherever they are shown — client events, the trace — when its
``display`` flag is on (or the agent keeps no originals), and wherever they are remembered
when its ``memory`` flag is on (both default to on)::

    show, keep = redactors(agent.middleware, keep_originals=True)
    event = redacted_event(tool_call, show)      # a copy: the Thinker keeps the real one
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Protocol, TypeVar, runtime_checkable

from .events import ToolCall, ToolResult
from .thinker import Message

__all__ = ["TextRedactor", "JsonRedactor", "Redact", "redactors", "redact", "redacted_event",
           "redacted_message"]

#: One redacting function: text in, text with what must not be seen replaced.
Redact = Callable[[str], str]


@runtime_checkable
class JsonRedactor(Protocol):
    """A middleware that redacts inside JSON text (tool arguments), keeping it JSON."""

    def redact_json(self, text: str) -> str: ...


@runtime_checkable
class TextRedactor(Protocol):
    """A middleware that redacts plain text."""

    def redact_text(self, text: str) -> str: ...


def redactors(middleware: Iterable[Any], *, keep_originals: bool) -> tuple[list[Redact], list[Redact]]:
    """The redacting functions of ``middleware``: (for what is shown, for what is remembered)."""
    show: list[Redact] = []
    keep: list[Redact] = []
    for mw in middleware:
        if isinstance(mw, JsonRedactor):
            fn: Redact = mw.redact_json
        elif isinstance(mw, TextRedactor):
            fn = mw.redact_text
        else:
            continue
        # Optional flags with a default (a Protocol cannot say "optional"): both on unless set.
        if getattr(mw, "display", True) or not keep_originals:
            show.append(fn)
        if getattr(mw, "memory", True):
            keep.append(fn)
    return show, keep


T = TypeVar("T")


def redact(fns: list[Redact], text: T) -> T:
    """``text`` through every function in turn; anything not a string as it is."""
    if isinstance(text, str):
        out: str = text
        for fn in fns:
            out = fn(out)
        return out  # type: ignore[return-value]
    return text


def redacted_event(ev: ToolCall | ToolResult, fns: list[Redact]) -> ToolCall | ToolResult:
    """A copy of a tool call (its arguments) or result (its content), redacted."""
    if isinstance(ev, ToolCall):
        return dataclasses.replace(ev, arguments=redact(fns, ev.arguments))
    return dataclasses.replace(ev, content=redact(fns, ev.content))


def redacted_message(m: Message, fns: list[Redact]) -> Message:
    """A tool call or tool result message as memory keeps it (redacted); others as they are."""
    if m.role == "tool":
        return dataclasses.replace(m, content=redact(fns, m.content))
    if m.tool_calls:
        calls = [{**c, "arguments": redact(fns, c.get("arguments"))} for c in m.tool_calls]
        return dataclasses.replace(m, tool_calls=calls)
    return m
