"""A small scenario set for measuring how well an agent uses the built-in tools.

Each scenario is a user request with the tool it should call (or none), what the
arguments must amount to, and what the answer must contain. :func:`evaluate` runs them
through an agent and scores each stage: the right tool picked, a valid call with the
right arguments, the right answer. ``bench/tool_success.py`` runs it on the embedded
model; run it on your own model to compare::

    report = evaluate(Agent(thinker=my_thinker, tools=[current_time, calculator]))
    print(report.summary())

:func:`evaluate_routing` measures the tool router alone (no Thinker, ~10 ms a request)
on a larger set, :data:`ROUTING_CASES`: the scenarios above plus sentences full of
numbers, times and dates that need no tool ("My phone number is 555-867-5309", "The
score was 3-2") and requests that do. It reports precision and recall of "tool needed"
and of "no tool needed"::

    print(evaluate_routing(ToolRouter()).table())
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median
from time import monotonic, perf_counter
from typing import Any, Callable
from zoneinfo import ZoneInfo

from .builtin import evaluate as calc

__all__ = ["Scenario", "SCENARIOS", "Outcome", "Report", "evaluate",
           "RoutingCase", "ROUTING_CASES", "RoutingReport", "evaluate_routing"]


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


# ---------------------------------------------------------------------------- the router alone


@dataclass(frozen=True)
class RoutingCase:
    """One request and the tool the router should pick for it (None: no tool)."""

    request: str
    tool: str | None


def _cases(tool: str | None, *requests: str) -> list[RoutingCase]:
    return [RoutingCase(r, tool) for r in requests]


ROUTING_CASES: list[RoutingCase] = [
    *(RoutingCase(sc.request, sc.tool) for sc in SCENARIOS),
    # Numbers, times and dates that need no tool: a phone number, a date or a score is
    # not arithmetic, and a time mentioned is not a question about the clock.
    *_cases(None,
            "My phone number is 555-867-5309, please remember it.",
            "I was born in 1990.",
            "My flight is at 7:45 tomorrow.",
            "Meet me on 12/05.",
            "Call me at +1 555 010 9999.",
            "Room 4-12.",
            "The score was 3-2.",
            "It's a 2-for-1 deal.",
            "I'll be there in 5 minutes.",
            "Chapter 3-5 is due.",
            "We won 21-14 last night.",
            "The shop is open 9-5 on weekdays.",
            "My birthday is 3/14.",
            "It happened on 2023-05-12.",
            "The invoice number is 2024-0042.",
            "My locker code is 12-34-56.",
            "I scored 95% on the test.",
            "The train leaves at 10:30 pm.",
            "The screen ratio is 16:9.",
            "Version 3.11 is out now.",
            "My kids are 7 and 9 years old.",
            "It was -5 degrees this morning.",
            "I live at 221B Baker Street.",
            "Book a table for 2 at 8 pm.",
            "My zip code is 94103.",
            "Page 12-15 covers the topic.",
            "Flight BA 2490 lands at 14:05.",
            "Can you call me back at 555 0199?",
            "The sale gives 20% off everything.",
            "I need 3 eggs and 2 cups of flour.",
            "Remember that my PIN is 4821.",
            "The meeting moved to 3 pm.",
            "When does the museum open?",
            "What time does the bakery close on Saturdays?",
            "Thanks, that's all for now.",
            "Who was the first person on the moon?"),
    # Requests that do need a tool, phrased in more ways than the scenarios.
    *_cases("calculator",
            "What's 15% of 80?",
            "what is 12 minus 5",
            "3 - 2",
            "how much is 7 times 8",
            "12 / 4",
            "What's 100 - 37?",
            "How much is 250 plus 175?",
            "Compute 17 * 23",
            "What is 3 to the power of 4?",
            "What's the square root of 225?",
            "What's 8 squared?",
            "Calculate 45 times 12.",
            "What is 3.5 * 4?",
            "(3 + 4) * 2",
            "What is 7 factorial?",
            "Can you work out 640 divided by 16?",
            "What's 2+2?"),
    *_cases("current_time",
            "What time is it in Tokyo?",
            "What's the time in Paris right now?",
            "What time is it?",
            "What's the time in Chicago?",
            "Tell me the current time in Sydney.",
            "What's today's date?",
            "Current time in Berlin, please.",
            "What time is it in Mumbai at the moment?"),
    # Written after the router was calibrated on the cases above, as a check (not tuned on).
    *_cases(None,
            "My social security number ends in 12-3456.", "Our anniversary is 06/21.",
            "The final was 2-1 after extra time.", "Buy 1 get 1 free today.",
            "Take 2 pills every 8 hours.", "I'm 34 years old.", "The bus number is 42.",
            "The password reset code is 77-31.", "Office hours are 10-4.",
            "She ran 5 km in 25 minutes.", "Dinner is at 7:30.", "The wifi password is 8812-4410.",
            "I paid 15% tip.", "My car is a 2019 model.", "Gate B12 opens at 6:50.",
            "It's due on 4/1.", "See you at 9 tomorrow.", "Text me at 415-555-0132.",
            "The Lakers won 110-102.", "I have meetings 1-3 pm.", "We need seats 14-16 in row C.",
            "Good night!", "What's a good name for a cat?", "How tall is Mount Everest?"),
    *_cases("calculator",
            "What's 9 times 9?", "what is 81 divided by 9", "44 + 56", "How much is 30% of 250?",
            "What is 2 to the power of 16?", "Multiply 12 by 12", "What's 1000 - 1?",
            "square root of 49", "What's 6 x 7?", "What is 99 minus 33?"),
    *_cases("current_time",
            "What time is it in Rome?", "what's the time now in Seoul",
            "Can you tell me the time in Dubai?", "What's the date today?", "Time in Toronto?",
            "what time is it right now"),
]


@dataclass
class RoutingReport:
    """What the router picked for each case, and precision / recall per class.

    "Tool needed" counts a pick as right only when it is the expected tool; "no tool
    needed" counts a case as right when the router picked nothing.
    """

    rows: list[tuple[RoutingCase, str | None, float | None]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def _counts(self, want_tool: bool) -> tuple[int, int, int]:
        """(right, predicted in the class, expected in the class)."""
        right = predicted = expected = 0
        for case, picked, _ in self.rows:
            exp, got = case.tool is not None, picked is not None
            expected += exp is want_tool
            predicted += got is want_tool
            right += (exp is want_tool) and (got is want_tool) and (not want_tool or picked == case.tool)
        return right, predicted, expected

    def precision(self, tool_needed: bool = True) -> float:
        right, predicted, _ = self._counts(tool_needed)
        return right / predicted if predicted else 1.0

    def recall(self, tool_needed: bool = True) -> float:
        right, _, expected = self._counts(tool_needed)
        return right / expected if expected else 1.0

    @property
    def misses(self) -> list[tuple[RoutingCase, str | None, float | None]]:
        return [r for r in self.rows if r[1] != r[0].tool]

    def table(self) -> str:
        """Precision and recall per class, the routing time and every miss."""
        lines = ["| class | precision | recall | cases |", "|---|---|---|---|"]
        for label, want in (("tool needed", True), ("no tool needed", False)):
            right, predicted, expected = self._counts(want)
            lines.append(f"| {label} | {self.precision(want):.1%} ({right}/{predicted}) | "
                         f"{self.recall(want):.1%} ({right}/{expected}) | {expected} |")
        if self.seconds:
            lines.append(f"routing time: median {median(self.seconds) * 1e3:.1f} ms, "
                         f"max {max(self.seconds) * 1e3:.1f} ms per request")
        for case, picked, score in self.misses:
            lines.append(f"miss: {case.request!r} -> {picked or 'no tool'}"
                         f"{f' ({score:.2f})' if score is not None else ''}, expected {case.tool or 'no tool'}")
        return "\n".join(lines)


def evaluate_routing(router: Any, registry: Any = None,
                     cases: list[RoutingCase] | None = None) -> RoutingReport:
    """Route each case with ``router`` (a :class:`~omni_agent.tools.router.ToolRouter`)
    over ``registry`` (default: ``current_time`` and ``calculator``) and score the picks.

    The router is warmed first, so the times are per request, not the model's load.
    """
    if registry is None:
        from .builtin import calculator, current_time
        from .registry import ToolRegistry

        registry = ToolRegistry([current_time, calculator])
    router.warm(registry)
    report = RoutingReport()
    for case in cases or ROUTING_CASES:
        t0 = perf_counter()
        pick = router.route(case.request, registry)
        report.seconds.append(perf_counter() - t0)
        report.rows.append((case, pick[0] if pick else None, pick[1] if pick else None))
    return report
