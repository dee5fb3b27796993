"""Serve any Thinker as an OpenAI-compatible chat completions endpoint.

Routes:

* ``POST /v1/chat/completions`` — streaming (SSE, ``stream: true``) and not; text,
  reasoning (``reasoning_content``) and tool calls (``tool_calls`` deltas); image, audio
  and video content parts are handed to the Thinker as media parts;
* ``GET /v1/models`` — the one model this server runs;
* ``GET /health`` — ``{"status": "ok", ...}``.

A malformed request gets a 400 with an OpenAI-style JSON error naming the bad field::

    app = create_app(TransformersThinker.default())
    uvicorn.run(app, port=8000)          # or: omni-agent serve thinker --port 8000
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import time
import uuid
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import OmniAgentError, ThinkerError, UnsupportedInputError
from ..events import AudioPart, Event, ImagePart, ReasoningDelta, TextDelta, TextPart, ToolCall, VideoPart
from ..thinker import GenerationSettings, Message, ThinkerRequest
from ..thinkers.openai import parse_data_url

__all__ = ["create_app", "parse_chat_request", "BadRequest"]


class BadRequest(ValueError):
    """A request the server cannot take; ``param`` names the bad field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, *, param: str | None = None,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": status}}, status_code=status)


# ---------------------------------------------------------------------------- request parsing

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
        try:
            data = base64.b64decode(audio["data"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{where}.input_audio.data is not valid base64",
                             f"{where}.input_audio.data") from None
        fmt = str(audio.get("format") or "wav")
        return AudioPart(data=data, mime="audio/mpeg" if fmt == "mp3" else f"audio/{fmt}")
    raise BadRequest(f"{where}: unknown content part type {kind!r} (use text, image_url, "
                     "input_audio, audio_url or video_url)", f"{where}.type")


def _message(raw: Any, i: int) -> Message:
    where = f"messages[{i}]"
    if not isinstance(raw, dict):
        raise BadRequest(f"{where} must be an object", where)
    role = raw.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise BadRequest(f"{where}.role must be system, user, assistant or tool (got {role!r})",
                         f"{where}.role")
    content = raw.get("content")
    if content is None:
        content = ""
    if isinstance(content, list):
        parts = [_part(p, f"{where}.content[{j}]") for j, p in enumerate(content)]
        content = parts if any(not isinstance(p, TextPart) for p in parts) else \
            "".join(p.text for p in parts)
    elif not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string or a list of parts", f"{where}.content")
    calls = []
    for j, tc in enumerate(raw.get("tool_calls") or []):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest(f"{where}.tool_calls[{j}].function.name is required",
                             f"{where}.tool_calls[{j}].function.name")
        args = fn.get("arguments", "{}")
        calls.append({"id": tc.get("id") or f"call_{j}", "name": fn["name"],
                      "arguments": args if isinstance(args, str) else json.dumps(args)})
    if role == "tool" and not raw.get("tool_call_id"):
        raise BadRequest(f"{where}.tool_call_id is required for a tool message", f"{where}.tool_call_id")
    return Message(role=role, content=content, tool_calls=calls,
                   tool_call_id=raw.get("tool_call_id"), name=raw.get("name"))


def _number(body: dict[str, Any], key: str, kind: type, lo: float | None = None,
            hi: float | None = None) -> Any:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise BadRequest(f"{key} must be {'an integer' if kind is int else 'a number'}", key)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise BadRequest(f"{key} must be between {lo} and {hi}" if hi is not None
                         else f"{key} must be at least {lo}", key)
    return kind(v)


def parse_chat_request(body: Any, defaults: GenerationSettings | None = None) -> tuple[ThinkerRequest, dict[str, Any]]:
    """An OpenAI chat completions body -> (ThinkerRequest, options). Raises BadRequest.

    ``options`` holds ``stream``, ``include_usage`` and ``model`` (as the client named it).
    """
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list", "messages")
    messages = [_message(m, i) for i, m in enumerate(msgs)]
    d = defaults or GenerationSettings()
    max_tokens = _number(body, "max_completion_tokens", int, 1) or _number(body, "max_tokens", int, 1)
    temperature = _number(body, "temperature", float, 0, 2)
    top_p = _number(body, "top_p", float, 0, 1)
    seed = _number(body, "seed", int)
    stop = body.get("stop")
    if stop is None:
        stop = list(d.stop)
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise BadRequest("stop must be a string or a list of strings", "stop")
    settings = GenerationSettings(
        max_tokens=max_tokens or d.max_tokens,
        temperature=d.temperature if temperature is None else temperature,
        top_p=d.top_p if top_p is None else top_p,
        stop=stop, seed=d.seed if seed is None else seed)
    if (body.get("n") or 1) != 1:
        raise BadRequest("only n=1 is supported", "n")
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str) for t in tools):
        raise BadRequest("tools must be a list of {\"type\": \"function\", \"function\": {\"name\": ...}}",
                         "tools")
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name")
        if not isinstance(choice, str):
            raise BadRequest("tool_choice.function.name must be a string", "tool_choice")
    elif choice not in ("auto", "none", "required"):
        raise BadRequest("tool_choice must be auto, none, required or {\"type\": \"function\", ...}",
                         "tool_choice")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be true or false", "stream")
    opts = body.get("stream_options") or {}
    extra = {k: body[k] for k in ("modalities", "speaker", "audio") if k in body}
    req = ThinkerRequest(messages=messages, tools=tools, tool_choice=choice, settings=settings,
                         session_id=str(body.get("user") or ""), extra=extra)
    return req, {"stream": stream, "include_usage": bool(opts.get("include_usage")),
                 "model": body.get("model")}


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
               defaults: GenerationSettings | None = None) -> Starlette:
    """A Starlette app serving ``thinker`` as OpenAI-compatible chat completions.

    ``model_name`` is the id reported by ``/v1/models`` (default: the Thinker's
    ``model_name`` or ``name``). ``defaults`` fill generation settings a request leaves out.
    """
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
            body = await request.json()
        except (ValueError, UnicodeDecodeError) as e:
            return _error(400, f"the request body is not valid JSON: {e}")
        try:
            req, opts = parse_chat_request(body, defaults)
        except BadRequest as e:
            return _error(400, str(e), param=e.param)
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
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.thinker = thinker
    app.state.model_name = served
    return app
