"""Live sessions: VAD turn-taking, barge-in (with measured cancel latency), half duplex,
memory cut to what the user heard, limits. Fast tests use a loudness VAD and scripted
parts; the slow one runs the real silero VAD and whisper ears on Piper-made speech."""

from __future__ import annotations

import asyncio
from time import monotonic

import numpy as np
import pytest

from omni_agent.agent import Agent
from omni_agent.errors import ConfigError
from omni_agent.events import AudioChunk, TextDelta, Utterance
from omni_agent.live import EnergyVAD, LiveConfig, LiveSession, heard_text
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import tool

SR = 16000


def tone(seconds: float, amp: float = 0.3) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * SR) * 2)


class ScriptedEars:
    """Test double for speech recognition: returns scripted transcripts in order and keeps
    the audio it was given."""

    def __init__(self, *texts: str):
        self.texts = list(texts) or ["hello"]
        self.heard: list[bytes] = []

    async def transcribe(self, part):
        self.heard.append(part.pcm)
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


class Collector:
    """Reads a live session's messages in the background, like a client would."""

    def __init__(self, live: LiveSession):
        self.live = live
        self.items: list[tuple[float, object]] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        async for m in self.live.messages():
            self.items.append((monotonic(), m))

    def kinds(self) -> list[str]:
        return [m["type"] if isinstance(m, dict) else m.type for _, m in self.items]

    def of(self, kind: str) -> list:
        return [m for _, m in self.items if (m["type"] if isinstance(m, dict) else m.type) == kind]

    async def wait_for(self, kind: str, n: int = 1, timeout: float = 5.0):
        deadline = monotonic() + timeout
        while len(self.of(kind)) < n:
            if monotonic() > deadline:
                raise AssertionError(f"no {kind!r} message within {timeout} s; got {self.kinds()}")
            await asyncio.sleep(0.005)
        return self.of(kind)[n - 1]

    async def close(self):
        await self.live.__aexit__(None, None, None)  # ends the session's task group
        await self.task


async def speak(live: LiveSession, pcm: bytes, realtime: bool = True, chunk_ms: int = 20):
    """Feed audio in chunks, at the pace of a microphone when ``realtime``."""
    step = SR * chunk_ms // 1000 * 2
    for i in range(0, len(pcm), step):
        live.feed(pcm[i:i + step])
        if realtime:
            await asyncio.sleep(chunk_ms / 1000)
        else:
            await asyncio.sleep(0)


async def make_live(agent: Agent, **cfg) -> tuple[LiveSession, Collector]:
    """A running live session (entered: it owns its task group until ``out.close()``)."""
    live = await LiveSession(agent.session(), vad=EnergyVAD(), config=LiveConfig(**cfg)).__aenter__()
    return live, Collector(live)


# --------------------------------------------------------------------------- turn-taking


async def test_speech_then_silence_becomes_one_user_turn_with_its_audio():
    ears = ScriptedEars("what time is it")
    agent = Agent(thinker=ScriptedThinker("It is noon.", accepts=["text"]), talker=RecordingTalker(),
                  ears=ears)
    live, out = await make_live(agent, end_silence_ms=400)
    await speak(live, silence(0.3) + tone(0.8) + silence(0.6), realtime=False)
    end = await out.wait_for("turn_end")
    assert end.text == "It is noon."
    assert out.kinds()[:3] == ["speech_started", "speech_stopped", "user_turn"]
    assert out.of("user_turn")[0].text == "what time is it"
    # The turn's audio is the speech plus a little pre-roll, not the whole stream.
    seconds = len(ears.heard[0]) / 2 / SR
    assert 0.8 <= seconds <= 0.8 + 0.3 + 0.45
    assert out.of("audio_chunk"), "the reply was spoken"
    await out.close()


async def test_noise_the_ears_find_empty_starts_no_turn():
    thinker = ScriptedThinker("Should not be said.", accepts=["text"])
    agent = Agent(thinker=thinker, talker=RecordingTalker(), ears=ScriptedEars(""))
    live, out = await make_live(agent, end_silence_ms=300)
    await speak(live, tone(0.4) + silence(0.5), realtime=False)
    await out.wait_for("no_speech")
    await live.wait_idle()
    assert thinker.requests == []
    await out.close()


