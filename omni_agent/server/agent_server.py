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

This module holds the server itself: the app, its life (start, drain, stop) and what every
live transport shares (session slots, the VAD, :meth:`AgentServer.hold_live`). The rest
has a module each:

* :mod:`.server_config` — :class:`ServerConfig`, the limits and options;
* :mod:`.metrics` — the Prometheus metrics;
* :mod:`.http_routes` — the HTTP endpoints and the HTTP turns running;
* :mod:`.live_protocol` — the ``/v1/live`` message set, sans-IO (and audio framing);
* :mod:`.live_socket` — ``/v1/live`` itself: handshake, receive loop, sender;
* :mod:`.sockets` — close codes and helpers every WebSocket transport shares.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
from time import monotonic
from typing import Any, Awaitable, Callable, Mapping

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from .. import otel
from ..errors import ConfigError, OmniAgentError
from ..live import VAD, LiveConfig
from ..tasks import task_group
from .http_routes import STATIC_DIR, HTTPRefusal, HttpRoutes, release
from .live_protocol import AUDIO_HEADER, ProtocolError, audio_frame, parse_audio_frame
from .live_socket import LiveConnection, LiveEndpoint
from .metrics import ServerMetrics
from .security import ServerLimits, WebSecurity, security_middleware, uvicorn_config
from .server_config import ServerConfig
from .sockets import (
    LIVE_REFUSAL_CLOSE,
    WS_GOING_AWAY,
    WS_INTERNAL,
    WS_POLICY,
    WS_TOO_BIG,
    WS_TRY_LATER,
    WS_UNSUPPORTED,
    dumps,
    is_disconnect,
)
from .webrtc import WebRTCTransport

__all__ = ["AgentServer", "ServerConfig", "STATIC_DIR", "AUDIO_HEADER", "audio_frame", "parse_audio_frame",
           "LIVE_REFUSAL_CLOSE", "WS_GOING_AWAY", "WS_UNSUPPORTED", "WS_POLICY", "WS_TOO_BIG", "WS_INTERNAL",
           "WS_TRY_LATER"]

log = logging.getLogger(__name__)

# The names the live transports (realtime.py, twilio.py, webrtc.py) import from here.
_Conn = LiveConnection
_Metrics = ServerMetrics
_Reject = HTTPRefusal
_BadMessage = ProtocolError
_dumps = dumps
_is_disconnect = is_disconnect
_release = release


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
        self._conns: set[LiveConnection] = set()
        self._per_client: collections.Counter[str] = collections.Counter()  # live sessions per client address
        self._in_use: set[str] = set()  # session ids with a turn running or a live socket
        self.draining = False
        self._drained = False
        self.http = HttpRoutes(self)  # owns the HTTP turns running
        self.live_ws = LiveEndpoint(self)  # WS /v1/live
        self.metrics = ServerMetrics(
            active_sessions=lambda: len(self._conns),
            active_turns=lambda: self.http.running + sum(c.live.agent_busy for c in self._conns))
        self.webrtc = WebRTCTransport(self, self.config.webrtc)  # owns its peers (docs/webrtc.md)
        try:
            # Host allow-list, Origin check, refusal of cross-site "simple" posts, security
            # headers, a streaming body limit. The token stays ours (it has its own messages).
            self.web = WebSecurity(allowed_hosts=self.config.allowed_hosts,
                                   allowed_origins=self.config.allowed_origins,
                                   max_body_bytes=self.config.max_request_bytes)
        except ValueError as e:
            raise ConfigError(f"bad allowed_hosts or allowed_origins: {e}") from None
        http = self.http
        self.app = Starlette(
            middleware=security_middleware(self.web),
            routes=[
                Route("/", http.index),
                Route("/health", http.health),
                Route("/metrics", http.metrics),
                Route("/v1/turn", http.text_turn, methods=["POST"]),
                Route("/v1/voice", http.voice_turn, methods=["POST"]),
                WebSocketRoute("/v1/live", self.live_ws.handle),
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
        return self.http.running

    # ------------------------------------------------------------------ running

    async def warm_up(self) -> dict[str, float]:
        """Load the agent's models and the VAD now, not on the first request. Returns
        seconds per part loaded."""
        loaded: dict[str, float] = {}
        warm_agent: Callable[[], Awaitable[dict[str, float]]] | None = getattr(self.agent, "warm_up", None)
        if warm_agent is not None:
            loaded.update(await warm_agent())
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
                tg.start_soon(self.http.idle.wait)
        for c in list(self._conns):
            c.closing = True
            await c.live.aclose()
            with contextlib.suppress(Exception):
                with anyio.move_on_after(1.0):
                    await c.ws.close(WS_GOING_AWAY, "server shutting down")
        self.http.interrupt_all("server shutting down")
        await self.http.idle.wait()
        self._drained = True

    # ------------------------------------------------------------------ shared by the transports

    def _authorized(self, headers: Any, query: Any) -> bool:
        """The request carries the server's token (or the server has none)."""
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
        return self.http.error(status, code, message)

    async def _body(self, request: Request, limit: int | None = None) -> bytes:
        return await self.http.body(request, limit)

    def _live_config(self, query: Mapping[str, str]) -> tuple[LiveConfig, bool]:
        return self.live_ws.connect_config(query)

    async def _command(self, conn: LiveConnection, text: str) -> None:
        await self.live_ws.command(conn, text)

    async def _protocol_error(self, conn: LiveConnection, code: str, message: str) -> bool:
        return await self.live_ws.protocol_error(conn, code, message)

    async def _send_json(self, conn: LiveConnection, obj: dict[str, Any]) -> None:
        await self.live_ws.send_json(conn, obj)

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

    async def hold_live(self, conn: LiveConnection, sid: str, *, sender: Callable[[], Awaitable[None]],
                        receive_loop: Callable[[], Awaitable[None]], forget: bool, what: str,
                        hello: str | dict[str, Any] | None = None) -> None:
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
                await ws.send_text(hello if isinstance(hello, str) else json.dumps(hello))
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
            release(self._per_client, client)
            await self.agent.aclose_session(sid, forget=forget and not self.draining)
            if ws.application_state == WebSocketState.CONNECTED and not conn.closing:
                code, reason = conn.close_reason or (1000, "")
                with contextlib.suppress(Exception):
                    with anyio.move_on_after(1.0):  # a client that reads nothing gets no say
                        await ws.close(code, reason[:120])

    async def _send_loop(self, conn: LiveConnection, sender: Callable[[], Awaitable[None]], what: str,
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
