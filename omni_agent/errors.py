"""Exceptions a user can cause. Each message says what to do about it."""

from __future__ import annotations

__all__ = [
    "OmniAgentError",
    "ConfigError",
    "ThinkerError",
    "TalkerError",
    "ModelNotFoundError",
    "UnsupportedInputError",
    "AudioInputError",
    "ToolError",
    "Blocked",
]


class OmniAgentError(Exception):
    """Base of all omni-agent errors."""


class ConfigError(OmniAgentError):
    """A bad agent config: the message names the bad key and what is allowed."""


class ThinkerError(OmniAgentError):
    """The Thinker failed (server unreachable, bad response, model failure)."""


class TalkerError(OmniAgentError):
    """The Talker failed (voice missing, server unreachable, synthesis failure)."""


class ModelNotFoundError(OmniAgentError):
    """A model path or name could not be found or loaded."""


class UnsupportedInputError(OmniAgentError):
    """The backend cannot take this kind of input (e.g. an image for a text-only model)."""


class AudioInputError(OmniAgentError):
    """Audio that cannot be decoded, is empty or is too long."""


class ToolError(OmniAgentError):
    """A tool failed or got invalid arguments (reported to the Thinker as a tool result)."""


class Blocked(OmniAgentError):
    """Raised by a middleware hook to block the item it was given.

    ``raise Blocked("contains a card number")`` — the item does not pass; for an utterance
    the agent's fallback line (if any) is spoken instead, and the trace records the reason.
    """

    def __init__(self, reason: str = "blocked", *, fallback: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.fallback = fallback
