"""Talker backends: Piper (embedded), espeak-ng (multilingual), OpenAI-compatible over HTTP,
and the Talker server they meet on (real loopback server)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
import time

import httpx
import numpy as np
import pytest

from omni_agent.errors import ModelNotFoundError, TalkerError
from omni_agent.events import AudioChunk, Utterance
from omni_agent.server.talker import create_talker_app
from omni_agent.talkers.espeak import LANGUAGE_VOICES, EspeakTalker
from omni_agent.talkers.openai import OpenAITalker
from omni_agent.testing import RecordingTalker


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt((x ** 2).mean())) if x.size else 0.0


async def collect(talker, text: str, **kw) -> list[AudioChunk]:
    return [c async for c in talker.speak(Utterance(text=text, **kw))]


@contextlib.contextmanager
def loopback(app):
    """Run an ASGI app on a real loopback port in a thread; yields its /v1 base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("loopback server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


# --------------------------------------------------------------------------- Piper


@pytest.fixture(scope="module")
def piper():
    from omni_agent.talkers.piper import PiperTalker

    return PiperTalker()


@pytest.mark.slow
async def test_piper_speaks_real_speech_in_bounded_chunks(piper):
    chunks = await collect(piper, "Hello there, this is the embedded voice.", index=3)
    pcm = b"".join(c.pcm for c in chunks)
    assert piper.sample_rate == 22050
    assert len(pcm) / 2 / 22050 > 1.0
    assert rms(pcm) > 500  # speech, not silence
    assert all(c.sample_rate == 22050 and c.utterance_index == 3 for c in chunks)
    assert all(len(c.pcm) <= 2 * 22050 * piper.chunk_ms // 1000 for c in chunks)
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]


@pytest.mark.slow
async def test_piper_streams_the_first_sentence_before_the_rest_is_made(piper):
    text = ("The first sentence is short. The second sentence is a good deal longer than the "
            "first one, and it goes on. The third one closes the utterance for good.")
    t0 = time.perf_counter()
    first = None
    async for chunk in piper.speak(Utterance(text=text)):
        if first is None:
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    assert first < 0.5 * total


@pytest.mark.slow
async def test_piper_synthesis_does_not_block_the_event_loop(piper):
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await collect(piper, "A long sentence that takes Piper a while to synthesize on a small CPU, "
                         "so the event loop must keep running meanwhile.")
    done.set()
    await task
    assert len(gaps) > 5
    assert max(gaps) < 0.15  # a blocked loop would show one gap as long as the synthesis


@pytest.mark.slow
async def test_piper_takes_any_voice_by_path(tmp_path):
    from omni_agent.talkers.piper import PiperTalker, default_voice_path

    src = default_voice_path()
    dst = tmp_path / "my-voice.onnx"
    shutil.copy(src, dst)
    shutil.copy(f"{src}.json", f"{dst}.json")
    talker = PiperTalker(dst)
    assert talker.voice_path == dst
    pcm = b"".join(c.pcm for c in await collect(talker, "Custom voice."))
    assert rms(pcm) > 500


def test_piper_missing_voice_says_what_to_give(tmp_path):
    from omni_agent.talkers.piper import PiperTalker

    with pytest.raises(ModelNotFoundError, match="voice not found"):
        PiperTalker(tmp_path / "nope.onnx")


def test_piper_voice_without_its_config_is_refused(tmp_path):
    from omni_agent.talkers.piper import PiperTalker

    (tmp_path / "v.onnx").write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="config not found"):
        PiperTalker(tmp_path / "v.onnx")


@pytest.mark.slow
async def test_piper_can_be_cancelled_mid_utterance_and_speaks_again(piper):
    gen = piper.speak(Utterance(text="One sentence here. Another sentence there. And a third."))
    first = await anext(gen)
    assert first.pcm
    await gen.aclose()
    pcm = b"".join(c.pcm for c in await collect(piper, "Still working."))
    assert rms(pcm) > 500


@pytest.mark.slow
async def test_empty_text_gives_no_audio(piper):
    assert await collect(piper, "   ") == []
    assert await collect(EspeakTalker(), "") == []


# --------------------------------------------------------------------------- espeak-ng


def test_espeak_picks_a_voice_for_each_of_the_ten_languages():
    talker = EspeakTalker()
    expected = {"zh": "sit/cmn", "en": "gmw/en-US", "fr": "roa/fr", "de": "gmw/de", "it": "roa/it",
                "ja": "jpx/ja", "ko": "ko", "pt": "roa/pt-BR", "ru": "zle/ru", "es": "roa/es"}
    assert set(expected) == set(LANGUAGE_VOICES)
    assert {lang: talker.voice_for(lang).identifier for lang in expected} == expected


