"""Phone calls on the agent server: a Twilio Media Streams WebSocket, ``GET /v1/twilio``.

Point a Twilio number's voice webhook at TwiML like::

    <Response><Connect><Stream url="wss://agent.example.com/v1/twilio/<token>"/></Connect></Response>

and each call becomes a :class:`~omni_agent.live.LiveSession` like any ``/v1/live``
client: the server's VAD finds the caller's turns, barge-in cancels Thinker, tools and
Talker (and tells Twilio to ``clear`` the audio it holds), memory is cut to what the caller
heard (Twilio echoes our ``mark``\\ s as it plays), and every reply passed the bus (safety,
PII, speech shaping) before it was spoken. docs/phone.md tells how to set it up.

This module is the transport only: admission (the token, the optional
``X-Twilio-Signature`` check, session limits), one task reading the socket and one writing
it (pacing reply audio to at most ``max_ahead_seconds`` ahead of real time), both owned by
the call's task group. The protocol — messages in, messages out — is
:class:`~omni_agent.server.twilio_protocol.TwilioProtocol`, sans-IO.

Auth: Twilio cannot send our ``Authorization`` header, and its ``<Stream url>`` takes no
query string, so the server's token may be the last path segment
(``/v1/twilio/<token>``); ``?token=`` and the header work too, for other clients. With
``TwilioConfig.auth_token`` set, the handshake must also carry a valid
``X-Twilio-Signature``: base64 HMAC-SHA1, keyed with the account's auth token, of the URL
Twilio dialled (Twilio's documented webhook signature, computed here with :mod:`hmac` —
the ``twilio`` package is not needed for one HMAC).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import secrets
from time import monotonic
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import BaseModel, ConfigDict, Field
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import OmniAgentError
from ..events import ErrorEvent, UserTurn
from ..live import LiveSession
from .twilio_protocol import (
    PHONE_RATE,
    Command,
    Dtmf,
    Feed,
    Hangup,
    Heard,
    Outgoing,
    Started,
    TwilioLimits,
    TwilioProtocol,
)

if TYPE_CHECKING:
    from .agent_server import AgentServer

__all__ = ["TwilioConfig", "serve_twilio", "twilio_signature"]

log = logging.getLogger(__name__)


class TwilioConfig(BaseModel):
    """Phone calls over Twilio Media Streams (``ServerConfig.twilio``).

    * ``enabled`` — serve ``/v1/twilio`` at all.
    * ``auth_token`` — the Twilio account's auth token: when set, a handshake without a
      valid ``X-Twilio-Signature`` is refused.
    * ``public_url`` — the ``wss://host`` Twilio dials (behind a reverse proxy the server
      sees another scheme and host, but the signature is over the public URL).
    * ``start_timeout`` — seconds Twilio has to send ``start`` after the handshake.
    * ``limits`` — :class:`~omni_agent.server.twilio_protocol.TwilioLimits`.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    auth_token: str | None = Field(None, min_length=1)
    public_url: str | None = Field(None, pattern=r"^wss?://[^/?#\s]+$")
    start_timeout: float = Field(10.0, gt=0, le=120)
    limits: TwilioLimits = Field(default_factory=TwilioLimits)


def twilio_signature(auth_token: str, url: str) -> str:
    """Twilio's request signature of a WebSocket handshake (a GET: no form parameters):
    base64 of HMAC-SHA1 over the full URL, keyed with the account's auth token."""
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def _signed_url(ws: WebSocket, public_url: str | None) -> str:
    url = ws.url
    base = public_url or f"{url.scheme}://{url.netloc}"
    return base + url.path + (f"?{url.query}" if url.query else "")


def _signature_ok(ws: WebSocket, cfg: TwilioConfig) -> bool:
    given = ws.headers.get("x-twilio-signature", "")
    if not given or cfg.auth_token is None:
        return False
    want = twilio_signature(cfg.auth_token, _signed_url(ws, cfg.public_url))
    return hmac.compare_digest(given.encode(), want.encode())


async def _refuse(server: AgentServer, ws: WebSocket, code: int, err: str, message: str) -> None:
    """Twilio has no error message to read: say why in the close reason (and the log)."""
    log.warning("phone stream refused: %s: %s", err, message)
    server.metrics.rejected.labels(err).inc()
    await ws.accept()
    with contextlib.suppress(Exception):
        await ws.close(code, f"{err}: {message}"[:120])


