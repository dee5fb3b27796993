"""The Twilio Media Streams protocol, sans-IO: JSON text in, commands and JSON messages out.

A phone call reaches the agent server as a bidirectional Media Stream (TwiML
``<Connect><Stream url="wss://…/v1/twilio/<token>"/></Connect>``). Twilio sends JSON text
frames — ``connected``, ``start`` (the stream's ``streamSid``, the call's ``callSid``, the
media format, custom parameters), ``media`` (base64 G.711 μ-law at 8 kHz, 20 ms a frame),
``mark`` (the echo of a mark we sent, once the caller has heard the audio before it),
``dtmf`` and ``stop`` — and takes ``media``, ``mark`` and ``clear`` back.

:class:`TwilioProtocol` is the whole protocol of one stream with no socket in it (like
``h11`` or ``wsproto``): :meth:`TwilioProtocol.receive` takes one message from Twilio and
returns the :class:`Command`\\ s for the live session (feed audio, playback heard so far,
hang up) or a :class:`ProtocolError`; :meth:`TwilioProtocol.translate` turns each message
of a :class:`~omni_agent.live.LiveSession` (reply audio, a stop of playback after a
barge-in, the turn's end) into messages for Twilio. The transport
(``omni_agent.server.twilio``) only moves bytes, paces the audio and applies the commands::

    proto = TwilioProtocol()
    got = proto.receive('{"event": "media", "media": {"payload": "AAAA"}}')
    got.error.code, got.error.fatal    # ('media_before_start', True)

Audio: μ-law is decoded and encoded with :func:`ulaw_decode` / :func:`ulaw_encode`, two
lookup tables built once with numpy from the G.711 definition (no per-sample Python, and
not the ``audioop`` module, which Python 3.13 removed). Caller audio goes to the live
session at 8 kHz — the session's own soxr stream resamples it for the VAD (16 kHz). Reply
audio (the Talker's rate, 22.05 kHz for Piper) is resampled to 8 kHz with soxr's streaming
resampler, one stream per turn, and sent in 20 ms frames (160 bytes of μ-law).

Playback position: a ``mark`` named ``t<turn>:<ms>`` follows every ``mark_ms`` of reply
audio and the end of each Talker chunk. Twilio echoes a mark when the caller has heard
everything before it, so the last echoed mark is what the caller heard. On a barge-in the
protocol sends ``clear`` (Twilio drops the audio it holds) and reports the last echoed
position as final: memory is cut there. Marks of that turn echoed after the ``clear`` do
not count (the audio behind them was dropped, not heard).

Errors: a message that cannot belong to a Twilio stream at this point (``media`` or
``mark`` before ``start``, a second ``start``, a media format other than μ-law 8 kHz mono,
a message over the size limit, another stream's ``streamSid``, audio arriving much faster
than real time) is *fatal*: the transport closes the socket with 1008 and the reason.
Damage to one message (bad JSON, a payload that is not base64 or too long, an unknown
event, a mark we never sent, a ``media`` frame of the outbound track) is *recoverable*:
logged, counted, the message ignored; ``max_errors`` of them end the call.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..events import AudioChunk, TurnEnd
from .security import InvalidJSON, parse_json

__all__ = [
    "FRAME_BYTES",
    "PHONE_RATE",
    "Command",
    "Dtmf",
    "Feed",
    "Hangup",
    "Heard",
    "Outgoing",
    "ProtocolError",
    "Received",
    "Started",
    "TwilioLimits",
    "TwilioProtocol",
    "mark_name",
    "ulaw_decode",
    "ulaw_encode",
]

#: The phone line's rate: G.711 μ-law, 8000 samples a second, one byte each.
PHONE_RATE = 8000
#: One 20 ms frame of μ-law, as Twilio sends and expects it.
FRAME_BYTES = 160
_FRAME_MS = 1000.0 * FRAME_BYTES / PHONE_RATE
_SILENCE = 0xFF  # μ-law for 0


# --------------------------------------------------------------------------- G.711 μ-law

_BIAS = 0x84


def _build_tables() -> tuple[np.ndarray, np.ndarray]:
    # Decoding (ITU-T G.711): the byte is stored inverted; sign, 3-bit exponent, 4-bit mantissa.
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    decode = np.where(u & 0x80, -magnitude, magnitude).astype("<i2")
    # Encoding: every int16 value, once, as the reference coder (Sun's g711.c, which
    # CPython's audioop used) does it: 14-bit magnitude, biased, segment, 4 mantissa bits.
    x = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(x < 0, 0x7F, 0xFF)
    biased = np.minimum(np.abs(x), 8159) + (_BIAS >> 2)  # 33..8192
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), biased)
    code = np.where(seg > 7, 0x7F, (np.minimum(seg, 7) << 4) | ((biased >> (seg + 1)) & 0x0F))
    encode = ((code ^ mask) & 0xFF).astype(np.uint8)
    return decode, encode


_DECODE, _ENCODE = _build_tables()


def ulaw_decode(data: bytes) -> bytes:
    """G.711 μ-law bytes to int16 little-endian PCM (same rate, two bytes a sample)."""
    return _DECODE[np.frombuffer(data, dtype=np.uint8)].tobytes()


def ulaw_encode(pcm: bytes | np.ndarray) -> bytes:
    """int16 little-endian PCM (bytes or an int16 array) to G.711 μ-law, a byte a sample."""
    x = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, (bytes, bytearray, memoryview)) else pcm
    return _ENCODE[x.astype(np.int32) + 32768].tobytes()


# --------------------------------------------------------------------------- limits


class TwilioLimits(BaseModel):
    """What one phone stream may send, and how far reply audio runs ahead.

    * ``max_message_bytes`` — largest message from Twilio (a 20 ms ``media`` frame is
      about 300 bytes; a ``start`` with custom parameters a few KiB).
    * ``max_payload_bytes`` — most μ-law in one ``media`` frame (its base64 is refused
      above 4/3 of this before it is decoded).
    * ``max_input_lead_seconds`` — how far caller audio may run ahead of the wall clock
      (Twilio sends in real time; a flood of audio is not a phone call).
    * ``max_ahead_seconds`` — most reply audio sent ahead of real-time playback (Twilio
      buffers it; a ``clear`` drops it).
    * ``mark_ms`` — reply audio between two marks (the precision of "what was heard").
    * ``max_errors`` — recoverable errors before the call is ended.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_message_bytes: int = Field(64 * 1024, ge=1024)
    max_payload_bytes: int = Field(16_000, ge=FRAME_BYTES)
    max_input_lead_seconds: float = Field(10.0, gt=0, le=600)
    max_ahead_seconds: float = Field(2.0, ge=0.1, le=60)
    mark_ms: int = Field(250, ge=20, le=10_000)
    max_errors: int = Field(20, ge=1)


