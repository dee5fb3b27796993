"""Encoding a Talker's PCM stream into the response formats of OpenAI's speech API.

A Talker yields int16 mono PCM at its own rate (Piper 22.05 kHz, espeak-ng 22.05 kHz).
:class:`SpeechEncoder` turns that stream, piece by piece, into the bytes of one of
OpenAI's ``response_format`` values, at OpenAI's 24 kHz::

    enc = SpeechEncoder("mp3", in_rate=22050)
    for chunk in talker_chunks:
        send(enc.feed(chunk.pcm))        # bytes ready now (may be empty)
    send(enc.finish())                   # the rest: encoder delay, container trailer

=========  ===================================  ==========================  ===========
format     container / codec (PyAV = FFmpeg)    media type                  streams
=========  ===================================  ==========================  ===========
``mp3``    MPEG audio, libmp3lame 64 kb/s       ``audio/mpeg``              yes
``opus``   Ogg, libopus 32 kb/s, 100 ms pages   ``audio/ogg``               yes
``aac``    ADTS, FFmpeg's aac 64 kb/s           ``audio/aac``               yes
``flac``   native FLAC, 16-bit                  ``audio/flac``              yes (*)
``wav``    RIFF/WAVE, 16-bit PCM                ``audio/wav``               yes (*)
``pcm``    none: raw int16 little-endian mono   ``audio/pcm``               yes
=========  ===================================  ==========================  ===========

(*) A streamed FLAC or WAV cannot know its length when its header leaves: WAV then
says 0xFFFFFFFF ("until the end", which FFmpeg, browsers and soundfile read), FLAC's
STREAMINFO says "total samples unknown" (valid FLAC). With ``complete=True`` the
encoder keeps everything until :meth:`SpeechEncoder.finish` and writes a file with true
sizes (WAV through soundfile; FLAC with its STREAMINFO rewritten by FFmpeg's muxer).

Resampling is soxr (streaming, so chunk edges leave no clicks). ``tempo`` other than 1
time-stretches without changing pitch with FFmpeg's ``atempo`` filter — the fallback for
a Talker that cannot change its own pace (:class:`~omni_agent.talker.SpeedControl`).

The work is CPU-bound and synchronous: callers on an event loop run :meth:`feed` and
:meth:`finish` in a worker thread (the Talker server does). One encoder serves one
stream, one call at a time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping

import numpy as np

from .audio import float_to_pcm16, pcm16_to_float, wav_bytes, wav_stream_header
from .errors import OmniAgentError

__all__ = ["AudioFormat", "RESPONSE_FORMATS", "OPENAI_SAMPLE_RATE", "SpeechEncoder",
           "UnknownFormatError", "tempo_steps"]

#: The rate of every format of OpenAI's speech API (its ``pcm`` is documented as 24 kHz).
OPENAI_SAMPLE_RATE = 24000


class UnknownFormatError(OmniAgentError, ValueError):
    """A response format this encoder does not make."""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One response format: its HTTP media type and how FFmpeg makes it.

    ``container``/``codec``/``sample_format`` are PyAV names (None for ``pcm`` and
    ``wav``, which need no codec); ``rates`` the sample rates the codec takes (empty: any).
    """

    name: str
    media_type: str
    container: str | None = None
    codec: str | None = None
    sample_format: str | None = None
    bit_rate: int | None = None
    rates: tuple[int, ...] = ()
    container_options: tuple[tuple[str, str], ...] = ()
    #: The header states the length (WAV, FLAC): a streamed answer cannot fill it in.
    sized_header: bool = False


