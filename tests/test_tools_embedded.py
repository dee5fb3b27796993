"""Tool scenarios against the real embedded models: SmolLM2-135M through the
transformers backend (with the MiniLM router and llguidance-constrained calls), and the
router alone. Slow: each loads a real model."""

import asyncio
import json
import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from omni_agent.agent import Agent
from omni_agent.events import ToolCall
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.testing import RecordingTalker
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest
from omni_agent.thinkers.transformers import TransformersThinker
from omni_agent.tools import ToolRegistry, calculator, current_time, tool
from omni_agent.tools.constrained import ToolCallConstraint
from omni_agent.tools.evaluation import evaluate
from omni_agent.tools.router import ToolRouter

pytestmark = pytest.mark.slow

SYSTEM = "You are a helpful assistant. Answer in one or two short sentences."


@pytest.fixture(scope="module")
def smol():
    thinker = TransformersThinker.default()
    thinker.load()
    yield thinker
    asyncio.run(thinker.aclose())


@pytest.fixture(scope="module")
def router():
    return ToolRouter()


def make_agent(thinker, router, tools=(current_time, calculator), **kw):
    kw.setdefault("filler", None)
    return Agent(thinker=thinker, tools=list(tools), middleware=[ToolCalling(router=router, **kw)],
                 system_prompt=SYSTEM, settings=GenerationSettings(max_tokens=96))


def clock_readings(zone):
    now = datetime.now(ZoneInfo(zone))
    return {f"{t:%H:%M}" for t in (now, now - timedelta(minutes=1))}


@tool(examples=[("What's the stock price of ACME?", {"symbol": "ACME"}),
                ("How much is a Globex share worth?", {"symbol": "Globex"})])
async def stock_price(symbol: str) -> str:
    """The latest stock price of a company.

    Args:
        symbol: The company or ticker symbol.
    """
    await asyncio.sleep(0.6)
    return f"{symbol} trades at 42.50 dollars."


# ---------------------------------------------------------------------------- the embedded agent


def test_embedded_agent_answers_the_time_in_tokyo_with_the_time_tool(smol, router):
    r = make_agent(smol, router).ask("What time is it in Tokyo?")
    [call] = r.tool_calls
    assert call["name"] == "current_time" and call["status"] == "ok"
    assert re.search(r"tokyo", json.loads(call["arguments"])["timezone"], re.I)
    assert set(re.findall(r"\d\d:\d\d", r.text)) & clock_readings("Asia/Tokyo")


def test_embedded_agent_multiplies_with_the_calculator(smol, router):
    r = make_agent(smol, router).ask("What is 17 times 23?")
    assert [c["name"] for c in r.tool_calls] == ["calculator"]
    assert "391" in r.text


def test_embedded_agent_calls_no_tool_for_small_talk(smol, router):
    r = make_agent(smol, router).ask("Hello! How are you?")
    assert r.tool_calls == [] and r.text.strip()


def test_embedded_agent_survives_a_tool_error(smol, router):
    r = make_agent(smol, router).ask("What is 5 divided by 0?")
    assert r.tool_calls[0]["status"] == "error" and "division by zero" in r.tool_calls[0]["result"]
    assert r.reason == "completed" and r.text.strip()


def test_embedded_agent_speaks_a_filler_while_a_slow_tool_runs(smol, router):
    talker = RecordingTalker()
    agent = Agent(thinker=smol, talker=talker, tools=[stock_price, current_time],
                  middleware=[ToolCalling(router=router, filler="One moment.", filler_after=0.2)],
                  system_prompt=SYSTEM, settings=GenerationSettings(max_tokens=64))
    r = agent.ask("What's the stock price of Initech?")
    assert r.tool_calls[0]["name"] == "stock_price" and r.tool_calls[0]["status"] == "ok"
    assert talker.spoken[0] == "One moment." and len(talker.spoken) >= 2
    assert "42.5" in r.text


def test_embedded_agent_reports_a_tool_timeout(smol, router):
    agent = make_agent(smol, router, tools=[stock_price], timeout=0.05)
    r = agent.ask("What's the stock price of Initech?")
    assert r.tool_calls[0]["status"] == "timeout" and r.reason == "completed"


