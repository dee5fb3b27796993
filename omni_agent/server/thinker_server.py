"""Serve any Thinker as an OpenAI-compatible chat completions endpoint.

Routes:

* ``POST /v1/chat/completions`` — streaming (SSE, ``stream: true``) and not; text,
  reasoning (``reasoning_content``) and tool calls (``tool_calls`` deltas); image, audio
  and video content parts are handed to the Thinker as media parts; ``response_format``,
  ``tool_choice``, ``logprobs`` / ``top_logprobs``, a true ``finish_reason`` and the
  templated prompt's ``prompt_tokens`` (docs/api-chat-completions.md has the table);
* ``GET /v1/models`` and ``GET /v1/models/{id}`` — the one model this server runs (any
  other id is a 404 ``model_not_found``, unless the server accepts any name);
* ``GET /health`` — ``{"status": "ok", ...}`` with the queue's state;
* ``GET /metrics`` — Prometheus text: requests, queue, latencies, tokens, finish reasons.

Requests are validated by pydantic models (:class:`ChatCompletionRequest`); a malformed one
gets a 400 with an OpenAI-style JSON error naming the bad field; every other refusal on any
route (unknown route or model, wrong method, a promise the backend cannot keep, a full
queue) is an OpenAI-style JSON error too. :class:`ThinkerServerLimits` bounds the body
(413), the prompt's characters (400 ``context_length_exceeded``), the JSON nesting and the
queue (requests beyond the backend's concurrency wait in arrival order; past the queue's
size or time a 429 with ``Retry-After``); the web-safety layer
(:mod:`omni_agent.server.security`: Host and Origin checks, optional token, headers) wraps
the app::

    app = create_app(TransformersThinker.default(), security=WebSecurity(token="s3cret"))
    uvicorn.Server(uvicorn_config(app, port=8000)).run()   # or: omni-agent serve thinker

What a backend can promise it says in ``supports`` (a frozenset, like ``accepts``):
``"response_format"`` (it keeps json_object / json_schema), ``"tool_choice"`` (it keeps
"required" and a named tool), ``"logprobs"``. A request asking a backend for one it does
not list is a 400 that says so, never an answer that ignores it. ``tool_choice: "none"``
needs nothing of the backend: the server offers it no tools and passes out no tool call.
A backend's ``max_concurrency`` (None or absent: no bound) sizes the queue's running slots.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, Literal

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import OmniAgentError, ThinkerError, UnsupportedInputError
from ..events import AudioPart, Event, Finish, ImagePart, ReasoningDelta, TextDelta, TextPart, ToolCall, VideoPart
from ..thinker import GenerationSettings, Message, ThinkerRequest
from ..thinkers.openai import parse_data_url
from .queue import QueueFull, QueueTimeout, RequestQueue
from .security import InvalidJSON, WebSecurity, parse_json, security_middleware
from .wire import WireModel, explain, fail, route_errors

__all__ = ["create_app", "parse_chat_request", "BadRequest", "ChatCompletionRequest",
           "ThinkerServerLimits"]

#: seed must fit the int64 OpenAI documents (larger ones used to crash backends: a 502).
_INT64 = (-(2 ** 63), 2 ** 63 - 1)


class BadRequest(ValueError):
    """A request the server cannot take; ``param`` names the bad field, ``code`` is
    OpenAI's error code when one applies (``context_length_exceeded``)."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ThinkerServerLimits(BaseModel):
    """What one request to the Thinker server may cost.

    * ``max_body_bytes`` — largest request body, media included (413 beyond; one 20 MB
      prompt took a server from 1.1 to 6 GB). ``WebSecurity.max_body_bytes``, when set, wins.
    * ``max_prompt_chars`` — characters of text in all messages, tool calls and tool
      definitions together (400 ``context_length_exceeded`` beyond).
    * ``max_json_depth`` — nesting of arrays and objects in the body (400 beyond).
    * ``max_concurrent_requests`` — generations at once; None: the backend's
      ``max_concurrency`` (1 for the local transformers model; no bound when it names none).
    * ``max_queued_requests`` — requests waiting for a slot, in arrival order; one more is
      answered 429 with ``Retry-After`` (0: no waiting, busy is busy).
    * ``max_queue_seconds`` — how long one request may wait for a slot (then 429).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(default=16 << 20, ge=1024)
    max_prompt_chars: int = Field(default=128 * 1024, ge=1)
    max_json_depth: int = Field(default=64, ge=4)
    max_concurrent_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int = Field(default=16, ge=0)
    max_queue_seconds: float = Field(default=60.0, gt=0)


def _error(status: int, message: str, *, param: str | None = None,
           kind: str = "invalid_request_error", code: str | int | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": status if code is None else code}}, status_code=status,
                        headers=headers)


# ---------------------------------------------------------------------------- request models
#
# The wire format as pydantic models: strict types (OpenAI takes no "0.5" for 0.5 and no
# true for 1), unknown fields allowed and ignored (clients send fields we do not use).
# ``content`` stays loose here: its parts become our media parts in ``_part`` below.


class FunctionCall(WireModel):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(WireModel):
    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(WireModel):
    role: str
    content: Any = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = Field(default=None, validate_default=True)
    name: str | None = None

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        v = "system" if v == "developer" else v
        if v not in ("system", "user", "assistant", "tool"):
            raise fail(f"must be system, user, assistant or tool (got {v!r})")
        return v

    @field_validator("tool_call_id")
    @classmethod
    def _tool_call_id(cls, v: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("role") == "tool" and not v:
            raise fail("is required for a tool message")
        return v


class FunctionDef(WireModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDef(WireModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class _ChoiceName(WireModel):
    name: str


class NamedToolChoice(WireModel):
    type: Literal["function"] = "function"
    function: _ChoiceName


class StreamOptions(WireModel):
    include_usage: bool = False


class JsonSchemaSpec(WireModel):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise fail("needs json_schema: {\"name\": ..., \"schema\": {...}} when type is "
                       "json_schema")
        return self

    def as_request(self) -> dict[str, Any] | None:
        """The OpenAI-shaped dict for :attr:`ThinkerRequest.response_format` (None: text)."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "json_object"}
        return {"type": "json_schema",
                "json_schema": self.json_schema.model_dump(by_alias=True, exclude_none=True)}  # type: ignore[union-attr]


