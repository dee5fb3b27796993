"""espeak-ng: a fast multilingual Talker (131 voices; robotic but instant, offline).

The library and its voice data come inside the ``espeakng-loader`` wheel, so nothing
needs apt. This module holds a small ctypes binding to the part of the espeak-ng C API
a Talker needs (initialize, pick a voice, set rate/pitch, synthesize with a callback).

The voice is picked by language: ``EspeakTalker(lang="fr")``, or per clause through
``Utterance.lang``. The ten output languages of Qwen3-Omni map to these voices (any other
espeak-ng language code or voice name works too)::

    zh -> cmn (Mandarin)   en -> en-us   fr -> fr-fr   de -> de    it -> it
    ja -> ja               ko -> ko      pt -> pt-br   ru -> ru    es -> es

Audio streams while it is made: espeak-ng hands out ~``buffer_ms`` of audio at a time
from a worker thread, and each piece is yielded at once.

License: espeak-ng is GPL-3.0 (installed with the ``speech`` extra).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from ..bridge import from_thread
from ..errors import ConfigError, TalkerError
from ..events import AudioChunk, Utterance

__all__ = ["EspeakTalker", "EspeakVoice", "list_voices", "LANGUAGE_VOICES"]

#: Default espeak-ng language for each of the ten output languages of the seed.
LANGUAGE_VOICES: dict[str, str] = {
    "zh": "cmn", "en": "en-us", "fr": "fr-fr", "de": "de", "it": "it",
    "ja": "ja", "ko": "ko", "pt": "pt-br", "ru": "ru", "es": "es",
}

# Constants of espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _VOLUME, _PITCH = 1, 2, 3
# Rates (words per minute) espeak-ng honours: below 80 it clamps to 80 (measured); above
# 450 it speeds up with its bundled sonic, checked up to 1000.
_RATE_MIN, _RATE_MAX = 80, 1000


class _VoiceStruct(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated name)*, then 0
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                   ctypes.c_void_p)


@dataclass(frozen=True, slots=True)
class EspeakVoice:
    """One espeak-ng voice: display name, identifier (``gmw/en-US``) and languages."""

    name: str
    identifier: str
    languages: tuple[str, ...]


class _Engine:
    """The process-wide espeak-ng library. espeak-ng keeps global state, so every call
    goes through one lock and only one synthesis runs at a time."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise ConfigError("EspeakTalker needs espeakng-loader: pip install 'omni-agent[speech]'") from e
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as e:
            raise TalkerError(f"cannot load the espeak-ng library from espeakng-loader: {e}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_VoiceStruct)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                     ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_GetCurrentVoice.argtypes = []
        lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_VoiceStruct)
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceStruct))
        self.lib = lib
        self.lock = threading.Lock()
        # 100 ms buffers: small enough to stream and to stop promptly on barge-in.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 100, data.encode(), _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise TalkerError(f"espeak-ng failed to initialize with data at {data}")
        self.sample_rate = rate
        # The sink of the synthesis running now (set under the lock).
        self._sink: Callable[[bytes], bool] | None = None
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # kept alive for the C side
        lib.espeak_SetSynthCallback(self._callback)
        self.voices = self._list_voices()

    def _on_audio(self, wav, n, _events) -> int:
        sink = self._sink
        if sink is None:
            return 1
        pcm = ctypes.string_at(wav, n * 2) if n > 0 and wav else b""
        return 1 if sink(pcm) else 0  # non-zero aborts the synthesis

    def _list_voices(self) -> list[EspeakVoice]:
        out = []
        arr = self.lib.espeak_ListVoices(None)
        i = 0
        while arr[i]:
            v = arr[i].contents
            langs, p = [], v.languages
            while p and ctypes.c_ubyte.from_address(p).value:
                name = ctypes.string_at(p + 1)
                langs.append(name.decode("ascii", "replace"))
                p += 2 + len(name)
            out.append(EspeakVoice(v.name.decode("utf-8", "replace"),
                                   v.identifier.decode("utf-8", "replace"), tuple(langs)))
            i += 1
        return out

    def select(self, voice: str | None, lang: str | None) -> None:
        """Set the voice (by name/identifier) or else the language (under the lock)."""
        if voice:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise TalkerError(f"espeak-ng has no voice {voice!r}: see EspeakTalker.voices()")
            return
        code = LANGUAGE_VOICES.get((lang or "en").lower(), (lang or "en").lower())
        buf = ctypes.create_string_buffer(code.encode())  # must outlive the call below
        spec = _VoiceStruct()
        spec.languages = ctypes.cast(buf, ctypes.c_void_p)
        if self.lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != 0:
            raise TalkerError(f"espeak-ng has no voice for language {lang!r}: use a code such as "
                              f"{', '.join(LANGUAGE_VOICES)} or see EspeakTalker.voices()")

    def current(self, voice: str | None, lang: str | None) -> EspeakVoice:
        """The voice that ``select(voice, lang)`` picks."""
        with self.lock:
            self.select(voice, lang)
            v = self.lib.espeak_GetCurrentVoice().contents
            ident = (v.identifier or b"").decode("utf-8", "replace")
            name = (v.name or b"").decode("utf-8", "replace")
        for known in self.voices:
            if known.identifier == ident or known.name == name:
                return known
        return EspeakVoice(name, ident, ())

    def synth(self, text: str, voice: str | None, lang: str | None, rate: int, pitch: int,
              volume: int, sink) -> None:
        """Synthesize ``text``; ``sink(pcm)`` gets each buffer and returns True to abort."""
        data = text.encode("utf-8")
        with self.lock:
            self.select(voice, lang)
            self.lib.espeak_SetParameter(_RATE, rate, 0)
            self.lib.espeak_SetParameter(_PITCH, pitch, 0)
            self.lib.espeak_SetParameter(_VOLUME, volume, 0)
            self._sink = sink
            try:
                err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                            None, None)
            finally:
                self._sink = None
        if err not in (0, 1):  # 1 is EE_BUFFER_FULL, which a synchronous call never leaves behind
            raise TalkerError(f"espeak-ng failed to synthesize {text[:60]!r} (error {err})")


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Engine:
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def list_voices() -> list[EspeakVoice]:
    """Every voice of the bundled espeak-ng (name, identifier, languages)."""
    return list(_engine().voices)


