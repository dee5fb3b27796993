"""The turn trace: every intervention, the aligned record of each clause, and timings.

One :class:`Trace` per turn. Middleware never write to it directly: the bus records
what they did (rewrite, drop, block, error, timeout) with before/after text. With
``keep_originals=False`` the "before" side of every intervention (and the original
text of each clause) is left out, so redacted content is not kept anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from time import monotonic
from typing import Any

__all__ = ["Intervention", "Segment", "Trace"]


@dataclass(slots=True)
class Intervention:
    """One change a middleware made. ``action``: rewrite, drop, block, error, timeout, add."""

    middleware: str
    point: str  # input, event, stream, utterance, audio
    action: str
    before: str | None = None
    after: str | None = None
    reason: str = ""
    ts: float = field(default_factory=monotonic)


@dataclass(slots=True)
class Segment:
    """The aligned record of one clause: what the Thinker wrote, what is shown, what is
    spoken. ``status``: pending, speaking, spoken, shown (text agent), blocked, dropped,
    interrupted, failed. ``delivered`` is True once its ``spoken`` text (the fallback line
    for a blocked clause) was fully spoken, or shown by a text agent."""

    index: int
    original: str | None
    display: str
    spoken: str
    status: str = "pending"
    fallback: bool = False
    delivered: bool = False
    #: When the Talker started and finished this clause, in seconds since the turn
    #: started (None: the Talker never took it).
    started: float | None = None
    ended: float | None = None


@dataclass
class Trace:
    """Everything that happened in one turn, in order."""

    session_id: str = ""
    turn_id: int = 0
    keep_originals: bool = True
    started: float = field(default_factory=monotonic)
    interventions: list[Intervention] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    holds: dict[str, float] = field(default_factory=dict)
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    citations: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    #: One entry per Thinker round: ``{"round", "finish_reason", "prompt_tokens",
    #: "completion_tokens", "start", "end"}`` (counts None when the backend did not report
    #: them; start/end in seconds since the turn started, the round's stream).
    rounds: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ recording

    def record(
        self,
        middleware: str,
        point: str,
        action: str,
        before: str | None = None,
        after: str | None = None,
        reason: str = "",
    ) -> Intervention:
        """Add an intervention (``before`` is dropped when ``keep_originals`` is off)."""
        iv = Intervention(
            middleware, point, action, before if self.keep_originals else None, after, reason
        )
        self.interventions.append(iv)
        return iv

    def mark(self, name: str, at: float | None = None) -> None:
        """Record a timing milestone once: seconds since the turn started."""
        if name not in self.timings:
            self.timings[name] = (monotonic() if at is None else at) - self.started

    def add_time(self, name: str, seconds: float) -> None:
        """Accumulate a duration (e.g. how long a middleware held content)."""
        self.timings[name] = self.timings.get(name, 0.0) + seconds

    def add_hold(self, middleware: str, seconds: float) -> None:
        """Accumulate how long a middleware held content back from the stream."""
        self.holds[middleware] = self.holds.get(middleware, 0.0) + seconds

    def error(self, stage: str, message: str) -> None:
        self.errors.append({"stage": stage, "message": message})

    # ------------------------------------------------------------------ reading

    @property
    def spoken_text(self) -> str:
        """What was actually spoken (clauses whose audio was produced), joined."""
        return " ".join(s.spoken for s in self.segments if s.delivered and s.spoken)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timings"] = {k: round(v, 6) for k, v in self.timings.items()}
        d["holds"] = {k: round(v, 6) for k, v in self.holds.items()}
        # The stage times (seconds since the turn started) to the microsecond, as timings.
        for seg in d["segments"]:
            for k in ("started", "ended"):
                if seg.get(k) is not None:
                    seg[k] = round(seg[k], 6)
        for rnd in d["rounds"]:
            for k in ("start", "end"):
                if isinstance(rnd.get(k), float):
                    rnd[k] = round(rnd[k], 6)
        return d

    def summary(self) -> str:
        """A short human-readable account: timings, holds, interventions."""
        lines = []
        if self.timings:
            lines.append(
                "timings: "
                + ", ".join(f"{k}={v * 1000:.1f}ms" for k, v in self.timings.items())
            )
        if self.holds:
            lines.append(
                "held: " + ", ".join(f"{k}={v * 1000:.1f}ms" for k, v in self.holds.items())
            )
        for iv in self.interventions:
            change = ""
            if iv.before is not None or iv.after is not None:
                change = f" {iv.before!r} -> {iv.after!r}"
            why = f" ({iv.reason})" if iv.reason else ""
            lines.append(f"{iv.middleware} {iv.action} at {iv.point}{change}{why}")
        if self.rounds:
            lines.append("thinker rounds: " + ", ".join(
                f"{r['round']}:{r.get('finish_reason') or '?'}" for r in self.rounds))
        for tc in self.tool_calls:
            lines.append(f"tool {tc.get('name')}({tc.get('arguments')}) -> {tc.get('result')!r}")
        for c in self.citations:
            lines.append(f"cite {c}")
        for e in self.errors:
            lines.append(f"error in {e['stage']}: {e['message']}")
        return "\n".join(lines)
