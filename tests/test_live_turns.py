"""Live turn-taking with streaming ears, a semantic end of turn and preemptive drafts.

Fast tests: a loudness VAD over tones, a scripted segment recogniser and a scripted turn
detector, on the real live session, agent, bus and segmenter. The slow test at the end
runs it all for real: silero VAD, whisper, the embedded turn detector, Piper speech.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from omni_agent.agent import Agent
from omni_agent.bus import Middleware
from omni_agent.events import AudioChunk, Utterance
from omni_agent.live import EnergyVAD, LiveConfig, LiveSession
from omni_agent.testing import RecordingTalker, ScriptedThinker

from .test_server_live import SR, Collector, silence, speak


def said(seconds: float, freq: float) -> bytes:
    """A stretch of 'speech': a tone whose pitch stands for the words (see SegmentEars)."""
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


class SegmentEars:
    """Scripted whisper for tones: each voiced stretch of the audio it is given is "heard"
    as the words its pitch stands for (``words``: Hz -> text), however the streaming ears
    cut and join the audio. It has the streaming seam (``transcribe_samples``)."""

    def __init__(self, words: dict[float, str]):
        self.words = words
        self.calls = 0

    def transcribe_samples(self, samples, *, prompt=None) -> str:
        self.calls += 1
        x = np.asarray(samples, dtype=np.float32)
        loud = np.abs(x) > 0.05
        out, i, n = [], 0, len(x)
        while i < n:
            if not loud[i]:
                i += 1
                continue
            j = i
            while j < n and (loud[j] or loud[j:j + 400].any()):
                j += 1
            run = x[i:j]
            if len(run) > 1600:  # 0.1 s: a stretch of speech, not a click
                crossings = np.count_nonzero(np.diff(np.signbit(run)))
                freq = crossings / 2 / (len(run) / SR)
                out.append(self.words[min(self.words, key=lambda f: abs(f - freq))])
            i = j
        return " ".join(out)

    async def transcribe(self, part, *, prompt=None) -> str:  # the whole-turn path
        from omni_agent.audio import audio_part_samples

        return self.transcribe_samples(audio_part_samples(part))


class WordsDetector:
    """Scripted turn detector: a transcript ending in one of ``open_words`` is unfinished."""

    name = "words"

    def __init__(self, open_words=("for", "the", "of", "capital")):
        self.open_words = open_words
        self.judged: list[str] = []

    def end_probability(self, text: str, history=None) -> float:
        self.judged.append(text)
        last = text.rstrip(" .?!").split()[-1].lower() if text.strip() else ""
        return 0.05 if last in self.open_words else 0.95


def echo(request) -> str:
    """The Thinker's reply names what it was asked (so a draft's words can be told apart)."""
    return f"You asked about {request.messages[-1].content.rstrip('.?!')}."


async def start(agent: Agent, detector=None, **cfg) -> tuple[LiveSession, Collector]:
    live = LiveSession(agent.session(), vad=EnergyVAD(), turn_detector=detector or WordsDetector(),
                       config=LiveConfig(**cfg))
    await live.__aenter__()
    return live, Collector(live)


BOOK, PARTY, CAPITAL, SPAIN, TIME, STORY = 200.0, 300.0, 400.0, 500.0, 600.0, 700.0
WORDS = {BOOK: "I'd like to book a table for", PARTY: "two people tonight.",
         CAPITAL: "What is the capital", SPAIN: "of Spain?", TIME: "What time is it?",
         STORY: "Tell me a story."}


def voice_agent(**kw) -> tuple[Agent, RecordingTalker]:
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker(echo, accepts=["text"]), talker=talker,
                  ears=SegmentEars(WORDS), **kw)
    return agent, talker


async def test_a_mid_sentence_pause_does_not_end_the_turn():
    agent, talker = voice_agent()
    live, out = await start(agent)
    await speak(live, silence(0.2) + said(0.8, BOOK) + silence(0.7) + said(0.8, PARTY) + silence(0.8))
    turn = await out.wait_for("user_turn", timeout=10)
    assert turn.text == "I'd like to book a table for two people tonight."
    await out.wait_for("turn_end")
    await asyncio.sleep(0.2)
    assert len(out.of("user_turn")) == 1
    stopped = out.of("speech_stopped")[-1]
    assert stopped["end_of_turn"]["detector"] == "semantic"
    assert stopped["end_of_turn"]["wait_ms"] == 250  # a complete sentence: the short wait
    interim = [m["text"] for m in out.of("transcript") if not m["final"]]
    assert interim[0] == "I'd like to book a table for"  # shown while the user still spoke
    # Sent to the client: only the reply to the whole sentence (a draft on the first half
    # was thought, maybe synthesized, and thrown away).
    assert " ".join(u.text for u in out.of("utterance")) == (
        "You asked about I'd like to book a table for two people tonight.")
    assert live.drafts["discarded"] == 1 and live.drafts["kept"] == 1
    await out.close()


async def test_the_same_pause_ends_the_turn_when_only_silence_judges():
    agent, _ = voice_agent()
    live, out = await start(agent, semantic_turn=False, end_silence_ms=500)
    await speak(live, silence(0.2) + said(0.8, BOOK) + silence(0.7) + said(0.8, PARTY) + silence(0.8))
    await out.wait_for("user_turn", n=2, timeout=10)  # cut in two: what the detector prevents
    assert out.of("user_turn")[0].text == "I'd like to book a table for"
    assert out.of("speech_stopped")[0]["end_of_turn"]["detector"] == "silence"
    await out.close()


async def test_a_draft_whose_transcript_changed_is_cancelled_unspoken_and_forgotten():
    # "What is the capital." looks complete to this detector: a draft starts at the pause;
    # the user goes on ("of Spain") before the turn is confirmed.
    agent, talker = voice_agent()
    detector = WordsDetector(open_words=())
    live, out = await start(agent, detector, min_end_silence_ms=500)
    await speak(live, silence(0.2) + said(0.8, CAPITAL) + silence(0.35) + said(0.8, SPAIN) + silence(1.0))
    await out.wait_for("turn_end", timeout=10)
    await asyncio.sleep(0.3)
    assert live.drafts["started"] == 2 and live.drafts["discarded"] == 1 and live.drafts["kept"] == 1
    assert agent.thinker.requests[0].messages[-1].content == "What is the capital"  # it did think
    turns = out.of("user_turn")
    assert [t.text for t in turns] == ["What is the capital of Spain?"]
    spoken = " ".join(u.text for u in out.of("utterance"))  # in clauses
    assert spoken == "You asked about What is the capital of Spain."
    assert {c.turn_id for _, c in out.items if isinstance(c, AudioChunk)} == {turns[0].turn_id}
    history = agent.session(live.session.id).history
    assert [m.content for m in history] == ["What is the capital of Spain?",
                                            "You asked about What is the capital of Spain."]
    assert (await out.wait_for("latency"))["draft"] == "kept"
    await out.close()


async def test_a_kept_draft_is_sent_only_after_the_end_of_turn():
    agent, talker = voice_agent()
    live, out = await start(agent)
    await speak(live, silence(0.2) + said(0.8, TIME) + silence(1.0))
    await out.wait_for("turn_end", timeout=10)
    kinds = out.kinds()
    assert kinds.index("speech_stopped") < kinds.index("user_turn") < kinds.index("utterance")
    assert kinds.index("transcript") < kinds.index("user_turn")
    lat = await out.wait_for("latency")
    assert lat["draft"] == "kept" and live.drafts == {"started": 1, "kept": 1, "discarded": 0}
    (part,) = out.of("user_turn")[0].parts  # still a spoken turn: its audio and transcript
    assert part.kind == "audio" and part.transcript == "What time is it?" and part.pcm
    # Figures from the true end of speech: the wait (~250 ms) is in them, no more.
    assert lat["speech_end_ms"] == pytest.approx(1000, abs=80)
    first = lat["from_speech_end_ms"]["first_audio_sent"]
    assert 200 <= first < 2000
    trace = (await out.wait_for("trace"))["trace"]
    assert trace["end_of_turn"]["draft"] == "kept" and trace["end_of_turn"]["p_end"] == 0.95
    await out.close()


class PreparingDetector(WordsDetector):
    """A detector that reads the next judgement's context between turns."""

    def __init__(self):
        super().__init__()
        self.prepared: list[list[str]] = []

    def prepare(self, history=None) -> int:
        self.prepared.append([m.text for m in history or []])
        return len(history or [])