class AudioOutput(WireModel):
    voice: str | None = None
    format: str | None = None


class ChatCompletionRequest(WireModel):
    """The body of ``POST /v1/chat/completions`` (the fields this server reads)."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = Field(default=None, ge=_INT64[0], le=_INT64[1])
    n: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None
    speaker: str | None = None

    @field_validator("n")
    @classmethod
    def _n(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise fail("must be 1: only n=1 is supported")
        return v


# Fields whose every error reads best as one sentence (unions, lists of objects).
_WHOLE_FIELD = {
    "messages": "messages must be a non-empty list",
    "stop": "stop must be a string or a list of strings",
    "tools": "tools must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}",
    "tool_choice": "tool_choice must be auto, none, required or {\"type\": \"function\", "
                   "\"function\": {\"name\": ...}}",
}
_RANGES = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2),
           "frequency_penalty": (-2, 2), "seed": _INT64}


def _explain(err: Any) -> BadRequest:
    """One pydantic error -> a BadRequest whose message starts with the field's name."""
    whole = dict(_WHOLE_FIELD) if len(err["loc"]) == 1 else \
        {k: v for k, v in _WHOLE_FIELD.items() if k != "messages"}
    message, param = explain(err, whole_field=whole, ranges=_RANGES)
    return BadRequest(message, param)


_MEDIA = {"image_url": ImagePart, "audio_url": AudioPart, "video_url": VideoPart}