def _token_ok(server: AgentServer, ws: WebSocket) -> bool:
    token = server.config.token
    in_path = ws.path_params.get("token")
    if token is None:
        return True
    if in_path is not None:
        return hmac.compare_digest(str(in_path).encode(), token.encode())
    return server._authorized(ws.headers, ws.query_params)


async def serve_twilio(server: AgentServer, ws: WebSocket) -> None:
    """One phone call's Media Stream, from admission to close (the route's handler)."""
    from .agent_server import LIVE_REFUSAL_CLOSE, WS_POLICY, WS_TRY_LATER, _Conn

    client = ws.client.host if ws.client else "unknown"
    cfg = server.config
    tcfg: TwilioConfig = cfg.twilio
    if not tcfg.enabled:
        await _refuse(server, ws, WS_POLICY, "disabled", "phone calls are not enabled on this server")
        return
    if not _token_ok(server, ws):
        await _refuse(server, ws, WS_POLICY, "unauthorized", "missing or wrong token: dial "
                      "wss://<host>/v1/twilio/<token> (Twilio's <Stream url> takes no query string)")
        return
    if tcfg.auth_token is not None and not _signature_ok(ws, tcfg):
        await _refuse(server, ws, WS_POLICY, "bad_signature", "missing or wrong X-Twilio-Signature "
                      "(behind a proxy, set twilio.public_url to the wss:// host Twilio dials)")
        return
    refusal = server.live_refusal(client, noun="call")
    if refusal is not None:
        await _refuse(server, ws, LIVE_REFUSAL_CLOSE[refusal[0]], *refusal)
        return
    try:
        vad = await server.live_vad()  # the live session's own stream resamples to its rate
    except OmniAgentError as e:
        await _refuse(server, ws, WS_TRY_LATER, "no_vad", str(e))
        return
    if server.agent.talker is None:
        await _refuse(server, ws, WS_POLICY, "no_talker", "this agent has no Talker: a phone call "
                      "needs one to answer")
        return
    limits = tcfg.limits.model_copy(update={
        "max_message_bytes": min(tcfg.limits.max_message_bytes, cfg.max_message_bytes),
        "max_errors": min(tcfg.limits.max_errors, cfg.max_protocol_errors)})
    proto = TwilioProtocol(limits)
    # The live session takes the line's 8 kHz; its own soxr stream resamples for the VAD.
    live_cfg = cfg.live.replace(sample_rate=PHONE_RATE)
    sid = "call-" + secrets.token_hex(8)
    conn = _Conn(ws, LiveSession(server.agent.session(sid), vad=vad, config=live_cfg), client, False)
    call = _Call(server, conn, proto, tcfg)
    await server.hold_live(conn, sid, sender=call.send, receive_loop=call.receive_loop,
                           forget=cfg.forget_on_close, what="phone stream")


class _Pacer:
    """Sends reply audio no more than ``ahead`` seconds before the caller hears it.

    Each turn's clock starts at its first frame; when the Talker falls behind (Twilio's
    buffer ran dry) the clock moves with it. A barge-in wakes a waiting sender at once."""

    def __init__(self, ahead_s: float):
        self.ahead = ahead_s
        self.turn: int | None = None
        self.t0 = 0.0
        self.interrupt = anyio.Event()

    async def wait(self, turn_id: int, at_ms: float) -> bool:
        """Wait until the frame at ``at_ms`` of turn ``turn_id`` may go; False: a barge-in
        came meanwhile (drop it)."""
        now = monotonic()
        if self.turn != turn_id:
            self.turn, self.t0 = turn_id, now - at_ms / 1000.0
        plays_at = self.t0 + at_ms / 1000.0
        if plays_at < now:
            self.t0 += now - plays_at  # an underrun: playback resumes with this frame
            plays_at = now
        delay = plays_at - self.ahead - now
        if delay > 0:
            with anyio.move_on_after(delay):
                await self.interrupt.wait()
        return not self.interrupt.is_set()

    def barged(self) -> None:
        self.interrupt.set()

    def cleared(self) -> None:
        self.interrupt = anyio.Event()
        self.turn = None