RESPONSE_FORMATS: Mapping[str, AudioFormat] = {
    f.name: f for f in (
        AudioFormat("mp3", "audio/mpeg", "mp3", "libmp3lame", "fltp", 64_000,
                    (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)),
        # Ogg's default page is 1 s of audio; 100 ms pages let speech out as it is made.
        AudioFormat("opus", "audio/ogg", "ogg", "libopus", "flt", 32_000,
                    (8000, 12000, 16000, 24000, 48000),
                    container_options=(("page_duration", "100000"),)),
        AudioFormat("aac", "audio/aac", "adts", "aac", "fltp", 64_000,
                    (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000,
                     64000, 88200, 96000)),
        AudioFormat("flac", "audio/flac", "flac", "flac", "s16", sized_header=True),
        AudioFormat("wav", "audio/wav", sized_header=True),
        AudioFormat("pcm", "audio/pcm"),
    )
}


def tempo_steps(tempo: float) -> list[float]:
    """``tempo`` as a chain of factors FFmpeg's ``atempo`` accepts (each 0.5–100).

    >>> tempo_steps(0.25)
    [0.5, 0.5]
    """
    if not tempo > 0:
        raise ValueError(f"tempo must be > 0, not {tempo}")
    steps: list[float] = []
    while tempo < 0.5:
        steps.append(0.5)
        tempo /= 0.5
    while tempo > 100.0:
        steps.append(100.0)
        tempo /= 100.0
    if abs(tempo - 1.0) > 1e-9 or not steps:
        steps.append(tempo)
    return steps


