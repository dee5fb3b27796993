"""``WS /v1/live``: a live session over a WebSocket (docs/protocol.md).

The protocol itself (messages in, frames out) is :class:`~.live_protocol.LiveProtocol`,
sans-IO; this module is the socket around it: the handshake and its refusals, the
receive loop that turns each command into a call on the
:class:`~omni_agent.live.LiveSession`, and the sender that forwards the session's
messages. :class:`LiveConnection` is one connection of any live transport (the
Realtime, Twilio and WebRTC ones too).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from time import monotonic
from typing import TYPE_CHECKING, Any, Mapping

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect

from .. import otel
from ..errors import AudioInputError, ConfigError, OmniAgentError
from ..events import AudioChunk
from ..live import LiveConfig, LiveSession
from .live_protocol import (
    Audio,
    Command,
    ConfigureMessage,
    EndTurnMessage,
    InterruptMessage,
    LiveProtocol,
    PingMessage,
    PlaybackMessage,
    ProtocolError,
    TextMessage,
    apply_settings,
    parse_connect,
)
from .sockets import LIVE_REFUSAL_CLOSE, WS_INTERNAL, WS_POLICY, WS_TRY_LATER, dumps, is_disconnect

if TYPE_CHECKING:
    from .agent_server import AgentServer

__all__ = ["LiveConnection", "LiveEndpoint", "refusal_code"]

log = logging.getLogger(__name__)


class LiveConnection:
    """One live connection (a WebSocket, or a WebRTC data channel that acts like one).

    ``binary_audio`` — reply audio as binary frames (else base64 JSON); ``max_message_bytes``
    — the largest client frame its protocol takes (None: the transport checks sizes).
    """

    __slots__ = ("ws", "live", "client", "proto", "errors", "closing", "close_reason", "sending", "scope")

    def __init__(self, ws: WebSocket, live: LiveSession, client: str, binary_audio: bool, *,
                 max_message_bytes: int | None = None):
        self.ws = ws
        self.live = live
        self.client = client
        #: The live protocol of this connection (sans-IO: messages in, frames out).
        self.proto = LiveProtocol(binary_audio=binary_audio, max_message_bytes=max_message_bytes)
        #: Malformed messages so far.
        self.errors = 0
        self.closing = False
        #: (code, reason) the socket is closed with when the connection ends.
        self.close_reason: tuple[int, str] | None = None
        #: When the send under way started (monotonic seconds); 0.0 when none is.
        self.sending = 0.0
        #: The connection's cancel scope (the send watchdog ends a stalled connection with it).
        self.scope: Any = None

    @property
    def binary_audio(self) -> bool:
        return self.proto.binary_audio


def refusal_code(e: Exception) -> str:
    """The ``error`` message's code for a command that failed with ``e``."""
    if isinstance(e, ProtocolError):
        return e.code
    return "bad_audio" if isinstance(e, AudioInputError) else "bad_message"


