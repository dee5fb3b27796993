"""Voice turns through the agent: Talker concurrent with the Thinker, ears for audio
input, the latency breakdown in the trace, and backpressure from a slow Talker."""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from typing import AsyncIterator

import numpy as np
import pytest

from omni_agent.agent import Agent
from omni_agent.audio import pcm16_to_float, resample, wav_bytes
from omni_agent.errors import AudioInputError
from omni_agent.events import AudioChunk, AudioPart, TextDelta, TurnEnd, UserTurn
from omni_agent.testing import RecordingTalker, ScriptedThinker


_PIPER = []


def spoken_wav(text: str) -> bytes:
    """Real speech (Piper: whisper understands it better than espeak-ng) as a 16 kHz WAV."""
    if not _PIPER:
        from omni_agent.talkers.piper import PiperTalker

        _PIPER.append(PiperTalker())
    talker = _PIPER[0]
    x = resample(pcm16_to_float(talker.synthesize(text)), talker.sample_rate, 16000)
    return wav_bytes(np.concatenate([np.zeros(8000, np.float32), x, np.zeros(8000, np.float32)]), 16000)


async def test_talker_starts_while_the_thinker_is_still_generating():
    deltas = ["Paris is the capital of France,"] + [" and more words"] * 20 + ["."]
    thinker = ScriptedThinker([deltas], delay=0.02)
    agent = Agent(thinker=thinker, talker=RecordingTalker())
    kinds = []
    async for ev in agent.session().run("Tell me about Paris"):
        kinds.append(type(ev).__name__)
    first_audio = kinds.index("AudioChunk")
    last_delta = len(kinds) - 1 - kinds[::-1].index("TextDelta")
    assert first_audio < last_delta  # audio came out before the Thinker finished


async def test_trace_breaks_down_time_to_first_audio():
    agent = Agent(thinker=ScriptedThinker([["Hello there,", " this is", " a test."]], delay=0.01),
                  talker=RecordingTalker())
    session = agent.session()
    await session.aask("hi")
    t = session.last_trace.timings
    for stage in ("thinker_first_token", "first_utterance", "talker_first_audio"):
        assert stage in t
    assert t["thinker_first_token"] <= t["first_utterance"] <= t["talker_first_audio"]


async def test_audio_turn_goes_through_the_ears_when_the_thinker_cannot_hear():
    from omni_agent.ears import Ears

    thinker = ScriptedThinker(["It is sunny."], accepts=["text"])
    agent = Agent(thinker=thinker, talker=RecordingTalker(), ears=Ears())
    session = agent.session()
    turn = UserTurn.of(None, AudioPart(data=spoken_wav("What is the weather today?")))
    result = await session.aask(turn)
    heard = thinker.requests[0].messages[-1].text.lower()
    assert "weather" in heard and "today" in heard
    assert "asr" in session.last_trace.timings
    assert result.spoken == "It is sunny."


async def test_audio_goes_to_a_thinker_that_hears_without_the_ears():
    thinker = ScriptedThinker(["I heard you."], accepts=["text", "audio"])

    class NoEars:
        async def transcribe(self, part):  # would be a bug to call
            raise AssertionError("ears used although the Thinker takes audio")

    agent = Agent(thinker=thinker, talker=RecordingTalker(), ears=NoEars())
    await agent.session().aask(UserTurn.of(None, AudioPart(data=b"RIFF")))
    parts = thinker.requests[0].messages[-1].content
    assert any(getattr(p, "kind", None) == "audio" for p in parts)


async def test_silent_audio_turn_is_refused_and_the_session_goes_on():
    from omni_agent.ears import Ears

    agent = Agent(thinker=ScriptedThinker(["Yes."], accepts=["text"]), talker=RecordingTalker(),
                  ears=Ears())
    session = agent.session()
    with pytest.raises(AudioInputError, match="no speech"):
        await session.aask(UserTurn.of(None, AudioPart(data=wav_bytes(np.zeros(16000, np.float32), 16000))))
    result = await session.aask("still there?")
    assert result.spoken == "Yes."


