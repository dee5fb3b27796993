"""The README's code runs: its voice-agent tool and its custom safety middleware, with the
scripted Thinker and recording Talker standing in for the models."""

from omni_agent import Agent, Blocked, Middleware, hook
from omni_agent.middleware.pii import PIIRedactor
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import tool


@tool
def room_temperature(room: str) -> str:
    """The temperature in a room of the house.

    Args:
        room: the room's name, e.g. "kitchen".
    """
    return f"It is 21 degrees in the {room}."


def test_readme_tool_is_called_and_its_result_spoken():
    thinker = ScriptedThinker([[{"tool_call": {"name": "room_temperature", "arguments": {"room": "kitchen"}}}],
                               "It is 21 degrees in the kitchen."])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, tools=[room_temperature], middleware=[ToolCalling()])
    r = agent.ask("How warm is the kitchen?")
    assert r.tool_calls[0]["name"] == "room_temperature"
    assert "21 degrees" in thinker.requests[1].messages[-1].text
    assert talker.spoken == ["It is 21 degrees", "in the kitchen."]  # a short first phrase
    schema = agent.tools.openai_schemas()[0]["function"]
    assert schema["parameters"]["properties"]["room"]["description"].startswith("the room's name")


class NoCompetitors(Middleware):
    timeout = 0.05
    fallback = "Let's talk about our own products."

    def on_utterance(self, utt, ctx):
        if "acmecorp" in utt.text.lower():
            raise Blocked("names a competitor")
        return utt


@hook("utterance")
def no_shouting(utt, ctx):
    ctx.note("lower-cased")
    utt.text = utt.text.lower()
    return utt


def test_readme_safety_middleware_redacts_blocks_and_rewrites():
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([["Call 415 555 0199 now. ", "AcmeCorp is better. ", "BYE."]]),
                  talker=talker, middleware=[PIIRedactor(), NoCompetitors(), no_shouting])
    r = agent.ask("hi")
    assert talker.spoken == ["call [phone number] now.", "Let's talk about our own products.", "bye."]
    assert [i.reason for i in r.trace.interventions if i.middleware == "no_shouting"][0] == "lower-cased"
    assert any(i.action == "block" and i.reason == "names a competitor" for i in r.trace.interventions)
