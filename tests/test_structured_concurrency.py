"""Structured concurrency: a turn owns every task it starts (speech recognition, input
hooks, the refusal line, Thinker, tools, Talker); interrupting it stops all of them; one
turn runs per session; a sync hook with a budget never stalls the loop; nothing leaks.

Real agent, bus and segmenter; scripted Thinker, recording Talker and scripted ears."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from time import monotonic

import pytest

from omni_agent import Agent, Blocked, Middleware
from omni_agent.errors import OmniAgentError
from omni_agent.events import AudioChunk, AudioPart, Interruption, TurnEnd, UserTurn, Utterance
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import tool


class SlowEars:
    """Speech recognition that takes ``seconds`` (so a test can act while it runs)."""

    def __init__(self, seconds: float = 5.0, text: str = "hello"):
        self.seconds = seconds
        self.text = text
        self.started = asyncio.Event()
        self.cancelled = False

    async def transcribe(self, part):
        self.started.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.text


def audio_turn() -> UserTurn:
    return UserTurn(parts=[AudioPart(pcm=bytes(3200), sample_rate=16000, mime="audio/L16")])


async def collect(stream) -> list:
    return [ev async for ev in stream]


# --------------------------------------------------------------------------- one turn per session


async def test_a_second_run_while_the_first_is_in_speech_recognition_is_refused_at_once():
    ears = SlowEars(seconds=0.3)
    agent = Agent(thinker=ScriptedThinker("Hi.", accepts=["text"]), ears=ears)
    session = agent.session()
    first = asyncio.ensure_future(collect(session.run(audio_turn())))
    await ears.started.wait()
    assert session.busy
    t0 = monotonic()
    with pytest.raises(OmniAgentError, match="already running a turn"):
        await collect(session.run(audio_turn()))
    assert monotonic() - t0 < 0.1, "refused at once, not after the first turn"
    events = await first
    assert isinstance(events[-1], TurnEnd) and events[-1].text == "Hi."


async def test_two_concurrent_text_turns_on_one_session_run_one_and_refuse_the_other():
    agent = Agent(thinker=ScriptedThinker(["a", "b", "c"], delay=0.01))
    session = agent.session()
    results = await asyncio.gather(collect(session.run("one")), collect(session.run("two")),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, OmniAgentError)]
    done = [r for r in results if isinstance(r, list)]
    assert len(refused) == 1 and len(done) == 1
    assert done[0][-1].reason == "completed"
    assert not session.busy


async def test_the_turn_context_manager_owns_the_turn_and_leaving_it_early_cancels_it():
    talker = RecordingTalker(realtime=1.0, seconds_per_char=0.05)
    agent = Agent(thinker=ScriptedThinker("First clause here. Second clause here."), talker=talker)
    session = agent.session()
    async with session.turn("go") as events:
        async for ev in events:
            if isinstance(ev, AudioChunk):
                break  # stop reading mid-reply
    assert not session.busy
    assert talker.cancelled == 1, "the Talker was cancelled when the block was left"
    assert session.last_trace is not None


# --------------------------------------------------------------------------- interrupt reaches everything


async def test_interrupt_during_speech_recognition_stops_the_turn_and_nothing_is_said():
    ears = SlowEars(seconds=5.0)
    thinker = ScriptedThinker("You should never hear this.", accepts=["text"])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, ears=ears)
    session = agent.session()
    task = asyncio.ensure_future(collect(session.run(audio_turn())))
    await ears.started.wait()
    t0 = monotonic()
    assert session.interrupt("barge-in") is True
    events = await asyncio.wait_for(task, 2)
    assert monotonic() - t0 < 0.5
    assert ears.cancelled, "the recognition itself was cancelled"
    assert thinker.requests == [] and talker.spoken == []
    assert not any(isinstance(e, (AudioChunk, Utterance)) for e in events)
    assert isinstance(events[-2], Interruption) and events[-1].reason == "interrupted"


class RefuseAll(Middleware):
    fallback = "I cannot help with that request, and this line is long enough to be cut off."

    def on_input(self, turn, ctx):
        raise Blocked("refused for the test")


async def test_interrupt_during_the_refusal_fallback_stops_the_line():
    talker = RecordingTalker(realtime=1.0, seconds_per_char=0.05, chunk_ms=50)
    agent = Agent(thinker=ScriptedThinker("never"), talker=talker, middleware=[RefuseAll()])
    session = agent.session()
    events: list = []
    interrupted_at: int | None = None
    async with session.turn("do something bad") as stream:
        async for ev in stream:
            events.append(ev)
            if isinstance(ev, AudioChunk) and interrupted_at is None:
                interrupted_at = len(events)
                assert session.interrupt() is True
    assert interrupted_at is not None
    after = events[interrupted_at:]
    assert not any(isinstance(e, AudioChunk) for e in after), "no audio after the interrupt"
    assert talker.cancelled == 1
    assert isinstance(after[-2], Interruption) and after[-1].reason == "interrupted"


async def test_interrupt_before_the_thinker_starts_runs_no_thinker_and_no_talker():
    gate = asyncio.Event()

    class Gate(Middleware):
        async def on_input(self, turn, ctx):
            await gate.wait()
            return turn

    thinker = ScriptedThinker("never")
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, middleware=[Gate()])
    session = agent.session()
    task = asyncio.ensure_future(collect(session.run("hi")))
    await asyncio.sleep(0.01)
    session.interrupt()
    gate.set()
    events = await asyncio.wait_for(task, 2)
    assert thinker.requests == [] and talker.spoken == []
    assert events[-1].reason == "interrupted"


# --------------------------------------------------------------------------- sync hooks off the loop


class SleepyFilter(Middleware):
    """A filter whose check blocks (time.sleep: like a blocking HTTP call) on some text."""

    timeout = 0.05
    fallback = "Let me put that differently."

    def on_utterance(self, utt, ctx):
        if "slow" in utt.text:
            time.sleep(5)
        return utt


async def test_a_hanging_sync_hook_blocks_its_clause_and_never_stalls_another_session():
    agent = Agent(thinker=ScriptedThinker(lambda req: "This is slow." if "slow" in req.messages[-1].text
                                          else "Hello there."),
                  talker=RecordingTalker(), middleware=[SleepyFilter()])
    await agent.session("warm").aask("warm up")  # the worker thread pool is started

    slow_done = asyncio.Event()
    slow_result = {}

    async def slow_session():
        slow_result["r"] = await agent.session("a").aask("be slow")
        slow_done.set()

    lags = []

    async def ticker():  # measures how late the loop runs a 5 ms sleep
        while not slow_done.is_set():
            t = monotonic()
            await asyncio.sleep(0.005)
            lags.append(monotonic() - t - 0.005)

    a = asyncio.ensure_future(slow_session())
    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0.01)  # session a is now inside its hanging hook
    t0 = monotonic()
    first_audio = None
    async with agent.session("b").turn("hi") as events:
        async for ev in events:
            if isinstance(ev, AudioChunk) and first_audio is None:
                first_audio = monotonic() - t0
    await asyncio.wait_for(a, 2)
    await tick
    assert first_audio is not None and first_audio < 0.05, f"first audio after {first_audio:.3f} s"
    r = slow_result["r"]
    assert r.spoken == "Let me put that differently."
    assert any(i.action == "timeout" for i in r.trace.interventions)
    assert max(lags) < 0.5, "the event loop never stalled"


async def test_a_sync_hook_without_a_budget_stays_inline_on_the_loop():
    import threading

    seen = []

    class Inline(Middleware):
        def on_utterance(self, utt, ctx):
            seen.append(threading.current_thread() is threading.main_thread())
            return utt

    class Budgeted(Middleware):
        timeout = 1.0

        def on_utterance(self, utt, ctx):
            seen.append(threading.current_thread() is threading.main_thread())
            return utt

    agent = Agent(thinker=ScriptedThinker("One."), middleware=[Inline(), Budgeted()])
    await agent.session().aask("x")
    assert seen == [True, False]


# --------------------------------------------------------------------------- nothing leaks


@tool
async def slow_lookup(city: str) -> str:
    """Look a city up (slowly).

    Args:
        city: the city.
    """
    await asyncio.sleep(0.02)
    return f"{city} is nice."


async def test_two_hundred_turns_with_random_interruptions_leave_no_task_behind():
    rng = random.Random(7)
    replies = [[{"tool_call": {"name": "slow_lookup", "arguments": {"city": "Oslo"}}}],
               ["It ", "is ", "nice. ", "Go ", "there. ", "Really."]]
    agent = Agent(thinker=ScriptedThinker(replies * 200, delay=0.001),
                  talker=RecordingTalker(realtime=0.2), tools=[slow_lookup])
    start = len(asyncio.all_tasks())
    sessions = [agent.session(f"s{i}") for i in range(4)]
    reasons: dict[str, int] = {}

    async def one(session, i):
        async with contextlib.aclosing(session.run(f"turn {i}")) as events:
            async for ev in events:
                if isinstance(ev, TurnEnd):
                    reasons[ev.reason] = reasons.get(ev.reason, 0) + 1
                elif rng.random() < 0.08:
                    session.interrupt()

    for i in range(50):
        await asyncio.gather(*(one(s, i) for s in sessions))
    assert sum(reasons.values()) == 200
    assert reasons.get("interrupted", 0) > 10 and reasons.get("completed", 0) > 10
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == start
    assert not any(s.busy for s in sessions)


async def test_a_reader_that_stops_early_without_closing_leaves_no_task_once_closed():
    agent = Agent(thinker=ScriptedThinker(["a. ", "b. ", "c."], delay=0.01), talker=RecordingTalker())
    start = len(asyncio.all_tasks())
    gen = agent.session().run("x")
    await gen.__anext__()
    await gen.aclose()
    assert len(asyncio.all_tasks()) == start
