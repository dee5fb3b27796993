"""The Talker protocol: a stream of utterances in, a stream of audio chunks out.

A Talker synthesizes one utterance at a time and yields int16 mono PCM chunks. It is
cancelled mid-utterance by cancelling the task that iterates it (barge-in).

A Talker that can change its own pace also provides :class:`SpeedControl` (Piper and
espeak-ng do). It is optional: every Talker still works everywhere, and where pace is
asked of one without it (the Talker server's ``speed``), the audio is time-stretched.
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol, runtime_checkable

from .events import AudioChunk, Utterance

__all__ = ["Talker", "SpeedControl"]


@runtime_checkable
class Talker(Protocol):
    """What every Talker backend provides.

    ``sample_rate`` is the rate of the chunks it yields. ``speak`` yields the audio of one
    utterance as it is synthesized (the first chunk as early as possible).
    """

    name: str
    sample_rate: int

    def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SpeedControl(Protocol):
    """A Talker that speaks faster or slower by itself (optional, next to :class:`Talker`).

    ``with_speed(2.0)`` returns a Talker speaking twice as fast as this one (audio about
    half as long), sharing its model; this one is unchanged. ``speed_range`` is the
    (slowest, fastest) speed it does natively::

        fast = PiperTalker().with_speed(1.5)
    """

    speed_range: tuple[float, float]

    def with_speed(self, speed: float) -> Talker: ...