async def test_the_turn_detector_reads_the_conversation_between_turns():
    agent, _ = voice_agent()
    detector = PreparingDetector()
    live, out = await start(agent, detector)
    await speak(live, silence(0.2) + said(0.8, TIME) + silence(1.0))
    await out.wait_for("turn_end", timeout=10)
    for _ in range(100):
        if detector.prepared:
            break
        await asyncio.sleep(0.02)
    # The last exchange, as the next judgement will read it.
    assert detector.prepared == [["What time is it?", "You asked about What time is it."]]
    await out.close()


async def test_barge_in_cancels_a_kept_draft_within_100_ms():
    agent, talker = voice_agent()
    agent.thinker.delay = 0.05
    agent.thinker.replies = [[w + " " for w in ("Once upon a time there was a fox. " * 30).split()]]
    live, out = await start(agent)
    await speak(live, silence(0.2) + said(0.8, STORY) + silence(1.0))
    await out.wait_for("utterance", timeout=10)
    await speak(live, said(0.4, STORY))
    inter = await out.wait_for("interruption", timeout=5)
    assert inter["cancel_ms"] is not None and inter["cancel_ms"] < 100
    await out.wait_for("turn_end")
    assert live.drafts["kept"] == 1
    await out.close()


class UnsureDetector:
    """Half sure the turn is over: a wait between the short and the long one."""

    name = "unsure"

    def end_probability(self, text: str, history=None) -> float:
        return 0.5


