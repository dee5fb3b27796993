"""ToolCalling.warm_up evaluates each tool's routed prompt ahead (issue 14): the note and
the examples that every routed tool round starts with are pinned on a Thinker that can
keep prompt states (``warm_prompt``), so the first tool round of a server evaluates only
the conversation."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from omni_agent import Agent
from omni_agent.middleware.tool_calling import WARM_PROMPT_TOOLS, ToolCalling
from omni_agent.testing import ScriptedThinker
from omni_agent.thinker import ThinkerRequest
from omni_agent.tools import ToolRegistry, calculator, current_time, tool

SYSTEM = "You are a helpful assistant. Answer in one or two short sentences."


class PickRouter:
    """A router that always picks one tool (the real one's choice is tested elsewhere)."""

    def __init__(self, name: str):
        self.name = name

    def route(self, text: str, registry: ToolRegistry) -> tuple[str, float]:
        return self.name, 1.0


class WarmingThinker(ScriptedThinker):
    """A scripted Thinker that records the prompts it is asked to warm."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.warmed: list[ThinkerRequest] = []
        self.pins: list[bool] = []

    def warm_prompt(self, request: ThinkerRequest, *, pin: bool = True) -> int:
        self.warmed.append(request)
        self.pins.append(pin)
        return 1


def _many_tools(n: int) -> list[Any]:
    tools = []
    for i in range(n):
        def fn(x: str) -> str:
            """Echo x."""
            return x

        tools.append(tool(fn, name=f"echo_{i}", examples=[(f"Echo {i}", {"x": str(i)})]))
    return tools


async def test_the_warmed_prompt_is_the_one_a_routed_tool_round_starts_with() -> None:
    call = {"tool_call": {"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}}}
    thinker = WarmingThinker([call])
    agent = Agent(thinker=thinker, tools=[current_time, calculator], system_prompt=SYSTEM,
                  middleware=[ToolCalling(router=PickRouter("current_time"), return_direct=["current_time"])])
    await agent.warm_up()
    warmed = {r.tool_choice: r for r in thinker.warmed}
    assert set(warmed) == {"current_time", "calculator"}
    await agent.session().aask("What time is it in Tokyo?")
    real = thinker.requests[0]
    w = warmed["current_time"]
    # Everything but the user's words: the system prompt with the tool note, the examples.
    assert w.messages[:-1] == real.messages[:-1] and len(real.messages) > 4
    assert (w.tools, w.tool_choice) == (real.tools, real.tool_choice)


async def test_only_the_first_few_tools_are_warmed() -> None:
    thinker = WarmingThinker(["ok"])
    agent = Agent(thinker=thinker, tools=_many_tools(10),
                  middleware=[ToolCalling(router=PickRouter("echo_0"))])
    await agent.warm_up()
    assert [r.tool_choice for r in thinker.warmed] == [f"echo_{i}" for i in range(WARM_PROMPT_TOOLS)]


@pytest.mark.parametrize("options", [{"router": PickRouter("calculator"), "few_shot": False}, {}],
                         ids=["without few-shot examples", "without a router"])
async def test_nothing_is_warmed_without_routed_few_shot_prompts(options: dict[str, Any]) -> None:
    thinker = WarmingThinker(["ok"])
    agent = Agent(thinker=thinker, tools=[current_time, calculator], middleware=[ToolCalling(**options)])
    await agent.warm_up()
    assert thinker.warmed == []


# ---------------------------------------------------------------------------- the real model


@pytest.mark.slow
async def test_after_warm_up_the_embedded_agents_tool_round_evaluates_only_the_conversation() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: ./setup.sh builds it")
    from omni_agent.thinkers.llama_cpp import LlamaCppThinker

    sys.path.insert(0, str(Path(__file__).parent))  # the llama.cpp tests' eval counter, shared
    from test_thinker_llama_cpp import counting_evals

    def embedded_agent() -> Agent:
        return Agent(thinker=LlamaCppThinker.default(), tools=[current_time, calculator],
                     system_prompt=SYSTEM,
                     middleware=[ToolCalling(router=True, return_direct=["current_time", "calculator"])])

    cold, warm = embedded_agent(), embedded_agent()  # cold: no warm-up, loaded on its turn
    await warm.warm_up()
    cold_thinker, warm_thinker = cold.thinker, warm.thinker
    assert isinstance(cold_thinker, LlamaCppThinker) and isinstance(warm_thinker, LlamaCppThinker)
    cold_thinker.load()
    try:
        with counting_evals(warm_thinker) as evaluated:
            result = await warm.session().aask("What time is it in Tokyo?")
        with counting_evals(cold_thinker) as cold_evaluated:
            expected = await cold.session().aask("What time is it in Tokyo?")
    finally:
        await cold.aclose()
        await warm.aclose()
    prompt_tokens = result.trace.rounds[0]["prompt_tokens"]
    assert prompt_tokens > 300
    assert evaluated[0] < prompt_tokens // 4       # the user's words (and the call's forced start)
    assert cold_evaluated[0] >= prompt_tokens      # the whole prompt, without warm-up
    assert [(c["name"], c["arguments"]) for c in result.tool_calls] == \
        [(c["name"], c["arguments"]) for c in expected.tool_calls]
    assert result.tool_calls[0]["name"] == "current_time"


# ---------------------------------------------------------------- between turns (issue 14)


def test_a_routed_round_keeps_only_the_last_exchanges() -> None:
    from omni_agent.middleware.tool_calling import last_exchanges
    from omni_agent.thinker import Message

    msgs = [Message("system", "S"), Message("user", "u1"), Message("assistant", "a1"),
            Message("user", "u2"), Message("assistant", "", tool_calls=[{"name": "t", "arguments": "{}"}]),
            Message("tool", "r2"), Message("assistant", "a2"), Message("user", "u3")]
    assert [m.content for m in last_exchanges(msgs, 1)] == ["S", "u2", "", "r2", "a2", "u3"]
    assert [m.content for m in last_exchanges(msgs, 0)] == ["S", "u3"]
    assert last_exchanges(msgs, 5) == msgs
    assert last_exchanges(msgs[1:], 1)[0].content == "u2"  # no system message: fine too


async def test_a_routed_round_sees_the_request_and_the_exchange_before_it() -> None:
    call = {"tool_call": {"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}}}
    thinker = WarmingThinker(["Paris.", "Rome.", [call]])
    agent = Agent(thinker=thinker, tools=[current_time, calculator], system_prompt=SYSTEM,
                  middleware=[ToolCalling(router=PickRouter("current_time"),
                                          return_direct=["current_time"], round_history=1)])
    session = agent.session()
    agent.bus.middleware[0].router = None  # two plain turns first (this router always picks)
    await session.aask("What is the capital of France?")
    await session.aask("And of Italy?")
    agent.bus.middleware[0].router = PickRouter("current_time")
    await session.aask("What time is it in Tokyo?")
    routed = thinker.requests[-1].messages
    users = [m.content for m in routed if m.role == "user"]
    assert users[-2:] == ["And of Italy?", "What time is it in Tokyo?"]  # the exchange before
    assert "What is the capital of France?" not in users  # older ones: left out
    assert routed[0].role == "system" and SYSTEM in routed[0].content


async def test_the_next_turn_is_prepared_between_turns() -> None:
    call = {"tool_call": {"name": "current_time", "arguments": {"timezone": "Asia/Tokyo"}}}
    thinker = WarmingThinker([[call]])
    agent = Agent(thinker=thinker, tools=[current_time, calculator], system_prompt=SYSTEM,
                  middleware=[ToolCalling(router=PickRouter("current_time"), return_direct=["current_time"])])
    session = agent.session()
    await session.aask("What time is it in Tokyo?")
    thinker.warmed.clear()
    assert await session.prepare_next_turn() > 0
    first, *routed = thinker.warmed
    assert set(thinker.pins) == {False}  # recent states, not pinned ones
    # The unrouted round: the whole conversation, its call written as text, no tools.
    assert first.tool_choice == "none"
    assert [m.role for m in first.messages] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert "<tool_call>" in first.messages[2].content
    # A routed round per tool, shaped as a real one (the last exchange, then the request).
    assert [r.tool_choice for r in routed] == ["current_time", "calculator"]
    assert "What time is it in Tokyo?" in [m.content for m in routed[0].messages]


async def test_a_plain_agent_prepares_its_plain_request_and_none_without_a_warmer() -> None:
    thinker = WarmingThinker(["Paris."])
    agent = Agent(thinker=thinker, system_prompt=SYSTEM)
    session = agent.session()
    await session.aask("What is the capital of France?")
    assert await session.prepare_next_turn() == 1
    (req,) = thinker.warmed
    assert [m.content for m in req.messages][:3] == [SYSTEM, "What is the capital of France?", "Paris."]
    plain = Agent(thinker=ScriptedThinker(["Paris."]), system_prompt=SYSTEM).session()
    await plain.aask("hi")
    assert await plain.prepare_next_turn() == 0


@pytest.mark.slow
async def test_after_a_tool_turn_a_prepared_plain_turn_evaluates_only_its_words() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: ./setup.sh builds it")
    from omni_agent.thinkers.llama_cpp import LlamaCppThinker

    sys.path.insert(0, str(Path(__file__).parent))
    from test_thinker_llama_cpp import counting_evals

    agent = Agent(thinker=LlamaCppThinker.default(), tools=[current_time, calculator], system_prompt=SYSTEM,
                  middleware=[ToolCalling(router=True, return_direct=["current_time", "calculator"])])
    await agent.warm_up()
    thinker = agent.thinker
    assert isinstance(thinker, LlamaCppThinker)
    try:
        session = agent.session()
        await session.aask("What is the capital of France?")
        await session.aask("What is 17 times 23?")
        assert await session.prepare_next_turn() > 0
        with counting_evals(thinker) as evaluated:
            result = await session.aask("Who wrote Romeo and Juliet?")
        prompt_tokens = result.trace.rounds[0]["prompt_tokens"]
        assert prompt_tokens > 100
        assert evaluated[0] <= 20  # the question (and its chat markers), not the tool exchange
    finally:
        await agent.aclose()