class _Call:
    """Moves one call's bytes: socket -> protocol -> live session, and back."""

    def __init__(self, server: AgentServer, conn: Any, proto: TwilioProtocol, cfg: TwilioConfig):
        self.server, self.conn, self.proto, self.cfg = server, conn, proto, cfg
        self.live: LiveSession = conn.live
        self.pacer = _Pacer(proto.limits.max_ahead_seconds)
        self.started = anyio.Event()

    # ------------------------------------------------------------------ in

    async def receive_loop(self) -> None:
        from .agent_server import WS_INTERNAL, WS_POLICY, _is_disconnect

        try:
            with anyio.move_on_after(self.cfg.start_timeout) as scope:
                await self._receive(until_started=True)
            if scope.cancelled_caught:
                self._fatal(WS_POLICY, "no_start", f"no start message within {self.cfg.start_timeout:g} s")
                return
            if self.conn.close_reason is None and not self.proto.stopped:
                await self._receive(until_started=False)
        except WebSocketDisconnect:
            pass
        except Exception as e:
            if not _is_disconnect(e):
                log.exception("phone stream receiver failed")
                self.conn.close_reason = (WS_INTERNAL, f"server error while receiving: {type(e).__name__}")
                self.server.metrics.errors.labels("receiver").inc()

    def _fatal(self, code: int, err: str, message: str) -> None:
        log.warning("phone stream %s closed: %s: %s", self.proto.stream_sid or "(not started)", err, message)
        self.server.metrics.rejected.labels(err).inc()
        self.conn.close_reason = (code, f"{err}: {message}")

    async def _receive(self, *, until_started: bool) -> None:
        from .agent_server import WS_POLICY

        ws, proto = self.conn.ws, self.proto
        while not (until_started and proto.started):
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                self.conn.close_reason = self.conn.close_reason or (1000, "")
                proto.stopped = True
                return
            data = msg.get("text")
            if data is None:
                data = msg.get("bytes")
                if data is None:
                    continue
            got = proto.receive(data, monotonic())
            if got.error is not None:
                e = got.error
                if e.fatal:
                    self._fatal(WS_POLICY, e.code, e.message)
                    return
                log.warning("phone stream %s: %s (ignored)", proto.stream_sid or "(not started)", e.reason)
                self.server.metrics.rejected.labels(e.code).inc()
                continue
            for cmd in got.commands:
                if self._apply(cmd):
                    return

    def _apply(self, cmd: Command) -> bool:
        """Apply one command; True when the call is over."""
        live = self.live
        if isinstance(cmd, Feed):
            n = len(live.barge_in_times)
            live.feed(cmd.pcm)
            if len(live.barge_in_times) > n:  # the caller spoke over the reply
                self.pacer.barged()
        elif isinstance(cmd, Heard):
            live.report_playback(cmd.turn_id, cmd.played_ms, cmd.final)
        elif isinstance(cmd, Started):
            log.info("phone stream %s started (call %s, parameters %s)", cmd.stream_sid,
                     cmd.call_sid, sorted(cmd.custom_parameters)[:8])
            self.started.set()
        elif isinstance(cmd, Dtmf):
            log.info("phone stream %s: key %s pressed (DTMF is not acted on)", self.proto.stream_sid,
                     cmd.digit)
        elif isinstance(cmd, Hangup):
            log.info("phone stream %s stopped", self.proto.stream_sid)
            self.conn.close_reason = (1000, "stream stopped")
            return True
        return False

    # ------------------------------------------------------------------ out

    async def send(self) -> None:
        """Forward the live session's messages to the client (hold_live guards it)."""
        from .agent_server import _dumps

        conn, m, proto, pacer = self.conn, self.server.metrics, self.proto, self.pacer
        async for msg in self.live.messages():
            m.observe_live(msg, "twilio")
            if isinstance(msg, dict):
                if msg.get("type") == "error":
                    log.warning("phone stream %s: %s", proto.stream_sid, msg.get("message"))
            elif isinstance(msg, UserTurn):
                log.info("phone stream %s: caller said %r", proto.stream_sid, msg.text[:200])
            elif isinstance(msg, ErrorEvent):
                log.warning("phone stream %s: turn error: %s", proto.stream_sid, msg.message)
            out: Outgoing = proto.translate(msg)
            if out.report is not None:
                self.live.report_playback(out.report.turn_id, out.report.played_ms, out.report.final)
            for w in out.wire:
                if w.at_ms is not None and w.turn_id is not None:
                    if not await pacer.wait(w.turn_id, w.at_ms):
                        break  # a barge-in: the rest of this chunk is never wanted
                conn.sending = monotonic()
                await conn.ws.send_text(_dumps(w.msg))
                conn.sending = 0.0
            if isinstance(msg, dict) and msg.get("type") == "stop_playback":
                pacer.cleared()  # the clear went out: the next reply's audio may go
            await asyncio.sleep(0)  # other calls' audio between chunks
