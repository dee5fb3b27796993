"""Live voice sessions: audio streams in, the user's turns are found in it, the user can
barge in.

A :class:`LiveSession` wraps one agent :class:`~omni_agent.agent.Session` for a caller
that streams microphone audio (the WebSocket server, WebRTC, a phone bridge)::

    async with LiveSession(agent.session(), vad=vad) as live:   # owns the session's tasks
        live.feed(pcm16_bytes)              # as audio arrives, any chunk size
        async for msg in live.messages():   # events (UserTurn, Utterance, AudioChunk, TurnEnd,
            ...                             # Interruption ...) and small control dicts

What it does with the audio (the VAD and the :class:`~omni_agent.vad.Endpointer` are in
:mod:`omni_agent.vad`; playback accounting is in :mod:`omni_agent.playback`):

* **streaming ears**: speech lasting ``min_speech_ms`` starts a user turn; at every pause
  (``pause_ms`` of silence) the speech so far is transcribed in the background, and the
  interim transcript goes out (``transcript``, ``final: false``), so when the turn ends
  only the last piece is left to recognise;
* **semantic end of turn**: at a pause the transcript so far is scored by a turn detector
  (:mod:`omni_agent.turn_detector`: the embedded model's probability that the user is
  done); a complete sentence ends the turn after ``min_end_silence_ms`` of silence, an
  unfinished one waits up to ``max_end_silence_ms``. Off (``semantic_turn=False``), or
  without a transcript, ``end_silence_ms`` of silence ends it;
* **preemptive thinking**: at a pause the agent's turn starts at once as a *draft* on the
  interim transcript, while the turn detector judges it: the bus runs as always, but
  nothing of it is sent (spoken) or remembered until the end of turn is confirmed with
  the same transcript. When the user goes on speaking, or the final transcript differs,
  the draft is cancelled and forgotten and the turn runs again;
* **barge-in**: speech lasting ``min_interrupt_ms`` while the agent is busy or its audio is
  still playing calls :meth:`Session.interrupt`, which cancels Thinker, tools and Talker.
  The time from detection to "everything cancelled" is measured for every barge-in
  (``cancel_ms`` on the ``interruption`` message; :attr:`LiveSession.cancel_latencies`);
* after a barge-in the agent's memory keeps only what was spoken; when the client reports
  how much of the reply it actually played (:meth:`report_playback`), memory is cut to what
  the user heard.

Every figure is measured from the true end of the user's speech: the end of the last voiced
frame the server received (``speech_end_ms`` in the input stream), not the moment the
silence wait ran out.

Messages out are :class:`~omni_agent.events.Event` objects plus dicts with a ``type``
(``speech_started``, ``transcript``, ``speech_stopped``, ``stop_playback``, ``no_speech``,
``latency``, ``memory_revised``, ``error``); docs/protocol.md describes them on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import deque
from time import monotonic
from typing import Annotated, Any, AsyncIterator, Callable, Union

import anyio
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from .errors import AudioInputError, ConfigError, OmniAgentError
from .events import (
    AudioChunk,
    AudioPart,
    ErrorEvent,
    Event,
    Interruption,
    TextDelta,
    TextPart,
    TurnEnd,
    UserTurn,
    Utterance,
)
from .playback import ReplyAudio, heard_text
from .tasks import task_group
from .vad import VAD, Endpointer, EnergyVAD, VADStream, default_vad

__all__ = [
    "LiveConfig",
    "LiveSession",
    "VAD",
    "VADStream",
    "EnergyVAD",
    "default_vad",
    "heard_text",
    "MAX_AUDIO_SECONDS",
]

log = logging.getLogger(__name__)

#: The longest user turn accepted: 40 minutes, like Qwen3-Omni's audio input.
MAX_AUDIO_SECONDS = 2400.0

#: What a live session sends out: an event, or a control message ``{"type": ...}``.
LiveMessage = Union[Event, dict]

# --------------------------------------------------------------------------- config

#: A duration in whole milliseconds, 0..60 s (a bool or a string is not one).
_Ms = Annotated[StrictInt, Field(ge=0, le=60_000)]


def validation_message(e: ValidationError, hints: dict[str, str] | None = None) -> str:
    """One line per bad field of a pydantic error: ``name: what is wrong (got X)``, with
    the field's hint (what to give instead) when ``hints`` has one."""
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err.get("loc", ())) or "value"
        got = err.get("input")
        hint = (hints or {}).get(where.split(".")[0])
        parts.append(f"{where}: {err.get('msg', 'invalid')} (got {got!r})"
                     + (f"; {hint}" if hint else ""))
    return "; ".join(parts)


_HINTS = {
    "max_turn_seconds": "give seconds, more than 0 and at most 2400 (40 minutes)",
    "threshold": "give a probability between 0 and 1, e.g. 0.5",
    "sample_rate": "give a whole number of Hz, 8000..192000",
    **{name: "give whole milliseconds, 0..60000" for name in (
        "min_speech_ms", "min_interrupt_ms", "end_silence_ms", "min_end_silence_ms",
        "max_end_silence_ms", "pause_ms", "pre_roll_ms", "playback_wait_ms")},
    **{name: "give true or false" for name in (
        "barge_in", "semantic_turn", "streaming_asr", "preemptive")},
}


