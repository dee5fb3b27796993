"""The OpenAI Realtime-compatible endpoint (/v1/realtime): the sans-IO protocol class on
its own (bad input, ordering, truncation, dialects), then the official ``openai`` SDK's
Realtime clients against a real agent server on loopback — text turns, cancel mid-answer,
the token, and (slow) a Piper-spoken question through the silero VAD and whisper ears
with a PII rewrite that must be in the transcript and in the audio itself."""

from __future__ import annotations

import asyncio
import base64
import json
from time import monotonic

import numpy as np
import pytest

from omni_agent.agent import Agent
from omni_agent.events import AudioChunk, TextDelta, ToolCall, TurnEnd, UserTurn, Utterance
from omni_agent.live import EnergyVAD, LiveConfig
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.server.realtime_protocol import (Cancel, Configure, DropSpeech, EndTurn, Feed, Instruct,
                                                 RealtimeLimits, RealtimeProtocol, Submit, Truncate)
from omni_agent.testing import RecordingTalker, ScriptedThinker

RATE = 24000


def b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode("ascii")


def tone(seconds: float, rate: int = RATE) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


def send(proto: RealtimeProtocol, **event):
    return proto.receive(json.dumps(event))


def errors(got) -> list[dict]:
    return [e["error"] for e in got.events if e["type"] == "error"]


def manual() -> RealtimeProtocol:
    proto = RealtimeProtocol(dialect="ga", model="m", turn_detection=False)
    return proto


# --------------------------------------------------------------------------- sans-IO protocol


def test_bad_json_is_an_error_event_and_the_session_goes_on():
    proto = manual()
    (err,) = errors(proto.receive("{not json"))
    assert err["code"] == "invalid_json" and err["type"] == "invalid_request_error"
    assert not send(proto, type="input_audio_buffer.clear").commands  # still answers
    assert send(proto, type="input_audio_buffer.clear").events[0]["type"] == "input_audio_buffer.cleared"


def test_unknown_event_type_names_the_client_event_id():
    (err,) = errors(send(manual(), type="conversation.frobnicate", event_id="evt_42"))
    assert err["code"] == "invalid_event_type" and err["event_id"] == "evt_42"
    assert "response.create" in err["message"]  # says what is taken


def test_unsupported_event_says_why():
    (err,) = errors(send(manual(), type="conversation.item.delete", item_id="x", event_id="e"))
    assert err["code"] == "unsupported_event" and err["event_id"] == "e"


def test_oversize_message_is_refused_before_it_is_parsed():
    proto = RealtimeProtocol(limits=RealtimeLimits(max_message_bytes=4096), turn_detection=False)
    got = send(proto, type="input_audio_buffer.append", audio=b64(tone(0.2)), event_id="big")
    (err,) = errors(got)
    assert err["code"] == "message_too_large" and not got.commands


def test_audio_that_is_not_base64_pcm16_is_refused():
    proto = manual()
    assert errors(send(proto, type="input_audio_buffer.append", audio="!!!"))[0]["param"] == "audio"
    assert "even" in errors(send(proto, type="input_audio_buffer.append", audio=b64(b"abc")))[0]["message"]


def test_the_input_buffer_is_bounded_in_seconds():
    proto = RealtimeProtocol(limits=RealtimeLimits(max_buffer_seconds=1.0), turn_detection=False)
    assert not errors(send(proto, type="input_audio_buffer.append", audio=b64(tone(0.8))))
    (err,) = errors(send(proto, type="input_audio_buffer.append", audio=b64(tone(0.5))))
    assert err["code"] == "input_audio_buffer_full"


def test_commit_before_any_audio_is_refused_like_the_realtime_api():
    (err,) = errors(send(manual(), type="input_audio_buffer.commit", event_id="c1"))
    assert err["code"] == "input_audio_buffer_commit_empty" and err["event_id"] == "c1"


def test_response_create_before_any_input_is_refused():
    (err,) = errors(send(manual(), type="response.create"))
    assert err["code"] == "no_new_input"


def test_committed_audio_is_resampled_to_16_khz_and_answered_on_response_create():
    proto = manual()
    assert not send(proto, type="input_audio_buffer.append", audio=b64(tone(0.5))).events
    got = send(proto, type="input_audio_buffer.commit")
    kinds = [e["type"] for e in got.events]
    assert kinds == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done"]
    got = send(proto, type="response.create")
    assert got.events[0]["type"] == "response.created"
    (submit,) = got.commands
    assert isinstance(submit, Submit)
    part = submit.turn.parts[0]
    assert part.sample_rate == 16000
    assert 0.5 * 16000 - 800 < len(part.pcm) / 2 <= 0.5 * 16000  # soxr holds ~25 ms back


