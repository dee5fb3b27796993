"""A Thinker that talks to any OpenAI-compatible chat completions server.

vLLM, vLLM-Omni, Ollama, llama.cpp's server, hosted APIs and ``omni-agent serve
thinker`` all speak ``POST /v1/chat/completions`` with server-sent events. This backend
streams from it over httpx (with ``httpx-sse`` parsing the event stream)::

    thinker = OpenAIThinker("http://localhost:8000/v1", model="Qwen/Qwen2.5-7B-Instruct")
    thinker = OpenAIThinker("https://api.openai.com/v1", model="gpt-4o-mini")  # key from $OPENAI_API_KEY

Text arrives as :class:`~omni_agent.events.TextDelta`, reasoning (``reasoning_content``)
as :class:`ReasoningDelta`, and tool calls, whose names and arguments servers send in
pieces, as complete :class:`ToolCall` events. The last event is a
:class:`~omni_agent.events.Finish` with the server's ``finish_reason`` ("stop", "length",
"tool_calls") and the token counts when the server sends usage. Images, audio and video in
the user's turn become ``image_url`` / ``input_audio`` (or ``audio_url``) / ``video_url``
content parts; local bytes travel as base64 data URLs. ``request.response_format`` and
``request.logprobs`` are passed on; returned logprobs arrive on ``TextDelta.logprobs``.

Server quirks handled (seen on llama.cpp's ``llama_cpp.server``): a stream that ends with
neither ``[DONE]`` nor a ``finish_reason`` is a failure (the server hit an error after it
had sent its 200, e.g. a streamed tool choice it cannot do), not an empty answer; a tool
name repeated whole in every delta is kept once; a server that sends no usage is fine.

Subclasses (e.g. the vLLM-Omni backend) customise one step by overriding
:meth:`OpenAIThinker.build_body`, :meth:`OpenAIThinker.content_part`,
:meth:`OpenAIThinker.parse_chunk` or :meth:`OpenAIThinker.media_delta`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import mimetypes
import os
import uuid
import wave
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable

import httpx
from httpx_sse import EventSource, SSEError

from .. import otel
from ..errors import ConfigError, ThinkerError, UnsupportedInputError
from ..events import AudioPart, Event, Finish, ImagePart, Part, ReasoningDelta, TextDelta, TextPart, ToolCall, VideoPart
from ..thinker import Message, ThinkerRequest

__all__ = ["OpenAIThinker", "StreamState", "data_url", "parse_data_url", "guess_mime"]

# Status codes worth another try: the server is overloaded or restarting.
RETRY_STATUS = frozenset({429, 502, 503, 504})


# ---------------------------------------------------------------------------- media helpers

_MAGIC: list[tuple[bytes, int, str]] = [
    (b"\x89PNG", 0, "image/png"), (b"\xff\xd8\xff", 0, "image/jpeg"), (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"), (b"WAVE", 8, "audio/wav"), (b"fLaC", 0, "audio/flac"),
    (b"OggS", 0, "audio/ogg"), (b"ID3", 0, "audio/mpeg"), (b"\xff\xfb", 0, "audio/mpeg"),
    (b"ftyp", 4, "video/mp4"), (b"\x1a\x45\xdf\xa3", 0, "video/webm"),
]
_DEFAULT_MIME = {"image": "image/png", "audio": "audio/wav", "video": "video/mp4"}


def guess_mime(part: Any) -> str:
    """The MIME type of a media part: given, from its file name, or sniffed from its bytes."""
    if getattr(part, "mime", None):
        return part.mime
    url = getattr(part, "url", None)
    if url and not url.startswith("data:"):
        m, _ = mimetypes.guess_type(url)
        if m:
            return m
    data = getattr(part, "data", None)
    if data:
        for magic, at, mime in _MAGIC:
            if data[at:at + len(magic)] == magic:
                return mime
    return _DEFAULT_MIME.get(getattr(part, "kind", ""), "application/octet-stream")


def _wav_from_pcm(pcm: bytes, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm)
    return buf.getvalue()


def _part_bytes(part: Any) -> bytes:
    if isinstance(part, AudioPart) and part.data is None and part.pcm is not None:
        return _wav_from_pcm(part.pcm, part.sample_rate or 16000)
    return base64.b64decode(part.as_base64())


def data_url(part: Any) -> str:
    """A URL for a media part: its http(s)/data URL as is, else its bytes as a data URL."""
    url = getattr(part, "url", None)
    if url and url.startswith(("http://", "https://", "data:")):
        return url
    raw = _part_bytes(part)
    mime = "audio/wav" if isinstance(part, AudioPart) and part.data is None else guess_mime(part)
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


def parse_data_url(url: str) -> tuple[bytes, str]:
    """``data:<mime>;base64,<data>`` -> (bytes, mime). Raises ``ValueError`` if malformed."""
    if not url.startswith("data:") or "," not in url:
        raise ValueError("not a data URL")
    head, _, payload = url[5:].partition(",")
    mime = head.split(";")[0] or "application/octet-stream"
    if ";base64" not in head:
        from urllib.parse import unquote_to_bytes

        return unquote_to_bytes(payload), mime
    try:
        return base64.b64decode(payload, validate=True), mime
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"bad base64 in data URL: {e}") from None


# ---------------------------------------------------------------------------- stream state


@dataclass
class StreamState:
    """What one streamed response has told us so far (tool-call pieces, usage, ...)."""

    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    chunks: int = 0
    done: bool = False  # the server sent "data: [DONE]"
    extra: dict[str, Any] = field(default_factory=dict)  # for subclasses


class OpenAIThinker:
    """A Thinker backed by an OpenAI-compatible ``/v1/chat/completions`` server.

    ``base_url``: the API root, e.g. ``http://localhost:8000/v1`` (``/v1`` is added when
    the URL has no path). ``model``: the served model id; ``None`` asks the server's
    ``/models`` and takes the first. ``api_key``: given, or read from the environment
    variable ``api_key_env`` (default ``OPENAI_API_KEY``); local servers need none.
    ``accepts``: the input modalities the served model takes (default text and image).
    ``audio_input``: "input_audio" (OpenAI, vLLM) or "audio_url" (vLLM-Omni style).
    ``timeout``: seconds to wait for any byte; ``connect_timeout`` for the connection.
    ``retries``: extra attempts on connection failures and 429/502/503/504 — only
    before the first byte of an answer, so nothing is ever said twice.
    ``transport``: an httpx transport (``httpx.MockTransport`` for fixtures,
    ``httpx.ASGITransport`` for an in-process app). ``extra_body`` is merged into every
    request body (and ``request.extra["body"]`` into one request's).
    """

    name = "openai"
    #: Passed on to the server, which keeps them (or says it cannot, with its own error).
    supports = frozenset({"response_format", "tool_choice", "logprobs"})

    def __init__(self, base_url: str = "http://localhost:8000/v1", model: str | None = None, *,
                 api_key: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 accepts: Iterable[str] = ("text", "image"), audio_input: str = "input_audio",
                 timeout: float = 60.0, connect_timeout: float = 5.0, retries: int = 2,
                 retry_backoff: float = 0.5, headers: dict[str, str] | None = None,
                 extra_body: dict[str, Any] | None = None, include_usage: bool = True,
                 stream: bool = True, transport: httpx.AsyncBaseTransport | None = None):
        base = base_url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ConfigError(f"thinker.base_url {base_url!r} must start with http:// or https:// "
                               "(e.g. http://localhost:8000/v1)")
        if httpx.URL(base).path in ("", "/"):
            base += "/v1"
        if audio_input not in ("input_audio", "audio_url"):
            raise ConfigError(f"thinker.audio_input must be 'input_audio' or 'audio_url' (got {audio_input!r})")
        self.base_url = base
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get(api_key_env) or None
        self.api_key_env = api_key_env
        self.accepts = frozenset(accepts)
        self.audio_input = audio_input
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retries = max(0, int(retries))
        self.retry_backoff = float(retry_backoff)
        self.extra_headers = dict(headers or {})
        self.extra_body = dict(extra_body or {})
        self.include_usage = include_usage
        self.streaming = stream
        self.transport = transport
        self.last_usage: dict[str, Any] | None = None
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]] = {}

    # ------------------------------------------------------------------ http plumbing

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def headers(self) -> dict[str, str]:
        """Request headers (override to add auth schemes other than a bearer key)."""
        h = {"Accept": "text/event-stream, application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(self.extra_headers)
        return h

    def _client(self) -> httpx.AsyncClient:
        # An httpx client's connection pool belongs to one event loop; callers such as
        # Session.ask() run a fresh loop per call, so keep one client per loop.
        loop = asyncio.get_running_loop()
        for key, (lp, _) in list(self._clients.items()):
            if lp.is_closed():
                del self._clients[key]
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            timeout = httpx.Timeout(self.timeout, connect=self.connect_timeout)
            client = httpx.AsyncClient(timeout=timeout, transport=self.transport,
                                       headers=self.headers())
            self._clients[id(loop)] = (loop, client)
            return client
        return entry[1]

    def _unreachable(self, e: Exception, attempts: int) -> ThinkerError:
        tried = f" (tried {attempts} times)" if attempts > 1 else ""
        if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout):
            return ThinkerError(
                f"the Thinker server at {self.base_url} sent nothing for {self.timeout:g} s{tried}. "
                "It may be overloaded or still loading the model; raise timeout or check the server log.")
        return ThinkerError(
            f"cannot reach the Thinker server at {self.base_url}{tried}: {e or type(e).__name__}. "
            "Check that it is running (e.g. `omni-agent serve thinker`, `vllm serve MODEL`, "
            "`ollama serve`), that host and port are right, and that base_url ends in /v1.")

    def _status_error(self, status: int, body: bytes) -> ThinkerError:
        detail = body.decode("utf-8", "replace").strip()
        try:
            obj = json.loads(detail)
            err = obj.get("error", obj)
            detail = err.get("message", detail) if isinstance(err, dict) else str(err)
        except (ValueError, AttributeError):
            pass
        detail = detail[:500]
        hint = {401: f" Check the API key (api_key, or ${self.api_key_env}).",
                403: " The API key is not allowed to use this model.",
                404: f" Check base_url ({self.base_url}) and the model name ({self.model!r}).",
                429: " The server is rate limiting; try again later or lower the load."}.get(status, "")
        return ThinkerError(f"the Thinker server at {self.base_url} answered {status}: {detail}.{hint}")

    async def _send(self, method: str, url: str, body: dict[str, Any] | None) -> httpx.Response:
        """Send with retries before the first byte; returns a 2xx streaming response."""
        client = self._client()
        attempts = 0
        while True:
            attempts += 1
            try:
                req = client.build_request(method, url, json=body)
                otel.inject(req.headers)  # traceparent of the turn; nothing when tracing is off
                resp = await client.send(req, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout,
                    httpx.RemoteProtocolError, httpx.ReadError) as e:
                if attempts <= self.retries:
                    await asyncio.sleep(self.retry_backoff * 2 ** (attempts - 1))
                    continue
                raise self._unreachable(e, attempts) from e
            except httpx.TimeoutException as e:
                raise self._unreachable(e, attempts) from e
            except httpx.HTTPError as e:
                raise ThinkerError(f"request to {url} failed: {e}") from e
            if resp.status_code < 300:
                return resp
            try:
                raw = await resp.aread()
            except httpx.HTTPError:
                raw = b""
            finally:
                await resp.aclose()
            if resp.status_code in RETRY_STATUS and attempts <= self.retries:
                await asyncio.sleep(self._retry_after(resp, attempts))
                continue
            raise self._status_error(resp.status_code, raw)

    def _retry_after(self, resp: httpx.Response, attempts: int) -> float:
        backoff = self.retry_backoff * 2 ** (attempts - 1)
        try:
            return min(float(resp.headers.get("retry-after", backoff)), 30.0)
        except ValueError:
            return backoff

    async def resolve_model(self) -> str:
        """The model id to ask for: the configured one, or the first the server lists."""
        if self.model:
            return self.model
        resp = await self._send("GET", f"{self.base_url}/models", None)
        try:
            data = json.loads(await resp.aread())
            self.model = str(data["data"][0]["id"])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ThinkerError(f"the server at {self.base_url} lists no models ({e}); set "
                               "model = \"...\" in the thinker config") from e
        finally:
            await resp.aclose()
        return self.model

    # ------------------------------------------------------------------ request body

    def content_part(self, part: Part) -> dict[str, Any]:
        """One content part in OpenAI form (override to support other part shapes)."""
        if isinstance(part, TextPart):
            return {"type": "text", "text": part.text}
        if isinstance(part, ImagePart):
            return {"type": "image_url", "image_url": {"url": data_url(part)}}
        if isinstance(part, AudioPart):
            remote = part.url and part.url.startswith(("http://", "https://"))
            if self.audio_input == "input_audio" and not remote:
                raw = _part_bytes(part)
                mime = "audio/wav" if part.data is None else guess_mime(part)
                fmt = {"audio/mpeg": "mp3", "audio/x-wav": "wav", "audio/wave": "wav"}.get(
                    mime, mime.split("/")[-1])
                return {"type": "input_audio",
                        "input_audio": {"data": base64.b64encode(raw).decode("ascii"), "format": fmt}}
            return {"type": "audio_url", "audio_url": {"url": data_url(part)}}
        if isinstance(part, VideoPart):
            return {"type": "video_url", "video_url": {"url": data_url(part)}}
        raise UnsupportedInputError(f"cannot send a {type(part).__name__} to an OpenAI-compatible server")

    def _content(self, m: Message) -> Any:
        if isinstance(m.content, str):
            return m.content
        parts: list[Any] = []
        for p in m.content:
            if p.kind != "text" and p.kind not in self.accepts:
                if isinstance(p, AudioPart) and p.transcript:
                    parts.append(TextPart(p.transcript))  # the ears heard it for us
                    continue
                raise UnsupportedInputError(
                    f"the {self.name} Thinker ({self.model or self.base_url}) is configured to take "
                    f"{', '.join(sorted(self.accepts))} only, not {p.kind}. If the served model reads "
                    f"{p.kind}, add it to the thinker's accepts (accepts = [..., \"{p.kind}\"]); "
                    f"otherwise send the turn without the {p.kind}.")
            parts.append(p)
        if all(isinstance(p, TextPart) for p in parts):
            return "\n".join(p.text for p in parts)  # plain string: every server takes it
        try:
            return [self.content_part(p) for p in parts]
        except (OSError, ValueError) as e:
            raise UnsupportedInputError(f"cannot read a media part of the turn: {e}") from e

    def build_messages(self, messages: list[Message]) -> list[dict[str, Any]]:
        """The conversation in OpenAI message form."""
        out: list[dict[str, Any]] = []
        for m in messages:
            d: dict[str, Any] = {"role": m.role, "content": self._content(m)}
            if m.tool_calls:
                d["tool_calls"] = [{"id": c.get("id") or f"call_{i}", "type": "function",
                                    "function": {"name": c.get("name", ""),
                                                 "arguments": _args_text(c.get("arguments", "{}"))}}
                                   for i, c in enumerate(m.tool_calls)]
                if not d["content"]:
                    d["content"] = None
            if m.role == "tool":
                d["tool_call_id"] = m.tool_call_id or ""
            out.append(d)
        return out

    def build_body(self, request: ThinkerRequest, model: str) -> dict[str, Any]:
        """The JSON body of one chat completions request (override to add fields)."""
        s = request.settings
        body: dict[str, Any] = {
            "model": model,
            "messages": self.build_messages(request.messages),
            "stream": self.streaming,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.seed is not None:
            body["seed"] = s.seed
        if self.streaming and self.include_usage:
            body["stream_options"] = {"include_usage": True}
        if request.response_format is not None:
            body["response_format"] = request.response_format
        if request.logprobs is not None:
            body["logprobs"] = True
            if request.logprobs > 0:
                body["top_logprobs"] = int(request.logprobs)
        if request.tools:
            body["tools"] = request.tools
            tc = request.tool_choice
            body["tool_choice"] = tc if tc in ("auto", "none", "required") else {
                "type": "function", "function": {"name": tc}}
        body.update(self.extra_body)
        body.update(request.extra.get("body") or {})
        return body

    # ------------------------------------------------------------------ response parsing

    def parse_chunk(self, chunk: dict[str, Any], state: StreamState) -> list[Event]:
        """Events from one parsed SSE chunk (override for servers with other shapes)."""
        if chunk.get("error") or chunk.get("object") == "error":
            err = chunk.get("error", chunk)
            msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            raise ThinkerError(f"the Thinker server at {self.base_url} failed mid-answer: {msg}")
        state.model = chunk.get("model") or state.model
        if chunk.get("usage"):
            state.usage = chunk["usage"]
        out: list[Event] = []
        modality = chunk.get("modality") or "text"  # vLLM-Omni tags each chunk
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # we ask for one answer (n=1)
            delta = choice.get("delta") or {}
            if modality != "text":
                out.extend(self.media_delta(modality, delta, chunk, state))
            else:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning:
                    out.append(ReasoningDelta(reasoning))
                if delta.get("content"):
                    out.append(TextDelta(delta["content"], logprobs=_logprobs(choice)))
                audio = delta.get("audio")
                if isinstance(audio, dict):
                    out.extend(self.media_delta("audio", {"audio": audio}, chunk, state))
                for tc in delta.get("tool_calls") or []:
                    self._add_tool_delta(tc, state)
            if choice.get("finish_reason"):
                state.finish_reason = choice["finish_reason"]
                out.extend(self._flush_tool_calls(state))
        return out

    def media_delta(self, modality: str, delta: dict[str, Any], chunk: dict[str, Any],
                    state: StreamState) -> list[Event]:
        """Events from a non-text delta (e.g. vLLM-Omni audio). The base class keeps
        only a spoken transcript, if any; a subclass may turn the audio into AudioChunks."""
        audio = delta.get("audio")
        if isinstance(audio, dict) and audio.get("transcript"):
            return [TextDelta(audio["transcript"])]
        return []

    @staticmethod
    def _add_tool_delta(tc: dict[str, Any], state: StreamState) -> None:
        idx = tc.get("index", len(state.tool_calls))
        slot = state.tool_calls.setdefault(idx, {"id": None, "name": "", "arguments": [], "done": False})
        if tc.get("id"):
            slot["id"] = tc["id"]
        fn = tc.get("function") or {}
        name = fn.get("name")
        # Some servers split the name too; llama.cpp's repeats it whole in every delta.
        if name and name != slot["name"]:
            slot["name"] += name
        if fn.get("arguments"):
            args = fn["arguments"]
            slot["arguments"].append(args if isinstance(args, str) else json.dumps(args))

    @staticmethod
    def _flush_tool_calls(state: StreamState) -> list[Event]:
        out: list[Event] = []
        for idx in sorted(state.tool_calls):
            slot = state.tool_calls[idx]
            if slot["done"] or not slot["name"]:
                continue
            slot["done"] = True
            out.append(ToolCall(id=slot["id"] or f"call_{uuid.uuid4().hex[:12]}", name=slot["name"],
                                arguments="".join(slot["arguments"]) or "{}"))
        return out

    def finish(self, state: StreamState) -> list[Event]:
        """Events still owed when the stream ends: tool calls the server never closed with
        a finish_reason, then the :class:`Finish` (reason and token counts)."""
        out = self._flush_tool_calls(state)
        reason = state.finish_reason or ("tool_calls" if state.tool_calls else "stop")
        usage = state.usage if isinstance(state.usage, dict) else {}
        out.append(Finish(reason=reason, prompt_tokens=_count(usage.get("prompt_tokens")),
                          completion_tokens=_count(usage.get("completion_tokens"))))
        return out

    def parse_completion(self, obj: dict[str, Any], state: StreamState) -> list[Event]:
        """Events from a non-streaming ``chat.completion`` response."""
        if obj.get("error") or obj.get("object") == "error":
            return self.parse_chunk(obj, state)
        state.usage = obj.get("usage")
        out: list[Event] = []
        for choice in obj.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            msg = choice.get("message") or {}
            reasoning = msg.get("reasoning_content") or msg.get("reasoning")
            if reasoning:
                out.append(ReasoningDelta(reasoning))
            if msg.get("content"):
                out.append(TextDelta(msg["content"], logprobs=_logprobs(choice)))
            if isinstance(msg.get("audio"), dict):
                out.extend(self.media_delta("audio", {"audio": msg["audio"]}, obj, state))
            for i, tc in enumerate(msg.get("tool_calls") or []):
                fn = tc.get("function") or {}
                self._add_tool_delta({"index": i, "id": tc.get("id"), "function": fn}, state)
            state.finish_reason = choice.get("finish_reason")
        out.extend(self.finish(state))
        return out

    # ------------------------------------------------------------------ the Thinker protocol

    async def stream(self, request: ThinkerRequest) -> AsyncIterator[Event]:
        """Send the conversation and yield events as the server streams them."""
        model = await self.resolve_model()
        body = self.build_body(request, model)
        state = StreamState(model=model)
        resp = await self._send("POST", self.chat_url, body)
        try:
            ctype = resp.headers.get("content-type", "")
            if "text/event-stream" not in ctype:
                # A server that ignored stream=true (or stream=False was configured).
                try:
                    obj = json.loads(await resp.aread())
                except (ValueError, httpx.HTTPError) as e:
                    raise ThinkerError(f"the server at {self.chat_url} sent neither an event stream "
                                       f"nor JSON (content-type {ctype!r}): {e}") from e
                for ev in self.parse_completion(obj, state):
                    yield self._stamp(ev, request)
                return
            try:
                async for sse in EventSource(resp).aiter_sse():
                    data = sse.data.strip()
                    if not data:
                        continue
                    if data == "[DONE]":
                        state.done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise ThinkerError(f"the server at {self.chat_url} sent a chunk that is not "
                                           f"JSON: {data[:200]!r}") from None
                    state.chunks += 1
                    for ev in self.parse_chunk(chunk, state):
                        yield self._stamp(ev, request)
            except (httpx.HTTPError, SSEError) as e:
                # Not retried: part of the answer may already be on its way to the user.
                raise ThinkerError(f"the stream from {self.chat_url} broke after {state.chunks} "
                                   f"chunks: {e or type(e).__name__}") from e
            if not state.done and state.finish_reason is None:
                # A 200 whose body simply stops: the server failed after it had answered.
                raise ThinkerError(
                    f"the stream from {self.chat_url} ended after {state.chunks} chunks with neither "
                    "a finish_reason nor [DONE]: the server failed mid-answer (llama.cpp's server "
                    "does this when it cannot do a streamed tool choice, e.g. tool_choice 'auto' "
                    "under chatml-function-calling, or a tool name not in tools). See the server's "
                    "log for the error.")
            for ev in self.finish(state):
                yield self._stamp(ev, request)
        finally:
            self.last_usage = state.usage
            await resp.aclose()

    @staticmethod
    def _stamp(ev: Event, request: ThinkerRequest) -> Event:
        ev.session_id = request.session_id
        ev.turn_id = request.turn_id
        return ev

    async def aclose(self) -> None:
        """Close the HTTP connections this Thinker opened (on loops still running)."""
        clients, self._clients = self._clients, {}
        loop = asyncio.get_running_loop()
        for lp, client in clients.values():
            if lp is loop:
                await client.aclose()


def _args_text(args: Any) -> str:
    return args if isinstance(args, str) else json.dumps(args)


def _logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A choice's per-token logprobs (OpenAI's ``logprobs.content``), or None."""
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    return [dict(t) for t in content if isinstance(t, dict)] if isinstance(content, list) else None


def _count(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