class LiveConfig(BaseModel):
    """How a live session listens. Every value is checked when it is made (and when a
    field is set): a bad one raises :class:`ConfigError` naming it.

    * ``sample_rate`` — rate of the int16 mono PCM given to :meth:`LiveSession.feed`.
    * ``barge_in`` — True: user speech while the agent talks interrupts it; False: that
      speech is ignored (half duplex, e.g. loudspeakers without echo cancellation).
    * ``min_speech_ms`` — speech at least this long starts a user turn.
    * ``min_interrupt_ms`` — speech at least this long, while the agent talks, interrupts.
    * ``end_silence_ms`` — this much silence after speech ends the user's turn, unless
      the semantic end of turn has judged the words by then (or it is off).
    * ``semantic_turn`` — judge the end of turn from the transcript too: a complete
      sentence ends it after ``min_end_silence_ms``, an unfinished one waits up to
      ``max_end_silence_ms``.
    * ``streaming_asr`` — transcribe at each pause while the user speaks (needs the
      whisper ears and a 16 kHz VAD); False: the whole turn is transcribed at its end.
    * ``pause_ms`` — silence that counts as a pause (transcribe, judge, maybe draft).
    * ``preemptive`` — start the agent's turn as a draft at each pause, on the words so
      far; nothing of it is sent or remembered until the end is confirmed with them.
    * ``pre_roll_ms`` — audio kept from just before speech was detected (word onsets).
    * ``threshold`` — VAD probability that counts as speech.
    * ``max_turn_seconds`` — longest user turn (at most 40 minutes).
    * ``playback_wait_ms`` — after a barge-in, how long the next turn waits for the client
      to report how much of the reply it played (so memory is cut first). Only clients
      that have sent a playback report before are waited for.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    sample_rate: Annotated[StrictInt, Field(ge=8000, le=192_000)] = 16000
    barge_in: StrictBool = True
    min_speech_ms: _Ms = 150
    min_interrupt_ms: _Ms = 200
    end_silence_ms: _Ms = 600
    semantic_turn: StrictBool = True
    min_end_silence_ms: _Ms = 250
    max_end_silence_ms: _Ms = 1200
    streaming_asr: StrictBool = True
    pause_ms: _Ms = 150
    preemptive: StrictBool = True
    pre_roll_ms: _Ms = 300
    threshold: Annotated[float, Field(strict=True, gt=0.0, lt=1.0)] = 0.5
    max_turn_seconds: Annotated[float, Field(strict=True, gt=0.0, le=MAX_AUDIO_SECONDS)] = MAX_AUDIO_SECONDS
    playback_wait_ms: _Ms = 400

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError(f"bad live setting: {validation_message(e, _HINTS)}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise ConfigError(f"bad live setting: {validation_message(e, _HINTS)}") from None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The settings' names, in order."""
        return tuple(cls.model_fields)

    def replace(self, **changes: Any) -> "LiveConfig":
        """A copy with ``changes`` applied, validated like a new one."""
        return LiveConfig(**{**self.model_dump(), **changes})

    def check(self) -> "LiveConfig":
        """The values are checked when they are set; kept so older callers still work."""
        if self.min_end_silence_ms > self.max_end_silence_ms:
            raise ConfigError(f"min_end_silence_ms ({self.min_end_silence_ms}) must not exceed "
                              f"max_end_silence_ms ({self.max_end_silence_ms})")
        return self


class _Outbox:
    """A bounded FIFO of outgoing messages with a bypass for control messages.

    Turn output waits when full (backpressure reaches the Talker through the agent's own
    bounded queues); control messages (speech started, stop playback) never wait, so a
    slow client can never delay a barge-in. Stale output of an interrupted turn is dropped.
    """

    __slots__ = ("maxsize", "_items", "_readable", "_space", "closed")

    def __init__(self, maxsize: int = 128):
        self.maxsize = maxsize
        self._items: deque[LiveMessage] = deque()
        self._readable = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.closed = False

    async def put(self, item: LiveMessage) -> None:
        while len(self._items) >= self.maxsize and not self.closed:
            self._space.clear()
            await self._space.wait()
        if self.closed:
            return
        self._items.append(item)
        self._readable.set()

    def put_nowait(self, item: LiveMessage) -> None:
        if self.closed:
            return
        self._items.append(item)
        self._readable.set()

    def unbound(self) -> None:
        """From now on ``put`` never waits (the session is ending: a few messages more)."""
        self.maxsize = 1 << 30
        self._space.set()

    def drop(self, pred: Callable[[LiveMessage], bool]) -> int:
        """Remove queued messages matching ``pred``; returns how many."""
        keep = [m for m in self._items if not pred(m)]
        n = len(self._items) - len(keep)
        if n:
            self._items = deque(keep)
            self._space.set()
        return n

    async def get(self) -> LiveMessage | None:
        """The next message; None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._readable.clear()
            await self._readable.wait()
        item = self._items.popleft()
        if len(self._items) < self.maxsize:
            self._space.set()
        return item

    def close(self) -> None:
        self.closed = True
        self._readable.set()
        self._space.set()


# --------------------------------------------------------------------------- listening


def _same_words(a: str, b: str) -> bool:
    """Two transcripts say the same words (case and punctuation aside)."""
    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^\w']+", " ", s.lower()).split())
    return norm(a) == norm(b)


class _Gate:
    """Holds a draft turn's output until the end of the user's turn is decided.

    ``open()``: the held output goes out (in order) and the rest flows; ``discard()``: all
    of it is dropped. At most ``cap`` messages are held; beyond that the draft waits for the
    decision (so a fast Talker cannot grow memory while the user is still pausing).
    """

    __slots__ = ("held", "state", "decided", "flushing", "cap")

    def __init__(self, cap: int = 64):
        self.held: deque[LiveMessage] = deque()
        self.state = "held"  # "held" | "open" | "discarded"
        self.decided = anyio.Event()
        self.flushing = True  # until the held output has gone out
        self.cap = cap

    def open(self) -> None:
        if self.state == "held":
            self.state = "open"
            self.decided.set()

    def discard(self) -> None:
        if self.state == "held":
            self.state = "discarded"
            self.held.clear()
            self.decided.set()

    async def commit(self) -> bool:
        """For the agent's ``turn(commit=)``: keep the turn in memory only once opened."""
        await self.decided.wait()
        return self.state == "open"


class _Draft:
    """A preemptive turn started on an interim transcript."""

    __slots__ = ("text", "gate", "scope", "done", "in_agent_turn", "times", "t_confirmed",
                 "thinking")

    def __init__(self, text: str):
        self.text = text
        #: set once the Thinker has read its prompt (its first output) or the draft ended
        self.thinking = anyio.Event()
        self.times: _TurnTimes | None = None  # set when it is kept
        self.t_confirmed = 0.0
        self.gate = _Gate()
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.in_agent_turn = False


class _Listen:
    """One stretch of user speech being listened to, from its start to the end of turn."""

    __slots__ = ("ears", "lock", "gen", "interim", "p_end", "wait_ms", "detector", "model", "draft",
                 "asr_s")

    def __init__(self, ears: Any):
        self.ears = ears  # an EarsStream, or None: the whole turn is transcribed at its end
        self.lock = anyio.Lock()  # one transcription at a time
        self.gen = 0  # bumped at every pause and resume: a stale judgement is ignored
        self.interim = ""
        self.p_end: float | None = None
        self.wait_ms: float | None = None
        self.detector = "silence"
        self.model: str | None = None  # the turn detector that judged it
        self.draft: _Draft | None = None
        self.asr_s = 0.0  # transcription time spent after the end of speech

    def decision(self) -> dict[str, Any]:
        return {"detector": self.detector, "model": self.model,
                "p_end": None if self.p_end is None else round(self.p_end, 3),
                "wait_ms": None if self.wait_ms is None else round(self.wait_ms, 1)}


