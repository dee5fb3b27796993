"""Live voice sessions: audio streams in, VAD finds each turn, the user can barge in.

A :class:`LiveSession` wraps one agent :class:`~omni_agent.agent.Session` for a caller
that streams microphone audio (the WebSocket server, a desktop app, a phone bridge)::

    async with LiveSession(agent.session(), vad=vad) as live:   # owns the session's tasks
        live.feed(pcm16_bytes)              # as audio arrives, any chunk size
        async for msg in live.messages():   # events (UserTurn, Utterance, AudioChunk, TurnEnd,
            ...                             # Interruption ...) and small control dicts

What it does with the audio:

* a streaming VAD scores each frame; speech lasting ``min_speech_ms`` starts a user turn,
  ``end_silence_ms`` of silence ends it, and the turn's audio goes to the agent's ears
  (ASR) and then the Thinker;
* **barge-in**: speech lasting ``min_interrupt_ms`` while the agent is busy or its audio is
  still playing calls :meth:`Session.interrupt`, which cancels Thinker, tools and Talker.
  The time from detection to "everything cancelled" is measured for every barge-in
  (``cancel_ms`` on the ``interruption`` message; :attr:`LiveSession.cancel_latencies`);
* after a barge-in the agent's memory keeps only what was spoken; when the client reports
  how much of the reply it actually played (:meth:`report_playback`), memory is cut to what
  the user heard.

Messages out are :class:`~omni_agent.events.Event` objects plus dicts with a ``type``
(``speech_started``, ``speech_stopped``, ``stop_playback``, ``no_speech``, ``latency``,
``memory_revised``, ``error``); docs/protocol.md describes them on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from time import monotonic
from typing import Any, AsyncIterator, Callable, Protocol, Union, runtime_checkable

import anyio
import numpy as np

from .errors import AudioInputError, ConfigError, OmniAgentError
from .events import (
    AudioChunk,
    AudioPart,
    ErrorEvent,
    Event,
    Interruption,
    TextPart,
    TurnEnd,
    UserTurn,
    Utterance,
)
from .tasks import task_group

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


# --------------------------------------------------------------------------- VAD seam


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


class _EnergyStream:
    __slots__ = ("frame_samples", "_on", "_off", "_level")

    def __init__(self, frame_samples: int, on: float, off: float):
        self.frame_samples = frame_samples
        self._on, self._off = on, off
        self._level = 0.0

    def speech_prob(self, frame: np.ndarray) -> float:
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float32)))) if frame.size else 0.0
        db = 20.0 * np.log10(rms + 1e-9)
        # A linear ramp between the two levels: loud frames score 1, quiet ones 0.
        return float(min(1.0, max(0.0, (db - self._off) / (self._on - self._off))))

    def reset(self) -> None:
        self._level = 0.0


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


def default_vad() -> VAD:
    """The silero VAD from :mod:`omni_agent.ears` (ONNX model from the silero-vad wheel),
    loaded once and shared: each live session only adds its small recurrent state.

    Raises :class:`ConfigError` when the speech extra is not installed.
    """
    try:
        from . import ears
    except ImportError as e:
        raise ConfigError("the live VAD needs the speech extra: pip install 'omni-agent[speech]' "
                          f"({e}); or pass vad=EnergyVAD() for a loudness-only VAD") from e
    return _adapt_vad(ears)


def _adapt_vad(ears_module: Any) -> VAD:
    """Wrap the ears module's silero VAD in the :class:`VAD` seam."""
    cls = getattr(ears_module, "SileroVAD", None)
    if cls is None:
        raise ConfigError("omni_agent.ears has no SileroVAD class")
    vad = cls()
    if isinstance(vad, VAD):
        return vad
    return _SileroAdapter(vad)


class _SileroAdapter:
    """Shares one loaded frame scorer (``omni_agent.ears.SileroVAD``: the ONNX session)
    between sessions; each stream is a shallow copy with its own recurrent state."""

    def __init__(self, vad: Any):
        self._proto = vad
        self.sample_rate = int(getattr(vad, "sample_rate", 16000))

    def new_stream(self) -> VADStream:
        import copy

        inner = copy.copy(self._proto)  # shares the model, not the state
        inner.reset()
        return _CopiedStream(inner)