class _Collect:
    """A write-only file for PyAV's muxer: what it writes is taken after each call.

    Having no ``seek`` tells FFmpeg the output is a stream, so no muxer goes back to
    patch a header it already sent."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _Tempo:
    """FFmpeg's ``atempo`` (WSOLA time-stretch, pitch kept) over float32 mono blocks."""

    def __init__(self, tempo: float, rate: int):
        import av

        self.rate = rate
        self.graph = av.filter.Graph()
        src = self.graph.add_abuffer(format="flt", sample_rate=rate, layout="mono",
                                     time_base=Fraction(1, rate))
        node = src
        for step in tempo_steps(tempo):
            nxt = self.graph.add("atempo", f"{step:.6f}")
            node.link_to(nxt)
            node = nxt
        sink = self.graph.add("abuffersink")
        node.link_to(sink)
        self.graph.configure()
        self._pts = 0

    def process(self, x: np.ndarray | None) -> np.ndarray:
        import av

        if x is None:
            self.graph.push(None)
        elif x.size:
            frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self.rate
            frame.time_base = Fraction(1, self.rate)
            frame.pts = self._pts
            self._pts += x.size
            self.graph.push(frame)
        else:
            return np.zeros(0, np.float32)
        out: list[np.ndarray] = []
        while True:
            try:
                pulled = self.graph.pull()
            except (BlockingIOError, EOFError, av.error.EOFError):
                break
            out.append(pulled.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class SpeechEncoder:
    """int16 mono PCM at ``in_rate`` in, the bytes of ``fmt`` (a key of
    :data:`RESPONSE_FORMATS`) at ``out_rate`` out.

    ``out_rate`` None keeps ``in_rate`` (moved to the nearest rate the codec takes,
    for Opus). ``tempo`` > 1 speaks faster (time-stretch, pitch kept). ``complete``
    keeps everything until :meth:`finish`, so WAV and FLAC carry their true length.
    """

    def __init__(self, fmt: str, in_rate: int, *, out_rate: int | None = OPENAI_SAMPLE_RATE,
                 tempo: float = 1.0, complete: bool = False):
        spec = RESPONSE_FORMATS.get(fmt)
        if spec is None:
            raise UnknownFormatError(f"response_format {fmt!r} is not one of "
                                     f"{', '.join(RESPONSE_FORMATS)}")
        self.format = spec
        self.in_rate = int(in_rate)
        rate = int(out_rate or in_rate)
        if spec.rates and rate not in spec.rates:
            rate = min(spec.rates, key=lambda r: (abs(r - rate), -r))
        self.sample_rate = rate
        self.complete = complete
        self.tempo = float(tempo)
        self._tempo = _Tempo(self.tempo, self.in_rate) if abs(self.tempo - 1.0) > 1e-9 else None
        self._resampler: Any = None
        if rate != self.in_rate:
            import soxr

            self._resampler = soxr.ResampleStream(self.in_rate, rate, 1, dtype="float32")
        self._pcm: list[bytes] = []  # complete wav: the whole answer, written at the end
        self._started = False
        self._samples = 0
        self._container: Any = None
        self._stream: Any = None
        self._out: Any = None
        self._closed = False
        if spec.codec is not None:
            self._open()

    # ------------------------------------------------------------------ public

    @property
    def media_type(self) -> str:
        """The HTTP ``Content-Type`` of what this encoder writes."""
        return self.format.media_type

    def feed(self, pcm: bytes) -> bytes:
        """Encode one piece of int16 mono PCM; returns the bytes ready now (may be empty)."""
        if len(pcm) % 2:
            raise ValueError("int16 PCM has an even number of bytes")
        if self.format.codec is None and self._tempo is None and self._resampler is None:
            return self._pass(pcm)  # pcm or wav at the Talker's rate: its samples, unchanged
        return self._encode(self._condition(pcm16_to_float(pcm), last=False), last=False)

    def finish(self) -> bytes:
        """Flush the resampler, the time-stretch and the codec; returns the last bytes
        (with ``complete``: the whole file). The encoder is closed afterwards."""
        try:
            return self._encode(self._condition(None, last=True), last=True)
        finally:
            self.close()

    def close(self) -> None:
        """Free the codec and the muxer (after :meth:`finish`, or to abandon a stream)."""
        if self._closed:
            return
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - an abandoned stream may fail to write its trailer
                pass

    # ------------------------------------------------------------------ stages

    def _condition(self, x: np.ndarray | None, *, last: bool) -> np.ndarray:
        """Time-stretch, then resample; float32 mono out."""
        if self._tempo is not None:
            x = self._tempo.process(x)
        elif x is None:
            x = np.zeros(0, np.float32)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last)
        return np.asarray(x, dtype=np.float32).reshape(-1)

    def _encode(self, x: np.ndarray, *, last: bool) -> bytes:
        if self.format.codec is None:
            return self._pass(float_to_pcm16(x), last=last)
        return self._mux(x, last=last)

    def _pass(self, pcm: bytes, *, last: bool = False) -> bytes:
        """pcm: the bytes; wav: a streaming header first, or (complete) one whole file."""
        if self.format.name == "wav" and self.complete:
            self._pcm.append(pcm)
            return wav_bytes(b"".join(self._pcm), self.sample_rate) if last else b""
        head = b""
        if self.format.name == "wav" and not self._started:
            head = wav_stream_header(self.sample_rate)
        self._started = True
        return head + pcm

    def _open(self) -> None:
        import av

        spec = self.format
        self._out = io.BytesIO() if self.complete else _Collect()
        self._container = av.open(self._out, "w", format=spec.container,
                                  container_options=dict(spec.container_options))
        stream = self._container.add_stream(spec.codec, rate=self.sample_rate, layout="mono")
        stream.format = spec.sample_format
        if spec.bit_rate:
            stream.bit_rate = spec.bit_rate
        self._stream = stream

    def _mux(self, x: np.ndarray, *, last: bool) -> bytes:
        import av

        spec, stream, container = self.format, self._stream, self._container
        if x.size:
            assert spec.sample_format is not None  # every format with a codec names its samples
            if spec.sample_format == "s16":
                arr = np.frombuffer(float_to_pcm16(x), dtype="<i2").reshape(1, -1)
            else:
                arr = x.reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(arr, format=spec.sample_format, layout="mono")
            frame.sample_rate = self.sample_rate
            frame.time_base = Fraction(1, self.sample_rate)
            frame.pts = self._samples
            self._samples += x.size
            for packet in stream.encode(frame):
                container.mux(packet)
        if last:
            for packet in stream.encode(None):
                container.mux(packet)
            container.close()
            self._closed = True
        if isinstance(self._out, _Collect):
            return self._out.take()
        return self._out.getvalue() if last else b""