# --------------------------------------------------------------------------- wire models

_Loose = ConfigDict(extra="ignore")  # Twilio may add fields: they are not errors


class MediaFormat(BaseModel):
    model_config = _Loose
    encoding: str = Field(max_length=64)
    sampleRate: int
    channels: int = 1


class StartInfo(BaseModel):
    model_config = _Loose
    streamSid: str = Field(min_length=1, max_length=64)
    accountSid: str | None = Field(None, max_length=64)
    callSid: str | None = Field(None, max_length=64)
    tracks: list[str] = Field(default_factory=lambda: ["inbound"], max_length=4)
    customParameters: dict[str, str] = Field(default_factory=dict, max_length=64)
    mediaFormat: MediaFormat


class StartIn(BaseModel):
    model_config = _Loose
    event: Literal["start"]
    sequenceNumber: str | int | None = None
    streamSid: str | None = Field(None, max_length=64)
    start: StartInfo


class MediaInfo(BaseModel):
    model_config = _Loose
    track: str = Field("inbound", max_length=16)
    chunk: str | int | None = None
    timestamp: str | int | None = None
    payload: str


class MediaIn(BaseModel):
    model_config = _Loose
    event: Literal["media"]
    sequenceNumber: str | int | None = None
    streamSid: str | None = Field(None, max_length=64)
    media: MediaInfo


