"""Bus benchmark: a scripted Thinker streams 10,000 deltas through 0, 1, 4 and 16
pass-through middleware. Prints per-event latency added by the middleware (p50, p99),
per middleware, and events/s — through the bus alone and through a whole agent turn.

    .venv/bin/python bench/bus.py [--events 10000] [--repeats 5]

Targets (issue 2): at most 2 µs per middleware per event; at least 200,000 events/s
through 4 middleware.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
from time import perf_counter_ns

from omni_agent.agent import Agent
from omni_agent.bus import Bus, Middleware, TurnContext
from omni_agent.events import TextDelta
from omni_agent.testing import ScriptedThinker


class PassThrough(Middleware):
    def on_event(self, event, ctx):
        return event


async def bus_run(n_mw: int, n_events: int) -> tuple[list[int], float]:
    """Per-event latency (ns) from the Thinker's yield to the bus's output, and events/s."""
    bus = Bus([PassThrough(name=f"mw{i}") for i in range(n_mw)])
    ctx = TurnContext("bench", 1)
    deltas = [TextDelta("tok ") for _ in range(n_events)]
    stamps = [0] * n_events

    async def thinker():
        for i, d in enumerate(deltas):
            stamps[i] = perf_counter_ns()
            yield d

    lat = [0] * n_events
    i = 0
    t0 = perf_counter_ns()
    async for _ in bus.process_stream(thinker(), ctx):
        lat[i] = perf_counter_ns() - stamps[i]
        i += 1
    total = perf_counter_ns() - t0
    assert i == n_events
    return lat, n_events / (total / 1e9)


async def agent_run(n_mw: int, n_events: int) -> float:
    """Events/s through a whole Thinker-only agent turn (pump task, queue, segmenter)."""
    thinker = ScriptedThinker([["tok "] * n_events])
    agent = Agent(thinker=thinker, middleware=[PassThrough(name=f"mw{i}") for i in range(n_mw)],
                  fallback=None)
    session = agent.session("bench")
    t0 = perf_counter_ns()
    n = 0
    async for ev in session.run("go"):
        n += 1
    return n_events / ((perf_counter_ns() - t0) / 1e9)


def pct(xs: list[int], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    counts = [0, 1, 4, 16]
    base50 = base99 = 0.0
    print(f"{args.events} deltas, median of {args.repeats} runs")
    print(f"{'middleware':>10} {'p50 ns':>8} {'p99 ns':>8} {'added/mw p50':>13} {'added/mw p99':>13} "
          f"{'bus ev/s':>10} {'agent ev/s':>11}")
    for n in counts:
        p50s, p99s, rates, arates = [], [], [], []
        for _ in range(args.repeats):
            gc.collect()
            lat, rate = await bus_run(n, args.events)
            p50s.append(pct(lat, 0.5))
            p99s.append(pct(lat, 0.99))
            rates.append(rate)
            arates.append(await agent_run(n, args.events))
        p50, p99 = statistics.median(p50s), statistics.median(p99s)
        if n == 0:
            base50, base99 = p50, p99
            add50 = add99 = "-"
        else:
            add50 = f"{(p50 - base50) / n / 1000:.3f} µs"
            add99 = f"{(p99 - base99) / n / 1000:.3f} µs"
        print(f"{n:>10} {p50:>8.0f} {p99:>8.0f} {add50:>13} {add99:>13} "
              f"{statistics.median(rates):>10,.0f} {statistics.median(arates):>11,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
