"""Live sessions over the WebSocket protocol, on a real uvicorn server on loopback:
turns by text and by streamed audio, audio framing, barge-in latency, bad input (malformed
messages, oversized audio, wrong token), per-client limits, a client vanishing mid-turn,
and graceful shutdown."""

from __future__ import annotations

import asyncio
import base64
import json
from time import monotonic

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omni_agent.agent import Agent
from omni_agent.live import EnergyVAD
from omni_agent.server.agent_server import AgentServer, ServerConfig, parse_audio_frame
from omni_agent.testing import RecordingTalker, ScriptedThinker

SR = 16000


def tone(seconds: float, amp: float = 0.3) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * SR) * 2)


class ScriptedEars:
    def __init__(self, text: str = "hello"):
        self.text = text

    async def transcribe(self, part):
        return self.text


class SlowThinker(ScriptedThinker):
    """Streams many short sentences slowly (but answers "OK." at once to the words in
    ``quick``) and notes when its stream is cancelled."""

    def __init__(self, n: int = 60, delay: float = 0.05, quick: tuple[str, ...] = ("stop", "first", "second")):
        long = [f"This is sentence {i}. " for i in range(n)]
        super().__init__(lambda req: "OK." if req.messages[-1].text in quick else long,
                         delay=delay, accepts=["text"])
        self.cancelled = 0

    async def stream(self, request):
        try:
            async for ev in super().stream(request):
                yield ev
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise


def make_server(thinker=None, talker=None, ears=None, **cfg) -> AgentServer:
    cfg.setdefault("shutdown_grace", 0.5)  # tests that leave a turn running end quickly
    agent = Agent(thinker=thinker or ScriptedThinker("Hello there. How are you?", accepts=["text"]),
                  talker=talker or RecordingTalker(), ears=ears)
    return AgentServer(agent, ServerConfig(**cfg), vad=EnergyVAD())


class Client:
    """A protocol client: keeps every message; binary audio frames are parsed into an
    ``audio_chunk`` message and their PCM kept in ``audio``."""

    def __init__(self, ws):
        self.ws = ws
        self.msgs: list[dict] = []
        self.audio: list[tuple[dict, bytes]] = []

    async def next(self, timeout: float = 5.0) -> dict:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        if isinstance(raw, bytes):
            m = parse_audio_frame(raw)
            self.audio.append((m, m.pop("pcm")))
            m["type"] = "audio_chunk"
        else:
            m = json.loads(raw)
        m["_t"] = monotonic()
        self.msgs.append(m)
        return m

    async def until(self, kind: str, timeout: float = 5.0) -> dict:
        deadline = monotonic() + timeout
        while True:
            m = await self.next(max(0.01, deadline - monotonic()))
            if m["type"] == kind:
                return m

    async def send(self, obj) -> None:
        await self.ws.send(obj if isinstance(obj, (bytes, str)) else json.dumps(obj))

    async def stream_audio(self, pcm: bytes, chunk_ms: int = 20, realtime: bool = True) -> None:
        step = SR * chunk_ms // 1000 * 2
        for i in range(0, len(pcm), step):
            await self.ws.send(pcm[i:i + step])
            await asyncio.sleep(chunk_ms / 1000 if realtime else 0)


def ws_url(url: str, **q) -> str:
    qs = "&".join(f"{k}={v}" for k, v in q.items())
    return url.replace("http://", "ws://") + "/v1/live" + (f"?{qs}" if qs else "")


# --------------------------------------------------------------------------- turns


async def test_text_turn_streams_events_and_binary_audio_frames():
    async with make_server().running() as url, connect(ws_url(url)) as ws:
        c = Client(ws)
        ready = await c.next()
        assert ready["type"] == "ready" and ready["output"]["sample_rate"] == 16000
        await c.send({"type": "text", "text": "hi"})
        end = await c.until("turn_end")
        await c.until("trace")
    assert end["text"] == "Hello there. How are you?" and end["reason"] == "completed"
    kinds = [m["type"] for m in c.msgs]
    assert kinds.index("user_turn") < kinds.index("utterance") < kinds.index("audio_chunk") < kinds.index("turn_end")
    assert c.audio and all(h["turn_id"] == 1 and h["sample_rate"] == 16000 for h, _ in c.audio)
    assert [h["seq"] for h, _ in c.audio] == list(range(1, len(c.audio) + 1))
    assert [h["utterance_index"] for h, _ in c.audio if h["final"]] == [0, 1]
    # The audio is the Talker's, byte for byte: RecordingTalker's tone for both clauses.
    assert sum(len(p) for _, p in c.audio) == 2 * int(0.01 * 16000) * (12 + 12)
    lat = next(m for m in c.msgs if m["type"] == "latency")
    assert lat["first_audio_ms"] is not None and lat["first_audio_ms"] < 1000


