"""The Talker protocol: a stream of utterances in, a stream of audio chunks out.

A Talker synthesizes one utterance at a time and yields int16 mono PCM chunks. It is
cancelled mid-utterance by cancelling the task that iterates it (barge-in).
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol, runtime_checkable

from .events import AudioChunk, Utterance

__all__ = ["Talker"]


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
