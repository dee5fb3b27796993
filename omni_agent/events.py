"""Typed events: everything that moves between user, Thinker, tools, bus and Talker.

Every event carries the session id, the turn id and a monotonic timestamp (seconds,
``time.monotonic()``). Events are small slotted dataclasses so that moving one through
the bus costs a few hundred nanoseconds.

Example::

    TextDelta("Hello", session_id="s1", turn_id=3)
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from time import monotonic
from typing import Any, Literal, Union

__all__ = [
    "Event",
    "TextPart",
    "AudioPart",
    "ImagePart",
    "VideoPart",
    "Part",
    "UserTurn",
    "TextDelta",
    "ReasoningDelta",
    "ToolCall",
    "ToolResult",
    "Context",
    "Utterance",
    "AudioChunk",
    "Finish",
    "TurnEnd",
    "Interruption",
    "ErrorEvent",
    "event_to_dict",
]


# --------------------------------------------------------------------------- content parts


@dataclass(slots=True)
class TextPart:
    """Plain text in a user turn."""

    text: str
    kind: Literal["text"] = "text"


@dataclass(slots=True)
class _MediaPart:
    """Media given either as bytes (``data``) or as a local path or URL (``url``)."""

    data: bytes | None = None
    url: str | None = None
    mime: str | None = None

    @classmethod
    def from_file(cls, path: str | Path, mime: str | None = None):
        """Read a local file into a part; raises ``FileNotFoundError`` with the path."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"media file not found: {p}")
        return cls(data=p.read_bytes(), url=str(p), mime=mime)

    def as_base64(self) -> str:
        """The bytes base64-encoded (reads ``url`` if it is a local path)."""
        if self.data is None and self.url and not self.url.startswith(("http://", "https://", "data:")):
            self.data = Path(self.url).read_bytes()
        if self.data is None:
            raise ValueError("media part has no bytes")
        return base64.b64encode(self.data).decode("ascii")


@dataclass(slots=True)
class AudioPart(_MediaPart):
    """Audio in a user turn: encoded bytes (wav/flac/...) or decoded PCM via ``pcm``.

    ``pcm`` is int16 mono samples at ``sample_rate`` when the audio is already decoded.
    """

    pcm: bytes | None = None
    sample_rate: int | None = None
    transcript: str | None = None  # filled by the ears (ASR) when the Thinker cannot hear
    kind: Literal["audio"] = "audio"


@dataclass(slots=True)
class ImagePart(_MediaPart):
    """An image in a user turn."""

    kind: Literal["image"] = "image"


@dataclass(slots=True)
class VideoPart(_MediaPart):
    """A video in a user turn."""

    kind: Literal["video"] = "video"


Part = Union[TextPart, AudioPart, ImagePart, VideoPart]


# --------------------------------------------------------------------------- events


@dataclass(slots=True, kw_only=True)
class Event:
    """Base of every event: which session and turn it belongs to, and when it was made."""

    session_id: str = ""
    turn_id: int = 0
    ts: float = field(default_factory=monotonic)

    @property
    def type(self) -> str:
        return _TYPE_NAMES[type(self)]


@dataclass(slots=True)
class UserTurn(Event):
    """What the user said or sent: one or more parts (text, audio, image, video)."""

    parts: list[Part] = field(default_factory=list)

    @classmethod
    def of(cls, text: str | None = None, *parts: Part, **kw: Any) -> "UserTurn":
        """``UserTurn.of("hi")`` or ``UserTurn.of("what is this?", ImagePart.from_file(p))``."""
        ps: list[Part] = [TextPart(text)] if text else []
        ps.extend(parts)
        return cls(parts=ps, **kw)

    @property
    def text(self) -> str:
        """All text parts joined, plus transcripts of audio parts."""
        out = []
        for p in self.parts:
            if isinstance(p, TextPart):
                out.append(p.text)
            elif isinstance(p, AudioPart) and p.transcript:
                out.append(p.transcript)
        return " ".join(out)

    def modalities(self) -> set[str]:
        return {p.kind for p in self.parts}


@dataclass(slots=True)
class TextDelta(Event):
    """A piece of the Thinker's answer text as it streams (the display channel).

    ``logprobs``: when the request asked for them (``ThinkerRequest.logprobs``), one entry
    per token of this piece, OpenAI-shaped: ``{"token", "logprob", "bytes",
    "top_logprobs": [{"token", "logprob", "bytes"}, ...]}``; else None."""

    text: str = ""
    logprobs: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class ReasoningDelta(Event):
    """A piece of the Thinker's reasoning (``<think>``); never spoken, kept in the trace."""

    text: str = ""


