"""Time to first audio: how long after the Thinker's first token the first audio comes out.

Two measurements (issue 3):

1. ``embedded`` — the embedded Thinker (SmolLM2-135M-Instruct, transformers, CPU) and
   the Piper Talker, one fresh session per turn, 20 turns. Reports the p50 of
   first token -> first audio chunk out of the agent, and splits it into model compute
   (the Thinker generating the tokens of the first clause + Piper synthesizing its first
   chunk), the segmenter's lookahead (after a "." it waits for the next token, to tell
   "3.5" or "Dr. Smith" from a sentence end: model time, reported on its own), and the
   framework's share (everything else: bus, segmenter, utterance approval, the queue to
   the Talker task, the Talker-side hooks and the output queue).
   Target: framework share at most 5 ms p50.

2. ``scripted`` — a scripted Thinker (no model) and a zero-cost Talker (hands out a ready
   chunk at once): first delta -> first audio chunk, when the first clause is complete
   within the first 10 deltas. This is the framework alone. Target: at most 0.5 ms p50
   (Pipecat 1.14's equivalent path: 1.3–8.4 ms on this machine, per the issue).

::

    .venv/bin/python bench/first_audio.py              # both
    .venv/bin/python bench/first_audio.py scripted --turns 500
    .venv/bin/python bench/first_audio.py embedded --turns 20
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
from time import perf_counter
from typing import Any, AsyncIterator

from omni_agent.agent import Agent
from omni_agent.events import AudioChunk, TextDelta, Utterance
from omni_agent.testing import ScriptedThinker
from omni_agent.thinker import GenerationSettings, ThinkerRequest


class TimedThinker:
    """Wraps a Thinker; records when it yields each text delta (before the framework)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name = inner.name
        self.accepts = inner.accepts
        self.stamps: list[tuple[float, str]] = []
        self.ended = 0.0  # when the inner stream finished (the end-of-text token came)

    async def stream(self, request: ThinkerRequest) -> AsyncIterator[Any]:
        async for ev in self.inner.stream(request):
            if type(ev) is TextDelta:
                self.stamps.append((perf_counter(), ev.text))
            yield ev
        self.ended = perf_counter()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def load(self) -> Any:
        load = getattr(self.inner, "load", None)
        return load() if load else None


