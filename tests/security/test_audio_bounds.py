"""A small compressed file that decodes to hours of audio is refused while it is decoded.

Minutes of silence compress to a few hundred kilobytes: decoding such a file whole
before looking at its length takes gigabytes and seconds of CPU per request. The length
cap is checked as the samples come out of the decoder, and what is kept is only the
output (at the asked sample rate), so memory is bounded by the cap, not by the file.
"""

from __future__ import annotations

import io
import time
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
import soundfile as sf

from omni_agent import audio
from omni_agent.errors import AudioInputError

MB = 1024 * 1024


def silent_flac(seconds: float, rate: int) -> bytes:
    """FLAC of silence, written a minute at a time (the test itself stays small)."""
    buf = io.BytesIO()
    minute = np.zeros(rate * 60, np.int16)
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16") as f:
        left = int(seconds * rate)
        while left > 0:
            f.write(minute[:left])
            left -= len(minute)
    return buf.getvalue()


def silent_opus(seconds: float, container: str) -> bytes:
    """Opus silence in WebM (only FFmpeg reads it: the PyAV path) or Ogg (libsndfile reads
    it): one 60 ms packet encoded once and muxed over and over, as a bomb would be made."""
    av = pytest.importorskip("av")
    rate, n = 48000, 2880
    buf = io.BytesIO()
    out = av.open(buf, "w", format=container)
    stream = out.add_stream("libopus", rate=rate, options={"frame_duration": "60"})
    stream.layout = "mono"
    frame = av.AudioFrame.from_ndarray(np.zeros((1, n), np.float32), format="flt", layout="mono")
    frame.sample_rate, frame.pts = rate, 0
    packets = list(stream.encode(frame))
    while not packets:
        frame.pts += n
        packets = list(stream.encode(frame))
    payload = bytes(packets[0])
    for i in range(int(seconds * rate / n)):
        p = av.Packet(payload)
        p.stream, p.time_base = stream, Fraction(1, rate)
        p.pts = p.dts = i * n
        p.duration = n
        out.mux(p)
    out.close()
    return buf.getvalue()


def decode_measured(data: bytes, **kw):
    """decode_audio's outcome, seconds taken and peak traced memory (numpy arrays count)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        outcome = audio.decode_audio(data, **kw)
    except AudioInputError as e:
        outcome = e
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, elapsed, peak


@pytest.fixture(scope="module")
def two_hours_of_flac() -> bytes:
    return silent_flac(2 * 3600, 16000)


def test_two_hours_of_flac_are_refused_while_decoding_in_bounded_memory(two_hours_of_flac):
    assert len(two_hours_of_flac) < 1 * MB  # the bomb: small on the wire
    outcome, elapsed, peak = decode_measured(two_hours_of_flac, sample_rate=16000, max_seconds=60)
    assert isinstance(outcome, audio.AudioTooLongError), outcome
    assert elapsed < 5.0
    assert peak < 200 * MB, f"decoding took {peak / MB:.0f} MB"


@pytest.mark.parametrize("container", ["webm", "ogg"])
def test_an_hour_of_opus_is_refused_while_decoding_in_bounded_memory(container):
    data = silent_opus(3600, container)
    assert len(data) < 2 * MB
    outcome, elapsed, peak = decode_measured(data, sample_rate=16000, max_seconds=60)
    assert isinstance(outcome, audio.AudioTooLongError), outcome
    assert elapsed < 5.0
    assert peak < 200 * MB, f"decoding took {peak / MB:.0f} MB"


def test_the_too_long_error_is_an_audio_input_error_that_names_the_cap(two_hours_of_flac):
    with pytest.raises(AudioInputError, match="at most 60 s") as info:
        audio.decode_audio(two_hours_of_flac, max_seconds=60, what="uploaded audio")
    assert isinstance(info.value, audio.AudioTooLongError)
    assert info.value.max_seconds == 60
    assert info.value.seconds > 60
    assert str(info.value).startswith("uploaded audio is")


def test_a_long_file_read_from_a_path_is_refused_too(two_hours_of_flac, tmp_path):
    path = tmp_path / "long.flac"
    path.write_bytes(two_hours_of_flac)
    with pytest.raises(audio.AudioTooLongError):
        audio.load_audio(path, 16000, max_seconds=60)


def test_memory_is_bounded_by_the_output_rate_not_by_the_file_rate():
    # Within the cap but at 384 kHz: 120 s are 46 million samples (184 MB as float32);
    # at 16 kHz they are 7.7 MB.
    data = silent_flac(120, 384000)
    outcome, elapsed, peak = decode_measured(data, sample_rate=16000, max_seconds=130)
    samples, rate = outcome
    assert rate == 16000 and abs(len(samples) - 120 * 16000) <= 16
    assert peak < 100 * MB, f"decoding took {peak / MB:.0f} MB"


def test_audio_just_within_the_cap_is_decoded_whole():
    data = silent_flac(59, 16000)
    samples, rate = audio.decode_audio(data, sample_rate=8000, max_seconds=60)
    assert rate == 8000 and abs(len(samples) - 59 * 8000) <= 8


def test_without_a_cap_nothing_is_refused_for_its_length():
    samples, rate = audio.decode_audio(silent_flac(700, 8000), max_seconds=None)
    assert rate == 8000 and len(samples) == 700 * 8000
