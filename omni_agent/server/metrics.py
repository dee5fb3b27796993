"""The agent server's Prometheus metrics (the official ``prometheus-client``), in a
registry of their own, one per server::

    metrics = ServerMetrics(active_sessions=lambda: 3, active_turns=lambda: 1)
    metrics.turns.labels("ws", "completed").inc()
    generate_latest(metrics.registry)        # the text /metrics serves
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..events import ErrorEvent, TurnEnd

__all__ = ["ServerMetrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    """Turns, latencies, errors and refusals of one server. ``active_sessions`` and
    ``active_turns`` are read each time the metrics are collected."""

    def __init__(self, *, active_sessions: Callable[[], float], active_turns: Callable[[], float]):
        r = self.registry = CollectorRegistry()
        lat = _LATENCY
        self.turns = Counter("omni_agent_turns", "Turns run, by transport and how they ended",
                             ["transport", "reason"], registry=r)
        self.errors = Counter("omni_agent_errors", "Errors reported in turns, by stage",
                              ["stage"], registry=r)
        self.rejected = Counter("omni_agent_rejected", "Requests or messages refused, by reason",
                                ["reason"], registry=r)
        self.interruptions = Counter("omni_agent_interruptions", "Barge-ins and other interruptions",
                                     registry=r)
        self.first_audio = Histogram("omni_agent_time_to_first_audio_seconds",
                                     "End of the user's turn to the first reply audio sent",
                                     ["transport"], buckets=lat, registry=r)
        self.turn_seconds = Histogram("omni_agent_turn_seconds", "Whole turn duration",
                                      ["transport"], buckets=lat, registry=r)
        self.first_token = Histogram("omni_agent_thinker_first_token_seconds",
                                     "Thinker time to first token", buckets=lat, registry=r)
        self.asr = Histogram("omni_agent_asr_seconds", "Speech recognition time per turn",
                             buckets=lat, registry=r)
        self.cancel = Histogram("omni_agent_barge_in_cancel_seconds",
                                "Speech detected to Thinker, tools and Talker cancelled",
                                buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r)
        Gauge("omni_agent_active_sessions", "Live WebSocket sessions open",
              registry=r).set_function(active_sessions)
        Gauge("omni_agent_active_turns", "Turns running now (live and HTTP)",
              registry=r).set_function(active_turns)

    def observe_trace(self, trace: dict[str, Any]) -> None:
        """Count a turn's trace (its Thinker's time to first token)."""
        first = trace.get("timings", {}).get("thinker_first_token")
        if first is not None:
            self.first_token.observe(first)

    def observe_turn(self, transport: str, reason: str, seconds: float, first_audio: float | None,
                     trace: dict[str, Any]) -> None:
        """Count one finished one-shot turn: how it ended, how long it and its first audio
        took, and its trace's timings."""
        self.turns.labels(transport, reason).inc()
        self.turn_seconds.labels(transport).observe(seconds)
        if first_audio is not None:
            self.first_audio.labels(transport).observe(first_audio)
        self.observe_trace(trace)
        if "asr" in trace.get("timings", {}):
            self.asr.observe(trace["timings"]["asr"])

    def observe_live(self, msg: Any, transport: str) -> None:
        """Count one message of a live session on ``transport`` (ws, realtime, webrtc,
        twilio): its latencies, its trace, interruptions, errors and how its turn ended."""
        if isinstance(msg, dict):
            kind = msg.get("type")
            if kind == "latency":
                if msg.get("first_audio_ms") is not None:
                    self.first_audio.labels(transport).observe(msg["first_audio_ms"] / 1000)
                self.turn_seconds.labels(transport).observe(msg["turn_ms"] / 1000)
                if msg.get("asr_ms"):
                    self.asr.observe(msg["asr_ms"] / 1000)
            elif kind == "trace":
                self.observe_trace(msg["trace"])
            elif kind == "interruption":
                self.interruptions.inc()
                if msg.get("cancel_ms") is not None:
                    self.cancel.observe(msg["cancel_ms"] / 1000)
            elif kind == "error":
                self.errors.labels(msg.get("code", "live")).inc()
        elif type(msg) is TurnEnd:
            self.turns.labels(transport, msg.reason).inc()
        elif type(msg) is ErrorEvent:
            self.errors.labels(msg.stage or "unknown").inc()