def test_a_second_response_while_one_is_active_is_refused():
    proto = manual()
    send(proto, type="conversation.item.create",
         item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
    send(proto, type="response.create")
    (err,) = errors(send(proto, type="response.create"))
    assert err["code"] == "conversation_already_has_active_response"


def test_semantic_vad_turns_the_semantic_end_of_turn_on_and_server_vad_off():
    proto = RealtimeProtocol(dialect="ga", live=LiveConfig(semantic_turn=False))
    got = send(proto, type="session.update", session={
        "type": "realtime", "audio": {"input": {"turn_detection": {"type": "semantic_vad"}}}})
    assert got.commands == [Configure({"semantic_turn": True})]
    assert got.events[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    got = send(proto, type="session.update", session={
        "type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}})
    assert got.commands == [Configure({"semantic_turn": False})] and not proto.live.semantic_turn


def test_with_server_vad_audio_feeds_the_live_session_and_commit_ends_the_turn():
    proto = RealtimeProtocol(dialect="ga")
    (feed,) = send(proto, type="input_audio_buffer.append", audio=b64(tone(0.3))).commands
    # 16 kHz for the VAD; soxr's streaming filter holds back ~25 ms until more audio comes.
    assert isinstance(feed, Feed) and 0.3 * 16000 - 800 < len(feed.pcm) / 2 <= 0.3 * 16000
    assert isinstance(send(proto, type="input_audio_buffer.commit", event_id="x").commands[0], EndTurn)
    assert proto.commit_failed("x")["error"]["code"] == "input_audio_buffer_commit_empty"
    assert isinstance(send(proto, type="input_audio_buffer.clear").commands[0], DropSpeech)


def test_session_update_in_the_ga_shape_sets_turn_detection():
    proto = RealtimeProtocol(dialect="ga")
    got = send(proto, type="session.update", session={
        "type": "realtime", "instructions": "Be brief.",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}},
                  "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}}})
    (updated,) = got.events
    s = updated["session"]
    assert updated["type"] == "session.updated"
    assert s["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 300
    assert s["audio"]["output"]["voice"] == "marin" and s["instructions"] == "Be brief."
    assert s["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    # server_vad is OpenAI's silence rule: the live session's semantic end of turn goes off.
    assert got.commands == [Configure({"semantic_turn": False, "end_silence_ms": 300}),
                            Instruct("Be brief.")]
    got = send(proto, type="session.update", session={"audio": {"input": {"turn_detection": None}}})
    assert got.events[0]["session"]["audio"]["input"]["turn_detection"] is None
    assert isinstance(got.commands[0], DropSpeech) and not proto.vad


def test_session_update_in_the_beta_flat_shape_works_in_both_dialects():
    for dialect in ("beta", "ga"):
        proto = RealtimeProtocol(dialect=dialect)
        got = send(proto, type="session.update", session={
            "modalities": ["text", "audio"], "input_audio_format": "pcm16", "output_audio_format": "pcm16",
            "turn_detection": None, "temperature": 0.7})
        assert not errors(got) and not proto.vad
    assert "input_audio_format" in got.events[0]["session"] or "audio" in got.events[0]["session"]


@pytest.mark.parametrize("session, param", [
    ({"input_audio_format": "g711_ulaw"}, "session.input_audio_format"),
    ({"audio": {"output": {"format": {"type": "audio/pcmu"}}}}, "session.audio.output.format"),
    ({"tools": [{"type": "function", "name": "f"}]}, "session.tools"),
    ({"colour": "red"}, "session.colour"),
    ({"turn_detection": {"type": "server_vad", "threshold": 2}}, "session.turn_detection.threshold"),
])
def test_session_update_that_cannot_be_honoured_is_refused_whole(session, param):
    proto = RealtimeProtocol(dialect="ga")
    before = proto.session.model_dump()
    (err,) = errors(send(proto, type="session.update", session={"instructions": "x", **session}))
    assert err["param"] == param
    assert proto.session.model_dump() == before  # nothing of it applied


def _answered(proto: RealtimeProtocol, *events) -> list[dict]:
    """Run one text response through the protocol with the given live-session events."""
    send(proto, type="conversation.item.create",
         item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
    out = send(proto, type="response.create").events
    for ev in (UserTurn(parts=[], turn_id=1), *events):
        out += proto.translate(ev)
    return out


def test_the_transcript_is_the_approved_utterance_never_the_thinkers_raw_text():
    out = _answered(manual(), TextDelta("Call 555-0199.", turn_id=1),
                    Utterance(text="Call [phone number].", original="Call 555-0199.", turn_id=1),
                    AudioChunk(pcm=tone(0.5, 22050), sample_rate=22050, turn_id=1, final=True),
                    TurnEnd(turn_id=1, text="Call [phone number].", spoken="Call [phone number]."))
    wire = json.dumps([e for e in out if e["type"] != "response.output_audio.delta"])
    # The number itself (a bare "555" may turn up inside a random hex id of an event).
    assert "555-0199" not in wire and "Call [phone number]." in wire
    deltas = [e["delta"] for e in out if e["type"] == "response.output_audio_transcript.delta"]
    assert deltas == ["Call [phone number]."]
    done = out[-1]
    assert done["type"] == "response.done" and done["response"]["status"] == "completed"
    assert done["response"]["output"][0]["content"][0]["transcript"] == "Call [phone number]."


def test_reply_audio_is_resampled_to_24_khz_in_bounded_deltas():
    out = _answered(manual(), Utterance(text="Hello.", turn_id=1),
                    AudioChunk(pcm=tone(1.0, 22050), sample_rate=22050, turn_id=1, final=True),
                    TurnEnd(turn_id=1))
    audio = [base64.b64decode(e["delta"]) for e in out if e["type"] == "response.output_audio.delta"]
    assert max(len(a) for a in audio) <= 0.2 * RATE * 2
    assert abs(sum(len(a) for a in audio) / 2 - RATE) < 50  # one second at 24 kHz


def test_a_text_only_session_gets_the_approved_display_text_and_no_audio():
    proto = manual()
    send(proto, type="session.update", session={"output_modalities": ["text"]})
    out = _answered(proto, Utterance(text="See example dot com.", display="See example.com.", turn_id=1),
                    AudioChunk(pcm=tone(0.1, 22050), sample_rate=22050, turn_id=1), TurnEnd(turn_id=1))
    assert [e["delta"] for e in out if e["type"] == "response.output_text.delta"] == ["See example.com."]
    assert not [e for e in out if "audio" in e["type"]]


def test_beta_dialect_uses_the_beta_event_names():
    out = _answered(RealtimeProtocol(dialect="beta", turn_detection=False), Utterance(text="Hi.", turn_id=1),
                    AudioChunk(pcm=tone(0.1, 22050), sample_rate=22050, turn_id=1), TurnEnd(turn_id=1))
    kinds = {e["type"] for e in out}
    assert {"response.audio.delta", "response.audio_transcript.delta", "conversation.item.created"} <= kinds
    assert not {k for k in kinds if "output_audio" in k or k == "conversation.item.added"}


def test_a_server_side_tool_call_is_reported_as_function_call_events():
    out = _answered(manual(), ToolCall(id="c1", name="clock", arguments='{"tz": "UTC"}', turn_id=1),
                    Utterance(text="It is noon.", turn_id=1), TurnEnd(turn_id=1))
    done = next(e for e in out if e["type"] == "response.function_call_arguments.done")
    assert done["name"] == "clock" and done["arguments"] == '{"tz": "UTC"}' and done["call_id"] == "c1"
    output = out[-1]["response"]["output"]
    assert [i["type"] for i in output] == ["function_call", "message"]


def test_cancel_ends_the_response_cancelled_and_drops_later_audio():
    proto = manual()
    out = _answered(proto, Utterance(text="One.", turn_id=1))
    (cmd,) = send(proto, type="response.cancel", event_id="stop").commands
    assert isinstance(cmd, Cancel)
    assert proto.barge_in("client_cancelled", 1) == []  # under way: it ends at its TurnEnd
    out = proto.translate(AudioChunk(pcm=tone(0.1, 22050), sample_rate=22050, turn_id=1))
    assert out == []
    out = proto.translate(TurnEnd(turn_id=1, reason="interrupted"))
    r = out[-1]["response"]
    assert r["status"] == "cancelled" and r["status_details"]["reason"] == "client_cancelled"
    (err,) = errors(send(proto, type="response.cancel"))
    assert err["code"] == "response_cancel_not_active"


def test_cancel_before_the_agent_began_ends_the_response_at_once():
    proto = manual()
    send(proto, type="conversation.item.create",
         item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]})
    send(proto, type="response.create")
    send(proto, type="response.cancel")
    (done,) = proto.barge_in("client_cancelled", 7)
    assert done["type"] == "response.done" and done["response"]["status"] == "cancelled"
    # The cancelled turn's late events are not sent.
    assert proto.translate(UserTurn(parts=[], turn_id=7)) == []
    assert proto.translate(TurnEnd(turn_id=7, reason="interrupted")) == []


def test_truncate_cuts_the_named_reply_and_refuses_unknown_items_or_times_past_its_end():
    proto = manual()
    out = _answered(proto, Utterance(text="Hello there.", turn_id=1),
                    AudioChunk(pcm=tone(1.0, 22050), sample_rate=22050, turn_id=1, final=True),
                    TurnEnd(turn_id=1))
    item_id = out[-1]["response"]["output"][0]["id"]
    got = send(proto, type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=400)
    assert got.events[0]["type"] == "conversation.item.truncated"
    assert got.commands == [Truncate(turn_id=1, played_ms=400.0)]
    assert errors(send(proto, type="conversation.item.truncate", item_id="nope", audio_end_ms=1))[0]["code"] \
        == "item_truncate_invalid_item_id"
    assert errors(send(proto, type="conversation.item.truncate", item_id=item_id, audio_end_ms=5000))[0]["param"] \
        == "audio_end_ms"


def test_vad_speech_becomes_a_committed_user_item_then_a_response():
    proto = RealtimeProtocol(dialect="ga", live=LiveConfig())
    send(proto, type="input_audio_buffer.append", audio=b64(tone(1.0)))
    started = proto.translate({"type": "speech_started", "ignored": False})[0]
    stopped = proto.translate({"type": "speech_stopped", "ignored": False})[0]
    assert started["item_id"] == stopped["item_id"]
    assert stopped["audio_end_ms"] >= started["audio_start_ms"]
    from omni_agent.events import AudioPart
    turn = UserTurn(parts=[AudioPart(pcm=b"\0\0", sample_rate=16000, transcript="what time is it")], turn_id=1)
    kinds = [e["type"] for e in proto.translate(turn)]
    assert kinds == ["input_audio_buffer.committed", "conversation.item.added", "conversation.item.done",
                     "conversation.item.input_audio_transcription.completed", "response.created"]


# --------------------------------------------------------------------------- the SDK, on loopback

openai = pytest.importorskip("openai")
pytest.importorskip("websockets")


class SlowThinker(ScriptedThinker):
    def __init__(self, n: int = 40, delay: float = 0.05):
        super().__init__([[f"This is sentence {i}. " for i in range(n)]], delay=delay, accepts=["text"])


def make_server(thinker=None, talker=None, ears=None, vad=None, middleware=(), **cfg) -> AgentServer:
    cfg.setdefault("shutdown_grace", 0.5)
    agent = Agent(thinker=thinker or ScriptedThinker("Hello there. How are you?", accepts=["text"]),
                  talker=talker or RecordingTalker(), ears=ears, middleware=list(middleware))
    return AgentServer(agent, ServerConfig(**cfg), vad=vad or EnergyVAD())


def sdk(url: str, key: str = "none"):
    # The beta client always dials wss:// unless websocket_base_url says otherwise.
    return openai.AsyncOpenAI(api_key=key, base_url=url + "/v1",
                              websocket_base_url=url.replace("http://", "ws://") + "/v1")


async def until(conn, kind: str, timeout: float = 10.0, seen: list | None = None):
    deadline = monotonic() + timeout
    while True:
        ev = await asyncio.wait_for(conn.recv(), max(0.01, deadline - monotonic()))
        if seen is not None:
            seen.append(ev)
        if ev.type == kind:
            return ev


TEXT_ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}


async def test_the_sdk_realtime_client_gets_a_spoken_answer_with_its_transcript():
    server = make_server(token="s3cret")
    async with server.running() as url, sdk(url, "s3cret").realtime.connect(model="omni") as conn:
        created = await until(conn, "session.created")
        assert created.session.audio.output.format.rate == 24000
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await until(conn, "session.updated")
        await conn.conversation.item.create(item=TEXT_ITEM)
        await conn.response.create()
        seen: list = []
        done = await until(conn, "response.done", seen=seen)
    assert done.response.status == "completed"
    transcript = "".join(e.delta for e in seen if e.type == "response.output_audio_transcript.delta")
    assert transcript == "Hello there. How are you?"
    audio = b"".join(base64.b64decode(e.delta) for e in seen if e.type == "response.output_audio.delta")
    # RecordingTalker speaks 16 kHz tones of 0.01 s per character: here resampled to 24 kHz.
    assert abs(len(audio) / 2 / RATE - 0.01 * len("Hello there.How are you?")) < 0.01
    assert done.response.output[0].content[0].transcript == transcript


async def test_session_instructions_become_the_sessions_system_prompt():
    thinker = ScriptedThinker("Ahoy.", accepts=["text"])
    server = make_server(thinker=thinker)
    async with server.running() as url, sdk(url).realtime.connect(model="omni") as conn:
        await until(conn, "session.created")
        await conn.session.update(session={"type": "realtime", "instructions": "Talk like a pirate.",
                                           "audio": {"input": {"turn_detection": None}}})
        updated = await until(conn, "session.updated")
        assert updated.session.instructions == "Talk like a pirate."
        await conn.conversation.item.create(item=TEXT_ITEM)
        await conn.response.create()
        await until(conn, "response.done")
        system = thinker.requests[-1].messages[0]
        assert system.role == "system" and system.content == "Talk like a pirate."
        # "" gives the session back the agent's own system prompt (here: none).
        await conn.session.update(session={"type": "realtime", "instructions": ""})
        await until(conn, "session.updated")
        await conn.conversation.item.create(item=TEXT_ITEM)
        await conn.response.create()
        await until(conn, "response.done")
        assert all(m.role != "system" for m in thinker.requests[-1].messages)


async def test_the_sdk_beta_client_gets_the_beta_event_names():
    async with make_server().running() as url, sdk(url).beta.realtime.connect(model="omni") as conn:
        created = await until(conn, "session.created")
        assert created.session.input_audio_format == "pcm16"
        await conn.session.update(session={"turn_detection": None})
        await conn.conversation.item.create(item=TEXT_ITEM)
        await conn.response.create()
        seen: list = []
        await until(conn, "response.done", seen=seen)
    kinds = {e.type for e in seen}
    assert {"response.audio.delta", "response.audio_transcript.delta", "conversation.item.created"} <= kinds


async def test_a_wrong_token_gets_a_realtime_error_and_the_socket_closes():
    from websockets.exceptions import ConnectionClosed

    async with make_server(token="s3cret").running() as url, \
            sdk(url, "wrong").realtime.connect(model="omni") as conn:
        ev = await until(conn, "error")
        assert ev.error.code == "invalid_api_key"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(conn._connection.recv(), 5)


async def test_a_foreign_origin_is_refused_at_the_handshake():
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async with make_server().running() as url:
        with pytest.raises(InvalidStatus) as e:
            async with connect(url.replace("http", "ws") + "/v1/realtime?model=x",
                               origin="https://evil.example"):
                pass
        assert e.value.response.status_code == 403


async def test_response_cancel_mid_answer_stops_the_audio():
    thinker = SlowThinker()
    server = make_server(thinker=thinker, talker=RecordingTalker(realtime=1.0))
    async with server.running() as url, sdk(url).realtime.connect(model="omni") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await conn.conversation.item.create(item=TEXT_ITEM)
        await conn.response.create()
        await until(conn, "response.output_audio.delta")
        t0 = monotonic()
        await conn.response.cancel()
        done = await until(conn, "response.done")
        cancel_s = monotonic() - t0
        after: list = []
        with pytest.raises(asyncio.TimeoutError):
            await until(conn, "never", timeout=1.0, seen=after)
    assert done.response.status == "cancelled"
    assert done.response.status_details.reason == "client_cancelled"
    assert not [e for e in after if e.type == "response.output_audio.delta"]
    assert cancel_s < 1.0


async def test_truncate_over_the_socket_cuts_the_agents_memory_to_what_was_heard():
    server = make_server(talker=RecordingTalker(seconds_per_char=0.05))
    async with server.running() as url, sdk(url).realtime.connect(model="omni") as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await conn.conversation.item.create(item=TEXT_ITEM)
        await conn.response.create()
        done = await until(conn, "response.done")
        item_id = done.response.output[0].id
        # "Hello there." is 0.6 s of audio: the user heard only it.
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=600)
        await until(conn, "conversation.item.truncated")
        session = next(iter(server._conns)).live.session
        for _ in range(50):
            if session.history[-1].text != "Hello there. How are you?":
                break
            await asyncio.sleep(0.02)
        assert session.history[-1].text == "Hello there."


async def test_commit_with_server_vad_and_no_speech_is_an_error_and_the_session_goes_on():
    async with make_server().running() as url, sdk(url).realtime.connect(model="omni") as conn:
        await until(conn, "session.created")
        await conn.input_audio_buffer.commit(event_id="c1")
        ev = await until(conn, "error")
        assert ev.error.code == "input_audio_buffer_commit_empty" and ev.error.event_id == "c1"
        await conn.conversation.item.create(item=TEXT_ITEM)
        await until(conn, "conversation.item.done")


# --------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def piper_question_24k() -> bytes:
    """"What is the capital of France?" spoken by the embedded Piper voice, pcm16 24 kHz."""
    pytest.importorskip("piper")
    from omni_agent.audio import float_to_pcm16, pcm16_to_float, resample
    from omni_agent.talkers.piper import PiperTalker

    async def synth():
        t = PiperTalker()
        chunks = [c async for c in t.speak(Utterance(text="What is the capital of France?"))]
        return b"".join(c.pcm for c in chunks), chunks[0].sample_rate

    pcm, rate = asyncio.run(synth())
    return float_to_pcm16(resample(pcm16_to_float(pcm), rate, RATE))


@pytest.mark.slow
async def test_piper_speech_in_pii_rewritten_speech_out_through_the_sdk(piper_question_24k):
    from omni_agent.audio import pcm16_to_float, resample
    from omni_agent.ears import Ears
    from omni_agent.live import default_vad
    from omni_agent.middleware.pii import PIIRedactor
    from omni_agent.talkers.piper import PiperTalker

    thinker = ScriptedThinker("You can call the embassy at 555-0199 today.", accepts=["text"])
    ears = Ears()
    server = make_server(thinker=thinker, talker=PiperTalker(), ears=ears, vad=default_vad(),
                         middleware=[PIIRedactor()])
    audio = bytes(int(0.5 * RATE) * 2) + piper_question_24k + bytes(int(1.2 * RATE) * 2)
    step = int(0.04 * RATE) * 2  # 40 ms per append, as a microphone would
    seen: list = []
    async with server.running() as url, sdk(url).realtime.connect(model="omni") as conn:
        await until(conn, "session.created")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 500}}}})
        await until(conn, "session.updated")
        for i in range(0, len(audio), step):
            await conn.input_audio_buffer.append(audio=b64(audio[i:i + step]))
            await asyncio.sleep(0.005)
        stopped = await until(conn, "input_audio_buffer.speech_stopped", timeout=30, seen=seen)
        t_stop = monotonic()
        first = await until(conn, "response.output_audio.delta", timeout=60, seen=seen)
        first_audio_s = monotonic() - t_stop
        done = await until(conn, "response.done", timeout=60, seen=seen)
    print(f"\nspeech_stopped -> first audio delta: {first_audio_s * 1000:.0f} ms")
    heard_q = next(e for e in seen if e.type == "conversation.item.input_audio_transcription.completed")
    assert "capital" in heard_q.transcript.lower() and "france" in heard_q.transcript.lower()
    assert heard_q.item_id == stopped.item_id and first.response_id == done.response.id
    assert done.response.status == "completed"
    transcript = "".join(e.delta for e in seen if e.type == "response.output_audio_transcript.delta")
    assert "phone number" in transcript and "555" not in transcript and "0199" not in transcript
    pcm = b"".join(base64.b64decode(e.delta) for e in seen if e.type == "response.output_audio.delta")
    said = ears.transcribe_samples(resample(pcm16_to_float(pcm), RATE, 16000)).lower()
    print(f"question heard: {heard_q.transcript!r}\ntranscript: {transcript!r}\nreply audio heard: {said!r}")
    assert "phone number" in said, said
    assert not any(w in said for w in ("555", "0199", "five", "one nine nine", "oh one"))
