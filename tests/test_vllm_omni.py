"""vLLM-Omni backend: recorded-shape fixtures through httpx.MockTransport, a loopback server
replaying those shapes over real HTTP, and our own Thinker server (serving the tiny
random-weight Qwen3-Omni) on loopback.

The fixtures (``tests/fixtures/vllm_omni_*``, written by ``make_vllm_omni_fixtures.py``)
follow vLLM-Omni's documented shapes: streamed chunks tagged ``modality: text|audio``,
audio as base64 24 kHz WAV in ``delta.content``; a non-streamed answer with a text choice
and an audio choice.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from omni_agent.agent import Agent
from omni_agent.audio import float_to_pcm16, wav_bytes
from omni_agent.bus import Middleware
from omni_agent.errors import ConfigError
from omni_agent.events import AudioChunk, AudioPart, ErrorEvent, ImagePart, TextDelta, TextPart, UserTurn, VideoPart
from omni_agent.server.background import serve_in_background
from omni_agent.testing import RecordingTalker
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest
from omni_agent.thinkers.vllm_omni import SAMPLE_RATE, VLLMOmniTalker, VLLMOmniThinker

FIXTURES = Path(__file__).parent / "fixtures"
STREAM = (FIXTURES / "vllm_omni_interleaved.sse").read_bytes()
COMPLETION = json.loads((FIXTURES / "vllm_omni_completion.json").read_text())


def fixture_pcm(b64: str) -> bytes:
    with wave.open(io.BytesIO(base64.b64decode(b64))) as w:
        assert w.getframerate() == SAMPLE_RATE
        return w.readframes(w.getnframes())


def stream_audio() -> list[bytes]:
    """The PCM of each audio chunk in the streamed fixture, in order."""
    out = []
    for line in STREAM.decode().splitlines():
        if line.startswith("data: {"):
            obj = json.loads(line[6:])
            if obj.get("modality") == "audio":
                out.append(fixture_pcm(obj["choices"][0]["delta"]["content"]))
    return out


def transport(seen: list | None = None, *, body: bytes = STREAM, ctype: str = "text/event-stream"):
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(json.loads(request.content))
        return httpx.Response(200, content=body, headers={"content-type": ctype})

    return httpx.MockTransport(handler)


def ask(content="hi", **extra) -> ThinkerRequest:
    return ThinkerRequest([Message("user", content)], session_id="s", turn_id=1, extra=extra)


async def collect(thinker, request) -> list:
    return [ev async for ev in thinker.stream(request)]


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# --------------------------------------------------------------------------- request shape


async def test_thinker_only_asks_for_text_and_sends_media_as_url_parts():
    seen: list = []
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="qwen3-omni", transport=transport(seen))
    tone = wav_bytes(float_to_pcm16(np.zeros(1600, np.float32)), 16000)
    parts = [TextPart("what is this?"), AudioPart(data=tone), ImagePart(data=b"\x89PNG\r\n\x1a\n" + bytes(16)),
             VideoPart(data=b"\x00\x00\x00\x18ftypmp42" + bytes(16))]
    await collect(thinker, ask(parts))
    body = seen[0]
    assert body["modalities"] == ["text"] and "speaker" not in body
    kinds = [p["type"] for p in body["messages"][0]["content"]]
    assert kinds == ["text", "audio_url", "image_url", "video_url"]
    audio_url = body["messages"][0]["content"][1]["audio_url"]["url"]
    assert audio_url.startswith("data:audio/wav;base64,")
    assert base64.b64decode(audio_url.split(",", 1)[1]) == tone


async def test_speech_mode_asks_for_text_and_audio_with_the_chosen_speaker_and_stage_params():
    seen: list = []
    stages = [{"temperature": 0.4}, {"temperature": 0.9, "top_k": 50}, {"temperature": 0.0}]
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", audio=True, speaker="Chelsie",
                              sampling_params_list=stages, use_audio_in_video=True, transport=transport(seen))
    await collect(thinker, ask())
    body = seen[0]
    assert body["modalities"] == ["text", "audio"]
    assert body["speaker"] == "chelsie"
    assert body["sampling_params_list"] == stages
    assert body["mm_processor_kwargs"] == {"use_audio_in_video": True}
    assert body["stream"] is True


async def test_a_request_can_choose_its_own_modalities_and_speaker():
    seen: list = []
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", transport=transport(seen))
    await collect(thinker, ask(modalities=["text", "audio"], speaker="Aiden"))
    assert seen[0]["modalities"] == ["text", "audio"] and seen[0]["speaker"] == "aiden"


# --------------------------------------------------------------------------- response shapes


async def test_interleaved_text_and_audio_become_text_deltas_and_24khz_audio_chunks():
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", audio=True, transport=transport())
    events = await collect(thinker, ask())
    assert text_of(events) == "Sure. The answer is 42."
    chunks = [e for e in events if isinstance(e, AudioChunk)]
    assert [c.pcm for c in chunks if c.pcm] == stream_audio()
    assert all(c.sample_rate == SAMPLE_RATE for c in chunks)
    assert chunks[-1].final and not chunks[-1].pcm and not any(c.final for c in chunks[:-1])
    assert all(e.session_id == "s" and e.turn_id == 1 for e in events)
    # Audio arrived while the text was still streaming (async chunking), in order.
    kinds = [type(e).__name__ for e in events]
    assert kinds.index("AudioChunk") < max(i for i, k in enumerate(kinds) if k == "TextDelta")


async def test_in_thinker_only_mode_audio_a_server_sends_anyway_is_not_heard():
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", transport=transport())
    events = await collect(thinker, ask())
    assert text_of(events) == "Sure. The answer is 42."
    assert not any(isinstance(e, AudioChunk) for e in events)


async def test_the_other_documented_stream_shape_is_read_too():
    # Text first, then audio (vLLM-Omni without async chunking); fixture by the OpenAI backend.
    body = (FIXTURES / "vllm_omni_text_audio.sse").read_bytes()
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", audio=True, transport=transport(body=body))
    events = await collect(thinker, ask())
    assert text_of(events) == "Hello! The capital of France is Paris."
    assert len([e for e in events if isinstance(e, AudioChunk) and e.pcm]) == 3


async def test_a_non_streamed_answer_has_its_audio_in_the_second_choice():
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", audio=True, stream=False,
                              transport=transport(body=json.dumps(COMPLETION).encode(), ctype="application/json"))
    events = await collect(thinker, ask())
    assert text_of(events) == "Sure. The answer is 42."
    pcm = [e.pcm for e in events if isinstance(e, AudioChunk) and e.pcm]
    assert pcm == [fixture_pcm(COMPLETION["choices"][1]["message"]["audio"]["data"])]


# --------------------------------------------------------------------------- in an agent


async def test_pass_through_an_agent_without_a_talker_plays_the_servers_speech():
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", audio=True, transport=transport())
    result = await Agent(thinker=thinker).session("p").aask("what is the answer?")
    assert result.text == "Sure. The answer is 42."
    assert result.audio == b"".join(stream_audio()) and result.sample_rate == SAMPLE_RATE


async def test_the_vllm_omni_talker_plays_the_servers_speech_from_the_talkers_seat():
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", transport=transport())
    talker = VLLMOmniTalker(thinker)
    result = await Agent(thinker=thinker, talker=talker).session("t").aask("what is the answer?")
    assert result.reason == "completed"
    assert result.audio == b"".join(stream_audio())
    assert "talker_first_audio" in result.trace.timings
    assert not [e for e in result.events if isinstance(e, ErrorEvent)]


class Reword(Middleware):
    """Rewrites the first clause the Thinker says."""

    name = "reword"

    def on_utterance(self, utt, ctx):
        if utt.text == "Sure.":
            utt.text = "Certainly."
        return utt


async def test_the_vllm_omni_talker_withholds_speech_once_middleware_rewrote_a_clause():
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", transport=transport())
    agent = Agent(thinker=thinker, talker=VLLMOmniTalker(thinker), middleware=[Reword()],
                  segmenter=lambda: _Sentences())
    result = await agent.session("w").aask("what is the answer?")
    errors = [e.message for e in result.events if isinstance(e, ErrorEvent)]
    assert any("rewritten" in m for m in errors)
    assert result.audio == b""  # the server said "Sure.", which the bus did not approve
    assert result.spoken == ""  # and the trace does not claim otherwise


async def test_a_lenient_vllm_omni_talker_plays_the_servers_speech_even_after_a_rewrite():
    thinker = VLLMOmniThinker("http://omni:8091/v1", model="m", transport=transport())
    agent = Agent(thinker=thinker, talker=VLLMOmniTalker(thinker, strict=False), middleware=[Reword()],
                  segmenter=lambda: _Sentences())
    result = await agent.session("l").aask("what is the answer?")
    assert result.audio == b"".join(stream_audio())


class _Sentences:
    """Cuts at sentence ends only (keeps the test independent of the default segmenter)."""

    def __init__(self):
        self.buf = ""

    def feed(self, text):
        self.buf += text
        out = []
        while ". " in self.buf:
            head, self.buf = self.buf.split(". ", 1)
            out.append(head + ".")
        return out

    def flush(self):
        rest, self.buf = self.buf.strip(), ""
        return [rest] if rest else []


def test_a_talker_without_its_thinker_or_url_is_a_config_error():
    with pytest.raises(ConfigError, match="base_url"):
        VLLMOmniTalker()


async def test_a_talker_configured_by_url_finds_the_thinker_with_that_url():
    seen: list = []
    thinker = VLLMOmniThinker("http://omni:8091", model="m", transport=transport(seen))
    talker = VLLMOmniTalker(base_url="http://omni:8091/v1")
    try:
        result = await Agent(thinker=thinker, talker=talker).session("u").aask("hi")
        assert seen[0]["modalities"] == ["text", "audio"]
        assert result.audio == b"".join(stream_audio())
    finally:
        await talker.aclose()


# --------------------------------------------------------------------------- real HTTP on loopback


def replaying_app(body: bytes, seen: list):
    """A loopback server that answers chat completions with a recorded vLLM-Omni stream."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def chat(request):
        seen.append(await request.json())

        async def gen():
            for block in body.decode().split("\n\n"):
                if block.strip():
                    yield block + "\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def test_over_real_http_text_and_speech_stream_from_a_replaying_server():
    seen: list = []
    with serve_in_background(replaying_app(STREAM, seen)) as url:
        thinker = VLLMOmniThinker(url + "/v1", model="m", audio=True, speaker="Ethan")
        try:
            events = await collect(thinker, ask("hello"))
        finally:
            await thinker.aclose()
    assert seen[0]["speaker"] == "ethan"
    assert text_of(events) == "Sure. The answer is 42."
    assert [e.pcm for e in events if isinstance(e, AudioChunk) and e.pcm] == stream_audio()