async def test_speech_shorter_than_min_speech_is_not_a_turn():
    agent = Agent(thinker=ScriptedThinker("x", accepts=["text"]), ears=ScriptedEars())
    live, out = await make_live(agent, min_speech_ms=200)
    await speak(live, tone(0.1) + silence(1.0), realtime=False)
    await asyncio.sleep(0.05)
    assert "speech_started" not in out.kinds()
    await out.close()


async def test_a_user_turn_past_max_turn_seconds_is_dropped_with_a_clear_error_and_the_session_goes_on():
    ears = ScriptedEars("hi")
    agent = Agent(thinker=ScriptedThinker("Hello.", accepts=["text"]), ears=ears)
    live, out = await make_live(agent, max_turn_seconds=1.0, end_silence_ms=300)
    await speak(live, tone(1.5) + silence(0.5), realtime=False)
    err = await out.wait_for("error")
    assert err["code"] == "audio_too_long" and "1 s" in err["message"]
    assert ears.heard == []
    await speak(live, tone(0.5) + silence(0.5), realtime=False)
    assert (await out.wait_for("turn_end")).text == "Hello."
    await out.close()


def test_live_config_refuses_more_than_40_minutes_and_bad_values():
    with pytest.raises(ConfigError, match="40 minutes"):
        LiveConfig(max_turn_seconds=2401).check()
    with pytest.raises(ConfigError, match="threshold"):
        LiveConfig(threshold=1.5).check()
    with pytest.raises(ConfigError, match="min_interrupt_ms"):
        LiveConfig(min_interrupt_ms=-5).check()


async def test_odd_length_pcm_is_refused_clearly():
    from omni_agent.errors import AudioInputError

    live = LiveSession(Agent(thinker=ScriptedThinker("x")).session(), vad=EnergyVAD())
    with pytest.raises(AudioInputError, match="16-bit"):
        live.feed(b"\x00\x01\x02")
    await live.aclose()


# --------------------------------------------------------------------------- barge-in


class TimedTalker(RecordingTalker):
    """A real-time Talker that notes when it was cancelled."""

    def __init__(self):
        super().__init__(realtime=1.0, seconds_per_char=0.06, chunk_ms=40)
        self.cancelled_at: float | None = None

    async def speak(self, utterance):
        try:
            async for c in super().speak(utterance):
                yield c
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled_at = monotonic()
            raise


class TimedThinker(ScriptedThinker):
    """A slow Thinker (one delta every 50 ms) that notes when its stream was cancelled."""

    def __init__(self, replies):
        super().__init__(replies, delay=0.05, accepts=["text"])
        self.cancelled_at: float | None = None

    async def stream(self, request):
        try:
            async for ev in super().stream(request):
                yield ev
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled_at = monotonic()
            raise


async def test_barge_in_cancels_thinker_and_talker_within_100_ms_of_detected_speech():
    words = [f"word{i} " for i in range(60)]
    thinker = TimedThinker([["Here is a long answer. "] + words])
    talker = TimedTalker()
    agent = Agent(thinker=thinker, talker=talker, ears=ScriptedEars("tell me a story", "stop"))
    live, out = await make_live(agent, min_interrupt_ms=200, end_silence_ms=300)
    await speak(live, tone(0.4) + silence(0.4))
    await out.wait_for("audio_chunk")
    assert live.agent_busy
    before = len(asyncio.all_tasks())
    await speak(live, tone(0.4))  # the user talks over the agent
    intr = await out.wait_for("interruption")
    detected = live.barge_in_times[0]
    assert intr["cancel_ms"] <= 100, f"cancel took {intr['cancel_ms']} ms"
    assert live.cancel_latencies[0] <= 0.1
    assert thinker.cancelled_at is not None and thinker.cancelled_at - detected <= 0.1
    assert talker.cancelled_at is not None and talker.cancelled_at - detected <= 0.1
    # Nothing of the cancelled turn is sent after the stop, and no task is left behind.
    stop_at = next(t for t, m in out.items if isinstance(m, dict) and m["type"] == "stop_playback")
    late = [m for t, m in out.items if t > stop_at and isinstance(m, (AudioChunk, TextDelta))
            and m.turn_id == 1]
    assert late == []
    assert len(asyncio.all_tasks()) <= before
    end1 = (await out.wait_for("turn_end")).reason
    assert end1 == "interrupted"
    await out.close()


