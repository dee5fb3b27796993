"""Built-in tools: the current time in a time zone, a safe calculator, and a search of
the vector memory.

::

    Agent(thinker=..., tools=[current_time, calculator, memory_search])
    # or in a config:  tools = ["current_time", "calculator", "memory_search"]
"""

from __future__ import annotations

import ast
import math
import operator
import re
import threading
from datetime import datetime, timedelta, timezone as dt_timezone, tzinfo
from functools import lru_cache
from typing import Annotated, Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import Field

from omni_agent.errors import ToolError

from .registry import Tool, tool

__all__ = ["current_time", "calculator", "memory_search", "memory_search_tool", "resolve_timezone",
           "evaluate"]


# ---------------------------------------------------------------------------- time

# Places people name that are not the last part of an IANA zone name, and the zone the
# abbreviations people say usually mean (an abbreviation like "CST" is ambiguous; the
# common reading wins and the answer names the zone it used).
_ALIASES = {
    "utc": "UTC", "gmt": "UTC", "z": "UTC", "zulu": "UTC", "universal": "UTC",
    "est": "America/New_York", "edt": "America/New_York", "eastern": "America/New_York",
    "cst": "America/Chicago", "cdt": "America/Chicago", "central": "America/Chicago",
    "mst": "America/Denver", "mdt": "America/Denver", "mountain": "America/Denver",
    "pst": "America/Los_Angeles", "pdt": "America/Los_Angeles", "pacific": "America/Los_Angeles",
    "cet": "Europe/Paris", "cest": "Europe/Paris", "bst": "Europe/London",
    "jst": "Asia/Tokyo", "kst": "Asia/Seoul", "ist": "Asia/Kolkata", "sgt": "Asia/Singapore",
    "hkt": "Asia/Hong_Kong", "aest": "Australia/Sydney", "aedt": "Australia/Sydney",
    "san francisco": "America/Los_Angeles", "seattle": "America/Los_Angeles",
    "silicon valley": "America/Los_Angeles", "washington": "America/New_York",
    "washington dc": "America/New_York", "boston": "America/New_York",
    "miami": "America/New_York", "atlanta": "America/New_York", "philadelphia": "America/New_York",
    "dallas": "America/Chicago", "houston": "America/Chicago", "austin": "America/Chicago",
    "montreal": "America/Toronto", "ottawa": "America/Toronto", "rio de janeiro": "America/Sao_Paulo",
    "rio": "America/Sao_Paulo", "beijing": "Asia/Shanghai", "shenzhen": "Asia/Shanghai",
    "delhi": "Asia/Kolkata", "new delhi": "Asia/Kolkata", "mumbai": "Asia/Kolkata",
    "bangalore": "Asia/Kolkata", "bengaluru": "Asia/Kolkata", "kyoto": "Asia/Tokyo",
    "osaka": "Asia/Tokyo", "milan": "Europe/Rome", "florence": "Europe/Rome",
    "barcelona": "Europe/Madrid", "munich": "Europe/Berlin", "frankfurt": "Europe/Berlin",
    "hamburg": "Europe/Berlin", "geneva": "Europe/Zurich", "st petersburg": "Europe/Moscow",
    "saint petersburg": "Europe/Moscow", "cape town": "Africa/Johannesburg",
    "hanoi": "Asia/Bangkok", "abu dhabi": "Asia/Dubai", "tel aviv": "Asia/Jerusalem",
    "japan": "Asia/Tokyo", "china": "Asia/Shanghai", "india": "Asia/Kolkata",
    "korea": "Asia/Seoul", "south korea": "Asia/Seoul", "uk": "Europe/London",
    "england": "Europe/London", "britain": "Europe/London", "united kingdom": "Europe/London",
    "france": "Europe/Paris", "germany": "Europe/Berlin", "spain": "Europe/Madrid",
    "italy": "Europe/Rome", "netherlands": "Europe/Amsterdam", "russia": "Europe/Moscow",
    "brazil": "America/Sao_Paulo", "mexico": "America/Mexico_City", "egypt": "Africa/Cairo",
    "australia": "Australia/Sydney", "new zealand": "Pacific/Auckland",
    "singapore": "Asia/Singapore", "thailand": "Asia/Bangkok", "vietnam": "Asia/Ho_Chi_Minh",
    "indonesia": "Asia/Jakarta", "philippines": "Asia/Manila", "turkey": "Europe/Istanbul",
    "ireland": "Europe/Dublin", "portugal": "Europe/Lisbon", "greece": "Europe/Athens",
    "switzerland": "Europe/Zurich", "sweden": "Europe/Stockholm", "norway": "Europe/Oslo",
    "poland": "Europe/Warsaw", "canada": "America/Toronto", "argentina": "America/Argentina/Buenos_Aires",
    "usa": "America/New_York", "us": "America/New_York", "united states": "America/New_York",
    "america": "America/New_York", "new york city": "America/New_York", "nyc": "America/New_York",
    "la": "America/Los_Angeles", "sf": "America/Los_Angeles",
}
_OFFSET = re.compile(r"^(?:utc|gmt)\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?$")


