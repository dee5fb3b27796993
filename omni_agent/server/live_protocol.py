"""The live session protocol of ``/v1/live`` (docs/protocol.md), sans-IO.

:class:`LiveProtocol` is one connection's side of it, with no socket: client frames go
in, typed commands come out; what the server says comes out as frames to send. Every
client message is a pydantic model (:data:`CLIENT_MESSAGES`), so a bad one is refused
with the field, what was wrong and an example of a right one::

    proto = LiveProtocol(binary_audio=True, max_message_bytes=1 << 20)
    cmd = proto.receive_text('{"type": "configure", "barge_in": false}')   # ConfigureMessage
    cmd = proto.receive_bytes(pcm)                                        # Audio(pcm)
    frame = proto.audio(chunk)          # bytes: a 16-byte header, then the PCM
    proto.receive_text('{"type": "configure", "barge_in": "false"}')
    # ProtocolError bad_message: 'configure message: barge_in must be true or false, not "false" ...'

The session settings a client may change are :class:`LiveSettings`, validated the same
way from a ``configure`` message (strict JSON types) and from the connect URL's query
parameters (text, read by pydantic's string mode): one model, one set of messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigError, OmniAgentError
from ..events import AudioChunk, Event, UserTurn, event_to_dict
from ..live import LiveConfig
from .sockets import dumps
from .wire import SessionId, TurnText, WireModel, describe, error_code, fail

__all__ = ["LiveProtocol", "ProtocolError", "LiveSettings", "ConnectParams", "Audio", "AudioMessage",
           "TextMessage", "PlaybackMessage", "InterruptMessage", "EndTurnMessage", "ConfigureMessage",
           "PingMessage", "ClientMessage", "Command", "CLIENT_MESSAGES", "AUDIO_HEADER", "audio_frame",
           "parse_audio_frame", "apply_settings", "live_config_dict", "parse_connect"]


class ProtocolError(OmniAgentError):
    """A client message the protocol refuses; ``code`` is the ``error`` message's code
    (``bad_json``, ``bad_message``, ``bad_audio``, ``bad_text``, ``unknown_type``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- settings


class LiveSettings(BaseModel):
    """The live-session settings a client may change (a ``configure`` message, or the
    connect URL). A field left out keeps its value: the defaults are
    :class:`~omni_agent.live.LiveConfig`'s, and so are the ranges (checked when the
    changes are applied, :func:`apply_settings`). The types are exact: ``"false"``, ``0``
    or ``250.7`` for a flag or a count of milliseconds are refused, not guessed at."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    barge_in: StrictBool | None = None
    min_interrupt_ms: StrictInt | None = None
    min_speech_ms: StrictInt | None = None
    end_silence_ms: StrictInt | None = None
    threshold: StrictFloat | StrictInt | None = None
    playback_wait_ms: StrictInt | None = None

    def changes(self) -> dict[str, Any]:
        """The settings given, by name (``threshold`` as a float)."""
        out = self.model_dump(include=set(LiveSettings.model_fields), exclude_unset=True)
        if "threshold" in out:
            out["threshold"] = float(out["threshold"])
        return out


#: The settings a ``configure`` message may change.
CONFIGURABLE = tuple(LiveSettings.model_fields)


class ConnectParams(LiveSettings):
    """The query parameters of ``/v1/live`` (docs/protocol.md, *Connecting*): the
    settings, plus those fixed for the session's life."""

    sample_rate: StrictInt | None = None
    pre_roll_ms: StrictInt | None = None
    semantic_turn: StrictBool | None = None
    min_end_silence_ms: StrictInt | None = None
    max_end_silence_ms: StrictInt | None = None
    streaming_asr: StrictBool | None = None
    pause_ms: StrictInt | None = None
    preemptive: StrictBool | None = None
    audio_out: Literal["binary", "base64"] = "binary"
    token: StrictStr | None = None
    session_id: SessionId | None = None

    def changes(self) -> dict[str, Any]:
        out = super().changes()
        out.update(self.model_dump(exclude=set(LiveSettings.model_fields) | _NOT_SETTINGS,
                                   exclude_unset=True))
        return out


#: The query parameters that are not live settings.
_NOT_SETTINGS = {"audio_out", "token", "session_id"}


def live_config_dict(config: LiveConfig) -> dict[str, Any]:
    """Every setting of a live config, by name (the ``ready`` message's ``config``)."""
    return config.model_dump()


def apply_settings(config: LiveConfig, changes: Mapping[str, Any]) -> LiveConfig:
    """A new live config: ``config`` with ``changes``, checked (ranges, and the settings
    together) by :class:`~omni_agent.live.LiveConfig` itself, so its limits and its words
    are written once. Raises :class:`ConfigError` naming the bad value; ``config`` is left
    as it was."""
    return config.replace(**changes).check()


def parse_connect(query: Mapping[str, str], base: LiveConfig) -> tuple[ConnectParams, LiveConfig]:
    """The connect URL's query parameters, and the session's live config from them.
    Raises :class:`ConfigError` saying which parameter is wrong and what it must be."""
    try:
        params = ConnectParams.model_validate_strings(dict(query))
    except ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(sorted(set(ConnectParams.model_fields) - {"token", "session_id"}))
            raise ConfigError(f"unknown parameter {err['loc'][0]!r}: allowed are {allowed}") from None
        raise ConfigError(describe(err)) from None
    return params, apply_settings(base, params.changes())


# --------------------------------------------------------------------------- client messages


class _Message(WireModel):
    """A client text message: strict JSON types, unknown fields ignored."""

    #: The error code of a message of this type that fails validation.
    error_code: ClassVar[str] = "bad_message"
    #: A right one, shown in the error message.
    example: ClassVar[str] = ""


class AudioMessage(_Message):
    """``audio``: base64 of int16 PCM, for clients that cannot send binary frames."""

    error_code: ClassVar[str] = "bad_audio"
    example: ClassVar[str] = '{"type": "audio", "data": "<base64 of int16 PCM>"}'
    type: Literal["audio"]
    data: bytes

    @field_validator("data", mode="before")
    @classmethod
    def _decode(cls, data: Any) -> bytes:
        if not isinstance(data, str):
            raise fail("must be a string: base64 of int16 PCM")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise fail("is not valid base64") from None


class TextMessage(_Message):
    """``text``: a typed user turn."""

    example: ClassVar[str] = '{"type": "text", "text": "hello"}'
    type: Literal["text"]
    text: TurnText


class PlaybackMessage(_Message):
    """``playback``: how much of turn ``turn_id``'s reply audio the client has played."""

    example: ClassVar[str] = '{"type": "playback", "turn_id": 3, "played_ms": 1200, "final": true}'
    type: Literal["playback"]
    turn_id: StrictInt
    played_ms: StrictFloat | StrictInt = Field(ge=0)
    final: StrictBool = True


class InterruptMessage(_Message):
    """``interrupt``: stop the agent now."""

    type: Literal["interrupt"]


class EndTurnMessage(_Message):
    """``end_turn``: the user's turn ends now (push-to-talk release)."""

    type: Literal["end_turn"]


class ConfigureMessage(LiveSettings):
    """``configure``: change this session's :class:`LiveSettings`."""

    error_code: ClassVar[str] = "bad_message"
    example: ClassVar[str] = '{"type": "configure", "barge_in": false, "end_silence_ms": 500}'
    type: Literal["configure"]

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, message: Any) -> Any:
        # None is how the model says "left out"; a client says that by leaving it out.
        for name, value in message.items() if isinstance(message, dict) else ():
            if value is None:
                raise fail(f"{name} must not be null: leave it out to keep its value")
        return message


