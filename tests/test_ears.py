"""The ears: silero VAD (ONNX, no torch) and faster-whisper tiny.en speech recognition."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from omni_agent.audio import float_to_pcm16, pcm16_to_float, resample, wav_bytes
from omni_agent.errors import AudioInputError, ConfigError, ModelNotFoundError
from omni_agent.events import AudioPart
from omni_agent.talkers.espeak import EspeakTalker
from omni_agent.testing import word_match

SR = 16000


def speech(text: str, lang: str = "en") -> np.ndarray:
    """Real synthesized speech (espeak-ng: fast) as float32 at 16 kHz."""
    talker = EspeakTalker(lang)
    return resample(pcm16_to_float(talker.synthesize(text)), talker.sample_rate, SR)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def noise(seconds: float, level: float = 0.003) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(int(seconds * SR)) * level).astype(np.float32)


@pytest.fixture(scope="module")
def vad():
    from omni_agent.ears import SileroVAD

    return SileroVAD()


@pytest.fixture(scope="module")
def ears():
    from omni_agent.ears import Ears

    return Ears()



def test_vad_finds_the_speech_between_silences(vad):
    voice = speech("Hello, this is a test of voice activity detection.")
    clip = np.concatenate([silence(1.0), voice, silence(1.5)])
    segs = vad.speech_segments(clip)
    assert len(segs) == 1
    start, end = segs[0]
    assert abs(start / SR - 1.0) < 0.25
    assert abs(end / SR - (1.0 + len(voice) / SR)) < 0.4


def test_vad_hears_no_speech_in_silence_or_faint_noise(vad):
    assert vad.speech_segments(silence(2.0)) == []
    assert vad.speech_segments(noise(2.0)) == []


def test_vad_model_comes_from_the_silero_wheel_without_torch():
    import subprocess
    import sys

    code = ("import sys; from omni_agent.ears import SileroVAD; SileroVAD(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_streaming_vad_reports_start_and_end_of_speech_at_any_rate(vad):
    from omni_agent.ears import StreamingVAD

    voice = speech("Turn the lights on in the kitchen, please.")
    clip = np.concatenate([silence(1.0), voice, silence(1.5)])
    clip48 = resample(clip, SR, 48000)
    pcm = float_to_pcm16(clip48)
    live = StreamingVAD(sample_rate=48000, vad=vad)
    events = []
    step = 2 * 960  # 20 ms chunks, as a browser or phone sends them
    for i in range(0, len(pcm), step):
        events += live.feed(pcm[i:i + step])
    assert [e.kind for e in events] == ["speech_start", "speech_end"]
    start, end = events
    assert abs(start.at - 1.0) < 0.25
    assert abs(end.at - (1.0 + len(voice) / SR)) < 0.4
    heard = len(end.pcm) / 2 / SR
    assert len(voice) / SR - 0.3 < heard < len(voice) / SR + 0.8
    assert not live.speaking


def test_streaming_vad_sees_two_utterances_separately(vad):
    from omni_agent.ears import StreamingVAD

    clip = np.concatenate([silence(0.5), speech("First request."), silence(1.2),
                           speech("Second request."), silence(1.2)])
    live = StreamingVAD(vad=vad, min_silence_ms=500)
    pcm = float_to_pcm16(clip)
    events = []
    for i in range(0, len(pcm), 1024):
        events += live.feed(pcm[i:i + 1024])
    assert [e.kind for e in events] == ["speech_start", "speech_end"] * 2


def test_streaming_vad_ends_an_overlong_turn(vad):
    from omni_agent.ears import StreamingVAD

    long_talk = np.concatenate([speech("Keep talking and talking without a pause at all.")] * 3)
    live = StreamingVAD(vad=vad, max_speech_s=2.0)
    events = live.feed(float_to_pcm16(long_talk))
    assert [e.kind for e in events][:2] == ["speech_start", "speech_end"]
    assert events[1].at < 2.6


def test_streaming_vad_ignores_silence(vad):
    from omni_agent.ears import StreamingVAD

    live = StreamingVAD(vad=vad)
    assert live.feed(float_to_pcm16(noise(3.0))) == []


@pytest.mark.slow
def test_ears_transcribe_piper_speech(ears):
    from omni_agent.talkers.piper import PiperTalker

    piper = PiperTalker()
    said = "The quick brown fox jumps over the lazy dog."
    clip = resample(pcm16_to_float(piper.synthesize(said)), piper.sample_rate, SR)
    text = ears.transcribe_samples(np.concatenate([silence(1.0), clip, silence(1.0)]))
    assert word_match(text, said) >= 0.8, text  # one misheard word at most
    assert ears.last_timings["speech_seconds"] < len(clip) / SR + 0.5  # silence was trimmed


@pytest.mark.slow
async def test_ears_transcribe_an_audio_part_at_any_rate_in_a_worker_thread(ears):
    from omni_agent.talkers.piper import PiperTalker

    piper = PiperTalker()
    said = "What is the weather like in Paris today?"
    clip = resample(pcm16_to_float(piper.synthesize(said)), piper.sample_rate, 44100)
    part = AudioPart(data=wav_bytes(np.concatenate([np.zeros(44100, np.float32), clip]), 44100))
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker():
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            gaps.append(time.perf_counter() - last)
            last = time.perf_counter()

    task = asyncio.create_task(ticker())
    text = await ears.transcribe(part)
    done.set()
    await task
    assert word_match(text, said) >= 0.8, text  # one misheard word at most
    assert max(gaps) < 0.2  # the loop kept running during recognition


@pytest.mark.slow
async def test_ears_refuse_audio_with_no_speech(ears):
    with pytest.raises(AudioInputError, match="no speech was heard"):
        await ears.transcribe(AudioPart(data=wav_bytes(silence(2.0), SR)))


@pytest.mark.slow
async def test_ears_refuse_broken_audio(ears):
    with pytest.raises(AudioInputError, match="could not be decoded"):
        await ears.transcribe(AudioPart(data=b"RIFF....WAVEnot really"))
    with pytest.raises(AudioInputError, match="empty"):
        await ears.transcribe(AudioPart(data=b""))


def test_english_only_model_refuses_another_language():
    from omni_agent.ears import Ears

    with pytest.raises(ConfigError, match="only knows English"):
        Ears(language="fr")


def test_ears_missing_model_directory_says_what_to_give(tmp_path):
    from omni_agent.ears import Ears

    with pytest.raises(ModelNotFoundError, match="ASR model not found"):
        Ears(tmp_path / "nothing-here")


def _piper_clip(said: str) -> np.ndarray:
    from omni_agent.talkers.piper import PiperTalker

    piper = PiperTalker()
    clip = resample(pcm16_to_float(piper.synthesize(said)), piper.sample_rate, SR)
    return np.concatenate([silence(0.3), clip, silence(0.6)])


def test_a_short_clip_is_heard_through_a_short_encoder_window(ears):
    said = "What time is it in Tokyo right now?"
    text = ears.transcribe_samples(_piper_clip(said))
    assert word_match(text, said) >= 0.85, text
    assert ears.last_timings["window_s"] == 10.0  # not whisper's padded 30 s

    from omni_agent.ears import Ears

    full = Ears(window_s=None)
    assert word_match(full.transcribe_samples(_piper_clip(said)), said) >= 0.85
    assert full.last_timings["window_s"] == 30.0


def test_the_guard_redoes_a_short_window_that_repeats_itself():
    # Whisper tiny.en repeats these sentences when its window is barely longer than the
    # speech ("Open the garage door. Open the garage ..."): the guard must catch each
    # loop and redo it with the full window, so every transcript stays right.
    from omni_agent.ears import Ears

    ears = Ears(window_s=2.0)
    said = ["How many minutes are there in a day?", "Open the garage door.",
            "How do I make a cup of green tea?", "What should I cook for dinner tonight?"]
    for s in said:
        text = ears.transcribe_samples(_piper_clip(s))
        assert word_match(text, s) >= 0.8, text
        assert len(text.split()) <= len(s.split()) + 2, text  # no repetition got through
    assert ears.fallbacks >= 1


def test_repetition_is_recognised():
    from omni_agent.ears import _repeats

    assert _repeats("Open the garage door. Open the garage")
    assert _repeats("what is 12 times 12 times 12 times 15")
    assert not _repeats("Open the garage door.")
    assert not _repeats("I think that I will go, and then I will think again.")


def test_a_bad_window_is_refused():
    from omni_agent.ears import Ears

    with pytest.raises(ConfigError, match="window_s"):
        Ears(window_s=0.5)
