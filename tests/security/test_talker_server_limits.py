"""The Talker server bounds what speech costs: input length, the text synthesized at once
(long input is spoken piece by piece), concurrent syntheses, body size; and it refuses
malformed requests, foreign hosts, cross-site pages and missing tokens with clear JSON."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from omni_agent.server.background import serve_in_background
from omni_agent.server.talker import MAX_INPUT_CHARS, create_talker_app
from omni_agent.testing import RecordingTalker

UNPUNCTUATED = " ".join(["word", "speech", "going", "on", "and"] * 160)[:4000]


async def asgi(app, method="POST", path="/v1/audio/speech", **kw) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        return await c.request(method, path, **kw)


def error_of(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    return resp.json()["error"]


# ---------------------------------------------------------------------------- long input


async def test_long_unpunctuated_input_reaches_the_talker_in_bounded_pieces_in_order():
    talker = RecordingTalker(16000, seconds_per_char=0.0005)
    resp = await asgi(create_talker_app(talker), json={"input": UNPUNCTUATED, "response_format": "pcm"},
                      headers={"x-sample-rate": "native"})  # the Talker's samples, not resampled
    assert resp.status_code == 200
    assert len(talker.spoken) > 1
    assert max(len(p) for p in talker.spoken) <= 200  # SpeechLimits().max_piece_chars
    assert " ".join(talker.spoken) == UNPUNCTUATED  # every word, once, in order, none cut
    expected = sum(max(1, int(len(p) * 0.0005 * 16000)) for p in talker.spoken) * 2
    assert len(resp.content) == expected  # each piece's audio, one after another


def test_pieces_end_at_sentences_first_then_clauses_then_words():
    from omni_agent.server.talker import speech_pieces

    text = ("The first sentence is here. The second one follows it, with a clause; and more. "
            "Then a very long sentence without any marks at all that must be cut between words")
    pieces = speech_pieces(text, 40)
    assert pieces[0] == "The first sentence is here."
    assert "The second one follows it," in pieces
    assert all(len(p) <= 40 for p in pieces)
    assert " ".join(pieces) == text
    assert speech_pieces("Short. Text.", 300) == ["Short. Text."]
    assert speech_pieces("x" * 95, 40) == ["x" * 40, "x" * 40, "x" * 15]
    assert speech_pieces("你好。世界很大，我们走吧。", 6) == ["你好。", "世界很大，", "我们走吧。"]
    assert speech_pieces("It costs 1,000.50 dollars", 16) == ["It costs", "1,000.50 dollars"]


async def test_the_first_piece_is_heard_before_the_last_one_is_made():
    from omni_agent.server.talker import SpeechLimits

    slow = RecordingTalker(16000, seconds_per_char=0.002, chunk_ms=100, realtime=0.5)
    app = create_talker_app(slow, limits=SpeechLimits(max_piece_chars=50))
    with serve_in_background(app) as url:
        async with httpx.AsyncClient(timeout=30) as c:
            async with c.stream("POST", url + "/v1/audio/speech",
                                json={"input": "one two three four five six " * 10}) as resp:
                t0 = time.monotonic()
                audio = resp.aiter_bytes()
                await anext(audio)
                first = time.monotonic() - t0
                spoken_then = len(slow.spoken)
                async for _ in audio:
                    pass
    assert spoken_then < len(slow.spoken)  # later pieces were started after audio flowed
    assert first < 1.0


async def test_input_over_the_limit_is_a_400_naming_it():
    from omni_agent.server.talker import SpeechLimits

    app = create_talker_app(RecordingTalker(), limits=SpeechLimits(max_input_chars=100))
    err = error_of(await asgi(app, json={"input": "a" * 101}), 400)
    assert "at most 100" in err["message"]
    assert MAX_INPUT_CHARS == 4096


async def test_a_body_over_the_limit_is_a_413():
    err = error_of(await asgi(create_talker_app(RecordingTalker()),
                              content=b'{"input": "' + b"a" * 200_000 + b'"}',
                              headers={"content-type": "application/json"}), 413)
    assert "at most" in err["message"]


async def test_deeply_nested_json_is_a_400():
    from omni_agent.server.talker import SpeechLimits

    body = b'{"input": "hi", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    # under the body limit, so the nesting guard answers
    app = create_talker_app(RecordingTalker(), limits=SpeechLimits(max_body_bytes=1 << 20))
    err = error_of(await asgi(app, content=body, headers={"content-type": "application/json"}), 400)
    assert "nested too deeply" in err["message"]


# ---------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize("body, words", [
    ({"input": 5}, "'input' is required"),
    ({"input": "hi", "voice": ["alloy"]}, "voice must be a string"),
    ({"input": "hi", "response_format": ["wav"]}, "response_format must be a string"),
    ({"input": "hi", "speed": "fast"}, "speed must be a number"),
    ({"input": "hi", "speed": 9}, "speed must be between 0.25 and 4.0"),
    ({"input": "hi", "model": {"id": "x"}}, "model must be a string"),
    ({"input": "hi", "stream_format": "sse"}, "stream_format must be 'audio'"),
])
async def test_wrong_types_are_400s_with_a_json_error(body, words):
    talker = RecordingTalker()
    err = error_of(await asgi(create_talker_app(talker), json=body), 400)
    assert words in err["message"]
    assert talker.spoken == []


async def test_unknown_routes_answer_json_404():
    err = error_of(await asgi(create_talker_app(RecordingTalker()), "GET", "/v1/voices"), 404)
    assert "/v1/audio/speech" in err["message"]


# ---------------------------------------------------------------------------- concurrency


def test_syntheses_beyond_the_limit_wait_then_get_503_or_429_and_slots_come_back():
    from omni_agent.server.talker import SpeechLimits

    slow = RecordingTalker(16000, seconds_per_char=0.05, chunk_ms=100, realtime=1.0)  # 5 s
    limits = SpeechLimits(max_concurrent=1, max_waiting=1, queue_timeout=0.5)
    with serve_in_background(create_talker_app(slow, limits=limits)) as url:
        speech = url + "/v1/audio/speech"
        with httpx.Client(timeout=30) as first:
            with first.stream("POST", speech, json={"input": "x" * 100}) as held:
                audio = held.iter_bytes()
                next(audio)  # the one slot is taken while this streams
                results: dict[str, httpx.Response] = {}
                waiter = threading.Thread(target=lambda: results.setdefault(
                    "waited", httpx.post(speech, json={"input": "hi"}, timeout=30)))
                waiter.start()
                time.sleep(0.15)
                full = httpx.post(speech, json={"input": "hi"}, timeout=30)
                waiter.join()
        # the held stream was hung up: its slot is free again
        t0 = time.monotonic()
        again = httpx.post(speech, json={"input": "hi"}, timeout=30)
    waited = results["waited"]
    assert waited.status_code == 503 and "busy" in waited.json()["error"]["message"]
    assert waited.headers["retry-after"]
    assert full.status_code == 429 and "busy" in full.json()["error"]["message"]
    assert again.status_code == 200 and time.monotonic() - t0 < 2


# ---------------------------------------------------------------------------- web safety


async def test_a_foreign_host_or_page_is_refused_and_a_token_is_required_when_set():
    from omni_agent.server.security import WebSecurity

    app = create_talker_app(RecordingTalker(), security=WebSecurity(token="s3cret"))
    ok = {"authorization": "Bearer s3cret"}
    body = {"input": "hi"}
    assert (await asgi(app, json=body)).status_code == 401
    assert (await asgi(app, json=body, headers=ok)).status_code == 200
    assert (await asgi(app, json=body, headers={**ok, "host": "evil.example"})).status_code == 400
    assert (await asgi(app, json=body, headers={**ok, "origin": "https://evil.example"})).status_code == 403
    assert (await asgi(app, "GET", "/health")).status_code == 200


def test_the_openai_sdk_streams_speech_from_a_token_protected_server():
    openai = pytest.importorskip("openai")
    from omni_agent.server.security import WebSecurity

    talker = RecordingTalker(16000, seconds_per_char=0.01)
    app = create_talker_app(talker, security=WebSecurity(token="s3cret"))
    with serve_in_background(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="alloy", input="Hello there.", response_format="pcm") as r:
            pcm = r.read()
        with pytest.raises(openai.BadRequestError, match="at most 4096"):
            client.audio.speech.create(model="tts-1", voice="alloy", input="a" * 5000)
    assert len(pcm) == int(len("Hello there.") * 0.01 * 24000) * 2  # OpenAI's pcm is 24 kHz


def test_serve_talker_applies_the_token_limits_and_uvicorn_settings(monkeypatch):
    import uvicorn
    from click.testing import CliRunner

    from omni_agent.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: seen.setdefault("c", self.config))
    result = CliRunner().invoke(main, [
        "serve", "talker", "--talker", "omni_agent.testing:RecordingTalker", "--port", "0",
        "--token", "s3cret", "--allow-host", "box.lan", "--max-input-chars", "50",
        "--max-concurrent", "3", "--limit-concurrency", "9"])
    assert result.exit_code == 0, result.output
    config = seen["c"]
    assert config.limit_concurrency == 9
    app = config.app
    token = {"authorization": "Bearer s3cret", "host": "box.lan"}
    assert asyncio.run(asgi(app, json={"input": "hi"})).status_code == 401
    assert asyncio.run(asgi(app, json={"input": "hi"}, headers=token)).status_code == 200
    assert asyncio.run(asgi(app, json={"input": "a" * 51}, headers=token)).status_code == 400


# ---------------------------------------------------------------------------- real Piper memory


def _peak_rss_growth(run) -> tuple[float, object]:
    psutil = pytest.importorskip("psutil")
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = base
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run()
    finally:
        stop.set()
        sampler.join()
    return (peak - base) / 2 ** 20, result


@pytest.mark.slow
def test_piper_speaks_4000_unpunctuated_characters_in_bounded_memory():
    pytest.importorskip("piper")
    from omni_agent.talkers.piper import PiperTalker

    piper = PiperTalker()
    app = create_talker_app(piper)
    warm = asyncio.run(asgi(app, json={"input": "Warming up the voice once, so its model is loaded."}))
    assert warm.status_code == 200

    async def speak():
        return await asgi(app, json={"input": UNPUNCTUATED, "response_format": "pcm"}, timeout=600)

    growth, resp = _peak_rss_growth(lambda: asyncio.run(speak()))
    assert resp.status_code == 200
    seconds = len(resp.content) / 2 / piper.sample_rate
    assert seconds > 120  # all of it was spoken
    assert growth < 600, f"RSS grew {growth:.0f} MB"


def test_the_cli_defaults_are_the_servers_defaults():
    from omni_agent.cli.serve_talker import serve_talker
    from omni_agent.server.security import ServerLimits
    from omni_agent.server.talker import SpeechLimits

    cli = {p.name: p.default for p in serve_talker.params}
    for name in ("max_input_chars", "max_piece_chars", "max_concurrent", "queue_timeout", "max_body_bytes"):
        assert cli[name] == SpeechLimits.model_fields[name].default, name
    for name in ("limit_concurrency", "timeout_keep_alive", "header_timeout"):
        assert cli[name] == ServerLimits.model_fields[name].default, name
