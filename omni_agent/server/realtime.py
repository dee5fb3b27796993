"""The OpenAI Realtime-compatible WebSocket of the agent server: ``GET /v1/realtime``.

An existing Realtime app (the official ``openai`` SDK's ``client.realtime.connect()``, or
``client.beta.realtime.connect()``) connects with its base URL pointed at the agent
server and talks to the same :class:`~omni_agent.live.LiveSession` as ``/v1/live``: the
server's VAD finds the user's turns, barge-in cancels Thinker, tools and Talker, memory is
cut to what was heard, and every response's audio has passed the bus (safety, PII, speech
shaping) before it is sent. docs/api-realtime.md lists what is supported.

This module is the transport only: admission (the server's token, session limits, the
same Host/Origin checks as every route), one task reading the socket and one writing it,
both owned by the connection's task group. The protocol itself — events in, events out —
is :class:`~omni_agent.server.realtime_protocol.RealtimeProtocol`, sans-IO.

Dialect: a client that sends ``OpenAI-Beta: realtime=v1`` (the SDK's ``beta`` client
does) gets the beta event names and session shape; any other gets the GA ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
from time import monotonic
from typing import TYPE_CHECKING, Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from ..errors import ConfigError, OmniAgentError
from ..live import LiveSession
from .realtime_protocol import (
    Cancel,
    Command,
    Configure,
    DropSpeech,
    EndTurn,
    Feed,
    Instruct,
    RealtimeLimits,
    RealtimeProtocol,
    Submit,
    Truncate,
)

if TYPE_CHECKING:
    from .agent_server import AgentServer

__all__ = ["serve_realtime", "realtime_dialect"]

log = logging.getLogger(__name__)

_MODEL = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")
_PARAMS = {"model", "token"}


def realtime_dialect(headers: Any) -> str:
    """``"beta"`` when the client asked for the beta protocol (``OpenAI-Beta: realtime=v1``),
    else ``"ga"``."""
    beta = headers.get("openai-beta", "") or ""
    return "beta" if "realtime=v1" in beta.replace(" ", "").lower() else "ga"


async def _refuse(server: "AgentServer", ws: WebSocket, close_code: int, code: str, message: str) -> None:
    """Accept, say why in a Realtime ``error`` event, close."""
    server.metrics.rejected.labels(code).inc()
    await ws.accept()
    proto = RealtimeProtocol(dialect="ga")
    with contextlib.suppress(Exception):
        await ws.send_text(json.dumps(proto.error(code, message)))
        await ws.close(close_code, f"{code}: {message}"[:120])


async def serve_realtime(server: "AgentServer", ws: WebSocket) -> None:
    """One Realtime connection, from admission to close (the route's handler)."""
    from .agent_server import LIVE_REFUSAL_CLOSE, WS_POLICY, WS_TRY_LATER, _Conn

    client = ws.client.host if ws.client else "unknown"
    if not server._authorized(ws.headers, ws.query_params):
        await _refuse(server, ws, WS_POLICY, "invalid_api_key",
                      "missing or wrong token: send the agent server's token as the API key "
                      "('Authorization: Bearer <token>') or as ?token=<token>")
        return
    refusal = server.live_refusal(client)
    if refusal is not None:
        await _refuse(server, ws, LIVE_REFUSAL_CLOSE[refusal[0]], *refusal)
        return
    cfg = server.config
    q = ws.query_params
    unknown = set(q) - _PARAMS
    if unknown:
        await _refuse(server, ws, WS_POLICY, "invalid_parameter",
                      f"unknown parameter(s) {sorted(unknown)[:5]}: /v1/realtime takes model (and token)")
        return
    model = q.get("model", "omni-agent")
    if not _MODEL.match(model):
        await _refuse(server, ws, WS_POLICY, "invalid_parameter",
                      "model must be 1-128 letters, digits or _.:/-")
        return
    try:
        vad = await server.live_vad()
    except OmniAgentError as e:
        await _refuse(server, ws, WS_TRY_LATER, "no_vad", str(e))
        return
    live_cfg = cfg.live.replace(sample_rate=vad.sample_rate)
    talker = server.agent.talker
    proto = RealtimeProtocol(
        dialect=realtime_dialect(ws.headers),  # type: ignore[arg-type]
        model=model, live=live_cfg, input_rate=vad.sample_rate, has_talker=talker is not None,
        limits=RealtimeLimits(max_message_bytes=cfg.max_message_bytes,
                              max_buffer_seconds=min(300.0, cfg.max_audio_seconds)))
    sid = secrets.token_hex(8)
    conn = _Conn(ws, LiveSession(server.agent.session(sid), vad=vad, config=live_cfg), client, False)
    link = _Link(server, conn, proto)
    # As /v1/live: forgotten with its socket, unless the server drains (it may resume elsewhere).
    await server.hold_live(conn, sid, sender=link.send, receive_loop=link.receive_loop,
                           forget=cfg.forget_on_close, what="realtime", hello=proto.session_created())


class _Link:
    """Moves one connection's bytes: socket -> protocol -> live session, and back."""

    def __init__(self, server: "AgentServer", conn: Any, proto: RealtimeProtocol):
        self.server, self.conn, self.proto = server, conn, proto
        self.live: LiveSession = conn.live

    # ------------------------------------------------------------------ in

    async def receive_loop(self) -> None:
        from .agent_server import WS_INTERNAL, _is_disconnect

        try:
            await self._receive()
        except WebSocketDisconnect:
            pass
        except Exception as e:  # noqa: BLE001 - reported to the client as the close reason
            if not _is_disconnect(e):
                log.exception("realtime receiver failed")
                self.conn.close_reason = (WS_INTERNAL, f"server error while receiving: {type(e).__name__}")
                self.server.metrics.errors.labels("receiver").inc()

    async def _post(self, events: list[dict[str, Any]]) -> None:
        if events:
            # Through the live session's outbox: one writer, and our answers stay in order
            # with the session's own events (a cancelled response's end after its speech_started).
            await self.live.post({"type": "realtime", "events": events})

    async def _receive(self) -> None:
        from .agent_server import WS_POLICY

        ws, proto, conn = self.conn.ws, self.proto, self.conn
        limit = self.server.config.max_protocol_errors
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("text")
            if data is None:
                data = msg.get("bytes")
                if data is None:
                    continue
            got = proto.receive(data)
            for ev in got.events:
                if ev["type"] == "error":
                    conn.errors += 1
                    self.server.metrics.rejected.labels(ev["error"]["code"]).inc()
            await self._post(got.events)
            for cmd in got.commands:
                await self._apply(cmd)
            if conn.errors >= limit:
                # Said directly (bounded by send_timeout): the session ends right after.
                await self.server._send_json(conn, proto.error(
                    "too_many_errors", f"{conn.errors} refused events: closing the session"))
                conn.close_reason = (WS_POLICY, "too many refused events")
                return

    async def _apply(self, cmd: Command) -> None:
        live, proto = self.live, self.proto
        if isinstance(cmd, Feed):
            n = len(live.barge_in_times)
            live.feed(cmd.pcm)
            if len(live.barge_in_times) > n:  # the VAD heard the user over the reply
                await self._post(proto.barge_in("turn_detected", self._running_turn()))
        elif isinstance(cmd, Submit):
            if self.server.draining:
                await self._post(proto.barge_in("shutting_down", None)
                                 + [proto.error("shutting_down", "the server is shutting down: no new "
                                                "responses")])
                return
            try:
                live.submit(cmd.turn)
            except OmniAgentError as e:
                await self._post(proto.barge_in("failed", None) + [proto.error("server_error", str(e),
                                                                                kind="server_error")])
        elif isinstance(cmd, Cancel):
            orphan = self._running_turn()
            live.barge_in("client")
            await self._post(proto.barge_in("client_cancelled", orphan))
        elif isinstance(cmd, EndTurn):
            if not live.end_turn():
                self.conn.errors += 1
                await self._post([proto.commit_failed(cmd.event_id)])
        elif isinstance(cmd, DropSpeech):
            live.drop_speech()
        elif isinstance(cmd, Truncate):
            live.report_playback(cmd.turn_id, cmd.played_ms, True, cut=True)
        elif isinstance(cmd, Instruct):
            # The agent's system prompt for this session's next turns; "" restores the agent's.
            live.session.instructions = cmd.text or None
        elif isinstance(cmd, Configure):
            try:
                live.config = live.config.replace(**cmd.changes).check()
            except ConfigError as e:  # checked by the protocol already; never silent
                await self._post([proto.error("invalid_value", str(e))])

    def _running_turn(self) -> int | None:
        """The agent turn under way now (its events are ignored once its response is ended
        early), or None while the live session is still before it (ASR)."""
        s = self.live.session
        return s.turn_id if s.busy else None

    # ------------------------------------------------------------------ out

    async def send(self) -> None:
        """Forward the live session's messages to the client (hold_live guards it)."""
        from .agent_server import _dumps

        conn, m, proto = self.conn, self.server.metrics, self.proto
        ws = conn.ws
        async for msg in self.live.messages():
            m.observe_live(msg, "realtime")
            events = proto.translate(msg)
            for ev in events:
                conn.sending = monotonic()
                await ws.send_text(_dumps(ev))
                conn.sending = 0.0
            if events:
                # Let other sessions run between chunks: under load every session's first
                # audio goes out before anyone's tenth chunk.
                await asyncio.sleep(0)
