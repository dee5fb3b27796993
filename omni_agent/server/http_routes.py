"""The agent server's HTTP endpoints: one-shot turns, health, metrics and the voice page.

::

    GET  /             the browser voice page (omni_agent/server/static/)
    GET  /health       liveness: {"status": "ok", ...}
    GET  /metrics      Prometheus text format
    POST /v1/turn      one text turn   (body: a :class:`TurnRequest`)
    POST /v1/voice     one voice turn  (body: an audio file; query: :class:`VoiceParams`)

A request body or query is a pydantic model; a bad one is refused with 400 and a message
naming the field. :class:`HttpRoutes` also owns the HTTP turns running (their limits,
their sessions, waiting for them on shutdown).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ConfigDict, StrictBool, StrictStr, ValidationError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from .. import otel
from ..audio import AudioTooLongError, wav_bytes
from ..errors import AudioInputError, OmniAgentError, UnsupportedInputError
from ..events import AudioChunk, AudioPart, ErrorEvent, Event, TextPart, TurnEnd, UserTurn, event_to_dict
from ..tasks import task_group
from .uploads import decode_upload
from .wire import SessionId, TurnText, WireModel, describe, error_code

if TYPE_CHECKING:
    from .agent_server import AgentServer

__all__ = ["HttpRoutes", "HTTPRefusal", "TurnRequest", "VoiceParams", "STATIC_DIR", "release"]

STATIC_DIR = Path(__file__).with_name("static")


class HTTPRefusal(Exception):
    """A request refused with ``status`` and a JSON error ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class TurnRequest(WireModel):
    """The body of ``POST /v1/turn``: ``{"text": "...", "session_id"?, "audio"?, "events"?}``
    (``audio``: the reply as WAV too; ``events``: every event of the turn too)."""

    model_config = ConfigDict(extra="forbid")

    text: TurnText
    session_id: SessionId | None = None
    audio: StrictBool = False
    events: StrictBool = False


class VoiceParams(WireModel):
    """The query of ``POST /v1/voice``: ``?session_id=...&audio=1&events=1``."""

    model_config = ConfigDict(extra="forbid")

    session_id: SessionId | None = None
    audio: StrictBool = False
    events: StrictBool = False
    token: StrictStr | None = None


def _bad_request(e: ValidationError, what: str, example: str) -> HTTPRefusal:
    """A 400 from a request model's validation: the field and what it must be."""
    errors = e.errors()
    unknown = sorted(str(err["loc"][0]) for err in errors if err["type"] == "extra_forbidden")
    if unknown:
        return HTTPRefusal(400, "bad_request", f"unknown {what}(s) {unknown}: allowed are "
                           f"{example}")
    err = errors[0]
    code = error_code(err, "bad_request")
    if err["loc"][:1] == ("text",) and code == "bad_request":
        return HTTPRefusal(400, code, "text must be a non-empty string: give the user's words as "
                           '{"text": "..."}')
    return HTTPRefusal(400, code, describe(err))


def release(counts: collections.Counter[str], key: str) -> None:
    """One fewer for ``key``; a key at zero is dropped (the counter holds active ones only)."""
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]


@dataclass
class _TurnResult:
    end: TurnEnd
    events: list[Event]
    audio: bytes
    rate: int | None
    first_audio: float | None