def _media_part(kind: str, value: Any, where: str) -> Any:
    cls = _MEDIA[kind]
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where}.{kind}.url must be a non-empty string", f"{where}.{kind}.url")
    if url.startswith("data:"):
        try:
            data, mime = parse_data_url(url)
        except ValueError as e:
            raise BadRequest(f"{where}.{kind}.url: {e}", f"{where}.{kind}.url") from None
        return cls(data=data, mime=mime)
    if url.startswith(("http://", "https://")):
        return cls(url=url)
    raise BadRequest(f"{where}.{kind}.url must be an http(s) or data: URL", f"{where}.{kind}.url")


def _part(item: Any, where: str) -> Any:
    if isinstance(item, str):
        return TextPart(item)
    if not isinstance(item, dict) or not isinstance(item.get("type"), str):
        raise BadRequest(f"{where} must be an object with a 'type'", where)
    kind = item["type"]
    if kind in ("text", "input_text"):
        text = item.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}.text must be a string", f"{where}.text")
        return TextPart(text)
    if kind in _MEDIA:
        return _media_part(kind, item.get(kind), where)
    if kind == "input_audio":
        audio = item.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise BadRequest(f"{where}.input_audio.data must be a base64 string",
                             f"{where}.input_audio.data")
        fmt = audio.get("format") or "wav"
        if not isinstance(fmt, str):
            raise BadRequest(f"{where}.input_audio.format must be a string such as 'wav'",
                             f"{where}.input_audio.format")
        try:
            data = base64.b64decode(audio["data"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}.input_audio.data is not valid base64",
                             f"{where}.input_audio.data") from None
        return AudioPart(data=data, mime="audio/mpeg" if fmt == "mp3" else f"audio/{fmt}")
    raise BadRequest(f"{where}: unknown content part type {kind!r} (use text, image_url, "
                     "input_audio, audio_url or video_url)", f"{where}.type")


def _message(raw: ChatMessage, i: int) -> Message:
    where = f"messages[{i}]"
    content = raw.content
    if content is None:
        content = ""
    if isinstance(content, list):
        parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
        content = parts if any(not isinstance(p, TextPart) for p in parts) else \
            "".join(p.text for p in parts)
    elif not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string or a list of parts", f"{where}.content")
    calls = [{"id": tc.id or f"call_{j}", "name": tc.function.name,
              "arguments": tc.function.arguments if isinstance(tc.function.arguments, str)
              else json.dumps(tc.function.arguments)}
             for j, tc in enumerate(raw.tool_calls or [])]
    return Message(role=raw.role, content=content, tool_calls=calls,  # type: ignore[arg-type]
                   tool_call_id=raw.tool_call_id, name=raw.name)


def _prompt_chars(req: ThinkerRequest) -> int:
    n = sum(len(m.text) + sum(len(c["name"]) + len(c["arguments"]) for c in m.tool_calls)
            for m in req.messages)
    n += len(json.dumps(req.response_format)) if req.response_format else 0
    return n + sum(len(json.dumps(t)) for t in req.tools) + sum(len(s) for s in req.settings.stop)


def _tool_choice(wire: ChatCompletionRequest, tools: list[dict[str, Any]]) -> str:
    """tool_choice as :class:`ThinkerRequest` takes it; a choice that cannot be kept
    (a named tool not in ``tools``, "required" with no tools) is a BadRequest."""
    given = wire.tool_choice or "auto"
    choice: str = given.function.name if isinstance(given, NamedToolChoice) else given
    names = [t["function"]["name"] for t in tools]
    if choice in ("auto", "none"):
        return choice
    if not names:
        raise BadRequest(f"tool_choice {choice!r} needs tools: send the tools the model may "
                         "call, or leave tool_choice out", "tool_choice")
    if choice != "required" and choice not in names:
        raise BadRequest(f"tool_choice names the tool {choice!r}, which is not in tools "
                         f"({', '.join(repr(n) for n in names)}): add it to tools or name one "
                         "of them", "tool_choice")
    return choice


