"""Voice activity detection: frame scorers and the one endpointer that finds turns in them.

* :class:`VAD` / :class:`VADStream` — the seam: a detector shared by all sessions (the
  model is loaded once) and the small per-session state that scores one frame at a time.
* :class:`SileroVAD` — the silero VAD ONNX model (shipped in the ``silero-vad`` wheel) run
  directly on onnxruntime: no torch, no hub download. :func:`default_vad` shares it.
* :class:`EnergyVAD` — loudness only, no model: tests, synthetic audio, quiet rooms.
* :class:`Endpointer` — sans-IO: frame probabilities in, ``start`` / ``pause`` / ``resume``
  / ``end`` out, with the speech audio collected. Live sessions and :class:`StreamingVAD`
  both use it, so there is one definition of "the user started / paused / finished".
* :class:`StreamingVAD` — the endpointer over raw PCM at any rate with silero, for scripts::

      vad = StreamingVAD(sample_rate=48000)
      for ev in vad.feed(chunk):
          if ev.kind == "speech_start": session.interrupt()
          elif ev.kind == "speech_end": await session.aask(UserTurn.of(None, ev.part()))
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from .audio import float_to_pcm16, pcm16_to_float
from .errors import ConfigError, ModelNotFoundError
from .events import AudioPart

__all__ = [
    "VAD",
    "VADStream",
    "EnergyVAD",
    "SileroVAD",
    "Endpointer",
    "StreamingVAD",
    "VADEvent",
    "default_vad",
    "silero_model_path",
]

SAMPLE_RATE = 16000  # what silero (and whisper) take
_FRAME = 512  # silero's window at 16 kHz (32 ms)
_CONTEXT = 64  # samples of the previous window the model sees with each new one


# --------------------------------------------------------------------------- the seam


@runtime_checkable
class VADStream(Protocol):
    """The per-session state of a streaming VAD: scores one frame at a time.

    ``frame_samples`` float32 samples at the VAD's rate go in; the probability that the
    frame holds speech (0..1) comes out.
    """

    frame_samples: int

    def speech_prob(self, frame: np.ndarray) -> float: ...

    def reset(self) -> None: ...


@runtime_checkable
class VAD(Protocol):
    """A voice activity detector shared by all sessions (the model is loaded once);
    :meth:`new_stream` makes the small per-session state."""

    sample_rate: int

    def new_stream(self) -> VADStream: ...


# --------------------------------------------------------------------------- detectors


class _EnergyStream:
    __slots__ = ("frame_samples", "_on", "_off")

    def __init__(self, frame_samples: int, on: float, off: float):
        self.frame_samples = frame_samples
        self._on, self._off = on, off

    def speech_prob(self, frame: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float32)))) if frame.size else 0.0
        db = 20.0 * np.log10(rms + 1e-9)
        # A linear ramp between the two levels: loud frames score 1, quiet ones 0.
        return float(min(1.0, max(0.0, (db - self._off) / (self._on - self._off))))

    def reset(self) -> None:
        pass


class EnergyVAD:
    """A loudness-only VAD: frames louder than ``on_db`` dBFS count as speech.

    It has no model and hears any loud sound as speech, so it suits tests, synthetic
    audio and quiet rooms; real microphones want the silero VAD (:func:`default_vad`).
    """

    def __init__(self, sample_rate: int = 16000, frame_ms: int = 32, on_db: float = -35.0,
                 off_db: float = -50.0):
        if on_db <= off_db:
            raise ConfigError("EnergyVAD needs on_db > off_db (e.g. on_db=-35, off_db=-50)")
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * frame_ms // 1000
        self.on_db, self.off_db = on_db, off_db

    def new_stream(self) -> VADStream:
        return _EnergyStream(self.frame_samples, self.on_db, self.off_db)


def silero_model_path() -> Path:
    """The silero VAD ONNX file inside the ``silero-vad`` wheel (found without importing
    the package, whose ``__init__`` imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / "data" / "silero_vad.onnx"
        if p.is_file():
            return p
    raise ModelNotFoundError("silero VAD model not found: pip install --no-deps silero-vad "
                             "(its wheel carries the ONNX model; torch is not needed)")


class SileroVAD:
    """Silero VAD on onnxruntime: the probability of speech in each 32 ms frame at 16 kHz.

    Stateful (it remembers the previous frames); :meth:`reset` before a new stream. As a
    :class:`VAD`, :meth:`new_stream` gives each session its own state over the one model.
    """

    frame_samples = _FRAME
    sample_rate = SAMPLE_RATE

    def __init__(self, model: str | Path | None = None, *, threads: int = 1):
        import onnxruntime

        path = Path(model) if model is not None else silero_model_path()
        if not path.is_file():
            raise ModelNotFoundError(f"VAD model not found: {path}")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(str(path), sess_options=opts,
                                                     providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the previous frames (start of a new stream)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT, dtype=np.float32)

    def __call__(self, frame: np.ndarray) -> float:
        """Speech probability of one frame of 512 float32 samples at 16 kHz."""
        if frame.shape != (_FRAME,):
            raise ValueError(f"a VAD frame is {_FRAME} samples at 16 kHz, got {frame.shape}")
        x = np.concatenate([self._context, frame.astype(np.float32, copy=False)])[None, :]
        out, self._state = self._session.run(None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = x[0, -_CONTEXT:]
        return float(out[0, 0])

    def speech_prob(self, frame: np.ndarray) -> float:
        """The :class:`VADStream` name for :meth:`__call__`."""
        return self(frame)

    def new_stream(self) -> "SileroVAD":
        """A stream of its own: shares the loaded model, not the recurrent state."""
        stream = copy.copy(self)
        stream.reset()
        return stream

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Speech probability of every 32 ms frame of a 16 kHz clip (from a fresh state)."""
        self.reset()
        n = len(samples) // _FRAME
        if len(samples) % _FRAME:
            samples = np.concatenate([samples, np.zeros(_FRAME - len(samples) % _FRAME, np.float32)])
            n += 1
        return np.array([self(samples[i * _FRAME:(i + 1) * _FRAME]) for i in range(n)], dtype=np.float32)

    def speech_segments(self, samples: np.ndarray, *, threshold: float = 0.5,
                        min_speech_ms: int = 250, min_silence_ms: int = 300,
                        pad_ms: int = 100) -> list[tuple[int, int]]:
        """Where the speech is in a 16 kHz clip: ``[(start, end), ...]`` in samples.

        The same rules as the :class:`Endpointer`: a segment starts when a frame reaches
        ``threshold`` and ends after ``min_silence_ms`` below ``threshold - 0.15``;
        segments shorter than ``min_speech_ms`` are dropped; each is widened by
        ``pad_ms`` on both sides.
        """
        probs = self.probabilities(samples)
        ep = Endpointer(1000 * _FRAME / SAMPLE_RATE, threshold=threshold, min_speech_ms=0,
                        pre_roll_ms=0, end_silence_ms=min_silence_ms)
        segs: list[tuple[int, int]] = []
        start = 0
        for i, p in enumerate(probs):
            kind = ep.step(None, float(p))
            if kind == "start":
                start = i
            elif kind == "end":
                segs.append((start, ep.voiced_frames))
        if ep.speaking:
            segs.append((start, ep.voiced_frames))
        ms = 1000 * _FRAME / SAMPLE_RATE
        pad = int(pad_ms * SAMPLE_RATE / 1000)
        out: list[tuple[int, int]] = []
        for s, e in segs:
            if (e - s) * ms < min_speech_ms:
                continue
            a, b = max(0, s * _FRAME - pad), min(len(samples), e * _FRAME + pad)
            if out and a <= out[-1][1]:
                out[-1] = (out[-1][0], b)  # padding made them touch: one segment
            else:
                out.append((a, b))
        return out


def default_vad() -> VAD:
    """The silero VAD (ONNX model from the silero-vad wheel), loaded once and shared: each
    live session only adds its small recurrent state.

    Raises :class:`ConfigError` when the speech extra is not installed.
    """
    try:
        return SileroVAD()
    except ImportError as e:
        raise ConfigError("the live VAD needs the speech extra: pip install 'omni-agent[speech]' "
                          f"({e}); or pass vad=EnergyVAD() for a loudness-only VAD") from e


# --------------------------------------------------------------------------- the endpointer


EndpointEvent = Literal["start", "pause", "resume", "end"]


class Endpointer:
    """Finds the user's speech in a stream of frame probabilities — sans-IO, one frame at
    a time, no clock but the frames.

    :meth:`step` takes a frame (kept when not None) and its speech probability and returns
    what changed:

    * ``"start"`` — speech has lasted ``min_speech_ms``; the collected audio begins with
      up to ``pre_roll_ms`` from before it (word onsets);
    * ``"pause"`` — ``pause_ms`` of silence after speech (the live session transcribes what
      it has and asks whether the sentence is complete);
    * ``"resume"`` — speech again after a pause: the turn goes on;
    * ``"end"`` — ``end_silence_ms`` of silence: the turn is over. ``end_silence_ms`` may
      be changed at any time (a semantic turn detector shortens it for a complete sentence).

    Speech goes on while the probability stays above ``threshold - 0.15`` (hysteresis), so
    soft syllables do not count as silence. While not speaking, ``run_ms`` is the length
    of the current stretch of speech-like frames (barge-in looks at it).
    """

    def __init__(self, frame_ms: float, *, threshold: float = 0.5, min_speech_ms: float = 150,
                 pre_roll_ms: float = 300, pause_ms: float = 200, end_silence_ms: float = 600):
        self.frame_ms = float(frame_ms)
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.pre_roll_ms = pre_roll_ms
        self.pause_ms = pause_ms
        self.end_silence_ms = end_silence_ms
        self.speaking = False
        self.paused = False
        self.run_ms = 0.0  # the current stretch of speech
        self.silence_ms = 0.0  # silence since the last voiced frame (while speaking)
        self.frames = 0  # frames seen so far
        self.voiced_frames = 0  # frames up to the end of the last voiced frame
        self.speech: list[np.ndarray] = []  # frames of the current turn (pauses included)
        self._onset: list[np.ndarray] = []

    def step(self, frame: np.ndarray | None, prob: float) -> EndpointEvent | None:
        """One frame; returns the event it completes, if any."""
        self.frames += 1
        fm = self.frame_ms
        if not self.speaking:
            if frame is not None:
                self._onset.append(frame)
            if prob >= self.threshold:
                self.run_ms += fm
                self.voiced_frames = self.frames
                if self.run_ms >= self.min_speech_ms:
                    self.speaking, self.paused, self.silence_ms = True, False, 0.0
                    self.speech, self._onset = self._onset, []
                    return "start"
            else:
                self.run_ms = 0.0
                # The onset buffer doubles as pre-roll: keep only the last pre_roll_ms.
                keep = max(1, int(self.pre_roll_ms / fm)) if self.pre_roll_ms > 0 else 0
                if len(self._onset) > keep:
                    del self._onset[: len(self._onset) - keep]
            return None
        if frame is not None:
            self.speech.append(frame)
        if prob >= max(0.01, self.threshold - 0.15):
            self.run_ms += fm
            self.silence_ms = 0.0
            self.voiced_frames = self.frames
            if self.paused:
                self.paused = False
                return "resume"
            return None
        self.silence_ms += fm
        if self.silence_ms >= self.end_silence_ms:
            return self.end()
        if not self.paused and self.silence_ms >= self.pause_ms:
            self.paused = True
            return "pause"
        return None

    def end(self) -> EndpointEvent:
        """End the turn now (push-to-talk release, or a decision made elsewhere)."""
        self.speaking = self.paused = False
        self.run_ms = 0.0
        return "end"

    def take_speech(self, tail_ms: float | None = None) -> list[np.ndarray]:
        """The turn's frames, with at most ``tail_ms`` of the trailing silence (None: all
        of it); the endpointer forgets them."""
        frames, self.speech = self.speech, []
        if tail_ms is not None and frames:
            silent = int(self.silence_ms / self.frame_ms)
            cut = max(0, silent - int(tail_ms / self.frame_ms))
            if cut:
                frames = frames[: len(frames) - cut]
        return frames

    def drop(self) -> None:
        """Forget the audio collected so far (and the pre-roll)."""
        self.speech = []
        self._onset = []

    @property
    def speech_ms(self) -> float:
        """Length of the audio collected for the current turn."""
        return len(self.speech) * self.frame_ms


@dataclass(slots=True)
class VADEvent:
    """A change in the live audio: ``speech_start`` or ``speech_end``.

    ``at``: seconds since the stream started (of the first speech frame, or of the end of
    speech). On ``speech_end``, ``pcm`` holds the speech (int16 mono at 16 kHz, with a
    little padding) ready for the ears.
    """

    kind: Literal["speech_start", "speech_end"]
    at: float
    pcm: bytes = b""
    sample_rate: int = SAMPLE_RATE

    def part(self) -> AudioPart:
        """The speech of a ``speech_end`` event as an AudioPart (for ``Ears`` or a Thinker)."""
        return AudioPart(pcm=self.pcm, sample_rate=self.sample_rate, mime="audio/L16")


class StreamingVAD:
    """Voice activity detection over a live stream of PCM chunks: the :class:`Endpointer`
    with silero and resampling, for scripts that do not need a live session.

    ``feed(chunk)`` takes int16 bytes (or a float array) at ``sample_rate`` and returns the
    events it found: ``speech_start`` once speech has lasted ``min_speech_ms`` (dated to
    its first frame), ``speech_end`` after ``min_silence_ms`` of silence, carrying the
    speech audio. A turn longer than ``max_speech_s`` ends by force.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, *, threshold: float = 0.5,
                 min_speech_ms: int = 200, min_silence_ms: int = 600, pad_ms: int = 200,
                 max_speech_s: float = 30.0, vad: SileroVAD | None = None):
        self.sample_rate = int(sample_rate)
        self.threshold = threshold
        self.min_speech_ms, self.min_silence_ms, self.pad_ms = min_speech_ms, min_silence_ms, pad_ms
        self.max_speech_ms = max_speech_s * 1000
        self.vad = vad or SileroVAD()
        self._resampler: Any = None
        if self.sample_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32")
        self.reset()

    def reset(self) -> None:
        """Start over (a new stream)."""
        self.vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        fm = 1000 * _FRAME / SAMPLE_RATE
        self._ep = Endpointer(fm, threshold=self.threshold, min_speech_ms=self.min_speech_ms,
                              pre_roll_ms=self.pad_ms + self.min_speech_ms, pause_ms=1e9,
                              end_silence_ms=self.min_silence_ms)

    @property
    def speaking(self) -> bool:
        return self._ep.speaking

    def feed(self, chunk: bytes | np.ndarray) -> list[VADEvent]:
        """Add audio; return the events it completed (usually none)."""
        x = pcm16_to_float(chunk) if isinstance(chunk, (bytes, bytearray, memoryview)) else \
            np.asarray(chunk, dtype=np.float32)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        events: list[VADEvent] = []
        n = len(buf) // _FRAME
        for i in range(n):
            ev = self._frame(buf[i * _FRAME:(i + 1) * _FRAME])
            if ev is not None:
                events.append(ev)
        self._pending = buf[n * _FRAME:].copy()
        return events

    def _frame(self, frame: np.ndarray) -> VADEvent | None:
        ep = self._ep
        kind = ep.step(frame, self.vad(frame))
        sec = _FRAME / SAMPLE_RATE
        if kind == "start":
            return VADEvent("speech_start", round((ep.frames - ep.run_ms / ep.frame_ms) * sec, 3))
        if kind != "end" and not (ep.speaking and ep.speech_ms >= self.max_speech_ms):
            return None
        if kind != "end":
            ep.end()  # too long: ended by force
        frames = ep.take_speech(self.pad_ms)
        pcm = float_to_pcm16(np.concatenate(frames)) if frames else b""
        return VADEvent("speech_end", round(ep.voiced_frames * sec, 3), pcm)