class MarkInfo(BaseModel):
    model_config = _Loose
    name: str = Field(max_length=128)


class MarkIn(BaseModel):
    model_config = _Loose
    event: Literal["mark"]
    streamSid: str | None = Field(None, max_length=64)
    mark: MarkInfo


class DtmfInfo(BaseModel):
    model_config = _Loose
    track: str | None = Field(None, max_length=16)
    digit: str = Field(pattern=r"^[0-9*#A-Da-d]$")


class DtmfIn(BaseModel):
    model_config = _Loose
    event: Literal["dtmf"]
    streamSid: str | None = Field(None, max_length=64)
    dtmf: DtmfInfo


class StopIn(BaseModel):
    model_config = _Loose
    event: Literal["stop"]
    streamSid: str | None = Field(None, max_length=64)


class ConnectedIn(BaseModel):
    model_config = _Loose
    event: Literal["connected"]
    protocol: str | None = Field(None, max_length=64)
    version: str | None = Field(None, max_length=64)


class PayloadOut(BaseModel):
    payload: str


class MediaOut(BaseModel):
    """Reply audio for the caller: base64 μ-law 8 kHz, one 20 ms frame."""

    event: Literal["media"] = "media"
    streamSid: str
    media: PayloadOut


class NameOut(BaseModel):
    name: str


class MarkOut(BaseModel):
    """Echoed by Twilio once the caller has heard the audio sent before it."""

    event: Literal["mark"] = "mark"
    streamSid: str
    mark: NameOut


class ClearOut(BaseModel):
    """Twilio drops the audio it holds for the caller (barge-in)."""

    event: Literal["clear"] = "clear"
    streamSid: str


_EVENTS: dict[str, type[BaseModel]] = {
    "connected": ConnectedIn, "start": StartIn, "media": MediaIn, "mark": MarkIn,
    "dtmf": DtmfIn, "stop": StopIn,
}
_MARK = re.compile(r"^t(\d{1,12}):(\d{1,12})$")


def mark_name(turn_id: int, ms: int) -> str:
    """The name of the mark at ``ms`` of reply audio into turn ``turn_id``."""
    return f"t{turn_id}:{ms}"


# --------------------------------------------------------------------------- commands


@dataclass(slots=True)
class Started:
    """The stream began: who is calling (the transport logs it)."""

    stream_sid: str
    call_sid: str | None
    account_sid: str | None
    custom_parameters: dict[str, str]


@dataclass(slots=True)
class Feed:
    """Caller audio for the live session: int16 PCM at 8 kHz."""

    pcm: bytes


@dataclass(slots=True)
class Heard:
    """The caller has heard ``played_ms`` of turn ``turn_id``'s reply; ``final``: playback
    of it stopped there (a barge-in): cut memory to it."""

    turn_id: int
    played_ms: float
    final: bool = False


@dataclass(slots=True)
class Dtmf:
    """The caller pressed a key."""

    digit: str


@dataclass(slots=True)
class Hangup:
    """Twilio ended the stream (``stop``): the call is over."""


Command = Union[Started, Feed, Heard, Dtmf, Hangup]


@dataclass(slots=True)
class ProtocolError:
    """A message refused. ``fatal``: close the socket (1008) with ``reason``; else it was
    ignored (and logged)."""

    code: str
    message: str
    fatal: bool

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(slots=True)
class Received:
    """What one message from Twilio produced."""

    commands: list[Command] = field(default_factory=list)
    error: ProtocolError | None = None


@dataclass(slots=True)
class Wire:
    """One message for Twilio. ``at_ms``: for reply audio, where this frame starts in its
    turn's audio (the transport paces frames by it); None for marks and clears."""

    msg: dict[str, Any]
    turn_id: int | None = None
    at_ms: float | None = None


