"""Small protocols for the parts an agent is made of, besides the Thinker and the Talker.

Each is a :class:`typing.Protocol`, so any object with these methods will do — the agent
checks for the shape, never for a class::

    class MyASR:                                   # a Transcriber
        async def transcribe(self, part: AudioPart) -> str:
            return await my_service.recognise(part.data)

    agent = Agent(thinker=..., ears=MyASR())

The history has its own two shapes (:mod:`omni_agent.history`), the segmenter its own
(:class:`omni_agent.segmenter.SegmenterProtocol`).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from .events import AudioPart

__all__ = ["Transcriber", "Loadable", "Closeable", "WarmsUp"]


@runtime_checkable
class Transcriber(Protocol):
    """Speech recognition — the agent's ears (``Agent(ears=...)``, e.g. :class:`omni_agent.ears.Ears`):
    the words of one audio part, for a Thinker that cannot hear. It may also be
    :class:`Loadable` (``Agent.warm_up`` loads it) and :class:`Closeable`."""

    async def transcribe(self, part: AudioPart) -> str: ...


@runtime_checkable
class Loadable(Protocol):
    """A part with a model to load before the first turn (``Agent.warm_up`` calls ``load``
    in a worker thread, so the first turn's timings measure the turn)."""

    def load(self) -> Any: ...


@runtime_checkable
class Closeable(Protocol):
    """A part holding resources (clients, models, buffered writes) released by ``aclose``."""

    async def aclose(self) -> None: ...


@runtime_checkable
class WarmsUp(Protocol):
    """A middleware with models of its own (the tool router, RAG's embeddings):
    ``Agent.warm_up`` calls ``warm_up(agent)`` in a worker thread; True when it loaded
    something."""

    def warm_up(self, agent: Any) -> bool: ...
