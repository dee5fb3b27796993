"""The Thinker protocol: a request in, an async stream of events out.

A Thinker yields :class:`~omni_agent.events.TextDelta`, :class:`ReasoningDelta` and
:class:`ToolCall` events (tool calls complete, already assembled from any deltas). It does
not run tools or keep conversation state: the agent does both and sends the whole
conversation in every request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Literal, Protocol, runtime_checkable

from .events import Part, TextPart

__all__ = ["Message", "ThinkerRequest", "GenerationSettings", "Thinker"]


@dataclass(slots=True)
class Message:
    """One message of the conversation sent to the Thinker.

    ``content`` is a string or a list of parts (text, audio, image, video). An assistant
    message may carry ``tool_calls`` (dicts ``{"id", "name", "arguments"}``); a tool message
    carries ``tool_call_id`` and ``name``.
    """

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[Part] = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return " ".join(p.text for p in self.content if isinstance(p, TextPart))

    def modalities(self) -> set[str]:
        if isinstance(self.content, str):
            return {"text"}
        return {p.kind for p in self.content}


@dataclass(slots=True)
class GenerationSettings:
    """Sampling settings shared by all backends (a backend ignores what it cannot do)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(slots=True)
class ThinkerRequest:
    """Everything a Thinker needs for one generation round.

    ``tools`` are OpenAI-style function schemas (``{"type": "function", "function": {...}}``).
    ``tool_choice`` is "auto", "none", "required" or a tool name. ``constraint`` is an
    optional backend-specific decoding constraint (the transformers backend accepts a
    logits processor factory, used for schema-constrained tool calls).
    ``extra`` carries backend-specific options (e.g. ``modalities`` and ``speaker`` for
    vLLM-Omni).
    ``response_format`` is OpenAI's: ``{"type": "text" | "json_object"}`` or ``{"type":
    "json_schema", "json_schema": {"name", "schema", "strict"}}``; local backends enforce
    it with constrained decoding, HTTP backends pass it on. ``logprobs``: None for none,
    else how many alternatives per token to report (0: only the chosen token's); they
    arrive on :attr:`TextDelta.logprobs`.
    """

    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str = "auto"
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    session_id: str = ""
    turn_id: int = 0
    constraint: Callable[..., Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    response_format: dict[str, Any] | None = None
    logprobs: int | None = None


@runtime_checkable
class Thinker(Protocol):
    """What every Thinker backend provides.

    ``accepts`` lists the input modalities it takes ("text", "image", "audio", "video").
    ``stream`` must raise :class:`~omni_agent.errors.UnsupportedInputError` for input it
    cannot take, and :class:`~omni_agent.errors.ThinkerError` when generation fails.
    """

    name: str
    accepts: frozenset[str]

    def stream(self, request: ThinkerRequest) -> AsyncIterator[Any]: ...

    async def aclose(self) -> None: ...
