"""Audio in and out: decode, resample, write WAV, raw PCM to stdout, local playback.

Inside the framework audio is int16 little-endian mono PCM (``AudioChunk.pcm``) or, for
models, float32 mono numpy arrays in [-1, 1]. This module converts between those and
files:

* decoding uses **soundfile** (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ...) and
  falls back to **PyAV** (FFmpeg: M4A/AAC, WebM, video containers) for anything else;
* resampling uses **soxr** (high quality, fast, no torch);
* WAV files are written with soundfile.

Bad input raises :class:`~omni_agent.errors.AudioInputError` with a message that says
what was wrong (not audio, empty, silent where speech was needed, too long: then the
:class:`AudioTooLongError` subclass, raised while decoding, before a small compressed
file has expanded to hours)::

    samples = load_audio("question.flac", sample_rate=16000)   # float32 mono at 16 kHz
    write_wav("reply.wav", pcm_bytes, 22050)
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Callable, Iterable

import numpy as np

from .errors import AudioInputError, ConfigError
from .events import AudioChunk, AudioPart

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "AudioTooLongError",
    "decode_audio",
    "load_audio",
    "audio_part_samples",
    "resample",
    "to_mono",
    "float_to_pcm16",
    "pcm16_to_float",
    "join_chunks",
    "write_wav",
    "wav_bytes",
    "wav_stream_header",
    "write_pcm",
    "play",
]

#: Longest input accepted by default (seconds): a voice turn, not an audiobook.
DEFAULT_MAX_SECONDS = 600.0


# --------------------------------------------------------------------------- conversion


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float samples in [-1, 1] -> int16 little-endian bytes (clipped)."""
    x = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    return (x * 32767.0).astype("<i2").tobytes()


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """int16 little-endian bytes -> float32 samples in [-1, 1]."""
    if len(pcm) % 2:
        pcm = pcm[:-1]  # a torn last sample carries no information
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array; 1-d input passes unchanged."""
    if samples.ndim == 1:
        return samples
    return samples.mean(axis=1, dtype=np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample float32 audio with soxr (returns the input when the rates match)."""
    if from_rate == to_rate or samples.size == 0:
        return np.asarray(samples, dtype=np.float32)
    import soxr

    return soxr.resample(np.asarray(samples, dtype=np.float32), from_rate, to_rate).astype(np.float32)


def join_chunks(chunks: Iterable[AudioChunk]) -> tuple[bytes, int]:
    """Concatenate the PCM of audio chunks; returns (pcm, sample_rate).

    Chunks at another rate than the first are resampled to it, so the result is always
    one continuous stream.
    """
    out: list[bytes] = []
    rate = 0
    for c in chunks:
        if not rate:
            rate = c.sample_rate
        if c.sample_rate != rate:
            out.append(float_to_pcm16(resample(pcm16_to_float(c.pcm), c.sample_rate, rate)))
        else:
            out.append(c.pcm)
    return b"".join(out), rate


# --------------------------------------------------------------------------- decoding


class AudioTooLongError(AudioInputError):
    """Audio longer than ``max_seconds``. Raised while decoding, as soon as the decoded
    length passes the cap, so a small compressed file that expands to hours (a
    decompression bomb) costs no more than the cap.

    ``max_seconds`` is the cap; ``seconds`` how long the audio is, as far as known: the
    length its header gives, else what was decoded before stopping (a lower bound).
    """

    def __init__(self, message: str, *, seconds: float, max_seconds: float):
        super().__init__(message)
        self.seconds = seconds
        self.max_seconds = max_seconds

    def __reduce__(self) -> Any:  # it crosses process boundaries (a decode worker)
        return _too_long, (str(self), self.seconds, self.max_seconds)


def _too_long(message: str, seconds: float, max_seconds: float) -> AudioTooLongError:
    return AudioTooLongError(message, seconds=seconds, max_seconds=max_seconds)


# Frames per read: small enough that one block over the cap costs little.
_BLOCK_FRAMES = 1 << 16


class _Sink:
    """Where decoded blocks go: each is mixed to mono, counted against the cap *before*
    it is kept, and resampled on the fly, so memory holds only the output."""

    def __init__(self, rate: int, sample_rate: int | None, max_seconds: float | None,
                 what: str, claimed_frames: int = 0):
        self.rate = rate
        self.out_rate = sample_rate or rate
        self.frames = 0  # decoded frames at the native rate
        self.max_seconds = max_seconds
        self.what = what
        # A header's length is only for the message (the cap counts decoded frames); huge
        # values mean "unknown" (libsndfile's SF_COUNT_MAX for streams).
        self.claimed_seconds = claimed_frames / rate if 0 < claimed_frames < 1 << 48 else 0.0
        self._parts: list[np.ndarray] = []
        self._stream = None
        if self.out_rate != rate:
            import soxr

            self._stream = soxr.ResampleStream(rate, self.out_rate, 1, dtype="float32")

    def add(self, block: np.ndarray) -> None:
        mono = to_mono(np.asarray(block, dtype=np.float32))
        self.frames += len(mono)
        if self.max_seconds is not None and self.frames > self.max_seconds * self.rate:
            seconds = max(self.frames / self.rate, self.claimed_seconds)
            long = (f"is {seconds:.1f} s long" if self.claimed_seconds > self.max_seconds
                    else f"is longer than {self.max_seconds:g} s")
            raise AudioTooLongError(f"{self.what} {long}; at most {self.max_seconds:.0f} s is "
                                    "accepted (cut it, or raise max_seconds)",
                                    seconds=seconds, max_seconds=self.max_seconds)
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono)
        self._parts.append(mono)

    def result(self) -> tuple[np.ndarray, int]:
        if self._stream is not None:
            self._parts.append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        samples = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        return samples.astype(np.float32, copy=False), self.out_rate


