"""What every WebSocket transport of the agent server shares: close codes, JSON for the
wire, and telling a client that went away from a real failure.

::

    await ws.close(WS_POLICY, "too many malformed messages")
    await ws.send_text(dumps({"type": "pong", "t": t}))
"""

from __future__ import annotations

import json
from typing import Any

from starlette.websockets import WebSocketDisconnect

__all__ = ["WS_GOING_AWAY", "WS_UNSUPPORTED", "WS_POLICY", "WS_TOO_BIG", "WS_INTERNAL",
           "WS_TRY_LATER", "LIVE_REFUSAL_CLOSE", "dumps", "is_disconnect"]

# WebSocket close codes (RFC 6455 section 7.4.1).
WS_GOING_AWAY = 1001
WS_UNSUPPORTED = 1003
WS_POLICY = 1008
WS_TOO_BIG = 1009
WS_INTERNAL = 1011
WS_TRY_LATER = 1013

#: The WebSocket close code of each refusal
#: :meth:`~omni_agent.server.agent_server.AgentServer.live_refusal` gives.
LIVE_REFUSAL_CLOSE = {"shutting_down": WS_TRY_LATER, "too_many_sessions": WS_POLICY,
                      "server_full": WS_TRY_LATER}


def dumps(obj: Any) -> str:
    """JSON for the wire. Text with a lone surrogate (which UTF-8 cannot carry) goes out
    escaped, so it can never break the sender."""
    text = json.dumps(obj, ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(obj)
    return text


def is_disconnect(exc: BaseException) -> bool:
    """The client went away (a send or receive on a closed socket)."""
    if isinstance(exc, (WebSocketDisconnect, ConnectionError)):
        return True
    if isinstance(exc, RuntimeError) and "close" in str(exc):  # Starlette: send after close
        return True
    name = type(exc).__name__
    return name in ("ConnectionClosed", "ConnectionClosedError", "ConnectionClosedOK", "ClientDisconnected")
