"""PII in tool arguments and results is filtered wherever it is shown, kept or remembered
(client events, the trace, conversation memory) when a PII redactor filters display or
memory — the same rule as for the spoken and shown text. The Thinker itself still gets
the real result within the turn (it needs it to answer)."""

from __future__ import annotations

import json

from omni_agent import Agent
from omni_agent.events import ToolCall, ToolResult
from omni_agent.middleware.pii import PIIRedactor
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import tool

PHONE, MAIL = "555-0199", "jo@example.com"


@tool
def lookup_contact(email: str) -> str:
    """The phone number of a contact.

    Args:
        email: the contact's e-mail address.
    """
    return f"{email} can be reached at {PHONE}."


def agent(**pii) -> tuple[Agent, ScriptedThinker]:
    thinker = ScriptedThinker([[{"tool_call": {"name": "lookup_contact", "arguments": {"email": MAIL}}}],
                               "I found the number."])
    return Agent(thinker=thinker, talker=RecordingTalker(), tools=[lookup_contact],
                 middleware=[PIIRedactor(**pii)]), thinker


def leaks(text: str) -> bool:
    return PHONE in text or MAIL in text or "jo\\u0040example.com" in text


async def test_tool_arguments_and_results_are_redacted_in_events_trace_and_memory():
    a, thinker = agent(display=True)
    session = a.session()
    r = await session.aask("what is Jo's number")
    shown = [json.dumps([e.arguments if isinstance(e, ToolCall) else e.content])
             for e in r.events if isinstance(e, (ToolCall, ToolResult))]
    assert len(shown) == 2 and not any(leaks(s) for s in shown), shown
    assert not leaks(json.dumps(r.trace.to_dict()))
    assert not leaks(json.dumps([[m.content, m.tool_calls] for m in session.history], default=str))
    # The Thinker's second round saw the real result.
    assert PHONE in thinker.requests[1].messages[-1].content


async def test_keep_originals_false_redacts_tool_traffic_even_without_display_filtering():
    thinker = ScriptedThinker([[{"tool_call": {"name": "lookup_contact", "arguments": {"email": MAIL}}}],
                               "I found the number."])
    a = Agent(thinker=thinker, tools=[lookup_contact], middleware=[PIIRedactor()],
              keep_originals=False)
    r = await a.session().aask("what is Jo's number")
    assert not leaks(json.dumps(r.trace.tool_calls))
    assert not any(leaks(e.content) for e in r.events if isinstance(e, ToolResult))


async def test_without_display_or_memory_filtering_tool_traffic_is_left_as_it_is():
    a, _ = agent(display=False, memory=False)
    r = await a.session().aask("what is Jo's number")
    assert PHONE in r.trace.tool_calls[0]["result"]  # the user asked only for spoken filtering