def parse_chat_request(body: Any, defaults: GenerationSettings | None = None, *,
                       limits: ThinkerServerLimits | None = None) -> tuple[ThinkerRequest, dict[str, Any]]:
    """An OpenAI chat completions body -> (ThinkerRequest, options). Raises BadRequest.

    ``options`` holds ``stream``, ``include_usage`` and ``model`` (as the client named it).
    ``limits.max_prompt_chars`` bounds the text of the whole request.
    """
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    try:
        wire = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise _explain(e.errors(include_url=False)[0]) from None
    if wire.top_logprobs is not None and not wire.logprobs:
        raise BadRequest("top_logprobs needs logprobs: true", "top_logprobs")
    messages = [_message(m, i) for i, m in enumerate(wire.messages)]
    d = defaults or GenerationSettings()
    stop = wire.stop
    stop = list(d.stop) if stop is None else [stop] if isinstance(stop, str) else stop
    settings = GenerationSettings(
        max_tokens=wire.max_completion_tokens or wire.max_tokens or d.max_tokens,
        temperature=d.temperature if wire.temperature is None else float(wire.temperature),
        top_p=d.top_p if wire.top_p is None else float(wire.top_p),
        stop=stop, seed=d.seed if wire.seed is None else wire.seed)
    tools = [t.model_dump(exclude_none=True) for t in wire.tools or []]
    choice = _tool_choice(wire, tools)
    if choice == "none":
        tools = []  # none: the backend is offered no tool (and its calls are not passed out)
    extra = {k: body[k] for k in ("modalities", "speaker", "audio") if k in body}
    req = ThinkerRequest(messages=messages, tools=tools, tool_choice=choice, settings=settings,
                         session_id=wire.user or "", extra=extra,
                         response_format=wire.response_format.as_request() if wire.response_format else None,
                         logprobs=(wire.top_logprobs or 0) if wire.logprobs else None)
    limit = (limits or ThinkerServerLimits()).max_prompt_chars
    size = _prompt_chars(req)
    if size > limit:
        raise BadRequest(f"the prompt is {size} characters; this server takes at most {limit} "
                         "per request (messages, tool calls and tools together): shorten the "
                         "conversation", "messages", code="context_length_exceeded")
    opts = wire.stream_options or StreamOptions()
    return req, {"stream": wire.stream, "include_usage": opts.include_usage, "model": wire.model}


# ---------------------------------------------------------------------------- responses


class _Answer:
    """Collects what the Thinker said, for the final chunk / the non-streaming reply.

    ``add`` returns whether the event goes out to the client: with ``tool_choice: "none"``
    a tool call the backend made anyway does not, and :class:`Finish` never does (it
    becomes ``finish_reason`` and ``usage``)."""

    def __init__(self, req: ThinkerRequest) -> None:
        self.calls_allowed = req.tool_choice != "none"
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCall] = []
        self.logprobs: list[dict[str, Any]] = []
        self.finish: Finish | None = None
        self.dropped_calls = 0
        self.first_token: float | None = None  # monotonic time of the first passed-out event

    def add(self, ev: Event) -> bool:
        if isinstance(ev, Finish):
            self.finish = ev
            return False
        if isinstance(ev, ToolCall) and not self.calls_allowed:
            self.dropped_calls += 1
            return False
        if self.first_token is None:
            self.first_token = time.monotonic()
        if isinstance(ev, TextDelta):
            self.text.append(ev.text)
            if ev.logprobs:
                self.logprobs.extend(ev.logprobs)
        elif isinstance(ev, ReasoningDelta):
            self.reasoning.append(ev.text)
        elif isinstance(ev, ToolCall):
            self.calls.append(ev)
        return True

    @property
    def finish_reason(self) -> str:
        """The backend's reason when it gave one, kept true to what the client got: a call
        passed out is "tool_calls"; "tool_calls" with every call withheld is "stop"."""
        if self.calls:
            return "tool_calls"
        reason = self.finish.reason if self.finish is not None else "stop"
        return "stop" if reason == "tool_calls" else reason


