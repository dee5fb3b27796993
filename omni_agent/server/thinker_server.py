"""Serve any Thinker as an OpenAI-compatible chat completions endpoint.

Routes:

* ``POST /v1/chat/completions`` — streaming (SSE, ``stream: true``) and not; text,
  reasoning (``reasoning_content``) and tool calls (``tool_calls`` deltas); image, audio
  and video content parts are handed to the Thinker as media parts;
* ``GET /v1/models`` — the one model this server runs;
* ``GET /health`` — ``{"status": "ok", ...}``.

Requests are validated by pydantic models (:class:`ChatCompletionRequest`); a malformed one
gets a 400 with an OpenAI-style JSON error naming the bad field, an unknown route an
OpenAI-style 404. :class:`ThinkerServerLimits` bounds the body (413), the prompt's characters
(400 ``context_length_exceeded``) and the JSON nesting; the web-safety layer
(:mod:`omni_agent.server.security`: Host and Origin checks, optional token, headers) wraps
the app::

    app = create_app(TransformersThinker.default(), security=WebSecurity(token="s3cret"))
    uvicorn.Server(uvicorn_config(app, port=8000)).run()   # or: omni-agent serve thinker
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import OmniAgentError, ThinkerError, UnsupportedInputError
from ..events import AudioPart, Event, ImagePart, ReasoningDelta, TextDelta, TextPart, ToolCall, VideoPart
from ..thinker import GenerationSettings, Message, ThinkerRequest
from ..thinkers.openai import parse_data_url
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
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_body_bytes: int = Field(default=16 << 20, ge=1024)
    max_prompt_chars: int = Field(default=128 * 1024, ge=1)
    max_json_depth: int = Field(default=64, ge=4)


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


class ResponseFormat(WireModel):
    type: Literal["text", "json_object", "json_schema"]


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
    "response_format": "response_format must be an object like {\"type\": \"text\"} "
                       "(type: text, json_object or json_schema)",
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
    return n + sum(len(json.dumps(t)) for t in req.tools) + sum(len(s) for s in req.settings.stop)


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
    choice = wire.tool_choice or "auto"
    if isinstance(choice, NamedToolChoice):
        choice = choice.function.name
    extra = {k: body[k] for k in ("modalities", "speaker", "audio") if k in body}
    req = ThinkerRequest(messages=messages, tools=tools, tool_choice=choice, settings=settings,
                         session_id=wire.user or "", extra=extra)
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
    """Collects what the Thinker said, for the final chunk / the non-streaming reply."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[ToolCall] = []

    def add(self, ev: Event) -> None:
        if isinstance(ev, TextDelta):
            self.text.append(ev.text)
        elif isinstance(ev, ReasoningDelta):
            self.reasoning.append(ev.text)
        elif isinstance(ev, ToolCall):
            self.calls.append(ev)

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.calls else "stop"


def _tool_call_json(ev: ToolCall) -> dict[str, Any]:
    return {"id": ev.id, "type": "function", "function": {"name": ev.name, "arguments": ev.arguments}}


def create_app(thinker: Any, *, model_name: str | None = None,
               defaults: GenerationSettings | None = None,
               security: WebSecurity | None = None,
               limits: ThinkerServerLimits | None = None) -> Starlette:
    """A Starlette app serving ``thinker`` as OpenAI-compatible chat completions.

    ``model_name`` is the id reported by ``/v1/models`` (default: the Thinker's
    ``model_name`` or ``name``). ``defaults`` fill generation settings a request leaves out.
    ``security`` is the web-safety layer (default: loopback Host names and origins only, no
    token; see :class:`~omni_agent.server.security.WebSecurity`); ``limits`` bound what one
    request may cost (:class:`ThinkerServerLimits`).
    """
    limits = limits or ThinkerServerLimits()
    served = model_name or getattr(thinker, "model_name", None) or getattr(thinker, "model", None) \
        or getattr(thinker, "name", "thinker")
    served = str(served)
    created = int(time.time())
    count = getattr(thinker, "count_tokens", None)

    def usage(req: ThinkerRequest, answer: _Answer) -> dict[str, Any] | None:
        if not callable(count):
            return None
        try:
            prompt = sum(count(m.text) for m in req.messages)
            done = count("".join(answer.text)) + sum(count(c.arguments) for c in answer.calls)
        except Exception:  # counting is a courtesy; never fail a reply for it
            return None
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "thinker": getattr(thinker, "name", "?"), "model": served,
                             "accepts": sorted(getattr(thinker, "accepts", ()))})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": served, "object": "model", "created": created, "owned_by": "omni-agent"}]})

    async def chat(request: Request) -> Response:
        try:
            body = parse_json(await request.body(), max_depth=limits.max_json_depth)
        except InvalidJSON as e:
            return _error(400, str(e))
        try:
            req, opts = parse_chat_request(body, defaults, limits=limits)
        except BadRequest as e:
            return _error(400, str(e), param=e.param, code=e.code)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        events = thinker.stream(req)
        answer = _Answer()
        # Pull the first event before answering, so input errors become a 400 (not a
        # broken stream) and server failures a 5xx.
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except UnsupportedInputError as e:
            return _error(400, str(e), param="messages")
        except ThinkerError as e:
            return _error(502, str(e), kind="thinker_error")
        except OmniAgentError as e:
            return _error(400, str(e))

        if not opts["stream"]:
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
            out = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": served,
                   "choices": [{"index": 0, "message": msg, "finish_reason": answer.finish_reason}]}
            u = usage(req, answer)
            if u:
                out["usage"] = u
            return JSONResponse(out)

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                   "model": served, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def delta_of(ev: Event) -> dict[str, Any] | None:
            if isinstance(ev, TextDelta):
                return {"content": ev.text}
            if isinstance(ev, ReasoningDelta):
                return {"reasoning_content": ev.text}
            if isinstance(ev, ToolCall):
                idx = len(answer.calls) - 1
                return {"tool_calls": [{"index": idx, **_tool_call_json(ev)}]}
            return None  # other events (e.g. audio) have no place in a text stream

        async def sse() -> AsyncIterator[str]:
            try:
                yield chunk({"role": "assistant", "content": ""})
                if first is not None:
                    answer.add(first)
                    d = delta_of(first)
                    if d:
                        yield chunk(d)
                    async for ev in events:
                        answer.add(ev)
                        d = delta_of(ev)
                        if d:
                            yield chunk(d)
                yield chunk({}, answer.finish_reason)
                if opts["include_usage"]:
                    obj = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
                           "model": served, "choices": [], "usage": usage(req, answer)}
                    yield f"data: {json.dumps(obj)}\n\n"
            except OmniAgentError as e:
                err = {"error": {"message": str(e), "type": "thinker_error", "code": 502}}
                yield f"data: {json.dumps(err)}\n\n"
            finally:
                await events.aclose()  # client gone or done: stop the Thinker
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        close = getattr(thinker, "aclose", None)
        if close is not None:
            await close()

    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),  # clients with base_url w/o /v1
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=_HANDLERS,
                    middleware=security_middleware(
                        security, default_max_body_bytes=limits.max_body_bytes))
    app.state.thinker = thinker
    app.state.model_name = served
    return app


_HANDLERS = route_errors(_error, "POST /v1/chat/completions, GET /v1/models and GET /health")