async def test_a_client_that_stops_sending_audio_still_gets_its_turn_ended():
    # All the audio at once, then nothing: the judgement asks for more silence than was
    # sent, and the wall clock ends the turn when no more audio comes.
    agent, _ = voice_agent()
    live, out = await start(agent, UnsureDetector(), preemptive=False)
    await speak(live, silence(0.2) + said(0.8, TIME) + silence(0.3), realtime=False)
    turn = await out.wait_for("user_turn", timeout=5)
    assert turn.text == "What time is it?"
    eot = out.of("speech_stopped")[-1]["end_of_turn"]
    assert eot["detector"] == "semantic" and 250 < eot["wait_ms"] < 1200
    await out.close()


class SeenFirst(Middleware):
    """Records every clause it approves; the Talker must never get one it did not see."""

    name = "seen-first"

    def __init__(self, talker: RecordingTalker):
        self.talker = talker
        self.seen: list[str] = []
        self.spoken_before: list[int] = []

    def on_utterance(self, utt: Utterance, ctx):
        self.spoken_before.append(len(self.talker.spoken))
        self.seen.append(utt.text)
        return utt


async def test_every_clause_of_drafts_passes_the_middleware_before_the_talker():
    talker = RecordingTalker()
    guard = SeenFirst(talker)
    agent = Agent(thinker=ScriptedThinker(echo, accepts=["text"]), talker=talker,
                  ears=SegmentEars(WORDS), middleware=[guard])
    live, out = await start(agent, WordsDetector(open_words=()), min_end_silence_ms=500)
    await speak(live, silence(0.2) + said(0.8, CAPITAL) + silence(0.35) + said(0.8, SPAIN) + silence(1.0))
    await out.wait_for("turn_end", timeout=10)
    await asyncio.sleep(0.3)
    assert talker.spoken, "the Talker spoke"
    # Each clause the Talker took (the discarded draft's included) had been approved first.
    assert talker.spoken == [t for t in guard.seen if t in talker.spoken]
    for i, n in enumerate(guard.spoken_before):
        assert n <= i
    await out.close()


# --------------------------------------------------------------------------- the real parts


@pytest.fixture(scope="module")
def paused_booking() -> bytes:
    """'I'd like to book a table for' <0.8 s pause> 'two people tonight.' by Piper, 16 kHz."""
    pytest.importorskip("piper")
    from omni_agent.audio import float_to_pcm16, pcm16_to_float, resample
    from omni_agent.talkers.piper import PiperTalker

    async def synth(text: str) -> np.ndarray:
        # No generator noise: the same audio every run, so whisper hears the same words.
        voice = PiperTalker(noise_scale=0.0, noise_w_scale=0.0)
        chunks = [c async for c in voice.speak(Utterance(text=text))]
        pcm = b"".join(c.pcm for c in chunks)
        return resample(pcm16_to_float(pcm), chunks[0].sample_rate, 16000)

    async def both():
        return await synth("I'd like to book a table for"), await synth("two people tonight.")

    a, b = asyncio.run(both())
    gap = np.zeros(int(0.8 * 16000), np.float32)
    return float_to_pcm16(np.concatenate([a, gap, b]))


@pytest.mark.slow
async def test_real_ears_and_turn_detector_keep_a_paused_sentence_whole(paused_booking):
    from omni_agent.ears import Ears
    from omni_agent.live import default_vad

    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker(echo, accepts=["text"]), talker=talker, ears=Ears())
    live = LiveSession(agent.session(), vad=default_vad(), config=LiveConfig())
    await live.__aenter__()
    out = Collector(live)
    await speak(live, silence(0.3) + paused_booking + silence(1.5))
    turn = await out.wait_for("user_turn", timeout=30)
    words = turn.text.lower()
    assert "table for" in words and "two people" in words, turn.text
    await out.wait_for("turn_end", timeout=30)
    assert len(out.of("user_turn")) == 1
    # Recognised while the user spoke: the first part was out before the turn ended.
    interim = [m for m in out.of("transcript") if not m["final"]]
    assert interim and "table" in interim[0]["text"].lower()
    await out.close()