@pytest.mark.parametrize("lang,text", [
    ("zh", "你好，世界。"), ("en", "Hello world."), ("fr", "Bonjour le monde."), ("de", "Guten Tag."),
    ("it", "Buongiorno a tutti."), ("ja", "こんにちは。"), ("ko", "안녕하세요."), ("pt", "Olá, mundo."),
    ("ru", "Привет, мир."), ("es", "Hola, mundo."),
])
async def test_espeak_speaks_each_language(lang, text):
    talker = EspeakTalker(lang)
    chunks = await collect(talker, text)
    pcm = b"".join(c.pcm for c in chunks)
    assert len(pcm) / 2 / talker.sample_rate > 0.3
    assert rms(pcm) > 500
    assert chunks[-1].final and not any(c.final for c in chunks[:-1])


def same_length(a: bytes, b: bytes) -> bool:
    """espeak-ng adds random noise (aspiration), so two renderings of one text differ by a
    few samples; different voices differ by far more."""
    return abs(len(a) - len(b)) <= 0.01 * max(len(a), len(b))


async def test_espeak_utterance_language_overrides_the_default():
    talker = EspeakTalker("en")
    french = b"".join(c.pcm for c in await collect(talker, "Bonjour tout le monde.", lang="fr"))
    assert same_length(french, EspeakTalker("fr").synthesize("Bonjour tout le monde."))
    assert not same_length(french, talker.synthesize("Bonjour tout le monde."))


def test_espeak_unknown_language_fails_at_construction():
    with pytest.raises(TalkerError, match="no voice for language 'xx-nowhere'"):
        EspeakTalker("xx-nowhere")


def test_espeak_unknown_voice_name_fails_at_construction():
    with pytest.raises(TalkerError, match="no voice"):
        EspeakTalker(voice="Nobody's Voice")


def test_espeak_voice_by_name():
    assert EspeakTalker(voice="gmw/en-GB-x-rp").voice_for().identifier == "gmw/en-GB-x-rp"


async def test_espeak_streams_long_text_in_many_chunks():
    chunks = await collect(EspeakTalker(), "This is a longer piece of text, " * 5)
    assert len(chunks) > 10
    assert all(len(c.pcm) <= 2 * 22050 * 0.2 for c in chunks)


async def test_espeak_cancel_stops_synthesis_and_frees_the_engine():
    talker = EspeakTalker()
    gen = talker.speak(Utterance(text="A very long text that goes on and on. " * 40))
    await anext(gen)
    t0 = time.perf_counter()
    await gen.aclose()
    assert time.perf_counter() - t0 < 0.5
    pcm = b"".join(c.pcm for c in await collect(talker, "Next."))
    assert rms(pcm) > 500


@pytest.mark.slow
async def test_espeak_and_piper_work_in_one_process(piper):
    a = b"".join(c.pcm for c in await collect(piper, "Piper here."))
    b = b"".join(c.pcm for c in await collect(EspeakTalker("de"), "Hier spricht espeak."))
    c = b"".join(c.pcm for c in await collect(piper, "Piper again."))
    assert min(rms(a), rms(b), rms(c)) > 500


# --------------------------------------------------------------------------- the Talker server


async def asgi_post(app, body) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        if isinstance(body, (bytes, str)):
            return await c.post("/v1/audio/speech", content=body)
        return await c.post("/v1/audio/speech", json=body)


async def test_server_refuses_a_request_without_input():
    r = await asgi_post(create_talker_app(EspeakTalker()), {"model": "x"})
    assert r.status_code == 400 and "'input' is required" in r.json()["error"]["message"]