class _TurnTimes:
    """When a turn's user speech ended (server clock) and how its draft went."""

    __slots__ = ("speech_end", "speech_end_ms", "t_final", "draft", "listen")

    def __init__(self, speech_end: float | None = None, speech_end_ms: float | None = None):
        self.speech_end = speech_end
        self.speech_end_ms = speech_end_ms
        self.t_final: float | None = None
        self.draft: str | None = None  # "kept" | "restarted" | None
        self.listen: dict[str, Any] | None = None


_GAP_KEEP = 4  # silent frames (~128 ms) kept before resumed speech for the ears
#: the longest the end-of-turn judgement waits for a draft's Thinker to read its prompt
_JUDGE_YIELD_S = 0.15

_detector_lock = threading.Lock()
_shared_detector: Any = None


def _default_detector() -> Any:
    """The shared turn detector (loaded once, on first use)."""
    global _shared_detector
    with _detector_lock:
        if _shared_detector is None:
            from .turn_detector import default_turn_detector

            _shared_detector = default_turn_detector()
        return _shared_detector


# --------------------------------------------------------------------------- the session


class LiveSession:
    """A live voice conversation on top of an agent session (see the module docstring).

    ``session`` — the agent :class:`~omni_agent.agent.Session` (its history is the
    conversation's memory). ``vad`` — a :class:`VAD` (shared between sessions); None:
    :func:`default_vad`. ``config`` — a :class:`LiveConfig`. ``turn_detector`` — judges
    whether a transcript is a finished turn (:mod:`omni_agent.turn_detector`); None: the
    shared default, loaded on first use when ``config.semantic_turn`` is on.
    ``outbox_size`` bounds the messages waiting for a slow client.

    Use it as an async context manager: the block owns the session's task group, so each
    user turn (speech recognition, the agent's turn, a draft) is a task of it, cancelled by
    a barge-in and awaited when the block ends. Inside, the caller feeds audio with
    :meth:`feed` (and text with :meth:`submit_text`) and reads :meth:`messages` (in
    another task of its own); :meth:`aclose` ends the session early.
    """

    def __init__(self, session: Any, *, vad: VAD | None = None, config: LiveConfig | None = None,
                 turn_detector: Any = None, outbox_size: int = 128):
        self.session = session
        self.config = (config or LiveConfig()).check()
        self.vad = vad if vad is not None else default_vad()
        self.turn_detector = turn_detector
        self._stream: VADStream | None = None  # made on the first audio: idle sessions stay small
        self._ep: Endpointer | None = None
        self._resampler: Any = None
        self._pending = np.zeros(0, dtype=np.int16)
        self._outbox = _Outbox(outbox_size)
        # listening state
        self._ignoring = False  # speech heard while barge-in is off and the agent talks
        self._barged_this_speech = False
        self._talking_at_start = False
        self._listen: _Listen | None = None
        self._gap: list[np.ndarray] = []  # silent frames since the last voiced one
        self._t_voiced = 0.0  # when the last voiced frame arrived (server clock)
        # turn state: the running turn's cancel scope and a flag set when it has ended
        self._tg: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._turn_scope: anyio.CancelScope | None = None
        self._turn_done: anyio.Event | None = None
        self._last_done: anyio.Event | None = None  # of the last task started (drafts too)
        self._reply: ReplyAudio | None = None
        self._play_until = 0.0  # when the client will (about) have played all audio sent
        self._barge_t: float | None = None
        self._playback_reported = asyncio.Event()
        self._playback_reported.set()
        self._client_reports_playback = False  # waited for only once a client has sent one
        self._closed = False
        #: Measured barge-in cancel latencies, seconds (detection -> all cancelled).
        self.cancel_latencies: list[float] = []
        #: When each barge-in was detected (``time.monotonic()``).
        self.barge_in_times: list[float] = []
        self.turns = 0
        #: Preemptive drafts: how many were started, kept (their turn was confirmed with the
        #: same transcript) and discarded.
        self.drafts = {"started": 0, "kept": 0, "discarded": 0}

    # ------------------------------------------------------------------ state

    @property
    def agent_busy(self) -> bool:
        """True while a turn runs (listening to ASR, thinking or talking). A draft that
        is not confirmed yet does not count: it is not the agent's turn."""
        return self._turn_done is not None and not self._turn_done.is_set()

    @property
    def user_speaking(self) -> bool:
        """True from the start of the user's speech to the end of their turn."""
        return self._ep is not None and self._ep.speaking

    async def __aenter__(self) -> "LiveSession":
        if self._tg is not None:
            raise OmniAgentError("this live session is already running")
        self._stack = contextlib.AsyncExitStack()
        self._tg = await self._stack.enter_async_context(task_group())
        if self.config.semantic_turn and self.turn_detector is None:
            # Loaded now, off the loop, so the first pause is judged without the load.
            self._tg.start_soon(self._load_detector)
        return self

    async def _load_detector(self) -> None:
        try:
            detector = await anyio.to_thread.run_sync(_default_detector)
        except Exception as e:  # noqa: BLE001 - without it the silence rule ends turns
            log.warning("live session: the turn detector could not be loaded (%s); "
                        "turns end after end_silence_ms of silence", e)
            return
        if self.turn_detector is None:
            self.turn_detector = detector
            await self._prepare_detector()

    async def __aexit__(self, *exc: Any) -> bool | None:
        tg, stack = self._tg, self._stack
        assert stack is not None
        try:
            await self.aclose()
        finally:
            self._tg = None
            tg.cancel_scope.cancel()  # nothing of this session outlives the block
        return await stack.__aexit__(*exc)

    @property
    def agent_talking(self) -> bool:
        """True while a turn runs or its audio is (by estimate) still playing."""
        return self.agent_busy or monotonic() < self._play_until

    # ------------------------------------------------------------------ audio in

    def feed(self, pcm: bytes) -> None:
        """Take int16 little-endian mono PCM at ``config.sample_rate``, any length.

        Runs the VAD frame by frame right here (no await), so a barge-in is acted on as
        soon as the frame that reveals it arrives. Raises :class:`AudioInputError` for
        PCM with an odd number of bytes.
        """
        if self._closed:
            return
        if len(pcm) % 2:
            raise AudioInputError(f"PCM audio must be 16-bit samples (an even number of bytes), "
                                  f"got {len(pcm)} bytes")
        if not pcm:
            return
        samples = np.frombuffer(pcm, dtype="<i2")
        if self._stream is None:
            self._start_stream()
        assert self._stream is not None
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        buf = np.concatenate((self._pending, samples)) if self._pending.size else samples
        n = self._stream.frame_samples
        i = 0
        while i + n <= buf.size:
            self._on_frame(buf[i:i + n])
            i += n
        self._pending = buf[i:].copy()

    def _start_stream(self) -> None:
        cfg = self.config
        self._stream = self.vad.new_stream()
        frame_ms = 1000.0 * self._stream.frame_samples / self.vad.sample_rate
        self._ep = Endpointer(frame_ms, threshold=cfg.threshold, min_speech_ms=cfg.min_speech_ms,
                              pre_roll_ms=cfg.pre_roll_ms, pause_ms=cfg.pause_ms,
                              end_silence_ms=self._undecided_wait())
        if cfg.sample_rate != self.vad.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(cfg.sample_rate, self.vad.sample_rate, 1,
                                                  dtype="int16")

    def _undecided_wait(self) -> float:
        """The silence that ends a turn before (or without) a semantic judgement: the plain
        silence rule. A judgement that comes in time shortens it (a complete sentence) or
        lengthens it (an unfinished one), so a slow machine is never slower than silence."""
        return float(self.config.end_silence_ms)

    def _judges(self) -> bool:
        """Whether this session decides the end of turn from the transcript."""
        return self.config.semantic_turn and self._can_stream()

    def _can_stream(self) -> bool:
        """Whether speech is transcribed while the user speaks (at pauses)."""
        cfg = self.config
        ears = getattr(self.session.agent, "ears", None)
        return (cfg.streaming_asr and ears is not None and self.vad.sample_rate == 16000
                and "audio" not in self.session.agent.thinker.accepts
                and callable(getattr(ears, "transcribe_samples", None)))

    @property
    def speech_end_ms(self) -> float:
        """Where the last voiced audio ended, in ms of this session's input stream."""
        ep = self._ep
        return 0.0 if ep is None else round(ep.voiced_frames * ep.frame_ms, 1)

    def _on_frame(self, frame: np.ndarray) -> None:
        cfg = self.config
        ep = self._ep
        assert self._stream is not None and ep is not None
        prob = self._stream.speech_prob(frame.astype(np.float32) / 32768.0)
        kind = ep.step(None if self._ignoring else frame, prob)
        if ep.voiced_frames == ep.frames:
            self._t_voiced = monotonic()
        if kind == "start":
            self._start_speech()
        elif kind == "end":
            self._end_speech("silence")
            return
        if not ep.speaking:
            if ep.run_ms > 0:
                self._maybe_barge_in()
            else:
                self._barged_this_speech = False
            return
        voiced = ep.silence_ms == 0.0
        if voiced:
            self._maybe_barge_in()
        self._listen_frame(frame, voiced, kind)
        if not self._ignoring and ep.speech_ms > cfg.max_turn_seconds * 1000:
            self._outbox.put_nowait({
                "type": "error", "code": "audio_too_long",
                "message": f"the user turn ran past {cfg.max_turn_seconds:.0f} s of speech; it was "
                           "dropped. Pause between turns (or raise max_turn_seconds, at most 2400 s)."})
            # The rest of this stretch of speech is ignored too, up to the next pause.
            self._ignoring = True
            ep.drop()
            self._drop_listen()

    def _listen_frame(self, frame: np.ndarray, voiced: bool, kind: str | None) -> None:
        """Streaming ears: voiced frames (and the short gaps between them) go to the
        recogniser; a pause closes a segment and starts its transcription."""
        listen = self._listen
        if listen is None or self._ignoring:
            return
        if kind == "resume":
            self._on_resume(listen)
        if voiced:
            if listen.ears is not None:
                for f in self._gap:
                    listen.ears.append(f)
                listen.ears.append(frame)
            self._gap = []
            return
        self._gap.append(frame)
        if kind == "pause":
            if self._judges() and self._ep is not None:
                # A judgement is coming: the turn waits for it rather than for the clock.
                self._ep.end_silence_ms = float(max(self.config.end_silence_ms,
                                                    self.config.max_end_silence_ms))
            if listen.ears is not None:
                # A little of the pause ends the segment; more silence makes whisper add
                # words that were never said ("...a table for it.").
                for f in self._gap[:_GAP_KEEP]:
                    listen.ears.append(f)
                listen.ears.mark_pause()
            self._gap = []
            listen.gen += 1
            assert self._tg is not None
            self._tg.start_soon(self._on_pause, listen, listen.gen)
        elif self._ep is not None and self._ep.paused and len(self._gap) > _GAP_KEEP:
            del self._gap[0]  # only the last bit of a long pause goes to the ears

    def _on_resume(self, listen: _Listen) -> None:
        """The user goes on after a pause: the turn is not over; a draft on the words so far
        is dropped, and the end of turn is judged again at the next pause."""
        listen.gen += 1
        listen.p_end = listen.wait_ms = None
        listen.detector = "silence"
        assert self._ep is not None
        self._ep.end_silence_ms = self._undecided_wait()
        self._discard_draft(listen)

    async def _on_pause(self, listen: _Listen, gen: int) -> None:
        """At a pause: transcribe what is new, tell the client, judge whether the turn is
        over and, when it looks over, start a draft of the agent's turn.

        While the judgement is pending the turn waits for it (up to ``max_end_silence_ms``
        of silence); without one (no words yet, semantic end of turn off, a failure) the
        plain ``end_silence_ms`` rule applies again."""
        judged = False
        try:
            text = await self._transcribe_pending(listen)
            if self._listen is not listen:
                return  # the turn ended meanwhile: its final transcript says it all
            if text and text != listen.interim:
                listen.interim = text
                await self._outbox.put({"type": "transcript", "text": text, "final": False,
                                        "turn_id": None})
            if listen.gen != gen or not text or not self._judges():
                return  # resumed (judged at the next pause), too short alone, or no judge
            if self.config.preemptive:
                # The draft starts now: if the user says no more, these are the turn's
                # words whatever the judge says. The judgement waits until the Thinker has
                # read its prompt (two threads), then runs beside its decoding (one): on
                # two cores the draft's first audio is what the user waits for.
                self._start_draft(listen, text)
                draft = listen.draft
                if draft is not None:
                    with anyio.move_on_after(_JUDGE_YIELD_S):
                        await draft.thinking.wait()
                if listen.gen != gen or self._listen is not listen:
                    return
            p = await self._end_probability(text)
            if listen.gen != gen or self._listen is not listen:
                return
            judged = True
            self._apply_judgement(listen, text, p)
        except Exception as e:  # noqa: BLE001 - a failed interim step must not end the session
            log.warning("live session: interim recognition failed: %s", e)
        finally:
            if not judged and listen.gen == gen and self._listen is listen:
                self._set_end_wait(float(self.config.end_silence_ms), "silence")

    def _apply_judgement(self, listen: _Listen, text: str, p: float) -> None:
        wait = self._wait_for(p)
        listen.p_end, listen.wait_ms, listen.detector = p, wait, "semantic"
        listen.model = getattr(self.turn_detector, "name", type(self.turn_detector).__name__)
        if self._set_end_wait(wait, "semantic"):
            return
        assert self._ep is not None and self._tg is not None
        # Frames are the clock; a client that stops sending audio altogether (a file sent
        # in one go, a muted microphone) would stop it, so the wall clock backs it up.
        self._tg.start_soon(self._end_if_no_audio, listen, listen.gen, self._ep.frames,
                            (wait - self._ep.silence_ms) / 1000.0)

    async def _end_if_no_audio(self, listen: _Listen, gen: int, frames: int, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))
        ep = self._ep
        if (ep is not None and self._listen is listen and listen.gen == gen and ep.speaking
                and ep.frames == frames):
            ep.end()
            self._end_speech("semantic")

    def _set_end_wait(self, wait: float, detector: str) -> bool:
        """Set the silence that ends this turn; ends it now (True) if that much has passed."""
        ep = self._ep
        assert ep is not None
        ep.end_silence_ms = wait
        if ep.speaking and ep.silence_ms >= wait:
            ep.end()
            self._end_speech(detector)
            return True
        return False

    async def _transcribe_pending(self, listen: _Listen) -> str:
        if listen.ears is None:
            return ""
        async with listen.lock:
            return (await listen.ears.transcribe_pending()).strip()

    async def _end_probability(self, text: str) -> float:
        detector = self.turn_detector
        if detector is None:
            detector = self.turn_detector = await anyio.to_thread.run_sync(_default_detector)
        history = None
        try:
            history = await self.session.ahistory()
        except Exception:  # noqa: BLE001 - the judgement goes on without the history
            history = None
        return float(await anyio.to_thread.run_sync(detector.end_probability, text,
                                                     history[-2:] if history else None))

    def _wait_for(self, p: float) -> float:
        """The silence that ends a turn judged ``p`` likely to be complete."""
        cfg = self.config
        policy = getattr(self.turn_detector, "silence_ms", None)
        if callable(policy):
            wait = float(policy(p, short_ms=cfg.min_end_silence_ms, long_ms=cfg.max_end_silence_ms))
        else:  # a detector with no policy of its own: the default one
            from .turn_detector import end_of_turn_silence_ms

            wait = end_of_turn_silence_ms(p, short_ms=cfg.min_end_silence_ms,
                                          long_ms=cfg.max_end_silence_ms)
        return min(max(wait, cfg.min_end_silence_ms), cfg.max_end_silence_ms)

    def _maybe_barge_in(self) -> None:
        cfg = self.config
        ep = self._ep
        assert ep is not None
        if (cfg.barge_in and not self._barged_this_speech and ep.run_ms >= cfg.min_interrupt_ms
                and self.agent_talking):
            self._barged_this_speech = True
            self.barge_in()

    def _start_speech(self) -> None:
        ep = self._ep
        assert ep is not None
        self._talking_at_start = self.agent_talking
        # Speech while the agent talks with barge-in off is not a turn: half duplex.
        self._ignoring = not self.config.barge_in and self.agent_talking
        self._gap = []
        ep.end_silence_ms = self._undecided_wait()
        if self._ignoring:
            ep.drop()
        else:
            ears = None
            if self._can_stream():
                from .streaming_ears import EarsStream

                ears = EarsStream(self.session.agent.ears)
                for f in ep.speech:
                    ears.append(f)
            self._listen = _Listen(ears)
        self._outbox.put_nowait({"type": "speech_started", "ignored": self._ignoring})

    def _drop_listen(self) -> None:
        listen, self._listen = self._listen, None
        self._gap = []
        if listen is not None:
            listen.gen += 1
            self._discard_draft(listen)

    def _end_speech(self, detector: str) -> None:
        ep = self._ep
        assert ep is not None
        # Speech over the agent too short to interrupt it ("uh-huh", a cough) is no turn.
        ignored = self._ignoring or (self._talking_at_start and not self._barged_this_speech)
        self._ignoring = False
        self._barged_this_speech = False
        frames = ep.take_speech(tail_ms=self.config.pre_roll_ms)
        listen, self._listen = self._listen, None
        self._gap = []
        times = _TurnTimes(self._t_voiced, self.speech_end_ms)
        decision: dict[str, Any] = listen.decision() if listen is not None else {"detector": detector}
        if detector == "push" or decision["detector"] != "semantic":
            # Ended by the client, or by silence with no judgement in force.
            decision["detector"] = detector
            if detector == "silence":
                decision["wait_ms"] = ep.end_silence_ms
        times.listen = decision
        self._outbox.put_nowait({
            "type": "speech_stopped", "ignored": ignored, "speech_end_ms": times.speech_end_ms,
            "since_speech_end_ms": round((monotonic() - self._t_voiced) * 1000, 1),
            "end_of_turn": decision})
        if ignored or not frames:
            if listen is not None:
                listen.gen += 1
                self._discard_draft(listen)
            return
        pcm = np.concatenate(frames).astype("<i2").tobytes()
        part = AudioPart(pcm=pcm, sample_rate=self.vad.sample_rate, mime="audio/L16")
        if listen is not None:
            listen.gen += 1  # no judgement of an earlier pause may act on this turn now
        self._start_turn(UserTurn(parts=[part]), monotonic(), times=times, listen=listen)

    def end_turn(self) -> bool:
        """End the user's turn now (push-to-talk release) instead of waiting for silence.
        Returns False when no speech was being collected."""
        if not self.user_speaking or self._ignoring:
            return False
        assert self._ep is not None
        self._ep.end()
        self._end_speech("push")
        return True

    def drop_speech(self) -> bool:
        """Forget the user speech collected so far (a client cleared its input buffer): no
        turn comes of it, and the rest of this stretch of speech is ignored up to the next
        pause. Returns False when no speech was being collected."""
        if self._ep is not None:
            self._ep.drop()  # the pre-roll is part of what was cleared
        if not self.user_speaking or self._ignoring:
            if self._ep is not None:
                self._ep.run_ms = 0.0
            return False
        self._ignoring = True
        self._drop_listen()
        return True

    # ------------------------------------------------------------------ drafts

    def _start_draft(self, listen: _Listen, text: str) -> None:
        """Start the agent's turn on an interim transcript, its output held (see _Gate)."""
        if listen.draft is not None or self._tg is None or self._closed:
            return
        draft = listen.draft = _Draft(text)
        self.drafts["started"] += 1
        # A spoken turn, heard already: its audio so far, with the interim transcript.
        assert self._ep is not None
        pcm = np.concatenate(self._ep.speech).astype("<i2").tobytes() if self._ep.speech else b""
        turn = UserTurn(parts=[AudioPart(pcm=pcm, sample_rate=self.vad.sample_rate, mime="audio/L16",
                                         transcript=text)])
        prev, self._last_done = self._last_done, draft.done
        self._tg.start_soon(self._draft_task, turn, draft, prev)

    async def _draft_task(self, turn: UserTurn, draft: _Draft, prev: anyio.Event | None) -> None:
        try:
            with draft.scope:
                if prev is not None:
                    await prev.wait()
                if draft.gate.state != "discarded":
                    times = _TurnTimes()
                    await self._run(turn, monotonic(), 0.0, times=times, draft=draft)
        except Exception as e:  # noqa: BLE001 - a failed draft is a failed turn, reported if kept
            log.exception("live draft failed")
            if draft.gate.state == "open":
                await self._outbox.put(ErrorEvent(message=f"{type(e).__name__}: {e}", stage="agent",
                                                  session_id=self.session.id))
        finally:
            draft.thinking.set()
            draft.done.set()

    def _discard_draft(self, listen: _Listen) -> None:
        draft, listen.draft = listen.draft, None
        if draft is None or draft.gate.state != "held":
            return
        draft.gate.discard()
        self.drafts["discarded"] += 1
        if draft.in_agent_turn:
            # It saves nothing (its commit says no), and whatever it still does stops now.
            self.session.interrupt("draft discarded", forget=True)
        else:
            draft.scope.cancel()

    # ------------------------------------------------------------------ other input

    def submit_text(self, text: str) -> None:
        """A typed user turn. Interrupts a running reply first (typing is a barge-in too)."""
        text = text.strip()
        if not text:
            raise OmniAgentError("the text turn is empty: type something")
        if self.agent_talking:
            self.barge_in("new input")
        self._start_turn(UserTurn(parts=[TextPart(text)]), monotonic())

    def submit(self, turn: UserTurn) -> None:
        """Any prepared user turn (text, audio file, image...). Interrupts a running reply."""
        if self.agent_talking:
            self.barge_in("new input")
        self._start_turn(turn, monotonic())

    def barge_in(self, reason: str = "barge-in") -> bool:
        """Stop the agent now: cancel the running turn and tell the client to stop playing.

        Returns False when the agent was neither busy nor (by estimate) playing.
        """
        now = monotonic()
        reply = self._reply
        busy = self.agent_busy
        playing = now < self._play_until
        if not busy and not playing:
            return False
        self._barge_t = now
        self.barge_in_times.append(now)
        self._play_until = 0.0
        turn_id = reply.turn_id if reply is not None else self.session.turn_id
        if reply is not None:
            reply.barged = True
            if self._client_reports_playback:
                self._playback_reported.clear()  # the next turn waits (briefly) for its report
        if busy and not self.session.interrupt(reason):
            # Still before the agent's turn proper (ASR, waiting): cancel our turn itself.
            assert self._turn_scope is not None
            self._turn_scope.cancel()
        # Audio already queued for the client will never be wanted now.
        self._outbox.drop(lambda m: isinstance(m, AudioChunk))
        self._outbox.put_nowait({"type": "stop_playback", "turn_id": turn_id, "reason": reason})
        if not busy:
            # The reply was already complete: nothing to cancel, only playback to stop.
            self.cancel_latencies.append(0.0)
        return True

    def report_playback(self, turn_id: int, played_ms: float, final: bool = True, *,
                        cut: bool = False) -> None:
        """The client played ``played_ms`` of turn ``turn_id``'s audio. ``final``: it has
        stopped playing it (after a barge-in); memory is then cut to what was heard.
        ``cut``: cut memory even without a barge-in (the client stopped playback itself,
        e.g. a Realtime ``conversation.item.truncate``)."""
        self._client_reports_playback = True
        reply = self._reply
        if reply is None or reply.turn_id != turn_id or played_ms < 0:
            return
        if not final:
            # A progress report: the client's clock beats our estimate of playback end.
            total = sum(reply.seconds.values())
            left = total - played_ms / 1000.0
            if not self.agent_busy:
                self._play_until = monotonic() + max(0.0, left)
            return
        if (reply.barged or cut) and self._revise_memory(reply, played_ms / 1000.0):
            return  # the revision sets _playback_reported when it has landed
        self._playback_reported.set()

    def _revise_memory(self, reply: ReplyAudio, played: float) -> bool:
        """Cut memory to what was heard; True when a revision task was started (it lets
        the next turn go when it has landed)."""
        heard = heard_text(reply.clauses(), played)
        if not reply.done:
            reply.pending_heard = heard  # applied when the turn has ended
            return False
        if self._tg is None:
            return False
        # The history store may be across the network (shared by several replicas): the
        # revision runs as a task of this session, and the next turn waits for it, so the
        # next turn's history is the revised one.
        self._playback_reported.clear()
        self._tg.start_soon(self._revise_then_go_on, reply, heard)
        return True

    async def _revise_then_go_on(self, reply: ReplyAudio, heard: str) -> None:
        try:
            await self._apply_heard(reply, heard)
        finally:
            self._playback_reported.set()

    async def _apply_heard(self, reply: ReplyAudio, heard: str) -> None:
        reply.pending_heard = None
        if heard == (reply.remembered or "") or self._reply is not reply:
            return
        if await self.session.arevise_last_reply(heard):
            reply.remembered = heard
            self._outbox.put_nowait({"type": "memory_revised", "turn_id": reply.turn_id,
                                     "heard": heard})

    # ------------------------------------------------------------------ turns

    def _start_turn(self, turn: UserTurn, t_input_end: float, *, times: _TurnTimes | None = None,
                    listen: _Listen | None = None) -> None:
        if self._tg is None:
            raise OmniAgentError("the live session is not running: use it as "
                                 "`async with LiveSession(...) as live:`")
        if self._listen is not None and listen is None:
            self._drop_listen()  # a typed turn while the user was speaking
        prev = self._last_done
        scope, done = anyio.CancelScope(), anyio.Event()
        self._turn_scope, self._turn_done, self._last_done = scope, done, done
        self._tg.start_soon(self._turn, turn, t_input_end, prev, scope, done,
                            times or _TurnTimes(), listen)

    async def _turn(self, turn: UserTurn, t0: float, prev: anyio.Event | None,
                    scope: anyio.CancelScope, done: anyio.Event, times: _TurnTimes,
                    listen: _Listen | None) -> None:
        try:
            with scope:
                await self._turn_body(turn, t0, prev, times, listen)
        finally:
            done.set()

    async def _turn_body(self, turn: UserTurn, t0: float, prev: anyio.Event | None,
                         times: _TurnTimes, listen: _Listen | None) -> None:
        draft = listen.draft if listen is not None else None
        try:
            if listen is not None and listen.ears is not None:
                text = await self._final_transcript(listen, turn, times)
                if draft is not None and draft.gate.state == "held" and _same_words(draft.text, text):
                    await self._keep_draft(draft, times)
                    return
                if draft is not None:
                    times.draft = "restarted"
                    self._discard_draft(listen)
                    await draft.done.wait()
                if not text:
                    await self._outbox.put({"type": "no_speech",
                                            "asr_ms": round(listen.asr_s * 1000, 1)})
                    return
        except BaseException:
            if draft is not None:  # cancelled (barge-in, closing): the draft goes with it
                draft.gate.discard()
                draft.scope.cancel()
            raise
        if prev is not None:
            # It was interrupted (barge-in) just before: let it finish cancelling.
            await prev.wait()
        if not self._playback_reported.is_set():
            with anyio.move_on_after(self.config.playback_wait_ms / 1000.0):
                await self._playback_reported.wait()
        agent = self.session.agent
        asr_s = listen.asr_s if listen is not None else 0.0
        try:
            audio = [p for p in turn.parts if isinstance(p, AudioPart) and p.transcript is None]
            if audio and "audio" not in agent.thinker.accepts and agent.ears is not None:
                # Transcribed here (not in the agent) so that noise the VAD took for speech
                # ends quietly instead of sending an empty turn to the Thinker.
                t_asr = monotonic()
                try:
                    for p in audio:
                        p.transcript = (await agent.ears.transcribe(p)).strip()
                except AudioInputError as e:
                    await self._outbox.put({"type": "no_speech", "reason": str(e)})
                    return
                asr_s = monotonic() - t_asr
                times.t_final = monotonic()
                if not any(p.transcript for p in audio) and not turn.text:
                    await self._outbox.put({"type": "no_speech", "asr_ms": round(asr_s * 1000, 1)})
                    return
            await self._run(turn, t0, asr_s, times=times)
        except OmniAgentError as e:
            await self._outbox.put(ErrorEvent(message=str(e), stage="input",
                                              session_id=self.session.id))
        except Exception as e:  # noqa: BLE001 - a failed turn must not end the live session
            log.exception("live turn failed")
            await self._outbox.put(ErrorEvent(message=f"{type(e).__name__}: {e}", stage="agent",
                                              session_id=self.session.id))

    async def _final_transcript(self, listen: _Listen, turn: UserTurn, times: _TurnTimes) -> str:
        """The whole turn's transcript from the streaming ears: only the audio after the
        last transcribed pause is left to recognise."""
        t = monotonic()
        try:
            async with listen.lock:
                text = (await listen.ears.final()).strip()
        except AudioInputError:
            text = ""
        listen.asr_s = monotonic() - t
        times.t_final = monotonic()
        for p in turn.parts:
            if isinstance(p, AudioPart):
                p.transcript = text
        if text:
            await self._outbox.put({"type": "transcript", "text": text, "final": True,
                                    "turn_id": None})
        return text

    async def _keep_draft(self, draft: _Draft, times: _TurnTimes) -> None:
        """The end of turn is confirmed with the draft's words: its held output goes out,
        and it is the agent's turn from now on (barge-in cancels it)."""
        self.drafts["kept"] += 1
        times.draft = "kept"
        draft.times, draft.t_confirmed = times, monotonic()
        draft.gate.open()
        try:
            await draft.done.wait()
        except BaseException:
            # Cancelled (a barge-in before the draft's agent turn was reached, closing).
            draft.scope.cancel()
            raise

    async def _run(self, turn: UserTurn, t0: float, asr_s: float, *, times: _TurnTimes,
                   draft: _Draft | None = None) -> None:
        session = self.session
        st = _TurnOut()
        self.turns += 1
        commit = draft.gate.commit if draft is not None else None
        # The agent's turn owns its Thinker and Talker tasks: if this task is cancelled,
        # leaving the block cancels and awaits them (nothing is left running).
        async with session.turn(turn, commit=commit) as events:
            if draft is None:
                async for ev in events:
                    await self._deliver(ev, st)
            else:
                draft.in_agent_turn = True
                await self._run_draft(events, st, draft)
                if draft.gate.state != "open":
                    return
                times, t0 = draft.times or times, draft.t_confirmed
        if st.reply is None or st.end is None:
            return
        await self._after_turn(st, t0, asr_s, times)
        if self._tg is not None and not self._closed:
            self._tg.start_soon(self._prepare_next_turn)

    async def _prepare_next_turn(self) -> None:
        """Between turns, while the reply plays: the turn detector and the Thinker read the
        conversation so far, so that the next pause and the next draft cost only the new
        words (see :meth:`Session.prepare_next_turn`)."""
        try:
            history = await self.session.ahistory()
        except Exception as e:  # noqa: BLE001 - only a head start: the next turn works without
            log.debug("live session: preparing the next turn: no history (%s)", e)
            return
        await self._prepare_detector(history)
        try:
            await self.session.prepare_next_turn(history)
        except Exception as e:  # noqa: BLE001 - only a head start: the next turn works without
            log.debug("live session: preparing the next turn failed: %s", e)

    async def _prepare_detector(self, history: list[Any] | None = None) -> None:
        """Let the turn detector read the context of its next judgement (the conversation
        so far: ``history``, else read here), so the next pause costs only the new words."""
        from .turn_detector import PreparesTurn

        detector = self.turn_detector
        if not self._judges() or not isinstance(detector, PreparesTurn):
            return
        try:
            if history is None:
                history = await self.session.ahistory()
            await anyio.to_thread.run_sync(detector.prepare, history[-2:] if history else None)
        except Exception as e:  # noqa: BLE001 - only a head start: the judgement works without
            log.debug("live session: preparing the turn detector failed: %s", e)

    async def _run_draft(self, events: AsyncIterator[Event], st: "_TurnOut", draft: _Draft) -> None:
        """A draft's events: held by its gate until the end of turn is decided, then sent
        in order (or dropped)."""
        gate = draft.gate

        async def pump() -> None:
            await gate.decided.wait()
            while gate.held and gate.state == "open":
                await self._deliver(gate.held.popleft(), st)
            gate.flushing = False

        async with task_group() as tg:
            tg.start_soon(pump)
            async for ev in events:
                if type(ev) is not UserTurn:
                    draft.thinking.set()
                if gate.state == "discarded":
                    continue  # read to the end: the agent's turn finishes (forgetting itself)
                if gate.state == "open" and not gate.flushing:
                    await self._deliver(ev, st)
                    continue
                gate.held.append(ev)
                if len(gate.held) >= gate.cap and gate.state == "held":
                    await gate.decided.wait()
            if gate.state == "held":
                await gate.decided.wait()

    async def _deliver(self, ev: Any, st: "_TurnOut") -> None:
        """Send one of the turn's events, keeping the playback accounting."""
        t = type(ev)
        reply = st.reply
        if t is UserTurn:
            reply = st.reply = self._reply = ReplyAudio(ev.turn_id)
            self._play_until = 0.0
        elif reply is not None and reply.barged and t in (AudioChunk, Utterance):
            return  # produced just before the cancel landed: never sent
        elif t is AudioChunk:
            assert reply is not None
            now = monotonic()
            if st.first_audio is None:
                st.first_audio = now
            reply.add_audio(ev)
            self._play_until = max(now, self._play_until) + ev.duration
        elif t is Utterance:
            assert reply is not None
            reply.texts[ev.index] = ev.text
        elif t is TextDelta:
            if st.first_token is None:
                st.first_token = monotonic()
        elif t is Interruption:
            latency = None
            if self._barge_t is not None:
                latency = monotonic() - self._barge_t
                self.cancel_latencies.append(latency)
                self._barge_t = None
            await self._outbox.put({"type": "interruption", "reason": ev.reason,
                                    "turn_id": ev.turn_id, "session_id": ev.session_id,
                                    "cancel_ms": None if latency is None
                                    else round(latency * 1000, 2)})
            return
        elif t is TurnEnd:
            st.end = ev
        await self._outbox.put(ev)

    async def _after_turn(self, st: "_TurnOut", t0: float, asr_s: float, times: _TurnTimes) -> None:
        session, reply, end = self.session, st.reply, st.end
        assert reply is not None and end is not None
        reply.done = True
        # What the agent saved: the spoken text (voice) or the display text (text agent).
        reply.remembered = end.spoken if session.agent.talker is not None else end.text
        if reply.pending_heard is not None:
            # The client's playback report came in while the turn was still ending.
            await self._apply_heard(reply, reply.pending_heard)
        trace = session.last_trace
        timings = dict(trace.timings) if trace is not None else {}
        first_token = None
        if trace is not None and "thinker_first_token" in timings:
            first_token = trace.started + timings["thinker_first_token"]
        elif st.first_token is not None:
            first_token = st.first_token

        def since_end(t: float | None) -> float | None:
            if t is None or times.speech_end is None:
                return None
            return round((t - times.speech_end) * 1000, 1)

        await self._outbox.put({
            "type": "latency",
            "turn_id": end.turn_id,
            "asr_ms": round(asr_s * 1000, 1),
            "first_audio_ms": None if st.first_audio is None else round((st.first_audio - t0) * 1000, 1),
            "turn_ms": round((monotonic() - t0) * 1000, 1),
            "stages_ms": {k: round(v * 1000, 1) for k, v in timings.items()},
            "speech_end_ms": times.speech_end_ms,
            "from_speech_end_ms": None if times.speech_end is None else {
                "transcript_final": since_end(times.t_final),
                "first_token": since_end(first_token),
                "first_audio_sent": since_end(st.first_audio)},
            "draft": times.draft,
            "end_of_turn": times.listen,
        })
        if trace is not None:
            data = trace.to_dict()
            if times.listen is not None:
                data["end_of_turn"] = {**times.listen, "draft": times.draft,
                                       "drafts": dict(self.drafts)}
            await self._outbox.put({"type": "trace", "turn_id": end.turn_id, "trace": data})

    # ------------------------------------------------------------------ output

    async def messages(self) -> AsyncIterator[LiveMessage]:
        """Everything to send to the client, in order, until :meth:`aclose`."""
        while True:
            msg = await self._outbox.get()
            if msg is None:
                return
            yield msg

    async def post(self, msg: dict) -> None:
        """Queue a transport's own message (an acknowledgement, an error) in order with the
        session's messages; waits while the outbox is full (backpressure on the client)."""
        await self._outbox.put(msg)

    async def next_message(self) -> LiveMessage | None:
        """The next message (None after :meth:`aclose`)."""
        return await self._outbox.get()

    async def wait_idle(self) -> None:
        """Wait until the running turn (if any) has ended."""
        done = self._turn_done
        if done is not None:
            await done.wait()

    async def aclose(self, *, finish: bool = False) -> None:
        """End the session: cancel the running turn (or, with ``finish``, let it end) and
        wait until it is done; no more messages after that. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._drop_listen()
        if not finish:
            # The last few messages of a cancelled turn (interruption, turn end) still go
            # to a client that reads, but never wait for room: a turn must not stay blocked
            # on a client that stopped reading, holding its slot.
            self._outbox.unbound()
            if self.agent_busy and not self.session.interrupt("session closed"):
                assert self._turn_scope is not None
                self._turn_scope.cancel()
        await self.wait_idle()
        if self._last_done is not None:
            await self._last_done.wait()
        self._outbox.close()


class _TurnOut:
    """What one turn has sent so far."""

    __slots__ = ("reply", "end", "first_audio", "first_token")

    def __init__(self) -> None:
        self.reply: ReplyAudio | None = None
        self.end: TurnEnd | None = None
        self.first_audio: float | None = None
        self.first_token: float | None = None
