"""Qwen3-Omni served by vLLM-Omni, over its OpenAI-compatible chat completions API.

``vllm serve Qwen/Qwen3-Omni-30B-A3B-Instruct --omni`` answers ``POST /v1/chat/completions``
with text and, when asked for ``modalities: ["text", "audio"]``, speech. In a streamed
answer every SSE chunk carries a top-level ``modality``: text chunks are ordinary
``delta.content`` pieces; audio chunks carry a base64 WAV (24 kHz mono int16) in
``delta.content``. A non-streamed answer holds a text choice and an audio choice
(``message.audio.data``). Audio, image and video inputs travel as ``audio_url`` /
``image_url`` / ``video_url`` content parts (local bytes as data URLs); ``speaker``
(Ethan, Chelsie, Aiden) picks the voice.

Two ways to use it — the trade-off:

* **Thinker only** (default, ``audio=False``): the server writes text; our bus
  (safety, rewriting, tools) and our Talker turn it into speech. Every clause is approved
  before it is spoken, rewritten text is spoken as rewritten, and any Talker works
  (``Qwen3OmniTalker`` for the model's own voice on a local GPU, Piper, a TTS server).
  Costs: speech starts only after the first clause has been segmented and approved, and
  the speech runs on a second model.
* **Thinker and Talker together** (``audio=True``): the server speaks too, as it writes —
  the lowest first-audio latency and one GPU deployment. But the audio is the server's
  rendering of *what the Thinker wrote*: middleware can hide or rewrite the displayed
  text, not the speech. Use it only when no middleware needs to rewrite or block speech.
  The audio either passes through as :class:`~omni_agent.events.AudioChunk` events in the
  Thinker's stream (an agent without a Talker plays them), or is handed to a
  :class:`VLLMOmniTalker`, which plays it from the Talker's seat (trace timings,
  barge-in, audio hooks) and refuses to play on once a clause was rewritten or blocked.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import io
import logging
import wave
from collections import OrderedDict, deque
from typing import Any, AsyncIterator, Iterable

from ..audio import decode_audio, float_to_pcm16
from ..errors import AudioInputError, ConfigError, TalkerError, ThinkerError
from ..events import AudioChunk, Event, Utterance
from ..thinker import ThinkerRequest
from .openai import OpenAIThinker, StreamState

__all__ = ["VLLMOmniThinker", "VLLMOmniTalker", "SAMPLE_RATE", "decode_wav_chunk"]

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000  # Qwen3-Omni's Code2Wav rate; vLLM-Omni sends it as is
DEFAULT_URL = "http://localhost:8091/v1"  # the port vLLM-Omni's examples use


def decode_wav_chunk(b64: str) -> tuple[bytes, int]:
    """A base64 audio chunk (WAV, as vLLM-Omni sends it) -> (int16 mono PCM, sample rate)."""
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ThinkerError(f"vLLM-Omni sent an audio chunk that is not base64: {e}") from None
    if not raw:
        return b"", SAMPLE_RATE
    try:  # the usual case: a 16-bit PCM WAV, read without a float round trip
        with wave.open(io.BytesIO(raw)) as w:
            if w.getsampwidth() == 2:
                pcm = w.readframes(w.getnframes())
                rate, ch = w.getframerate(), w.getnchannels()
                if ch == 1:
                    return pcm, rate
    except (wave.Error, EOFError):
        pass
    try:  # float WAV, FLAC, Opus, stereo, ...: decode generally
        samples, rate = decode_audio(raw, max_seconds=None, what="vLLM-Omni audio chunk")
    except AudioInputError as e:
        raise ThinkerError(f"vLLM-Omni sent audio that could not be decoded: {e}") from None
    return float_to_pcm16(samples), rate


# What the parse hooks need to know about the stream being parsed (the base class builds
# the StreamState itself); a context variable keeps concurrent streams apart.
_STREAM: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("vllm_omni_stream", default=None)


class _TurnAudio:
    """The server's speech for one turn, as it arrives (every Thinker round appends)."""

    def __init__(self) -> None:
        self.chunks: deque[AudioChunk] = deque()
        self.open_rounds = 0
        self.refused: str | None = None  # why the rest of this turn's audio is withheld
        self._changed: asyncio.Event | None = None

    @property
    def changed(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def push(self, chunk: AudioChunk) -> None:
        if self.refused is None:
            self.chunks.append(chunk)
        self.changed.set()

    def round_started(self) -> None:
        self.open_rounds += 1

    def round_ended(self) -> None:
        self.open_rounds = max(0, self.open_rounds - 1)
        self.changed.set()


class VLLMOmniThinker(OpenAIThinker):
    """Qwen3-Omni on a vLLM-Omni server: text, audio, images and video in; text (and speech) out.

    ``audio=False`` (the default) asks for text only: the agent's bus and Talker do the
    speaking. ``audio=True`` asks for ``["text", "audio"]``; the speech is handed to an
    attached :class:`VLLMOmniTalker` or, without one, yielded as ``AudioChunk`` events.
    ``speaker`` picks the voice (Ethan, Chelsie, Aiden). ``sampling_params_list`` sets
    vLLM-Omni's per-stage sampling (Thinker, Talker, Code2Wav) and ``use_audio_in_video``
    makes it hear the sound track of videos. Per request, ``request.extra["modalities"]``
    and ``request.extra["speaker"]`` override. Other options are :class:`OpenAIThinker`'s.
    """

    name = "vllm-omni"

    def __init__(self, base_url: str = DEFAULT_URL, model: str | None = None, *, audio: bool = False,
                 speaker: str | None = None, sampling_params_list: list[dict[str, Any]] | None = None,
                 use_audio_in_video: bool = False,
                 accepts: Iterable[str] = ("text", "audio", "image", "video"),
                 audio_input: str = "audio_url", **kwargs: Any):
        super().__init__(base_url, model, accepts=accepts, audio_input=audio_input, **kwargs)
        self.audio = audio
        self.speaker = speaker
        self.sampling_params_list = sampling_params_list
        self.use_audio_in_video = use_audio_in_video
        self.talker: VLLMOmniTalker | None = None

    def attach(self, talker: "VLLMOmniTalker") -> None:
        """Hand this Thinker's speech to ``talker`` (done by ``VLLMOmniTalker(thinker)``)."""
        self.talker = talker
        self.audio = True

    def _talker(self) -> "VLLMOmniTalker | None":
        return self.talker or _TALKERS.get(self.base_url)

    def _modalities(self, request: ThinkerRequest) -> list[str]:
        mods = request.extra.get("modalities")
        if mods:
            return list(mods)
        return ["text", "audio"] if (self.audio or self._talker() is not None) else ["text"]

    def build_body(self, request: ThinkerRequest, model: str) -> dict[str, Any]:
        body = super().build_body(request, model)
        body["modalities"] = self._modalities(request)
        speaker = request.extra.get("speaker") or self.speaker
        if speaker and "audio" in body["modalities"]:
            body["speaker"] = str(speaker).lower()
        if self.sampling_params_list is not None:
            body["sampling_params_list"] = self.sampling_params_list
        if self.use_audio_in_video:
            body.setdefault("mm_processor_kwargs", {})["use_audio_in_video"] = True
        return body

    # ------------------------------------------------------------------ audio out

    def media_delta(self, modality: str, delta: dict[str, Any], chunk: dict[str, Any],
                    state: StreamState) -> list[Event]:
        if modality != "audio":
            return super().media_delta(modality, delta, chunk, state)
        audio = delta.get("audio")
        b64 = audio.get("data") if isinstance(audio, dict) else None
        if b64 is None and isinstance(delta.get("content"), str):
            b64 = delta["content"]
        if not b64:
            return []
        info = _STREAM.get() or {}
        if not info.get("want_audio"):
            return []  # asked for text only; a server that speaks anyway is not heard
        pcm, rate = decode_wav_chunk(b64)
        if not pcm:
            return []
        ev = AudioChunk(pcm=pcm, sample_rate=rate)
        state.extra["audio_chunks"] = state.extra.get("audio_chunks", 0) + 1
        feed = info.get("feed")
        if feed is not None:
            feed.push(ev)
            return []
        return [ev]

    def parse_completion(self, obj: dict[str, Any], state: StreamState) -> list[Event]:
        out = super().parse_completion(obj, state)
        # vLLM-Omni answers text + audio as two choices; the base class reads index 0 only.
        for choice in obj.get("choices") or []:
            msg = choice.get("message") or {}
            if choice.get("index", 0) != 0 and isinstance(msg.get("audio"), dict):
                out.extend(self.media_delta("audio", {"audio": msg["audio"]}, obj, state))
        return out

    async def stream(self, request: ThinkerRequest) -> AsyncIterator[Event]:
        """Stream the answer; speech goes to the attached Talker or out as AudioChunk events."""
        want_audio = "audio" in self._modalities(request)
        talker = self._talker() if want_audio else None
        feed = talker._feed(request.session_id, request.turn_id) if talker is not None else None
        if feed is not None:
            feed.round_started()
        token = _STREAM.set({"want_audio": want_audio, "feed": feed})
        passed = 0
        try:
            async for ev in super().stream(request):
                if isinstance(ev, AudioChunk):
                    passed += 1
                yield ev
            if passed:
                yield self._stamp(AudioChunk(pcm=b"", sample_rate=SAMPLE_RATE, final=True), request)
        finally:
            try:
                _STREAM.reset(token)
            except ValueError:  # closed from another context (generator finalized elsewhere)
                pass
            if feed is not None:
                feed.round_ended()


# Talkers that asked for a server's speech by URL (a TOML config builds Thinker and Talker
# separately; the Thinker finds its Talker here).
_TALKERS: dict[str, "VLLMOmniTalker"] = {}


class VLLMOmniTalker:
    """Plays vLLM-Omni's own speech for each turn from the Talker's seat.

    ``VLLMOmniTalker(thinker)`` (or ``VLLMOmniTalker(base_url=...)`` with the Thinker's URL,
    as a TOML config does) makes the :class:`VLLMOmniThinker` ask the server for audio
    and hand it here. The first utterance of a Thinker round plays that round's audio as
    it streams in; the server's speech is not cut by clause, so later utterances of the
    round have nothing left to add.

    The server speaks what its Thinker wrote, not what left the bus: when an utterance
    was rewritten or replaced by a fallback line, the rest of that turn's audio is
    withheld and :class:`~omni_agent.errors.TalkerError` says why (``strict=False``
    plays on regardless). For speech that follows middleware, use the Thinker-only mode
    with a real Talker (``Qwen3OmniTalker``, Piper, ...).
    """

    name = "vllm-omni"
    sample_rate = SAMPLE_RATE

    def __init__(self, thinker: VLLMOmniThinker | None = None, *, base_url: str | None = None,
                 strict: bool = True, max_turns: int = 64):
        self.strict = strict
        self.max_turns = max_turns
        self._turns: OrderedDict[tuple[str, int], _TurnAudio] = OrderedDict()
        if thinker is not None:
            if not isinstance(thinker, VLLMOmniThinker):
                raise ConfigError("VLLMOmniTalker plays a VLLMOmniThinker's speech; got "
                                  f"{type(thinker).__name__}")
            thinker.attach(self)
            self.base_url = thinker.base_url
        elif base_url is not None:
            probe = VLLMOmniThinker(base_url)  # normalizes the URL the same way
            self.base_url = probe.base_url
            _TALKERS[self.base_url] = self
        else:
            raise ConfigError("VLLMOmniTalker needs the VLLMOmniThinker it speaks for, or that "
                              "Thinker's base_url (e.g. base_url = \"http://localhost:8091/v1\")")

    def _feed(self, session_id: str, turn_id: int) -> _TurnAudio:
        key = (session_id, turn_id)
        feed = self._turns.get(key)
        if feed is None:
            feed = self._turns[key] = _TurnAudio()
            while len(self._turns) > self.max_turns:
                self._turns.popitem(last=False)
        return feed

    async def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]:
        """Yield the server's speech that arrived (and arrives) for this utterance's turn."""
        feed = self._turns.get((utterance.session_id, utterance.turn_id))
        if feed is None:
            if utterance.fallback:
                raise TalkerError("vLLM-Omni can only play what its Thinker said; this fallback line "
                                  "has no server audio (use a real Talker to speak fallback lines)")
            return
        rewritten = utterance.fallback or (
            utterance.original is not None and utterance.text.strip() != utterance.original.strip())
        if rewritten and self.strict and feed.refused is None:
            feed.refused = (f"clause {utterance.index} was {'blocked' if utterance.fallback else 'rewritten'} "
                            "by middleware, and vLLM-Omni speaks what its Thinker wrote")
            feed.chunks.clear()
        if feed.refused is not None:
            raise TalkerError(f"withholding vLLM-Omni's speech for the rest of this turn: {feed.refused}. "
                              "Use VLLMOmniThinker(audio=False) with a real Talker when middleware "
                              "rewrites speech.")
        while True:
            while feed.chunks:
                chunk = feed.chunks.popleft()
                chunk.utterance_index = utterance.index
                yield chunk
                if feed.refused is not None:
                    return
            if feed.open_rounds == 0:
                return
            feed.changed.clear()
            if feed.chunks or feed.open_rounds == 0:
                continue
            await feed.changed.wait()

    async def aclose(self) -> None:
        if _TALKERS.get(self.base_url) is self:
            del _TALKERS[self.base_url]
