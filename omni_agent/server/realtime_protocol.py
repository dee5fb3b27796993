"""The OpenAI Realtime event protocol, sans-IO: JSON text in, commands and JSON events out.

:class:`RealtimeProtocol` is the whole protocol of one Realtime connection with no socket
in it (like ``h11`` or ``wsproto``): :meth:`RealtimeProtocol.receive` takes one client
message (JSON text) and returns the server events to send at once plus the
:class:`Command`\\ s for the live session (feed audio, submit a turn, cancel, cut memory);
:meth:`RealtimeProtocol.translate` turns each message of a
:class:`~omni_agent.live.LiveSession` (VAD events, the agent's turn events, audio chunks)
into Realtime server events. The transport (``omni_agent.server.realtime``) only moves
bytes and applies the commands; the unit tests drive this class directly::

    proto = RealtimeProtocol(dialect="ga", model="omni")
    out = proto.receive('{"type": "input_audio_buffer.commit", "event_id": "e1"}')
    out.events[0]["error"]["code"]    # 'input_audio_buffer_commit_empty'

Two dialects, chosen per connection: ``"ga"`` (the current event names,
``response.output_audio.delta``, ``conversation.item.added``/``done``, the nested
``session.audio.input`` shape) and ``"beta"`` (what a client sending ``OpenAI-Beta:
realtime=v1`` expects: ``response.audio.delta``, ``conversation.item.created``, the flat
session shape). Clients may send either session shape in either dialect.

Audio: the client speaks pcm16 mono at 24 kHz (base64); it is resampled here with soxr's
streaming resampler to the live session's rate (the VAD's, 16 kHz). Reply audio (the
Talker's rate, 22.05 kHz for Piper) is resampled to 24 kHz. What a response carries is
only what passed the bus: the transcript is the approved utterance text (what is spoken),
never the Thinker's raw text.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..events import (
    AudioChunk,
    AudioPart,
    ErrorEvent,
    TextDelta,
    TextPart,
    ToolCall,
    ToolResult,
    TurnEnd,
    UserTurn,
    Utterance,
)
from ..live import LiveConfig
from .security import InvalidJSON, parse_json

__all__ = [
    "RealtimeProtocol",
    "RealtimeLimits",
    "Received",
    "Command",
    "Feed",
    "EndTurn",
    "DropSpeech",
    "Submit",
    "Cancel",
    "Truncate",
    "Configure",
    "Instruct",
    "REALTIME_RATE",
    "Dialect",
]

#: The Realtime API's PCM rate, both ways.
REALTIME_RATE = 24000

Dialect = Literal["ga", "beta"]

# Where the beta names differ from the GA ones (server events).
_BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class RealtimeLimits(BaseModel):
    """What one Realtime connection may send.

    * ``max_message_bytes`` — largest client message (a JSON text frame).
    * ``max_buffer_seconds`` — most audio held in the input buffer before a commit (with
      turn detection off); with server VAD the live session's ``max_turn_seconds`` bounds
      a turn instead.
    * ``max_text_chars`` — longest user text item or instructions.
    * ``max_pending_items`` — user items created but not yet answered by a response.
    * ``delta_ms`` — most reply audio in one ``output_audio.delta`` event.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_message_bytes: int = Field(1 << 20, ge=1024)
    max_buffer_seconds: float = Field(300.0, gt=0, le=2400)
    max_text_chars: int = Field(20_000, ge=1)
    max_pending_items: int = Field(32, ge=1)
    delta_ms: int = Field(200, ge=20, le=5000)


# --------------------------------------------------------------------------- commands


@dataclass(slots=True)
class Feed:
    """Microphone audio for the live session's VAD: int16 PCM at the live session's rate."""

    pcm: bytes


@dataclass(slots=True)
class EndTurn:
    """End the user's speech now (``input_audio_buffer.commit`` with server VAD). When the
    live session had no speech, answer with :meth:`RealtimeProtocol.commit_failed`."""

    event_id: str | None


@dataclass(slots=True)
class DropSpeech:
    """Forget the speech collected so far (``input_audio_buffer.clear`` with server VAD)."""


@dataclass(slots=True)
class Submit:
    """Run this user turn (``response.create``)."""

    turn: UserTurn


@dataclass(slots=True)
class Cancel:
    """Stop the running response (``response.cancel``); then tell the protocol with
    :meth:`RealtimeProtocol.barge_in`."""

    event_id: str | None


@dataclass(slots=True)
class Truncate:
    """The client played only ``played_ms`` of turn ``turn_id``'s reply: cut memory."""

    turn_id: int
    played_ms: float


@dataclass(slots=True)
class Instruct:
    """Use ``text`` as the session's system prompt (empty: the agent's own)."""

    text: str


@dataclass(slots=True)
class Configure:
    """Apply these :class:`~omni_agent.live.LiveConfig` values to the live session."""

    changes: dict[str, Any]


Command = Union[Feed, EndTurn, DropSpeech, Submit, Cancel, Truncate, Configure, Instruct]