@lru_cache(maxsize=1)
def _zone_index() -> tuple[dict[str, str], dict[str, str]]:
    """(lower-case IANA name -> name, lower-case city part -> name)."""
    full: dict[str, str] = {}
    city: dict[str, str] = {}
    # Canonical region zones first so "Europe/Paris" wins over legacy aliases.
    for name in sorted(available_timezones(), key=lambda z: (z.count("/") != 1, z.startswith(("Etc", "US/", "SystemV")), z)):
        full[name.lower()] = name
        last = name.rsplit("/", 1)[-1].replace("_", " ").lower()
        city.setdefault(last, name)
    return full, city


def resolve_timezone(name: str) -> tuple[tzinfo, str]:
    """A time zone from an IANA name ("Asia/Tokyo"), a city or country ("Tokyo",
    "new york", "Japan"), a common abbreviation ("PST") or an offset ("UTC+9").

    Returns (tzinfo, canonical name). Raises :class:`ToolError` when nothing matches.
    """
    raw = (name or "").strip()
    key = re.sub(r"\s+", " ", raw.lower().replace("_", " ")).strip(" .?!")
    key = re.sub(r"\b(time ?zone|timezone|time|city|in)\b", "", key).strip(" ,")
    full, city = _zone_index()
    candidates = [key] + [p.strip() for p in key.split(",") if p.strip()]
    for k in candidates:
        if not k:
            continue
        m = _OFFSET.match(k.replace(" ", ""))
        if m:
            sign = 1 if m.group(1) == "+" else -1
            hours, minutes = int(m.group(2)), int(m.group(3) or 0)
            if hours > 14 or minutes >= 60:
                break
            off = timedelta(hours=hours, minutes=minutes) * sign
            label = f"UTC{m.group(1)}{hours:02d}:{minutes:02d}"
            return dt_timezone(off, label), label
        # Aliases and region zones first: "singapore" is Asia/Singapore, not the legacy
        # top-level link of the same name.
        zone = (_ALIASES.get(k) or ("/" not in k and city.get(k)) or full.get(k.replace(" ", "_"))
                or full.get(k))
        if zone:
            try:
                return ZoneInfo(zone), zone
            except ZoneInfoNotFoundError:  # pragma: no cover - tz database incomplete
                break
    raise ToolError(f"unknown time zone {name!r}: give an IANA name like 'Asia/Tokyo', a city "
                    "like 'Tokyo', or an offset like 'UTC+9'")


@tool(examples=[("What time is it in Tokyo?", {"timezone": "Tokyo"}),
                ("What's the time in New York right now?", {"timezone": "New York"}),
                ("Do you know the current time in Rome?", {"timezone": "Rome"}),
                ("What is the date today in London?", {"timezone": "London"})])
def current_time(timezone: str = "UTC") -> str:
    """The current date and time in a time zone.

    Args:
        timezone: A city ("Tokyo"), an IANA time zone ("Asia/Tokyo") or an offset ("UTC+9").
    """
    tz, zone = resolve_timezone(timezone)
    now = datetime.now(tz)
    offset = now.strftime("%z")
    offset = f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"
    given = (timezone or "").strip()
    if given.islower():
        given = given.title()
    hour12 = now.strftime("%I:%M %p").lstrip("0")
    date = f"{now:%A}, {now.day} {now:%B %Y}"
    # The clock reading comes first: a small model answering from this copies its start.
    if zone == offset or zone == "UTC":  # a bare offset: nothing more to say about it
        return f"The time in {zone} is {now:%H:%M} ({hour12}) on {date}."
    place = given if given and given.lower() != zone.lower() else zone
    return (f"The time in {place} is {now:%H:%M} ({hour12}) on {date} "
            f"({zone + ', ' if place != zone else ''}{offset}).")