class PingMessage(_Message):
    """``ping``: answered with a ``pong`` carrying the same ``t``."""

    type: Literal["ping"]
    t: Any = None


ClientMessage = Union[AudioMessage, TextMessage, PlaybackMessage, InterruptMessage, EndTurnMessage,
                      ConfigureMessage, PingMessage]

#: Each client message type and its model.
CLIENT_MESSAGES: dict[str, type[_Message] | type[ConfigureMessage]] = {
    "audio": AudioMessage, "text": TextMessage, "playback": PlaybackMessage,
    "interrupt": InterruptMessage, "end_turn": EndTurnMessage, "configure": ConfigureMessage,
    "ping": PingMessage,
}


@dataclass(frozen=True, slots=True)
class Audio:
    """Microphone audio, from a binary frame or an ``audio`` message: int16 mono PCM."""

    pcm: bytes


#: What :class:`LiveProtocol` gives for one client frame.
Command = Union[Audio, TextMessage, PlaybackMessage, InterruptMessage, EndTurnMessage,
                ConfigureMessage, PingMessage]


def _refusal(kind: str, model: type[_Message] | type[ConfigureMessage], e: ValidationError) -> ProtocolError:
    err = e.errors()[0]
    default = model.error_code
    if err["type"] == "extra_forbidden":
        return ProtocolError(default, f"{kind} message: cannot configure {err['loc'][0]!r}: allowed are "
                             f"{', '.join(CONFIGURABLE)}")
    message = f"{kind} message: {describe(err)}"
    if model.example:
        message += f" (like {model.example})"
    return ProtocolError(error_code(err, default), message)


# --------------------------------------------------------------------------- audio frames

#: The header of a binary audio frame: turn_id, seq, sample_rate (uint32), utterance_index
#: (uint16), flags (uint8: bit 0 = last chunk of its utterance), reserved (uint8); little-endian.
AUDIO_HEADER = struct.Struct("<IIIHBB")


def audio_frame(chunk: AudioChunk, seq: int) -> bytes:
    """A server-to-client binary audio frame: 16-byte header + int16 PCM."""
    return AUDIO_HEADER.pack(chunk.turn_id, seq, chunk.sample_rate, chunk.utterance_index & 0xFFFF,
                             1 if chunk.final else 0, 0) + chunk.pcm