async def test_server_refuses_a_body_that_is_not_json():
    r = await asgi_post(create_talker_app(EspeakTalker()), b"not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]


async def test_server_refuses_formats_openai_does_not_have():
    r = await asgi_post(create_talker_app(EspeakTalker()), {"input": "hi", "response_format": "ogg"})
    assert r.status_code == 400 and "mp3, opus, aac, flac, wav, pcm" in r.json()["error"]["message"]


async def test_server_refuses_overlong_input():
    r = await asgi_post(create_talker_app(EspeakTalker()), {"input": "a" * 5000})
    assert r.status_code == 400 and "at most 4096" in r.json()["error"]["message"]


class FailingTalker:
    name = "failing"
    sample_rate = 16000

    async def speak(self, utterance):
        raise TalkerError("voice file vanished")
        yield  # pragma: no cover - makes this an async generator

    async def aclose(self):
        return None


async def test_server_reports_a_failing_talker_as_json_500():
    r = await asgi_post(create_talker_app(FailingTalker()), {"input": "hi"})
    assert r.status_code == 500 and "voice file vanished" in r.json()["error"]["message"]


async def test_server_lists_its_talkers():
    app = create_talker_app({"en": EspeakTalker("en"), "fr": EspeakTalker("fr")})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        data = (await c.get("/v1/models")).json()["data"]
    assert [m["id"] for m in data] == ["en", "fr"]


# --------------------------------------------------------------------------- remote Talker over loopback


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
async def test_remote_talker_gets_the_served_talkers_exact_audio(fmt):
    served = RecordingTalker(16000, seconds_per_char=0.02)  # a deterministic tone
    direct = b"".join(c.pcm for c in await collect(served, "Hello from the other process."))
    with loopback(create_talker_app(served)) as url:
        remote = OpenAITalker(url, response_format=fmt)
        chunks = await collect(remote, "Hello from the other process.")
        await remote.aclose()
    assert b"".join(c.pcm for c in chunks) == direct
    assert {c.sample_rate for c in chunks} == {16000}
    assert chunks[-1].final and chunks[-1].pcm == b""
    assert served.spoken[-1] == "Hello from the other process."


async def test_remote_espeak_over_http_is_real_speech():
    with loopback(create_talker_app(EspeakTalker("en"))) as url:
        remote = OpenAITalker(url, response_format="wav")
        pcm = b"".join(c.pcm for c in await collect(remote, "Hello from the other process."))
        await remote.aclose()
    assert rms(pcm) > 500
    assert same_length(pcm, EspeakTalker("en").synthesize("Hello from the other process."))


async def test_remote_talker_sends_the_language():
    with loopback(create_talker_app(EspeakTalker("en"))) as url:
        remote = OpenAITalker(url)
        pcm = b"".join(c.pcm for c in await collect(remote, "Bonjour tout le monde.", lang="fr"))
        await remote.aclose()
    assert same_length(pcm, EspeakTalker("fr").synthesize("Bonjour tout le monde."))
    assert not same_length(pcm, EspeakTalker("en").synthesize("Bonjour tout le monde."))


async def test_remote_audio_streams_before_synthesis_ends():
    slow = RecordingTalker(16000, seconds_per_char=0.02, chunk_ms=100, realtime=1.0)  # 1 s of audio
    with loopback(create_talker_app(slow)) as url:
        remote = OpenAITalker(url)
        t0 = time.perf_counter()
        arrivals = [time.perf_counter() - t0 async for c in remote.speak(Utterance(text="x" * 50)) if c.pcm]
        await remote.aclose()
    assert arrivals[0] < 0.5 and arrivals[-1] > 0.8
    assert len(arrivals) >= 5


async def test_hanging_up_stops_synthesis_on_the_server():
    slow = RecordingTalker(16000, seconds_per_char=0.05, chunk_ms=100, realtime=1.0)  # 5 s of audio
    with loopback(create_talker_app(slow)) as url:
        remote = OpenAITalker(url)
        gen = remote.speak(Utterance(text="x" * 100))
        await anext(gen)
        await gen.aclose()
        await remote.aclose()
        deadline = time.monotonic() + 3
        while slow.cancelled == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    assert slow.cancelled == 1


async def test_remote_talker_reports_http_errors_with_the_servers_message():
    with loopback(create_talker_app(FailingTalker())) as url:
        remote = OpenAITalker(url)
        with pytest.raises(TalkerError, match="500.*voice file vanished"):
            await collect(remote, "hi")
        await remote.aclose()


async def test_remote_talker_says_when_the_server_is_down():
    remote = OpenAITalker("http://127.0.0.1:9/v1", timeout=5)
    with pytest.raises(TalkerError, match="cannot reach the TTS server.*serve talker"):
        await collect(remote, "hi")
    await remote.aclose()


def test_remote_talker_refuses_formats_it_cannot_stream():
    with pytest.raises(TalkerError, match="'pcm' or 'wav'"):
        OpenAITalker(response_format="mp3")


async def test_agent_speaks_through_a_talker_in_another_server():
    from omni_agent.agent import Agent
    from omni_agent.testing import ScriptedThinker

    with loopback(create_talker_app(EspeakTalker("en"))) as url:
        agent = Agent(thinker=ScriptedThinker(["Hello there. The Talker is remote."]),
                      talker=OpenAITalker(url))
        result = await agent.session().aask("hi")
        await agent.aclose()
    assert result.spoken == "Hello there. The Talker is remote."
    assert result.sample_rate == 22050 and rms(result.audio) > 500
    assert same_length(result.audio, EspeakTalker().synthesize("Hello there.")
                       + EspeakTalker().synthesize("The Talker is remote."))