class LiveEndpoint:
    """``/v1/live`` of one :class:`~omni_agent.server.agent_server.AgentServer`."""

    def __init__(self, server: "AgentServer"):
        self.server = server

    # ------------------------------------------------------------------ handshake

    def connect_config(self, query: Mapping[str, str]) -> tuple[LiveConfig, bool]:
        """The session's live config and whether audio goes out as binary frames, from the
        connect URL's query. Raises :class:`ConfigError` naming the bad parameter."""
        params, config = parse_connect(query, self.server.config.live)
        return config, params.audio_out == "binary"

    async def refuse(self, ws: WebSocket, code: int, err: str, message: str) -> None:
        """Accept, say why in an ``error`` message, and close with ``code``."""
        self.server.metrics.rejected.labels(err).inc()
        await ws.accept()
        with contextlib.suppress(Exception):
            await ws.send_text(LiveProtocol.error(err, message))
            await ws.close(code, f"{err}: {message}"[:120])

    async def handle(self, ws: WebSocket) -> None:
        """One ``/v1/live`` connection, from the handshake to its close."""
        server = self.server
        client = ws.client.host if ws.client else "unknown"
        if not server._authorized(ws.headers, ws.query_params):
            await self.refuse(ws, WS_POLICY, "unauthorized", "missing or wrong token: connect with "
                              "?token=<token> or the header 'Authorization: Bearer <token>'")
            return
        refusal = server.live_refusal(client)
        if refusal is not None:
            await self.refuse(ws, LIVE_REFUSAL_CLOSE[refusal[0]], *refusal)
            return
        try:
            params, live_cfg = parse_connect(ws.query_params, server.config.live)
        except ConfigError as e:
            await self.refuse(ws, WS_POLICY, "bad_parameter", str(e))
            return
        try:
            vad = await server.live_vad()
        except OmniAgentError as e:
            await self.refuse(ws, WS_TRY_LATER, "no_vad", str(e))
            return
        # ?session_id= resumes a conversation (after a reconnect, maybe to another replica
        # sharing the history store); such a session is the client's: its socket closing
        # does not forget it. A server-made id is forgotten with its socket, unless the
        # server is draining (its client may resume on another replica).
        resumed = params.session_id
        if resumed is not None and resumed in server._in_use:
            await self.refuse(ws, WS_POLICY, "session_busy", f"session {resumed!r} is busy here (a turn "
                              "is running or it is live on another socket): close that one first")
            return
        sid = resumed or secrets.token_hex(8)
        binary = params.audio_out == "binary"
        conn = LiveConnection(ws, LiveSession(server.agent.session(sid), vad=vad, config=live_cfg), client,
                              binary, max_message_bytes=server.config.max_message_bytes)
        talker = server.agent.talker
        hello = LiveProtocol.ready(
            session_id=sid, config=live_cfg, output_rate=None if talker is None else talker.sample_rate,
            binary_audio=binary, limits={"max_message_bytes": server.config.max_message_bytes,
                                         "max_audio_seconds": server.config.max_audio_seconds})
        parent = otel.attach_incoming(ws.headers)  # the handshake's traceparent: its turns' parent
        try:
            await server.hold_live(conn, sid, sender=functools.partial(self.sender, conn),
                                   receive_loop=functools.partial(self.receive_loop, conn),
                                   forget=server.config.forget_on_close and resumed is None,
                                   what="live", hello=hello)
        finally:
            otel.detach(parent)

    # ------------------------------------------------------------------ client -> server

    async def receive_loop(self, conn: LiveConnection) -> None:
        """Receive until the client goes away; a failure closes the socket with 1011."""
        try:
            await self._receive(conn)
        except WebSocketDisconnect:
            pass
        except Exception as e:  # noqa: BLE001 - reported to the client as the close reason
            if not is_disconnect(e):
                log.exception("live receiver failed")
                conn.close_reason = (WS_INTERNAL, f"server error while receiving: {type(e).__name__}")
                self.server.metrics.errors.labels("receiver").inc()

    async def _receive(self, conn: LiveConnection) -> None:
        ws, proto = conn.ws, conn.proto
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data, text = msg.get("bytes"), msg.get("text")
            try:
                if data is not None:
                    await self.apply(conn, proto.receive_bytes(data))
                elif text is not None:
                    await self.apply(conn, proto.receive_text(text))
            except (OmniAgentError, ValueError) as e:
                if await self.protocol_error(conn, refusal_code(e), str(e)):
                    return

    async def command(self, conn: LiveConnection, text: str) -> None:
        """One JSON message of the protocol, parsed and carried out. Raises
        :class:`ProtocolError` (or :class:`AudioInputError`) for a bad one."""
        await self.apply(conn, conn.proto.receive_text(text))

    async def apply(self, conn: LiveConnection, cmd: Command) -> None:
        """Carry out one client command on the connection's live session."""
        live = conn.live
        if isinstance(cmd, Audio):
            live.feed(cmd.pcm)
        elif isinstance(cmd, TextMessage):
            if self.server.draining:
                raise ProtocolError("shutting_down", "the server is shutting down: no new turns")
            live.submit_text(cmd.text)
        elif isinstance(cmd, PlaybackMessage):
            live.report_playback(cmd.turn_id, float(cmd.played_ms), cmd.final)
        elif isinstance(cmd, InterruptMessage):
            live.barge_in("client")
        elif isinstance(cmd, EndTurnMessage):
            live.end_turn()
        elif isinstance(cmd, ConfigureMessage):
            try:
                live.config = apply_settings(live.config, cmd.changes())
            except ConfigError as e:  # a value out of range: the old settings stay
                raise ProtocolError("bad_message", f"configure message: {e}") from None
            await self.send_text(conn, LiveProtocol.configured(live.config))
        elif isinstance(cmd, PingMessage):
            await self.send_text(conn, LiveProtocol.pong(cmd.t))

    async def protocol_error(self, conn: LiveConnection, code: str, message: str) -> bool:
        """Tell the client what was wrong; True when it has now sent too many bad messages
        (then it is told so, and its socket closed with 1008)."""
        server = self.server
        conn.errors += 1
        server.metrics.rejected.labels(code).inc()
        await self.send_text(conn, LiveProtocol.error(code, message))
        if conn.errors >= server.config.max_protocol_errors:
            await self.send_text(conn, LiveProtocol.error("too_many_errors",
                                                          "too many malformed messages: closing"))
            with contextlib.suppress(Exception):
                await conn.ws.close(WS_POLICY, "too many malformed messages")
            conn.closing = True
            return True
        return False

    # ------------------------------------------------------------------ server -> client

    async def send_text(self, conn: LiveConnection, text: str) -> None:
        """A control message from the receiver's side (errors, pong). A client that cannot
        take it is being closed anyway: failures end here, bounded in time."""
        with contextlib.suppress(Exception):
            with anyio.fail_after(self.server.config.send_timeout):
                await conn.ws.send_text(text)

    async def send_json(self, conn: LiveConnection, obj: dict[str, Any]) -> None:
        """:meth:`send_text` of a JSON object."""
        await self.send_text(conn, dumps(obj))

    async def sender(self, conn: LiveConnection) -> None:
        """Forward the live session's messages to the client, and count them in metrics.
        ``conn.sending`` says since when a send is under way (the watchdog reads it)."""
        ws, m, proto = conn.ws, self.server.metrics, conn.proto
        async for msg in conn.live.messages():
            if type(msg) is AudioChunk:
                frame = proto.audio(msg)
                conn.sending = monotonic()
                if isinstance(frame, bytes):
                    await ws.send_bytes(frame)
                    conn.sending = 0.0
                    # Let other sessions run between chunks: under load every session's
                    # first audio goes out before anyone's tenth chunk.
                    await asyncio.sleep(0)
                else:
                    await ws.send_text(frame)
                    conn.sending = 0.0
                continue
            m.observe_live(msg, "ws")
            text = proto.message(msg) if isinstance(msg, dict) else proto.event(msg)
            conn.sending = monotonic()
            await ws.send_text(text)
            conn.sending = 0.0