def parse_audio_frame(frame: bytes) -> dict[str, Any]:
    """Read a binary audio frame back (for Python clients and tests)."""
    turn_id, seq, rate, index, flags, _ = AUDIO_HEADER.unpack_from(frame)
    return {"turn_id": turn_id, "seq": seq, "sample_rate": rate, "utterance_index": index,
            "final": bool(flags & 1), "pcm": frame[AUDIO_HEADER.size:]}


# --------------------------------------------------------------------------- the protocol


class LiveProtocol:
    """One connection's side of the live protocol, with no I/O.

    ``binary_audio`` — reply audio as binary frames (else base64 in JSON messages).
    ``max_message_bytes`` — the largest client frame (None: the transport checks sizes).
    """

    __slots__ = ("binary_audio", "max_message_bytes", "seq")

    def __init__(self, *, binary_audio: bool = True, max_message_bytes: int | None = None):
        self.binary_audio = binary_audio
        self.max_message_bytes = max_message_bytes
        #: Numbers the audio frames sent, from 1.
        self.seq = 0

    # ------------------------------------------------------------------ client -> server

    def receive_bytes(self, data: bytes) -> Audio:
        """A binary frame: microphone audio. Raises :class:`ProtocolError`."""
        limit = self.max_message_bytes
        if limit is not None and len(data) > limit:
            raise ProtocolError("message_too_large", f"an audio message of {len(data)} bytes is over the "
                                f"limit of {limit} bytes: send smaller chunks (20-100 ms of audio each)")
        return Audio(data)

    def receive_text(self, text: str) -> Command:
        """A text frame: one JSON message, as its typed command. Raises
        :class:`ProtocolError` saying what was wrong and what to send instead."""
        limit = self.max_message_bytes
        if limit is not None and len(text) > limit:
            raise ProtocolError("message_too_large", f"a message of {len(text)} characters is over "
                                f"the limit of {limit}")
        try:
            obj = json.loads(text)
        except RecursionError:
            raise ProtocolError("bad_json", "the message is nested too deeply: messages are flat "
                                'JSON objects like {"type": "text", "text": "hello"}') from None
        except ValueError:
            raise ProtocolError("bad_json", "the message is not valid JSON: text messages are JSON "
                                'objects like {"type": "text", "text": "hello"}') from None
        if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
            raise ProtocolError("bad_message", 'a message is a JSON object with a "type" field, like '
                                '{"type": "text", "text": "hello"}')
        kind = obj["type"]
        model = CLIENT_MESSAGES.get(kind)
        if model is None:
            raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}: use "
                                f"{', '.join(CLIENT_MESSAGES)}")
        try:
            msg = model.model_validate(obj)
        except ValidationError as e:
            raise _refusal(kind, model, e) from None
        return Audio(msg.data) if isinstance(msg, AudioMessage) else msg  # type: ignore[return-value]

    # ------------------------------------------------------------------ server -> client

    def audio(self, chunk: AudioChunk) -> bytes | str:
        """One chunk of reply audio as the frame to send: binary (a 16-byte header, then
        the PCM) or an ``audio_chunk`` JSON message."""
        self.seq += 1
        if self.binary_audio:
            return audio_frame(chunk, self.seq)
        return json.dumps({
            "type": "audio_chunk", "turn_id": chunk.turn_id, "utterance_index": chunk.utterance_index,
            "sample_rate": chunk.sample_rate, "bytes": len(chunk.pcm), "final": chunk.final,
            "seq": self.seq, "data": base64.b64encode(chunk.pcm).decode("ascii")})

    @staticmethod
    def event(ev: Event) -> str:
        """One agent event as its JSON message (a user turn with its transcript)."""
        d = event_to_dict(ev)
        if type(ev) is UserTurn:
            d["text"] = ev.text
        return dumps(d)

    @staticmethod
    def message(msg: dict[str, Any]) -> str:
        """A message of the live session itself (``speech_started``, ``latency``, ...)."""
        return dumps(msg)

    @staticmethod
    def error(code: str, message: str) -> str:
        return dumps({"type": "error", "code": code, "message": message})

    @staticmethod
    def pong(t: Any) -> str:
        return dumps({"type": "pong", "t": t})

    @staticmethod
    def configured(config: LiveConfig) -> str:
        """The answer to ``configure``: the session's settings a client may change."""
        return dumps({"type": "configured", "config": {k: getattr(config, k) for k in CONFIGURABLE}})

    @staticmethod
    def ready(*, session_id: str, config: LiveConfig, output_rate: int | None, binary_audio: bool,
              limits: dict[str, Any]) -> str:
        """The first message of a session: its id, audio formats, settings and limits."""
        return json.dumps({
            "type": "ready", "session_id": session_id,
            "input": {"format": "pcm_s16le", "sample_rate": config.sample_rate, "channels": 1},
            "output": None if output_rate is None else {
                "format": "pcm_s16le", "sample_rate": output_rate, "channels": 1,
                "framing": "binary" if binary_audio else "base64"},
            "config": live_config_dict(config),
            "limits": limits,
        })