# ---------------------------------------------------------------------------- calculator

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}


# Big-integer arithmetic holds the GIL: a worker-thread timeout cannot stop it, and one
# huge number stalls every session of the process. So each operation that can grow an
# integer is checked *before* it runs, from its operands' sizes, against _MAX_BITS; within
# that bound no single operation takes more than a few milliseconds.
_MAX_BITS = 40_000  # ~12,000 digits: beyond that a result is useless and slow to make
_MAX_DIGITS = int(_MAX_BITS * math.log10(2))  # 12,041
_MAX_FACTORIAL = 1000
# Integers with more digits are shown in scientific notation: int -> str is quadratic,
# and Python refuses it past 4,300 digits anyway (sys.get_int_max_str_digits).
_MAX_SHOWN_DIGITS = 4000


def _too_large(what: str, limit: str = f"at most about {_MAX_DIGITS:,} digits") -> ToolError:
    return ToolError(f"the number is too large to compute: {what} ({limit})")


def _digits(bits: float) -> str:
    return f"about {bits * math.log10(2):,.0f} digits" if bits < 1e15 else "astronomically many digits"


def _check_size(v: Any) -> Any:
    if isinstance(v, int) and v.bit_length() > _MAX_BITS:
        raise _too_large(f"the result would have {_digits(v.bit_length())}")
    return v


