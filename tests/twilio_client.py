"""A simulated Twilio Media Streams client: it speaks the protocol as Twilio does.

:class:`TwilioCall` dials a WebSocket like Twilio's ``<Connect><Stream>``: ``connected``,
then ``start`` (streamSid, callSid, ``audio/x-mulaw`` 8000 Hz mono, custom parameters),
then a ``media`` frame (20 ms, 160 bytes of μ-law, track ``inbound``) every 20 ms for the
whole call — the caller's speech when :meth:`TwilioCall.say` queued some, silence
otherwise. Reply audio is "played" in real time from a buffer, 20 ms a tick; a ``mark``
is echoed when playback reaches it; ``clear`` empties the buffer (and echoes the marks
still in it, as Twilio's docs describe marks being returned on a clear — the server must
not count those as heard). :meth:`TwilioCall.hang_up` sends ``stop``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import deque
from time import monotonic
from typing import Any

import websockets

FRAME = 160  # 20 ms of μ-law at 8 kHz
TICK = 0.02
SILENCE = b"\xff" * FRAME


class TwilioCall:
    """One simulated call. Use ``async with TwilioCall(url) as call:``."""

    def __init__(self, url: str, *, stream_sid: str = "MZ00000000000000000000000000000001",
                 call_sid: str = "CA00000000000000000000000000000001",
                 media_format: dict | None = None, custom: dict | None = None,
                 headers: dict | None = None, echo_marks_on_clear: bool = True):
        self.url = url
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.media_format = media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                             "channels": 1}
        self.custom = custom or {}
        self.headers = headers or {}
        self.echo_marks_on_clear = echo_marks_on_clear
        self.ws: Any = None
        self.seq = 0
        self.chunk = 0
        #: Every message the server sent, with the monotonic time it arrived.
        self.received: list[tuple[float, dict]] = []
        #: All reply audio received (μ-law), and what was played before any clear.
        self.reply_audio = bytearray()
        self.played = bytearray()
        #: Marks echoed back, in order, and when.
        self.echoed: list[tuple[float, str]] = []
        self.clears: list[float] = []
        self._outbox: deque[bytes] = deque()  # caller speech frames to send
        self._playout: deque[tuple[str, Any]] = deque()  # ("audio", frame) | ("mark", name)
        self._tasks: list[asyncio.Task] = []
        self.closed: asyncio.Event = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason: str = ""

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> TwilioCall:
        await self.open()
        await self.begin()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Only the WebSocket handshake (bad-input tests send their own messages)."""
        self.ws = await websockets.connect(self.url, additional_headers=self.headers,
                                           max_size=1 << 22)
        self._tasks.append(asyncio.ensure_future(self._read()))

    async def begin(self) -> None:
        """``connected`` and ``start``, then the media and playback clocks."""
        await self.send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self.send_json({
            "event": "start", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
            "start": {"accountSid": "AC00000000000000000000000000000001", "streamSid": self.stream_sid,
                      "callSid": self.call_sid, "tracks": ["inbound"],
                      "mediaFormat": self.media_format, "customParameters": self.custom}})
        self._tasks.append(asyncio.ensure_future(self._media_clock()))
        self._tasks.append(asyncio.ensure_future(self._play_clock()))

    async def hang_up(self) -> None:
        """``stop``, as Twilio sends when the caller hangs up."""
        await self.send_json({"event": "stop", "sequenceNumber": self._next_seq(),
                              "streamSid": self.stream_sid,
                              "stop": {"accountSid": "AC00000000000000000000000000000001",
                                       "callSid": self.call_sid}})

    async def close(self) -> None:
        # The clocks first; the reader last, once the close handshake has ended it.
        reader, clocks = self._tasks[:1], self._tasks[1:]
        for t in clocks:
            t.cancel()
        for t in clocks:
            try:
                await t
            except BaseException:  # noqa: BLE001 - cancelled, or the socket went
                pass
        if self.ws is not None:
            await self.ws.close()
        for t in reader:
            try:
                await asyncio.wait_for(t, 2)
            except BaseException:  # noqa: BLE001
                pass
        self._tasks.clear()

    # ------------------------------------------------------------------ sending

    def _next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def send_json(self, obj: dict) -> None:
        await self.ws.send(json.dumps(obj))

    def media_message(self, frame: bytes, track: str = "inbound") -> dict:
        self.chunk += 1
        return {"event": "media", "sequenceNumber": self._next_seq(), "streamSid": self.stream_sid,
                "media": {"track": track, "chunk": str(self.chunk), "timestamp": str(self.chunk * 20),
                          "payload": base64.b64encode(frame).decode("ascii")}}

    def say(self, mulaw: bytes) -> None:
        """Queue caller speech (μ-law 8 kHz); it goes out in real time, 20 ms a frame."""
        mulaw = mulaw + SILENCE[: (-len(mulaw)) % FRAME]
        for i in range(0, len(mulaw), FRAME):
            self._outbox.append(mulaw[i:i + FRAME])

    async def said(self) -> None:
        """Wait until everything queued with :meth:`say` has been sent."""
        while self._outbox:
            await asyncio.sleep(TICK)

    async def _media_clock(self) -> None:
        t = monotonic()
        while True:
            frame = self._outbox.popleft() if self._outbox else SILENCE
            await self.send_json(self.media_message(frame))
            t += TICK
            await asyncio.sleep(max(0.0, t - monotonic()))

    # ------------------------------------------------------------------ receiving, playing

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                now = monotonic()
                self.received.append((now, msg))
                kind = msg.get("event")
                if kind == "media":
                    data = base64.b64decode(msg["media"]["payload"])
                    self.reply_audio += data
                    self._playout.append(("audio", data))
                elif kind == "mark":
                    self._playout.append(("mark", msg["mark"]["name"]))
                elif kind == "clear":
                    self.clears.append(now)
                    marks = [v for k, v in self._playout if k == "mark"]
                    self._playout.clear()
                    if self.echo_marks_on_clear:
                        for name in marks:
                            await self._echo(name)
        except websockets.ConnectionClosed as e:
            self.close_code = e.rcvd.code if e.rcvd else None
            self.close_reason = e.rcvd.reason if e.rcvd else ""
        finally:
            if self.close_code is None and self.ws.close_code is not None:
                self.close_code, self.close_reason = self.ws.close_code, self.ws.close_reason or ""
            self.closed.set()

    async def _echo(self, name: str) -> None:
        self.echoed.append((monotonic(), name))
        await self.send_json({"event": "mark", "sequenceNumber": self._next_seq(),
                              "streamSid": self.stream_sid, "mark": {"name": name}})

    async def _play_clock(self) -> None:
        t = monotonic()
        while True:
            while self._playout and self._playout[0][0] == "mark":
                await self._echo(self._playout.popleft()[1])
            if self._playout:
                self.played += self._playout.popleft()[1]
                t += TICK
                await asyncio.sleep(max(0.0, t - monotonic()))
            else:
                await asyncio.sleep(0.005)
                t = monotonic()

    # ------------------------------------------------------------------ waiting

    def events(self, kind: str) -> list[dict]:
        return [m for _, m in self.received if m.get("event") == kind]

    async def wait_for(self, pred, timeout: float = 10.0) -> None:
        deadline = monotonic() + timeout
        while not pred():
            if monotonic() > deadline:
                raise TimeoutError("the call did not get there in time")
            await asyncio.sleep(0.01)
