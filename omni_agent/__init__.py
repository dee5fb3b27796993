"""omni-agent: voice and text agents with a Thinker, an intervenable bus and a Talker.

::

    from omni_agent import Agent, Middleware, Blocked
    from omni_agent.testing import ScriptedThinker, RecordingTalker

The public API is what this module exports; backends live in ``omni_agent.thinkers``
and ``omni_agent.talkers``, built-in middleware in ``omni_agent.middleware``, tools in
``omni_agent.tools`` and memory in ``omni_agent.memory``.
"""

from .agent import Agent, Session, TurnResult
from .bus import Bus, Middleware, RoundEnd, TurnContext, hook
from .errors import (
    AudioInputError,
    Blocked,
    ConfigError,
    ModelNotFoundError,
    OmniAgentError,
    TalkerError,
    ThinkerError,
    ToolError,
    UnsupportedInputError,
)
from .events import (
    AudioChunk,
    AudioPart,
    Context,
    ErrorEvent,
    Event,
    Finish,
    ImagePart,
    Interruption,
    ReasoningDelta,
    TextDelta,
    TextPart,
    ToolCall,
    ToolResult,
    TurnEnd,
    UserTurn,
    Utterance,
    VideoPart,
)
from .history import AsyncHistory, History, InMemoryHistory
from .protocols import Transcriber
from .segmenter import Segmenter, SegmenterProtocol
from .talker import Talker
from .thinker import GenerationSettings, Message, Thinker, ThinkerRequest
from .trace import Intervention, Segment, Trace

__version__ = "0.1.0"

__all__ = [
    "Agent", "Session", "TurnResult", "InMemoryHistory", "History", "AsyncHistory",
    "Transcriber", "Segmenter", "SegmenterProtocol",
    "Bus", "Middleware", "RoundEnd", "TurnContext", "hook",
    "OmniAgentError", "ConfigError", "ThinkerError", "TalkerError", "ModelNotFoundError",
    "UnsupportedInputError", "AudioInputError", "ToolError", "Blocked",
    "Event", "UserTurn", "TextPart", "AudioPart", "ImagePart", "VideoPart", "TextDelta",
    "ReasoningDelta", "ToolCall", "ToolResult", "Context", "Utterance", "AudioChunk",
    "Finish", "TurnEnd", "Interruption", "ErrorEvent",
    "Thinker", "Talker", "Message", "ThinkerRequest", "GenerationSettings",
    "Trace", "Intervention", "Segment",
]
