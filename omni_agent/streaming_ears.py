"""Streaming ears: a user turn is recognised piece by piece while the user speaks.

The live session appends the turn's speech frames as they arrive and marks each pause
the VAD sees; the audio up to a pause is a closed *segment*, transcribed in a worker
thread while the session waits to decide whether the turn is over. At the end of the
turn only the audio after the last pause is left to recognise::

    stream = EarsStream(Ears())
    for frame in frames:                 # int16 16 kHz frames of this user turn
        stream.append(frame)
        if vad_saw_a_pause:
            stream.mark_pause()
            interim = await stream.transcribe_pending()   # in the background
    text = await stream.final()          # the whole turn's transcript

How the pieces are joined (measured on the Piper round-trip set, ``bench/asr.py``):

* whisper's cost hardly depends on the clip's length (it pads to 30 s), so each
  recognition hears all the closed segments of the turn so far, up to ``window_s``; the
  last one of a turn hears it whole, and the transcript is as good as whole-turn
  whisper's (1.03 % WER both; segments heard one by one, even with the text before as
  prompt: 2.8 %, 9 % on turns with a pause — "Remind me too. Water the plants");
* past the window, older segments are committed with their text, which goes to whisper
  as the prompt (``initial_prompt``) of the next;
* a pause closes a segment only once it holds ``min_segment_s`` of audio.

:class:`EarsStream` keeps the bookkeeping sans-IO (:meth:`EarsStream.next_job` /
:meth:`EarsStream.complete`), so the async methods and the sync helper
:func:`transcribe_streaming` (for benches and tests) share it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Iterable, Protocol

import numpy as np

from .errors import AudioInputError

__all__ = ["EarsStream", "SegmentEars", "SegmentJob", "transcribe_streaming"]

SAMPLE_RATE = 16000


class SegmentEars(Protocol):
    """What the stream needs of the ears: synchronous recognition of 16 kHz float32
    samples with a prompt (:class:`omni_agent.ears.Ears` is one). It may raise
    :class:`AudioInputError` for audio with no speech, which the stream takes as no words."""

    def transcribe_samples(self, samples: np.ndarray, *, prompt: str | None = None) -> str: ...


@dataclass(slots=True, frozen=True)
class SegmentJob:
    """One recognition: the audio of closed segments ``start..stop-1`` and the committed
    text said before them (whisper's prompt)."""

    start: int  # the first segment it covers
    stop: int  # one past the last
    samples: np.ndarray
    prompt: str | None


class EarsStream:
    """The ears of one user turn, fed frame by frame (see the module docstring).

    ``ears``: the recogniser (normally :class:`~omni_agent.ears.Ears`, which trims silence
    with its VAD and so hears nothing in a silent segment). ``min_segment_s``: a pause
    closes a segment only once it holds this much audio. ``window_s``: each recognition
    takes the closed segments not yet *committed*, up to this much audio, so that the
    last recognition of a turn of up to ``window_s`` hears it whole, like whole-turn
    whisper (whose cost hardly depends on the length: it pads to 30 s); older segments
    are committed with their last text and go to whisper only as the prompt, of at
    most ``prompt_chars`` characters (0: no prompt). ``calls`` counts the recognitions.
    """

    def __init__(self, ears: SegmentEars, *, min_segment_s: float = 0.5, window_s: float = 20.0,
                 prompt_chars: int = 200, sample_rate: int = SAMPLE_RATE):
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"EarsStream takes {SAMPLE_RATE} Hz audio (got {sample_rate} Hz): "
                             "resample the frames first (the live session's VAD runs at 16 kHz)")
        if window_s > 28.0:
            raise ValueError("window_s is at most 28 s (whisper hears 30 s at a time)")
        self.ears = ears
        self.min_segment_s = float(min_segment_s)
        self.window_s = float(window_s)
        self.prompt_chars = int(prompt_chars)
        self.calls = 0
        self._open: list[np.ndarray] = []  # frames after the last closing pause
        self._open_len = 0
        self._segments: list[np.ndarray] = []  # every closed segment, in order
        self._base = 0  # segments before this one are committed
        self._done = 0  # segments before this one are transcribed
        self._committed = ""  # the text of segments [0, _base)
        self._window = ""  # the text of segments [_base, _done), from the last recognition
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ sans-IO side

    def append(self, frame: np.ndarray) -> None:
        """Add a frame of this turn's audio: int16 samples (or float32 in [-1, 1]) at 16 kHz."""
        x = np.asarray(frame)
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        else:
            x = x.astype(np.float32, copy=False)
        if x.size:
            self._open.append(x.reshape(-1))
            self._open_len += x.size

    def mark_pause(self) -> None:
        """The VAD saw a pause here: the audio up to here is a closed segment (kept open
        while it is shorter than ``min_segment_s``, to be merged with what follows)."""
        if self._open_len >= self.min_segment_s * SAMPLE_RATE:
            self._close()

    def end_of_turn(self) -> None:
        """The turn is over: the open tail, however short, is a closed segment too."""
        self._close()

    def _close(self) -> None:
        if self._open_len:
            self._segments.append(np.concatenate(self._open))
        self._open, self._open_len = [], 0

    def _seconds(self, start: int, stop: int) -> float:
        return sum(len(s) for s in self._segments[start:stop]) / SAMPLE_RATE

    def next_job(self) -> SegmentJob | None:
        """The next recognition to run, or None: the uncommitted segments up to the last
        closed one. Hand its text to :meth:`complete` before asking for the next."""
        n = len(self._segments)
        if self._done >= n:
            return None
        if self._base < self._done and self._seconds(self._base, n) > self.window_s:
            # The window is full: what was recognised so far is final.
            self._committed = _join(self._committed, self._window)
            self._base, self._window = self._done, ""
        prompt = self._committed[-self.prompt_chars:] if self.prompt_chars > 0 else ""
        if prompt and len(prompt) < len(self._committed):
            prompt = prompt.split(" ", 1)[-1]  # start on a whole word
        samples = np.concatenate(self._segments[self._base:n])
        return SegmentJob(self._base, n, samples, prompt or None)

    def complete(self, job: SegmentJob, text: str) -> None:
        """Record the text of the job :meth:`next_job` gave out."""
        if job.start != self._base or job.stop <= self._done:
            raise RuntimeError("EarsStream.complete() got a job that is not the current one: "
                               "run one job at a time, each from next_job()")
        self._window, self._done = text.strip(), job.stop

    def run_job(self, job: SegmentJob) -> str:
        """Recognise one job with the ears (synchronously); no speech is no words."""
        self.calls += 1
        try:
            return self.ears.transcribe_samples(job.samples, prompt=job.prompt)
        except AudioInputError:
            return ""

    @property
    def text(self) -> str:
        """The transcript of the segments recognised so far."""
        return _join(self._committed, self._window)

    @property
    def pending_seconds(self) -> float:
        """Audio of this turn not yet transcribed (closed, being recognised, or open)."""
        return self._open_len / SAMPLE_RATE + self._seconds(self._done, len(self._segments))

    # ------------------------------------------------------------------ async side

    async def transcribe_pending(self) -> str:
        """Recognise the closed segments not yet transcribed (in a worker thread, one at a
        time) and return the transcript so far. Safe to call again while one runs: the
        second waits for the first. If cancelled, the segment being recognised stays
        pending."""
        async with self._lock:
            while (job := self.next_job()) is not None:
                text = await asyncio.to_thread(self.run_job, job)
                self.complete(job, text)
            return self.text

    async def final(self) -> str:
        """The end of the turn: close the open tail, recognise what is left and return the
        whole transcript."""
        self.end_of_turn()
        return await self.transcribe_pending()


def _join(a: str, b: str) -> str:
    return f"{a} {b}" if a and b else a or b


def transcribe_streaming(ears: SegmentEars, samples: np.ndarray, pauses: Iterable[int], *,
                         frame: int = 512, **options) -> str:
    """Transcribe a 16 kHz clip the way a live session would: fed in ``frame``-sample
    frames, with a pause marked at each sample index of ``pauses``, every closed segment
    recognised at its pause (synchronously). ``options`` go to :class:`EarsStream`."""
    stream = EarsStream(ears, **options)
    marks = sorted(set(int(p) for p in pauses))
    x = np.asarray(samples, dtype=np.float32)
    start = 0
    for cut in marks + [len(x)]:
        cut = min(max(cut, start), len(x))
        for i in range(start, cut, frame):
            stream.append(x[i:min(i + frame, cut)])
        start = cut
        if cut < len(x):
            stream.mark_pause()
            while (job := stream.next_job()) is not None:
                stream.complete(job, stream.run_job(job))
    stream.end_of_turn()
    while (job := stream.next_job()) is not None:
        stream.complete(job, stream.run_job(job))
    return stream.text