@dataclass(slots=True)
class Received:
    """What one client message produced: events to send now, commands to apply (in order)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)


class _Refusal(Exception):
    def __init__(self, code: str, message: str, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.code, self.message, self.param, self.kind = code, message, param, kind


# --------------------------------------------------------------------------- client events

_Loose = ConfigDict(extra="ignore")
_Strict = ConfigDict(extra="forbid")


class AudioFormatIn(BaseModel):
    """GA ``{"type": "audio/pcm", "rate": 24000}``."""

    model_config = _Loose
    type: str | None = None
    rate: int | None = None


class TurnDetectionIn(BaseModel):
    """``server_vad`` (silence ends the turn) or ``semantic_vad`` (the live session's
    semantic end of turn: a complete sentence ends it sooner, an unfinished one waits)."""

    model_config = _Loose
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = Field(None, gt=0, lt=1)
    prefix_padding_ms: int | None = Field(None, ge=0, le=60_000)
    silence_duration_ms: int | None = Field(None, ge=0, le=60_000)
    create_response: bool | None = None
    interrupt_response: bool | None = None


class AudioInputIn(BaseModel):
    model_config = _Strict
    format: AudioFormatIn | None = None
    turn_detection: TurnDetectionIn | None = None
    transcription: Any = None
    noise_reduction: Any = None


class AudioOutputIn(BaseModel):
    model_config = _Strict
    format: AudioFormatIn | None = None
    voice: str | None = Field(None, max_length=64)
    speed: float | None = None


class AudioIn(BaseModel):
    model_config = _Strict
    input: AudioInputIn | None = None
    output: AudioOutputIn | None = None


class SessionIn(BaseModel):
    """``session.update``'s session, GA (nested ``audio``) or beta (flat) shape. Fields a
    voice app sends but this server does not apply are accepted and listed in
    docs/api-realtime.md; an unknown field is refused."""

    model_config = _Strict
    type: str | None = None
    model: str | None = Field(None, max_length=128)
    instructions: str | None = None
    voice: str | None = Field(None, max_length=64)
    output_modalities: list[Literal["text", "audio"]] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioIn | None = None
    input_audio_format: str | AudioFormatIn | None = None
    output_audio_format: str | AudioFormatIn | None = None
    turn_detection: TurnDetectionIn | None = None
    tools: list[Any] | None = None
    # accepted, not applied
    tool_choice: Any = None
    temperature: float | None = None
    max_response_output_tokens: Any = None
    max_output_tokens: Any = None
    input_audio_transcription: Any = None
    input_audio_noise_reduction: Any = None
    tracing: Any = None
    include: Any = None
    truncation: Any = None
    prompt: Any = None
    speed: float | None = None
    id: Any = None
    object: Any = None
    expires_at: Any = None
    client_secret: Any = None


class ContentIn(BaseModel):
    model_config = _Loose
    type: str
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None


class ItemIn(BaseModel):
    model_config = _Loose
    id: str | None = Field(None, max_length=64)
    type: str = "message"
    role: str | None = None
    content: list[ContentIn] = Field(default_factory=list, max_length=16)


class ResponseIn(BaseModel):
    model_config = _Loose
    output_modalities: list[Literal["text", "audio"]] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    conversation: str | None = None
    input: list[Any] | None = None
    instructions: str | None = None


class _Event(BaseModel):
    model_config = _Loose
    type: str
    event_id: str | None = Field(None, max_length=128)


class SessionUpdateIn(_Event):
    session: SessionIn


class AppendIn(_Event):
    audio: str


class ItemCreateIn(_Event):
    item: ItemIn
    previous_item_id: str | None = None


class ResponseCreateIn(_Event):
    response: ResponseIn | None = None


class ResponseCancelIn(_Event):
    response_id: str | None = None


class TruncateIn(_Event):
    item_id: str = Field(max_length=64)
    content_index: int = Field(0, ge=0)
    audio_end_ms: int = Field(ge=0)


_EVENTS: dict[str, type[_Event]] = {
    "session.update": SessionUpdateIn,
    "input_audio_buffer.append": AppendIn,
    "input_audio_buffer.commit": _Event,
    "input_audio_buffer.clear": _Event,
    "conversation.item.create": ItemCreateIn,
    "response.create": ResponseCreateIn,
    "response.cancel": ResponseCancelIn,
    "conversation.item.truncate": TruncateIn,
}
_NOT_SUPPORTED = {
    "conversation.item.delete": "items cannot be deleted from the agent's memory here",
    "conversation.item.retrieve": "items cannot be retrieved here",
    "output_audio_buffer.clear": "it is for WebRTC and SIP; over a WebSocket stop playback "
                                 "yourself and send conversation.item.truncate",
    "transcription_session.update": "transcription-only sessions are not offered",
    "session.close": "close the WebSocket instead",
}


# --------------------------------------------------------------------------- server objects


class ErrorOut(BaseModel):
    """The ``error`` object of an ``error`` event."""

    type: str
    code: str
    message: str
    param: str | None = None
    event_id: str | None = None


class TurnDetectionOut(BaseModel):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool = True
    interrupt_response: bool


#: What a response is made of.
Modality = Literal["text", "audio"]


class SessionState(BaseModel):
    """This connection's session, as the server applies it."""

    id: str = Field(default_factory=lambda: _id("sess"))
    model: str = "omni-agent"
    instructions: str = ""
    voice: str = "default"
    output_modalities: list[Modality] = ["audio"]  # pydantic copies a mutable default per instance
    turn_detection: TurnDetectionOut | None = None

    def ga(self) -> dict[str, Any]:
        fmt = {"type": "audio/pcm", "rate": REALTIME_RATE}
        td = self.turn_detection.model_dump() if self.turn_detection is not None else None
        return {"type": "realtime", "object": "realtime.session", "id": self.id, "model": self.model,
                "output_modalities": list(self.output_modalities), "instructions": self.instructions,
                "audio": {"input": {"format": fmt, "turn_detection": td, "transcription": None,
                                    "noise_reduction": None},
                          "output": {"format": fmt, "voice": self.voice, "speed": 1.0}},
                "tools": [], "tool_choice": "auto", "max_output_tokens": "inf"}

    def beta(self) -> dict[str, Any]:
        td = self.turn_detection.model_dump() if self.turn_detection is not None else None
        mods = ["text", "audio"] if "audio" in self.output_modalities else ["text"]
        return {"object": "realtime.session", "id": self.id, "model": self.model, "modalities": mods,
                "instructions": self.instructions, "voice": self.voice,
                "input_audio_format": "pcm16", "output_audio_format": "pcm16",
                "input_audio_transcription": None, "turn_detection": td, "tools": [],
                "tool_choice": "auto", "temperature": 0.8, "max_response_output_tokens": "inf"}


class _Item:
    """One conversation item this connection told the client about."""

    __slots__ = ("id", "kind", "role", "status", "text", "audio", "audio_ms", "turn_id",
                 "call_id", "name", "arguments", "output", "audio_part")

    def __init__(self, kind: str, role: str | None = None):
        self.id = _id("item")
        self.kind = kind  # message | function_call | function_call_output
        self.role = role
        self.status = "in_progress"
        self.text: list[str] = []  # transcript (audio) or text pieces
        self.audio = False  # an audio item (else text)
        self.audio_ms = 0.0
        self.turn_id = 0
        self.call_id = ""
        self.name = ""
        self.arguments = ""
        self.output = ""
        self.audio_part: bool | None = None  # user message: True when its content is audio