async def test_streamed_pcm_becomes_a_turn_when_the_user_stops_speaking():
    server = make_server(ears=ScriptedEars("what is the weather"))
    async with server.running() as url, connect(ws_url(url, end_silence_ms=300)) as ws:
        c = Client(ws)
        await c.next()
        await c.stream_audio(silence(0.2) + tone(0.6) + silence(0.5), realtime=False)
        turn = await c.until("user_turn")
        await c.until("turn_end")
    kinds = [m["type"] for m in c.msgs]
    assert kinds.index("speech_started") < kinds.index("speech_stopped") < kinds.index("user_turn")
    assert turn["text"] == "what is the weather"


async def test_json_wrapped_audio_in_and_base64_audio_out_work_too():
    server = make_server(ears=ScriptedEars("hi"))
    async with server.running() as url, connect(ws_url(url, audio_out="base64", end_silence_ms=300)) as ws:
        c = Client(ws)
        assert (await c.next())["output"]["framing"] == "base64"
        pcm = silence(0.1) + tone(0.5) + silence(0.5)
        for i in range(0, len(pcm), 3200):
            await c.send({"type": "audio", "data": base64.b64encode(pcm[i:i + 3200]).decode()})
        await c.until("turn_end")
    chunks = [m for m in c.msgs if m["type"] == "audio_chunk"]
    assert chunks and all(len(base64.b64decode(m["data"])) == m["bytes"] for m in chunks)
    assert c.audio == []  # no binary frames in base64 mode


async def test_input_at_48_khz_is_resampled_for_the_vad():
    ears = ScriptedEars("hi")
    server = make_server(ears=ears)
    t = np.arange(int(0.6 * 48000)) / 48000
    loud = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()
    async with server.running() as url, connect(ws_url(url, sample_rate=48000, end_silence_ms=300)) as ws:
        c = Client(ws)
        assert (await c.next())["input"]["sample_rate"] == 48000
        for pcm in (loud, bytes(48000 * 2)):
            for i in range(0, len(pcm), 1920):
                await ws.send(pcm[i:i + 1920])
        assert (await c.until("user_turn"))["text"] == "hi"


# --------------------------------------------------------------------------- barge-in


async def test_barge_in_over_the_socket_cancels_within_100_ms_and_memory_keeps_what_was_played():
    # The Thinker is still writing when the user barges in; the Talker is fast, so more
    # was synthesized than the client had played: memory keeps what was played.
    thinker = SlowThinker()
    talker = RecordingTalker(seconds_per_char=0.04)
    server = make_server(thinker, talker, ears=ScriptedEars("stop"))
    async with server.running() as url, connect(ws_url(url, min_interrupt_ms=200, end_silence_ms=300)) as ws:
        c = Client(ws)
        await c.next()
        await c.send({"type": "text", "text": "tell me a long story"})
        await c.until("audio_chunk")
        await asyncio.sleep(0.5)
        await c.stream_audio(tone(0.4))  # the user talks over the agent
        stop = await c.until("stop_playback")
        await c.send({"type": "playback", "turn_id": stop["turn_id"], "played_ms": 1500, "final": True})
        intr = await c.until("interruption")
        end = await c.until("turn_end")
        revised = await c.until("memory_revised")
        await c.stream_audio(silence(0.5), realtime=False)
        async with httpx.AsyncClient() as h:
            metrics = (await h.get(f"{url}/metrics")).text
    assert intr["cancel_ms"] <= 100, f"cancel took {intr['cancel_ms']} ms"
    assert end["reason"] == "interrupted"
    assert thinker.cancelled >= 1  # (the next turn, cut short when the test ends, counts too)
    assert len(end["spoken"]) > len(revised["heard"])
    # Each clause is 19 characters at 0.04 s: 0.76 s. 1.5 s is clause 0 and 3 of the 4
    # words of clause 1.
    assert revised["heard"] == "This is sentence 0. This is sentence"
    assert "omni_agent_interruptions_total 1.0" in metrics
    assert "omni_agent_barge_in_cancel_seconds_count 1.0" in metrics


