"""Audio in and out: decoding any common format/rate/channels, WAV and PCM output."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from omni_agent import audio
from omni_agent.errors import AudioInputError, ConfigError
from omni_agent.events import AudioChunk, AudioPart


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def encoded(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x))
    return float(np.argmax(spec) * rate / len(x))


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", None),
                                         ("OGG", "VORBIS"), ("MP3", None)])
def test_common_formats_decode_to_mono_at_the_asked_rate(fmt, subtype):
    data = encoded(tone(1.0, 44100, channels=2), 44100, fmt, subtype)
    x, rate = audio.decode_audio(data, sample_rate=16000)
    assert rate == 16000 and x.ndim == 1 and x.dtype == np.float32
    assert abs(len(x) - 16000) < 1200  # mp3/ogg add a little padding
    assert abs(dominant_freq(x, 16000) - 440) < 5


def test_formats_libsndfile_cannot_read_fall_back_to_pyav(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "tone.m4a"
    x = tone(1.0, 48000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=48000)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert audio._decode_soundfile(path.read_bytes()) is None  # really the fallback path
    y = audio.load_audio(path, 16000)
    assert abs(len(y) - 16000) < 2000
    assert abs(dominant_freq(y, 16000) - 440) < 5


def test_any_channel_count_is_mixed_down():
    x = np.zeros((8000, 6), np.float32)
    x[:, 2] = tone(1.0, 8000)
    y, rate = audio.decode_audio(encoded(x, 8000, "WAV", "PCM_16"))
    assert rate == 8000 and y.ndim == 1
    assert np.max(np.abs(y)) == pytest.approx(0.5 / 6, rel=0.05)


def test_empty_bytes_are_refused_with_a_clear_error():
    with pytest.raises(AudioInputError, match="empty"):
        audio.decode_audio(b"")


def test_garbage_is_refused_with_a_clear_error():
    with pytest.raises(AudioInputError, match="could not be decoded"):
        audio.decode_audio(b"this is not audio at all" * 10)


def test_truncated_wav_is_refused():
    data = encoded(tone(1.0, 16000), 16000, "WAV", "PCM_16")
    with pytest.raises(AudioInputError):
        audio.decode_audio(data[:30])


def test_a_wav_with_no_samples_is_refused():
    data = encoded(np.zeros(0, np.float32), 16000, "WAV", "PCM_16")
    with pytest.raises(AudioInputError, match="no audio samples"):
        audio.decode_audio(data)


def test_too_long_audio_is_refused():
    data = encoded(tone(3.0, 8000), 8000, "WAV", "PCM_16")
    with pytest.raises(AudioInputError, match="at most 2 s"):
        audio.decode_audio(data, max_seconds=2)


def test_a_missing_file_is_an_audio_input_error(tmp_path):
    with pytest.raises(AudioInputError, match="not found"):
        audio.load_audio(tmp_path / "nope.wav")


def test_write_wav_round_trips(tmp_path):
    pcm = audio.float_to_pcm16(tone(0.5, 22050))
    path = audio.write_wav(tmp_path / "sub" / "out.wav", pcm, 22050)
    y, rate = sf.read(str(path), dtype="int16")
    assert rate == 22050
    assert y.tobytes() == pcm


def test_write_wav_takes_float_arrays():
    data = audio.wav_bytes(tone(0.25, 16000), 16000)
    y, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == 16000 and len(y) == 4000
    assert np.max(np.abs(y)) == pytest.approx(0.5, abs=0.01)


def test_streaming_wav_header_is_readable_without_a_length():
    pcm = audio.float_to_pcm16(tone(0.5, 24000))
    y, rate = audio.decode_audio(audio.wav_stream_header(24000) + pcm)
    assert rate == 24000 and len(y) == 12000


def test_join_chunks_resamples_chunks_at_another_rate():
    a = AudioChunk(pcm=audio.float_to_pcm16(tone(0.5, 16000)), sample_rate=16000)
    b = AudioChunk(pcm=audio.float_to_pcm16(tone(0.5, 8000)), sample_rate=8000)
    pcm, rate = audio.join_chunks([a, b])
    assert rate == 16000 and len(pcm) == 2 * 16000


def test_write_pcm_writes_raw_bytes():
    out = io.BytesIO()
    audio.write_pcm(b"\x01\x02\x03\x04", out)
    assert out.getvalue() == b"\x01\x02\x03\x04"


def test_audio_part_with_pcm_is_resampled():
    part = AudioPart(pcm=audio.float_to_pcm16(tone(1.0, 48000)), sample_rate=48000)
    x = audio.audio_part_samples(part, 16000)
    assert len(x) == 16000 and abs(dominant_freq(x, 16000) - 440) < 5


def test_audio_part_with_pcm_but_no_rate_is_refused():
    with pytest.raises(AudioInputError, match="sample_rate"):
        audio.audio_part_samples(AudioPart(pcm=b"\x00\x00" * 100))


def test_audio_part_from_file_decodes(tmp_path):
    p = tmp_path / "a.flac"
    sf.write(str(p), tone(0.5, 32000), 32000)
    x = audio.audio_part_samples(AudioPart.from_file(p), 16000)
    assert len(x) == 8000


def test_audio_part_without_content_is_refused():
    with pytest.raises(AudioInputError, match="neither"):
        audio.audio_part_samples(AudioPart())


def test_playback_without_any_player_says_what_to_install(monkeypatch):
    import builtins
    import shutil

    real_import = builtins.__import__

    def no_sounddevice(name, *a, **kw):
        if name == "sounddevice":
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_sounddevice)
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(ConfigError, match="no audio player"):
        audio.play(b"\x00\x00" * 100, 16000)