class _CopiedStream:
    __slots__ = ("_inner", "frame_samples")

    def __init__(self, inner: Any):
        self._inner = inner
        self.frame_samples = int(getattr(inner, "frame_samples", 512))

    def speech_prob(self, frame: np.ndarray) -> float:
        return float(self._inner(frame))

    def reset(self) -> None:
        self._inner.reset()


# --------------------------------------------------------------------------- config


@dataclass
class LiveConfig:
    """How a live session listens.

    * ``sample_rate`` — rate of the int16 mono PCM given to :meth:`LiveSession.feed`.
    * ``barge_in`` — True: user speech while the agent talks interrupts it; False: that
      speech is ignored (half duplex, e.g. loudspeakers without echo cancellation).
    * ``min_speech_ms`` — speech at least this long starts a user turn.
    * ``min_interrupt_ms`` — speech at least this long, while the agent talks, interrupts.
    * ``end_silence_ms`` — this much silence after speech ends the user's turn.
    * ``pre_roll_ms`` — audio kept from just before speech was detected (word onsets).
    * ``threshold`` — VAD probability that counts as speech.
    * ``max_turn_seconds`` — longest user turn (at most 40 minutes).
    * ``playback_wait_ms`` — after a barge-in, how long the next turn waits for the client
      to report how much of the reply it played (so memory is cut first). Only clients
      that have sent a playback report before are waited for.
    """

    sample_rate: int = 16000
    barge_in: bool = True
    min_speech_ms: int = 150
    min_interrupt_ms: int = 200
    end_silence_ms: int = 600
    pre_roll_ms: int = 300
    threshold: float = 0.5
    max_turn_seconds: float = MAX_AUDIO_SECONDS
    playback_wait_ms: int = 400

    def check(self) -> "LiveConfig":
        """Validate the values; raises :class:`ConfigError` naming the bad one."""
        if not 8000 <= self.sample_rate <= 192000:
            raise ConfigError(f"sample_rate {self.sample_rate} is out of range: use 8000..192000 Hz")
        for name in ("min_speech_ms", "min_interrupt_ms", "end_silence_ms", "pre_roll_ms",
                     "playback_wait_ms"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v < 0 or v > 60_000:
                raise ConfigError(f"{name} must be between 0 and 60000 ms, not {v!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, not {self.threshold!r}")
        if not 0 < self.max_turn_seconds <= MAX_AUDIO_SECONDS:
            raise ConfigError(f"max_turn_seconds must be in (0, {MAX_AUDIO_SECONDS:.0f}] "
                              f"(40 minutes at most), not {self.max_turn_seconds!r}")
        return self


# --------------------------------------------------------------------------- helpers


def heard_text(clauses: list[tuple[str, float]], played_seconds: float) -> str:
    """The part of a reply a listener heard, given the clauses in the order they were
    played as ``(text, audio seconds)`` and how many seconds were played.

    Whole clauses are kept while they fit; the clause playing when playback stopped is
    cut at the word reached, assuming words are spread evenly over its audio::

        heard_text([("Hello there.", 1.0), ("How are you?", 1.0)], 1.5)  # 'Hello there. How'
    """
    out: list[str] = []
    left = max(0.0, played_seconds)
    for text, seconds in clauses:
        if left <= 0:
            break
        if seconds <= left + 1e-3:
            out.append(text)
            left -= seconds
            continue
        words = text.split()
        n = int(len(words) * left / seconds) if seconds > 0 else 0
        if n:
            out.append(" ".join(words[:n]))
        break
    return " ".join(out).strip()


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


class _ReplyAudio:
    """What one turn sent out, clause by clause: for cutting memory at playback position."""

    __slots__ = ("turn_id", "texts", "order", "seconds", "complete", "done", "remembered",
                 "barged", "pending_heard")

    def __init__(self, turn_id: int):
        self.turn_id = turn_id
        self.texts: dict[int, str] = {}
        self.order: list[int] = []
        self.seconds: dict[int, float] = {}
        self.complete: set[int] = set()
        self.done = False
        self.remembered: str | None = None  # what the agent saved for this reply
        self.barged = False
        self.pending_heard: str | None = None

    def add_audio(self, chunk: AudioChunk) -> None:
        i = chunk.utterance_index
        if i not in self.seconds:
            self.order.append(i)
            self.seconds[i] = 0.0
        self.seconds[i] += chunk.duration
        if chunk.final:
            self.complete.add(i)

    def clauses(self) -> list[tuple[str, float]]:
        """(text, seconds of audio) per clause in playing order. A clause cut off mid-way
        was never fully synthesized, so its full length is estimated from the speaking
        rate of the complete clauses (else ~14 characters a second)."""
        chars = sum(len(self.texts.get(i, "")) for i in self.complete)
        secs = sum(self.seconds[i] for i in self.complete)
        rate = chars / secs if chars and secs > 0 else 14.0
        out = []
        for i in self.order:
            text = self.texts.get(i, "")
            seconds = self.seconds[i]
            if i not in self.complete:
                seconds = max(seconds, len(text) / rate)
            out.append((text, seconds))
        return out


# --------------------------------------------------------------------------- the session


class LiveSession:
    """A live voice conversation on top of an agent session (see the module docstring).

    ``session`` — the agent :class:`~omni_agent.agent.Session` (its history is the
    conversation's memory). ``vad`` — a :class:`VAD` (shared between sessions); None:
    :func:`default_vad`. ``config`` — a :class:`LiveConfig`. ``outbox_size`` bounds the
    messages waiting for a slow client.

    Use it as an async context manager: the block owns the session's task group, so each
    user turn (speech recognition, the agent's turn) is a task of it, cancelled by a
    barge-in and awaited when the block ends. Inside, the caller feeds audio with
    :meth:`feed` (and text with :meth:`submit_text`) and reads :meth:`messages` (in
    another task of its own); :meth:`aclose` ends the session early.
    """

    def __init__(self, session: Any, *, vad: VAD | None = None, config: LiveConfig | None = None,
                 outbox_size: int = 128):
        self.session = session
        self.config = (config or LiveConfig()).check()
        self.vad = vad if vad is not None else default_vad()
        self._stream: VADStream | None = None  # made on the first audio: idle sessions stay small
        self._resampler: Any = None
        self._frame_ms = 0.0
        self._pending = np.zeros(0, dtype=np.int16)
        self._outbox = _Outbox(outbox_size)
        # VAD state
        self.user_speaking = False
        self._run_ms = 0.0  # length of the current stretch of speech
        self._silence_ms = 0.0
        self._onset: deque[np.ndarray] = deque()
        self._turn_audio: list[np.ndarray] = []
        self._turn_samples = 0
        self._ignoring = False  # speech heard while barge-in is off and the agent talks
        self._barged_this_speech = False
        self._talking_at_start = False
        # turn state: the running turn's cancel scope and a flag set when it has ended
        self._tg: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._turn_scope: anyio.CancelScope | None = None
        self._turn_done: anyio.Event | None = None
        self._reply: _ReplyAudio | None = None
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

    # ------------------------------------------------------------------ state

    @property
    def agent_busy(self) -> bool:
        """True while a turn runs (listening to ASR, thinking or talking)."""
        return self._turn_done is not None and not self._turn_done.is_set()

    async def __aenter__(self) -> "LiveSession":
        if self._tg is not None:
            raise OmniAgentError("this live session is already running")
        self._stack = contextlib.AsyncExitStack()
        self._tg = await self._stack.enter_async_context(task_group())
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        tg, stack = self._tg, self._stack
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
            self._stream = self.vad.new_stream()
            self._frame_ms = 1000.0 * self._stream.frame_samples / self.vad.sample_rate
            if self.config.sample_rate != self.vad.sample_rate:
                import soxr

                self._resampler = soxr.ResampleStream(self.config.sample_rate, self.vad.sample_rate,
                                                      1, dtype="int16")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples)
        buf = np.concatenate((self._pending, samples)) if self._pending.size else samples
        n = self._stream.frame_samples
        i = 0
        while i + n <= buf.size:
            self._on_frame(buf[i:i + n])
            i += n
        self._pending = buf[i:].copy()

    def _on_frame(self, frame: np.ndarray) -> None:
        cfg = self.config
        assert self._stream is not None
        prob = self._stream.speech_prob(frame.astype(np.float32) / 32768.0)
        speech = prob >= cfg.threshold
        fm = self._frame_ms
        if not self.user_speaking:
            if speech:
                self._run_ms += fm
                self._onset.append(frame)
                self._maybe_barge_in()
                if self._run_ms >= cfg.min_speech_ms:
                    self._start_speech()
            else:
                self._run_ms = 0.0
                self._barged_this_speech = False
                self._onset.append(frame)
                # The onset buffer doubles as pre-roll: keep only the last pre_roll_ms.
                keep = max(1, int(cfg.pre_roll_ms / fm))
                while len(self._onset) > keep:
                    self._onset.popleft()
            return
        # The user is speaking. Speech goes on while the probability stays above a lower
        # threshold (hysteresis), so soft syllables do not count as silence.
        if not self._ignoring:
            self._turn_audio.append(frame)
            self._turn_samples += frame.size
        if prob >= max(0.01, cfg.threshold - 0.15):
            self._silence_ms = 0.0
            self._run_ms += fm
            self._maybe_barge_in()
        else:
            self._silence_ms += fm
            if self._silence_ms >= cfg.end_silence_ms:
                self._end_speech()
                return
        if not self._ignoring and self._turn_samples > cfg.max_turn_seconds * self.vad.sample_rate:
            self._outbox.put_nowait({
                "type": "error", "code": "audio_too_long",
                "message": f"the user turn ran past {cfg.max_turn_seconds:.0f} s of speech; it was "
                           "dropped. Pause between turns (or raise max_turn_seconds, at most 2400 s)."})
            # The rest of this stretch of speech is ignored too, up to the next pause.
            self._ignoring = True
            self._turn_audio = []
            self._turn_samples = 0

    def _maybe_barge_in(self) -> None:
        cfg = self.config
        if (cfg.barge_in and not self._barged_this_speech and self._run_ms >= cfg.min_interrupt_ms
                and self.agent_talking):
            self._barged_this_speech = True
            self.barge_in()

    def _start_speech(self) -> None:
        self.user_speaking = True
        self._silence_ms = 0.0
        self._talking_at_start = self.agent_talking
        # Speech while the agent talks with barge-in off is not a turn: half duplex.
        self._ignoring = not self.config.barge_in and self.agent_talking
        if not self._ignoring:
            self._turn_audio = list(self._onset)
            self._turn_samples = sum(f.size for f in self._turn_audio)
        self._onset.clear()
        self._outbox.put_nowait({"type": "speech_started", "ignored": self._ignoring})

    def _reset_speech(self) -> None:
        self._turn_audio = []
        self._turn_samples = 0
        self._run_ms = 0.0
        self._silence_ms = 0.0
        self._barged_this_speech = False
        self._onset.clear()

    def _end_speech(self) -> None:
        self.user_speaking = False
        # Speech over the agent too short to interrupt it ("uh-huh", a cough) is no turn.
        ignored = self._ignoring or (self._talking_at_start and not self._barged_this_speech)
        self._ignoring = False
        audio = self._turn_audio
        self._reset_speech()
        self._outbox.put_nowait({"type": "speech_stopped", "ignored": ignored})
        if ignored or not audio:
            return
        pcm = np.concatenate(audio).astype("<i2").tobytes()
        part = AudioPart(pcm=pcm, sample_rate=self.vad.sample_rate, mime="audio/L16")
        self._start_turn(UserTurn(parts=[part]), monotonic())

    def end_turn(self) -> bool:
        """End the user's turn now (push-to-talk release) instead of waiting for silence.
        Returns False when no speech was being collected."""
        if not self.user_speaking or self._ignoring:
            return False
        self._end_speech()
        return True

    def drop_speech(self) -> bool:
        """Forget the user speech collected so far (a client cleared its input buffer): no
        turn comes of it, and the rest of this stretch of speech is ignored up to the next
        pause. Returns False when no speech was being collected."""
        self._onset.clear()  # the pre-roll is part of what was cleared
        if not self.user_speaking or self._ignoring:
            self._run_ms = 0.0
            return False
        self._ignoring = True
        self._turn_audio = []
        self._turn_samples = 0
        return True

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

    def _revise_memory(self, reply: _ReplyAudio, played: float) -> bool:
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

    async def _revise_then_go_on(self, reply: _ReplyAudio, heard: str) -> None:
        try:
            await self._apply_heard(reply, heard)
        finally:
            self._playback_reported.set()

    async def _apply_heard(self, reply: _ReplyAudio, heard: str) -> None:
        reply.pending_heard = None
        if heard == (reply.remembered or "") or self._reply is not reply:
            return
        if await self.session.arevise_last_reply(heard):
            reply.remembered = heard
            self._outbox.put_nowait({"type": "memory_revised", "turn_id": reply.turn_id,
                                     "heard": heard})

    # ------------------------------------------------------------------ turns

    def _start_turn(self, turn: UserTurn, t_input_end: float) -> None:
        if self._tg is None:
            raise OmniAgentError("the live session is not running: use it as "
                                 "`async with LiveSession(...) as live:`")
        prev = self._turn_done
        scope, done = anyio.CancelScope(), anyio.Event()
        self._turn_scope, self._turn_done = scope, done
        self._tg.start_soon(self._turn, turn, t_input_end, prev, scope, done)

    async def _turn(self, turn: UserTurn, t0: float, prev: anyio.Event | None,
                    scope: anyio.CancelScope, done: anyio.Event) -> None:
        try:
            with scope:
                await self._turn_body(turn, t0, prev)
        finally:
            done.set()

    async def _turn_body(self, turn: UserTurn, t0: float, prev: anyio.Event | None) -> None:
        if prev is not None:
            # It was interrupted (barge-in) just before: let it finish cancelling.
            await prev.wait()
        if not self._playback_reported.is_set():
            with anyio.move_on_after(self.config.playback_wait_ms / 1000.0):
                await self._playback_reported.wait()
        agent = self.session.agent
        asr_s = 0.0
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
                if not any(p.transcript for p in audio) and not turn.text:
                    await self._outbox.put({"type": "no_speech", "asr_ms": round(asr_s * 1000, 1)})
                    return
            await self._run(turn, t0, asr_s)
        except OmniAgentError as e:
            await self._outbox.put(ErrorEvent(message=str(e), stage="input",
                                              session_id=self.session.id))
        except Exception as e:  # noqa: BLE001 - a failed turn must not end the live session
            log.exception("live turn failed")
            await self._outbox.put(ErrorEvent(message=f"{type(e).__name__}: {e}", stage="agent",
                                              session_id=self.session.id))

    async def _run(self, turn: UserTurn, t0: float, asr_s: float) -> None:
        session = self.session
        reply: _ReplyAudio | None = None
        first_audio: float | None = None
        end: TurnEnd | None = None
        self.turns += 1
        # The agent's turn owns its Thinker and Talker tasks: if this task is cancelled,
        # leaving the block cancels and awaits them (nothing is left running).
        async with session.turn(turn) as events:
            async for ev in events:
                t = type(ev)
                if t is UserTurn:
                    reply = self._reply = _ReplyAudio(ev.turn_id)
                    self._play_until = 0.0
                elif reply is not None and reply.barged and t in (AudioChunk, Utterance):
                    continue  # produced just before the cancel landed: never sent
                elif t is AudioChunk:
                    assert reply is not None
                    now = monotonic()
                    if first_audio is None:
                        first_audio = now
                    reply.add_audio(ev)
                    self._play_until = max(now, self._play_until) + ev.duration
                elif t is Utterance:
                    assert reply is not None
                    reply.texts[ev.index] = ev.text
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
                    continue
                elif t is TurnEnd:
                    end = ev
                await self._outbox.put(ev)
        if reply is None or end is None:
            return
        reply.done = True
        # What the agent saved: the spoken text (voice) or the display text (text agent).
        reply.remembered = end.spoken if session.agent.talker is not None else end.text
        if reply.pending_heard is not None:
            # The client's playback report came in while the turn was still ending.
            await self._apply_heard(reply, reply.pending_heard)
        trace = session.last_trace
        timings = dict(trace.timings) if trace is not None else {}
        await self._outbox.put({
            "type": "latency",
            "turn_id": end.turn_id,
            "asr_ms": round(asr_s * 1000, 1),
            "first_audio_ms": None if first_audio is None else round((first_audio - t0) * 1000, 1),
            "turn_ms": round((monotonic() - t0) * 1000, 1),
            "stages_ms": {k: round(v * 1000, 1) for k, v in timings.items()},
        })
        if trace is not None:
            await self._outbox.put({"type": "trace", "turn_id": end.turn_id, "trace": trace.to_dict()})

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
        if not finish:
            # The last few messages of a cancelled turn (interruption, turn end) still go
            # to a client that reads, but never wait for room: a turn must not stay blocked
            # on a client that stopped reading, holding its slot.
            self._outbox.unbound()
            if self.agent_busy and not self.session.interrupt("session closed"):
                assert self._turn_scope is not None
                self._turn_scope.cancel()
        await self.wait_idle()
        self._outbox.close()