async def test_client_interrupt_message_stops_the_turn():
    thinker = SlowThinker()
    async with make_server(thinker).running() as url, connect(ws_url(url)) as ws:
        c = Client(ws)
        await c.next()
        await c.send({"type": "text", "text": "go"})
        await c.until("text_delta")
        await c.send({"type": "interrupt"})
        assert (await c.until("turn_end"))["reason"] == "interrupted"
    assert thinker.cancelled == 1


async def test_configure_switches_barge_in_off_for_this_session():
    talker = RecordingTalker(realtime=1.0, seconds_per_char=0.02)
    server = make_server(ScriptedThinker("One two three. Four five six.", accepts=["text"]), talker,
                         ears=ScriptedEars("hm"))
    async with server.running() as url, connect(ws_url(url)) as ws:
        c = Client(ws)
        await c.next()
        await c.send({"type": "configure", "barge_in": False})
        assert (await c.until("configured"))["config"]["barge_in"] is False
        await c.send({"type": "text", "text": "count"})
        await c.until("audio_chunk")
        await c.stream_audio(tone(0.4))
        assert (await c.until("turn_end"))["reason"] == "completed"
    assert "interruption" not in [m["type"] for m in c.msgs]


@pytest.mark.parametrize("field,value,says", [
    ("barge_in", "false", "true or false"),
    ("barge_in", 0, "true or false"),
    ("barge_in", "maybe", "true or false"),
    ("end_silence_ms", True, "an integer"),
    ("end_silence_ms", 250.7, "an integer"),
    ("threshold", 7, "between 0 and 1"),
])
async def test_a_bad_configure_value_is_refused_naming_the_field_and_the_old_value_stays(field, value, says):
    async with make_server().running() as url, connect(ws_url(url)) as ws:
        c = Client(ws)
        before = (await c.next())["config"][field]
        await c.send({"type": "configure", field: value, "min_speech_ms": 90})
        err = await c.until("error")
        await c.send({"type": "configure"})  # changes nothing: answers the settings in force
        after = (await c.until("configured"))["config"]
    assert err["code"] == "bad_message"
    assert field in err["message"] and says in err["message"]
    assert after[field] == before and after["min_speech_ms"] == 150  # nothing of it was applied


@pytest.mark.parametrize("query,says", [
    ({"barge_in": "maybe"}, "barge_in must be true or false"),
    ({"end_silence_ms": "250.7"}, "end_silence_ms must be an integer"),
    ({"threshold": "7"}, "between 0 and 1"),
    ({"session_id": "../etc"}, "session_id must be 1-64 letters"),
])
async def test_a_bad_connect_parameter_is_refused_naming_it(query, says):
    async with make_server().running() as url, connect(ws_url(url, **query)) as ws:
        err = await Client(ws).next()
    assert err["code"] == "bad_parameter"
    assert next(iter(query)) in err["message"] and says in err["message"]


@pytest.mark.parametrize("field,value", [("barge_in", "maybe"), ("end_silence_ms", "250.7")])
async def test_a_bad_value_reads_the_same_in_the_url_and_in_configure(field, value):
    async with make_server().running() as url:
        async with connect(ws_url(url, **{field: value})) as ws:
            at_connect = (await Client(ws).next())["message"]
        async with connect(ws_url(url)) as ws:
            c = Client(ws)
            await c.next()
            await c.send({"type": "configure", field: value})
            in_session = (await c.until("error"))["message"]
    assert in_session.startswith("configure message: " + at_connect)


async def test_connect_parameters_take_the_usual_spellings_of_a_flag():
    async with make_server().running() as url, connect(ws_url(url, barge_in="off", end_silence_ms=450)) as ws:
        ready = await Client(ws).next()
    assert ready["config"]["barge_in"] is False and ready["config"]["end_silence_ms"] == 450


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("message,code", [
    ("this is not json", "bad_json"),
    ('{"no": "type"}', "bad_message"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "audio", "data": "@@not base64@@"}', "bad_audio"),
    ('{"type": "audio"}', "bad_audio"),
    ('{"type": "text", "text": ""}', "bad_message"),
    ('{"type": "playback", "turn_id": "x"}', "bad_message"),
    ('{"type": "configure", "threshold": 7}', "bad_message"),
    ('{"type": "configure", "voice": "loud"}', "bad_message"),
    (b"\x01\x02\x03", "bad_audio"),  # odd number of bytes: not 16-bit PCM
])
async def test_malformed_message_gets_an_error_and_the_session_goes_on(message, code):
    async with make_server().running() as url, connect(ws_url(url)) as ws:
        c = Client(ws)
        await c.next()
        await c.send(message)
        err = await c.until("error")
        await c.send({"type": "text", "text": "still there?"})
        end = await c.until("turn_end")
    assert err["code"] == code and err["message"]
    assert end["reason"] == "completed"