def test_embedded_agent_does_not_run_a_refused_tool(smol, router):
    ran = []

    @tool(confirm=True, examples=[("Turn off the kitchen lights", {"room": "kitchen"})])
    def lights_off(room: str) -> str:
        """Switch the lights off in a room.

        Args:
            room: Which room.
        """
        ran.append(room)
        return "off"

    agent = make_agent(smol, router, tools=[lights_off, current_time], confirm=lambda *a: False)
    r = agent.ask("Please turn off the lights in the bedroom")
    assert r.tool_calls[0]["status"] == "denied" and ran == []


def test_embedded_model_success_rate_on_the_scenario_set(smol, router):
    report = evaluate(make_agent(smol, router))
    print(report.summary())
    assert report.rate("routed") >= 0.9
    assert report.rate("ok") >= 0.75


# ---------------------------------------------------------------------------- constrained decoding


async def test_constrained_decoding_writes_a_valid_call_of_the_chosen_tool(smol):
    reg = ToolRegistry([current_time, calculator])
    for name, question in (("current_time", "What time is it in Oslo?"), ("calculator", "What is 6 times 7?")):
        req = ThinkerRequest([Message("user", question)], tools=reg.openai_schemas(), tool_choice=name,
                             constraint=ToolCallConstraint(reg, [name]),
                             settings=GenerationSettings(max_tokens=60))
        calls = [ev async for ev in smol.stream(req) if isinstance(ev, ToolCall)]
        assert [c.name for c in calls] == [name]
        reg[name].parse_arguments(calls[0].arguments)  # valid per the schema (raises if not)


def test_the_grammar_refuses_an_unregistered_tool_and_bad_arguments(smol):
    tok = smol._tokenizer
    reg = ToolRegistry([current_time, calculator])
    constraint = ToolCallConstraint(reg)
    good = '<tool_call>{"name": "calculator", "arguments": {"expression": "1 + 1"}}</tool_call>'
    for text, ok in ((good, True),
                     ('<tool_call>{"name": "weather", "arguments": {}}</tool_call>', False),
                     ('<tool_call>{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>', False),
                     ("Sure, the answer is 2.", False)):
        proc = constraint(tok)
        ids = tok.encode(text, add_special_tokens=False)
        assert (proc.matcher.try_consume_tokens(ids) == len(ids) and proc.matcher.is_accepting()) is ok, text


def test_allow_text_lets_the_model_answer_without_a_call(smol):
    tok = smol._tokenizer
    proc = ToolCallConstraint(ToolRegistry([calculator]), allow_text=True)(tok)
    ids = tok.encode("Hello there!", add_special_tokens=False)
    assert proc.matcher.try_consume_tokens(ids) == len(ids) and proc.matcher.is_accepting()


# ---------------------------------------------------------------------------- the router


@pytest.mark.parametrize("text,expected", [
    ("what's the time in Madrid", "current_time"),
    ("Could you tell me the time in Cairo right now?", "current_time"),
    ("what is 48 divided by 6", "calculator"),
    ("Compute the square root of 2", "calculator"),
    ("Tell me a story about a dragon", None),
    ("Who wrote Hamlet?", None),
    ("Thanks a lot!", None),
])
def test_router_picks_the_tool_from_the_meaning_of_the_request(router, text, expected):
    pick = router.route(text, ToolRegistry([current_time, calculator]))
    assert (pick[0] if pick else None) == expected


def test_router_routes_a_vague_follow_up_with_the_previous_request(router):
    reg = ToolRegistry([current_time, calculator])
    assert router.route("And in Paris?", reg, "What time is it in Tokyo?")[0] == "current_time"
    assert router.route("Thanks!", reg, "What time is it in Tokyo?") is None


def test_embedded_agent_answers_a_follow_up_with_the_tool_again(smol, router):
    session = make_agent(smol, router).session()
    session.ask("What time is it in Tokyo?")
    r = session.ask("And in Paris?")
    assert [c["name"] for c in r.tool_calls] == ["current_time"]
    assert "paris" in json.loads(r.tool_calls[0]["arguments"])["timezone"].lower()


def test_router_learns_a_new_tool_from_its_description_and_examples(router):
    reg = ToolRegistry([current_time, calculator, stock_price])
    assert router.route("How is ACME stock doing today?", reg)[0] == "stock_price"