def _tool_call_json(ev: ToolCall) -> dict[str, Any]:
    return {"id": ev.id, "type": "function", "function": {"name": ev.name, "arguments": ev.arguments}}


def _error_response(status: int, e: Exception, kind: str = "invalid_request_error",
                    param: str | None = None) -> JSONResponse:
    return _error(status, str(e), kind=kind, param=getattr(e, "param", None) or param)


class _Metrics:
    """The Thinker server's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self, queue: RequestQueue):
        r = self.registry = CollectorRegistry()
        lat = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.requests = Counter("omni_thinker_requests", "Chat completion requests answered, by "
                                "HTTP status", ["status"], registry=r)
        self.rejected = Counter("omni_thinker_rejected", "Requests refused, by reason",
                                ["reason"], registry=r)
        self.finish = Counter("omni_thinker_finish", "Answers finished, by finish_reason",
                              ["reason"], registry=r)
        self.prompt_tokens = Counter("omni_thinker_prompt_tokens", "Prompt tokens read (as "
                                     "the backend counted them)", registry=r)
        self.completion_tokens = Counter("omni_thinker_completion_tokens", "Tokens generated",
                                         registry=r)
        self.queue_seconds = Histogram("omni_thinker_queue_wait_seconds", "Time a request "
                                       "waited for a free slot", buckets=lat, registry=r)
        self.first_token = Histogram("omni_thinker_first_token_seconds", "Slot granted to the "
                                     "Thinker's first event", buckets=lat, registry=r)
        self.request_seconds = Histogram("omni_thinker_request_seconds", "Slot granted to the "
                                         "answer's end", buckets=lat, registry=r)
        running = Gauge("omni_thinker_requests_running", "Generations running now", registry=r)
        running.set_function(lambda: queue.running)
        waiting = Gauge("omni_thinker_requests_queued", "Requests waiting for a slot", registry=r)
        waiting.set_function(lambda: queue.waiting)

    def answered(self, answer: _Answer, started: float) -> None:
        self.finish.labels(answer.finish_reason).inc()
        f = answer.finish
        if f is not None and f.prompt_tokens:
            self.prompt_tokens.inc(f.prompt_tokens)
        if f is not None and f.completion_tokens:
            self.completion_tokens.inc(f.completion_tokens)
        if answer.first_token is not None:
            self.first_token.observe(max(0.0, answer.first_token - started))
        self.request_seconds.observe(time.monotonic() - started)


class _HeldStream(StreamingResponse):
    """A streaming answer that gives its queue slot back and closes the Thinker's stream
    when it ends — also when the client left before the first byte was sent."""

    def __init__(self, content: Any, *, on_close: Callable[[], Awaitable[None]], **kw: Any):
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self._on_close()


class _Busy(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.retry_after = status, code, retry_after


class _ThinkerService:
    """The routes of one served Thinker (see :func:`create_app`)."""

    def __init__(self, thinker: Any, served: str, defaults: GenerationSettings | None,
                 limits: ThinkerServerLimits, any_model: bool):
        self.thinker = thinker
        self.served = served
        self.defaults = defaults
        self.limits = limits
        self.any_model = any_model
        self.created = int(time.time())
        self.supports = frozenset(getattr(thinker, "supports", ()) or ())
        running = limits.max_concurrent_requests or getattr(thinker, "max_concurrency", None)
        self.queue = RequestQueue(running, limits.max_queued_requests)
        self.metrics = _Metrics(self.queue)
        self.count = getattr(thinker, "count_tokens", None)

    # ------------------------------------------------------------------ small routes

    async def health(self, request: Request) -> Response:
        q = self.queue
        return JSONResponse({"status": "ok", "thinker": getattr(self.thinker, "name", "?"),
                             "model": self.served,
                             "accepts": sorted(getattr(self.thinker, "accepts", ())),
                             "supports": sorted(self.supports),
                             "queue": {"running": q.running, "waiting": q.waiting,
                                       "max_running": q.max_running, "max_waiting": q.max_waiting}})

    async def metrics_text(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _model_object(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "omni-agent"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_object(self.served)]})

    async def model(self, request: Request) -> Response:
        model_id = request.path_params["model_id"]
        if model_id != self.served and not self.any_model:
            return self._unknown_model(model_id)
        return JSONResponse(self._model_object(model_id))

    def _unknown_model(self, name: str) -> JSONResponse:
        self.metrics.rejected.labels("model_not_found").inc()
        return _error(404, f"the model {name!r} does not exist on this server: it serves "
                      f"{self.served!r} (GET /v1/models). Name that model, or start the server "
                      "with --any-model to answer every model name with it",
                      param="model", code="model_not_found")

    # ------------------------------------------------------------------ checks

    def _unsupported(self, req: ThinkerRequest) -> BadRequest | None:
        """A BadRequest when the request asks a promise this backend cannot keep."""
        who = f"this server's Thinker ({getattr(self.thinker, 'name', '?')})"
        if req.response_format and "response_format" not in self.supports:
            return BadRequest(f"{who} cannot enforce response_format "
                              f"{req.response_format['type']}: leave response_format out (and ask "
                              "for JSON in the prompt), or serve a backend that keeps it "
                              "(transformers, openai)", "response_format",
                              code="unsupported_parameter")
        if req.tool_choice not in ("auto", "none") and "tool_choice" not in self.supports:
            return BadRequest(f"{who} cannot force tool_choice {req.tool_choice!r}: use "
                              "tool_choice auto or none, or serve a backend that keeps it "
                              "(transformers, openai)", "tool_choice", code="unsupported_parameter")
        if req.logprobs is not None and "logprobs" not in self.supports:
            return BadRequest(f"{who} does not report logprobs: leave logprobs out, or serve "
                              "a backend that does (transformers, openai)", "logprobs",
                              code="unsupported_parameter")
        return None

    async def _admit(self, request: Request) -> float:
        """Wait for a slot (the client leaving while it waits gives up its place); returns
        the seconds waited. Raises _Busy when the queue is full or the wait too long."""
        if self.queue.try_acquire():
            self.metrics.queue_seconds.observe(0.0)
            return 0.0
        gone = False

        async def watch(scope: anyio.CancelScope) -> None:
            nonlocal gone
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone = True
            scope.cancel()

        waited: float | None = None
        busy: QueueFull | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg.cancel_scope)
            try:
                waited = await self.queue.acquire(self.limits.max_queue_seconds)
            except QueueFull as e:
                busy = e
            tg.cancel_scope.cancel()
        if busy is not None:
            code = "queue_timeout" if isinstance(busy, QueueTimeout) else "queue_full"
            self.metrics.rejected.labels(code).inc()
            raise _Busy(429, code, str(busy), busy.retry_after)
        if waited is None or gone:  # the client left while waiting
            if waited is not None:
                self.queue.release()
            self.metrics.rejected.labels("client_gone").inc()
            raise _Busy(499, "client_gone", "the client closed the connection while waiting")
        self.metrics.queue_seconds.observe(waited)
        return waited

    def _usage(self, req: ThinkerRequest, answer: _Answer) -> dict[str, Any] | None:
        f = answer.finish
        prompt = f.prompt_tokens if f is not None else None
        done = f.completion_tokens if f is not None else None
        if (prompt is None or done is None) and callable(self.count):
            try:  # a backend that reports no counts: count the text (a courtesy, never fatal)
                if prompt is None:
                    prompt = sum(self.count(m.text) for m in req.messages)
                if done is None:
                    done = self.count("".join(answer.text)) + sum(self.count(c.arguments)
                                                                  for c in answer.calls)
            except Exception:  # noqa: BLE001 - counting is a courtesy; never fail a reply for it
                return None
        if prompt is None or done is None:
            return None
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    # ------------------------------------------------------------------ chat completions

    async def chat(self, request: Request) -> Response:
        response = await self._chat(request)
        if not isinstance(response, _HeldStream):
            self.metrics.requests.labels(str(response.status_code)).inc()
        return response

    async def _chat(self, request: Request) -> Response:
        try:
            body = parse_json(await request.body(), max_depth=self.limits.max_json_depth)
        except InvalidJSON as e:
            return _error(400, str(e))
        try:
            req, opts = parse_chat_request(body, self.defaults, limits=self.limits)
        except BadRequest as e:
            return _error(400, str(e), param=e.param, code=e.code)
        if opts["model"] is not None and opts["model"] != self.served and not self.any_model:
            return self._unknown_model(opts["model"])
        refusal = self._unsupported(req)
        if refusal is not None:
            self.metrics.rejected.labels("unsupported").inc()
            return _error(400, str(refusal), param=refusal.param, code=refusal.code)
        try:
            waited = await self._admit(request)
        except _Busy as b:
            headers = {"Retry-After": str(b.retry_after)} if b.retry_after else None
            return _error(b.status, str(b), kind="rate_limit_error" if b.status == 429
                          else "invalid_request_error", code=b.code, headers=headers)
        started = time.monotonic()
        events = self.thinker.stream(req)
        answer = _Answer(req)
        handed_over = False

        sse: Any = None

        async def close() -> None:
            try:
                if sse is not None:
                    await sse.aclose()  # its metrics, even when the client left mid-stream
                await events.aclose()  # client gone or done: stop the Thinker
            finally:
                self.queue.release(time.monotonic() - started)

        try:
            first = await self._first(events, answer)
            if isinstance(first, Response):
                return first
            if opts["stream"]:
                handed_over = True
                sse = self._sse(req, opts, events, answer, first, started)
                return _HeldStream(sse, on_close=close, media_type="text/event-stream",
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                            "X-Queue-Seconds": f"{waited:.3f}"})
            return await self._complete(req, events, answer, first, started, waited)
        finally:
            if not handed_over:
                with anyio.CancelScope(shield=True):
                    await close()

    async def _first(self, events: Any, answer: _Answer) -> Event | None | Response:
        """The first event, pulled before answering so that input errors become a 400
        (not a broken stream) and backend failures a 5xx."""
        try:
            return await events.__anext__()
        except StopAsyncIteration:
            return None
        except UnsupportedInputError as e:
            return _error_response(400, e, param="messages")
        except ThinkerError as e:
            return _error_response(502, e, kind="thinker_error")
        except OmniAgentError as e:
            return _error_response(400, e)

    async def _complete(self, req: ThinkerRequest, events: Any, answer: _Answer,
                        first: Event | None, started: float, waited: float) -> Response:
        try:
            if first is not None:
                answer.add(first)
                async for ev in events:
                    answer.add(ev)
        except OmniAgentError as e:
            return _error(502, str(e), kind="thinker_error")
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(answer.text) or
                               (None if answer.calls else "")}
        if answer.reasoning:
            msg["reasoning_content"] = "".join(answer.reasoning)
        if answer.calls:
            msg["tool_calls"] = [_tool_call_json(c) for c in answer.calls]
        logprobs = {"content": answer.logprobs, "refusal": None} if req.logprobs is not None else None
        out: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
            "created": int(time.time()), "model": self.served,
            "choices": [{"index": 0, "message": msg, "logprobs": logprobs,
                         "finish_reason": answer.finish_reason}]}
        u = self._usage(req, answer)
        if u:
            out["usage"] = u
        self.metrics.answered(answer, started)
        return JSONResponse(out, headers={"X-Queue-Seconds": f"{waited:.3f}"})

    async def _sse(self, req: ThinkerRequest, opts: dict[str, Any], events: Any, answer: _Answer,
                   first: Event | None, started: float) -> AsyncIterator[str]:
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        want_logprobs = req.logprobs is not None

        def chunk(delta: dict[str, Any], finish: str | None = None,
                  logprobs: list[dict[str, Any]] | None = None) -> str:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if want_logprobs:
                choice["logprobs"] = {"content": logprobs or [], "refusal": None} if logprobs else None
            obj = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": self.served, "choices": [choice]}
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def out(ev: Event) -> str | None:
            if not answer.add(ev):
                return None
            if isinstance(ev, TextDelta):
                return chunk({"content": ev.text}, logprobs=ev.logprobs)
            if isinstance(ev, ReasoningDelta):
                return chunk({"reasoning_content": ev.text})
            if isinstance(ev, ToolCall):
                idx = len(answer.calls) - 1
                return chunk({"tool_calls": [{"index": idx, **_tool_call_json(ev)}]})
            return None  # other events (e.g. audio) have no place in a text stream

        status = "499"  # until it ends: the client left mid-stream
        try:
            yield chunk({"role": "assistant", "content": ""})
            if first is not None:
                c = out(first)
                if c:
                    yield c
                async for ev in events:
                    c = out(ev)
                    if c:
                        yield c
            yield chunk({}, answer.finish_reason)
            if opts["include_usage"]:
                obj = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                       "model": self.served, "choices": [], "usage": self._usage(req, answer)}
                yield f"data: {json.dumps(obj)}\n\n"
            status = "200"
            self.metrics.answered(answer, started)
        except OmniAgentError as e:
            status = "502"
            err = {"error": {"message": str(e), "type": "thinker_error", "code": 502}}
            yield f"data: {json.dumps(err)}\n\n"
        finally:
            self.metrics.requests.labels(status).inc()
        yield "data: [DONE]\n\n"


def create_app(thinker: Any, *, model_name: str | None = None,
               defaults: GenerationSettings | None = None,
               security: WebSecurity | None = None,
               limits: ThinkerServerLimits | None = None,
               any_model: bool = False) -> Starlette:
    """A Starlette app serving ``thinker`` as OpenAI-compatible chat completions.

    ``model_name`` is the id reported by ``/v1/models`` (default: the Thinker's
    ``model_name`` or ``name``); a request naming another model gets a 404
    ``model_not_found`` unless ``any_model`` (for clients that hard-code a model name:
    every name is then answered by this model). ``defaults`` fill generation settings a
    request leaves out. ``security`` is the web-safety layer (default: loopback Host names
    and origins only, no token; see :class:`~omni_agent.server.security.WebSecurity`);
    ``limits`` bound what one request may cost and how many wait
    (:class:`ThinkerServerLimits`).
    """
    limits = limits or ThinkerServerLimits()
    served = model_name or getattr(thinker, "model_name", None) or getattr(thinker, "model", None) \
        or getattr(thinker, "name", "thinker")
    service = _ThinkerService(thinker, str(served), defaults, limits, any_model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        close = getattr(thinker, "aclose", None)
        if close is not None:
            await close()

    routes = [
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
        Route("/chat/completions", service.chat, methods=["POST"]),  # clients with base_url w/o /v1
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", service.model, methods=["GET"]),
        Route("/health", service.health, methods=["GET"]),
        Route("/metrics", service.metrics_text, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_HANDLERS,
                    middleware=security_middleware(
                        security, default_max_body_bytes=limits.max_body_bytes))
    # "/v1/models/" and the like get the JSON 404 every client can read, not a bare redirect.
    app.router.redirect_slashes = False
    app.state.thinker = thinker
    app.state.model_name = service.served
    app.state.service = service
    return app


_HANDLERS = route_errors(_error, "POST /v1/chat/completions, GET /v1/models, "
                         "GET /v1/models/{id}, GET /health and GET /metrics")