async def test_oversized_message_is_refused_with_an_error_and_the_session_goes_on():
    async with make_server(max_message_bytes=64_000).running() as url, connect(ws_url(url)) as ws:
        c = Client(ws)
        await c.next()
        await c.send(silence(3.0))  # 96 kB in one message
        err = await c.until("error")
        await c.send({"type": "text", "text": "hi"})
        end = await c.until("turn_end")
    assert err["code"] == "message_too_large" and "64000" in err["message"]
    assert end["reason"] == "completed"


async def test_absurdly_large_message_closes_the_socket_with_1009():
    async with make_server(max_message_bytes=64_000).running() as url, \
            connect(ws_url(url), max_size=None) as ws:
        c = Client(ws)
        await c.next()
        with pytest.raises(ConnectionClosed) as e:
            await ws.send(bytes(4 << 20))
            for _ in range(10):
                await c.next()
    assert e.value.rcvd.code == 1009


async def test_user_turn_longer_than_the_audio_limit_is_dropped_with_a_clear_error():
    ears = ScriptedEars("hi")
    server = make_server(ears=ears, max_audio_seconds=1)
    async with server.running() as url, connect(ws_url(url, end_silence_ms=300)) as ws:
        c = Client(ws)
        assert (await c.next())["limits"]["max_audio_seconds"] == 1
        await c.stream_audio(tone(1.6) + silence(0.5), realtime=False)
        err = await c.until("error")
    assert err["code"] == "audio_too_long"
    assert "user_turn" not in [m["type"] for m in c.msgs]


