"""The Talker as its own service: an OpenAI-compatible ``POST /v1/audio/speech``.

Any Talker (Piper, espeak-ng, a remote one, your own) can run in its own process; an
agent elsewhere reaches it with :class:`~omni_agent.talkers.openai.OpenAITalker`, and any
OpenAI client (``client.audio.speech.create``) works unchanged::

    app = create_talker_app(PiperTalker())
    uvicorn.Server(uvicorn_config(app, port=8002)).run()    # or: omni-agent serve talker

Request body (JSON, validated by :class:`SpeechRequest`), as OpenAI's speech endpoint
(docs/api-speech.md has the table of what is served):

* ``input`` (text, required); ``model`` (accepted); ``voice`` picks one of several talkers
  when the app was made with a dict (other names, like OpenAI's "alloy", get the default);
* ``response_format`` — ``mp3`` (the default, as OpenAI's), ``opus`` (Ogg), ``aac``
  (ADTS), ``flac``, ``wav`` or ``pcm`` (raw int16 mono), all at 24 kHz like OpenAI's
  (``create_talker_app(sample_rate=None)`` keeps the Talker's own rate), encoded with
  PyAV in a worker thread (:class:`~omni_agent.audio_encode.SpeechEncoder`);
* ``speed`` 0.25-4.0 — the Talker's own pace where it has one
  (:class:`~omni_agent.talker.SpeedControl`: Piper's length scale, espeak-ng's rate), else,
  and beyond its range, FFmpeg's ``atempo`` time-stretch (pitch kept);
* ``stream_format`` ``"audio"`` (``"sse"`` is refused); ``instructions`` (accepted, not
  applied: no embedded voice takes instructions); the extension ``language`` (picks the
  espeak-ng voice, for instance).

The body streams: the first audio leaves as soon as the Talker has it. WAV and FLAC state
their length in the header, so they stream (with an open length) only when the request
says ``stream_format: "audio"``; otherwise the whole file is made first and sent with its
true sizes and a ``Content-Length``. Long text is spoken in pieces of at most
``SpeechLimits.max_piece_chars`` characters, cut at sentence, then clause, then word
boundaries (:func:`speech_pieces`), one after another — a synthesizer's memory grows with
the length of what it is given at once (Piper: 3.4 GB for 4,092 unpunctuated characters).
At most ``max_concurrent`` syntheses (and so encoders) run at once; others wait up to
``queue_timeout`` seconds (then 503), and beyond ``max_waiting`` waiters a request gets 429
at once. Responses carry ``X-Sample-Rate``. Errors are JSON ``{"error": {"message",
"type", ...}}`` with status 400 (bad request), 413 (body too large), 429/503 (busy) or 500
(synthesis failed), decided before any audio is sent. ``GET /metrics`` is Prometheus text.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Mapping

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..audio import float_to_pcm16, pcm16_to_float, resample
from ..audio_encode import OPENAI_SAMPLE_RATE, RESPONSE_FORMATS, SpeechEncoder
from ..events import AudioChunk, Utterance
from ..talker import SpeedControl, Talker
from .security import InvalidJSON, WebSecurity, parse_json, security_middleware
from .wire import WireModel, explain, route_errors

__all__ = ["create_talker_app", "MAX_INPUT_CHARS", "SpeechLimits", "SpeechRequest", "parse_sample_rate",
           "speech_pieces"]

#: Longest input accepted per request (OpenAI's limit too).
MAX_INPUT_CHARS = 4096



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
    response_format: str = "mp3"  # OpenAI's default
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

    @property
    def active(self) -> int:
        """Syntheses holding a slot now."""
        return self.limits.max_concurrent - self._sem.value if self._sem is not None else 0

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


# ---------------------------------------------------------------------------- metrics


class _Metrics:
    """The Talker server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, gate: _SynthesisGate):
        r = self.registry = CollectorRegistry()
        lat = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.requests = Counter("omni_agent_talker_requests", "Speech requests answered, by "
                                "response format and HTTP status", ["format", "status"], registry=r)
        self.rejected = Counter("omni_agent_talker_rejected", "Speech requests refused, by reason",
                                ["reason"], registry=r)
        self.first_byte = Histogram("omni_agent_talker_time_to_first_byte_seconds",
                                    "Request read to the first audio byte handed to the server",
                                    ["format"], buckets=lat, registry=r)
        self.answer = Histogram("omni_agent_talker_answer_seconds",
                                "Request read to the last audio byte handed to the server",
                                ["format"], buckets=lat, registry=r)
        self.audio = Counter("omni_agent_talker_audio_seconds", "Seconds of speech synthesized",
                             ["format"], registry=r)
        self.bytes = Counter("omni_agent_talker_bytes", "Encoded audio bytes sent", ["format"],
                             registry=r)
        active = Gauge("omni_agent_talker_active_syntheses", "Syntheses running now", registry=r)
        active.set_function(lambda: gate.active)
        waiting = Gauge("omni_agent_talker_waiting_requests", "Requests waiting for a synthesis slot",
                        registry=r)
        waiting.set_function(lambda: gate.waiting)

    def refuse(self, fmt: str, status: int, reason: str) -> None:
        self.requests.labels(fmt, str(status)).inc()
        self.rejected.labels(reason).inc()


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


