"""The Talker as its own service: an OpenAI-compatible ``POST /v1/audio/speech``.

Any Talker (Piper, espeak-ng, a remote one, your own) can run in its own process; an
agent elsewhere reaches it with :class:`~omni_agent.talkers.openai.OpenAITalker`::

    app = create_talker_app(PiperTalker())
    uvicorn.Server(uvicorn_config(app, port=8002)).run()    # or: omni-agent serve talker

Request body (JSON, validated by :class:`SpeechRequest`), as OpenAI's speech endpoint:
``input`` (text, required), ``model`` and ``voice`` (accepted; ``voice`` picks one of
several talkers when the app was made with a dict), ``response_format`` ``"pcm"`` (raw int16
mono) or ``"wav"`` (default), ``speed`` and ``instructions`` (accepted, not applied), plus
the extension ``language`` (picks the espeak-ng voice, for instance).

The body streams: the first audio leaves as soon as the Talker has it. Long text is spoken
in pieces of at most ``SpeechLimits.max_piece_chars`` characters, cut at sentence, then
clause, then word boundaries (:func:`speech_pieces`), one after another — a synthesizer's
memory grows with the length of what it is given at once (Piper: 3.4 GB for 4,092
unpunctuated characters). At most ``max_concurrent`` syntheses run at once; others wait up
to ``queue_timeout`` seconds (then 503), and beyond ``max_waiting`` waiters a request gets
429 at once. Responses carry ``X-Sample-Rate``. Errors are JSON ``{"error": {"message",
"type", ...}}`` with status 400 (bad request), 413 (body too large), 429/503 (busy) or 500
(synthesis failed), decided before any audio is sent.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Mapping

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..audio import wav_stream_header
from ..events import AudioChunk, Utterance
from ..talker import Talker
from .security import InvalidJSON, WebSecurity, parse_json, security_middleware
from .wire import WireModel, explain, route_errors

__all__ = ["create_talker_app", "MAX_INPUT_CHARS", "SpeechLimits", "SpeechRequest", "speech_pieces"]

#: Longest input accepted per request (OpenAI's limit too).
MAX_INPUT_CHARS = 4096

_FORMATS = {"pcm": "audio/pcm", "wav": "audio/wav"}


class SpeechLimits(BaseModel):
    """What the Talker server lets one request, and all together, cost.

    * ``max_input_chars`` — longest ``input`` (400 beyond; OpenAI's limit is 4096).
    * ``max_piece_chars`` — longest text handed to the Talker at once; longer input is
      spoken piece by piece (bounded memory).
    * ``max_concurrent`` — syntheses running at once; ``max_waiting`` requests may wait
      for a turn, each up to ``queue_timeout`` seconds (503 after; 429 when the queue is full).
    * ``max_body_bytes`` — largest request body (413 beyond); ``max_json_depth`` its nesting.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_input_chars: int = Field(default=MAX_INPUT_CHARS, ge=1)
    max_piece_chars: int = Field(default=200, ge=20)
    max_concurrent: int = Field(default=2, ge=1)
    max_waiting: int = Field(default=16, ge=0)
    queue_timeout: float = Field(default=10.0, ge=0)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_json_depth: int = Field(default=16, ge=2)


class SpeechRequest(WireModel):
    """The body of ``POST /v1/audio/speech`` (the fields this server reads)."""

    input: str
    model: str | None = None
    voice: str | None = None
    response_format: str = "wav"
    speed: float | None = Field(default=None, ge=0.25, le=4.0)
    instructions: str | None = None
    stream_format: Literal["audio"] | None = None
    language: str | None = None
    lang: str | None = None


def _error(status: int, message: str, kind: str = "invalid_request_error", *,
           code: str | None = None, param: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status, headers=headers)


# ---------------------------------------------------------------------------- splitting

# Boundaries, best first: sentence ends, clause marks, then any space. Latin marks need a
# space after them ("3.5" and "1,000" stay whole); CJK marks do not.
_BOUNDARIES = (
    re.compile(r"(?<=[.!?…])\s+|(?<=[。！？])"),
    re.compile(r"(?<=[,;:])\s+|(?<=[，；：、])|\s+(?=[—–]\s)"),
    re.compile(r"\s+"),
)


def speech_pieces(text: str, max_chars: int) -> list[str]:
    """``text`` cut into pieces of at most ``max_chars`` characters, at sentence ends where
    it can, else at clause marks, else between words (a word longer than that is cut).

    >>> speech_pieces("One. Two, three four.", 10)
    ['One.', 'Two,', 'three', 'four.']
    """
    text = text.strip()
    return [p for p in _split(text, max_chars, 0) if p.strip()] if text else []


def _split(text: str, max_chars: int, level: int) -> list[str]:
    if len(text) <= max_chars:
        return [text]
    if level == len(_BOUNDARIES):
        return [text[i:i + max_chars] for i in range(0, len(text), max_chars)]
    parts = [p for p in _BOUNDARIES[level].split(text) if p]
    if len(parts) == 1:
        return _split(text, max_chars, level + 1)
    pieces: list[str] = []
    current = ""
    for part in parts:
        if len(part) > max_chars:
            if current:
                pieces.append(current)
                current = ""
            pieces.extend(_split(part, max_chars, level + 1))
            continue
        joined = f"{current} {part}" if current else part
        if len(joined) <= max_chars:
            current = joined
        else:
            pieces.append(current)
            current = part
    if current:
        pieces.append(current)
    return pieces


# ---------------------------------------------------------------------------- concurrency


class _Busy(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _SynthesisGate:
    """At most ``max_concurrent`` syntheses; a bounded, timed queue for the rest."""

    def __init__(self, limits: SpeechLimits):
        self.limits = limits
        self.waiting = 0
        self._sem: anyio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _semaphore(self) -> anyio.Semaphore:
        loop = asyncio.get_running_loop()  # one per event loop (tests run several)
        if self._sem is None or self._loop is not loop:
            self._sem, self._loop = anyio.Semaphore(self.limits.max_concurrent), loop
        return self._sem

    async def acquire(self) -> Callable[[], None]:
        """Wait for a turn; returns the function that gives it back. Raises _Busy."""
        sem = self._semaphore()
        lim = self.limits
        try:
            sem.acquire_nowait()
        except anyio.WouldBlock:
            if self.waiting >= lim.max_waiting:
                raise _Busy(429, f"the Talker is busy ({lim.max_concurrent} syntheses running and "
                                 f"{self.waiting} waiting): retry in a few seconds") from None
            self.waiting += 1
            try:
                with anyio.move_on_after(lim.queue_timeout):
                    await sem.acquire()
                    return _once(sem.release)
            finally:
                self.waiting -= 1
            raise _Busy(503, f"the Talker stayed busy for {lim.queue_timeout:g} s "
                             f"({lim.max_concurrent} syntheses at once): retry later") from None
        return _once(sem.release)


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()

    return call


class _SpeechResponse(StreamingResponse):
    """A streaming response that runs ``on_close`` however it ends (done, client gone,
    never started), so the synthesis slot and the Talker's stream are always given back."""

    def __init__(self, *args: Any, on_close: Callable[[], Awaitable[None]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


# ---------------------------------------------------------------------------- the app


def _explain(err: Any) -> str:
    loc = tuple(err["loc"])
    field = loc[0] if loc else None
    if field == "input":
        return "'input' is required: the text to speak (a non-empty string)"
    if field in ("language", "lang"):
        return "'language' must be a string such as 'en' or 'fr'"
    if field == "stream_format":
        return "stream_format must be 'audio' (audio streams as it is made; 'sse' is not served)"
    return explain(err, ranges={"speed": (0.25, 4.0)})[0]


def create_talker_app(talker: Talker | Mapping[str, Talker], *,
                      default_voice: str | None = None,
                      security: WebSecurity | None = None,
                      limits: SpeechLimits | None = None) -> Starlette:
    """A Starlette app serving ``talker`` (or several, keyed by voice name).

    Unknown ``voice`` names (OpenAI clients send "alloy" by default) use the default
    talker. ``security`` is the web-safety layer (default: loopback Host names and origins,
    no token; see :class:`~omni_agent.server.security.WebSecurity`); ``limits`` bound input,
    piece length and concurrent syntheses (:class:`SpeechLimits`).
    """
    talkers: dict[str, Talker] = dict(talker) if isinstance(talker, Mapping) else {talker.name: talker}
    if not talkers:
        raise ValueError("create_talker_app needs at least one talker")
    default = default_voice or next(iter(talkers))
    if default not in talkers:
        raise ValueError(f"default_voice {default!r} is not one of {sorted(talkers)}")
    limits = limits or SpeechLimits()
    gate = _SynthesisGate(limits)

    async def speech(request: Request) -> Response:
        try:
            body = parse_json(await request.body(), max_depth=limits.max_json_depth)
        except InvalidJSON as e:
            return _error(400, f"the body must be JSON: {{\"input\": \"text to speak\", ...}} ({e})")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        try:
            req = SpeechRequest.model_validate(body)
        except ValidationError as e:
            return _error(400, _explain(e.errors(include_url=False)[0]))
        text = req.input
        if not text.strip():
            return _error(400, "'input' is required: the text to speak (a non-empty string)")
        if len(text) > limits.max_input_chars:
            return _error(400, f"'input' is {len(text)} characters; at most "
                               f"{limits.max_input_chars} are accepted", param="input")
        if req.response_format not in _FORMATS:
            return _error(400, f"response_format {req.response_format!r} is not served here: "
                               "use 'pcm' or 'wav'", param="response_format")
        tk = talkers.get(req.voice) if req.voice is not None else None
        tk = tk or talkers[default]
        lang = req.language or req.lang

        try:
            release = await gate.acquire()
        except _Busy as e:
            return _error(e.status, str(e), "server_busy", code="server_busy",
                          headers={"Retry-After": "2"})
        chunks = _speak_pieces(tk, speech_pieces(text, limits.max_piece_chars), lang)

        async def close() -> None:
            await _close(chunks)
            release()

        try:
            first: AudioChunk | None = await anext(chunks, None)
        except Exception as e:  # noqa: BLE001 - before any byte is sent: a clean JSON error
            await close()
            return _error(500, f"{tk.name} could not synthesize the input: {e}", "talker_error")
        except BaseException:
            await close()
            raise
        rate = first.sample_rate if first is not None else tk.sample_rate

        async def body_iter() -> AsyncIterator[bytes]:
            if req.response_format == "wav":
                yield wav_stream_header(rate)
            if first is not None and first.pcm:
                yield first.pcm
            async for chunk in chunks:
                if chunk.pcm:
                    yield chunk.pcm

        headers = {"X-Sample-Rate": str(rate), "X-Talker": tk.name, "Cache-Control": "no-store"}
        return _SpeechResponse(body_iter(), media_type=_FORMATS[req.response_format],
                               headers=headers, on_close=close)

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "owned_by": "omni-agent", "sample_rate": t.sample_rate}
            for name, t in talkers.items()]})

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "talkers": sorted(talkers)})

    return Starlette(
        routes=[
            Route("/v1/audio/speech", speech, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers=route_errors(_error, "POST /v1/audio/speech, GET /v1/models and GET /health"),
        middleware=security_middleware(security, default_max_body_bytes=limits.max_body_bytes),
    )


async def _speak_pieces(tk: Talker, pieces: list[str], lang: str | None) -> AsyncIterator[AudioChunk]:
    """The audio of each piece in turn; only one piece is being synthesized at a time."""
    for piece in pieces:
        stream = tk.speak(Utterance(text=piece, display=piece, lang=lang))
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await _close(stream)  # done, failed or hung up: stop this piece's synthesis


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - closing must not hide the real outcome
            pass
