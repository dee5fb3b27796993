"""The agent server: live voice sessions over WebSocket, one-shot turns over HTTP.

Built on Starlette (routing, WebSocket, static files) and uvicorn (the ASGI server);
metrics use the official ``prometheus-client``. Endpoints::

    GET  /             the browser voice page (omni_agent/server/static/)
    GET  /health       liveness: {"status": "ok", ...}
    GET  /metrics      Prometheus text format: turns, latencies, errors, active sessions
    POST /v1/turn      one text turn   {"text": "...", "session_id"?: "...", "audio"?: true}
    POST /v1/voice     one voice turn  (body: an audio file; ?session_id=...&audio=1)
    WS   /v1/live      a live session: PCM audio in, events and audio out (docs/protocol.md)
    WS   /v1/realtime  an OpenAI Realtime-compatible session (docs/api-realtime.md)
    WS   /v1/twilio[/<token>]  a phone call: a Twilio Media Stream (docs/phone.md)
    POST /v1/webrtc/offer  a live session over WebRTC: SDP offer in, answer out (docs/webrtc.md)

::

    server = AgentServer(agent, ServerConfig(token="s3cret"))
    server.run(host="127.0.0.1", port=8765)       # or: uvicorn with server.app

Run it with :meth:`AgentServer.run` (or ``omni-agent serve agent``) for a graceful
shutdown: on SIGTERM/SIGINT new sessions are refused, running turns get
``shutdown_grace`` seconds to finish, the rest are cancelled cleanly, and every live
client is told why its socket closes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hmac
import json
import logging
import re
import secrets
import collections
import struct
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from time import monotonic
from typing import Any, Awaitable, Callable

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .. import otel
from ..audio import AudioTooLongError, wav_bytes
from ..errors import AudioInputError, ConfigError, OmniAgentError, UnsupportedInputError
from ..events import AudioChunk, AudioPart, ErrorEvent, Event, TextPart, TurnEnd, UserTurn, event_to_dict
from ..live import MAX_AUDIO_SECONDS, LiveConfig, LiveSession, VAD
from ..tasks import task_group
from .security import ServerLimits, WebSecurity, security_middleware, uvicorn_config
from .twilio import TwilioConfig
from .uploads import decode_upload
from .webrtc import WebRTCConfig, WebRTCTransport

__all__ = ["AgentServer", "ServerConfig", "STATIC_DIR", "audio_frame", "parse_audio_frame"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")

_SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# WebSocket close codes (RFC 6455 section 7.4.1).
WS_GOING_AWAY = 1001
WS_UNSUPPORTED = 1003
WS_POLICY = 1008
WS_TOO_BIG = 1009
WS_INTERNAL = 1011
WS_TRY_LATER = 1013
#: The WebSocket close code of each refusal :meth:`AgentServer.live_refusal` gives.
LIVE_REFUSAL_CLOSE = {"shutting_down": WS_TRY_LATER, "too_many_sessions": WS_POLICY,
                      "server_full": WS_TRY_LATER}


@dataclass
class ServerConfig:
    """Limits and options of the agent server.

    * ``token`` — when set, every request but ``/``, ``/static`` and ``/health`` needs
      ``Authorization: Bearer <token>`` (a WebSocket may pass ``?token=`` instead, since
      browsers cannot set headers on one).
    * ``max_message_bytes`` — largest WebSocket message (an audio frame or a JSON message).
    * ``max_request_bytes`` — largest HTTP request body (an uploaded audio file);
      ``max_json_bytes`` — largest JSON body (a text turn).
    * ``max_audio_seconds`` — longest audio per request or per user turn (at most 2400 s,
      40 minutes, like Qwen3-Omni's audio input).
    * ``max_sessions_per_client`` — live sessions one client address may hold at once.
    * ``max_sessions`` — live sessions in all.
    * ``shutdown_grace`` — seconds running turns may take to finish on shutdown before
      they are cancelled.
    * ``max_protocol_errors`` — malformed messages a live client may send before it is
      disconnected.
    * ``live`` — defaults for live sessions (VAD timing, barge-in); a client may change
      its own with a ``configure`` message.
    * ``forget_on_close`` — drop a live session's history when its socket closes (not a
      session the client named with ``?session_id=``, nor while the server drains: those
      may resume, on another replica too).
    * ``send_timeout`` — seconds one message to a live client may take to send; a client
      that stops reading is disconnected after that (its slot is freed).
    * ``max_http_turns_per_client`` / ``max_http_turns`` — HTTP turns running at once, per
      client address and in all; more are refused (429 / 503) instead of queueing.
    * ``allowed_hosts`` — ``Host`` names accepted besides loopback and the address the
      connection arrived on (DNS rebinding: a web page cannot reach the agent through a
      name of its own). ``allowed_origins`` — web pages (``https://app.example.com``) that
      may open live sessions and post turns, besides loopback pages and the server's own.
    * ``header_timeout`` — seconds a client has to send its request head (slowloris);
      ``max_pending_per_client`` — connections one address may have still sending it.
    * ``webrtc`` — the WebRTC endpoint's limits and ICE options (peers at once, loopback-only
      host candidates by default): :class:`~omni_agent.server.webrtc.WebRTCConfig`.
    * ``twilio`` — phone calls (``/v1/twilio``): the optional Twilio signature check, the
      public URL, stream limits: :class:`~omni_agent.server.twilio.TwilioConfig`.
    """

    token: str | None = None
    max_message_bytes: int = 1 << 20
    max_request_bytes: int = 64 << 20
    max_json_bytes: int = 1 << 20
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    max_sessions_per_client: int = 8
    max_sessions: int = 1000
    shutdown_grace: float = 10.0
    max_protocol_errors: int = 20
    live: LiveConfig = field(default_factory=LiveConfig)
    forget_on_close: bool = True
    send_timeout: float = 10.0
    max_http_turns_per_client: int = 4
    max_http_turns: int = 64
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    header_timeout: float = 10.0
    max_pending_per_client: int = 128
    webrtc: WebRTCConfig = field(default_factory=WebRTCConfig)
    twilio: TwilioConfig = field(default_factory=TwilioConfig)

    def check(self) -> "ServerConfig":
        """Validate; raises :class:`ConfigError` naming the bad value."""
        if self.token is not None and not self.token.strip():
            raise ConfigError("token is empty: give a real token or leave it out (no auth)")
        if not 0 < self.max_audio_seconds <= MAX_AUDIO_SECONDS:
            raise ConfigError(f"max_audio_seconds must be in (0, {MAX_AUDIO_SECONDS:.0f}] "
                              f"(40 minutes at most), not {self.max_audio_seconds!r}")
        for name in ("max_message_bytes", "max_request_bytes", "max_json_bytes", "max_sessions_per_client",
                     "max_sessions", "max_protocol_errors", "max_http_turns_per_client",
                     "max_http_turns", "max_pending_per_client"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if self.shutdown_grace < 0:
            raise ConfigError("shutdown_grace must be >= 0 seconds")
        if not self.send_timeout > 0:
            raise ConfigError("send_timeout must be > 0 seconds")
        if not self.header_timeout > 0:
            raise ConfigError("header_timeout must be > 0 seconds")
        self.live = replace(self.live, max_turn_seconds=min(self.live.max_turn_seconds,
                                                            self.max_audio_seconds)).check()
        self.webrtc.check()
        return self


class _Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per server)."""

    def __init__(self, server: "AgentServer"):
        r = self.registry = CollectorRegistry()
        lat = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.turns = Counter("omni_agent_turns", "Turns run, by transport and how they ended",
                             ["transport", "reason"], registry=r)
        self.errors = Counter("omni_agent_errors", "Errors reported in turns, by stage",
                              ["stage"], registry=r)
        self.rejected = Counter("omni_agent_rejected", "Requests or messages refused, by reason",
                                ["reason"], registry=r)
        self.interruptions = Counter("omni_agent_interruptions", "Barge-ins and other interruptions",
                                     registry=r)
        self.first_audio = Histogram("omni_agent_time_to_first_audio_seconds",
                                     "End of the user's turn to the first reply audio sent",
                                     ["transport"], buckets=lat, registry=r)
        self.turn_seconds = Histogram("omni_agent_turn_seconds", "Whole turn duration",
                                      ["transport"], buckets=lat, registry=r)
        self.first_token = Histogram("omni_agent_thinker_first_token_seconds",
                                     "Thinker time to first token", buckets=lat, registry=r)
        self.asr = Histogram("omni_agent_asr_seconds", "Speech recognition time per turn",
                             buckets=lat, registry=r)
        self.cancel = Histogram("omni_agent_barge_in_cancel_seconds",
                                "Speech detected to Thinker, tools and Talker cancelled",
                                buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r)
        g = Gauge("omni_agent_active_sessions", "Live WebSocket sessions open", registry=r)
        g.set_function(lambda: len(server._conns))
        t = Gauge("omni_agent_active_turns", "Turns running now (live and HTTP)", registry=r)
        t.set_function(lambda: server._http_turns + sum(c.live.agent_busy for c in server._conns))

    def observe_trace(self, trace: dict[str, Any]) -> None:
        first = trace.get("timings", {}).get("thinker_first_token")
        if first is not None:
            self.first_token.observe(first)

    def observe_live(self, msg: Any, transport: str) -> None:
        """Count one message of a live session on ``transport`` (ws, realtime, webrtc,
        twilio): its latencies, its trace, interruptions, errors and how its turn ended."""
        if isinstance(msg, dict):
            kind = msg.get("type")
            if kind == "latency":
                if msg.get("first_audio_ms") is not None:
                    self.first_audio.labels(transport).observe(msg["first_audio_ms"] / 1000)
                self.turn_seconds.labels(transport).observe(msg["turn_ms"] / 1000)
                if msg.get("asr_ms"):
                    self.asr.observe(msg["asr_ms"] / 1000)
            elif kind == "trace":
                self.observe_trace(msg["trace"])
            elif kind == "interruption":
                self.interruptions.inc()
                if msg.get("cancel_ms") is not None:
                    self.cancel.observe(msg["cancel_ms"] / 1000)
            elif kind == "error":
                self.errors.labels(msg.get("code", "live")).inc()
        elif type(msg) is TurnEnd:
            self.turns.labels(transport, msg.reason).inc()
        elif type(msg) is ErrorEvent:
            self.errors.labels(msg.stage or "unknown").inc()


