"""What the local backends (transformers, llama.cpp) share to turn a request into the
message dicts a chat template renders, and to refuse input they cannot read."""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..errors import UnsupportedInputError
from ..events import AudioPart, TextPart
from ..thinker import Message, ThinkerRequest

__all__ = ["message_text", "chat_messages", "template_tool_fields", "check_input"]


def message_text(m: Message) -> str:
    """The text of a message: its text parts, and the transcripts of its audio parts."""
    if isinstance(m.content, str):
        return m.content
    out = []
    for p in m.content:
        if isinstance(p, TextPart):
            out.append(p.text)
        elif isinstance(p, AudioPart) and p.transcript:
            out.append(p.transcript)
    return "\n".join(out)


def _json_or_text(s: Any) -> Any:
    if isinstance(s, str):
        try:
            return json.loads(s)
        except ValueError:
            return s
    return s


def template_tool_fields(m: Message) -> dict[str, Any]:
    """The tool-call fields of a message as chat templates expect them (an assistant's
    ``tool_calls`` with parsed arguments; a tool result's ``tool_call_id`` and ``name``)."""
    d: dict[str, Any] = {}
    if m.tool_calls:
        d["tool_calls"] = [{"id": c.get("id"), "type": "function", "function": {
            "name": c.get("name"), "arguments": _json_or_text(c.get("arguments", "{}"))}}
            for c in m.tool_calls]
    if m.role == "tool":
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.name:
            d["name"] = m.name
    return d


def chat_messages(request: ThinkerRequest) -> list[dict[str, Any]]:
    """The request's messages as chat-template dicts (role, text content, tool fields)."""
    chat: list[dict[str, Any]] = []
    for m in request.messages:
        d: dict[str, Any] = {"role": m.role, "content": message_text(m)}
        d.update(template_tool_fields(m))
        chat.append(d)
    return chat


def check_input(request: ThinkerRequest, accepts: Iterable[str], model_name: str, backend: str) -> None:
    """Raise :class:`UnsupportedInputError` for a part the model cannot read (audio the
    ears transcribed is read as its transcript)."""
    accepts = frozenset(accepts)
    for m in request.messages:
        if isinstance(m.content, str):
            continue
        for p in m.content:
            if p.kind in accepts or p.kind == "text":
                continue
            if isinstance(p, AudioPart) and p.transcript:
                continue
            raise UnsupportedInputError(
                f"{model_name} ({backend} backend) takes {', '.join(sorted(accepts))} "
                f"only and cannot read {p.kind} input. Use a Thinker that accepts {p.kind} "
                "(e.g. backend 'openai' against a multimodal server such as vLLM-Omni), "
                f"or send the turn without the {p.kind}.")
