"""A Talker on any OpenAI-compatible ``/v1/audio/speech`` server, streamed over httpx.

Works with OpenAI itself, with ``omni-agent serve talker`` (so the Talker runs as its own
process), and with other servers speaking the same API::

    talker = OpenAITalker("http://127.0.0.1:8002/v1")                       # omni-agent serve talker
    talker = OpenAITalker("https://api.openai.com/v1", model="gpt-4o-mini-tts",
                          voice="alloy", api_key=os.environ["OPENAI_API_KEY"])

The response body is read as it arrives and turned into audio chunks at once, so audio
starts before the server has finished. Each request asks, in the ``X-Sample-Rate``
header, for the served Talker's own rate (``omni-agent serve talker`` then sends its
samples unchanged instead of OpenAI's 24 kHz; OpenAI ignores the header), and for ``wav``
sets ``stream_format: "audio"`` (our server makes a whole file with true sizes otherwise). ``response_format`` is ``"pcm"`` (raw int16 mono;
the rate comes from the ``X-Sample-Rate`` header when the server sends one, else
``sample_rate``, 24000 for OpenAI) or ``"wav"`` (the rate is read from the header).
The last chunk of each utterance is an empty one marked ``final``.
"""

from __future__ import annotations

import asyncio
import os
import struct
from typing import Any, AsyncIterator

import httpx

from .. import otel
from ..errors import TalkerError
from ..events import AudioChunk, Utterance

__all__ = ["OpenAITalker"]


class _WavStream:
    """Reads a WAV byte stream incrementally: header first, then PCM as it comes.

    Hand-written because the body is consumed while it streams, where WAV libraries
    want the whole file.
    """

    def __init__(self) -> None:
        self._head = b""
        self.sample_rate: int | None = None
        self.channels = 1
        self.in_data = False

    def feed(self, data: bytes) -> bytes:
        """Bytes of the stream in; PCM bytes out (empty until the header is complete)."""
        if self.in_data:
            return data
        self._head += data
        h = self._head
        if len(h) >= 12 and (h[:4] not in (b"RIFF", b"RF64") or h[8:12] != b"WAVE"):
            raise TalkerError("the TTS server's wav response does not start with a RIFF/WAVE header")
        pos = 12
        while len(h) >= pos + 8:
            cid, size = h[pos:pos + 4], struct.unpack("<I", h[pos + 4:pos + 8])[0]
            if cid == b"data":
                if self.sample_rate is None:
                    raise TalkerError("the TTS server's wav response has no fmt chunk before its data")
                self.in_data = True
                rest = h[pos + 8:]
                self._head = b""
                return rest
            if len(h) < pos + 8 + size:
                return b""  # this chunk is not complete yet
            if cid == b"fmt ":
                fmt, ch, rate, _br, _align, bits = struct.unpack("<HHIIHH", h[pos + 8:pos + 24])
                if fmt not in (1, 0xFFFE) or bits != 16:
                    raise TalkerError(f"the TTS server sent wav with format {fmt}/{bits} bits: only "
                                      "16-bit PCM is supported (ask for response_format='pcm')")
                self.sample_rate, self.channels = rate, ch
            pos += 8 + size + (size & 1)
        return b""