_SinkFactory = Callable[[int, int], _Sink]  # (native rate, frames the header claims) -> sink


def _uncapped(rate: int, claimed_frames: int) -> _Sink:
    return _Sink(rate, None, None, "audio", claimed_frames)


def _decode_soundfile(source: bytes | str | IO[bytes], make_sink: _SinkFactory = _uncapped,
                      ) -> _Sink | None:
    import soundfile as sf

    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with sf.SoundFile(source) as f:
            sink = make_sink(int(f.samplerate), int(f.frames))
            while True:
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if not len(block):
                    break
                sink.add(block)
    except AudioTooLongError:
        raise
    except Exception:  # noqa: BLE001 - any libsndfile failure: try the next decoder
        return None
    return sink


def _decode_av(source: bytes | str | IO[bytes], make_sink: _SinkFactory = _uncapped,
               ) -> _Sink | None:
    try:
        import av
    except ImportError:
        return None
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate or stream.rate
            if not rate:
                return None
            claimed = 0
            if stream.duration and stream.time_base:
                claimed = int(stream.duration * stream.time_base * rate)
            sink = make_sink(int(rate), claimed)
            # Let FFmpeg convert every frame to float mono at the native rate.
            resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    sink.add(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                sink.add(out.to_ndarray().reshape(-1))
    except AudioTooLongError:
        raise
    except Exception:  # noqa: BLE001 - not decodable by FFmpeg either
        return None
    return sink


def decode_audio(source: bytes | str | Path, *, sample_rate: int | None = None,
                 max_seconds: float | None = DEFAULT_MAX_SECONDS,
                 what: str = "audio") -> tuple[np.ndarray, int]:
    """Decode encoded audio (bytes or a file path) to float32 mono samples.

    Any sample rate and channel count is accepted; with ``sample_rate`` the result is
    resampled to it. Returns ``(samples, rate)``. Raises :class:`AudioInputError` when
    the data is not audio or holds no samples, and :class:`AudioTooLongError` (an
    AudioInputError) as soon as the decoded audio passes ``max_seconds`` (``None``: no
    cap; only for audio you trust, since a small file can decode to hours).
    Memory holds the output only (at ``sample_rate``), never the whole input at its own rate.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise AudioInputError(f"{what} file not found: {path}")
        what = f"{what} file {path}"
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(12)
        # Decoded from the path, not read into memory first: only what is decoded is held.
        encoded: bytes | str = str(path)
    else:
        encoded = bytes(source)
        size, head = len(encoded), encoded[:12]
    if not size:
        raise AudioInputError(f"{what} is empty (0 bytes): record or pick a file with speech in it")

    def make_sink(rate: int, claimed_frames: int) -> _Sink:
        return _Sink(rate, sample_rate, max_seconds, what, claimed_frames)

    sink = _decode_soundfile(encoded, make_sink) or _decode_av(encoded, make_sink)
    if sink is None:
        raise AudioInputError(
            f"{what} could not be decoded ({size} bytes, starts with {head!r}): "
            "use WAV, FLAC, OGG, MP3, M4A or another common audio format")
    if sink.frames == 0:
        raise AudioInputError(f"{what} holds no audio samples: it is empty")
    return sink.result()


def load_audio(source: bytes | str | Path, sample_rate: int = 16000, *,
               max_seconds: float | None = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """Decode audio to float32 mono at ``sample_rate`` (16 kHz: what ASR models take)."""
    return decode_audio(source, sample_rate=sample_rate, max_seconds=max_seconds)[0]


def audio_part_samples(part: AudioPart, sample_rate: int = 16000, *,
                       max_seconds: float | None = DEFAULT_MAX_SECONDS) -> np.ndarray:
    """The samples of an :class:`AudioPart` as float32 mono at ``sample_rate``.

    Takes decoded PCM (``part.pcm`` + ``part.sample_rate``), encoded bytes (``part.data``)
    or a local file (``part.url``).
    """
    if part.pcm is not None:
        if not part.sample_rate:
            raise AudioInputError("audio part has PCM but no sample_rate: set AudioPart.sample_rate")
        samples = pcm16_to_float(part.pcm)
        if samples.size == 0:
            raise AudioInputError("audio part holds no samples: it is empty")
        seconds = samples.size / part.sample_rate
        if max_seconds is not None and seconds > max_seconds:
            raise AudioTooLongError(f"audio is {seconds:.1f} s long; at most {max_seconds:.0f} s is "
                                    "accepted", seconds=seconds, max_seconds=max_seconds)
        return resample(samples, part.sample_rate, sample_rate)
    if part.data is not None:
        return load_audio(part.data, sample_rate, max_seconds=max_seconds)
    if part.url and not part.url.startswith(("http://", "https://", "data:")):
        return load_audio(part.url, sample_rate, max_seconds=max_seconds)
    raise AudioInputError("audio part has neither bytes, PCM nor a local file path: "
                          "use AudioPart.from_file(path) or AudioPart(data=...)")


# --------------------------------------------------------------------------- output


def _as_pcm16(pcm: bytes | np.ndarray) -> bytes:
    if isinstance(pcm, np.ndarray):
        if pcm.dtype == np.int16:
            return pcm.astype("<i2").tobytes()
        return float_to_pcm16(pcm)
    return bytes(pcm)


def write_wav(path: str | Path | IO[bytes], pcm: bytes | np.ndarray, sample_rate: int) -> Path | None:
    """Write mono audio as a 16-bit WAV file (or into a binary file object).

    ``pcm`` is int16 bytes (what :class:`AudioChunk` carries) or a numpy array (int16, or
    float in [-1, 1]). Returns the path written (None for a file object)::

        write_wav("reply.wav", result.audio, result.sample_rate)
    """
    import soundfile as sf

    samples = np.frombuffer(_as_pcm16(pcm), dtype="<i2")
    if isinstance(path, (str, Path)):
        p = Path(path)
        if p.parent and not p.parent.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(p), samples, int(sample_rate), subtype="PCM_16", format="WAV")
        return p
    sf.write(path, samples, int(sample_rate), subtype="PCM_16", format="WAV")
    return None


def wav_bytes(pcm: bytes | np.ndarray, sample_rate: int) -> bytes:
    """A complete in-memory WAV file of mono 16-bit audio."""
    buf = io.BytesIO()
    write_wav(buf, pcm, sample_rate)
    return buf.getvalue()


def wav_stream_header(sample_rate: int, channels: int = 1, bits: int = 16) -> bytes:
    """A WAV header for a stream whose length is not known yet.

    The RIFF and data sizes are set to 0xFFFFFFFF, which players and decoders (FFmpeg,
    browsers, soundfile) read as "until the end of the stream". Hand-written because no
    WAV library writes to a socket before knowing the length.
    """
    byte_rate = sample_rate * channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, byte_rate,
                                    channels * bits // 8, bits)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def write_pcm(pcm: bytes, out: IO[bytes] | None = None) -> None:
    """Write raw int16 PCM to a binary stream (stdout by default) and flush, for piping::

        omni-agent say "hello" --raw | aplay -r 22050 -f S16_LE -c 1
    """
    stream = out if out is not None else sys.stdout.buffer
    stream.write(pcm)
    stream.flush()


def play(pcm: bytes | np.ndarray, sample_rate: int) -> None:
    """Play mono audio on this machine's speakers and wait until it is done.

    Uses ``sounddevice`` when installed, else the first of ``aplay``, ``paplay``, ``pw-play``
    or ``ffplay`` found on PATH. Raises :class:`ConfigError` when none is available.
    """
    data = _as_pcm16(pcm)
    try:
        import sounddevice as sd  # optional: not a dependency
    except (ImportError, OSError):
        sd = None
    if sd is not None:
        sd.play(np.frombuffer(data, dtype="<i2"), int(sample_rate), blocking=True)
        return
    players = {
        "aplay": ["aplay", "-q", "-t", "raw", "-f", "S16_LE", "-c", "1", "-r", str(sample_rate), "-"],
        "paplay": ["paplay", "--raw", "--format=s16le", "--channels=1", f"--rate={sample_rate}"],
        "pw-play": ["pw-play", "--format=s16", "--channels=1", f"--rate={sample_rate}", "-"],
        "ffplay": ["ffplay", "-nodisp", "-autoexit", "-loglevel", "error", "-f", "s16le",
                   "-ch_layout", "mono", "-ar", str(sample_rate), "-i", "-"],
    }
    for exe, cmd in players.items():
        if shutil.which(exe):
            proc = subprocess.run(cmd, input=data, capture_output=True)
            if proc.returncode != 0:
                raise ConfigError(f"{exe} could not play audio: {proc.stderr.decode(errors='replace').strip()}")
            return
    raise ConfigError("no audio player found for local playback: install sounddevice "
                      "(pip install sounddevice) or alsa-utils/pulseaudio-utils/ffmpeg, "
                      "or write a WAV file with -o instead")