class _Response:
    __slots__ = ("id", "status", "reason", "modalities", "output", "current", "turn_id", "started",
                 "cancelling", "user_items", "user_parts", "resampler", "in_rate", "error", "vad")

    def __init__(self, modalities: list[Modality], vad: bool):
        self.id = _id("resp")
        self.status = "in_progress"
        self.reason: str | None = None
        self.modalities = modalities
        self.output: list[_Item] = []
        self.current: _Item | None = None  # the assistant message being spoken
        self.turn_id: int | None = None
        self.started = False  # the agent's turn began (its UserTurn came)
        self.cancelling = False
        self.user_items: list[_Item] = []
        self.user_parts: list[tuple[_Item, Any]] = []
        self.resampler: Any = None
        self.in_rate = 0
        self.error: dict[str, Any] | None = None
        self.vad = vad


# --------------------------------------------------------------------------- the protocol


class RealtimeProtocol:
    """One Realtime connection's protocol state (see the module docstring).

    ``dialect`` — ``"ga"`` or ``"beta"`` event names and session shape. ``model`` — the
    name the client connected with (echoed). ``live`` — the live session's starting
    config (its VAD timing becomes the session's ``turn_detection``). ``input_rate`` —
    the rate the live session takes (the VAD's). ``has_talker`` — False for a text agent
    (then responses are text). ``turn_detection`` — start with server VAD on (as the
    Realtime API does).
    """

    def __init__(self, *, dialect: Dialect = "ga", model: str = "omni-agent",
                 limits: RealtimeLimits | None = None, live: LiveConfig | None = None,
                 input_rate: int = 16000, has_talker: bool = True, turn_detection: bool = True):
        if dialect not in ("ga", "beta"):
            raise ValueError("dialect must be 'ga' or 'beta'")
        self.dialect = dialect
        self.limits = limits or RealtimeLimits()
        self.live = live or LiveConfig()
        self.input_rate = input_rate
        self.has_talker = has_talker
        self.session = SessionState(model=model or "omni-agent",
                                    output_modalities=["audio"] if has_talker else ["text"])
        if turn_detection:
            self.session.turn_detection = self._vad_out(self.live)
        self._in_resampler: Any = None
        self._buffer: list[bytes] = []  # committed-by-hand input, at input_rate
        self._buffer_bytes = 0
        self._pending: list[tuple[_Item, Any]] = []  # user items not yet answered
        self._response: _Response | None = None
        self._speech_item: _Item | None = None  # the user item VAD speech will become
        self._input_ms = 0.0  # audio received so far (for audio_start_ms / audio_end_ms)
        self._last_item_id: str | None = None
        self._items: OrderedDict[str, _Item] = OrderedDict()  # assistant items, for truncate
        self._orphans: set[int] = set()  # turns cancelled before their response began

    # ------------------------------------------------------------------ helpers

    @property
    def vad(self) -> bool:
        """True while server turn detection is on."""
        return self.session.turn_detection is not None

    @property
    def response_active(self) -> bool:
        return self._response is not None

    def event(self, type_: str, **fields: Any) -> dict[str, Any]:
        """A server event named for this connection's dialect."""
        if self.dialect == "beta":
            type_ = _BETA_NAMES.get(type_, type_)
        return {"type": type_, "event_id": _id("event"), **fields}

    def error(self, code: str, message: str, *, event_id: str | None = None, param: str | None = None,
              kind: str = "invalid_request_error") -> dict[str, Any]:
        """An ``error`` event in the Realtime shape, naming the client event it answers."""
        err = ErrorOut(type=kind, code=code, message=message, param=param, event_id=event_id)
        return self.event("error", error=err.model_dump())

    def session_created(self) -> dict[str, Any]:
        """The first event of the connection."""
        return self.event("session.created", session=self._session_obj())

    def _session_obj(self) -> dict[str, Any]:
        return self.session.ga() if self.dialect == "ga" else self.session.beta()

    @staticmethod
    def _vad_out(cfg: LiveConfig) -> TurnDetectionOut:
        return TurnDetectionOut(type="semantic_vad" if cfg.semantic_turn else "server_vad",
                                threshold=cfg.threshold, prefix_padding_ms=cfg.pre_roll_ms,
                                silence_duration_ms=cfg.end_silence_ms, interrupt_response=cfg.barge_in)

    def _item_obj(self, item: _Item) -> dict[str, Any]:
        base = {"id": item.id, "object": "realtime.item", "type": item.kind, "status": item.status}
        if item.kind == "function_call":
            return {**base, "call_id": item.call_id, "name": item.name, "arguments": item.arguments}
        if item.kind == "function_call_output":
            return {**base, "call_id": item.call_id, "output": item.output}
        if item.role == "user":
            if item.audio_part:
                content = [{"type": "input_audio",
                            "transcript": " ".join(item.text) if item.text else None}]
            else:
                content = [{"type": "input_text", "text": " ".join(item.text)}]
            return {**base, "role": "user", "content": content}
        ga = self.dialect == "ga"
        if item.audio:
            part = {"type": "output_audio" if ga else "audio", "transcript": " ".join(item.text)}
        else:
            part = {"type": "output_text" if ga else "text", "text": " ".join(item.text)}
        return {**base, "role": "assistant", "content": [part]}

    def _item_added(self, item: _Item, *, done: bool) -> list[dict[str, Any]]:
        """The events that put an item in the conversation: GA ``added`` (+ ``done`` when the
        item is complete already), beta ``created``."""
        prev, self._last_item_id = self._last_item_id, item.id
        obj = self._item_obj(item)
        if self.dialect == "beta":
            return [self.event("conversation.item.created", previous_item_id=prev, item=obj)]
        out = [self.event("conversation.item.added", previous_item_id=prev, item=obj)]
        if done:
            out.append(self.event("conversation.item.done", previous_item_id=prev, item=obj))
        return out

    def _response_obj(self, r: _Response) -> dict[str, Any]:
        details: dict[str, Any] | None = None
        if r.status != "completed" and r.status != "in_progress":
            details = {"type": r.status, "reason": r.reason}
            if r.error is not None:
                details["error"] = r.error
        obj: dict[str, Any] = {"object": "realtime.response", "id": r.id, "status": r.status,
                               "status_details": details,
                               "output": [self._item_obj(i) for i in r.output],
                               "conversation_id": None, "usage": None, "metadata": None}
        if self.dialect == "ga":
            obj["output_modalities"] = list(r.modalities)
            obj["audio"] = {"output": {"format": {"type": "audio/pcm", "rate": REALTIME_RATE},
                                       "voice": self.session.voice}}
            obj["max_output_tokens"] = "inf"
        else:
            obj["modalities"] = ["text", "audio"] if "audio" in r.modalities else ["text"]
            obj["voice"] = self.session.voice
            obj["output_audio_format"] = "pcm16"
        return obj

    # ------------------------------------------------------------------ client -> server

    def receive(self, text: str | bytes) -> Received:
        """One client message. Never raises for bad input: a refusal is an ``error`` event
        (with the client's ``event_id``) and the session goes on."""
        event_id = None
        try:
            if isinstance(text, bytes):
                raise _Refusal("unsupported_message", "binary frames are not part of the "
                               "Realtime protocol: send JSON events as text frames (audio "
                               "goes base64 in input_audio_buffer.append)")
            if len(text) > self.limits.max_message_bytes:
                raise _Refusal("message_too_large", f"the message is {len(text)} characters; at most "
                               f"{self.limits.max_message_bytes} are accepted: send audio in "
                               "smaller input_audio_buffer.append events (20-500 ms each)")
            try:
                raw = parse_json(text, max_depth=32)
            except InvalidJSON as e:
                raise _Refusal("invalid_json", str(e).replace("request body", "message")) from None
            if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
                raise _Refusal("invalid_event", 'an event is a JSON object with a "type" field, '
                               'like {"type": "response.create"}', param="type")
            if isinstance(raw.get("event_id"), str):
                event_id = raw["event_id"][:128]
            kind = raw["type"]
            if kind in _NOT_SUPPORTED:
                raise _Refusal("unsupported_event", f"{kind} is not supported by this server: "
                               f"{_NOT_SUPPORTED[kind]} (see docs/api-realtime.md)", param="type")
            model = _EVENTS.get(kind)
            if model is None:
                raise _Refusal("invalid_event_type", f"unknown event type {kind[:64]!r}: this server "
                               f"takes {', '.join(sorted(_EVENTS))}", param="type")
            try:
                ev = model.model_validate(raw)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise _Refusal("invalid_value", f"{kind}: {where}: {first['msg']}",
                               param=where) from None
            return getattr(self, "_on_" + kind.replace(".", "_"))(ev)
        except _Refusal as r:
            return Received(events=[self.error(r.code, r.message, event_id=event_id, param=r.param,
                                               kind=r.kind)])

    def _on_session_update(self, ev: SessionUpdateIn) -> Received:
        s = ev.session
        new = self.session.model_copy(deep=True)
        if s.instructions is not None:
            if len(s.instructions) > self.limits.max_text_chars:
                raise _Refusal("invalid_value", f"instructions are over {self.limits.max_text_chars} "
                               "characters", param="session.instructions")
            new.instructions = s.instructions
        if s.model is not None:
            new.model = s.model
        voice = s.voice if s.voice is not None else (s.audio.output.voice if s.audio and s.audio.output else None)
        if voice is not None:
            new.voice = voice
        if s.tools:
            raise _Refusal("unsupported_tools", "this agent's tools are registered on the server and "
                           "run there (their calls are reported as function_call items); client-side "
                           "tools are not supported: send tools=[]", param="session.tools")
        mods = s.output_modalities if s.output_modalities is not None else s.modalities
        if mods is not None:
            want: list[Modality] = ["audio"] if "audio" in mods else ["text"]
            if want == ["audio"] and not self.has_talker:
                raise _Refusal("invalid_value", "this agent has no Talker: it can only answer in text",
                               param="session.output_modalities")
            new.output_modalities = want
        self._check_formats(s)
        commands: list[Command] = []
        td_given, td = self._asked_turn_detection(s)
        if td_given:
            new.turn_detection = self._update_turn_detection(td, commands)
        if s.instructions is not None:
            commands.append(Instruct(s.instructions))
        was_vad = self.vad
        self.session = new
        if was_vad and not self.vad:
            commands.append(DropSpeech())  # speech half-heard by the VAD becomes nothing
            self._speech_item = None
        if not was_vad and self.vad:
            self._clear_buffer()
        return Received(events=[self.event("session.updated", session=self._session_obj())],
                        commands=commands)

    @staticmethod
    def _check_formats(s: SessionIn) -> None:
        # Formats: only pcm16 at 24 kHz, both ways.
        checks = [("session.input_audio_format", s.input_audio_format),
                  ("session.output_audio_format", s.output_audio_format)]
        if s.audio is not None:
            checks += [("session.audio.input.format", s.audio.input.format if s.audio.input else None),
                       ("session.audio.output.format", s.audio.output.format if s.audio.output else None)]
        for param, fmt in checks:
            _check_format(param, fmt)

    @staticmethod
    def _asked_turn_detection(s: SessionIn) -> tuple[bool, TurnDetectionIn | None]:
        """Whether the update sets turn detection, and to what (None: off).

        GA puts it in audio.input.turn_detection, beta in turn_detection; GA wins when both are sent.
        """
        td_given, td = False, None
        if "turn_detection" in s.model_fields_set:
            td_given, td = True, s.turn_detection
        if s.audio is not None and s.audio.input is not None and "turn_detection" in s.audio.input.model_fields_set:
            td_given, td = True, s.audio.input.turn_detection
        return td_given, td

    def _update_turn_detection(self, td: TurnDetectionIn | None, commands: list[Command]) -> TurnDetectionOut | None:
        """Apply the client's turn detection (None: off) to the live config; the session's new value.

        A change of VAD timing also goes to the live loop, as a ``Configure`` in ``commands``.
        """
        if td is None:
            return None
        if td.create_response is False:
            raise _Refusal("unsupported_value", "create_response=false is not supported: with "
                           "server VAD every user turn is answered; turn detection off "
                           "(turn_detection: null) lets you commit and respond yourself",
                           param="session.audio.input.turn_detection.create_response")
        changes: dict[str, Any] = {}
        if "type" in td.model_fields_set or td.type == "semantic_vad":
            semantic = td.type == "semantic_vad"
            if semantic != self.live.semantic_turn:
                changes["semantic_turn"] = semantic
        if td.threshold is not None:
            changes["threshold"] = td.threshold
        if td.prefix_padding_ms is not None:
            changes["pre_roll_ms"] = td.prefix_padding_ms
        if td.silence_duration_ms is not None:
            changes["end_silence_ms"] = td.silence_duration_ms
        if td.interrupt_response is not None:
            changes["barge_in"] = td.interrupt_response
        try:
            cfg = self.live.replace(**changes).check()
        except Exception as e:  # noqa: BLE001 - ConfigError: a clear message
            raise _Refusal("invalid_value", str(e), param="session.turn_detection") from None
        self.live = cfg
        if changes:
            commands.append(Configure(changes))
        return self._vad_out(cfg)

    def _on_input_audio_buffer_append(self, ev: AppendIn) -> Received:
        try:
            pcm = base64.b64decode(ev.audio, validate=True)
        except (binascii.Error, ValueError):
            raise _Refusal("invalid_value", "audio is not valid base64", param="audio") from None
        if len(pcm) % 2:
            raise _Refusal("invalid_value", f"audio must be pcm16 (an even number of bytes), got "
                           f"{len(pcm)} bytes", param="audio")
        if not pcm:
            return Received()
        self._input_ms += len(pcm) / 2 / REALTIME_RATE * 1000
        if not self.vad:
            limit = int(self.limits.max_buffer_seconds * self.input_rate) * 2
            if self._buffer_bytes + len(pcm) * self.input_rate // REALTIME_RATE > limit:
                raise _Refusal("input_audio_buffer_full", f"the input audio buffer holds "
                               f"{self.limits.max_buffer_seconds:g} s at most: commit it "
                               "(input_audio_buffer.commit) or clear it first", param="audio")
        out = self._resample_in(pcm)
        if self.vad:
            return Received(commands=[Feed(out)]) if out else Received()
        if out:
            self._buffer.append(out)
            self._buffer_bytes += len(out)
        return Received()

    def _resample_in(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2")
        if self.input_rate == REALTIME_RATE:
            return pcm
        if self._in_resampler is None:
            import soxr

            self._in_resampler = soxr.ResampleStream(REALTIME_RATE, self.input_rate, 1, dtype="int16")
        return self._in_resampler.resample_chunk(samples).astype("<i2").tobytes()

    def _clear_buffer(self) -> None:
        self._buffer, self._buffer_bytes = [], 0

    def _on_input_audio_buffer_commit(self, ev: _Event) -> Received:
        if self.vad:
            return Received(commands=[EndTurn(ev.event_id)])
        ms = self._buffer_bytes / 2 / self.input_rate * 1000
        if ms < 100:
            raise _Refusal("input_audio_buffer_commit_empty", "Error committing input audio buffer: "
                           f"buffer too small. Expected at least 100ms of audio, but buffer only has "
                           f"{ms:.2f}ms of audio.")
        self._check_room()
        pcm = b"".join(self._buffer)
        self._clear_buffer()
        item = _Item("message", "user")
        item.audio_part, item.status = True, "completed"
        part = AudioPart(pcm=pcm, sample_rate=self.input_rate, mime="audio/L16")
        self._pending.append((item, part))
        prev = self._last_item_id
        events = [self.event("input_audio_buffer.committed", previous_item_id=prev, item_id=item.id)]
        events += self._item_added(item, done=True)
        return Received(events=events)

    def commit_failed(self, event_id: str | None) -> dict[str, Any]:
        """The answer to a commit the live session had no speech for."""
        return self.error("input_audio_buffer_commit_empty", "Error committing input audio buffer: "
                          "no speech is being heard (server VAD commits each turn by itself when "
                          "the user stops speaking)", event_id=event_id)

    def _on_input_audio_buffer_clear(self, ev: _Event) -> Received:
        self._clear_buffer()
        commands: list[Command] = [DropSpeech()] if self.vad else []
        self._speech_item = None
        return Received(events=[self.event("input_audio_buffer.cleared")], commands=commands)

    def _check_room(self) -> None:
        if len(self._pending) >= self.limits.max_pending_items:
            raise _Refusal("too_many_items", f"{len(self._pending)} user items are waiting for a "
                           "response: send response.create first")

    def _on_conversation_item_create(self, ev: ItemCreateIn) -> Received:
        it = ev.item
        if it.type != "message":
            raise _Refusal("unsupported_item", f"items of type {it.type[:40]!r} are not supported: "
                           "tools run on the agent server, so a function_call_output is never "
                           "needed; create user messages (input_text or input_audio)", param="item.type")
        if it.role != "user":
            raise _Refusal("unsupported_item", f"only user messages can be created, not "
                           f"{str(it.role)[:20]!r} ones (the agent's memory holds what it said)",
                           param="item.role")
        if not it.content:
            raise _Refusal("invalid_value", "the item has no content", param="item.content")
        self._check_room()
        texts, audio = [], []
        for c in it.content:
            if c.type in ("input_text", "text"):
                if not c.text or not c.text.strip():
                    raise _Refusal("invalid_value", "input_text needs a non-empty text",
                                   param="item.content.text")
                texts.append(c.text)
            elif c.type == "input_audio":
                if not c.audio:
                    raise _Refusal("invalid_value", "input_audio needs audio (base64 pcm16 24 kHz)",
                                   param="item.content.audio")
                try:
                    pcm = base64.b64decode(c.audio, validate=True)
                except (binascii.Error, ValueError):
                    raise _Refusal("invalid_value", "audio is not valid base64",
                                   param="item.content.audio") from None
                if len(pcm) % 2 or len(pcm) / 2 / REALTIME_RATE > self.limits.max_buffer_seconds:
                    raise _Refusal("invalid_value", "audio must be pcm16 and at most "
                                   f"{self.limits.max_buffer_seconds:g} s", param="item.content.audio")
                import soxr

                x = np.frombuffer(pcm, dtype="<i2")
                if self.input_rate != REALTIME_RATE:
                    x = soxr.resample(x, REALTIME_RATE, self.input_rate)
                audio.append(AudioPart(pcm=np.asarray(x, dtype="<i2").tobytes(),
                                       sample_rate=self.input_rate, mime="audio/L16"))
            else:
                raise _Refusal("unsupported_content", f"content of type {c.type[:40]!r} is not "
                               "supported: use input_text or input_audio", param="item.content.type")
        text = "\n".join(texts)
        if len(text) > self.limits.max_text_chars:
            raise _Refusal("invalid_value", f"the text is over {self.limits.max_text_chars} characters",
                           param="item.content.text")
        _check_text(text)
        if texts and audio:
            raise _Refusal("unsupported_content", "an item is text or audio, not both: create two items")
        item = _Item("message", "user")
        if it.id:
            item.id = it.id
        item.status = "completed"
        if audio:
            item.audio_part = True
            parts: Any = audio
        else:
            item.audio_part = False
            item.text = [text]
            parts = [TextPart(text)]
        for p in parts:
            self._pending.append((item, p))
        return Received(events=self._item_added(item, done=True))

    def _on_response_create(self, ev: ResponseCreateIn) -> Received:
        if self._response is not None:
            raise _Refusal("conversation_already_has_active_response", "Conversation already has an "
                           f"active response in progress: {self._response.id}. Wait until the "
                           "response is finished before creating a new one.")
        r = ev.response
        modalities: list[Modality] = list(self.session.output_modalities)
        if r is not None:
            if r.conversation == "none" or r.input is not None:
                raise _Refusal("unsupported_value", "out-of-band responses (conversation: none, "
                               "input) are not supported: every response answers the conversation",
                               param="response.conversation")
            mods = r.output_modalities if r.output_modalities is not None else r.modalities
            if mods is not None:
                modalities = ["audio"] if "audio" in mods and self.has_talker else ["text"]
        if not self._pending:
            raise _Refusal("no_new_input", "there is nothing new to respond to: add a user item "
                           "first (conversation.item.create, or commit the input audio buffer); "
                           "a response without new user input is not supported")
        parts = [p for _, p in self._pending]
        resp = self._response = _Response(modalities, vad=False)
        resp.user_items = list(dict.fromkeys(i for i, _ in self._pending))
        resp.user_parts = self._pending
        self._pending = []
        events = [self.event("response.created", response=self._response_obj(resp))]
        return Received(events=events, commands=[Submit(UserTurn(parts=parts))])

    def _on_response_cancel(self, ev: ResponseCancelIn) -> Received:
        r = self._response
        if r is None or (ev.response_id and ev.response_id != r.id):
            raise _Refusal("response_cancel_not_active", "Cancellation failed: no active response "
                           "found" + (f" with id {ev.response_id[:40]!r}" if ev.response_id else ""))
        r.cancelling = True
        r.reason = "client_cancelled"
        return Received(commands=[Cancel(ev.event_id)])

    def _on_conversation_item_truncate(self, ev: TruncateIn) -> Received:
        item = self._items.get(ev.item_id)
        if item is None:
            raise _Refusal("item_truncate_invalid_item_id", f"no assistant audio item "
                           f"{ev.item_id[:40]!r} (only this connection's recent replies can be "
                           "truncated)", param="item_id")
        if ev.content_index != 0:
            raise _Refusal("invalid_value", "content_index must be 0 (a reply has one audio part)",
                           param="content_index")
        if ev.audio_end_ms > item.audio_ms + 50:
            raise _Refusal("invalid_value", f"audio_end_ms {ev.audio_end_ms} is past the end of the "
                           f"item's audio ({item.audio_ms:.0f} ms)", param="audio_end_ms")
        events = [self.event("conversation.item.truncated", item_id=item.id, content_index=0,
                             audio_end_ms=ev.audio_end_ms)]
        return Received(events=events, commands=[Truncate(item.turn_id, float(ev.audio_end_ms))])

    # ------------------------------------------------------------------ cancellation

    def barge_in(self, reason: str, orphan_turn_id: int | None) -> list[dict[str, Any]]:
        """The live session stopped the agent (``reason``: ``client_cancelled`` after a
        ``response.cancel``, ``turn_detected`` after the VAD heard the user). A response whose
        agent turn had not begun yet ends here (its turn, ``orphan_turn_id`` when the agent
        had started it, is then ignored); one under way ends at its TurnEnd."""
        r = self._response
        if r is None:
            return []
        r.cancelling = True
        r.reason = r.reason or reason
        if r.started:
            return []
        if orphan_turn_id is not None:
            self._orphans.add(orphan_turn_id)
        return self._finish(r, "cancelled")

    # ------------------------------------------------------------------ live session -> client

    def translate(self, msg: Any) -> list[dict[str, Any]]:
        """Realtime events for one live-session message (an event or a control dict)."""
        t = type(msg)
        if t is dict:
            return self._control(msg)
        turn_id = getattr(msg, "turn_id", None)
        if turn_id in self._orphans:
            if t is TurnEnd:
                self._orphans.discard(turn_id)
            return []
        if t is AudioChunk:
            return self._audio(msg)
        if t is Utterance:
            return self._utterance(msg)
        if t is UserTurn:
            return self._user_turn(msg)
        if t is TurnEnd:
            return self._turn_end(msg)
        if t is ToolCall:
            return self._tool_call(msg)
        if t is ToolResult:
            return self._tool_result(msg)
        if t is TextDelta and not self.has_talker:
            return self._text_delta(msg.text)
        if t is ErrorEvent:
            return self._error_event(msg)
        return []  # text deltas (raw, unapproved), reasoning, contexts: never sent

    def _control(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        kind = msg.get("type")
        if kind == "realtime":  # events queued by the transport, in order with the rest
            return list(msg["events"])
        if kind == "speech_started":
            if not self.vad:
                return []
            # Positions in the input audio, estimated from what had arrived by now (the VAD
            # speaks up min_speech_ms after the onset, and end_silence_ms after the end).
            started = self._speech_item = _Item("message", "user")
            started.audio_ms = max(0.0, self._input_ms - self.live.min_speech_ms)
            return [self.event("input_audio_buffer.speech_started", audio_start_ms=int(started.audio_ms),
                               item_id=started.id)]
        if kind == "speech_stopped":
            item = self._speech_item
            if item is None or not self.vad:
                return []
            if msg.get("ignored"):
                self._speech_item = None
            end = max(item.audio_ms, self._input_ms - self.live.end_silence_ms)
            return [self.event("input_audio_buffer.speech_stopped", audio_end_ms=int(end),
                               item_id=item.id)]
        if kind == "no_speech":
            self._speech_item = None
            r = self._response
            if r is not None and not r.started:
                r.error = {"type": "invalid_request_error", "code": "no_speech",
                           "message": "no speech was heard in the committed audio"}
                r.reason = None
                return self._finish(r, "failed")
            return []
        if kind == "interruption":
            r = self._response
            if r is not None:
                r.cancelling = True
                r.reason = r.reason or ("client_cancelled" if msg.get("reason") == "client"
                                        else "turn_detected")
            return []
        if kind == "error":
            return [self.error(str(msg.get("code", "server_error")), str(msg.get("message", "")))]
        return []  # stop_playback, latency, trace, memory_revised: not part of Realtime

    def _user_turn(self, ev: UserTurn) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        r = self._response
        if r is None:
            # A turn the server's VAD committed: its user item, then its response.
            item = self._speech_item or _Item("message", "user")
            self._speech_item = None
            item.audio_part, item.status = True, "completed"
            if ev.text:
                item.text = [ev.text]
            prev = self._last_item_id
            out.append(self.event("input_audio_buffer.committed", previous_item_id=prev, item_id=item.id))
            out += self._item_added(item, done=True)
            r = self._response = _Response(list(self.session.output_modalities), vad=True)
            r.user_items = [item]
            out.append(self._transcribed(item, ev.text))
            out.append(self.event("response.created", response=self._response_obj(r)))
        else:
            # The ears wrote each transcript into the very parts this response submitted.
            heard: dict[str, list[str]] = {}
            for item, part in r.user_parts:
                if isinstance(part, AudioPart):
                    heard.setdefault(item.id, []).append(part.transcript or "")
            for item in r.user_items:
                if item.id in heard:
                    item.text = [t for t in heard[item.id] if t]
                    out.append(self._transcribed(item, " ".join(item.text)))
        r.started = True
        r.turn_id = ev.turn_id
        return out

    def _transcribed(self, item: _Item, text: str) -> dict[str, Any]:
        return self.event("conversation.item.input_audio_transcription.completed", item_id=item.id,
                          content_index=0, transcript=text)

    def _open_message(self, r: _Response) -> tuple[_Item, list[dict[str, Any]]]:
        if r.current is not None:
            return r.current, []
        item = _Item("message", "assistant")
        item.audio = "audio" in r.modalities
        item.turn_id = r.turn_id or 0
        r.current = item
        r.output.append(item)
        if item.audio:
            self._items[item.id] = item
            while len(self._items) > 64:
                self._items.popitem(last=False)
        idx = len(r.output) - 1
        part = {"type": "audio", "transcript": ""} if item.audio else {"type": "text", "text": ""}
        out = [self.event("response.output_item.added", response_id=r.id, output_index=idx,
                          item=self._item_obj(item))]
        if self.dialect == "ga":
            prev, self._last_item_id = self._last_item_id, item.id
            out.append(self.event("conversation.item.added", previous_item_id=prev, item=self._item_obj(item)))
        else:
            out += self._item_added(item, done=False)
        out.append(self.event("response.content_part.added", response_id=r.id, item_id=item.id,
                              output_index=idx, content_index=0, part=part))
        return item, out

    def _close_message(self, r: _Response, status: str) -> list[dict[str, Any]]:
        item = r.current
        if item is None:
            return []
        r.current = None
        out: list[dict[str, Any]] = []
        idx = r.output.index(item)
        ids = {"response_id": r.id, "item_id": item.id, "output_index": idx, "content_index": 0}
        if item.audio:
            if status == "completed":
                out += self._audio_out(r, item, b"", last=True)
            r.resampler = None
            out.append(self.event("response.output_audio.done", **ids))
            out.append(self.event("response.output_audio_transcript.done", **ids,
                                  transcript=" ".join(item.text)))
            part = {"type": "audio", "transcript": " ".join(item.text)}
        else:
            out.append(self.event("response.output_text.done", **ids, text=" ".join(item.text)))
            part = {"type": "text", "text": " ".join(item.text)}
        out.append(self.event("response.content_part.done", **ids, part=part))
        item.status = "completed" if status == "completed" else "incomplete"
        obj = self._item_obj(item)
        out.append(self.event("response.output_item.done", response_id=r.id, output_index=idx, item=obj))
        if self.dialect == "ga":
            out.append(self.event("conversation.item.done", previous_item_id=None, item=obj))
        return out

    def _utterance(self, u: Utterance) -> list[dict[str, Any]]:
        r = self._response
        if r is None or r.cancelling or not u.text.strip():
            return []
        item, out = self._open_message(r)
        idx = r.output.index(item)
        ids = {"response_id": r.id, "item_id": item.id, "output_index": idx, "content_index": 0}
        if item.audio:
            # The transcript is what is spoken: the approved clause, before its audio.
            delta = (" " if item.text else "") + u.text
            item.text.append(u.text)
            out.append(self.event("response.output_audio_transcript.delta", **ids, delta=delta))
        elif self.has_talker:
            shown = u.display if u.display is not None else u.text
            delta = (" " if item.text else "") + shown
            item.text.append(shown)
            out.append(self.event("response.output_text.delta", **ids, delta=delta))
        return out

    def _text_delta(self, text: str) -> list[dict[str, Any]]:
        # A text agent (no Talker): its display stream has passed the stream middleware.
        r = self._response
        if r is None or r.cancelling or not text:
            return []
        item, out = self._open_message(r)
        if item.text:
            item.text[-1] += text
        else:
            item.text.append(text)
        out.append(self.event("response.output_text.delta", response_id=r.id, item_id=item.id,
                              output_index=r.output.index(item), content_index=0, delta=text))
        return out

    def _audio(self, chunk: AudioChunk) -> list[dict[str, Any]]:
        r = self._response
        if r is None or r.cancelling or not chunk.pcm:
            return []
        if "audio" not in r.modalities:
            return []
        item, out = self._open_message(r)
        if r.resampler is None or r.in_rate != chunk.sample_rate:
            out += self._audio_out(r, item, b"", last=True)  # a new rate: flush the old stream
            import soxr

            r.in_rate = chunk.sample_rate
            r.resampler = (None if chunk.sample_rate == REALTIME_RATE else
                           soxr.ResampleStream(chunk.sample_rate, REALTIME_RATE, 1, dtype="int16"))
            if r.resampler is None:
                r.resampler = _Passthrough()
        out += self._audio_out(r, item, chunk.pcm, last=False)
        return out

    def _audio_out(self, r: _Response, item: _Item, pcm: bytes, *, last: bool) -> list[dict[str, Any]]:
        if r.resampler is None:
            return []
        x = r.resampler.resample_chunk(np.frombuffer(pcm, dtype="<i2"), last=last)
        data = np.asarray(x, dtype="<i2").tobytes()
        step = REALTIME_RATE * self.limits.delta_ms // 1000 * 2
        ids = {"response_id": r.id, "item_id": item.id, "output_index": r.output.index(item),
               "content_index": 0}
        out = []
        for i in range(0, len(data), step):
            piece = data[i:i + step]
            item.audio_ms += len(piece) / 2 / REALTIME_RATE * 1000
            out.append(self.event("response.output_audio.delta", **ids,
                                  delta=base64.b64encode(piece).decode("ascii")))
        return out

    def _tool_call(self, call: ToolCall) -> list[dict[str, Any]]:
        r = self._response
        if r is None or r.cancelling:
            return []
        out = self._close_message(r, "completed")
        item = _Item("function_call")
        item.call_id, item.name = call.id or _id("call"), call.name
        r.output.append(item)
        idx = len(r.output) - 1
        out.append(self.event("response.output_item.added", response_id=r.id, output_index=idx,
                              item=self._item_obj(item)))
        out += self._item_added(item, done=False)
        ids = {"response_id": r.id, "item_id": item.id, "output_index": idx, "call_id": item.call_id}
        item.arguments = call.arguments
        out.append(self.event("response.function_call_arguments.delta", **ids, delta=call.arguments))
        out.append(self.event("response.function_call_arguments.done", **ids, name=item.name,
                              arguments=call.arguments))
        item.status = "completed"
        obj = self._item_obj(item)
        out.append(self.event("response.output_item.done", response_id=r.id, output_index=idx, item=obj))
        if self.dialect == "ga":
            out.append(self.event("conversation.item.done", previous_item_id=None, item=obj))
        return out

    def _tool_result(self, res: ToolResult) -> list[dict[str, Any]]:
        # The tool ran on the server: its output joins the conversation (not the response's
        # output: a Realtime client creates these items itself when tools are client-side).
        r = self._response
        if r is None or r.cancelling:
            return []
        item = _Item("function_call_output")
        item.call_id, item.output, item.status = res.call_id, res.content, "completed"
        return self._item_added(item, done=True)

    def _error_event(self, ev: ErrorEvent) -> list[dict[str, Any]]:
        r = self._response
        err = self.error(f"{ev.stage or 'agent'}_error".replace(":", "_"), ev.message, kind="server_error")
        if r is not None and not r.started:
            r.error = err["error"]
            return [err] + self._finish(r, "failed")
        return [err]

    def _turn_end(self, end: TurnEnd) -> list[dict[str, Any]]:
        r = self._response
        if r is None:
            return []
        if end.reason == "interrupted" or r.cancelling:
            status, r.reason = "cancelled", r.reason or "turn_detected"
        elif end.reason == "completed":
            status = "completed"
        elif end.reason == "error":
            status = "failed"
        else:  # blocked (a fallback line was said), max_tokens, max_rounds
            status = "incomplete"
            r.reason = {"blocked": "content_filter", "max_tokens": "max_output_tokens"}.get(end.reason)
        return self._finish(r, status)

    def _finish(self, r: _Response, status: str) -> list[dict[str, Any]]:
        out = self._close_message(r, "completed" if status in ("completed", "incomplete") else status)
        r.status = status
        if status == "completed":
            r.reason = None
        self._response = None
        out.append(self.event("response.done", response=self._response_obj(r)))
        return out


class _Passthrough:
    @staticmethod
    def resample_chunk(x: np.ndarray, last: bool = False) -> np.ndarray:
        return x


def _check_format(param: str, fmt: Any) -> None:
    if fmt is None:
        return
    if isinstance(fmt, str):
        if fmt != "pcm16":
            raise _Refusal("unsupported_audio_format", f"{param} {fmt[:20]!r} is not supported: this "
                           "server speaks pcm16 (24 kHz mono) only", param=param)
        return
    if fmt.type not in (None, "audio/pcm") or fmt.rate not in (None, REALTIME_RATE):
        raise _Refusal("unsupported_audio_format", f"{param} {fmt.type}/{fmt.rate} is not supported: "
                       "this server speaks audio/pcm at 24000 Hz only", param=param)


def _check_text(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise _Refusal("invalid_value", "the text holds a lone surrogate (like \\ud800), which "
                           "is not a character: send valid Unicode text", param="item.content.text") from None