class _Conn:
    """One live WebSocket connection."""

    __slots__ = ("ws", "live", "client", "binary_audio", "errors", "closing", "seq", "close_reason",
                 "sending", "scope")

    def __init__(self, ws: WebSocket, live: LiveSession, client: str, binary_audio: bool):
        self.ws = ws
        #: (code, reason) the socket is closed with when the connection ends.
        self.close_reason: tuple[int, str] | None = None
        #: When the send under way started (monotonic seconds); 0.0 when none is.
        self.sending = 0.0
        #: The connection's cancel scope (the send watchdog ends a stalled connection with it).
        self.scope: Any = None
        self.live = live
        self.client = client
        self.binary_audio = binary_audio
        self.errors = 0
        self.closing = False
        self.seq = 0


class _Reject(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class AgentServer:
    """An agent behind HTTP and WebSocket endpoints (see the module docstring).

    ``agent`` — the :class:`~omni_agent.agent.Agent` every session shares (its Thinker,
    Talker and ears are loaded once). ``vad`` — the VAD for live sessions (None: the
    silero VAD from the speech extra, loaded on the first live session).
    """

    def __init__(self, agent: Any, config: ServerConfig | None = None, *, vad: VAD | None = None):
        self.agent = agent
        self.config = (config or ServerConfig()).check()
        self._vad = vad
        self._conns: set[_Conn] = set()
        self._per_client: collections.Counter[str] = collections.Counter()  # live sessions per client address
        self._in_use: set[str] = set()  # session ids with a turn running or a live socket
        self._http_per_client: collections.Counter[str] = collections.Counter()  # HTTP turns running per client address
        self._http_idle = asyncio.Event()
        self._http_idle.set()
        self._http_sessions: dict[str, Any] = {}  # session id -> Session with an HTTP turn running
        self.draining = False
        self._drained = False
        self.metrics = _Metrics(self)
        self.webrtc = WebRTCTransport(self, self.config.webrtc)  # owns its peers (docs/webrtc.md)
        try:
            # Host allow-list, Origin check, refusal of cross-site "simple" posts, security
            # headers, a streaming body limit. The token stays ours (it has its own messages).
            self.web = WebSecurity(allowed_hosts=self.config.allowed_hosts,
                                   allowed_origins=self.config.allowed_origins,
                                   max_body_bytes=self.config.max_request_bytes)
        except ValueError as e:
            raise ConfigError(f"bad allowed_hosts or allowed_origins: {e}") from None
        self.app = Starlette(
            middleware=security_middleware(self.web),
            routes=[
                Route("/", self._index),
                Route("/health", self._health),
                Route("/metrics", self._metrics),
                Route("/v1/turn", self._text_turn, methods=["POST"]),
                Route("/v1/voice", self._voice_turn, methods=["POST"]),
                WebSocketRoute("/v1/live", self._live),
                WebSocketRoute("/v1/realtime", self._realtime),
                WebSocketRoute("/v1/twilio", self._twilio),
                WebSocketRoute("/v1/twilio/{token}", self._twilio),
                Route("/v1/webrtc", self.webrtc.info),
                Route("/v1/webrtc/offer", self.webrtc.offer, methods=["POST"]),
                Mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static"),
            ],
            lifespan=self._lifespan,
        )

    @property
    def _http_turns(self) -> int:
        """HTTP turns running now."""
        return sum(self._http_per_client.values())

    # ------------------------------------------------------------------ running

    async def warm_up(self) -> dict[str, float]:
        """Load the agent's models and the VAD now, not on the first request. Returns
        seconds per part loaded."""
        loaded: dict[str, float] = {}
        warm = getattr(self.agent, "warm_up", None)
        if warm is not None:
            loaded.update(await warm())
        if self._vad is None:
            from ..live import default_vad

            t0 = monotonic()
            self._vad = await asyncio.to_thread(default_vad)
            loaded["vad"] = monotonic() - t0
        if self.agent.ears is not None or "audio" in self.agent.thinker.accepts:
            from .uploads import warm

            t0 = monotonic()
            await warm()  # the upload decoders' worker processes
            loaded["upload decoders"] = monotonic() - t0
        return loaded

    def uvicorn_config(self, host: str = "127.0.0.1", port: int = 8765, **kw: Any) -> Any:
        """A uvicorn Config for this app with the server's limits applied (concurrency,
        header timeout, no token in the logs)."""
        kw.setdefault("log_level", "warning")
        kw.setdefault("timeout_graceful_shutdown", self.config.shutdown_grace + 5)
        limits = ServerLimits(limit_concurrency=self.config.max_sessions + 256,
                              header_timeout=self.config.header_timeout,
                              max_pending_connections=max(256, self.config.max_pending_per_client),
                              max_pending_per_client=self.config.max_pending_per_client)
        return uvicorn_config(
            self.app, host=host, port=port, limits=limits, lifespan="on",
            # Oversized messages are refused by us with a clear error; uvicorn's own limit
            # (which closes the socket with 1009) only stops absurd ones.
            ws_max_size=max(4 * self.config.max_message_bytes, 1 << 20),
            # Compression contexts cost ~300 KiB per socket and gain nothing on PCM.
            ws_per_message_deflate=False,
            **kw,
        )

    def make_uvicorn(self, host: str = "127.0.0.1", port: int = 8765, **kw: Any) -> Any:
        """A uvicorn Server whose shutdown drains this server first (graceful)."""
        import uvicorn

        agent_server = self

        class _Server(uvicorn.Server):
            def __init__(self, config: Any):
                super().__init__(config)
                self.ready = asyncio.Event()  # set once listening (or failed to)

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                self.ready.set()

            async def shutdown(self, sockets: Any = None) -> None:  # noqa: D401
                for s in getattr(self, "servers", []):
                    s.close()  # accept no new connections while turns finish
                await agent_server.drain()
                await super().shutdown(sockets)

        return _Server(self.uvicorn_config(host, port, **kw))

    @contextlib.asynccontextmanager
    async def running(self, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> Any:
        """Serve in the background of the current event loop; yields the base URL.

        For tests and embedding (port 0 picks a free port)::

            async with AgentServer(agent).running() as url:
                httpx.post(f"{url}/v1/turn", json={"text": "hi"})
        """
        srv = self.make_uvicorn(host, port, **kw)
        failed: list[BaseException] = []

        async def serve() -> None:
            try:
                await srv.serve()
            except BaseException as e:  # noqa: BLE001 - uvicorn exits (SystemExit) when it cannot bind
                if isinstance(e, anyio.get_cancelled_exc_class()):
                    raise
                failed.append(e)
            finally:
                srv.ready.set()  # wakes the start-up wait below, whatever happened

        async with task_group() as tg:
            tg.start_soon(serve)
            await srv.ready.wait()
            if failed or not srv.started:
                why = f" ({failed[0]!r})" if failed else ""
                raise OmniAgentError(f"the agent server did not start on {host}:{port}{why}: "
                                     "is the port in use?")
            bound = srv.servers[0].sockets[0].getsockname()[1]
            try:
                yield f"http://{host}:{bound}"
            finally:
                srv.should_exit = True

    def run(self, host: str = "127.0.0.1", port: int = 8765, **kw: Any) -> None:
        """Serve until SIGINT/SIGTERM, then shut down gracefully."""
        self.make_uvicorn(host, port, **kw).run()

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> Any:
        # The server's own task: one watchdog over every live connection's sends. The agent
        # is entered for the server's life: its MCP servers (docs/mcp.md) run in its group.
        async with self.agent, task_group() as tg:
            tg.start_soon(self._watch_sends)
            await tg.start(self.webrtc.run)  # WebRTC peers are tasks of this group
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
        await self.drain()
        from .uploads import shutdown

        shutdown()
        with contextlib.suppress(Exception):
            await self.agent.aclose()

    async def drain(self, grace: float | None = None) -> None:
        """Stop taking new sessions and turns; give running turns ``grace`` seconds
        (default ``config.shutdown_grace``) to finish, cancel the rest, and close every
        live socket with 1001 (going away). Idempotent."""
        if self._drained:
            return
        self.draining = True
        grace = self.config.shutdown_grace if grace is None else grace
        for c in list(self._conns):
            await self._send_json(c, {"type": "shutdown", "grace_s": grace,
                                      "message": "the server is shutting down"})
        # Wait (on events, not polls) until every running turn has ended, or the grace is up.
        with anyio.move_on_after(grace):
            async with task_group() as tg:
                for c in list(self._conns):
                    tg.start_soon(c.live.wait_idle)
                tg.start_soon(self._http_idle.wait)
        for c in list(self._conns):
            c.closing = True
            await c.live.aclose()
            with contextlib.suppress(Exception):
                with anyio.move_on_after(1.0):
                    await c.ws.close(WS_GOING_AWAY, "server shutting down")
        for sess in list(self._http_sessions.values()):
            sess.interrupt("server shutting down")
        await self._http_idle.wait()
        self._drained = True

    # ------------------------------------------------------------------ helpers

    def _authorized(self, headers: Any, query: Any) -> bool:
        token = self.config.token
        if token is None:
            return True
        given = ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        elif "token" in query:
            given = query["token"]
        return hmac.compare_digest(given.encode(), token.encode())

    def _error(self, status: int, code: str, message: str) -> JSONResponse:
        self.metrics.rejected.labels(code).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)

    def _check_auth(self, request: Request) -> None:
        if not self._authorized(request.headers, request.query_params):
            raise _Reject(401, "unauthorized", "missing or wrong token: send the header "
                          "'Authorization: Bearer <token>' with the server's token")

    async def _body(self, request: Request, limit: int | None = None) -> bytes:
        limit = self.config.max_request_bytes if limit is None else limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Reject(413, "request_too_large", f"the request body is {int(declared)} bytes; at most "
                          f"{limit} bytes are accepted")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _Reject(413, "request_too_large", f"the request body is over {limit} bytes")
            # A big upload that arrives faster than it is read would otherwise be taken in
            # one go, holding the loop (and every live session) for its whole length.
            await asyncio.sleep(0)
        return bytes(body)

    def _claim(self, session_id: str | None) -> str:
        """Reserve a session id for one HTTP turn (a fresh one when None)."""
        if self.draining:
            raise _Reject(503, "shutting_down", "the server is shutting down: retry on another instance")
        if session_id is None:
            session_id = secrets.token_hex(8)
        elif not isinstance(session_id, str) or not _SESSION_ID.match(session_id):
            raise _Reject(400, "bad_request", "session_id must be 1-64 letters, digits or _.:-")
        if session_id in self._in_use:
            raise _Reject(409, "session_busy", f"session {session_id!r} is busy (a turn is running "
                          "or it is a live session): wait, or use another session_id")
        self._in_use.add(session_id)
        return session_id

    async def _watch_disconnect(self, request: Request, session: Any) -> None:
        """Wait for the client to hang up (the body is read by now, so the next ASGI
        message is the disconnect), then interrupt its turn."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self.metrics.rejected.labels("client_gone").inc()
                session.interrupt("client went away")
                return

    # ------------------------------------------------------------------ HTTP endpoints

    async def _index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def _health(self, request: Request) -> Response:
        a = self.agent
        return JSONResponse({
            "status": "draining" if self.draining else "ok",
            "sessions": len(self._conns),
            "thinker": getattr(a.thinker, "name", type(a.thinker).__name__),
            "talker": getattr(a.talker, "name", None) if a.talker is not None else None,
            "ears": a.ears is not None,
            "auth": self.config.token is not None,
        }, 503 if self.draining else 200)

    async def _metrics(self, request: Request) -> Response:
        try:
            self._check_auth(request)
        except _Reject as r:
            return self._error(r.status, r.code, r.message)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def _text_turn(self, request: Request) -> Response:
        try:
            self._check_auth(request)
            body = await self._body(request, self.config.max_json_bytes)
            try:
                data = json.loads(body)
            except RecursionError:
                raise _Reject(400, "bad_json", "the body is nested too deeply; send "
                              '{"text": "..."}') from None
            except (ValueError, UnicodeDecodeError) as e:
                raise _Reject(400, "bad_json", f"the body is not valid JSON ({e}); send "
                              '{"text": "..."}') from None
            if not isinstance(data, dict):
                raise _Reject(400, "bad_request", 'the body must be a JSON object like {"text": "..."}')
            unknown = set(data) - {"text", "session_id", "audio", "events"}
            if unknown:
                raise _Reject(400, "bad_request", f"unknown field(s) {sorted(unknown)}: allowed "
                              "are text, session_id, audio, events")
            text = data.get("text")
            if not isinstance(text, str) or not text.strip():
                raise _Reject(400, "bad_request", 'give the user\'s words as {"text": "..."} (a non-empty string)')
            _check_unicode(text, lambda code, msg: _Reject(400, code, msg))
            turn = UserTurn(parts=[TextPart(text)])
            return await self._one_turn(request, turn, data.get("session_id"), bool(data.get("audio")),
                                        bool(data.get("events")), "http")
        except _Reject as r:
            return self._error(r.status, r.code, r.message)

    async def _voice_turn(self, request: Request) -> Response:
        try:
            self._check_auth(request)
            q = request.query_params
            unknown = set(q) - {"session_id", "audio", "events", "token"}
            if unknown:
                raise _Reject(400, "bad_request", f"unknown parameter(s) {sorted(unknown)}: allowed "
                              "are session_id, audio, events")
            if not (request.headers.get("content-length") or "").isdigit():
                # An upload says its size, so one over the limit is refused before a byte of
                # it is read (a streamed upload of unknown length would have to be read up to
                # the limit first, at the cost of every live session).
                raise _Reject(411, "length_required", "send the audio file with a Content-Length "
                              "header (upload the file itself, not a stream of unknown length)")
            body = await self._body(request)
            if not body:
                raise _Reject(400, "bad_audio", "the body is empty: send an audio file (WAV, FLAC, "
                              "OGG, MP3...) as the request body")
            limit = self.config.max_audio_seconds
            try:
                # Capped while decoding: a small compressed file can expand to hours (a bomb).
                # In worker processes at a lower priority (omni_agent.server.uploads): the
                # live sessions keep their cores and the server its memory.
                pcm, rate = await decode_upload(body, sample_rate=16000, max_seconds=limit)
            except AudioTooLongError:
                raise _Reject(413, "audio_too_long", f"the audio is longer than {limit:.0f} s "
                              f"({limit / 60:.0f} minutes), the most accepted per request: send "
                              "a shorter recording") from None
            except AudioInputError as e:
                raise _Reject(400, "bad_audio", str(e)) from None
            part = AudioPart(pcm=pcm, sample_rate=rate, mime="audio/L16")
            flag = lambda k: q.get(k, "").lower() in ("1", "true", "yes")  # noqa: E731
            return await self._one_turn(request, UserTurn(parts=[part]), q.get("session_id"), flag("audio"),
                                        flag("events"), "http")
        except _Reject as r:
            return self._error(r.status, r.code, r.message)

    async def _one_turn(self, request: Request, turn: UserTurn, session_id: Any, want_audio: bool,
                        want_events: bool, transport: str) -> Response:
        client = request.client.host if request.client else "unknown"
        if self._http_turns >= self.config.max_http_turns:
            raise _Reject(503, "server_busy", f"the server is running {self._http_turns} HTTP turns: "
                          "try again shortly")
        if self._http_per_client[client] >= self.config.max_http_turns_per_client:
            raise _Reject(429, "too_many_turns", f"this client already has "
                          f"{self.config.max_http_turns_per_client} turns running: wait for one "
                          "to finish")
        sid = self._claim(session_id)
        self._http_per_client[client] += 1
        self._http_idle.clear()
        t0 = monotonic()
        first_audio: float | None = None
        parent = otel.attach_incoming(request.headers)  # the client's traceparent, if traced
        try:
            session = self._http_sessions[sid] = self.agent.session(sid)
            events: list[Event] = []
            audio = bytearray()
            rate = None
            end: TurnEnd | None = None
            # The turn and a watch on the client share one task group: a client that goes
            # away interrupts its turn (nobody would read the answer).
            async with task_group() as tg:
                tg.start_soon(self._watch_disconnect, request, session)
                async with session.turn(turn) as stream:
                    async for ev in stream:
                        if type(ev) is AudioChunk:
                            if first_audio is None:
                                first_audio = monotonic()
                            audio += ev.pcm
                            rate = ev.sample_rate
                        elif type(ev) is ErrorEvent:
                            self.metrics.errors.labels(ev.stage or "unknown").inc()
                        elif type(ev) is TurnEnd:
                            end = ev
                        if want_events:
                            events.append(ev)
                tg.cancel_scope.cancel()
        except (UnsupportedInputError, AudioInputError) as e:
            self.metrics.errors.labels("input").inc()
            return self._error(400, "unsupported_input", str(e))
        except OmniAgentError as e:
            self.metrics.errors.labels("agent").inc()
            return self._error(400, "agent_error", str(e))
        finally:
            otel.detach(parent)
            _release(self._http_per_client, client)
            if not self._http_turns:
                self._http_idle.set()
            self._in_use.discard(sid)
            self._http_sessions.pop(sid, None)
            self.agent.close_session(sid)  # the history stays: session_id continues it
        assert end is not None
        trace = session.last_trace.to_dict() if session.last_trace is not None else {}
        m = self.metrics
        m.turns.labels(transport, end.reason).inc()
        m.turn_seconds.labels(transport).observe(monotonic() - t0)
        if first_audio is not None:
            m.first_audio.labels(transport).observe(first_audio - t0)
        m.observe_trace(trace)
        if "asr" in trace.get("timings", {}):
            m.asr.observe(trace["timings"]["asr"])
        out: dict[str, Any] = {
            "session_id": sid,
            "turn_id": end.turn_id,
            "transcript": turn.text,
            "text": end.text,
            "spoken": end.spoken,
            "reason": end.reason,
            "trace": trace,
        }
        if want_audio:
            out["audio"] = None if rate is None else {
                "format": "wav", "sample_rate": rate,
                "data": base64.b64encode(wav_bytes(bytes(audio), rate)).decode("ascii")}
        if want_events:
            out["events"] = [event_to_dict(e) for e in events]
        return JSONResponse(out)

    # ------------------------------------------------------------------ WebSocket

    def live_refusal(self, client: str, noun: str = "live session") -> tuple[str, str] | None:
        """Why another live session of ``client`` cannot be opened now, as (error code,
        message) — the server drains, the client has its most open, the server is full — or
        None. Every transport asks this and says it its own way (a close code, an HTTP status:
        :data:`LIVE_REFUSAL_CLOSE`)."""
        cfg = self.config
        if self.draining:
            return "shutting_down", "the server is shutting down"
        if self._per_client[client] >= cfg.max_sessions_per_client:
            return ("too_many_sessions", f"this client already has {cfg.max_sessions_per_client} "
                    f"{noun}s open: close one first")
        if len(self._conns) >= cfg.max_sessions:
            return "server_full", f"the server has no room for another {noun}: try again later"
        return None

    async def live_vad(self) -> VAD:
        """The VAD of live sessions (silero from the speech extra unless one was given),
        loaded on first use in a worker thread. Raises :class:`OmniAgentError` when it
        cannot be loaded."""
        if self._vad is None:
            from ..live import default_vad

            self._vad = await asyncio.to_thread(default_vad)
        return self._vad

    async def hold_live(self, conn: "_Conn", sid: str, *, sender: Callable[[], Awaitable[None]],
                        receive_loop: Callable[[], Awaitable[None]], forget: bool, what: str,
                        hello: dict[str, Any] | None = None) -> None:
        """Run one live connection to its end, for every WebSocket transport: claim its
        session id and slot, accept (and send ``hello``), then own its tasks — the live
        session's turns, ``sender`` and ``receive_loop`` (this task); whichever of the
        two ends first ends the connection, and the block cancels and awaits the rest. A
        sender that fails ends the connection with a close code and a reason (``what``
        names the transport in the log), instead of a session that answers nobody.
        Then free what it held, close the session (forgotten when ``forget`` and the server
        is not draining: its client may resume on another replica) and close the socket
        with the connection's reason. Call it with no await after the checks that must
        still hold when the id is claimed (that it is not in use)."""
        ws, client = conn.ws, conn.client
        self._in_use.add(sid)
        self._per_client[client] += 1
        self._conns.add(conn)
        try:
            await ws.accept()
            if hello is not None:
                await ws.send_text(json.dumps(hello))
            async with conn.live, task_group() as tg:
                conn.scope = tg.cancel_scope
                tg.start_soon(self._send_loop, conn, sender, what, tg.cancel_scope)
                await receive_loop()
                tg.cancel_scope.cancel()
        except WebSocketDisconnect:
            pass
        finally:
            # The client went away or we are closing: its turn is stopped, free what it owned.
            self._conns.discard(conn)
            self._in_use.discard(sid)
            _release(self._per_client, client)
            await self.agent.aclose_session(sid, forget=forget and not self.draining)
            if ws.application_state == WebSocketState.CONNECTED and not conn.closing:
                code, reason = conn.close_reason or (1000, "")
                with contextlib.suppress(Exception):
                    with anyio.move_on_after(1.0):  # a client that reads nothing gets no say
                        await ws.close(code, reason[:120])

    async def _refuse_ws(self, ws: WebSocket, code: int, err: str, message: str) -> None:
        self.metrics.rejected.labels(err).inc()
        await ws.accept()
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps({"type": "error", "code": err, "message": message}))
            await ws.close(code, f"{err}: {message}"[:120])

    def _live_config(self, query: Any) -> tuple[LiveConfig, bool]:
        cfg = self.config.live
        changes: dict[str, Any] = {}
        names = {f.name for f in fields(LiveConfig)} - {"max_turn_seconds"}
        binary = True
        for k, v in query.items():
            if k in ("token", "session_id"):
                continue
            if k == "audio_out":
                if v not in ("binary", "base64"):
                    raise ConfigError("audio_out must be 'binary' or 'base64'")
                binary = v == "binary"
                continue
            if k not in names:
                raise ConfigError(f"unknown parameter {k!r}: allowed are audio_out, "
                                  f"{', '.join(sorted(names))}")
            changes[k] = _parse_value(k, v)
        return replace(cfg, **changes).check(), binary

    async def _realtime(self, ws: WebSocket) -> None:
        """An OpenAI Realtime-compatible session (omni_agent/server/realtime.py)."""
        from .realtime import serve_realtime

        parent = otel.attach_incoming(ws.headers)  # the handshake's traceparent: its turns' parent
        try:
            await serve_realtime(self, ws)
        finally:
            otel.detach(parent)

    async def _twilio(self, ws: WebSocket) -> None:
        """A phone call's Twilio Media Stream (omni_agent/server/twilio.py)."""
        from .twilio import serve_twilio

        parent = otel.attach_incoming(ws.headers)
        try:
            await serve_twilio(self, ws)
        finally:
            otel.detach(parent)

    async def _live(self, ws: WebSocket) -> None:
        client = ws.client.host if ws.client else "unknown"
        if not self._authorized(ws.headers, ws.query_params):
            await self._refuse_ws(ws, WS_POLICY, "unauthorized",
                                  "missing or wrong token: connect with ?token=<token> or the "
                                  "header 'Authorization: Bearer <token>'")
            return
        refusal = self.live_refusal(client)
        if refusal is not None:
            await self._refuse_ws(ws, LIVE_REFUSAL_CLOSE[refusal[0]], *refusal)
            return
        try:
            live_cfg, binary = self._live_config(ws.query_params)
        except (ConfigError, ValueError) as e:
            await self._refuse_ws(ws, WS_POLICY, "bad_parameter", str(e))
            return
        try:
            vad = await self.live_vad()
        except OmniAgentError as e:
            await self._refuse_ws(ws, WS_TRY_LATER, "no_vad", str(e))
            return
        # ?session_id= resumes a conversation (after a reconnect, maybe to another replica
        # sharing the history store); such a session is the client's: its socket closing
        # does not forget it. A server-made id is forgotten with its socket, unless the
        # server is draining (its client may resume on another replica).
        resumed = ws.query_params.get("session_id")
        if resumed is not None and not _SESSION_ID.match(resumed):
            await self._refuse_ws(ws, WS_POLICY, "bad_parameter", "session_id must be 1-64 letters, digits or _.:-")
            return
        if resumed is not None and resumed in self._in_use:
            await self._refuse_ws(ws, WS_POLICY, "session_busy", f"session {resumed!r} is busy here (a turn "
                                  "is running or it is live on another socket): close that one first")
            return
        sid = resumed or secrets.token_hex(8)
        conn = _Conn(ws, LiveSession(self.agent.session(sid), vad=vad, config=live_cfg), client, binary)
        talker = self.agent.talker
        hello = {
            "type": "ready", "session_id": sid,
            "input": {"format": "pcm_s16le", "sample_rate": live_cfg.sample_rate, "channels": 1},
            "output": None if talker is None else {"format": "pcm_s16le",
                                                   "sample_rate": talker.sample_rate,
                                                   "channels": 1,
                                                   "framing": "binary" if binary else "base64"},
            "config": {f.name: getattr(live_cfg, f.name) for f in fields(LiveConfig)},
            "limits": {"max_message_bytes": self.config.max_message_bytes,
                       "max_audio_seconds": self.config.max_audio_seconds},
        }
        parent = otel.attach_incoming(ws.headers)  # the handshake's traceparent: its turns' parent
        try:
            await self.hold_live(conn, sid, sender=functools.partial(self._sender, conn),
                                 receive_loop=functools.partial(self._receive_loop, conn),
                                 forget=self.config.forget_on_close and resumed is None,
                                 what="live", hello=hello)
        finally:
            otel.detach(parent)

    async def _send_loop(self, conn: _Conn, sender: Callable[[], Awaitable[None]], what: str,
                         scope: anyio.CancelScope) -> None:
        """``sender``; if it fails (or the client stops reading), the connection ends
        with a close code and a reason, instead of a session that answers nobody."""
        try:
            await sender()
        except Exception as e:  # noqa: BLE001 - reported to the client as the close reason
            if not _is_disconnect(e):
                log.exception("%s sender failed", what)
                conn.close_reason = (WS_INTERNAL, f"server error while sending: {type(e).__name__}")
                self.metrics.errors.labels("sender").inc()
        scope.cancel()

    async def _watch_sends(self) -> None:
        """Ends a connection when one send to it has been stuck for ``send_timeout`` seconds: a
        client that stopped reading must not hold its slot, its turn or its memory. One timer
        for the whole server (started by its lifespan) instead of a deadline around every
        send or a task per connection."""
        limit = self.config.send_timeout
        while True:
            await anyio.sleep(limit / 4)
            now = monotonic()
            for conn in list(self._conns):
                since = conn.sending
                if since and now - since > limit and conn.scope is not None:
                    conn.close_reason = (WS_POLICY, "client too slow: it did not read the "
                                         f"server's messages for {limit:g} s")
                    self.metrics.rejected.labels("slow_client").inc()
                    conn.scope.cancel()
                    conn.scope = None

    async def _receive_loop(self, conn: _Conn) -> None:
        try:
            await self._receiver(conn)
        except WebSocketDisconnect:
            pass
        except Exception as e:  # noqa: BLE001 - reported to the client as the close reason
            if not _is_disconnect(e):
                log.exception("live receiver failed")
                conn.close_reason = (WS_INTERNAL, f"server error while receiving: {type(e).__name__}")
                self.metrics.errors.labels("receiver").inc()

    async def _protocol_error(self, conn: _Conn, code: str, message: str) -> bool:
        """Tell the client what was wrong; True when it has now sent too many bad messages."""
        conn.errors += 1
        self.metrics.rejected.labels(code).inc()
        await self._send_json(conn, {"type": "error", "code": code, "message": message})
        if conn.errors >= self.config.max_protocol_errors:
            await self._send_json(conn, {"type": "error", "code": "too_many_errors",
                                         "message": "too many malformed messages: closing"})
            with contextlib.suppress(Exception):
                await conn.ws.close(WS_POLICY, "too many malformed messages")
            conn.closing = True
            return True
        return False

    async def _receiver(self, conn: _Conn) -> None:
        ws, live = conn.ws, conn.live
        limit = self.config.max_message_bytes
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data = msg.get("bytes")
            if data is not None:
                if len(data) > limit:
                    if await self._protocol_error(conn, "message_too_large",
                                                  f"an audio message of {len(data)} bytes is over the "
                                                  f"limit of {limit} bytes: send smaller chunks "
                                                  "(20-100 ms of audio each)"):
                        return
                    continue
                try:
                    live.feed(data)
                except AudioInputError as e:
                    if await self._protocol_error(conn, "bad_audio", str(e)):
                        return
                continue
            text = msg.get("text")
            if text is None:
                continue
            if len(text) > limit:
                if await self._protocol_error(conn, "message_too_large",
                                              f"a message of {len(text)} characters is over the limit "
                                              f"of {limit}"):
                    return
                continue
            try:
                await self._command(conn, text)
            except (OmniAgentError, ValueError) as e:
                if await self._protocol_error(conn, getattr(e, "code", "bad_message"), str(e)):
                    return

    async def _command(self, conn: _Conn, text: str) -> None:
        live = conn.live
        try:
            m = json.loads(text)
        except RecursionError:
            raise _BadMessage("bad_json", "the message is nested too deeply: messages are flat "
                              'JSON objects like {"type": "text", "text": "hello"}') from None
        except ValueError:
            raise _BadMessage("bad_json", "the message is not valid JSON: text messages are JSON "
                              'objects like {"type": "text", "text": "hello"}') from None
        if not isinstance(m, dict) or not isinstance(m.get("type"), str):
            raise _BadMessage("bad_message", 'a message is a JSON object with a "type" field')
        kind = m["type"]
        if kind == "audio":
            data = m.get("data")
            if not isinstance(data, str):
                raise _BadMessage("bad_audio", '"audio" needs "data": base64 of int16 PCM')
            try:
                pcm = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise _BadMessage("bad_audio", '"data" is not valid base64') from None
            live.feed(pcm)
        elif kind == "text":
            t = m.get("text")
            if not isinstance(t, str) or not t.strip():
                raise _BadMessage("bad_message", '"text" needs a non-empty "text" string')
            _check_unicode(t, _BadMessage)
            if self.draining:
                raise _BadMessage("shutting_down", "the server is shutting down: no new turns")
            live.submit_text(t)
        elif kind == "playback":
            turn_id, played = m.get("turn_id"), m.get("played_ms")
            if not isinstance(turn_id, int) or not isinstance(played, (int, float)):
                raise _BadMessage("bad_message", '"playback" needs integer "turn_id" and number "played_ms"')
            live.report_playback(turn_id, float(played), bool(m.get("final", True)))
        elif kind == "interrupt":
            live.barge_in("client")
        elif kind == "end_turn":
            live.end_turn()
        elif kind == "configure":
            allowed = {"barge_in", "min_interrupt_ms", "min_speech_ms", "end_silence_ms", "threshold",
                       "playback_wait_ms"}
            opts = {k: v for k, v in m.items() if k != "type"}
            bad = set(opts) - allowed
            if bad:
                raise _BadMessage("bad_message", f"cannot configure {sorted(bad)}: allowed are "
                                  f"{', '.join(sorted(allowed))}")
            try:
                new = replace(live.config, **opts).check()
            except (ConfigError, TypeError) as e:
                raise _BadMessage("bad_message", str(e)) from None
            live.config = new
            await self._send_json(conn, {"type": "configured", "config": {k: getattr(new, k) for k in allowed}})
        elif kind == "ping":
            await self._send_json(conn, {"type": "pong", "t": m.get("t")})
        else:
            raise _BadMessage("unknown_type", f"unknown message type {kind!r}: use audio, text, "
                              "playback, interrupt, end_turn, configure or ping")

    async def _send_json(self, conn: _Conn, obj: dict[str, Any]) -> None:
        """A control message from the receiver's side (errors, pong). A client that cannot
        take it is being closed anyway: failures end here, bounded in time."""
        with contextlib.suppress(Exception):
            with anyio.fail_after(self.config.send_timeout):
                await conn.ws.send_text(_dumps(obj))

    async def _sender(self, conn: _Conn) -> None:
        """Forward the live session's messages to the client, and count them in metrics.
        ``conn.sending`` says since when a send is under way (the watchdog reads it)."""
        ws, m = conn.ws, self.metrics
        async for msg in conn.live.messages():
            if isinstance(msg, dict):
                m.observe_live(msg, "ws")
                conn.sending = monotonic()
                await ws.send_text(_dumps(msg))
                conn.sending = 0.0
                continue
            if type(msg) is AudioChunk:
                conn.seq += 1
                conn.sending = monotonic()
                if conn.binary_audio:
                    # One frame per chunk: a 16-byte header, then the PCM (docs/protocol.md).
                    await ws.send_bytes(audio_frame(msg, conn.seq))
                    conn.sending = 0.0
                    # Let other sessions run between chunks: under load every session's
                    # first audio goes out before anyone's tenth chunk.
                    await asyncio.sleep(0)
                else:
                    await ws.send_text(json.dumps({
                        "type": "audio_chunk", "turn_id": msg.turn_id,
                        "utterance_index": msg.utterance_index, "sample_rate": msg.sample_rate,
                        "bytes": len(msg.pcm), "final": msg.final, "seq": conn.seq,
                        "data": base64.b64encode(msg.pcm).decode("ascii")}))
                    conn.sending = 0.0
                continue
            m.observe_live(msg, "ws")
            d = event_to_dict(msg)
            if type(msg) is UserTurn:
                d["text"] = msg.text
            conn.sending = monotonic()
            await ws.send_text(_dumps(d))
            conn.sending = 0.0


def _release(counts: collections.Counter[str], key: str) -> None:
    """One fewer for ``key``; a key at zero is dropped (the counter holds active ones only)."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


def _dumps(obj: Any) -> str:
    """JSON for the wire. Text with a lone surrogate (which UTF-8 cannot carry) goes out
    escaped, so it can never break the sender."""
    text = json.dumps(obj, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(obj)
    return text


def _check_unicode(text: str, error: Any) -> None:
    """Refuse text holding a lone UTF-16 surrogate (JSON can write one, "\\ud800"; it is no
    character, and nothing downstream could say, show or store it)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise error("bad_text", "the text holds a lone surrogate (like \\ud800), which is not "
                        "a character: send valid Unicode text") from None


def _is_disconnect(exc: BaseException) -> bool:
    """The client went away (a send or receive on a closed socket)."""
    if isinstance(exc, (WebSocketDisconnect, ConnectionError)):
        return True
    if isinstance(exc, RuntimeError) and "close" in str(exc):  # Starlette: send after close
        return True
    name = type(exc).__name__
    return name in ("ConnectionClosed", "ConnectionClosedError", "ConnectionClosedOK", "ClientDisconnected")


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


class _BadMessage(OmniAgentError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def _parse_value(name: str, raw: str) -> Any:
    """A query-string value typed like the LiveConfig field it sets."""
    default = getattr(LiveConfig(), name)
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, not {raw!r}")
    try:
        return type(default)(float(raw)) if isinstance(default, int) else float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}") from None