@dataclass(slots=True)
class Outgoing:
    """What one live-session message produced: messages for Twilio, and the playback to
    report to the live session (after a ``clear``)."""

    wire: list[Wire] = field(default_factory=list)
    report: Heard | None = None


class _Refusal(Exception):
    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(message)
        self.error = ProtocolError(code, message, fatal)


class _ReplyOut:
    """The reply audio of one turn, as sent: resampler, the partial frame, positions."""

    __slots__ = (
        "acked_ms",
        "cut",
        "last_mark",
        "next_mark",
        "pending",
        "rate",
        "resampler",
        "sent_ms",
        "turn_id",
    )

    def __init__(self, turn_id: int, mark_ms: int):
        self.turn_id = turn_id
        self.resampler: Any = None
        self.rate = 0
        self.pending = b""  # μ-law short of a whole frame
        self.sent_ms = 0.0
        self.acked_ms = 0.0  # the last mark echoed
        self.next_mark = float(mark_ms)
        self.cut = False  # cleared after a barge-in: nothing more of it is sent or counted
        self.last_mark = -1.0


# --------------------------------------------------------------------------- the protocol


class TwilioProtocol:
    """One Media Stream's protocol state (see the module docstring)."""

    def __init__(self, limits: TwilioLimits | None = None):
        self.limits = limits or TwilioLimits()
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.errors = 0
        self.stopped = False
        self._started_at: float | None = None
        self._input_ms = 0.0
        self._reply: _ReplyOut | None = None
        self._max_b64 = 4 * -(-self.limits.max_payload_bytes // 3)

    @property
    def started(self) -> bool:
        return self.stream_sid is not None

    # ------------------------------------------------------------------ Twilio -> us

    def receive(self, text: str | bytes, now: float) -> Received:
        """One message from Twilio, received at ``now`` (monotonic seconds). Never raises:
        a refusal is :attr:`Received.error`."""
        try:
            got = self._receive(text, now)
        except _Refusal as r:
            if not r.error.fatal:
                self.errors += 1
                if self.errors >= self.limits.max_errors:
                    r.error = ProtocolError("too_many_errors", f"{self.errors} refused messages "
                                            f"(the last: {r.error.reason})", True)
            return Received(error=r.error)
        return got

    def _receive(self, text: str | bytes, now: float) -> Received:
        if isinstance(text, (bytes, bytearray)):
            raise _Refusal("binary_frame", "Media Streams messages are JSON text frames; a binary "
                           "frame was ignored")
        if len(text) > self.limits.max_message_bytes:
            raise _Refusal("message_too_large", f"a message of {len(text)} characters; at most "
                           f"{self.limits.max_message_bytes} are taken", fatal=True)
        try:
            raw = parse_json(text, max_depth=8)
        except InvalidJSON as e:
            raise _Refusal("invalid_json", str(e).replace("request body", "message")) from None
        if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
            raise _Refusal("invalid_message", 'a Media Streams message is a JSON object with an '
                           '"event" field')
        kind = raw["event"]
        model = _EVENTS.get(kind)
        if model is None:
            raise _Refusal("unknown_event", f"unknown event {kind[:32]!r} ignored: a Media Stream "
                           f"sends {', '.join(_EVENTS)}")
        try:
            msg = model.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            # A start we cannot read leaves the stream unusable; a bad frame is one frame.
            raise _Refusal(f"invalid_{kind}", f"{kind}: {where}: {first['msg']}",
                           fatal=kind == "start") from None
        if kind == "connected":
            if self.started:
                raise _Refusal("out_of_order", "connected after start ignored")
            return Received()
        if kind == "start":
            return self._on_start(msg, now)  # type: ignore[arg-type]
        if not self.started:
            if kind == "stop":
                self.stopped = True
                return Received(commands=[Hangup()])
            raise _Refusal(f"{kind}_before_start", f"a {kind} message came before start: a "
                           "Media Stream begins with connected, then start", fatal=True)
        sid = getattr(msg, "streamSid", None)
        if sid is not None and sid != self.stream_sid:
            raise _Refusal("wrong_stream", f"a {kind} message for stream {sid[:40]!r} on the socket "
                           f"of stream {self.stream_sid!r}", fatal=True)
        if kind == "media":
            return self._on_media(msg, now)  # type: ignore[arg-type]
        if kind == "mark":
            return self._on_mark(msg)  # type: ignore[arg-type]
        if kind == "dtmf":
            return Received(commands=[Dtmf(msg.dtmf.digit.upper())])  # type: ignore[attr-defined]
        self.stopped = True
        return Received(commands=[Hangup()])

    def _on_start(self, msg: StartIn, now: float) -> Received:
        if self.started:
            raise _Refusal("second_start", "a second start on one stream: each Media Stream has "
                           "its own WebSocket", fatal=True)
        fmt = msg.start.mediaFormat
        if fmt.encoding.lower() != "audio/x-mulaw" or fmt.sampleRate != PHONE_RATE or fmt.channels != 1:
            raise _Refusal("unsupported_media_format", f"media format {fmt.encoding[:32]}/"
                           f"{fmt.sampleRate}/{fmt.channels} channel(s): this server takes "
                           "audio/x-mulaw at 8000 Hz, mono", fatal=True)
        s = msg.start
        self.stream_sid, self.call_sid = s.streamSid, s.callSid
        self._started_at = now
        return Received(commands=[Started(s.streamSid, s.callSid, s.accountSid,
                                          dict(s.customParameters))])

    def _on_media(self, msg: MediaIn, now: float) -> Received:
        m = msg.media
        if m.track != "inbound":
            # <Stream track="both_tracks"> also sends what the caller hears: not caller speech.
            raise _Refusal("wrong_track", f"media of the {m.track[:16]!r} track ignored: only the "
                           'inbound track is caller speech (use track="inbound_track")')
        if len(m.payload) > self._max_b64:
            raise _Refusal("payload_too_large", f"a media payload of {len(m.payload)} base64 "
                           f"characters; at most {self._max_b64} ({self.limits.max_payload_bytes} "
                           "bytes of μ-law) are taken")
        try:
            data = base64.b64decode(m.payload, validate=True)
        except (binascii.Error, ValueError):
            raise _Refusal("invalid_payload", "a media payload that is not base64 was ignored: "
                           "payloads are base64 μ-law (8 kHz)") from None
        if not data:
            return Received()
        self._input_ms += 1000.0 * len(data) / PHONE_RATE
        assert self._started_at is not None
        lead = self._input_ms / 1000.0 - (now - self._started_at)
        if lead > self.limits.max_input_lead_seconds:
            raise _Refusal("audio_too_fast", f"audio arrived {lead:.1f} s ahead of real time: a "
                           "phone stream sends 20 ms every 20 ms", fatal=True)
        return Received(commands=[Feed(ulaw_decode(data))])

    def _on_mark(self, msg: MarkIn) -> Received:
        found = _MARK.match(msg.mark.name)
        if found is None:
            raise _Refusal("unknown_mark", f"mark {msg.mark.name[:40]!r} was not sent by this "
                           "server: ignored")
        turn_id, ms = int(found.group(1)), float(found.group(2))
        r = self._reply
        if r is None or turn_id != r.turn_id:
            if r is not None and turn_id < r.turn_id:
                return Received()  # an earlier turn's mark, late: nothing to learn from it
            raise _Refusal("unknown_mark", f"mark {msg.mark.name!r} names a turn not sent: ignored")
        if ms > r.sent_ms + 0.5:
            raise _Refusal("unknown_mark", f"mark {msg.mark.name!r} is past the audio sent: ignored")
        if r.cut or ms <= r.acked_ms:
            return Received()  # echoed after the clear: that audio was dropped, not heard
        r.acked_ms = ms
        return Received(commands=[Heard(turn_id, ms)])

    # ------------------------------------------------------------------ live session -> Twilio

    def heard_ms(self, turn_id: int) -> float | None:
        """The last echoed position of turn ``turn_id`` (None: not the turn being sent)."""
        r = self._reply
        return r.acked_ms if r is not None and r.turn_id == turn_id else None

    def translate(self, msg: Any) -> Outgoing:
        """The messages for Twilio for one live-session message (empty before ``start``)."""
        if not self.started or self.stopped:
            return Outgoing()
        t = type(msg)
        if t is AudioChunk:
            return Outgoing(self._audio(msg))
        if t is TurnEnd:
            r = self._reply
            if r is None or r.turn_id != msg.turn_id or r.cut:
                return Outgoing()
            out = self._encode(r, b"", last=True)
            out += self._pad(r) + [self._mark(r)]
            return Outgoing(out)
        if isinstance(msg, dict) and msg.get("type") == "stop_playback":
            return self._clear(msg.get("turn_id"))
        return Outgoing()

    def _clear(self, turn_id: Any) -> Outgoing:
        assert self.stream_sid is not None
        out = Outgoing([Wire(ClearOut(streamSid=self.stream_sid).model_dump())])
        r = self._reply
        if r is not None and not r.cut and (turn_id is None or turn_id == r.turn_id):
            r.cut = True
            r.resampler, r.pending = None, b""
            out.report = Heard(r.turn_id, r.acked_ms, final=True)
        return out

    def _audio(self, chunk: AudioChunk) -> list[Wire]:
        r = self._reply
        if r is None or r.turn_id != chunk.turn_id:
            r = self._reply = _ReplyOut(chunk.turn_id, self.limits.mark_ms)
        if r.cut or not chunk.pcm:
            return []
        out: list[Wire] = []
        if r.resampler is None or r.rate != chunk.sample_rate:
            out += self._encode(r, b"", last=True)  # a new rate: flush the old stream
            import soxr

            r.rate = chunk.sample_rate
            r.resampler = (_Passthrough() if chunk.sample_rate == PHONE_RATE else
                           soxr.ResampleStream(chunk.sample_rate, PHONE_RATE, 1, dtype="int16"))
        out += self._encode(r, chunk.pcm, last=False)
        if r.sent_ms > r.last_mark:
            out.append(self._mark(r))  # the end of each chunk is a mark too
        return out

    def _encode(self, r: _ReplyOut, pcm: bytes, *, last: bool) -> list[Wire]:
        if r.resampler is None:
            return []
        y = r.resampler.resample_chunk(np.frombuffer(pcm, dtype="<i2"), last=last)
        data = r.pending + ulaw_encode(np.asarray(y, dtype="<i2"))
        n = len(data) // FRAME_BYTES * FRAME_BYTES
        r.pending = data[n:]
        out: list[Wire] = []
        for i in range(0, n, FRAME_BYTES):
            out.append(self._frame(r, data[i:i + FRAME_BYTES]))
            if r.sent_ms >= r.next_mark:
                out.append(self._mark(r))
                r.next_mark = r.sent_ms + self.limits.mark_ms
        if last:
            r.resampler = None
        return out

    def _pad(self, r: _ReplyOut) -> list[Wire]:
        if not r.pending:
            return []
        frame = r.pending + bytes([_SILENCE]) * (FRAME_BYTES - len(r.pending))
        r.pending = b""
        return [self._frame(r, frame)]

    def _frame(self, r: _ReplyOut, frame: bytes) -> Wire:
        assert self.stream_sid is not None
        at = r.sent_ms
        r.sent_ms += _FRAME_MS
        msg = MediaOut(streamSid=self.stream_sid, media=PayloadOut(
            payload=base64.b64encode(frame).decode("ascii")))
        return Wire(msg.model_dump(), r.turn_id, at)

    def _mark(self, r: _ReplyOut) -> Wire:
        assert self.stream_sid is not None
        r.last_mark = r.sent_ms
        name = mark_name(r.turn_id, round(r.sent_ms))
        return Wire(MarkOut(streamSid=self.stream_sid, mark=NameOut(name=name)).model_dump(), r.turn_id)


class _Passthrough:
    @staticmethod
    def resample_chunk(x: np.ndarray, last: bool = False) -> np.ndarray:
        return x
