"""The Talker server as a drop-in for OpenAI's speech API: the official ``openai`` SDK's
``audio.speech.create`` against ``create_talker_app`` on a real loopback port, with the
embedded Piper voice. Every response format decodes to the same speech, ``pcm`` is 24 kHz,
``speed`` changes the length, WAV/FLAC carry true sizes unless streamed, ``/metrics``
counts what was served."""

from __future__ import annotations

import asyncio
import io
import struct
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from omni_agent.server.background import serve_in_background
from omni_agent.server.talker import create_talker_app
from omni_agent.testing import RecordingTalker, word_match

openai = pytest.importorskip("openai")
av = pytest.importorskip("av")

TEXT = "Hello there. This is the embedded voice, answering through the OpenAI client."
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]
#: What OpenAI's SDK sends as the format's Content-Type.
MEDIA = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
         "wav": "audio/wav", "pcm": "audio/pcm"}


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """An answer's audio as float32 mono and its rate: PyAV (FFmpeg) for the codecs,
    soundfile for WAV, and OpenAI's documented 24 kHz int16 for raw ``pcm``."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, 24000
    if fmt == "wav":
        x, rate = sf.read(io.BytesIO(data), dtype="float32")
        return x, rate
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        assert stream.channels == 1
        blocks = [f.to_ndarray().reshape(-1) for f in c.decode(stream)]
        rate = stream.rate
    x = np.concatenate(blocks)
    return (x / 32768.0 if x.dtype == np.int16 else x).astype(np.float32), rate


def seconds(data: bytes, fmt: str) -> float:
    x, rate = decode(data, fmt)
    return len(x) / rate


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


@pytest.fixture(scope="module")
def piper():
    from omni_agent.talkers.piper import PiperTalker

    # Fixed phoneme durations: the voice's default randomness makes two renderings of one
    # text differ by a few percent, which would hide what the formats themselves do.
    return PiperTalker(noise_w_scale=0.0)


@pytest.fixture(scope="module")
def server(piper):
    """The Piper Talker served on loopback; yields its base URL."""
    with serve_in_background(create_talker_app(piper)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    c = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def answers(client) -> dict[str, bytes]:
    """One ``audio.speech.create`` answer per format, for the same text."""
    return {fmt: client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT,
                                            response_format=fmt).content for fmt in FORMATS}


# ---------------------------------------------------------------------------- formats


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_decodes_to_speech_as_long_as_the_wav_answer(answers, fmt):
    x, rate = decode(answers[fmt], fmt)
    reference = seconds(answers["wav"], "wav")
    assert reference > 3.0
    assert abs(len(x) / rate - reference) <= 0.05 * reference, (fmt, len(x) / rate, reference)
    assert rms(x) > 0.03  # speech, not silence (Piper's output is peak-normalized)


@pytest.fixture(scope="module")
def ears():
    from omni_agent.ears import Ears

    return Ears()  # whisper tiny.en, bundled


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_says_the_words(answers, ears, fmt):
    from omni_agent.audio import resample

    x, rate = decode(answers[fmt], fmt)
    heard = ears.transcribe_samples(resample(x, rate, 16000))
    assert word_match(heard, TEXT) >= 0.8, heard


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_has_its_openai_content_type_and_container(server, fmt):
    r = httpx.post(server + "/v1/audio/speech", json={"input": "Hi.", "response_format": fmt},
                   timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == MEDIA[fmt]
    magic = {"mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3"), "opus": (b"OggS",), "aac": (b"\xff\xf1",),
             "flac": (b"fLaC",), "wav": (b"RIFF",)}
    if fmt in magic:
        assert r.content.startswith(magic[fmt])
    if fmt == "opus":
        assert b"OpusHead" in r.content[:64]


@pytest.mark.slow
def test_a_request_without_a_format_gets_mp3_like_openai(client, answers):
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT).content
    with av.open(io.BytesIO(data)) as c:
        assert c.format.name == "mp3"
    assert abs(seconds(data, "mp3") - seconds(answers["wav"], "wav")) <= 0.05 * seconds(answers["wav"], "wav")


@pytest.mark.slow
def test_pcm_and_every_format_are_at_openais_24_khz(server, answers):
    r = httpx.post(server + "/v1/audio/speech", json={"input": "Hi there.", "response_format": "pcm"},
                   timeout=60)
    assert r.headers["x-sample-rate"] == "24000"
    assert sf.info(io.BytesIO(answers["wav"])).samplerate == 24000
    assert sf.info(io.BytesIO(answers["flac"])).samplerate == 24000
    # raw pcm played at 24 kHz lasts as long as the wav answer (not 8.8 % short)
    assert len(answers["pcm"]) // 2 == sf.info(io.BytesIO(answers["wav"])).frames


def test_the_talkers_own_rate_is_kept_when_asked():
    talker = RecordingTalker(16000, seconds_per_char=0.01)
    with serve_in_background(create_talker_app(talker, sample_rate=None)) as url:
        r = httpx.post(url + "/v1/audio/speech", json={"input": "x" * 100, "response_format": "pcm"})
    assert r.headers["x-sample-rate"] == "16000" and len(r.content) == 100 * 160 * 2


def test_a_request_may_ask_for_a_rate_in_the_x_sample_rate_header():
    talker = RecordingTalker(16000, seconds_per_char=0.01)
    with serve_in_background(create_talker_app(talker)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        native = c.audio.speech.with_raw_response.create(
            model="tts-1", voice="alloy", input="x" * 100, response_format="wav",
            extra_headers={"X-Sample-Rate": "native"})
        at_8k = c.audio.speech.with_raw_response.create(
            model="tts-1", voice="alloy", input="x" * 100, response_format="wav",
            extra_headers={"X-Sample-Rate": "8000"})
        with pytest.raises(openai.BadRequestError, match="X-Sample-Rate.*'native'"):
            c.audio.speech.create(model="tts-1", voice="alloy", input="hi",
                                  extra_headers={"X-Sample-Rate": "lots"})
        c.close()
    assert sf.info(io.BytesIO(native.content)).samplerate == 16000
    assert native.headers["x-sample-rate"] == "16000"
    assert sf.info(io.BytesIO(at_8k.content)).frames == 100 * 80


def test_serve_talker_takes_a_sample_rate(monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    from omni_agent.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: seen.setdefault("c", self.config))
    args = ["serve", "talker", "--talker", "omni_agent.testing:RecordingTalker", "--port", "0"]
    result = CliRunner().invoke(main, args + ["--sample-rate", "native"])
    assert result.exit_code == 0, result.output
    r = asyncio.run(_post(seen["c"].app, {"input": "x" * 100, "response_format": "pcm"}))
    assert r.headers["x-sample-rate"] == "16000"  # RecordingTalker's own rate
    bad = CliRunner().invoke(main, args + ["--sample-rate", "fast"])
    assert bad.exit_code != 0 and "--sample-rate" in bad.output and "'native'" in bad.output


async def _post(app, body) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        return await c.post("/v1/audio/speech", json=body)


# ---------------------------------------------------------------------------- speed


@pytest.mark.slow
@pytest.mark.parametrize("speed, ratio", [(2.0, 0.5), (0.5, 2.0), (4.0, 0.25), (0.25, 4.0)])
def test_speed_changes_the_length_of_pipers_speech(client, answers, speed, ratio):
    data = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT,
                                      response_format="wav", speed=speed).content
    x, rate = decode(data, "wav")
    got = len(x) / rate / seconds(answers["wav"], "wav")
    assert abs(got - ratio) <= 0.1 * ratio, got
    assert rms(x) > 0.03


def test_speed_uses_espeaks_own_rate():
    from omni_agent.talkers.espeak import EspeakTalker

    talker = EspeakTalker("en")
    text = "Please call me back tomorrow at noon; I will be at the office until five."
    with serve_in_background(create_talker_app(talker)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        normal, fast = (len(c.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                                  response_format="pcm", speed=s).content)
                        for s in (1.0, 2.0))
        c.close()
    assert abs(fast / normal - 0.5) <= 0.05


@pytest.mark.parametrize("speed", [0.25, 2.0, 4.0])
def test_speed_time_stretches_a_talker_without_its_own_pace(speed):
    talker = RecordingTalker(24000, seconds_per_char=0.02)  # 2 s of tone
    with serve_in_background(create_talker_app(talker)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        data = c.audio.speech.create(model="tts-1", voice="alloy", input="x" * 100,
                                     response_format="pcm", speed=speed).content
        c.close()
    assert abs(len(data) / 2 / 24000 - 2.0 / speed) <= 0.05 * 2.0 / speed


async def test_the_remote_talker_client_passes_speed_through():
    from omni_agent.events import Utterance
    from omni_agent.talkers.openai import OpenAITalker

    talker = RecordingTalker(16000, seconds_per_char=0.02)  # 2 s of tone for 100 characters
    with serve_in_background(create_talker_app(talker)) as url:
        remote = OpenAITalker(url + "/v1", speed=2.0)
        pcm = b"".join([c.pcm async for c in remote.speak(Utterance(text="x" * 100))])
        await remote.aclose()
    assert abs(len(pcm) / 2 / 16000 - 1.0) <= 0.05  # the Talker's own rate, half as long


# ---------------------------------------------------------------------------- sizes


def _riff_sizes(data: bytes) -> tuple[int, int]:
    riff = struct.unpack("<I", data[4:8])[0]
    pos = 12
    while data[pos:pos + 4] != b"data":
        pos += 8 + struct.unpack("<I", data[pos + 4:pos + 8])[0]
    return riff, struct.unpack("<I", data[pos + 4:pos + 8])[0]


def test_a_wav_answer_carries_its_true_sizes():
    talker = RecordingTalker(24000, seconds_per_char=0.01)
    with serve_in_background(create_talker_app(talker)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        resp = c.audio.speech.with_raw_response.create(model="tts-1", voice="alloy",
                                                       input="x" * 100, response_format="wav")
        data = resp.content
        c.close()
    riff, size = _riff_sizes(data)
    assert riff == len(data) - 8 and size == 100 * 240 * 2
    assert int(resp.headers["content-length"]) == len(data)


def test_a_wav_streamed_on_request_has_an_open_length_and_plays():
    talker = RecordingTalker(24000, seconds_per_char=0.01)
    with serve_in_background(create_talker_app(talker)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with c.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="x" * 100, response_format="wav",
                stream_format="audio") as r:
            data = r.read()
        c.close()
    assert _riff_sizes(data) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert len(decode(data, "wav")[0]) == 100 * 240


def test_a_flac_answer_states_its_length_and_a_streamed_one_does_not():
    talker = RecordingTalker(24000, seconds_per_char=0.01)
    with serve_in_background(create_talker_app(talker)) as url:
        whole = httpx.post(url + "/v1/audio/speech", json={"input": "x" * 100, "response_format": "flac"})
        streamed = httpx.post(url + "/v1/audio/speech", json={"input": "x" * 100, "response_format": "flac",
                                                              "stream_format": "audio"})
    assert sf.info(io.BytesIO(whole.content)).frames == 100 * 240
    assert "content-length" in whole.headers
    # STREAMINFO's 36-bit total sample count: 0 means "unknown" (a stream)
    assert int.from_bytes(streamed.content[21:26], "big") & 0xFFFFFFFFF == 0
    assert len(decode(streamed.content, "flac")[0]) == 100 * 240


# ---------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "pcm", "wav", "flac"])
def test_streamable_formats_arrive_before_synthesis_ends(fmt):
    slow = RecordingTalker(24000, seconds_per_char=0.02, chunk_ms=100, realtime=1.0)  # 1 s of audio
    with serve_in_background(create_talker_app(slow)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        t0 = time.perf_counter()
        with c.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="x" * 50, response_format=fmt,
                stream_format="audio") as r:
            arrivals = [time.perf_counter() - t0 for _ in r.iter_bytes(256)]
        c.close()
    assert arrivals[0] < 0.5 and arrivals[-1] > 0.8, (arrivals[0], arrivals[-1])


async def test_encoding_leaves_the_event_loop_free(piper):
    app = create_talker_app(piper)
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def ask(fmt: str) -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t",
                                     timeout=60) as c:
            return len((await c.post("/v1/audio/speech",
                                     json={"input": TEXT * 2, "response_format": fmt})).content)

    ticker = asyncio.create_task(tick())
    sizes = await asyncio.gather(ask("mp3"), ask("flac"))
    done.set()
    await ticker
    assert min(sizes) > 10_000
    assert max(gaps) < 0.1, max(gaps)


# ---------------------------------------------------------------------------- errors, metrics


async def test_a_format_openai_does_not_have_is_a_400_naming_the_six():
    app = create_talker_app(RecordingTalker())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await c.post("/v1/audio/speech", json={"input": "hi", "response_format": "ogg"})
    assert r.status_code == 400
    assert "mp3, opus, aac, flac, wav, pcm" in r.json()["error"]["message"]


def test_metrics_count_answers_by_format_and_time_to_first_byte():
    talker = RecordingTalker(24000, seconds_per_char=0.01)
    with serve_in_background(create_talker_app(talker)) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        c.audio.speech.create(model="tts-1", voice="alloy", input="Hello.", response_format="opus")
        c.audio.speech.create(model="tts-1", voice="alloy", input="Hello.")
        with pytest.raises(openai.BadRequestError):
            c.audio.speech.create(model="tts-1", voice="alloy", input="a" * 5000)
        c.close()
        page = httpx.get(url + "/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    text = page.text
    assert 'omni_agent_talker_requests_total{format="opus",status="200"} 1.0' in text
    assert 'omni_agent_talker_requests_total{format="mp3",status="200"} 1.0' in text
    assert 'omni_agent_talker_rejected_total{reason="input_too_long"} 1.0' in text
    assert 'omni_agent_talker_time_to_first_byte_seconds_count{format="opus"} 1.0' in text
    assert "omni_agent_talker_active_syntheses 0.0" in text


async def test_metrics_need_the_token_when_one_is_set():
    from omni_agent.server.security import WebSecurity

    app = create_talker_app(RecordingTalker(), security=WebSecurity(token="s3cret"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"authorization": "Bearer s3cret"})).status_code == 200