class EndlessThinker:
    """A fast Thinker that never stops talking (until the turn is cancelled)."""

    name = "endless"
    accepts = frozenset({"text"})

    def __init__(self) -> None:
        self.yielded = 0

    async def stream(self, request) -> AsyncIterator[TextDelta]:
        i = 0
        while True:
            for word in f"Sentence number {i} is here and it goes on".split():
                self.yielded += 1
                yield TextDelta(word + " ")
                if self.yielded % 50 == 0:
                    await asyncio.sleep(0)  # a fast model still yields to the loop
            self.yielded += 1
            yield TextDelta("now. ")
            i += 1

    async def aclose(self) -> None:
        return None


async def test_slow_talker_holds_back_a_fast_thinker_and_memory_stays_bounded():
    # The Talker takes 10x as long as the audio lasts; the Thinker could write thousands
    # of sentences in that time. Bounded queues must throttle it.
    thinker = EndlessThinker()
    talker = RecordingTalker(16000, seconds_per_char=0.0005, chunk_ms=10, realtime=10.0)
    agent = Agent(thinker=thinker, talker=talker, fallback=None, talker_buffer=4)
    session = agent.session()
    gc.collect()
    tracemalloc.start()
    snapshots = []

    async def consume():
        async for ev in session.run("talk forever"):
            if isinstance(ev, TurnEnd):
                return

    task = asyncio.create_task(consume())
    for _ in range(3):
        await asyncio.sleep(0.6)
        snapshots.append((thinker.yielded, len(talker.spoken), tracemalloc.get_traced_memory()[0]))
    session.interrupt()
    await task
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    words_per_sentence = 10
    for yielded, spoken, _mem in snapshots:
        # What the Thinker wrote is at most: spoken + being spoken + queued (4) + in the
        # segmenter and output queue — a handful of sentences, not thousands.
        assert yielded <= (spoken + 12) * words_per_sentence
    assert snapshots[-1][1] > snapshots[0][1]  # the Talker kept going
    # Memory does not grow while the Talker falls further behind.
    assert snapshots[-1][2] - snapshots[0][2] < 200_000
    assert peak < 5_000_000


async def test_agent_with_piper_speaks_real_audio():
    from omni_agent.talkers.piper import PiperTalker

    agent = Agent(thinker=ScriptedThinker([["Hello there,", " this is Piper. ", "It speaks."]]),
                  talker=PiperTalker())
    result = await agent.session().aask("hi")
    x = np.frombuffer(result.audio, dtype="<i2").astype(float)
    assert result.sample_rate == 22050 and len(x) / 22050 > 1.0
    assert np.sqrt((x ** 2).mean()) > 500
    assert result.spoken == "Hello there, this is Piper. It speaks."
    assert [s.status for s in result.trace.segments] == ["spoken"] * len(result.trace.segments)


async def test_barge_in_stops_a_speaking_piper_talker():
    from omni_agent.talkers.piper import PiperTalker

    long = " ".join(f"This is sentence number {i} of a long answer." for i in range(12))
    agent = Agent(thinker=ScriptedThinker([long]), talker=PiperTalker())
    session = agent.session()
    chunks = 0
    t0 = None
    async for ev in session.run("talk"):
        if isinstance(ev, AudioChunk):
            chunks += 1
            if chunks == 2:
                t0 = time.perf_counter()
                session.interrupt()
        if isinstance(ev, TurnEnd):
            assert ev.reason == "interrupted"
    assert time.perf_counter() - t0 < 1.0
    statuses = [s.status for s in session.last_trace.segments]
    assert "interrupted" in statuses and statuses.count("spoken") < len(statuses)


for _name in ("test_agent_with_piper_speaks_real_audio", "test_barge_in_stops_a_speaking_piper_talker",
              "test_audio_turn_goes_through_the_ears_when_the_thinker_cannot_hear",
              "test_silent_audio_turn_is_refused_and_the_session_goes_on"):
    globals()[_name] = pytest.mark.slow(globals()[_name])
