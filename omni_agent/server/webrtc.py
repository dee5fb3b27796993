"""The WebRTC transport of the agent server: ``POST /v1/webrtc/offer`` (aiortc, Opus).

A client (the browser page, or any WebRTC stack) makes an SDP offer with one microphone
track and, optionally, a data channel, and posts it — as ``application/sdp`` (WHIP-style)
or JSON ``{"sdp", "type": "offer"}`` (as Pipecat's small-WebRTC does); the answer comes
back in the same form. Then:

* the microphone arrives as Opus, is decoded by aiortc and resampled (PyAV's
  ``AudioResampler``) to 16 kHz mono int16 for the same :class:`~omni_agent.live.LiveSession`
  as ``/v1/live`` — VAD, turn detection, barge-in, memory cut to what was heard;
* the reply (Talker PCM, after the bus) goes out as Opus through :class:`ReplyTrack`, a
  ``MediaStreamTrack`` that paces 20 ms, 48 kHz frames in real time and is flushed at once
  on a barge-in. The track knows how much of each reply it has sent, so the server itself
  reports playback to the live session (memory keeps what was played);
* the data channel carries the JSON messages of the live protocol (docs/protocol.md) both
  ways: ``ready``, ``speech_started``, ``user_turn``, ``utterance``, ``turn_end``,
  ``latency``... out; ``text``, ``interrupt``, ``configure``, ``ping``... in.

Ownership: :meth:`WebRTCTransport.run` is a task of the server's lifespan; it owns a task
group in which every peer connection is one task, from negotiation (the HTTP handler waits
on ``task_group.start`` for the answer) to ``RTCPeerConnection.close()``. A peer ends on
ICE failure or close, after ``handshake_timeout`` if it never connects, after
``idle_timeout`` without input, when the server drains, or when the lifespan ends.

ICE: host candidates on the addresses in ``ice_hosts`` only (127.0.0.1 by default) and no
STUN or TURN server unless configured — a default server is reachable from this machine
only. See docs/webrtc.md.
"""

from __future__ import annotations

import asyncio
import contextvars
import fractions
import json
import logging
import secrets
from collections import deque
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import AudioInputError, ConfigError, OmniAgentError
from ..events import AudioChunk, TurnEnd, UserTurn, event_to_dict
from ..live import LiveSession
from ..tasks import task_group
from .webrtc_offer import OfferError, parse_offer

if TYPE_CHECKING:
    from .agent_server import AgentServer

__all__ = ["ReplyTrack", "WebRTCConfig", "WebRTCTransport", "webrtc_available"]

log = logging.getLogger(__name__)

#: The HTTP status of each refusal AgentServer.live_refusal gives (an offer is HTTP).
_REFUSAL_STATUS = {"shutting_down": 503, "too_many_sessions": 429, "server_full": 503}

#: Opus in WebRTC runs at 48 kHz; one frame is 20 ms.
OUT_RATE = 48000
FRAME_SAMPLES = 960
_CHANNEL_HIGH_WATER = 1 << 20  # bytes queued on a data channel before a sender waits


def webrtc_available() -> bool:
    """True when aiortc (the ``webrtc`` extra) is installed."""
    import importlib.util

    return importlib.util.find_spec("aiortc") is not None