def parse_sample_rate(value: str) -> int | None:
    """A sample rate as a client or the CLI writes it: Hz (8000-96000), or ``native`` (None:
    the Talker's own rate). Raises ValueError saying what to give."""
    text = value.strip().lower()
    if text == "native":
        return None
    if text.isdigit() and 8000 <= int(text) <= 96000:
        return int(text)
    raise ValueError(f"a sample rate is a number of Hz (8000-96000) or 'native' (the Talker's "
                     f"own rate), not {value[:20]!r}")


def _asked_rate(header: str | None, default: int | None) -> int | None:
    """The rate a request asks for in its ``X-Sample-Rate`` header (an extension OpenAI's
    servers ignore); ``default`` without one."""
    if header is None:
        return default
    try:
        return parse_sample_rate(header)
    except ValueError as e:
        raise ValueError(f"the X-Sample-Rate header: {e}") from None


def _at_speed(tk: Talker, speed: float | None) -> tuple[Talker, float]:
    """``tk`` at ``speed`` as far as it goes natively, and the time-stretch left to do."""
    if speed is None or abs(speed - 1.0) < 1e-9:
        return tk, 1.0
    if isinstance(tk, SpeedControl):
        lo, hi = tk.speed_range
        native = min(max(speed, lo), hi)
        return tk.with_speed(native), speed / native
    return tk, speed