def _check_binop(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse an integer ``**`` or ``*`` whose result would be over _MAX_BITS (the other
    operators cannot grow a number by more than a bit, or work in floats)."""
    if not (isinstance(left, int) and isinstance(right, int)):
        return  # float arithmetic: constant time, overflow is an OverflowError
    if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
        bits = math.inf if right.bit_length() > 60 else right * math.log2(abs(left))
        if bits > _MAX_BITS:
            raise _too_large(f"{_short(left)} ** {_short(right)} would have {_digits(bits)}")
    elif isinstance(op, ast.Mult) and left.bit_length() + right.bit_length() > _MAX_BITS + 1:
        raise _too_large(f"the product would have {_digits(left.bit_length() + right.bit_length())}")


def _short(v: Any) -> str:
    """A number for a message: never the thousands of digits of a large one."""
    if isinstance(v, int) and v.bit_length() > 64:
        return f"(a number of {_digits(v.bit_length())})"
    return str(v)


def _factorial(n: Any) -> int:
    if (isinstance(n, float) and not n.is_integer()) or n < 0:
        raise ToolError("factorial needs a whole number of at least 0")
    if n > _MAX_FACTORIAL:
        raise _too_large(f"factorial({_short(n)})", f"at most factorial({_MAX_FACTORIAL})")
    return math.factorial(int(n))


def _round(x: Any, ndigits: Any = None) -> Any:
    # round(int, -n) builds 10**n: bound n like any other number of digits.
    if isinstance(ndigits, int) and abs(ndigits) > _MAX_DIGITS:
        raise _too_large(f"round(x, {_short(ndigits)})",
                         f"ndigits from {-_MAX_DIGITS:,} to {_MAX_DIGITS:,}")
    return round(x) if ndigits is None else round(x, ndigits)


def _lcm(*args: Any) -> int:
    # The lcm can have as many bits as all its arguments together.
    bits = sum(a.bit_length() for a in args if isinstance(a, int))
    if bits > _MAX_BITS:
        raise _too_large(f"the lcm could have {_digits(bits)}")
    return math.lcm(*args)


def _log(x: Any, base: Any = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


_FUNCS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "cbrt": lambda x: math.copysign(abs(x) ** (1 / 3), x), "abs": abs,
    "round": _round, "min": min, "max": max, "floor": math.floor, "ceil": math.ceil,
    "log": _log, "ln": math.log, "log10": math.log10, "log2": math.log2, "exp": math.exp,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "atan2": math.atan2, "sinh": math.sinh, "cosh": math.cosh,
    "tanh": math.tanh, "degrees": math.degrees, "radians": math.radians,
    "factorial": _factorial, "hypot": math.hypot, "gcd": math.gcd, "lcm": _lcm,
}
_CONSTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf}
# An expression starts with a number, a sign, a bracket or a word (sqrt, pi, "square
# root of"): said in the schema, this keeps a small model under constrained decoding from
# starting the string with junk.
_EXPR_START = r"^[-+(0-9A-Za-z√π]"
_MAX_LEN = 500

_WORDS = [
    (r"\bsquare root of\s*", "sqrt "), (r"\bcube root of\s*", "cbrt "),
    (r"\bto the power of\b", "**"), (r"\bto the\s+(\d+)(?:st|nd|rd|th) power\b", r"** \1"),
    (r"\bsquared\b", "**2"), (r"\bcubed\b", "**3"), (r"\bmultiplied by\b", "*"),
    (r"\btimes\b", "*"), (r"\bdivided by\b", "/"), (r"\bover\b", "/"), (r"\bplus\b", "+"),
    (r"\bminus\b", "-"), (r"\bmodulo\b|\bmod\b", "%"),
]


def _normalise(expr: str) -> str:
    s = expr.strip().rstrip("=?").strip()
    s = (s.replace("×", "*").replace("·", "*").replace("÷", "/").replace("−", "-")
         .replace("^", "**").replace("√", "sqrt "))
    s = re.sub(r"(?i)^\s*(what is|what's|calculate|compute|evaluate)\s+", "", s)
    for pat, rep in _WORDS:
        s = re.sub(pat, rep, s, flags=re.IGNORECASE)
    # "sqrt 16" -> "sqrt(16)" for a bare number after a function name.
    s = re.sub(r"\b(sqrt|cbrt)\s+(\d+(?:\.\d+)?)", r"\1(\2)", s)
    # Percentages: "15% of 80" and "80 * 15%" (a % followed by an operand stays modulo).
    s = re.sub(r"(\d+(?:\.\d+)?)\s*%\s*of\b", r"(\1/100)*", s, flags=re.IGNORECASE)
    s = re.sub(r"(\d+(?:\.\d+)?)\s*%(?=\s*(?:$|[)+\-*/,]))", r"(\1/100)", s)
    return s


def _eval(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left), _eval(node.right)
        _check_binop(node.op, left, right)
        try:
            return _check_size(_BINOPS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name):
        if node.id in _CONSTS:
            return _CONSTS[node.id]
        raise ToolError(f"unknown name {node.id!r}: use numbers, + - * / // % **, "
                        f"parentheses, the constants {', '.join(_CONSTS)} and functions "
                        f"like sqrt, sin, log")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
            fname = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ToolError(f"unknown function {fname!r}: use one of {', '.join(sorted(_FUNCS))}")
        if node.keywords:
            raise ToolError("functions take plain arguments here, not keyword arguments")
        args = [_eval(a) for a in node.args]
        try:
            return _check_size(_FUNCS[node.func.id](*args))
        except (ValueError, TypeError, OverflowError) as e:
            raise ToolError(f"{node.func.id}: {e}") from None
    raise ToolError(f"{type(node).__name__} is not allowed in a calculation: use numbers, "
                    "arithmetic operators, parentheses and math functions")


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely (no ``eval``: an AST walker over a
    whitelist of numbers, operators, math functions and constants). Raises ToolError."""
    if len(expression) > _MAX_LEN:
        raise ToolError(f"the expression is too long (at most {_MAX_LEN} characters)")
    src = _normalise(expression)
    if not src:
        raise ToolError("the expression is empty: give one like '17 * 23'")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot read {expression!r} as arithmetic: write it like "
                        "'(2 + 3) * 4' or 'sqrt(16)'") from None
    try:
        value = _eval(tree)
    except OverflowError:
        raise _too_large("a decimal result would be beyond floating-point range",
                         "at most about 1.8e308") from None
    if isinstance(value, complex):  # pragma: no cover - ** with fractional powers of negatives
        raise ToolError("the result is not a real number")
    return value