async def test_barge_in_cancels_a_running_tool_within_100_ms():
    cancelled: list[float] = []

    @tool
    async def slow_lookup(query: str) -> str:
        """Look something up slowly.

        Args:
            query: What to look up.
        """
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(monotonic())
            raise
        return "found"

    thinker = ScriptedThinker([["Let me look that up. ",
                                {"tool_call": {"name": "slow_lookup", "arguments": {"query": "x"}}}],
                               "Done."], accepts=["text"])
    agent = Agent(thinker=thinker, talker=RecordingTalker(realtime=1.0), tools=[slow_lookup])
    live, out = await make_live(agent)
    live.submit_text("look it up")
    await out.wait_for("tool_call")
    await asyncio.sleep(0.1)
    await speak(live, tone(0.4))
    intr = await out.wait_for("interruption")
    assert intr["cancel_ms"] <= 100
    assert cancelled and cancelled[0] - live.barge_in_times[0] <= 0.1
    await out.close()


async def test_speech_shorter_than_min_interrupt_neither_interrupts_nor_becomes_a_turn():
    agent = Agent(thinker=TimedThinker([[f"w{i} " for i in range(40)]]), talker=TimedTalker(),
                  ears=ScriptedEars("cough"))
    live, out = await make_live(agent, min_interrupt_ms=400, min_speech_ms=100)
    live.submit_text("talk")
    await out.wait_for("audio_chunk")
    await speak(live, tone(0.2) + silence(0.7))  # a cough
    assert "interruption" not in out.kinds()
    assert live.agent_busy
    assert out.of("speech_stopped")[0]["ignored"] is True
    await out.close()
    assert len(out.of("user_turn")) == 1, "the cough did not become a turn"


async def test_with_barge_in_off_speech_during_the_reply_is_ignored():
    agent = Agent(thinker=ScriptedThinker(["One two three. Four five six."], accepts=["text"]),
                  talker=RecordingTalker(realtime=1.0, seconds_per_char=0.02), ears=ScriptedEars("hm"))
    live, out = await make_live(agent, barge_in=False, end_silence_ms=300)
    live.submit_text("count")
    await out.wait_for("audio_chunk")
    await speak(live, tone(0.4) + silence(0.4))
    end = await out.wait_for("turn_end")
    assert end.reason == "completed"
    assert "interruption" not in out.kinds()
    started = out.of("speech_started")
    assert started and started[0]["ignored"] is True
    await asyncio.sleep(0.2)
    assert len(out.of("user_turn")) == 1, "the ignored speech did not become a turn"
    await out.close()


async def test_barge_in_can_be_switched_on_for_a_running_session():
    agent = Agent(thinker=TimedThinker([[f"w{i} " for i in range(40)]]), talker=TimedTalker())
    live, out = await make_live(agent, barge_in=False)
    live.config = LiveConfig(barge_in=True)
    live.submit_text("talk")
    await out.wait_for("audio_chunk")
    await speak(live, tone(0.4))
    assert (await out.wait_for("interruption"))["cancel_ms"] <= 100
    await out.close()


# --------------------------------------------------------------------------- memory after barge-in


def test_heard_text_keeps_whole_clauses_and_cuts_the_playing_one_at_the_word_reached():
    clauses = [("One two three four.", 2.0), ("Five six seven eight.", 2.0)]
    assert heard_text(clauses, 0.0) == ""
    assert heard_text(clauses, 2.0) == "One two three four."
    assert heard_text(clauses, 3.0) == "One two three four. Five six"
    assert heard_text(clauses, 10.0) == "One two three four. Five six seven eight."


async def test_after_barge_in_memory_keeps_only_what_the_client_played():
    # The reply is synthesized at once (fast Talker) but the client plays it in real time:
    # the user interrupts 1.6 s into playback, so only that much was heard.
    thinker = ScriptedThinker(["One two three four five six. Seven eight nine ten eleven twelve.", "Sure."],
                              accepts=["text"])
    agent = Agent(thinker=thinker, talker=RecordingTalker(seconds_per_char=0.04))
    live, out = await make_live(agent)
    live.submit_text("count for me")
    end = await out.wait_for("turn_end")
    assert end.reason == "completed"
    assert live.agent_talking, "the client is still playing the reply"
    await speak(live, tone(0.4))
    stop = await out.wait_for("stop_playback")
    live.report_playback(stop["turn_id"], 1600, final=True)  # what the client really played
    revised = await out.wait_for("memory_revised")
    # Clause 1 is 28 chars = 1.12 s of tone; the 0.48 s more reach 2 of the 6 words of
    # clause 2 (35 chars = 1.4 s).
    assert revised["heard"] == "One two three four five six. Seven eight"
    live.submit_text("and then?")
    await out.wait_for("turn_end", 2)
    sent = [(m.role, m.text) for m in thinker.requests[1].messages]
    assert sent[-2] == ("assistant", "One two three four five six. Seven eight")
    await out.close()