async def test_too_many_malformed_messages_close_the_socket_with_1008():
    async with make_server(max_protocol_errors=3).running() as url, connect(ws_url(url)) as ws:
        c = Client(ws)
        await c.next()
        for _ in range(3):
            await c.send("garbage")
        with pytest.raises(ConnectionClosed) as e:
            for _ in range(10):
                await c.next()
    assert e.value.rcvd.code == 1008
    assert [m["code"] for m in c.msgs if m["type"] == "error"][-1] == "too_many_errors"


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_wrong_or_missing_token_gets_an_error_and_close_1008(token):
    async with make_server(token="s3cret").running() as url:
        q = {"token": token} if token else {}
        async with connect(ws_url(url, **q)) as ws:
            c = Client(ws)
            err = await c.next()
            with pytest.raises(ConnectionClosed) as e:
                await c.next()
        # The right token works, as a query parameter or as a header.
        async with connect(ws_url(url, token="s3cret")) as ws:
            assert (await Client(ws).next())["type"] == "ready"
        async with connect(ws_url(url), additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert (await Client(ws).next())["type"] == "ready"
    assert err["type"] == "error" and err["code"] == "unauthorized"
    assert e.value.rcvd.code == 1008


async def test_unknown_connect_parameter_is_refused_clearly():
    async with make_server().running() as url, connect(ws_url(url, colour="red")) as ws:
        err = await Client(ws).next()
    assert err["code"] == "bad_parameter" and "colour" in err["message"]


async def test_sessions_per_client_are_limited():
    async with make_server(max_sessions_per_client=2).running() as url:
        a = await connect(ws_url(url))
        b = await connect(ws_url(url))
        await Client(a).next()
        await Client(b).next()
        async with connect(ws_url(url)) as third:
            err = await Client(third).next()
            with pytest.raises(ConnectionClosed) as e:
                await Client(third).next()
        await a.close()
        await asyncio.sleep(0.1)
        async with connect(ws_url(url)) as again:
            assert (await Client(again).next())["type"] == "ready"
        await b.close()
    assert err["code"] == "too_many_sessions" and e.value.rcvd.code == 1008


async def test_a_client_vanishing_mid_turn_frees_its_session_and_others_are_untouched():
    thinker = SlowThinker(n=200, delay=0.02)
    server = make_server(thinker)
    agent = server.agent
    async with server.running() as url:
        async with connect(ws_url(url)) as other:
            b = Client(other)
            b_id = (await b.next())["session_id"]
            await b.send({"type": "text", "text": "first"})
            await b.until("turn_end", timeout=10)
            b_history = [(m.role, m.text) for m in agent.history.load(b_id)]

            vanisher = await connect(ws_url(url))
            a = Client(vanisher)
            a_id = (await a.next())["session_id"]
            await a.send({"type": "text", "text": "talk a lot"})
            await a.until("audio_chunk")
            vanisher.transport.abort()  # no close handshake: the client is just gone

            # The other session goes on, and its state is exactly what it was.
            await b.send({"type": "text", "text": "second"})
            end = await b.until("turn_end", timeout=10)
            await asyncio.sleep(0.2)
            assert end["reason"] == "completed"
            assert [(m.role, m.text) for m in agent.history.load(b_id)][:2] == b_history
            assert a_id not in agent._sessions and b_id in agent._sessions
            assert agent.history.load(a_id) == []  # forgotten with its socket
            async with httpx.AsyncClient() as h:
                health = (await h.get(f"{url}/health")).json()
    assert thinker.cancelled >= 1
    assert health["sessions"] == 1


async def test_a_slow_reading_client_does_not_delay_another_session():
    talker = RecordingTalker(seconds_per_char=0.5)  # lots of audio, made at once
    server = make_server(ScriptedThinker("A long reply for a slow reader.", accepts=["text"]), talker)
    async with server.running() as url:
        async with connect(ws_url(url)) as slow, connect(ws_url(url)) as fast:
            await Client(slow).next()
            f = Client(fast)
            await f.next()
            await slow.send(json.dumps({"type": "text", "text": "hi"}))  # never read
            t0 = monotonic()
            await f.send({"type": "text", "text": "hi"})
            await f.until("turn_end", timeout=10)
            assert monotonic() - t0 < 3.0
            slow.transport.abort()  # a stuck client is dropped, not closed politely


# --------------------------------------------------------------------------- shutdown


async def test_shutdown_lets_a_live_turn_finish_then_closes_with_1001():
    thinker = ScriptedThinker([["a ", "short ", "reply."]], delay=0.2, accepts=["text"])
    server = make_server(thinker, shutdown_grace=5)
    c = None
    async with server.running() as url:
        ws = await connect(ws_url(url))
        c = Client(ws)
        await c.next()
        await c.send({"type": "text", "text": "hi"})
        await c.until("text_delta")
    # The context has exited: the server drained and stopped.
    kinds = []
    with pytest.raises(ConnectionClosed) as e:
        while True:
            kinds.append((await c.next(timeout=2))["type"])
    assert "shutdown" in [m["type"] for m in c.msgs]
    end = next(m for m in c.msgs if m["type"] == "turn_end")
    assert end["reason"] == "completed" and end["text"] == "a short reply."
    assert e.value.rcvd.code == 1001


async def test_shutdown_cancels_a_live_turn_that_outlasts_the_grace_period():
    thinker = SlowThinker(n=100, delay=0.1)
    server = make_server(thinker, shutdown_grace=0.3)
    async with server.running() as url:
        ws = await connect(ws_url(url))
        c = Client(ws)
        await c.next()
        await c.send({"type": "text", "text": "hi"})
        await c.until("text_delta")
    with pytest.raises(ConnectionClosed) as e:
        while True:
            await c.next(timeout=2)
    end = next(m for m in c.msgs if m["type"] == "turn_end")
    assert end["reason"] == "interrupted"
    assert thinker.cancelled == 1
    assert e.value.rcvd.code == 1001


async def test_new_sessions_are_refused_while_draining():
    thinker = SlowThinker(n=10, delay=0.1)
    server = make_server(thinker, shutdown_grace=5)
    async with server.running() as url:
        ws = await connect(ws_url(url))
        c = Client(ws)
        await c.next()
        await c.send({"type": "text", "text": "hi"})
        await c.until("text_delta")
        drain = asyncio.ensure_future(server.drain())
        await asyncio.sleep(0.1)
        async with httpx.AsyncClient(base_url=url) as h:
            health = await h.get("/health")
            turn = await h.post("/v1/turn", json={"text": "x"})
        await drain
    assert health.status_code == 503 and health.json()["status"] == "draining"
    assert turn.status_code == 503 and turn.json()["error"]["code"] == "shutting_down"