class HttpRoutes:
    """The HTTP endpoints of one :class:`~omni_agent.server.agent_server.AgentServer`, and
    the HTTP turns running now."""

    def __init__(self, server: "AgentServer"):
        self.server = server
        self.per_client: collections.Counter[str] = collections.Counter()  # turns running per address
        self.sessions: dict[str, Any] = {}  # session id -> Session with an HTTP turn running
        self.idle = asyncio.Event()  # set while no HTTP turn runs
        self.idle.set()

    @property
    def running(self) -> int:
        """HTTP turns running now."""
        return sum(self.per_client.values())

    def interrupt_all(self, reason: str) -> None:
        """Interrupt every HTTP turn running (the server shuts down)."""
        for sess in list(self.sessions.values()):
            sess.interrupt(reason)

    # ------------------------------------------------------------------ helpers

    def error(self, status: int, code: str, message: str) -> JSONResponse:
        """The JSON error response (and the refusal counted in metrics)."""
        self.server.metrics.rejected.labels(code).inc()
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)

    def check_auth(self, request: Request) -> None:
        if not self.server._authorized(request.headers, request.query_params):
            raise HTTPRefusal(401, "unauthorized", "missing or wrong token: send the header "
                              "'Authorization: Bearer <token>' with the server's token")

    async def body(self, request: Request, limit: int | None = None) -> bytes:
        """The request body, refused (413) past ``limit`` bytes (default ``max_request_bytes``)."""
        limit = self.server.config.max_request_bytes if limit is None else limit
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPRefusal(413, "request_too_large", f"the request body is {int(declared)} bytes; "
                              f"at most {limit} bytes are accepted")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise HTTPRefusal(413, "request_too_large", f"the request body is over {limit} bytes")
            # A big upload that arrives faster than it is read would otherwise be taken in
            # one go, holding the loop (and every live session) for its whole length.
            await asyncio.sleep(0)
        return bytes(body)

    def _claim(self, session_id: str | None) -> str:
        """Reserve a session id for one HTTP turn (a fresh one when None)."""
        server = self.server
        if server.draining:
            raise HTTPRefusal(503, "shutting_down", "the server is shutting down: retry on another instance")
        if session_id is None:
            session_id = secrets.token_hex(8)
        if session_id in server._in_use:
            raise HTTPRefusal(409, "session_busy", f"session {session_id!r} is busy (a turn is running "
                              "or it is a live session): wait, or use another session_id")
        server._in_use.add(session_id)
        return session_id

    async def _watch_disconnect(self, request: Request, session: Any) -> None:
        """Wait for the client to hang up (the body is read by now, so the next ASGI
        message is the disconnect), then interrupt its turn."""
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                self.server.metrics.rejected.labels("client_gone").inc()
                session.interrupt("client went away")
                return

    # ------------------------------------------------------------------ endpoints

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def health(self, request: Request) -> Response:
        server, a = self.server, self.server.agent
        return JSONResponse({
            "status": "draining" if server.draining else "ok",
            "sessions": len(server._conns),
            "thinker": getattr(a.thinker, "name", type(a.thinker).__name__),
            "talker": getattr(a.talker, "name", None) if a.talker is not None else None,
            "ears": a.ears is not None,
            "auth": server.config.token is not None,
        }, 503 if server.draining else 200)

    async def metrics(self, request: Request) -> Response:
        try:
            self.check_auth(request)
        except HTTPRefusal as r:
            return self.error(r.status, r.code, r.message)
        return Response(generate_latest(self.server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def text_turn(self, request: Request) -> Response:
        try:
            self.check_auth(request)
            req = _turn_request(await self.body(request, self.server.config.max_json_bytes))
            turn = UserTurn(parts=[TextPart(req.text)])
            return await self._one_turn(request, turn, req.session_id, req.audio, req.events, "http")
        except HTTPRefusal as r:
            return self.error(r.status, r.code, r.message)

    async def voice_turn(self, request: Request) -> Response:
        try:
            self.check_auth(request)
            params = _voice_params(request.query_params)
            if not (request.headers.get("content-length") or "").isdigit():
                # An upload says its size, so one over the limit is refused before a byte of
                # it is read (a streamed upload of unknown length would have to be read up to
                # the limit first, at the cost of every live session).
                raise HTTPRefusal(411, "length_required", "send the audio file with a Content-Length "
                                  "header (upload the file itself, not a stream of unknown length)")
            part = await self._decode(await self.body(request))
            return await self._one_turn(request, UserTurn(parts=[part]), params.session_id, params.audio,
                                        params.events, "http")
        except HTTPRefusal as r:
            return self.error(r.status, r.code, r.message)

    async def _decode(self, body: bytes) -> AudioPart:
        """An uploaded audio file as 16 kHz PCM, capped at ``max_audio_seconds``."""
        if not body:
            raise HTTPRefusal(400, "bad_audio", "the body is empty: send an audio file (WAV, FLAC, "
                              "OGG, MP3...) as the request body")
        limit = self.server.config.max_audio_seconds
        try:
            # Capped while decoding: a small compressed file can expand to hours (a bomb).
            # In worker processes at a lower priority (omni_agent.server.uploads): the
            # live sessions keep their cores and the server its memory.
            pcm, rate = await decode_upload(body, sample_rate=16000, max_seconds=limit)
        except AudioTooLongError:
            raise HTTPRefusal(413, "audio_too_long", f"the audio is longer than {limit:.0f} s "
                              f"({limit / 60:.0f} minutes), the most accepted per request: send "
                              "a shorter recording") from None
        except AudioInputError as e:
            raise HTTPRefusal(400, "bad_audio", str(e)) from None
        return AudioPart(pcm=pcm, sample_rate=rate, mime="audio/L16")

    def _admit(self, client: str) -> None:
        """Refuse a turn over the limits of HTTP turns running (in all, and per client)."""
        cfg = self.server.config
        if self.running >= cfg.max_http_turns:
            raise HTTPRefusal(503, "server_busy", f"the server is running {self.running} HTTP turns: "
                              "try again shortly")
        if self.per_client[client] >= cfg.max_http_turns_per_client:
            raise HTTPRefusal(429, "too_many_turns", f"this client already has "
                              f"{cfg.max_http_turns_per_client} turns running: wait for one to finish")

    async def _one_turn(self, request: Request, turn: UserTurn, session_id: str | None, want_audio: bool,
                        want_events: bool, transport: str) -> Response:
        server, m = self.server, self.server.metrics
        client = request.client.host if request.client else "unknown"
        self._admit(client)
        sid = self._claim(session_id)
        self.per_client[client] += 1
        self.idle.clear()
        t0 = monotonic()
        parent = otel.attach_incoming(request.headers)  # the client's traceparent, if traced
        try:
            session = self.sessions[sid] = server.agent.session(sid)
            result = await self._run(request, session, turn, want_events)
        except (UnsupportedInputError, AudioInputError) as e:
            m.errors.labels("input").inc()
            return self.error(400, "unsupported_input", str(e))
        except OmniAgentError as e:
            m.errors.labels("agent").inc()
            return self.error(400, "agent_error", str(e))
        finally:
            otel.detach(parent)
            release(self.per_client, client)
            if not self.running:
                self.idle.set()
            server._in_use.discard(sid)
            self.sessions.pop(sid, None)
            server.agent.close_session(sid)  # the history stays: session_id continues it
        end = result.end
        trace = session.last_trace.to_dict() if session.last_trace is not None else {}
        m.observe_turn(transport, end.reason, monotonic() - t0,
                       None if result.first_audio is None else result.first_audio - t0, trace)
        out: dict[str, Any] = {
            "session_id": sid, "turn_id": end.turn_id, "transcript": turn.text, "text": end.text,
            "spoken": end.spoken, "reason": end.reason, "trace": trace,
        }
        if want_audio:
            out["audio"] = None if result.rate is None else {
                "format": "wav", "sample_rate": result.rate,
                "data": base64.b64encode(wav_bytes(result.audio, result.rate)).decode("ascii")}
        if want_events:
            out["events"] = [event_to_dict(e) for e in result.events]
        return JSONResponse(out)

    async def _run(self, request: Request, session: Any, turn: UserTurn, want_events: bool) -> _TurnResult:
        """Run the turn to its end, gathering its audio (and its events when wanted)."""
        events: list[Event] = []
        audio = bytearray()
        rate: int | None = None
        first_audio: float | None = None
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
                        self.server.metrics.errors.labels(ev.stage or "unknown").inc()
                    elif type(ev) is TurnEnd:
                        end = ev
                    if want_events:
                        events.append(ev)
            tg.cancel_scope.cancel()
        assert end is not None  # a turn always ends with TurnEnd
        return _TurnResult(end, events, bytes(audio), rate, first_audio)


def _turn_request(body: bytes) -> TurnRequest:
    """The body of ``POST /v1/turn``, validated."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise HTTPRefusal(400, "bad_json", 'the body is nested too deeply; send {"text": "..."}') from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPRefusal(400, "bad_json", f"the body is not valid JSON ({e}); send "
                          '{"text": "..."}') from None
    if not isinstance(data, dict):
        raise HTTPRefusal(400, "bad_request", 'the body must be a JSON object like {"text": "..."}')
    try:
        return TurnRequest.model_validate(data)
    except ValidationError as e:
        raise _bad_request(e, "field", "text, session_id, audio, events") from None


def _voice_params(query: Mapping[str, str]) -> VoiceParams:
    """The query of ``POST /v1/voice``, validated (flags as 1/0, true/false, yes/no)."""
    try:
        return VoiceParams.model_validate_strings(dict(query))
    except ValidationError as e:
        raise _bad_request(e, "parameter", "session_id, audio, events") from None
