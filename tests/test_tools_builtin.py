"""Built-in tools: the time in a time zone, and the calculator (safe: no eval)."""

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from omni_agent.errors import ToolError
from omni_agent.tools.builtin import calculator, current_time, evaluate, resolve_timezone


def _clock(text):
    return re.search(r" is (\d\d:\d\d)", text).group(1)


@pytest.mark.parametrize("given_name,zone", [
    ("Tokyo", "Asia/Tokyo"), ("Asia/Tokyo", "Asia/Tokyo"), ("new york", "America/New_York"),
    ("San Francisco", "America/Los_Angeles"), ("PST", "America/Los_Angeles"), ("Japan", "Asia/Tokyo"),
    ("tokyo time", "Asia/Tokyo"), ("Paris, France", "Europe/Paris"), ("utc", "UTC"),
])
def test_current_time_gives_the_right_time_for_a_place(given_name, zone):
    out = current_time(given_name)
    now = datetime.now(ZoneInfo(zone))
    allowed = {f"{t:%H:%M}" for t in (now - timedelta(minutes=1), now)}
    assert _clock(out) in allowed
    assert str(now.year) in out


def test_current_time_takes_utc_offsets():
    out = current_time("UTC+5:30")
    now = datetime.now(ZoneInfo("UTC")) + timedelta(hours=5, minutes=30)
    assert _clock(out) in {f"{t:%H:%M}" for t in (now - timedelta(minutes=1), now)}
    assert out.startswith("The time in UTC+05:30 is ")


def test_unknown_time_zone_says_what_to_give():
    with pytest.raises(ToolError, match="IANA name like 'Asia/Tokyo'"):
        resolve_timezone("Atlantis")


@pytest.mark.parametrize("expr,result", [
    ("17 * 23", "391"), ("(2 + 3) * 4", "20"), ("2^10", "1024"), ("2 ** 0.5 * 2 ** 0.5", "2"),
    ("7 / 2", "3.5"), ("7 // 2", "3"), ("-3 + +5", "2"), ("10 % 3", "1"), ("15% of 80", "12"),
    ("200 * 15%", "30"), ("sqrt(144)", "12"), ("square root of 81", "9"), ("3 times 4 plus 2", "14"),
    ("round(pi, 3)", "3.142"), ("max(3, 9, 4)", "9"), ("log(100, 10)", "2"), ("factorial(5)", "120"),
    ("12 × 3 ÷ 4", "9"), ("What is 6 squared?", "36"),
])
def test_calculator_evaluates_arithmetic(expr, result):
    assert calculator(expr) == f"{expr.strip()} = {result}"


@pytest.mark.parametrize("expr,message", [
    ("__import__('os').system('ls')", "unknown function"), ("__import__('os')", "unknown function '__import__'"),
    ("(1).__class__", "Attribute is not allowed"),
    ("[x for x in range(9)]", "is not allowed"),
    ("lambda: 1", "is not allowed"),
    ("'a' * 3", "only numbers"),
    ("x + 1", "unknown name 'x'"),
    ("9 ** 9 ** 9", "too large"),
    ("1 / 0", "division by zero"),
    ("sqrt(-1)", "sqrt: math domain error"),
    ("2 +", "cannot read"),
    ("1" * 600, "too long"),
])
def test_calculator_refuses_anything_but_arithmetic(expr, message):
    with pytest.raises(ToolError, match=re.escape(message)):
        calculator(expr)


@given(a=st.integers(-10**6, 10**6), b=st.integers(-10**6, 10**6),
       op=st.sampled_from(["+", "-", "*", "//", "%"]))
def test_calculator_agrees_with_integer_arithmetic(a, b, op):
    if op in ("//", "%") and b == 0:
        with pytest.raises(ToolError):
            evaluate(f"{a} {op} ({b})")
        return
    expected = {"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else 0, "%": a % b if b else 0}[op]
    assert evaluate(f"{a} {op} ({b})") == expected
