"""The agent server's limits and options: :class:`ServerConfig`, a pydantic model.

Each default is written once, here; a bad value is refused when the config is made, with
a :class:`~omni_agent.errors.ConfigError` naming the field and what it must be::

    ServerConfig(token="s3cret", max_sessions_per_client=4)
    ServerConfig(max_audio_seconds=3600)   # ConfigError: max_audio_seconds must be ...
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..live import MAX_AUDIO_SECONDS, LiveConfig
from .live_protocol import apply_settings
from .twilio import TwilioConfig
from .webrtc import WebRTCConfig
from .wire import describe, fail

__all__ = ["ServerConfig"]

class ServerConfig(BaseModel):
    """Limits and options of the agent server.

    * ``token`` — when set, every request but ``/``, ``/static`` and ``/health`` needs
      ``Authorization: Bearer <token>`` (a WebSocket may pass ``?token=`` instead, since
      browsers cannot set headers on one).
    * ``max_message_bytes`` — largest WebSocket message (an audio frame or a JSON message).
    * ``max_request_bytes`` — largest HTTP request body (an uploaded audio file);
      ``max_json_bytes`` — largest JSON body (a text turn).
    * ``max_audio_seconds`` — longest audio per request or per user turn (at most 2400 s,
      40 minutes, like Qwen3-Omni's audio input).
    * ``max_sessions_per_client`` — live sessions one client address may hold at once.
    * ``max_sessions`` — live sessions in all.
    * ``shutdown_grace`` — seconds running turns may take to finish on shutdown before
      they are cancelled.
    * ``max_protocol_errors`` — malformed messages a live client may send before it is
      disconnected.
    * ``live`` — defaults for live sessions (VAD timing, barge-in); a client may change
      its own with a ``configure`` message.
    * ``forget_on_close`` — drop a live session's history when its socket closes (not a
      session the client named with ``?session_id=``, nor while the server drains: those
      may resume, on another replica too).
    * ``send_timeout`` — seconds one message to a live client may take to send; a client
      that stops reading is disconnected after that (its slot is freed).
    * ``max_http_turns_per_client`` / ``max_http_turns`` — HTTP turns running at once, per
      client address and in all; more are refused (429 / 503) instead of queueing.
    * ``allowed_hosts`` — ``Host`` names accepted besides loopback and the address the
      connection arrived on (DNS rebinding: a web page cannot reach the agent through a
      name of its own). ``allowed_origins`` — web pages (``https://app.example.com``) that
      may open live sessions and post turns, besides loopback pages and the server's own.
    * ``header_timeout`` — seconds a client has to send its request head (slowloris);
      ``max_pending_per_client`` — connections one address may have still sending it.
    * ``webrtc`` — the WebRTC endpoint's limits and ICE options (peers at once, loopback-only
      host candidates by default): :class:`~omni_agent.server.webrtc.WebRTCConfig`.
    * ``twilio`` — phone calls (``/v1/twilio``): the optional Twilio signature check, the
      public URL, stream limits: :class:`~omni_agent.server.twilio.TwilioConfig`.
    """

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    token: str | None = None
    max_message_bytes: int = Field(1 << 20, ge=1)
    max_request_bytes: int = Field(64 << 20, ge=1)
    max_json_bytes: int = Field(1 << 20, ge=1)
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    max_sessions_per_client: int = Field(8, ge=1)
    max_sessions: int = Field(1000, ge=1)
    shutdown_grace: float = Field(10.0, ge=0)
    max_protocol_errors: int = Field(20, ge=1)
    live: LiveConfig = Field(default_factory=LiveConfig)
    forget_on_close: bool = True
    send_timeout: float = Field(10.0, gt=0)
    max_http_turns_per_client: int = Field(4, ge=1)
    max_http_turns: int = Field(64, ge=1)
    allowed_hosts: list[str] = Field(default_factory=list)
    allowed_origins: list[str] = Field(default_factory=list)
    header_timeout: float = Field(10.0, gt=0)
    max_pending_per_client: int = Field(128, ge=1)
    webrtc: WebRTCConfig = Field(default_factory=WebRTCConfig)
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:
            err = e.errors()[0]
            if err["type"] == "extra_forbidden":
                raise ConfigError(f"ServerConfig has no option {err['loc'][0]!r}: the options are "
                                  f"{', '.join(type(self).model_fields)}") from None
            raise ConfigError(describe(err)) from None

    @field_validator("token")
    @classmethod
    def _real_token(cls, token: str | None) -> str | None:
        if token is not None and not token.strip():
            raise fail("is empty: give a real token or leave it out (no auth)")
        return token

    @field_validator("max_audio_seconds")
    @classmethod
    def _at_most_40_minutes(cls, seconds: float) -> float:
        if not 0 < seconds <= MAX_AUDIO_SECONDS:
            raise fail(f"must be in (0, {MAX_AUDIO_SECONDS:.0f}] (40 minutes at most), not {seconds!r}")
        return seconds

    @model_validator(mode="after")
    def _parts(self) -> "ServerConfig":
        # A user turn is audio too: it is capped by the server's limit.
        try:
            self.live = apply_settings(self.live, {
                "max_turn_seconds": min(self.live.max_turn_seconds, self.max_audio_seconds)})
            self.webrtc.check()
        except ConfigError as e:
            raise fail(str(e)) from None
        return self

    def check(self) -> "ServerConfig":
        """Validate the values again (after a field was changed in place): a new config,
        or :class:`ConfigError` naming the bad value."""
        return type(self)(**{name: getattr(self, name) for name in type(self).model_fields})