class _Refused(Exception):
    """A request turned down before any audio: the JSON error it gets and the metric's reason."""

    def __init__(self, status: int, message: str, reason: str, *, fmt: str = "unknown",
                 kind: str = "invalid_request_error", code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.fmt = fmt
        self.kind = kind
        self.code = code
        self.param = param
        self.headers = headers

    def response(self) -> JSONResponse:
        """The JSON error answer."""
        return _error(self.status, str(self), self.kind, code=self.code, param=self.param, headers=self.headers)


@dataclass(frozen=True)
class _SpeechJob:
    """A validated speech request: what to say, with which Talker, into which format."""

    text: str
    fmt: str
    talker: Talker
    speed: float | None
    lang: str | None
    out_rate: int | None
    complete: bool  # the whole file before the first byte (WAV / FLAC unless streaming was asked)


class _Answer:
    """One answer in the making: the Talker's chunks through one encoder.

    It holds a synthesis slot (``release``) and the Talker's stream until :meth:`close`.
    """

    def __init__(self, job: _SpeechJob, chunks: AsyncIterator[AudioChunk], release: Callable[[], None],
                 metrics: _Metrics, t0: float):
        self.job = job
        self.chunks = chunks
        self.release = release
        self.metrics = metrics
        self.t0 = t0
        self.encoder: SpeechEncoder | None = None
        self.first: AudioChunk | None = None
        self.rate = 0
        self.sent = 0

    async def start(self, tempo: float) -> SpeechEncoder:
        """Wait for the first chunk (its rate is the stream's) and open the encoder."""
        job = self.job
        self.first = await anext(self.chunks, None)
        rate = self.rate = self.first.sample_rate if self.first is not None else job.talker.sample_rate
        self.encoder = await anyio.to_thread.run_sync(
            lambda: SpeechEncoder(job.fmt, rate, out_rate=job.out_rate, tempo=tempo, complete=job.complete))
        return self.encoder

    async def close(self) -> None:
        """Stop the Talker's stream, free the codec and give the synthesis slot back."""
        try:
            await _close(self.chunks)
        finally:
            if self.encoder is not None:
                self.encoder.close()  # frees the codec; writes nothing more (quick)
            self.release()

    async def whole(self, request: Request) -> bytes | None:
        """The whole file; None when the client hung up meanwhile."""
        assert self.encoder is not None
        return await _encode_all(self.encoder, self.first, self.chunks, self.rate, request, self.metrics,
                                 self.job.fmt)

    async def stream(self) -> AsyncIterator[bytes]:
        """The encoded bytes as the Talker makes the audio."""
        encoder, fmt = self.encoder, self.job.fmt
        assert encoder is not None
        if self.first is not None:
            if data := self._sending(await _feed(encoder, self.first, self.rate, self.metrics, fmt)):
                yield data
        async for chunk in self.chunks:
            if data := self._sending(await _feed(encoder, chunk, self.rate, self.metrics, fmt)):
                yield data
        if data := self._sending(await anyio.to_thread.run_sync(encoder.finish)):
            yield data
        self.metrics.answer.labels(fmt).observe(time.perf_counter() - self.t0)

    def _sending(self, data: bytes) -> bytes:
        # Counted as it is handed to the server; the first bytes also time the first byte.
        if data:
            fmt = self.job.fmt
            if not self.sent:
                self.metrics.first_byte.labels(fmt).observe(time.perf_counter() - self.t0)
            self.sent += len(data)
            self.metrics.bytes.labels(fmt).inc(len(data))
        return data


class _SpeechService:
    """``POST /v1/audio/speech``: validate, wait for a synthesis slot, encode, answer."""

    def __init__(self, talkers: dict[str, Talker], default: str, limits: SpeechLimits,
                 sample_rate: int | None):
        self.talkers = talkers
        self.default = default
        self.limits = limits
        self.sample_rate = sample_rate
        self.gate = _SynthesisGate(limits)
        self.metrics = _Metrics(self.gate)

    async def speech(self, request: Request) -> Response:
        """The route: any refusal before the first byte is a JSON error, counted."""
        t0 = time.perf_counter()
        raw = await request.body()
        try:
            return await self._answer(request, self._job(raw, request.headers.get("x-sample-rate")), t0)
        except _Refused as e:
            self.metrics.refuse(e.fmt, e.status, e.reason)
            return e.response()

    def _request(self, raw: bytes) -> SpeechRequest:
        try:
            body = parse_json(raw, max_depth=self.limits.max_json_depth)
        except InvalidJSON as e:
            raise _Refused(400, f"the body must be JSON: {{\"input\": \"text to speak\", ...}} ({e})",
                           "bad_request") from None
        if not isinstance(body, dict):
            raise _Refused(400, "the body must be a JSON object", "bad_request")
        try:
            return SpeechRequest.model_validate(body)
        except ValidationError as e:
            raise _Refused(400, _explain(e.errors(include_url=False)[0]), "bad_request") from None

    def _job(self, raw: bytes, rate_header: str | None) -> _SpeechJob:
        req = self._request(raw)
        text, fmt = req.input, req.response_format
        if fmt not in RESPONSE_FORMATS:
            raise _Refused(400, f"response_format {fmt!r} is not served here: use one of "
                                f"{', '.join(RESPONSE_FORMATS)}", "bad_format", param="response_format")
        if not text.strip():
            raise _Refused(400, "'input' is required: the text to speak (a non-empty string)", "bad_request",
                           fmt=fmt)
        if len(text) > self.limits.max_input_chars:
            raise _Refused(400, f"'input' is {len(text)} characters; at most {self.limits.max_input_chars} "
                                "are accepted", "input_too_long", fmt=fmt, param="input")
        try:
            out_rate = _asked_rate(rate_header, self.sample_rate)
        except ValueError as e:
            raise _Refused(400, str(e), "bad_request", fmt=fmt, param="X-Sample-Rate") from None
        tk = self.talkers.get(req.voice) if req.voice is not None else None
        return _SpeechJob(
            text=text, fmt=fmt, talker=tk or self.talkers[self.default], speed=req.speed,
            lang=req.language or req.lang, out_rate=out_rate,
            # WAV and FLAC headers state the length: stream them only when asked to.
            complete=RESPONSE_FORMATS[fmt].sized_header and req.stream_format != "audio")

    async def _answer(self, request: Request, job: _SpeechJob, t0: float) -> Response:
        fmt, tk = job.fmt, job.talker
        try:
            release = await self.gate.acquire()
        except _Busy as e:
            raise _Refused(e.status, str(e), "busy", fmt=fmt, kind="server_busy", code="server_busy",
                           headers={"Retry-After": "2"}) from None
        try:
            # in a worker thread: a Talker may measure itself the first time (Piper does)
            spoken, tempo = await anyio.to_thread.run_sync(_at_speed, tk, job.speed)
        except Exception as e:  # noqa: BLE001 - a Talker's own refusal, before any byte
            release()
            raise _Refused(500, f"{tk.name} cannot speak at speed {job.speed}: {e}", "talker_error", fmt=fmt,
                           kind="talker_error") from None
        answer = _Answer(job, _speak_pieces(spoken, speech_pieces(job.text, self.limits.max_piece_chars), job.lang),
                         release, self.metrics, t0)
        try:
            encoder = await answer.start(tempo)
            # Whole file first (bounded by max_input_chars): a failure is still a JSON 500.
            data = await answer.whole(request) if job.complete else None
        except Exception as e:  # noqa: BLE001 - before any byte is sent: a clean JSON error
            await answer.close()
            raise _Refused(500, f"{tk.name} could not synthesize the input: {e}", "talker_error", fmt=fmt,
                           kind="talker_error") from None
        except BaseException:
            await answer.close()
            raise
        headers = {"X-Sample-Rate": str(encoder.sample_rate), "X-Talker": tk.name, "Cache-Control": "no-store"}
        if not job.complete:
            self.metrics.requests.labels(fmt, "200").inc()
            return _SpeechResponse(answer.stream(), media_type=encoder.media_type, headers=headers,
                                   on_close=answer.close)
        await answer.close()
        if data is None:  # the client hung up while the file was being made: nobody reads this
            self.metrics.refuse(fmt, 499, "client_gone")
            return Response(b"", status_code=499)
        self.metrics.requests.labels(fmt, "200").inc()
        self.metrics.first_byte.labels(fmt).observe(time.perf_counter() - t0)
        self.metrics.answer.labels(fmt).observe(time.perf_counter() - t0)
        self.metrics.bytes.labels(fmt).inc(len(data))
        return Response(data, media_type=encoder.media_type, headers=headers)


def create_talker_app(talker: Talker | Mapping[str, Talker], *,
                      default_voice: str | None = None,
                      security: WebSecurity | None = None,
                      limits: SpeechLimits | None = None,
                      sample_rate: int | None = OPENAI_SAMPLE_RATE) -> Starlette:
    """A Starlette app serving ``talker`` (or several, keyed by voice name).

    Unknown ``voice`` names (OpenAI clients send "alloy" by default) use the default
    talker. ``security`` is the web-safety layer (default: loopback Host names and origins,
    no token; see :class:`~omni_agent.server.security.WebSecurity`); ``limits`` bound input,
    piece length and concurrent syntheses (:class:`SpeechLimits`). ``sample_rate`` is the
    rate of every answer (24000, OpenAI's; None: the Talker's own, so ``pcm`` and ``wav``
    pass its samples through unchanged).
    """
    talkers: dict[str, Talker] = dict(talker) if isinstance(talker, Mapping) else {talker.name: talker}
    if not talkers:
        raise ValueError("create_talker_app needs at least one talker")
    default = default_voice or next(iter(talkers))
    if default not in talkers:
        raise ValueError(f"default_voice {default!r} is not one of {sorted(talkers)}")
    if sample_rate is not None and not 8000 <= sample_rate <= 96000:
        raise ValueError(f"sample_rate must be between 8000 and 96000 Hz (or None), not {sample_rate}")
    limits = limits or SpeechLimits()
    service = _SpeechService(talkers, default, limits, sample_rate)

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "owned_by": "omni-agent", "sample_rate": t.sample_rate}
            for name, t in talkers.items()]})

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "talkers": sorted(talkers)})

    async def metrics_page(_request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/v1/audio/speech", service.speech, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
        ],
        exception_handlers=route_errors(
            _error, "POST /v1/audio/speech, GET /v1/models, GET /health and GET /metrics"),
        middleware=security_middleware(security, default_max_body_bytes=limits.max_body_bytes),
    )


async def _feed(encoder: SpeechEncoder, chunk: AudioChunk, rate: int, metrics: _Metrics,
                fmt: str) -> bytes:
    """One chunk through the encoder, in a worker thread (encoding is CPU work)."""
    if not chunk.pcm:
        return b""
    pcm = chunk.pcm
    if chunk.sample_rate != rate:  # a Talker that changed rate mid-answer: keep one stream
        pcm = float_to_pcm16(resample(pcm16_to_float(pcm), chunk.sample_rate, rate))
    metrics.audio.labels(fmt).inc(len(pcm) / 2 / rate)
    return await anyio.to_thread.run_sync(encoder.feed, pcm)


async def _encode_all(encoder: SpeechEncoder, first: AudioChunk | None,
                      chunks: AsyncIterator[AudioChunk], rate: int, request: Request,
                      metrics: _Metrics, fmt: str) -> bytes | None:
    """The whole answer as one file; None when the client hung up meanwhile."""
    if first is not None:
        await _feed(encoder, first, rate, metrics, fmt)
    async for chunk in chunks:
        if await request.is_disconnected():
            return None
        await _feed(encoder, chunk, rate, metrics, fmt)
    return await anyio.to_thread.run_sync(encoder.finish)


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