@dataclass(slots=True)
class ToolCall(Event):
    """A complete call the Thinker asked for. ``arguments`` is the raw JSON text."""

    id: str = ""
    name: str = ""
    arguments: str = "{}"


@dataclass(slots=True)
class ToolResult(Event):
    """The outcome of a tool call, fed back to the Thinker. ``parts``: media the tool
    returned (images, audio) that the Thinker can take; ``content`` says what they are."""

    call_id: str = ""
    name: str = ""
    content: str = ""
    is_error: bool = False
    parts: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Context(Event):
    """Extra context for the Thinker (e.g. retrieved passages). ``untrusted`` marks data
    that must be treated as data, never as instructions."""

    text: str = ""
    source: str = ""
    untrusted: bool = True
    citations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Utterance(Event):
    """A clause on its way to the Talker.

    ``text`` is what will be spoken; ``display`` what is shown for the same clause (they
    differ when e.g. a URL is shown but not read aloud); ``original`` is what the Thinker
    wrote before any middleware touched it. ``index`` numbers the clauses of a turn.
    """

    text: str = ""
    display: str | None = None
    original: str | None = None
    index: int = 0
    lang: str | None = None
    fallback: bool = False  # True when this is a configured fallback line for a blocked clause
    added: bool = False  # said by a middleware (a filler, a sources line), not by the Thinker


@dataclass(slots=True)
class AudioChunk(Event):
    """A piece of synthesized speech: int16 little-endian mono PCM at ``sample_rate``."""

    pcm: bytes = b""
    sample_rate: int = 22050
    utterance_index: int = 0
    final: bool = False  # last chunk of its utterance

    @property
    def duration(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate if self.sample_rate else 0.0


@dataclass(slots=True)
class Finish(Event):
    """The last event of one Thinker generation: why it stopped, and the token counts.

    ``reason`` as OpenAI names it: "stop" (the model ended, or a stop string), "length"
    (cut by ``max_tokens`` or the context), "tool_calls". Backends that know nothing of it
    may leave it out. The agent takes it off the stream (middleware never see it) and
    keeps it on the round's :class:`~omni_agent.bus.RoundEnd`; a turn whose answer was cut
    by ``max_tokens`` ends with ``TurnEnd.reason == "max_tokens"``.
    """

    reason: str = "stop"
    prompt_tokens: int | None = None  # of the templated prompt
    completion_tokens: int | None = None


@dataclass(slots=True)
class TurnEnd(Event):
    """The turn is over. ``reason``: completed, interrupted, error, blocked, max_rounds,
    max_tokens (the answer was cut by the token limit)."""

    reason: str = "completed"
    text: str = ""  # full display text
    spoken: str = ""  # what was (or will be) spoken, clause by clause joined


@dataclass(slots=True)
class Interruption(Event):
    """The user barged in (or the caller cancelled): everything in the turn stops."""

    reason: str = "barge-in"


@dataclass(slots=True)
class ErrorEvent(Event):
    """Something failed; ``stage`` says where (thinker, middleware:<name>, tool, talker, ...).

    ``recoverable`` is True when the turn or session goes on.
    """

    message: str = ""
    stage: str = ""
    recoverable: bool = True


_TYPE_NAMES: dict[type, str] = {
    UserTurn: "user_turn",
    TextDelta: "text_delta",
    ReasoningDelta: "reasoning_delta",
    ToolCall: "tool_call",
    ToolResult: "tool_result",
    Context: "context",
    Utterance: "utterance",
    AudioChunk: "audio_chunk",
    Finish: "finish",
    TurnEnd: "turn_end",
    Interruption: "interruption",
    ErrorEvent: "error",
}


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"bytes": len(v)}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def event_to_dict(ev: Event) -> dict[str, Any]:
    """A JSON-safe dict of an event (audio bytes reported by length, not content)."""
    d: dict[str, Any] = {"type": _TYPE_NAMES.get(type(ev), type(ev).__name__)}
    for f in fields(ev):
        v = getattr(ev, f.name)
        if f.name == "parts":
            v = [{k: _jsonable(x) for k, x in asdict(p).items() if x is not None} for p in v]
        d[f.name] = _jsonable(v)
    return d
