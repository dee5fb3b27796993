"""The calculator refuses numbers too large to compute before it computes them.

Big-integer arithmetic holds the GIL, so a tool timeout in a worker thread cannot stop
it: one ``round(1, -10**7)`` would stall every session of the process. Each operation is
checked before it runs, and what would be too large is a tool error at once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from omni_agent.errors import ToolError
from omni_agent.tools import ToolRegistry
from omni_agent.tools.builtin import calculator, evaluate

# Each grows a number past any useful size, through a different operation or path. All
# are refused by the calculator; on an unguarded evaluator each costs seconds to minutes
# of CPU with the GIL held. (Attacks that would run until memory is exhausted, such as
# round(1, -10**18), are left out: on a regression they would take the test machine down
# rather than fail.)
_COPRIME_ISH = ",".join(f"10**9999+{k}" for k in range(1, 80, 2))
GROWTH_ATTACKS = [
    "round(1, -10000000)",                       # round builds 10**n for a negative ndigits
    "round(7, -10**7)",
    "round(factorial(1000), -2*10**7)",
    "round(10**9999, -(10**7+1))",
    "round(-1, -12345678)",
    f"lcm({_COPRIME_ISH})",                      # lcm multiplies up its arguments
    "10**10**10",                                # a tower of powers
    "9**9**9",
    "2**2**2**2**2",
    "(10**9999)**2",                             # a power of an already large number
    "factorial(1000)**5",
    "factorial(10**6)",                          # factorial of a large number
    "factorial(factorial(10))",
    "(10**4000)*(10**4000)*(10**4000)*(10**4000)",  # products that add up digits
    "(10**9999+1)*(10**9999+1)",
    "7**9000 * 7**9000",
    "floor(1e308)**40",                          # a float made into a large integer
    "max(10**9999, 3) * abs(-10**9999)",
]


async def _run_with_ticker(expression: str) -> tuple[BaseException | str, float, float]:
    """Call the calculator the way the tool middleware does (validated arguments, a worker
    thread) while a ticker on the event loop measures how late it gets to run."""
    registry = ToolRegistry([calculator])
    lag = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag
        loop = asyncio.get_running_loop()
        while not done.is_set():
            t = loop.time()
            await asyncio.sleep(0.005)
            lag = max(lag, loop.time() - t - 0.005)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)  # the ticker is running before the call starts
    t0 = time.perf_counter()
    try:
        outcome: BaseException | str = await registry.call("calculator", {"expression": expression})
    except Exception as e:  # noqa: BLE001 - the test inspects what came back
        outcome = e
    elapsed = time.perf_counter() - t0
    done.set()
    await tick
    return outcome, elapsed, lag


@pytest.mark.parametrize("expression", GROWTH_ATTACKS)
async def test_a_growth_attack_is_a_tool_error_at_once_and_the_event_loop_keeps_running(expression):
    outcome, elapsed, lag = await _run_with_ticker(expression)
    assert isinstance(outcome, ToolError), outcome
    assert "the number is too large to compute" in str(outcome)
    assert elapsed < 1.0, f"{expression} took {elapsed:.2f} s to refuse"
    assert lag < 0.25, f"{expression} stalled the event loop for {lag:.2f} s"


def test_at_least_fifteen_growth_attacks_are_checked():
    assert len(set(GROWTH_ATTACKS)) >= 15


def test_the_error_says_how_large_is_too_large():
    expected = r"the number is too large to compute: round\(x, -10000000\) \(ndigits from -12,041"
    with pytest.raises(ToolError, match=expected):
        evaluate("round(1, -10000000)")


@pytest.mark.parametrize("expression,digits", [
    ("10**10000", 10001), ("factorial(1000) * factorial(1000)", 5136),
    ("(10**9999 + 7) % (10**5000 + 3)", 5000),
])
def test_a_result_with_more_digits_than_can_be_shown_comes_in_scientific_notation(expression, digits):
    text = calculator(expression)
    value = text.rsplit(" = ", 1)[1]
    mantissa, exponent = value.split("e+")
    assert int(exponent) == digits - 1
    assert 1 <= float(mantissa) < 10


def test_scientific_notation_rounds_the_leading_digits():
    assert calculator("(10**5000 - 1) * 3").endswith("= 3e+5000")
    assert calculator("-(10**5000) * 12345678901234567").endswith("= -1.23456789012e+5016")


@pytest.mark.parametrize("expression,expected", [
    ("round(123456, -3)", 123000), ("round(2.5)", 2), ("round(pi, 3)", 3.142),
    ("round(1.5, 400)", 1.5), ("round(5, -12000)", 0),
    ("lcm(4, 6, 10)", 60), ("2 ** 9999 // 2 ** 9998", 2), ("(-1) ** (10**100)", 1),
    ("1 ** (10**1000)", 1), ("2 ** -3", 0.125), ("1.0001 ** 36500", 1.0001 ** 36500),
    ("factorial(1000) // factorial(999)", 1000),
])
def test_numbers_within_the_bounds_are_still_computed_exactly(expression, expected):
    assert evaluate(expression) == expected


def test_the_largest_allowed_integers_still_come_out_exact():
    assert len(calculator("factorial(1000)").rsplit(" = ", 1)[1]) == 2568
    assert calculator("10**3999").rsplit(" = ", 1)[1] == "1" + "0" * 3999
    assert evaluate("7**9000 * 7**5000") == 7 ** 14000
