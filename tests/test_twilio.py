"""Phone calls (/v1/twilio, Twilio Media Streams): the μ-law codec against the reference
coder, the sans-IO protocol class on its own (ordering, formats, bad frames, marks and
clears), the signature, then a simulated Twilio client (tests/twilio_client.py) against a
real agent server on loopback — a call with a barge-in cut at the last echoed mark, bad
input answered by a close with a reason while the server stays up — and (slow) a
Piper-spoken question through the silero VAD and whisper ears, answered by Piper over
μ-law that whisper hears back."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import warnings

import numpy as np
import pytest

from omni_agent.agent import Agent
from omni_agent.events import AudioChunk, TurnEnd
from omni_agent.live import EnergyVAD, LiveConfig, heard_text
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.server.twilio import TwilioConfig, twilio_signature
from omni_agent.server.twilio_protocol import (
    FRAME_BYTES,
    Feed,
    Hangup,
    Heard,
    Started,
    TwilioLimits,
    TwilioProtocol,
    mark_name,
    ulaw_decode,
    ulaw_encode,
)
from omni_agent.testing import RecordingTalker, ScriptedThinker

pytest.importorskip("websockets")


def _helper():
    # The simulated Twilio client lives next to this file (pytest's importlib mode puts no
    # test folder on sys.path).
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("twilio_client", Path(__file__).with_name("twilio_client.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TwilioCall = _helper().TwilioCall

SID = "MZ00000000000000000000000000000001"
FMT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}


def tone_ulaw(seconds: float, hz: float = 300.0) -> bytes:
    t = np.arange(int(seconds * 8000)) / 8000
    return ulaw_encode((0.4 * np.sin(2 * np.pi * hz * t) * 32767).astype("<i2"))


def start_msg(fmt=FMT, sid=SID) -> str:
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": sid,
                       "start": {"streamSid": sid, "callSid": "CA1", "accountSid": "AC1",
                                 "tracks": ["inbound"], "mediaFormat": fmt,
                                 "customParameters": {"caller": "test"}}})


def media_msg(payload: str, track: str = "inbound") -> str:
    return json.dumps({"event": "media", "streamSid": SID,
                       "media": {"track": track, "chunk": "1", "timestamp": "0", "payload": payload}})


def started(limits: TwilioLimits | None = None) -> TwilioProtocol:
    proto = TwilioProtocol(limits)
    (cmd,) = proto.receive(start_msg(), 0.0).commands
    assert isinstance(cmd, Started)
    return proto


# --------------------------------------------------------------------------- μ-law


def test_ulaw_matches_the_reference_g711_coder_for_every_sample():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # CPython's g711 (gone in 3.13)
    every = np.arange(-32768, 32768, dtype="<i2").tobytes()
    assert ulaw_encode(every) == audioop.lin2ulaw(every, 2)
    assert ulaw_decode(bytes(range(256))) == audioop.ulaw2lin(bytes(range(256)), 2)


def test_ulaw_round_trip_keeps_a_tone_within_g711_quantization():
    x = (0.5 * np.sin(np.linspace(0, 60, 8000)) * 32767).astype("<i2")
    y = np.frombuffer(ulaw_decode(ulaw_encode(x)), dtype="<i2")
    err = np.abs(y.astype(int) - x.astype(int))
    assert err.max() <= 1024 and err.mean() < 200  # μ-law keeps ~4 bits of mantissa


# --------------------------------------------------------------------------- sans-IO protocol


def test_media_before_start_is_fatal_with_a_reason():
    got = TwilioProtocol().receive(media_msg("//8="), 0.0)
    assert got.error.fatal and got.error.code == "media_before_start"
    assert "start" in got.error.message


def test_a_second_start_is_fatal():
    got = started().receive(start_msg(), 0.1)
    assert got.error.fatal and got.error.code == "second_start"


@pytest.mark.parametrize("fmt", [{"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
                                 {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
                                 {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}])
def test_a_media_format_other_than_mulaw_8k_mono_is_fatal(fmt):
    got = TwilioProtocol().receive(start_msg(fmt), 0.0)
    assert got.error.fatal and got.error.code == "unsupported_media_format"
    assert "audio/x-mulaw at 8000 Hz" in got.error.message


def test_an_oversize_message_is_fatal_before_it_is_parsed():
    proto = started(TwilioLimits(max_message_bytes=4096))
    got = proto.receive(media_msg("A" * 8000), 0.1)
    assert got.error.fatal and got.error.code == "message_too_large"


def test_a_payload_that_is_not_base64_is_ignored_and_the_stream_goes_on():
    proto = started()
    got = proto.receive(media_msg("not base64!"), 0.1)
    assert not got.error.fatal and got.error.code == "invalid_payload" and not got.commands
    (feed,) = proto.receive(media_msg(base64.b64encode(tone_ulaw(0.02)).decode()), 0.1).commands
    assert isinstance(feed, Feed) and len(feed.pcm) == 2 * FRAME_BYTES  # 8 kHz int16


def test_an_over_long_payload_an_unknown_event_and_the_outbound_track_are_ignored():
    proto = started(TwilioLimits(max_payload_bytes=320))
    codes = [proto.receive(m, 0.1).error.code for m in (
        media_msg(base64.b64encode(bytes(400)).decode()),
        json.dumps({"event": "frobnicate"}),
        media_msg("//8=", track="outbound"),
        "{not json")]
    assert codes == ["payload_too_large", "unknown_event", "wrong_track", "invalid_json"]
    assert proto.errors == 4


def test_too_many_recoverable_errors_end_the_call():
    proto = started(TwilioLimits(max_errors=3))
    last = [proto.receive(media_msg("!!"), 0.1).error for _ in range(3)][-1]
    assert last.fatal and last.code == "too_many_errors"


def test_audio_far_faster_than_real_time_is_fatal():
    proto = started(TwilioLimits(max_input_lead_seconds=1.0))
    frame = media_msg(base64.b64encode(tone_ulaw(0.5)).decode())
    assert proto.receive(frame, 0.0).error is None
    assert proto.receive(frame, 0.0).error is None  # 1.0 s ahead: still allowed
    assert proto.receive(frame, 0.0).error.code == "audio_too_fast"


def test_stop_hangs_up_and_another_streams_sid_is_fatal():
    proto = started()
    wrong = json.dumps({"event": "mark", "streamSid": "MZother", "mark": {"name": "t1:0"}})
    assert proto.receive(wrong, 0.1).error.code == "wrong_stream"
    assert isinstance(proto.receive(json.dumps({"event": "stop", "streamSid": SID}), 0.2).commands[0], Hangup)


def _reply(proto: TwilioProtocol, seconds: float, turn_id: int = 1, rate: int = 22050):
    pcm = (0.3 * np.sin(np.arange(int(seconds * rate)) / 5) * 32767).astype("<i2").tobytes()
    return proto.translate(AudioChunk(pcm=pcm, sample_rate=rate, turn_id=turn_id, final=True)).wire


def test_reply_audio_goes_out_as_20_ms_mulaw_frames_with_marks_at_audio_positions():
    proto = started(TwilioLimits(mark_ms=200))
    wire = _reply(proto, 1.0) + proto.translate(TurnEnd(turn_id=1)).wire
    media = [w.msg for w in wire if w.msg["event"] == "media"]
    marks = [w.msg["mark"]["name"] for w in wire if w.msg["event"] == "mark"]
    assert all(m["streamSid"] == SID and len(base64.b64decode(m["media"]["payload"])) == FRAME_BYTES
               for m in media)
    assert len(media) == 50  # 1.0 s at 8 kHz, the resampler flushed at the turn's end
    assert marks[:4] == ["t1:200", "t1:400", "t1:600", "t1:800"] and marks[-1] == "t1:1000"
    assert [w.at_ms for w in wire if w.msg["event"] == "media"][:3] == [0.0, 20.0, 40.0]


def test_marks_echoed_report_playback_and_a_clear_cuts_at_the_last_echoed_one():
    proto = started(TwilioLimits(mark_ms=200))
    _reply(proto, 2.0)
    echo = lambda name: proto.receive(json.dumps({"event": "mark", "streamSid": SID,
                                                  "mark": {"name": name}}), 1.0)
    assert echo(mark_name(1, 400)).commands == [Heard(1, 400.0)]
    out = proto.translate({"type": "stop_playback", "turn_id": 1, "reason": "barge-in"})
    assert [w.msg for w in out.wire] == [{"event": "clear", "streamSid": SID}]
    assert out.report == Heard(1, 400.0, final=True)
    # Marks returned after the clear were never heard: they change nothing.
    assert echo(mark_name(1, 1000)).commands == [] and echo(mark_name(1, 1000)).error is None
    assert not _reply(proto, 0.5)  # nor is more audio of that turn sent
    assert echo("t7:20").error.code == "unknown_mark"


# --------------------------------------------------------------------------- the signature


def test_the_signature_is_twilios_documented_hmac_sha1():
    # Twilio's webhook-security example: URL + sorted POST parameters, token 12345.
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    signed = url + "".join(k + params[k] for k in sorted(params))
    assert twilio_signature("12345", signed) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


# --------------------------------------------------------------------------- loopback calls


class ScriptedEars:
    """Speech recognition double: scripted transcripts in order."""

    def __init__(self, *texts: str):
        self.texts = list(texts) or ["hello"]

    async def transcribe(self, part):
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


STORY = ("Once upon a time there was a phone. It rang every morning at seven. Nobody ever "
         "answered it at all. One day a cat picked it up. The cat said hello to the caller. "
         "And that was the end.")


def make_server(thinker=None, talker=None, ears=None, vad=None, **cfg) -> AgentServer:
    cfg.setdefault("shutdown_grace", 0.5)
    cfg.setdefault("live", LiveConfig(min_interrupt_ms=200, end_silence_ms=300))
    agent = Agent(thinker=thinker or ScriptedThinker([STORY, "Okay."], accepts=["text"]),
                  talker=talker or RecordingTalker(seconds_per_char=0.03),
                  ears=ears or ScriptedEars("tell me a story", "stop"))
    return AgentServer(agent, ServerConfig(**cfg), vad=vad or EnergyVAD())


def ws_url(url: str, path: str = "/v1/twilio") -> str:
    return url.replace("http://", "ws://") + path


def marks_of(call: TwilioCall, turn: int) -> list[int]:
    return [int(m["mark"]["name"].split(":")[1]) for m in call.events("mark")
            if m["mark"]["name"].startswith(f"t{turn}:")]


def history_of(server: AgentServer):
    return next(iter(server._conns)).live.session.history


async def test_a_call_is_answered_in_mulaw_and_a_barge_in_clears_and_cuts_memory_at_the_last_echoed_mark():
    talker = RecordingTalker(seconds_per_char=0.03)
    server = make_server(talker=talker)
    async with server.running() as url, TwilioCall(ws_url(url)) as call:
        call.say(tone_ulaw(0.5))
        await call.wait_for(lambda: len(call.played) >= 8000 * 1.5, timeout=10)  # 1.5 s heard
        assert not call.clears
        call.say(tone_ulaw(0.5))  # the caller talks over the reply
        await call.wait_for(lambda: call.clears, timeout=5)
        t_clear = call.clears[0]
        # Marks the caller had echoed before the clear reached it: memory is cut at one of them.
        before = [int(n.split(":")[1]) for t, n in call.echoed if t < t_clear and n.startswith("t1:")]
        assert before and max(before) >= 1000
        sent_ms = max(marks_of(call, 1))
        assert sent_ms > max(before) + 500  # audio was sent ahead, yet not counted as heard
        await call.wait_for(lambda: any(m.role == "assistant" and m.text != STORY
                                        for m in history_of(server)), timeout=5)
        hist = history_of(server)
        await call.wait_for(lambda: marks_of(call, 2), timeout=10)  # the next turn is answered
    replies = [m.text for m in hist if m.role == "assistant"]
    remembered = replies[0]
    clauses = [(u.text, len(u.text) * 0.03) for u in talker.utterances if u.turn_id == 1]
    candidates = {heard_text(clauses, (ms + d) / 1000) for ms in before[-3:] for d in (-20, 0, 20)}
    assert remembered in candidates, (remembered, sorted(before)[-3:])
    assert STORY.startswith(remembered) and 0 < len(remembered) < len(STORY)
    # Every frame is 20 ms of μ-law for this stream.
    assert all(len(base64.b64decode(m["media"]["payload"])) == FRAME_BYTES and m["streamSid"] == call.stream_sid
               for m in call.events("media"))


async def test_reply_audio_runs_at_most_max_ahead_seconds_before_playback():
    server = make_server(twilio=TwilioConfig(limits=TwilioLimits(max_ahead_seconds=0.5)))
    async with server.running() as url, TwilioCall(ws_url(url)) as call:
        call.say(tone_ulaw(0.5))
        await call.wait_for(lambda: len(call.played) >= 8000 * 2.0, timeout=10)
        ahead = (len(call.reply_audio) - len(call.played)) / 8000
    assert ahead <= 0.5 + 0.3, f"{ahead:.2f} s of reply audio buffered at the caller"


@pytest.mark.parametrize("bad, code", [
    ("media_first", "media_before_start"),
    ("alaw", "unsupported_media_format"),
    ("oversize", "message_too_large"),
    ("second_start", "second_start"),
])
async def test_a_bad_stream_is_closed_with_1008_and_a_reason_and_the_next_call_works(bad, code, caplog):
    server = make_server()
    caplog.set_level(logging.WARNING, logger="omni_agent.server.twilio")
    async with server.running() as url:
        call = TwilioCall(ws_url(url), media_format={"encoding": "audio/x-alaw", "sampleRate": 8000,
                                                     "channels": 1} if bad == "alaw" else None)
        await call.open()
        if bad == "media_first":
            await call.send_json(call.media_message(tone_ulaw(0.02)))
        elif bad == "oversize":
            await call.send_json({"event": "connected", "pad": "x" * (100 * 1024)})
        else:
            await call.begin()
            if bad == "second_start":
                await call.send_json(json.loads(start_msg(sid=call.stream_sid)))
        await asyncio.wait_for(call.closed.wait(), 5)
        await call.close()
        assert call.close_code == 1008 and call.close_reason.startswith(code), call.close_reason
        assert any(code in r.getMessage() for r in caplog.records)
        async with TwilioCall(ws_url(url)) as good:  # the server is still up
            good.say(tone_ulaw(0.5))
            await good.wait_for(lambda: good.events("media"), timeout=10)


async def test_a_payload_that_is_not_base64_is_logged_and_the_call_goes_on(caplog):
    server = make_server()
    caplog.set_level(logging.WARNING, logger="omni_agent.server.twilio")
    async with server.running() as url, TwilioCall(ws_url(url)) as call:
        await call.send_json({"event": "media", "streamSid": call.stream_sid,
                              "media": {"track": "inbound", "payload": "%%% not base64 %%%"}})
        call.say(tone_ulaw(0.5))
        await call.wait_for(lambda: call.events("media"), timeout=10)
        assert not call.closed.is_set()
    assert any("invalid_payload" in r.getMessage() for r in caplog.records)


async def test_the_token_may_be_the_last_path_segment_and_a_wrong_one_is_refused():
    server = make_server(token="s3cret")
    async with server.running() as url:
        bad = TwilioCall(ws_url(url, "/v1/twilio/wrong"))
        await bad.open()
        await asyncio.wait_for(bad.closed.wait(), 5)
        await bad.close()
        assert bad.close_code == 1008 and bad.close_reason.startswith("unauthorized")
        async with TwilioCall(ws_url(url, "/v1/twilio/s3cret")) as call:
            call.say(tone_ulaw(0.5))
            await call.wait_for(lambda: call.events("media"), timeout=10)


async def test_with_an_auth_token_the_twilio_signature_of_the_public_url_is_required():
    public = "wss://agent.example.com"
    server = make_server(token="s3cret", twilio=TwilioConfig(auth_token="tw-auth", public_url=public))
    async with server.running() as url:
        unsigned = TwilioCall(ws_url(url, "/v1/twilio/s3cret"))
        await unsigned.open()
        await asyncio.wait_for(unsigned.closed.wait(), 5)
        await unsigned.close()
        assert unsigned.close_code == 1008 and unsigned.close_reason.startswith("bad_signature")
        sig = twilio_signature("tw-auth", public + "/v1/twilio/s3cret")
        async with TwilioCall(ws_url(url, "/v1/twilio/s3cret"), headers={"X-Twilio-Signature": sig}) as call:
            call.say(tone_ulaw(0.5))
            await call.wait_for(lambda: call.events("media"), timeout=10)


# --------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def piper_mulaw() -> dict[str, bytes]:
    """Two caller lines spoken by the embedded Piper voice, as μ-law 8 kHz."""
    pytest.importorskip("piper")
    from omni_agent.audio import float_to_pcm16, pcm16_to_float, resample
    from omni_agent.events import Utterance
    from omni_agent.talkers.piper import PiperTalker

    # Piper's noise off: the same audio every run. With it, whisper hears "capital of
    # friends" in about one run in twelve on 8 kHz audio (its 10 s window; 0 in 12 with 30 s).
    talker = PiperTalker(noise_scale=0.0, noise_w_scale=0.0)

    async def synth(text: str) -> bytes:
        chunks = [c async for c in talker.speak(Utterance(text=text))]
        pcm = b"".join(c.pcm for c in chunks)
        return ulaw_encode(float_to_pcm16(resample(pcm16_to_float(pcm), chunks[0].sample_rate, 8000)))

    return {"question": asyncio.run(synth("What is the capital of France?")),
            "more": asyncio.run(synth("Tell me more about the city, please.")),
            "stop": asyncio.run(synth("Okay, stop there, thank you."))}


@pytest.mark.slow
async def test_a_piper_spoken_phone_question_is_heard_answered_and_barged_into(piper_mulaw):
    from omni_agent.audio import pcm16_to_float, resample
    from omni_agent.ears import Ears
    from omni_agent.live import default_vad
    from omni_agent.talkers.piper import PiperTalker

    answer = "The capital of France is Paris."
    long = ("Paris sits on the river Seine in the north of France. It has been the capital for "
            "more than a thousand years. The city is known for its museums, its cafes and its "
            "bridges. Millions of visitors come every year to see the famous tower.")
    ears = Ears()
    server = make_server(thinker=ScriptedThinker([answer, long, "Sure."], accepts=["text"]),
                         talker=PiperTalker(), ears=ears, vad=default_vad(),
                         live=LiveConfig(end_silence_ms=500))
    async with server.running() as url, TwilioCall(ws_url(url)) as call:
        call.say(b"\xff" * 4000 + piper_mulaw["question"])
        await call.wait_for(lambda: any(m.role == "assistant" for m in history_of(server)), timeout=90)
        await call.wait_for(lambda: len(call.played) >= len(call.reply_audio) - 160, timeout=30)
        first_reply_bytes = bytes(call.reply_audio)
        hist = history_of(server)
        call.say(piper_mulaw["more"])
        await call.wait_for(lambda: len(call.played) >= len(first_reply_bytes) + 8000 * 3, timeout=90)
        call.say(piper_mulaw["stop"])  # over the long reply
        await call.wait_for(lambda: call.clears, timeout=10)
        t_clear = call.clears[0]
        before = [int(n.split(":")[1]) for t, n in call.echoed if t < t_clear and n.startswith("t2:")]
        await call.wait_for(lambda: any(m.role == "assistant" and long.startswith(m.text) and m.text != long
                                        for m in history_of(server)), timeout=15)
        hist = history_of(server)
        await call.hang_up()
    users = [m.text for m in hist if m.role == "user"]
    heard_q = users[0].lower()
    assert "capital" in heard_q and "france" in heard_q, users
    said = ears.transcribe_samples(resample(pcm16_to_float(ulaw_decode(first_reply_bytes)), 8000, 16000))
    print(f"\nquestion heard: {users[0]!r}\nreply over μ-law heard: {said!r}")
    assert "paris" in said.lower() and "capital" in said.lower(), said
    cut = [m.text for m in hist if m.role == "assistant"][1]
    print(f"long reply remembered (cut at mark {before[-1] if before else None} ms): {cut!r}")
    assert long.startswith(cut) and 0 < len(cut) < len(long) * 0.9
    # About as many words as the caller heard (Piper speaks ~2.5-3.5 words a second).
    secs = max(before) / 1000
    assert 1.5 * secs <= len(cut.split()) <= 4.5 * secs + 2, (secs, cut)