class OpenAITalker:
    """A streaming Talker client for an OpenAI-compatible speech endpoint.

    ``base_url`` ends in ``/v1``. ``api_key`` defaults to ``$OPENAI_API_KEY`` (sent only
    when set). ``lang`` (or ``Utterance.lang``) is sent as ``language``, which
    ``omni-agent serve talker`` uses to pick a voice. ``extra`` adds fields to each
    request body (``{"instructions": "..."}``). ``speed`` (0.25-4.0) is sent as OpenAI's
    ``speed``. ``rate`` is sent as the ``X-Sample-Rate`` request header (``"native"``: the
    served Talker's own rate; a number of Hz; None: send none). ``transport`` is an
    httpx transport, for tests or custom networking.
    """

    name = "openai"

    def __init__(self, base_url: str = "http://127.0.0.1:8002/v1", *, model: str = "tts-1",
                 voice: str = "alloy", api_key: str | None = None, response_format: str = "pcm",
                 sample_rate: int = 24000, lang: str | None = None, timeout: float = 60.0,
                 extra: dict[str, Any] | None = None, speed: float | None = None,
                 rate: int | str | None = "native",
                 transport: httpx.AsyncBaseTransport | None = None):
        if response_format not in ("pcm", "wav"):
            raise TalkerError(f"response_format {response_format!r} cannot stream as PCM: use 'pcm' or 'wav'")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/audio/speech"
        self.model = model
        self.voice = voice
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.response_format = response_format
        self.sample_rate = int(sample_rate)
        self.lang = lang
        self.timeout = timeout
        self.extra = dict(extra or {})
        if speed is not None and not 0.25 <= speed <= 4.0:
            raise TalkerError(f"speed must be between 0.25 and 4.0 (OpenAI's range), not {speed}")
        self.speed = speed
        self.rate = rate
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> httpx.AsyncClient:
        # A client belongs to one event loop; CLI commands may run several loops in turn.
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop or self._client.is_closed:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._client = httpx.AsyncClient(transport=self._transport, headers=headers,
                                             timeout=httpx.Timeout(self.timeout, connect=10.0))
            self._loop = loop
        return self._client

    async def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]:
        """Stream the speech of one utterance from the server."""
        text = utterance.text.strip()
        if not text:
            return
        body: dict[str, Any] = {"model": self.model, "input": text, "voice": self.voice,
                                "response_format": self.response_format}
        if self.speed is not None:
            body["speed"] = self.speed
        if self.response_format == "wav":
            body["stream_format"] = "audio"
        body.update(self.extra)
        lang = utterance.lang or self.lang
        if lang:
            body["language"] = lang
        client = self._http()
        try:
            headers = {"X-Sample-Rate": str(self.rate)} if self.rate is not None else {}
            otel.inject(headers)  # traceparent of the turn; nothing when tracing is off
            async with client.stream("POST", self.url, json=body, headers=headers) as resp:
                if resp.status_code >= 400:
                    detail = (await resp.aread()).decode("utf-8", "replace")[:500]
                    raise TalkerError(f"the TTS server at {self.url} answered {resp.status_code}: {detail}")
                rate = int(resp.headers.get("x-sample-rate") or self.sample_rate)
                wav = _WavStream() if self.response_format == "wav" else None
                rest = b""  # part of a sample frame split across network reads
                async for data in resp.aiter_bytes():
                    if wav is not None:
                        data = wav.feed(data)
                        if wav.sample_rate:
                            rate = wav.sample_rate
                    channels = wav.channels if wav is not None else 1
                    if rest:
                        data, rest = rest + data, b""
                    cut = len(data) - len(data) % (2 * channels)
                    data, rest = data[:cut], data[cut:]
                    if not data:
                        continue
                    if channels > 1:
                        data = _downmix(data, channels)
                    self.sample_rate = rate
                    yield AudioChunk(pcm=data, sample_rate=rate, utterance_index=utterance.index)
                yield AudioChunk(pcm=b"", sample_rate=rate, utterance_index=utterance.index, final=True)
        except httpx.ConnectError as e:
            raise TalkerError(f"cannot reach the TTS server at {self.url} ({e}): is it running? "
                              "Start one with `omni-agent serve talker`") from e
        except httpx.TimeoutException as e:
            raise TalkerError(f"the TTS server at {self.url} timed out after {self.timeout}s") from e
        except httpx.HTTPError as e:
            raise TalkerError(f"the TTS request to {self.url} failed: {type(e).__name__}: {e}") from e

    async def aclose(self) -> None:
        if self._client is not None and not self._client.is_closed:
            try:
                await self._client.aclose()
            except RuntimeError:
                pass  # its loop is gone already
        self._client = None


def _downmix(pcm: bytes, channels: int) -> bytes:
    import numpy as np

    x = np.frombuffer(pcm, dtype="<i2")
    return x.reshape(-1, channels).mean(axis=1).astype("<i2").tobytes()
