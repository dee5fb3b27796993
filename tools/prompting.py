"""Prompting small models for tool calls: a short tool list and worked examples.

A chat template that knows tools (Qwen, Hermes, Llama 3.1...) renders ``request.tools``
itself. A small model whose template does not (SmolLM2) needs to be shown: this adds a
system note listing the tools in the Hermes call format, and the tools' own examples
(``@tool(examples=[...])``) as earlier user/assistant exchanges. With them SmolLM2-135M
copies the argument from the request ("Tokyo") instead of inventing one ("UTC"); see
docs/tools.md for the figures.
"""

from __future__ import annotations

import json
from typing import Any

from omni_agent.thinker import Message

from .registry import ToolRegistry

__all__ = ["tools_system_note", "with_tool_examples", "with_calls_as_text", "format_call"]


def format_call(name: str, arguments: dict[str, Any], open_tag: str = "<tool_call>",
                close_tag: str = "</tool_call>") -> str:
    """A call in the Hermes text form, laid out as the constrained decoder writes it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{open_tag}{body}{close_tag}"


def tools_system_note(registry: ToolRegistry) -> str:
    """A system-prompt paragraph: the tools, their parameters, and how to call one."""
    lines = ["You can call tools. To call one, write "
             '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>. Tools:']
    for t in registry:
        props = (t.parameters or {}).get("properties") or {}
        sig = ", ".join(f"{p}: {s.get('type', 'any')}" for p, s in props.items())
        desc = (t.description or "").split("\n\n")[0]
        lines.append(f"- {t.name}({sig}): {desc}")
    return "\n".join(lines)


def with_tool_examples(messages: list[Message], registry: ToolRegistry, *, focus: str | None = None,
                       per_tool: int = 2, limit: int = 8) -> list[Message]:
    """A copy of ``messages`` with the tool note in the system message and example
    exchanges after it (``per_tool`` of each other tool's, then all of ``focus``'s). The turn's own messages are not changed: this is for one request."""
    examples: list[tuple[str, str]] = []
    # The focus tool's examples come last: nearest to the request, they count most.
    order = sorted(registry, key=lambda t: t.name == focus)
    for t in order:
        for q, args in (t.examples if t.name == focus else t.examples[:per_tool]):
            examples.append((q, format_call(t.name, args)))
    examples = examples[-limit:]
    note = tools_system_note(registry)
    out: list[Message] = []
    i = 0
    if messages and messages[0].role == "system":
        first = messages[0]
        out.append(Message("system", f"{first.text}\n\n{note}" if first.text else note))
        i = 1
    else:
        out.append(Message("system", note))
    for q, call in examples:
        out.append(Message("user", q))
        out.append(Message("assistant", call))
    out.extend(messages[i:])
    return out


def with_calls_as_text(messages: list[Message]) -> list[Message]:
    """A copy of ``messages`` where each assistant message's tool calls are written into its
    text in the Hermes form (and the structured ``tool_calls`` left out).

    For a chat template that does not render ``tool_calls`` (SmolLM2's): without this the
    model would see an empty assistant turn followed by a tool result it cannot place.
    """
    out: list[Message] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = []
            for c in m.tool_calls:
                args = c.get("arguments") or "{}"
                try:
                    parsed = json.loads(args) if isinstance(args, str) else args
                except ValueError:
                    parsed = args
                calls.append(format_call(str(c.get("name", "")), parsed))
            text = (m.text.strip() + " " if m.text.strip() else "") + "".join(calls)
            out.append(Message("assistant", text))
        else:
            out.append(m)
    return out
