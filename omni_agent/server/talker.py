"""The Talker as its own service: an OpenAI-compatible ``POST /v1/audio/speech``.

Any Talker (Piper, espeak-ng, a remote one, your own) can run in its own process; an
agent elsewhere reaches it with :class:`~omni_agent.talkers.openai.OpenAITalker`::

    app = create_talker_app(PiperTalker())
    uvicorn.run(app, port=8002)

Request body (JSON), as OpenAI's speech endpoint: ``input`` (text, required), ``model``
and ``voice`` (accepted; ``voice`` picks one of several talkers when the app was made with
a dict), ``response_format`` ``"pcm"`` (raw int16 mono) or ``"wav"`` (default), plus the
extension ``language`` (picks the espeak-ng voice, for instance).

The body streams: the first audio leaves as soon as the Talker has it. Responses carry
``X-Sample-Rate``. Errors are JSON ``{"error": {"message", "type"}}`` with status 400 (bad
request) or 500 (synthesis failed), decided before any audio is sent.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..audio import wav_stream_header
from ..events import AudioChunk, Utterance
from ..talker import Talker

__all__ = ["create_talker_app", "MAX_INPUT_CHARS"]

#: Longest input accepted per request (OpenAI's limit too).
MAX_INPUT_CHARS = 4096

_FORMATS = {"pcm": "audio/pcm", "wav": "audio/wav"}


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def create_talker_app(talker: Talker | Mapping[str, Talker], *,
                      default_voice: str | None = None) -> Starlette:
    """A Starlette app serving ``talker`` (or several, keyed by voice name).

    Unknown ``voice`` names (OpenAI clients send "alloy" by default) use the default
    talker. Concurrent requests are left to the Talker (Piper's ONNX session is
    thread-safe; espeak-ng serializes on its own lock).
    """
    talkers: dict[str, Talker] = dict(talker) if isinstance(talker, Mapping) else {talker.name: talker}
    if not talkers:
        raise ValueError("create_talker_app needs at least one talker")
    default = default_voice or next(iter(talkers))
    if default not in talkers:
        raise ValueError(f"default_voice {default!r} is not one of {sorted(talkers)}")

    async def speech(request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "the body must be JSON: {\"input\": \"text to speak\", ...}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            return _error(400, "'input' is required: the text to speak (a non-empty string)")
        if len(text) > MAX_INPUT_CHARS:
            return _error(400, f"'input' is {len(text)} characters; at most {MAX_INPUT_CHARS} are accepted")
        fmt = body.get("response_format", "wav")
        if fmt not in _FORMATS:
            return _error(400, f"response_format {fmt!r} is not served here: use 'pcm' or 'wav'")
        lang = body.get("language") or body.get("lang")
        if lang is not None and not isinstance(lang, str):
            return _error(400, "'language' must be a string such as 'en' or 'fr'")
        voice = body.get("voice")
        tk = talkers.get(voice) if isinstance(voice, str) else None
        tk = tk or talkers[default]

        stream = tk.speak(Utterance(text=text, display=text, lang=lang))
        try:
            first: AudioChunk | None = await anext(stream, None)
        except Exception as e:  # noqa: BLE001 - before any byte is sent: a clean JSON error
            await _close(stream)
            return _error(500, f"{tk.name} could not synthesize the input: {e}", "talker_error")
        rate = first.sample_rate if first is not None else tk.sample_rate

        async def body_iter() -> AsyncIterator[bytes]:
            try:
                if fmt == "wav":
                    yield wav_stream_header(rate)
                if first is not None:
                    yield first.pcm
                async for chunk in stream:
                    if chunk.pcm:
                        yield chunk.pcm
            finally:
                await _close(stream)  # client gone or done: stop synthesis

        headers = {"X-Sample-Rate": str(rate), "X-Talker": tk.name, "Cache-Control": "no-store"}
        return StreamingResponse(body_iter(), media_type=_FORMATS[fmt], headers=headers)

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": name, "object": "model", "owned_by": "omni-agent", "sample_rate": t.sample_rate}
            for name, t in talkers.items()]})

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok", "talkers": sorted(talkers)})

    return Starlette(routes=[
        Route("/v1/audio/speech", speech, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ])


async def _close(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - closing must not hide the real outcome
            pass
