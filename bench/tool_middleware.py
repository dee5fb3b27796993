"""Tool middleware cost when no tool is called: what ToolCalling adds per event.

A stream of text deltas (plus round ends) goes through the bus with and without the
tool middleware; the difference per event is its cost (bus stage included). Two kinds
of text: plain prose (the fast path) and text with a '<' in every delta (each one is
checked as a possible start of a call).

    .venv/bin/python bench/tool_middleware.py [--events 20000] [--repeats 5]

Target (issue 5): at most 2 µs per event with no tool called.

``--calls N`` (default 200; 0 skips it) also times one tool call through the middleware
(a ToolCall event and the round's end in, the ToolResult out), p50 and p90 per call: a
local ``@tool`` against the same tool served by ``mcp-server-time`` over stdio (issue 19,
quoted in docs/mcp.md).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics

import anyio
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


async def time_calls(registry: ToolRegistry, name: str, arguments: str, n: int) -> list[float]:
    """Seconds per call of ``name`` through ToolCalling (a bare bus: the round runs in place)."""
    from omni_agent.events import ToolCall

    bus = Bus([ToolCalling(registry, filler=None)])
    out = []
    for i in range(n + 5):
        ctx = TurnContext("bench", i)

        async def source():
            yield ToolCall(id=f"c{i}", name=name, arguments=arguments)
            yield RoundEnd(round=0)

        t0 = perf_counter_ns()
        async for ev in bus.process_stream(source(), ctx):
            pass
        dt = (perf_counter_ns() - t0) / 1e9
        assert ctx.trace.tool_calls[-1]["status"] == "ok", ctx.trace.tool_calls[-1]
        if i >= 5:  # the first calls warm the thread pool and the server
            out.append(dt)
    return out


async def mcp_vs_local(n: int) -> None:
    import json
    import sys
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from omni_agent.tools import tool
    from omni_agent.tools.mcp import MCPSource

    @tool
    def get_current_time(timezone: str) -> str:
        """Get current time in a specific timezone.

        Args:
            timezone: IANA timezone name.
        """
        now = datetime.now(ZoneInfo(timezone))
        return json.dumps({"timezone": timezone, "datetime": now.isoformat(timespec="seconds"),
                           "day_of_week": now.strftime("%A"), "is_dst": bool(now.dst())}, indent=2)

    args = '{"timezone": "Asia/Tokyo"}'
    local = await time_calls(ToolRegistry([get_current_time]), "get_current_time", args, n)
    src = MCPSource.stdio("time", sys.executable, ["-m", "mcp_server_time", "--local-timezone", "UTC"],
                          tools=["get_current_time"])
    registry = ToolRegistry([src])
    async with anyio.create_task_group() as tg:  # the source's owner, as the agent runs it
        await tg.start(src.serve)
        await src.wait_started()
        remote = await time_calls(registry, "get_current_time", args, n)
        tg.cancel_scope.cancel()

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] * 1000

    for label, xs in (("local @tool (worker thread)", local), ("MCP tool over stdio", remote)):
        print(f"{label:28s} p50 {q(xs, 0.5):7.3f} ms/call   p90 {q(xs, 0.9):7.3f} ms/call   ({len(xs)} calls)")
    print(f"{'MCP overhead':28s} p50 {q(remote, 0.5) - q(local, 0.5):7.3f} ms/call")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10, help="round ends spread over the stream")
    ap.add_argument("--calls", type=int, default=200, help="tool calls to time, local vs MCP (0: skip)")
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
    if args.calls:
        anyio.run(mcp_vs_local, args.calls)


if __name__ == "__main__":
    main()