async def test_thinker_only_against_our_own_server_serving_qwen3_omni_then_our_bus_and_talker():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from omni_agent.server.thinker_server import create_app
    from omni_agent.thinkers.qwen3_omni import Qwen3OmniThinker
    from omni_agent.thinkers.qwen3_omni_tiny import tiny_qwen3_omni

    torch.set_num_threads(1)
    local = Qwen3OmniThinker(tiny_qwen3_omni(talker=False))
    tone = (0.2 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    turn = [TextPart("what do you hear?"), AudioPart(data=wav_bytes(float_to_pcm16(tone), 16000))]
    settings = GenerationSettings(max_tokens=6)
    direct = text_of(await collect(local, ThinkerRequest([Message("user", turn)], settings=settings)))
    talker = RecordingTalker()
    with serve_in_background(create_app(local, model_name="qwen3-omni-tiny")) as url:
        thinker = VLLMOmniThinker(url + "/v1")
        try:
            agent = Agent(thinker=thinker, talker=talker, settings=settings)
            result = await agent.session("loop").aask(UserTurn.of(None, *turn))
        finally:
            await thinker.aclose()
    assert result.reason == "completed"
    assert result.text == direct.strip()  # the audio reached the model over HTTP, same answer
    assert " ".join(talker.spoken) == result.spoken and result.audio
