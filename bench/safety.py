"""Safety benchmark: the latency the built-in safety chain adds to each clause.

    .venv/bin/python bench/safety.py [--repeats 5]

Clauses: the red-team set (PII) and the clean set (numbers that are not PII) from
tests/data, streamed in word-sized deltas as a Thinker streams them. For each clause:

    added = (stream stages with the chain - stream stages with no middleware)
            + utterance hooks with the chain

i.e. what the clause pays between the Thinker's last token of the clause and the
Utterance being approved for the Talker. Median over ``--repeats`` runs per clause; the
table shows p50 / p90 / p99 over clauses. Target (issue 4): at most 0.2 ms p50 for the
built-in safety chain.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import statistics
from pathlib import Path
from time import perf_counter_ns

from omni_agent.bus import Bus, RoundEnd, TurnContext
from omni_agent.events import TextDelta, Utterance
from omni_agent.middleware.markup import MarkupGuard
from omni_agent.middleware.pii import PIIRedactor
from omni_agent.middleware.policy import Blocklist, Moderation
from omni_agent.middleware.speech import SpeechShaper

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
TOKENS = re.compile(r"\s*\S{1,6}|\s+")


def clauses() -> list[str]:
    out = []
    for name in ("pii_redteam.jsonl", "clean_numbers.jsonl"):
        for line in (DATA / name).read_text(encoding="utf-8").splitlines():
            out.append(json.loads(line)["text"])
    return out


async def stream_ns(bus: Bus, tokens: list[str]) -> int:
    ctx = TurnContext("bench", 1)

    async def src():
        for t in tokens:
            yield TextDelta(t)
        yield RoundEnd()

    t0 = perf_counter_ns()
    async for _ in bus.process_stream(src(), ctx):
        pass
    return perf_counter_ns() - t0


async def utterance_ns(bus: Bus, text: str) -> int:
    ctx = TurnContext("bench", 1)
    utt = Utterance(text=text, display=text, original=text)
    t0 = perf_counter_ns()
    await bus.process_utterance(utt, ctx)
    return perf_counter_ns() - t0


async def added_per_clause(chain: list, texts: list[str], repeats: int) -> list[float]:
    base, bus = Bus([]), Bus(chain)
    out = []
    for text in texts:
        toks = TOKENS.findall(text)
        runs = []
        for _ in range(repeats):
            s_base = await stream_ns(base, toks)
            s_chain = await stream_ns(bus, toks)
            u = await utterance_ns(bus, text)
            runs.append(max(0, s_chain - s_base) + u)
        out.append(statistics.median(runs) / 1e6)  # ms
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


CHAINS = {
    "safety chain: markup + pii (speech only)": lambda: [MarkupGuard(), PIIRedactor()],
    "safety chain + blocklist + moderation": lambda: [
        MarkupGuard(), PIIRedactor(), Blocklist(["swordfish", "project zeus"]),
        Moderation(lambda text: True)],
    "pii with display filter (stream hold)": lambda: [PIIRedactor(display=True)],
    "markup alone (stream)": lambda: [MarkupGuard()],
    "pii alone (speech only)": lambda: [PIIRedactor()],
    "speech shaper alone (not safety)": lambda: [SpeechShaper()],
}


async def main(repeats: int) -> None:
    texts = clauses()
    gc.disable()
    # Warm up: imports, regex caches, num2words converters.
    for make in CHAINS.values():
        await added_per_clause(make(), texts[:20], 1)
    print(f"{len(texts)} clauses (red-team + clean sets), word-sized deltas, median of {repeats} runs each")
    print(f"{'chain':46} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    results = {}
    for name, make in CHAINS.items():
        xs = await added_per_clause(make(), texts, repeats)
        results[name] = xs
        print(f"{name:46} {pct(xs, .5):8.3f} {pct(xs, .9):8.3f} {pct(xs, .99):8.3f}")
    gc.enable()
    p50 = pct(results["safety chain: markup + pii (speech only)"], .5)
    print(f"\ntarget: built-in safety chain <= 0.2 ms p50 per clause -> {p50:.3f} ms "
          f"({'met' if p50 <= 0.2 else 'NOT met'})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    asyncio.run(main(ap.parse_args().repeats))