class EspeakTalker:
    """A streaming Talker on the bundled espeak-ng.

    ``lang`` picks the voice by language (default English); ``Utterance.lang`` overrides
    it per clause. ``voice`` names a voice exactly instead (``"en-gb-scotland"``,
    ``"gmw/en-GB-x-rp"``, see :func:`list_voices`). ``rate`` is words per minute (espeak's
    default 175), ``pitch`` 0-100 (50), ``volume`` 0-200 (100).
    """

    name = "espeak"

    def __init__(self, lang: str | None = "en", *, voice: str | None = None, rate: int = 175,
                 pitch: int = 50, volume: int = 100):
        self._engine = _engine()
        self.lang = lang
        self.voice = voice
        self.rate, self.pitch, self.volume = int(rate), int(pitch), int(volume)
        self.sample_rate: int = self._engine.sample_rate
        # Check the choice now, so a bad language fails at construction, not mid-turn.
        with self._engine.lock:
            self._engine.select(voice, lang)

    @staticmethod
    def voices() -> list[EspeakVoice]:
        """Every voice of the bundled espeak-ng."""
        return list_voices()

    async def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]:
        """Yield the audio of one utterance as espeak-ng makes it (~100 ms pieces)."""
        text = utterance.text.strip()
        if not text:
            return
        voice, lang = (self.voice if not utterance.lang else None), utterance.lang or self.lang

        def work(emit: Callable[[bytes], bool]) -> None:
            # The sink's answer aborts espeak-ng within one buffer (barge-in).
            self._engine.synth(text, voice, lang, self.rate, self.pitch, self.volume,
                               lambda pcm: emit(pcm) if pcm else False)

        # max_ahead=None: espeak-ng makes one clause's audio (a few hundred kB at most) in
        # milliseconds, and pausing it would park the thread while it holds the
        # process-wide library lock; join: the lock must be free for the next clause.
        held: bytes | None = None
        async with contextlib.aclosing(from_thread(work, max_ahead=None, join=True)) as pieces:
            async for pcm in pieces:
                if held is not None:
                    yield AudioChunk(pcm=held, sample_rate=self.sample_rate,
                                     utterance_index=utterance.index)
                held = pcm  # one piece held back so the last one can be marked final
        if held is not None:
            yield AudioChunk(pcm=held, sample_rate=self.sample_rate,
                             utterance_index=utterance.index, final=True)

    @property
    def speed_range(self) -> tuple[float, float]:
        """Speeds :meth:`with_speed` takes from this rate (espeak-ng: 80-1000 words per
        minute; at the default 175: about 0.46-4)."""
        return (_RATE_MIN / self.rate, min(4.0, _RATE_MAX / self.rate))

    def with_speed(self, speed: float) -> EspeakTalker:
        """This voice at ``speed`` times its rate (2.0: 350 words per minute from 175);
        this Talker is unchanged::

            fast = EspeakTalker("en").with_speed(1.5)
        """
        lo, hi = self.speed_range
        if not lo - 1e-9 <= speed <= hi + 1e-9:
            raise ConfigError(f"espeak-ng speaks at {_RATE_MIN}-{_RATE_MAX} words per minute: speed "
                              f"must be between {lo:.2f} and {hi:.2f} at rate {self.rate}, not {speed}")
        other = copy.copy(self)
        other.rate = max(_RATE_MIN, min(_RATE_MAX, round(self.rate * speed)))
        return other

    def voice_for(self, lang: str | None = None) -> EspeakVoice:
        """The voice this Talker speaks ``lang`` with (default: its own language/voice)."""
        return self._engine.current(self.voice if not lang else None, lang or self.lang)

    def synthesize(self, text: str, lang: str | None = None) -> bytes:
        """Synchronously synthesize ``text``; returns int16 PCM at ``sample_rate``."""
        parts: list[bytes] = []

        def sink(pcm: bytes) -> bool:
            parts.append(pcm)
            return False  # never abort

        self._engine.synth(text, self.voice if not lang else None, lang or self.lang, self.rate,
                           self.pitch, self.volume, sink)
        return b"".join(parts)

    async def aclose(self) -> None:
        return None
