"""Thinker speed: the transformers backend vs the llama.cpp backend on the same GGUF.

Both run the embedded SmolLM2-135M-Instruct Q4_1 GGUF through their real ``stream()``
paths; a third row is llama.cpp on the file requantized to Q4_0 (the ``requantize``
option: kernels llama.cpp repacks for AVX2). All go through their real paths (the worker thread, the bridge, the text router), one thread each, greedy, the
same prompts, runs interleaved (A, B, A, B, ...) so that a busy machine slows both alike.
Prints medians per backend — time to first token for a one-line question, decode tok/s
on a long answer — and the ratios::

    .venv/bin/python bench/thinker_speed.py            # 7 interleaved runs
    .venv/bin/python bench/thinker_speed.py --runs 3 --tokens 64
    .venv/bin/python bench/thinker_speed.py --llama-threads 2   # llama.cpp on both cores

(On this 2-core machine torch stalls with 2 threads; llama.cpp scales to both.)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest

QUESTION = "What is the capital of France?"
STORY = "Tell me a long story about a dragon who learns to sing."
SYSTEM = "You are a helpful voice assistant. Answer briefly."


async def one(thinker: Any, text: str, tokens: int) -> tuple[float, float, int]:
    """-> (seconds to first token, decode tokens/s after it, tokens)."""
    req = ThinkerRequest(messages=[Message("system", SYSTEM), Message("user", text)],
                         settings=GenerationSettings(max_tokens=tokens))
    t0 = time.perf_counter()
    first = None
    n = 0
    async for ev in thinker.stream(req):
        if first is None:
            first = time.perf_counter() - t0
        if type(ev).__name__ == "Finish":
            n = ev.completion_tokens or 0
    total = time.perf_counter() - t0
    if first is None:
        first = total
    rate = (n - 1) / (total - first) if n > 1 and total > first else 0.0
    return first, rate, n


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="threads of each backend")
    ap.add_argument("--llama-threads", type=int, default=None,
                    help="threads of the llama.cpp backend only (default: --threads)")
    args = ap.parse_args()
    llama_threads = args.llama_threads or args.threads

    from omni_agent.thinkers.llama_cpp import LlamaCppThinker
    from omni_agent.thinkers.transformers import TransformersThinker

    backends = {"transformers": TransformersThinker.default(threads=args.threads),
                "llama-cpp": LlamaCppThinker(None, threads=llama_threads),          # the same Q4_1 file
                "llama-cpp q4_0": LlamaCppThinker(None, threads=llama_threads, requantize="q4_0")}
    for name, t in backends.items():
        t0 = time.perf_counter()
        await asyncio.to_thread(t.load)
        await one(t, "hi", 4)  # warm: first-call allocations
        print(f"{name}: loaded in {time.perf_counter() - t0:.1f} s")
    ttft: dict[str, list[float]] = {k: [] for k in backends}
    rate: dict[str, list[float]] = {k: [] for k in backends}
    toks: dict[str, list[int]] = {k: [] for k in backends}
    for _ in range(args.runs):
        for name, t in backends.items():
            first, _, _ = await one(t, QUESTION, 16)
            ttft[name].append(first)
            _, r, n = await one(t, STORY, args.tokens)
            rate[name].append(r)
            toks[name].append(n)
    print(f"\n{args.runs} interleaved runs, threads: transformers {args.threads}, llama-cpp "
          f"{llama_threads}; greedy; medians")
    print(f"{'backend':<16}{'first token (one-line question)':>34}{'decode tok/s':>15}{'tokens':>8}")
    for name in backends:
        print(f"{name:<16}{statistics.median(ttft[name]) * 1000:>31.1f} ms"
              f"{statistics.median(rate[name]):>15.1f}{statistics.median(toks[name]):>8.0f}")
    a = "transformers"
    print()
    for b, what in (("llama-cpp", "the same Q4_1 GGUF: the embedded default"),
                    ("llama-cpp q4_0", "requantize='q4_0'")):
        print(f"{b} / transformers ({what}): decode {statistics.median(rate[b]) / statistics.median(rate[a]):.2f}x, "
              f"first token {statistics.median(ttft[a]) / statistics.median(ttft[b]):.2f}x sooner")
    for t in backends.values():
        await t.aclose()


if __name__ == "__main__":
    asyncio.run(main())