@dataclass
class WebRTCConfig:
    """Limits and options of ``/v1/webrtc``.

    * ``enabled`` — offer the endpoint at all (it also needs aiortc: ``pip install
      omni-agent[webrtc]``).
    * ``max_peers`` — peer connections at once (they also count as live sessions towards
      ``max_sessions`` and ``max_sessions_per_client``).
    * ``ice_hosts`` — the local addresses host candidates are gathered on. Default
      ``["127.0.0.1"]``: loopback only. ``[]``: every interface (aioice's own choice, which
      leaves loopback out). Set this to a public address to serve the internet.
    * ``ice_servers`` — STUN/TURN URLs (``stun:host:3478``); none by default.
    * ``handshake_timeout`` — seconds from the answer to a connected peer (and an open data
      channel, when one was offered); else it is closed.
    * ``idle_timeout`` — seconds without microphone audio or data-channel messages after
      which a peer is closed.
    * ``max_offer_bytes`` — largest SDP offer.
    * ``max_buffer_seconds`` — reply audio queued in the outgoing track; a fuller track
      makes the Talker wait (backpressure).
    """

    enabled: bool = True
    max_peers: int = 16
    ice_hosts: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    ice_servers: list[str] = field(default_factory=list)
    handshake_timeout: float = 15.0
    idle_timeout: float = 60.0
    max_offer_bytes: int = 64 << 10
    max_buffer_seconds: float = 30.0

    def check(self) -> WebRTCConfig:
        """Validate; raises :class:`ConfigError` naming the bad value."""
        if self.max_peers < 1:
            raise ConfigError(f"webrtc.max_peers must be at least 1, not {self.max_peers!r}")
        for name in ("handshake_timeout", "idle_timeout", "max_buffer_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"webrtc.{name} must be > 0 seconds, not {getattr(self, name)!r}")
        if self.max_offer_bytes < 1024:
            raise ConfigError("webrtc.max_offer_bytes must be at least 1024")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ConfigError(f"webrtc.ice_servers: {url!r} is not a stun:, turn: or turns: URL")
        return self


# --------------------------------------------------------------------------- ICE addresses

# aioice gathers host candidates on every interface but loopback, with no option to
# choose. A peer's gathering runs in its own task, so a context variable set there picks
# the addresses for that peer only; other aioice users in the process are unaffected.
_ICE_HOSTS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("omni_ice_hosts",
                                                                              default=None)
_patched = False


def _restrict_ice_hosts() -> None:
    global _patched
    if _patched:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        chosen = _ICE_HOSTS.get()
        return original(use_ipv4, use_ipv6) if chosen is None else list(chosen)

    aioice.ice.get_host_addresses = get_host_addresses
    _patched = True


# --------------------------------------------------------------------------- reply audio


class _Played:
    __slots__ = ("left", "turn_id")

    def __init__(self, turn_id: int, left: int):
        self.turn_id, self.left = turn_id, left


def _make_track_base() -> Any:
    from aiortc.mediastreams import MediaStreamTrack

    return MediaStreamTrack


class ReplyTrack:
    """The agent's voice as an outgoing WebRTC audio track (made by :meth:`create`).

    :meth:`push` takes the Talker's PCM (any rate), resamples it to 48 kHz and queues it,
    waiting while ``max_seconds`` are queued; aiortc calls ``recv`` for one 20 ms frame at
    a time, paced in real time (silence when nothing is queued). :meth:`flush` drops what
    is queued (barge-in); :meth:`played_ms` says how much of a turn was sent.
    """

    @staticmethod
    def create(max_seconds: float) -> Any:
        base = _make_track_base()

        class _Track(_ReplyBuffer, base):  # type: ignore[misc, valid-type]
            kind = "audio"

            def __init__(self) -> None:
                base.__init__(self)
                _ReplyBuffer.__init__(self, max_seconds)

        return _Track()


class _ReplyBuffer:
    """The state of :class:`ReplyTrack` (no aiortc in it, so tests can drive it alone)."""

    def __init__(self, max_seconds: float):
        self._buf = bytearray()
        self._cap = int(max_seconds * OUT_RATE) * 2
        self._segments: deque[_Played] = deque()
        self._played: dict[int, int] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._resampler: Any = None
        self._in_rate = 0
        self._turn = -1
        self._stopped = -1  # chunks of this turn and earlier are never queued again
        self._start: float | None = None
        self._pts = 0

    async def push(self, chunk: AudioChunk) -> None:
        """Queue one chunk of reply audio (waits while the track is full)."""
        if chunk.turn_id <= self._stopped or not chunk.pcm:
            return
        if self._resampler is None or chunk.sample_rate != self._in_rate or chunk.turn_id != self._turn:
            import soxr

            self._in_rate = chunk.sample_rate
            self._resampler = soxr.ResampleStream(chunk.sample_rate, OUT_RATE, 1, dtype="int16")
        self._turn = chunk.turn_id
        out = self._resampler.resample_chunk(np.frombuffer(chunk.pcm, "<i2"), last=chunk.final)
        if chunk.final:
            self._resampler = None  # a flushed soxr stream is not reused
        data = out.astype("<i2").tobytes()
        while len(self._buf) + len(data) > self._cap and self._buf:
            self._room.clear()
            await self._room.wait()
            if chunk.turn_id <= self._stopped:
                return  # flushed while we waited
        self._buf += data
        if self._segments and self._segments[-1].turn_id == chunk.turn_id:
            self._segments[-1].left += len(data) // 2
        else:
            self._segments.append(_Played(chunk.turn_id, len(data) // 2))

    def flush(self, turn_id: int | None = None) -> None:
        """Drop the queued audio now; chunks of ``turn_id`` (default: the latest turn queued)
        and earlier arriving later are dropped too."""
        self._stopped = max(self._stopped, self._turn if turn_id is None else turn_id)
        self._buf.clear()
        self._segments.clear()
        self._resampler = None
        self._room.set()

    def played_ms(self, turn_id: int) -> float:
        """Milliseconds of turn ``turn_id``'s reply sent to the peer so far."""
        return self._played.get(turn_id, 0) * 1000.0 / OUT_RATE

    @property
    def queued_seconds(self) -> float:
        return len(self._buf) / 2 / OUT_RATE

    def _take_frame(self) -> bytes:
        n = FRAME_SAMPLES * 2
        data = bytes(self._buf[:n])
        del self._buf[:n]
        got = len(data) // 2
        while got and self._segments:
            seg = self._segments[0]
            used = min(seg.left, got)
            self._played[seg.turn_id] = self._played.get(seg.turn_id, 0) + used
            seg.left -= used
            got -= used
            if seg.left <= 0:
                self._segments.popleft()
        if len(self._buf) + n <= self._cap:
            self._room.set()
        if len(data) < n:
            data += bytes(n - len(data))
        return data

    async def recv(self) -> Any:
        """The next 20 ms frame, in real time (aiortc's sender calls this)."""
        import av

        if self._start is None:
            self._start = monotonic()
        else:
            self._pts += FRAME_SAMPLES
            wait = self._start + self._pts / OUT_RATE - monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = np.frombuffer(self._take_frame(), "<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = OUT_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, OUT_RATE)
        return frame


# --------------------------------------------------------------------------- one peer


class _ChannelSocket:
    """The data channel, shaped like the WebSocket the live protocol's code writes to
    (``send_text``, ``close``), so the server's own message handling serves both."""

    def __init__(self, peer: _Peer):
        self.peer = peer

    async def send_text(self, text: str) -> None:
        ch = self.peer.channel
        if ch is None or ch.readyState != "open":
            return  # an audio-only client has nothing to read it on
        while ch.bufferedAmount > _CHANNEL_HIGH_WATER:
            # A client that stops reading: the server's send watchdog ends it.
            await anyio.sleep(0.02)
        ch.send(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.peer.end(reason or "closed")


class _Peer:
    """One peer connection's state (the task that owns it is :meth:`WebRTCTransport._serve`)."""

    def __init__(self, client: str):
        self.client = client
        self.pc: Any = None
        self.channel: Any = None
        self.mic: Any = None
        self.track: Any = None
        self.changed = anyio.Event()  # set (and replaced) when the connection's state moves
        self.ended = anyio.Event()
        self.end_reason = ""
        self.last_input = monotonic()
        self.inbox_send: Any = None
        self.inbox_recv: Any = None
        self.dropped = 0

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()
            self.poke()

    def poke(self) -> None:
        ev, self.changed = self.changed, anyio.Event()
        ev.set()


class _Slot:
    """A reserved place for one peer (counted from the offer on, released exactly once)."""

    def __init__(self, transport: WebRTCTransport, client: str):
        self.t, self.client, self.done = transport, client, False
        transport._count += 1
        transport.server._per_client[client] += 1

    def release(self) -> None:
        if not self.done:
            from .agent_server import _release

            self.done = True
            self.t._count -= 1
            _release(self.t.server._per_client, self.client)


class _Refuse(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class WebRTCTransport:
    """``/v1/webrtc`` of one :class:`~omni_agent.server.agent_server.AgentServer`."""

    def __init__(self, server: AgentServer, config: WebRTCConfig):
        self.server = server
        self.config = config
        self._tg: Any = None
        self._count = 0
        self.peers: set[_Peer] = set()

    # ------------------------------------------------------------------ ownership

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Own every peer connection until cancelled (a task of the server's lifespan)."""
        try:
            async with task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None

    # ------------------------------------------------------------------ HTTP

    async def info(self, request: Request) -> Response:
        """``GET /v1/webrtc``: whether WebRTC is offered here, and its ICE servers."""
        on = self.config.enabled and webrtc_available()
        return JSONResponse({"enabled": on, "ice_servers": [{"urls": u} for u in self.config.ice_servers]
                             if on else [], "codec": "opus/48000"})

    async def offer(self, request: Request) -> Response:
        """``POST /v1/webrtc/offer``: the answer to an SDP offer, or a JSON error."""
        server = self.server
        as_json = request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"
        try:
            if not server._authorized(request.headers, request.query_params):
                raise _Refuse(401, "unauthorized", "missing or wrong token: send the header "
                              "'Authorization: Bearer <token>' or ?token=<token>")
            if not self.config.enabled:
                raise _Refuse(404, "webrtc_disabled", "WebRTC is turned off on this server: use "
                              "the WebSocket /v1/live")
            if not webrtc_available():
                raise _Refuse(501, "webrtc_unavailable", "WebRTC needs aiortc: pip install "
                              "'omni-agent[webrtc]' (or use the WebSocket /v1/live)")
            if server.draining or self._tg is None:
                raise _Refuse(503, "shutting_down", "the server is shutting down (or not started)")
            client = request.client.host if request.client else "unknown"
            if self._count >= self.config.max_peers:
                raise _Refuse(503, "server_full", f"{self.config.max_peers} WebRTC peers are connected, "
                              "the most this server takes: try again later")
            refusal = server.live_refusal(client)
            if refusal is not None:
                raise _Refuse(_REFUSAL_STATUS[refusal[0]], *refusal)
            try:
                live_cfg, _ = server._live_config(request.query_params)
            except (ConfigError, ValueError) as e:
                raise _Refuse(400, "bad_parameter", str(e)) from None
            if "session_id" in request.query_params:
                raise _Refuse(400, "bad_parameter", "session_id is not supported over WebRTC yet: "
                              "resume a conversation over /v1/live")
            body = await server._body(request, self.config.max_offer_bytes)
            offer = parse_offer(body, request.headers.get("content-type", ""),
                                max_bytes=self.config.max_offer_bytes)
            try:
                vad = await server.live_vad()
            except OmniAgentError as e:
                raise _Refuse(503, "no_vad", str(e)) from None
            live_cfg = live_cfg.replace(sample_rate=vad.sample_rate)
            slot = _Slot(self, client)
            try:
                answer = await self._tg.start(self._serve, offer, slot, live_cfg)
            except BaseException:
                slot.release()
                raise
        except OfferError as e:
            return server._error(e.status, e.code, e.message)
        except _Refuse as e:
            return server._error(e.status, e.code, e.message)
        except Exception as e:
            from .agent_server import _Reject

            if isinstance(e, _Reject):
                return server._error(e.status, e.code, e.message)
            raise
        if as_json:
            return JSONResponse({"sdp": answer, "type": "answer"}, 201)
        return Response(answer, 201, media_type="application/sdp")

    # ------------------------------------------------------------------ a peer's task

    async def _negotiate(self, peer: _Peer, offer: Any) -> str:
        from aiortc import (
            RTCConfiguration,
            RTCIceServer,
            RTCPeerConnection,
            RTCSessionDescription,
        )

        _restrict_ice_hosts()
        hosts = self.config.ice_hosts
        _ICE_HOSTS.set(list(hosts) if hosts else None)
        pc = peer.pc = RTCPeerConnection(RTCConfiguration(
            iceServers=[RTCIceServer(urls=u) for u in self.config.ice_servers]))
        peer.track = ReplyTrack.create(self.config.max_buffer_seconds)
        peer.inbox_send, peer.inbox_recv = anyio.create_memory_object_stream[Any](64)

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed", "disconnected"):
                peer.end(f"connection {pc.connectionState}")
            peer.poke()

        @pc.on("track")
        def _track(track: Any) -> None:
            if track.kind == "audio" and peer.mic is None:
                peer.mic = track
                peer.poke()

        @pc.on("datachannel")
        def _channel(ch: Any) -> None:
            if peer.channel is not None:
                return
            peer.channel = ch

            @ch.on("open")
            def _open() -> None:
                peer.poke()

            @ch.on("message")
            def _message(msg: Any) -> None:
                peer.last_input = monotonic()
                try:
                    peer.inbox_send.send_nowait(msg)
                except anyio.WouldBlock:
                    peer.dropped += 1  # said to the client by the reader
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    pass

            @ch.on("close")
            def _closed() -> None:
                peer.end("data channel closed")

            if ch.readyState == "open":
                peer.poke()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        except (ValueError, TypeError, KeyError, IndexError, AssertionError) as e:
            raise OfferError("bad_offer", f"the SDP offer could not be applied: {e}") from None
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise OfferError("no_audio", "the offer has no audio section")
        audio[0].sender.replaceTrack(peer.track)
        audio[0].direction = "sendrecv"
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)  # gathers the (host) candidates into the answer
        local = pc.localDescription.sdp
        if "opus/48000" not in local.lower():
            raise OfferError("unsupported_codec", "no Opus could be negotiated with this offer")
        return local

    async def _serve(self, offer: Any, slot: _Slot, live_cfg: Any, *,
                     task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """One peer connection from offer to close: its owner."""
        peer = _Peer(slot.client)
        self.peers.add(peer)
        try:
            answer = await self._negotiate(peer, offer)
            task_status.started(answer)
            await self._wait_connected(peer, offer.has_datachannel)
            if peer.ended.is_set():
                return
            await self._session(peer, live_cfg)
        finally:
            self.peers.discard(peer)
            slot.release()
            if peer.inbox_send is not None:
                peer.inbox_send.close()
                peer.inbox_recv.close()
            if peer.pc is not None:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await peer.pc.close()

    async def _wait_connected(self, peer: _Peer, want_channel: bool) -> None:
        with anyio.move_on_after(self.config.handshake_timeout) as scope:
            while not peer.ended.is_set():
                ok = peer.pc.connectionState == "connected" and peer.mic is not None
                if want_channel:
                    ok = ok and peer.channel is not None and peer.channel.readyState == "open"
                if ok:
                    return
                await peer.changed.wait()  # poked on every state change, and on end()
        if scope.cancelled_caught:
            self.server.metrics.rejected.labels("webrtc_handshake_timeout").inc()
            peer.end(f"no connection within {self.config.handshake_timeout:g} s")

    async def _session(self, peer: _Peer, live_cfg: Any) -> None:
        from .agent_server import _Conn

        server = self.server
        talker = server.agent.talker
        sid = secrets.token_hex(8)
        server._in_use.add(sid)
        session = server.agent.session(sid)
        conn = _Conn(_ChannelSocket(peer), LiveSession(session, vad=server._vad, config=live_cfg),  # type: ignore[arg-type]
                     peer.client, True)
        server._conns.add(conn)
        try:
            await conn.ws.send_text(json.dumps({
                "type": "ready", "session_id": sid, "transport": "webrtc",
                "input": {"format": "opus", "sample_rate": live_cfg.sample_rate, "channels": 1},
                "output": None if talker is None else {"format": "opus", "sample_rate": OUT_RATE,
                                                       "channels": 1, "framing": "webrtc"},
                "config": {k: getattr(live_cfg, k) for k in ("barge_in", "min_speech_ms",
                                                             "min_interrupt_ms", "end_silence_ms",
                                                             "threshold")},
                "limits": {"max_message_bytes": server.config.max_message_bytes,
                           "idle_timeout_s": self.config.idle_timeout},
            }))
            # The peer's task owns the session's tasks: the live session's turns, the
            # microphone reader, the data-channel reader and the sender. Whichever ends the
            # peer (ICE, close, idle, drain) cancels and awaits them all.
            async with conn.live, task_group() as tg:
                conn.scope = tg.cancel_scope
                tg.start_soon(self._mic_loop, peer, conn)
                tg.start_soon(self._channel_loop, peer, conn)
                tg.start_soon(self._send_loop, peer, conn)
                tg.start_soon(self._idle_watch, peer)
                await peer.ended.wait()
                tg.cancel_scope.cancel()
        finally:
            server._conns.discard(conn)
            server._in_use.discard(sid)
            await server.agent.aclose_session(sid, forget=server.config.forget_on_close
                                              and not server.draining)

    async def _idle_watch(self, peer: _Peer) -> None:
        limit = self.config.idle_timeout
        while True:
            await anyio.sleep(min(1.0, limit / 4))
            if monotonic() - peer.last_input > limit:
                self.server.metrics.rejected.labels("webrtc_idle").inc()
                peer.end(f"idle for {limit:g} s")
                return

    async def _mic_loop(self, peer: _Peer, conn: Any) -> None:
        """Microphone frames (Opus, decoded by aiortc) -> 16 kHz mono int16 -> the VAD."""
        import av
        from aiortc.mediastreams import MediaStreamError

        live: LiveSession = conn.live
        resampler = av.AudioResampler(format="s16", layout="mono", rate=live.config.sample_rate)
        try:
            while True:
                frame = await peer.mic.recv()
                peer.last_input = monotonic()
                for f in resampler.resample(frame):
                    n = len(live.barge_in_times)
                    live.feed(f.to_ndarray().tobytes())
                    if len(live.barge_in_times) > n:
                        peer.track.flush()  # stop the voice now, not when the sender gets to it
        except MediaStreamError:
            peer.end("microphone track ended")
        except AudioInputError as e:  # cannot happen with s16 frames; never silent
            log.warning("webrtc microphone audio refused: %s", e)
            peer.end("bad microphone audio")

    async def _channel_loop(self, peer: _Peer, conn: Any) -> None:
        """Data-channel messages: the live protocol's JSON commands."""
        server, limit = self.server, self.server.config.max_message_bytes
        dropped = 0
        async for msg in peer.inbox_recv:
            if peer.dropped > dropped:
                dropped = peer.dropped
                if await server._protocol_error(conn, "too_fast", "messages arrive faster than they "
                                                "are handled: some were dropped"):
                    return peer.end("too many malformed messages")
            if not isinstance(msg, str):
                if await server._protocol_error(conn, "bad_message", "binary data-channel messages are "
                                                "not accepted: send audio on the audio track"):
                    return peer.end("too many malformed messages")
                continue
            if len(msg) > limit:
                if await server._protocol_error(conn, "message_too_large", f"a message of {len(msg)} "
                                                f"characters is over the limit of {limit}"):
                    return peer.end("too many malformed messages")
                continue
            try:
                await server._command(conn, msg)
            except (OmniAgentError, ValueError) as e:
                if await server._protocol_error(conn, getattr(e, "code", "bad_message"), str(e)):
                    return peer.end("too many malformed messages")

    async def _send_loop(self, peer: _Peer, conn: Any) -> None:
        """The live session's messages: audio to the track, the rest to the data channel."""
        from .agent_server import _dumps, _is_disconnect

        m, live, track, ws = self.server.metrics, conn.live, peer.track, conn.ws
        try:
            async for msg in live.messages():
                if type(msg) is AudioChunk:
                    await track.push(msg)
                    continue
                m.observe_live(msg, "webrtc")
                if isinstance(msg, dict):
                    if msg.get("type") == "stop_playback":
                        track.flush(msg["turn_id"])
                        # We know what was sent: memory keeps what the peer was played.
                        live.report_playback(msg["turn_id"], track.played_ms(msg["turn_id"]), True)
                    d = msg
                else:
                    d = event_to_dict(msg)
                    if type(msg) is UserTurn:
                        d["text"] = msg.text
                    elif type(msg) is TurnEnd:
                        # The track's clock, not the Talker's, says when playback ends.
                        live.report_playback(msg.turn_id, track.played_ms(msg.turn_id), False)
                conn.sending = monotonic()
                await ws.send_text(_dumps(d))
                conn.sending = 0.0
        except Exception as e:
            if not _is_disconnect(e):
                log.exception("webrtc sender failed")
                m.errors.labels("sender").inc()
        peer.end("sender ended")
