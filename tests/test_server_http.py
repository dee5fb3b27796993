"""The agent server over HTTP, on a real uvicorn server on loopback: one-shot text and
voice turns, /health, /metrics, bearer auth, size and audio-length limits, busy sessions,
graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
import soundfile as sf

from omni_agent.agent import Agent
from omni_agent.audio import wav_bytes
from omni_agent.errors import ConfigError
from omni_agent.live import EnergyVAD
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.testing import RecordingTalker, ScriptedThinker

SR = 16000


def tone_wav(seconds: float, rate: int = SR) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return wav_bytes((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


class ScriptedEars:
    """Test double for speech recognition (the real one has its own slow test)."""

    def __init__(self, text: str = "hello"):
        self.text = text
        self.seconds: list[float] = []

    async def transcribe(self, part):
        self.seconds.append(len(part.pcm) / 2 / part.sample_rate)
        return self.text


def make_server(thinker=None, *, talker=True, ears=None, **cfg) -> AgentServer:
    agent = Agent(thinker=thinker or ScriptedThinker("Hello there. How are you?", accepts=["text"]),
                  talker=RecordingTalker() if talker else None, ears=ears)
    return AgentServer(agent, ServerConfig(**cfg), vad=EnergyVAD())


async def test_health_says_ok_and_names_the_parts():
    async with make_server(token="t").running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.get("/health")  # open even with a token: probes carry none
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "sessions": 0, "thinker": "scripted", "talker": "recording",
                        "ears": False, "auth": True}


async def test_text_turn_returns_reply_spoken_text_trace_and_wav_audio():
    async with make_server().running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/turn", json={"text": "hi", "audio": True})
    assert r.status_code == 200
    body = r.json()
    assert body["text"] == "Hello there. How are you?"
    assert body["spoken"] == "Hello there. How are you?"
    assert body["reason"] == "completed" and body["transcript"] == "hi"
    assert "thinker_first_token" in body["trace"]["timings"]
    samples, rate = sf.read(io.BytesIO(base64.b64decode(body["audio"]["data"])))
    assert rate == body["audio"]["sample_rate"] == 16000 and len(samples) > 1000


async def test_text_turns_with_the_same_session_id_share_history():
    thinker = ScriptedThinker(["One.", "Two."], accepts=["text"])
    async with make_server(thinker).running() as url, httpx.AsyncClient(base_url=url) as c:
        sid = (await c.post("/v1/turn", json={"text": "first"})).json()["session_id"]
        r = await c.post("/v1/turn", json={"text": "second", "session_id": sid})
    assert r.json()["session_id"] == sid
    assert [m.text for m in thinker.requests[1].messages] == ["first", "One.", "second"]


async def test_events_are_returned_on_request():
    async with make_server().running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/turn", json={"text": "hi", "events": True})
    kinds = [e["type"] for e in r.json()["events"]]
    assert kinds[0] == "user_turn" and kinds[-1] == "turn_end" and "audio_chunk" in kinds


async def test_voice_turn_transcribes_the_upload_and_answers():
    ears = ScriptedEars("what is the time")
    async with make_server(ears=ears).running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/voice?audio=1", content=tone_wav(1.5, 44100),
                         headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200, r.text
    assert r.json()["transcript"] == "what is the time"
    assert r.json()["text"] == "Hello there. How are you?"
    assert ears.seconds == [pytest.approx(1.5, abs=0.01)]  # resampled to 16 kHz, all of it


async def test_voice_turn_without_ears_says_what_to_do():
    async with make_server().running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/voice", content=tone_wav(0.5))
    assert r.status_code == 400
    assert "ears" in r.json()["error"]["message"]


async def test_voice_turn_with_audio_over_the_length_limit_is_refused_with_413():
    ears = ScriptedEars()
    async with make_server(ears=ears, max_audio_seconds=2).running() as url, \
            httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/voice", content=tone_wav(3.0))
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "audio_too_long" and "longer than 2 s" in err["message"]
    assert ears.seconds == []


async def test_body_over_the_size_limit_is_refused_with_413():
    async with make_server(max_request_bytes=10_000).running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/voice", content=tone_wav(2.0))
        # An upload of unknown length is refused before it is read: it must say its size.
        async def chunks():
            for _ in range(20):
                yield bytes(1000)
        r2 = await c.post("/v1/voice", content=chunks())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert r2.status_code == 411 and r2.json()["error"]["code"] == "length_required"


@pytest.mark.parametrize("query,needle", [
    ("audio=maybe", "audio must be true or false"),
    ("session_id=../etc", "session_id must be 1-64 letters"),
    ("colour=red", "unknown parameter"),
])
async def test_bad_voice_turn_parameter_gets_a_400_naming_it(query, needle):
    ears = ScriptedEars()
    async with make_server(ears=ears).running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post(f"/v1/voice?{query}", content=tone_wav(0.5))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"
    assert needle in r.json()["error"]["message"]
    assert ears.seconds == []  # refused before anything was heard


async def test_upload_that_is_not_audio_gets_a_clear_400():
    async with make_server(ears=ScriptedEars()).running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/voice", content=b"this is not audio at all")
        empty = await c.post("/v1/voice", content=b"")
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_audio"
    assert "could not be decoded" in r.json()["error"]["message"]
    assert empty.status_code == 400 and "empty" in empty.json()["error"]["message"]


@pytest.mark.parametrize("body,needle", [
    (b"{not json", "not valid JSON"),
    (b'["a list"]', "JSON object"),
    (b'{"text": ""}', "non-empty"),
    (b'{"text": 5}', "non-empty"),
    (b'{"text": "hi", "colour": "red"}', "unknown field"),
    (b'{"text": "hi", "session_id": "../../etc"}', "session_id"),
    (b'{"text": "hi", "audio": "yes"}', "audio must be true or false"),
    (b'{"text": "hi", "events": 1}', "events must be true or false"),
])
async def test_malformed_text_turn_gets_a_400_naming_the_problem(body, needle):
    async with make_server().running() as url, httpx.AsyncClient(base_url=url) as c:
        r = await c.post("/v1/turn", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert needle in r.json()["error"]["message"]


async def test_wrong_or_missing_token_gets_401_and_the_right_one_passes():
    async with make_server(token="s3cret").running() as url, httpx.AsyncClient(base_url=url) as c:
        missing = await c.post("/v1/turn", json={"text": "hi"})
        wrong = await c.post("/v1/turn", json={"text": "hi"}, headers={"Authorization": "Bearer nope"})
        metrics = await c.get("/metrics")
        ok = await c.post("/v1/turn", json={"text": "hi"}, headers={"Authorization": "Bearer s3cret"})
    assert missing.status_code == wrong.status_code == metrics.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in wrong.json()["error"]["message"]
    assert ok.status_code == 200


async def test_a_session_with_a_running_turn_is_busy_for_other_requests():
    thinker = ScriptedThinker([["slow ", "reply."]], delay=0.5, accepts=["text"])
    async with make_server(thinker).running() as url, httpx.AsyncClient(base_url=url) as c:
        first = asyncio.ensure_future(c.post("/v1/turn", json={"text": "a", "session_id": "s1"}))
        await asyncio.sleep(0.2)
        second = await c.post("/v1/turn", json={"text": "b", "session_id": "s1"})
        other = await c.post("/v1/turn", json={"text": "c", "session_id": "s2"})
        first = await first
    assert second.status_code == 409 and second.json()["error"]["code"] == "session_busy"
    assert first.status_code == 200 and other.status_code == 200


async def test_metrics_count_turns_latencies_errors_and_rejections():
    async with make_server().running() as url, httpx.AsyncClient(base_url=url) as c:
        for _ in range(3):
            await c.post("/v1/turn", json={"text": "hi"})
        await c.post("/v1/turn", content=b"{bad")
        text = (await c.get("/metrics")).text
    assert 'omni_agent_turns_total{reason="completed",transport="http"} 3.0' in text
    assert 'omni_agent_time_to_first_audio_seconds_count{transport="http"} 3.0' in text
    assert 'omni_agent_thinker_first_token_seconds_count 3.0' in text
    assert 'omni_agent_rejected_total{reason="bad_json"} 1.0' in text
    assert "omni_agent_active_sessions 0.0" in text


async def test_shutdown_lets_a_running_http_turn_finish():
    thinker = ScriptedThinker([["a ", "slow ", "reply."]], delay=0.3, accepts=["text"])
    server = make_server(thinker, shutdown_grace=5)
    async with httpx.AsyncClient() as c:
        async with server.running() as url:
            pending = asyncio.ensure_future(c.post(f"{url}/v1/turn", json={"text": "hi"}))
            await asyncio.sleep(0.15)
        # The server has stopped; the turn that was running when it was told to stop ended.
        r = await pending
    assert r.status_code == 200 and r.json()["reason"] == "completed"
    assert r.json()["text"] == "a slow reply."


async def test_shutdown_cancels_a_turn_that_outlasts_the_grace_period():
    thinker = ScriptedThinker([[f"w{i} " for i in range(100)]], delay=0.1, accepts=["text"])
    server = make_server(thinker, shutdown_grace=0.3)
    async with httpx.AsyncClient() as c:
        async with server.running() as url:
            pending = asyncio.ensure_future(c.post(f"{url}/v1/turn", json={"text": "hi"}))
            await asyncio.sleep(0.2)
        r = await pending
    assert r.status_code == 200 and r.json()["reason"] == "interrupted"


def test_server_config_refuses_more_than_40_minutes_of_audio():
    with pytest.raises(ConfigError, match="40 minutes"):
        ServerConfig(max_audio_seconds=2401).check()
    with pytest.raises(ConfigError, match="token"):
        ServerConfig(token=" ").check()


@pytest.mark.slow
async def test_voice_turn_with_real_ears_transcribes_piper_speech():
    pytest.importorskip("piper")
    from omni_agent.ears import Ears
    from omni_agent.events import Utterance
    from omni_agent.talkers.piper import PiperTalker

    talker = PiperTalker()
    chunks = [c async for c in talker.speak(Utterance(text="Please tell me the weather in Paris."))]
    wav = wav_bytes(b"".join(c.pcm for c in chunks), chunks[0].sample_rate)
    server = make_server(ScriptedThinker("Sunny.", accepts=["text"]), ears=Ears())
    async with server.running() as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        r = await c.post("/v1/voice", content=wav, headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200, r.text
    assert "weather" in r.json()["transcript"].lower() and "paris" in r.json()["transcript"].lower()
    assert "asr" in r.json()["trace"]["timings"]


def test_serve_agent_command_serves_prints_the_page_address_and_stops_cleanly_on_sigterm(tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    cfg = tmp_path / "agent.toml"
    cfg.write_text('[thinker]\nbackend = "scripted"\nreplies = ["Hello from the command line."]\n'
                   'accepts = ["text"]\n[talker]\nbackend = "recording"\n')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "from omni_agent.cli import main; main()",
                             "serve", "agent", "--config", str(cfg),
                             "--port", str(port), "--token", "tok"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        r = httpx.post(f"{url}/v1/turn", json={"text": "hi"}, headers={"Authorization": "Bearer tok"})
        page = httpx.get(f"{url}/")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert r.json()["text"] == "Hello from the command line."
    assert page.status_code == 200 and "omni-agent" in page.text
    assert f"open http://127.0.0.1:{port}/?token=tok in a browser" in out
    # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM.
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in out and "ERROR" not in out