class TimedTalker:
    """Wraps a Talker; records when speak() is called and when the backend hands out its
    first chunk, so backend compute can be told apart from framework time."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self.called: list[float] = []
        self.first_chunk: list[float] = []

    async def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]:
        self.called.append(perf_counter())
        first = True
        async for chunk in self.inner.speak(utterance):
            if first:
                self.first_chunk.append(perf_counter())
                first = False
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class ZeroCostTalker:
    """A Talker that costs nothing: one ready-made chunk per utterance."""

    name = "zero"
    sample_rate = 16000
    _pcm = b"\x00\x00" * 160

    async def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]:
        yield AudioChunk(pcm=self._pcm, sample_rate=16000, utterance_index=utterance.index, final=True)

    async def aclose(self) -> None:
        return None


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


# --------------------------------------------------------------------------- scripted


# The first clause ("Sure, here it is,") completes at delta 5, well within 10.
SCRIPT = ["Sure", ",", " here", " it", " is", ",", " the", " answer", " you", " wanted", ".",
          " It", " has", " a", " second", " sentence", " too", "."]


async def scripted(turns: int) -> list[float]:
    """First delta -> first audio chunk received by the caller, in ms, per turn."""
    out: list[float] = []
    thinker = TimedThinker(ScriptedThinker([SCRIPT], default=SCRIPT))
    agent = Agent(thinker=thinker, talker=ZeroCostTalker(), fallback=None)
    gc.disable()  # a collection in the middle of one turn is noise, not framework cost
    try:
        for i in range(turns + 20):
            session = agent.session(f"s{i}")
            thinker.stamps.clear()
            first_audio = None
            async for ev in session.run("hello"):
                if first_audio is None and type(ev) is AudioChunk:
                    first_audio = perf_counter()
            if i >= 20:  # warm-up turns are not counted
                out.append((first_audio - thinker.stamps[0][0]) * 1000)
            agent._sessions.clear()
            if i % 50 == 0:
                gc.collect()
    finally:
        gc.enable()
    return out


# --------------------------------------------------------------------------- embedded


PROMPTS = [
    "Tell me about Paris in two sentences.",
    "What is the capital of Italy?",
    "Name a big animal that lives in Africa.",
    "Why is the sky blue?",
    "Give me a tip for sleeping well.",
    "What is a good breakfast?",
    "Describe the moon in one sentence.",
    "What do bees make?",
    "How many days are in a week?",
    "What is the tallest mountain on Earth?",
    "Say something nice about dogs.",
    "What language is spoken in Spain?",
    "What is water made of?",
    "Name a famous painter.",
    "What is the largest ocean?",
    "How do plants grow?",
    "What is the color of grass?",
    "Tell me a fact about the sun.",
    "What is a computer?",
    "Where do penguins live?",
]


async def embedded(turns: int, threads: int, engine: str = "auto") -> list[dict[str, float]]:
    from omni_agent.talkers.piper import PiperTalker
    from omni_agent.thinkers.embedded import embedded_thinker

    inner = embedded_thinker(engine=engine, threads=threads)
    print(f"  Thinker engine: {inner.name}", flush=True)
    thinker = TimedThinker(inner)
    talker = TimedTalker(PiperTalker(threads=1))
    agent = Agent(thinker=thinker, talker=talker, fallback=None,
                  system_prompt="You are a helpful assistant. Answer in one or two short sentences.",
                  settings=GenerationSettings(max_tokens=48))
    t0 = perf_counter()
    await agent.warm_up()
    print(f"  models loaded in {perf_counter() - t0:.1f} s", flush=True)
    rows: list[dict[str, float]] = []
    for i in range(turns + 1):
        session = agent.session(f"e{i}")
        thinker.stamps.clear()
        talker.called.clear()
        talker.first_chunk.clear()
        first_audio = None
        first_utt: Utterance | None = None
        async for ev in session.run(PROMPTS[i % len(PROMPTS)]):
            if first_utt is None and type(ev) is Utterance:
                first_utt = ev
            if first_audio is None and type(ev) is AudioChunk:
                first_audio = perf_counter()
        if i == 0 or first_audio is None or first_utt is None:
            continue  # the first turn warms caches; a turn with no speech has no figure
        t_first_tok = thinker.stamps[0][0]
        # Replay the deltas through a fresh segmenter: the delta that completed the first
        # clause's text, and the one at which the segmenter could decide the boundary
        # (after "." it waits for the next character, i.e. one more token, or the end of text).
        seg = agent.make_segmenter()
        # A one-clause answer is decided when the stream ends (the model's end token).
        acc, t_clause, t_decided = "", None, thinker.ended
        for ts, text in thinker.stamps:
            acc += text
            if t_clause is None and len(acc.strip()) >= len(first_utt.text):
                t_clause = ts
            if seg.feed(text):
                t_decided = ts
                break
        t_clause = t_clause if t_clause is not None else t_decided
        thinker_compute = t_clause - t_first_tok
        lookahead = t_decided - t_clause
        talker_compute = talker.first_chunk[0] - talker.called[0]
        total = first_audio - t_first_tok
        rows.append({
            "total_ms": total * 1000,
            "thinker_ms": thinker_compute * 1000,
            "lookahead_ms": lookahead * 1000,
            "talker_ms": talker_compute * 1000,
            "framework_ms": (total - thinker_compute - lookahead - talker_compute) * 1000,
            "to_talker_ms": (talker.called[0] - t_decided) * 1000,
            "to_caller_ms": (first_audio - talker.first_chunk[0]) * 1000,
        })
        r = rows[-1]
        print(f"  turn {i:2d}: first token -> first audio {r['total_ms']:7.1f} ms "
              f"(thinker {r['thinker_ms']:6.1f}, lookahead {r['lookahead_ms']:5.1f}, "
              f"piper {r['talker_ms']:6.1f}, "
              f"framework {r['framework_ms']:5.2f})  first clause: {first_utt.text[:50]!r}", flush=True)
    await agent.aclose()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", nargs="?", default="both", choices=["both", "scripted", "embedded"])
    ap.add_argument("--turns", type=int, default=None,
                    help="turns to measure (default: 500 scripted, 20 embedded)")
    ap.add_argument("--threads", type=int, default=1, help="threads for the embedded Thinker")
    ap.add_argument("--engine", default="auto", choices=["auto", "llama-cpp", "transformers"],
                    help="the embedded Thinker's engine (auto: llama.cpp when installed)")
    args = ap.parse_args()
    if args.which in ("both", "scripted"):
        n = args.turns or 500
        lat = asyncio.run(scripted(n))
        print(f"scripted Thinker + zero-cost Talker, first delta -> first audio chunk, {n} turns:")
        print(f"  p50 {statistics.median(lat):.3f} ms   p90 {pct(lat, 0.9):.3f} ms   "
              f"min {min(lat):.3f} ms   (target: p50 <= 0.5 ms)")
    if args.which in ("both", "embedded"):
        n = args.turns or 20
        print(f"embedded Thinker (SmolLM2-135M) + Piper, {n} turns:", flush=True)
        rows = asyncio.run(embedded(n, args.threads, args.engine))
        if not rows:
            print("  no turn produced audio")
            return
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"  p50 first token -> first audio: {med['total_ms']:.1f} ms "
              f"(p90 {pct([r['total_ms'] for r in rows], 0.9):.1f} ms)")
        print(f"    model compute p50: Thinker to end of first clause {med['thinker_ms']:.1f} ms, "
              f"Piper first chunk {med['talker_ms']:.1f} ms")
        print(f"    segmenter lookahead p50: {med['lookahead_ms']:.1f} ms (model time for the one "
              "token after a '.' (or the end-of-text token) that tells '3.5' from a sentence end)")
        print(f"    framework share p50: {med['framework_ms']:.2f} ms (target <= 5 ms; "
              f"clause -> Talker {med['to_talker_ms']:.2f} ms, Talker chunk -> caller "
              f"{med['to_caller_ms']:.2f} ms)")


if __name__ == "__main__":
    main()