async def test_barge_in_mid_synthesis_remembers_at_most_what_was_spoken_then_what_was_played():
    thinker = TimedThinker([["Alpha beta gamma. ", "Delta epsilon zeta. "] + [f"w{i} " for i in range(40)]])
    agent = Agent(thinker=thinker, talker=TimedTalker(), ears=ScriptedEars("go", "wait"))
    live, out = await make_live(agent)
    live.submit_text("go")
    await out.wait_for("audio_chunk", 3)
    await speak(live, tone(0.4))
    stop = await out.wait_for("stop_playback")
    live.report_playback(stop["turn_id"], 500, final=True)
    end = await out.wait_for("turn_end")
    assert end.reason == "interrupted"
    revised = await out.wait_for("memory_revised")
    assert revised["heard"] in ("Alpha", "Alpha beta")
    hist = live.session.history
    assert hist[-1].role == "assistant" and hist[-1].text == revised["heard"]
    await out.close()


async def test_closing_a_live_session_mid_turn_cancels_everything():
    thinker = TimedThinker([[f"w{i} " for i in range(100)]])
    talker = TimedTalker()
    agent = Agent(thinker=thinker, talker=talker)
    live, out = await make_live(agent)
    live.submit_text("go")
    await out.wait_for("audio_chunk")
    await out.close()
    assert thinker.cancelled_at is not None and talker.cancelled_at is not None
    assert not live.agent_busy


# --------------------------------------------------------------------------- real parts


@pytest.fixture(scope="module")
def piper_question() -> bytes:
    """"What is the capital of France?" spoken by the embedded Piper voice, 16 kHz PCM."""
    pytest.importorskip("piper")
    from omni_agent.audio import float_to_pcm16, pcm16_to_float, resample
    from omni_agent.talkers.piper import PiperTalker

    async def synth():
        t = PiperTalker()
        chunks = [c async for c in t.speak(Utterance(text="What is the capital of France?"))]
        return b"".join(c.pcm for c in chunks), chunks[0].sample_rate

    pcm, rate = asyncio.run(synth())
    return float_to_pcm16(resample(pcm16_to_float(pcm), rate, SR))


@pytest.mark.slow
async def test_real_vad_and_ears_turn_piper_speech_into_a_transcribed_turn(piper_question):
    from omni_agent.ears import Ears
    from omni_agent.live import default_vad

    agent = Agent(thinker=ScriptedThinker("Paris.", accepts=["text"]), talker=RecordingTalker(),
                  ears=Ears())
    live = await LiveSession(agent.session(), vad=default_vad(),
                             config=LiveConfig(end_silence_ms=500)).__aenter__()
    out = Collector(live)
    await speak(live, silence(0.5) + piper_question + silence(1.0), realtime=False)
    turn = await out.wait_for("user_turn", timeout=60)
    assert "capital" in turn.text.lower() and "france" in turn.text.lower()
    assert (await out.wait_for("turn_end", timeout=30)).text == "Paris."
    lat = await out.wait_for("latency")
    # Recognised at the pause while the end of turn was awaited: little or nothing is left
    # after it (asr_ms), and the transcript was final some time after the speech ended.
    assert lat["asr_ms"] >= 0 and lat["from_speech_end_ms"]["transcript_final"] > 0
    await out.close()


@pytest.mark.slow
async def test_real_vad_sessions_share_one_model_but_not_state(piper_question):
    from omni_agent.live import default_vad

    vad = default_vad()
    x = np.frombuffer(piper_question, dtype="<i2").astype(np.float32) / 32768
    frames = [x[i:i + 512] for i in range(0, len(x) - 512, 512)]
    solo = vad.new_stream()
    alone = [solo.speech_prob(f) for f in frames]
    a, b = vad.new_stream(), vad.new_stream()
    interleaved = []
    for f in frames:
        interleaved.append(a.speech_prob(f))
        b.speech_prob(np.zeros(512, np.float32))  # another session, in between
    assert max(alone) > 0.5, "the VAD hears the speech"
    assert np.allclose(alone, interleaved, atol=1e-5)
    assert a._session is b._session  # one loaded ONNX model
