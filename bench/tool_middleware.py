"""Tool middleware cost when no tool is called: what ToolCalling adds per event.

A stream of text deltas (plus round ends) goes through the bus with and without the
tool middleware; the difference per event is its cost (bus stage included). Two kinds
of text: plain prose (the fast path) and text with a '<' in every delta (each one is
checked as a possible start of a call).

    .venv/bin/python bench/tool_middleware.py [--events 20000] [--repeats 5]

Target (issue 5): at most 2 µs per event with no tool called.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
from time import perf_counter_ns

from omni_agent.bus import Bus, RoundEnd, TurnContext
from omni_agent.events import TextDelta
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.tools import ToolRegistry, calculator, current_time


async def run_once(bus: Bus, texts: list[str], rounds: int) -> int:
    """Nanoseconds to push every delta through ``bus`` and drain it."""
    ctx = TurnContext("bench", 1)
    per_round = len(texts) // rounds

    async def source():
        for r in range(rounds):
            for t in texts[r * per_round:(r + 1) * per_round]:
                yield TextDelta(t)
            yield RoundEnd(round=r)

    stream = bus.process_stream(source(), ctx)
    t0 = perf_counter_ns()
    async for _ in stream:
        pass
    return perf_counter_ns() - t0


async def measure(texts: list[str], repeats: int, rounds: int) -> tuple[float, float]:
    """Median ns per event without and with the tool middleware."""
    plain = Bus([])
    tools = Bus([ToolCalling(ToolRegistry([current_time, calculator]))])
    base, with_tools = [], []
    await run_once(tools, texts[:1000], 1)  # warm up
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            base.append(await run_once(plain, texts, rounds))
            with_tools.append(await run_once(tools, texts, rounds))
        finally:
            gc.enable()
    n = len(texts) + rounds
    return statistics.median(base) / n, statistics.median(with_tools) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10, help="round ends spread over the stream")
    args = ap.parse_args()
    prose = ["The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. "]
    angled = ["a < b ", "and ", "x<y ", "<b>bold</b> ", "ok. "]
    for label, words in (("plain prose (fast path)", prose), ("a '<' in most deltas", angled)):
        texts = [words[i % len(words)] for i in range(args.events)]
        base, tools = asyncio.run(measure(texts, args.repeats, args.rounds))
        added = (tools - base) / 1000
        print(f"{label:26s} bus alone {base / 1000:6.3f} µs/event   with ToolCalling "
              f"{tools / 1000:6.3f} µs/event   added {added:6.3f} µs/event "
              f"({'within' if added <= 2 else 'OVER'} the 2 µs target)")


if __name__ == "__main__":
    main()