def _fmt(v: int | float) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.12g}"
    if v.bit_length() > 3 * _MAX_SHOWN_DIGITS and _exponent10(abs(v)) >= _MAX_SHOWN_DIGITS:
        return _scientific(v)
    return str(v)


def _exponent10(a: int) -> int:
    """floor(log10(a)) of a positive integer, without converting it to text."""
    exp = int(math.log10(a))  # a float log10 of an int is off by at most one
    if 10 ** exp > a:
        exp -= 1
    elif 10 ** (exp + 1) <= a:
        exp += 1
    return exp


def _scientific(v: int) -> str:
    """A large integer as a float is shown: 12 significant digits, ``1.23456789012e+5016``
    (computed with integers: the number is far beyond float range)."""
    a = abs(v)
    exp = _exponent10(a)
    scale = 10 ** (exp - 11)
    lead, rest = divmod(a, scale)
    if 2 * rest >= scale:
        lead += 1
    if lead == 10 ** 12:  # 9.99999999999|5 rounded up to 10
        lead, exp = lead // 10, exp + 1
    digits = str(lead).rstrip("0")
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if v < 0 else ''}{mantissa}e+{exp}"


@tool(examples=[("What is 12 times 31?", {"expression": "12 times 31"}),
                ("What is 20% of 50?", {"expression": "20% of 50"}),
                ("What's the square root of 81?", {"expression": "square root of 81"}),
                ("Calculate (3 + 4) * 2", {"expression": "(3 + 4) * 2"})])
def calculator(expression: Annotated[str, Field(pattern=_EXPR_START)]) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "17 * 23" or "sqrt(2) / 3".

    Args:
        expression: Arithmetic with + - * / // % ** and parentheses; functions like sqrt, sin, log; constants pi and e.
    """
    value = evaluate(expression)
    return f"{expression.strip()} = {_fmt(value)}"


# ---------------------------------------------------------------------------- memory search

_memories: dict[tuple[str, str, str], Any] = {}
_memories_lock = threading.Lock()


def _open_memory(collection: str, data_dir: str | None, url: str | None) -> Any:
    """The vector memory a search tool reads, opened once (and never created: a search
    must not make an empty store where the user expected their documents)."""
    from omni_agent.memory.vector import VectorMemory

    key = (collection, str(data_dir or ""), url or "")
    mem = _memories.get(key)
    if mem is None:
        with _memories_lock:
            mem = _memories.get(key)
            if mem is None:
                mem = VectorMemory(collection, data_dir=data_dir, url=url, create=False)
                _memories[key] = mem
    return mem


def memory_search_tool(memory: Any = None, *, collection: str | None = None,
                       data_dir: str | None = None, url: str | None = None, k: int = 3,
                       min_score: float | None = 0.2, name: str = "memory_search",
                       description: str | None = None) -> Tool:
    """A tool that searches a :class:`~omni_agent.memory.VectorMemory` by meaning.

    Give the ``memory`` itself, or where it lives (``collection``, ``data_dir`` or a Chroma
    ``url``; default: the collection ``omni-agent ingest`` fills). It returns the ``k`` best
    passages with their sources; ``min_score`` drops weak matches. The built-in
    ``memory_search`` is this with the defaults.
    """
    def search(query: str) -> str:
        from omni_agent.memory.paths import DEFAULT_COLLECTION

        try:
            mem = memory if memory is not None else _open_memory(collection or DEFAULT_COLLECTION,
                                                                 data_dir, url)
            passages = mem.search(query, k, min_score=min_score)
        except Exception as e:  # noqa: BLE001 - the store's own message says what to do
            raise ToolError(f"memory search failed: {e}") from e
        if not passages:
            return f"No stored passage matches {query!r}."
        return "\n".join(f"[{i}] ({p.label}) {p.text}" for i, p in enumerate(passages, 1))

    search.__name__ = name
    search.__doc__ = (description or
                      "Search the stored documents and notes for passages about a topic.") + """

    Args:
        query: What to look for, in a few words.
    """
    return Tool(search, name=name, examples=[
        ("What do my notes say about the museum opening hours?", {"query": "museum opening hours"}),
        ("Search my documents for the refund policy", {"query": "refund policy"})])


memory_search = memory_search_tool()
"""The built-in memory search over the default collection (``omni-agent ingest`` fills it)."""
