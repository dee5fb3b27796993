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
from .thinker import Message, ThinkerRequest

__all__ = ["Transcriber", "Loadable", "Closeable", "WarmsUp", "PromptWarmer", "PreparesRounds"]


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


@runtime_checkable
class PromptWarmer(Protocol):
    """A Thinker that can read a prompt's shared prefix ahead of time and keep its KV state
    (:meth:`omni_agent.thinkers.llama_cpp.LlamaCppThinker.warm_prompt`): pinned (start-up:
    a tool round's examples), or as a recent state (between turns: the conversation so far)."""

    def warm_prompt(self, request: ThinkerRequest, *, pin: bool = True) -> int: ...


@runtime_checkable
class PreparesRounds(Protocol):
    """A middleware that shapes the Thinker's first round of a turn (the tool middleware:
    tool examples, calls written as text) and so knows what that request will look like.
    ``round_requests(agent, messages)``: the requests the next turn's first round may make,
    most likely first, for ``messages`` (system, history, a stand-in user message);
    :meth:`Session.prepare_next_turn <omni_agent.agent.Session.prepare_next_turn>` warms them."""

    def round_requests(self, agent: Any, messages: list[Message]) -> list[ThinkerRequest]: ...
