"""Tool turns in one round where the tool already answered (``return_direct``), and tool
errors that are never read out to the user."""

from __future__ import annotations

from omni_agent import Agent
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import tool


@tool(return_direct=True)
def shop_hours(day: str) -> str:
    """Opening hours of the shop on a day."""
    return f"On {day} the shop is open from nine to five."


@tool
def lookup(code: str) -> str:
    """Look up a code."""
    if code == "bad":
        raise ValueError("code 'bad' is not in the catalogue of product numbers")
    return f"Code {code} is a blue mug."


def call(name: str, **args: object) -> dict:
    return {"tool_call": {"name": name, "arguments": args}}


def test_a_return_direct_result_is_the_answer_with_no_second_round() -> None:
    thinker = ScriptedThinker([[call("shop_hours", day="Monday")], "SECOND ROUND"])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, tools=[shop_hours])
    result = agent.ask("When are you open on Monday?")
    assert len(thinker.requests) == 1
    assert "SECOND ROUND" not in result.text
    # in two clauses: the first is cut short so the Talker starts early
    assert talker.spoken == ["On Monday the shop is open", "from nine to five."]
    assert result.trace.rounds and len(result.trace.rounds) == 1
    assert any(iv.action == "return_direct" for iv in result.trace.interventions)


def test_return_direct_by_name_on_the_middleware() -> None:
    thinker = ScriptedThinker([[call("lookup", code="A1")], "SECOND ROUND"])
    agent = Agent(thinker=thinker, tools=[lookup],
                  middleware=[ToolCalling(return_direct=["lookup"])])
    result = agent.ask("what is A1?")
    assert result.text == "Code A1 is a blue mug."
    assert len(thinker.requests) == 1


def test_the_direct_answer_passes_the_utterance_middleware() -> None:
    def shout(utt, ctx):  # an utterance hook: sees every clause before the Talker
        utt.text = utt.text.upper()
        return utt

    thinker = ScriptedThinker([[call("shop_hours", day="Monday")]])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, tools=[shop_hours], middleware=[shout])
    agent.ask("When are you open on Monday?")
    assert talker.spoken == ["ON MONDAY THE SHOP IS OPEN", "FROM NINE TO FIVE."]  # each clause


def test_the_direct_exchange_is_remembered() -> None:
    thinker = ScriptedThinker([[call("shop_hours", day="Monday")], "Anything else?"])
    agent = Agent(thinker=thinker, tools=[shop_hours])
    session = agent.session("s")
    session.ask("When are you open on Monday?")
    session.ask("thanks")
    seen = thinker.requests[-1].messages
    roles = [m.role for m in seen]
    assert roles[-5:] == ["user", "assistant", "tool", "assistant", "user"]
    assert seen[-3].content == "On Monday the shop is open from nine to five."


def test_a_failed_return_direct_call_goes_back_to_the_thinker() -> None:
    @tool(return_direct=True)
    def broken(x: int) -> str:
        """Always fails."""
        raise RuntimeError("the backend is down")

    thinker = ScriptedThinker([[call("broken", x=1)], "I could not check that, sorry."])
    agent = Agent(thinker=thinker, tools=[broken])
    result = agent.ask("check")
    assert len(thinker.requests) == 2
    assert result.text == "I could not check that, sorry."


def test_mixed_rounds_are_not_direct() -> None:
    thinker = ScriptedThinker([[call("shop_hours", day="Monday"), call("lookup", code="A1")],
                               "Both done."])
    agent = Agent(thinker=thinker, tools=[shop_hours, lookup])
    result = agent.ask("hours and A1")
    assert len(thinker.requests) == 2
    assert result.text == "Both done."


def test_a_thinker_that_reads_out_the_tool_error_is_replaced_by_an_apology() -> None:
    echo = "Error: the tool 'lookup' failed: ValueError: code 'bad' is not in the catalogue"
    thinker = ScriptedThinker([[call("lookup", code="bad")], [echo[:15], echo[15:]]])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, tools=[lookup])
    result = agent.ask("what is bad?")
    assert talker.spoken == ["Sorry, I couldn't do that."]
    assert "catalogue" not in result.text
    # The trace keeps the error and what the Thinker wrote.
    assert result.trace.tool_calls[0]["is_error"]
    replaced = [iv for iv in result.trace.interventions if iv.action == "replace"]
    assert replaced and "catalogue" in (replaced[0].before or "")


def test_a_paraphrased_echo_of_the_error_is_caught_too() -> None:
    thinker = ScriptedThinker([[call("lookup", code="bad")],
                               "Unfortunately code 'bad' is not in the catalogue of product numbers."])
    agent = Agent(thinker=thinker, tools=[lookup])
    result = agent.ask("what is bad?")
    assert result.text == "Sorry, I couldn't do that."


def test_an_answer_after_an_error_that_does_not_repeat_it_is_said_as_written() -> None:
    answer = "I could not find that code. Could you read it to me again, please?"
    thinker = ScriptedThinker([[call("lookup", code="bad")], [answer[:10], answer[10:30], answer[30:]]])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, tools=[lookup])
    result = agent.ask("what is bad?")
    assert result.text == answer
    assert " ".join(talker.spoken) == answer


def test_a_short_answer_after_an_error_is_released_at_the_round_end() -> None:
    thinker = ScriptedThinker([[call("lookup", code="bad")], "No luck."])
    agent = Agent(thinker=thinker, tools=[lookup])
    assert agent.ask("what is bad?").text == "No luck."


def test_media_a_tool_returns_reach_a_thinker_that_takes_them_only() -> None:
    from omni_agent.events import ImagePart
    from omni_agent.tools import ToolOutput

    @tool
    def snapshot() -> ToolOutput:
        """Take a picture of the door."""
        return ToolOutput("[image: the front door]", [ImagePart(data=b"\x89PNG...", mime="image/png")])

    seeing = ScriptedThinker([[call("snapshot")], "A closed door."], accepts=["text", "image"])
    Agent(thinker=seeing, tools=[snapshot]).ask("Is the door shut?")
    last = seeing.requests[-1].messages[-1]
    assert last.role == "user" and any(isinstance(p, ImagePart) for p in last.content)
    assert seeing.requests[-1].messages[-2].content == "[image: the front door]"

    blind = ScriptedThinker([[call("snapshot")], "I got a picture."], accepts=["text"])
    Agent(thinker=blind, tools=[snapshot]).ask("Is the door shut?")
    assert blind.requests[-1].messages[-1].role == "tool"
