"""The tool router on the real all-MiniLM-L6-v2: which requests get a tool, and which do
not — above all sentences full of numbers, times and dates that need none ("My phone
number is 555-867-5309"), which the calculator's pattern used to take for arithmetic.

The table is ``omni_agent.tools.evaluation.ROUTING_CASES``, the set ``bench/tool_success.py``
reports precision and recall on. Slow: loads the embedding model (~3 s)."""

from __future__ import annotations

import re
import time

import pytest

from omni_agent.agent import Agent
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.testing import ScriptedThinker
from omni_agent.tools import ToolRegistry, calculator, current_time
from omni_agent.tools.evaluation import ROUTING_CASES, RoutingCase, evaluate_routing
from omni_agent.tools.router import DEFAULT_PATTERNS, ToolRouter

pytestmark = pytest.mark.slow

PHONE = "My phone number is 555-867-5309, please remember it."


@pytest.fixture(scope="module")
def router():
    return ToolRouter()


@pytest.fixture(scope="module")
def registry():
    return ToolRegistry([current_time, calculator])


# ---------------------------------------------------------------------------- the table


@pytest.mark.parametrize("case", ROUTING_CASES, ids=[c.request for c in ROUTING_CASES])
def test_router_picks_the_expected_tool_or_none(router, registry, case):
    pick = router.route(case.request, registry)
    assert (pick[0] if pick else None) == case.tool


def test_router_precision_and_recall_on_the_case_set_are_complete(router, registry):
    report = evaluate_routing(router, registry)
    assert report.precision(True) == report.recall(True) == 1.0, report.table()
    assert report.precision(False) == report.recall(False) == 1.0, report.table()


# ---------------------------------------------------------------------------- the sentence


def test_a_phone_number_to_remember_reaches_no_calculator_and_speaks_no_arithmetic_error(router):
    thinker = ScriptedThinker(["Got it, I'll remember that."])
    agent = Agent(thinker=thinker, tools=[current_time, calculator],
                  middleware=[ToolCalling(router=router, filler=None)])
    r = agent.ask(PHONE)
    assert r.tool_calls == []
    assert thinker.requests[0].tool_choice == "none" and thinker.requests[0].constraint is None
    assert "cannot read" not in r.text and r.text == "Got it, I'll remember that."


def test_arithmetic_inside_the_same_sentence_shapes_is_still_a_calculation(router, registry):
    for text in ("What is 555 - 867?", "what's 12/4?", "What is 3 minus 2?", "How much is 1,234 plus 4,321?"):
        assert router.route(text, registry)[0] == "calculator", text


# ---------------------------------------------------------------------------- the pattern


@pytest.mark.parametrize("text", [
    "555-867-5309", "12/05", "3-2", "2-for-1", "4-12", "9-5", "12-34-56", "95%",
    "+1 555 010 9999", "7:45", "10:30 - 11:00", "20% off", "5+ years", "3 times a week",
])
def test_the_calculator_pattern_wants_an_operand_on_both_sides_and_no_tight_dash_or_slash(text):
    assert not re.search(DEFAULT_PATTERNS["calculator"], text, re.I), text


@pytest.mark.parametrize("text", [
    "3 - 2", "12 / 4", "2+2", "17 * 23", "2 ** 10", "7 x 8", "15% of 80", "45 percent of 200",
    "What's 100-37?", "9 squared", "square root of 144", "sqrt(2)", "(3 + 4) * 2",
    "12 divided by -3", "Multiply 12 by 12", "sum of 3 and 4",
])
def test_the_calculator_pattern_recognises_arithmetic(text):
    assert re.search(DEFAULT_PATTERNS["calculator"], text, re.I), text


def test_the_calculator_pattern_scans_long_input_in_linear_time():
    pat = re.compile(DEFAULT_PATTERNS["calculator"], re.I)
    for text in ("1," * 5000 + "x", "1-" * 5000, "what is " + "1" * 5000 + "-"):
        t0 = time.perf_counter()
        pat.search(text)
        assert time.perf_counter() - t0 < 0.5, text[:20]  # quadratic took ~9 s on "1,1,1,..."


# ---------------------------------------------------------------------------- the margin and the report


def test_a_tool_barely_nearer_than_needing_none_is_not_picked(registry):
    strict, lax = ToolRouter(margin=0.05, patterns={}), ToolRouter(margin=0.0, patterns={})
    text = "The sale gives 20% off everything."
    scores = lax.scores(text, registry)
    assert scores["calculator"] > scores[""]  # nearer to "What is 20% of 50?" than to needing none
    assert lax.route(text, registry)[0] == "calculator"
    assert strict.route(text, registry) is None


def test_the_routing_report_counts_precision_and_recall_per_class():
    class Picks:
        """A router double answering from a table (the real one is tested above)."""

        table = {"a": ("calculator", 0.9), "b": ("current_time", 0.5), "c": None, "d": ("calculator", 0.9)}

        def warm(self, registry):
            return self

        def route(self, text, registry):
            return self.table[text]

    cases = [RoutingCase("a", "calculator"), RoutingCase("b", "calculator"),  # right, wrong tool
             RoutingCase("c", None), RoutingCase("d", None)]                   # right, false alarm
    report = evaluate_routing(Picks(), ToolRegistry([calculator]), cases)
    assert (report.precision(True), report.recall(True)) == (1 / 3, 1 / 2)
    assert (report.precision(False), report.recall(False)) == (1.0, 1 / 2)
    assert [c.request for c, _, _ in report.misses] == ["b", "d"]
    assert "| tool needed | 33.3% (1/3) | 50.0% (1/2) | 2 |" in report.table()
