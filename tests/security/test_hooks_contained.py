"""Hooks and tools cannot kill the server: SystemExit, KeyboardInterrupt or a stray
CancelledError from a middleware or a tool is contained like any error (fail-closed, the
fallback spoken, the session goes on); a hook that returns the wrong type is a clear error
naming the middleware — never a lost answer blamed on the Thinker."""

from __future__ import annotations

import asyncio

import pytest

from omni_agent import Agent, Middleware
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import tool

FALLBACK = "Sorry, I can't say that."


def raising(exc: BaseException, point: str = "utterance"):
    class Raiser(Middleware):
        name = "raiser"

    def hook(self, item, ctx):
        raise exc

    setattr(Raiser, f"on_{point}", hook)
    return Raiser()


@pytest.mark.parametrize("exc", [SystemExit(1), KeyboardInterrupt(), asyncio.CancelledError(),
                                 GeneratorExit(), MemoryError("oops")],
                         ids=lambda e: type(e).__name__)
async def test_a_base_exception_from_an_utterance_hook_blocks_the_clause_and_the_session_goes_on(exc):
    agent = Agent(thinker=ScriptedThinker("Hello there."), talker=RecordingTalker(),
                  middleware=[raising(exc)])
    session = agent.session()
    r = await asyncio.wait_for(session.aask("hi"), 5)  # a stray CancelledError must not hang
    assert r.spoken == FALLBACK and r.reason == "completed"
    assert any(e.stage == "middleware:raiser" for e in r.errors)
    assert type(exc).__name__ in r.errors[0].message
    again = await asyncio.wait_for(session.aask("again"), 5)
    assert again.spoken == FALLBACK  # the session is still alive


@pytest.mark.parametrize("point", ["input", "event", "audio"])
async def test_system_exit_from_any_hook_point_is_contained(point):
    agent = Agent(thinker=ScriptedThinker("Hello there."), talker=RecordingTalker(),
                  middleware=[raising(SystemExit(3), point)])
    r = await asyncio.wait_for(agent.session().aask("hi"), 5)
    assert r.reason in ("completed", "blocked", "error")
    assert any("SystemExit" in i.reason for i in r.trace.interventions if i.reason)


async def test_a_base_exception_from_a_stream_middleware_is_contained():
    class BadStream(Middleware):
        async def stream(self, events, ctx):
            async for ev in events:
                raise KeyboardInterrupt
                yield ev  # pragma: no cover

    agent = Agent(thinker=ScriptedThinker("Hello."), middleware=[BadStream()])
    r = await asyncio.wait_for(agent.session().aask("hi"), 5)
    assert any("KeyboardInterrupt" in e.message for e in r.errors)


@pytest.mark.parametrize("wrong", ["a plain string", {"text": "a dict"}, 42, ["list"]],
                         ids=lambda w: type(w).__name__)
async def test_a_hook_returning_the_wrong_type_is_a_clear_error_naming_it_and_the_fallback_is_spoken(wrong):
    class Sloppy(Middleware):
        name = "sloppy"

        def on_utterance(self, utt, ctx):
            return wrong

    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker("Hello there."), talker=talker, middleware=[Sloppy()])
    r = await agent.session().aask("hi")
    assert talker.spoken == [FALLBACK]
    err = r.errors[0]
    assert err.stage == "middleware:sloppy"
    assert f"returned a {type(wrong).__name__}, not a Utterance" in err.message
    assert not any(e.stage == "thinker" for e in r.errors), "not blamed on the Thinker"


async def test_an_event_hook_returning_the_wrong_type_blocks_that_event_only():
    class Sloppy(Middleware):
        name = "sloppy"

        def on_event(self, event, ctx):
            return event.text if "bad" in event.text else event

    agent = Agent(thinker=ScriptedThinker([["Good start. ", "bad part. ", "Good end."]]),
                  middleware=[Sloppy()])
    r = await agent.session().aask("hi")
    assert "Good start." in r.text and "Good end." in r.text and "bad" not in r.text
    assert any("returned a str, not a Event" in e.message for e in r.errors)


@tool
def exits(code: int) -> str:
    """A tool that calls sys.exit.

    Args:
        code: the exit code.
    """
    raise SystemExit(code)


async def test_a_tool_raising_system_exit_is_a_tool_error_and_the_turn_goes_on():
    thinker = ScriptedThinker([[{"tool_call": {"name": "exits", "arguments": {"code": 2}}}],
                               "That did not work."])
    agent = Agent(thinker=thinker, tools=[exits])
    r = await asyncio.wait_for(agent.session().aask("exit please"), 5)
    assert r.text == "That did not work."
    call = r.tool_calls[0]
    assert call["is_error"] and "SystemExit" in call["result"]
