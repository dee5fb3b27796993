"""A small scenario set for measuring how well an agent uses the built-in tools.

Each scenario is a user request with the tool it should call (or none), what the
arguments must amount to, and what the answer must contain. :func:`evaluate` runs them
through an agent and scores each stage: the right tool picked, a valid call with the
right arguments, the right answer. ``bench/tool_success.py`` runs it on the embedded
model; run it on your own model to compare::

    report = evaluate(Agent(thinker=my_thinker, tools=[current_time, calculator]))
    print(report.summary())
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from time import monotonic
from typing import Any, Callable
from zoneinfo import ZoneInfo

from .builtin import evaluate as calc

__all__ = ["Scenario", "SCENARIOS", "Outcome", "Report", "evaluate"]


def _times(zone: str) -> list[str]:
    """The clock readings acceptable now in ``zone`` (this minute or the last), 24 h and 12 h."""
    now = datetime.now(ZoneInfo(zone))
    out = []
    for t in (now, now - timedelta(minutes=1)):
        out += [f"{t:%H:%M}", f"{t:%I:%M}".lstrip("0")]
    return out


def _number(expr: str) -> list[str]:
    v = calc(expr)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    s = f"{v:.6g}" if isinstance(v, float) else str(v)
    return [s, f"{v:,}" if isinstance(v, int) else s]


@dataclass
class Scenario:
    """One request. ``tool`` is None when no tool should be called; ``args`` checks the
    arguments (a dict -> bool); ``answer`` gives the strings of which one must appear."""

    request: str
    tool: str | None
    args: Callable[[dict[str, Any]], bool] = lambda a: True
    answer: Callable[[], list[str]] | None = None
    error_ok: bool = False  # the tool is expected to report an error (the turn must go on)


def _zone_is(*names: str) -> Callable[[dict[str, Any]], bool]:
    from .builtin import resolve_timezone

    def check(a: dict[str, Any]) -> bool:
        try:
            return resolve_timezone(str(a.get("timezone", "")))[1] in names
        except Exception:  # noqa: BLE001 - an unknown zone is a wrong argument
            return False

    return check


def _expr_is(expected: str) -> Callable[[dict[str, Any]], bool]:
    def check(a: dict[str, Any]) -> bool:
        try:
            return abs(float(calc(str(a.get("expression", "")))) - float(calc(expected))) < 1e-9
        except Exception:  # noqa: BLE001
            return False

    return check


def _time(request: str, zone: str) -> Scenario:
    return Scenario(request, "current_time", _zone_is(zone), lambda: _times(zone))


def _math(request: str, expr: str) -> Scenario:
    return Scenario(request, "calculator", _expr_is(expr), lambda: _number(expr))


SCENARIOS: list[Scenario] = [
    _time("What time is it in Tokyo?", "Asia/Tokyo"),
    _time("What's the time in New York right now?", "America/New_York"),
    _time("What time is it in London?", "Europe/London"),
    _time("Tell me the current time in Paris.", "Europe/Paris"),
    _time("What time is it in Sydney?", "Australia/Sydney"),
    _time("Do you know what time it is in Los Angeles?", "America/Los_Angeles"),
    _time("What's the time in Berlin?", "Europe/Berlin"),
    _time("What time is it in Singapore right now?", "Asia/Singapore"),
    _math("What is 17 times 23?", "17 * 23"),
    _math("What is the square root of 144?", "sqrt(144)"),
    _math("Calculate 2 to the power of 10.", "2 ** 10"),
    _math("How much is 15% of 80?", "0.15 * 80"),
    _math("What is 1234 plus 4321?", "1234 + 4321"),
    _math("What is 100 divided by 8?", "100 / 8"),
    _math("What is 9 squared?", "9 ** 2"),
    _math("What is 345 minus 123?", "345 - 123"),
    Scenario("What is 5 divided by 0?", "calculator", lambda a: "/" in str(a.get("expression", "")),
             None, error_ok=True),
    Scenario("Hello! How are you?", None),
    Scenario("Tell me a joke.", None),
    Scenario("What is the capital of France?", None, answer=lambda: ["Paris"]),
    Scenario("Thank you, goodbye!", None),
]


@dataclass
class Outcome:
    """How one scenario went."""

    scenario: Scenario
    called: list[dict[str, Any]]
    answer: str
    seconds: float
    routed: bool = False
    call_ok: bool = False
    answer_ok: bool = False

    @property
    def ok(self) -> bool:
        return self.routed and self.call_ok and self.answer_ok


@dataclass
class Report:
    """Scores per stage and overall, with every outcome."""

    outcomes: list[Outcome] = field(default_factory=list)

    def rate(self, attr: str, only_tools: bool = False) -> float:
        xs = [o for o in self.outcomes if not only_tools or o.scenario.tool]
        return sum(bool(getattr(o, attr)) for o in xs) / len(xs) if xs else 0.0

    def summary(self) -> str:
        lines = []
        for o in self.outcomes:
            mark = "ok " if o.ok else "BAD"
            calls = ", ".join(f"{c['name']}({c['arguments']})" for c in o.called) or "no tool"
            lines.append(f"{mark} {o.seconds:5.1f}s {o.scenario.request!r} -> {calls} -> {o.answer[:70]!r}")
        n = len(self.outcomes)
        lines.append(f"tool choice right: {self.rate('routed'):.0%}   call right (tool scenarios): "
                     f"{self.rate('call_ok', True):.0%}   answer right: {self.rate('answer_ok'):.0%}")
        lines.append(f"success rate: {sum(o.ok for o in self.outcomes)}/{n} = {self.rate('ok'):.0%}")
        return "\n".join(lines)


def evaluate(agent: Any, scenarios: list[Scenario] | None = None,
             progress: Callable[[Outcome], None] | None = None) -> Report:
    """Run each scenario as the first turn of a fresh session and score it."""
    report = Report()
    for sc in scenarios or SCENARIOS:
        t0 = monotonic()
        r = agent.session().ask(sc.request)
        o = Outcome(sc, list(r.tool_calls), r.text, monotonic() - t0)
        names = [c["name"] for c in o.called]
        o.routed = names[:1] == ([sc.tool] if sc.tool else [])
        if sc.tool is None:
            o.call_ok = not o.called
        elif o.routed:
            first = o.called[0]
            try:
                args = json.loads(first["arguments"])
            except ValueError:
                args = None
            o.call_ok = isinstance(args, dict) and sc.args(args) and (
                first["is_error"] == sc.error_ok)
        if sc.error_ok:
            o.answer_ok = r.reason == "completed" and bool(r.text.strip())
        elif sc.answer is None:
            o.answer_ok = r.reason == "completed" and bool(r.text.strip())
        else:
            text = re.sub(r"\s+", " ", r.text)
            o.answer_ok = any(a in text for a in sc.answer())
        report.outcomes.append(o)
        if progress is not None:
            progress(o)
    return report
