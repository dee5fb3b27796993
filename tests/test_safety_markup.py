"""MarkupGuard: tool-call markup is never spoken (or shown), reasoning stays silent but
is kept in the trace, whatever the chunking; plain text is held only while a tag may open."""

import asyncio
import json

import pytest
from hypothesis import given, settings, strategies as st

from omni_agent.agent import Agent
from omni_agent.bus import Bus, RoundEnd, TurnContext
from omni_agent.errors import ConfigError
from omni_agent.events import ReasoningDelta, TextDelta, ToolCall
from omni_agent.middleware.markup import MarkupGuard, parse_tool_calls
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import tool


async def _run(text, cuts=(), **kw):
    points = sorted({c for c in cuts if 0 < c < len(text)})
    chunks = [text[a:b] for a, b in zip([0] + points, points + [len(text)])]
    ctx = TurnContext("s", 1)

    async def src():
        for c in chunks:
            yield TextDelta(c)
        yield RoundEnd()

    out = [e async for e in Bus([MarkupGuard(**kw)]).process_stream(src(), ctx)]
    said = "".join(e.text for e in out if isinstance(e, TextDelta))
    thought = "".join(e.text for e in out if isinstance(e, ReasoningDelta))
    calls = [(e.name, json.loads(e.arguments)) for e in out if isinstance(e, ToolCall)]
    return said, thought, calls, ctx


def run(text, cuts=(), **kw):
    return asyncio.run(_run(text, cuts, **kw))


CASES = [
    ("<think>hmm, 2+2</think>The answer is 4.", "The answer is 4.", "hmm, 2+2", []),
    ('Sure. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Sure. ", "", [("get_weather", {"city": "Paris"})]),
    ('Let me look. {"name": "lookup", "arguments": {"q": "x"}} Done.', "Let me look.  Done.", "",
     [("lookup", {"q": "x"})]),
    ('```json\n{"name": "f", "parameters": {"a": 1}}\n```\nOk.', "\nOk.", "", [("f", {"a": 1})]),
    ('<function=get_time>{"tz": "UTC"}</function> ok', " ok", "", [("get_time", {"tz": "UTC"})]),
    ('[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}]', "", "", [("f", {"a": 1})]),
    ('<|python_tag|>{"name": "search", "parameters": {"q": "cats"}}<|eom_id|>', "", "",
     [("search", {"q": "cats"})]),
    ("<tool_call><function=add><parameter=a>1</parameter><parameter=b>2</parameter></function></tool_call>Hi.",
     "Hi.", "", [("add", {"a": 1, "b": 2})]),
    ("<|channel|>analysis<|message|>Think here.<|end|><|start|>assistant<|channel|>final<|message|>Hello!",
     "Hello!", "Think here.", []),
    ("Hello!<|im_end|>", "Hello!", "", []),
    ("Stray closer</think> gone.", "Stray closer gone.", "", []),
    ('Data: {"name": "Alice", "age": 3}. a < b > c, x<y [1] {2}', 'Data: {"name": "Alice", "age": 3}. a < b > c, x<y [1] {2}',
     "", []),
]


@pytest.mark.parametrize("text, said, thought, calls", CASES)
def test_markup_formats_are_taken_out_of_the_text(text, said, thought, calls):
    got = run(text)
    assert got[:3] == (said, thought, calls)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CASES), st.lists(st.integers(min_value=1, max_value=120), max_size=30))
def test_the_result_is_the_same_for_any_chunking(case, cuts):
    text, said, thought, calls = case
    assert run(text, cuts)[:3] == (said, thought, calls)


def test_tool_calls_drop_mode_removes_without_passing_calls_on():
    said, _, calls, ctx = run('Ok. <tool_call>{"name": "f", "arguments": {}}</tool_call>', tool_calls="drop")
    assert said == "Ok. " and calls == []
    assert any("tool-call markup" in i.reason for i in ctx.trace.interventions)


def test_reasoning_open_treats_the_start_of_each_round_as_reasoning():
    said, thought, _, _ = run("the user asks x</think>Answer.", reasoning_open=True)
    assert (said, thought) == ("Answer.", "the user asks x")


def test_plain_text_is_released_at_once_and_a_possible_tag_only_briefly_held():
    async def go():
        ctx = TurnContext("s", 1)
        st_ = MarkupGuard().stream  # drive the stage by hand to see what each delta releases
        q = asyncio.Queue()

        async def src():
            while True:
                item = await q.get()
                if item is None:
                    return
                yield item

        gen = st_(src(), ctx)
        await q.put(TextDelta("Hello wor"))
        first = await gen.__anext__()
        await q.put(TextDelta("ld <th"))
        second = await gen.__anext__()
        await q.put(TextDelta("ink>x</think> bye"))
        third = await gen.__anext__()
        await q.put(None)
        rest = [e async for e in gen]
        return first, second, third, rest

    first, second, third, rest = asyncio.run(go())
    assert first.text == "Hello wor"
    assert second.text == "ld "  # "<th" is held: it may open <think>
    assert isinstance(third, ReasoningDelta) and third.text == "x"
    assert [e.text for e in rest] == [" bye"]


def test_bad_option_is_a_config_error():
    with pytest.raises(ConfigError, match="tool_calls"):
        MarkupGuard(tool_calls="speak")


def test_parse_tool_calls_reads_the_common_shapes():
    assert parse_tool_calls('{"name": "f", "arguments": {"x": 1}}') == [("f", '{"x": 1}')]
    assert parse_tool_calls('{"function": {"name": "g", "arguments": "{\\"y\\": 2}"}}') == [("g", '{"y": 2}')]
    assert parse_tool_calls('[{"name": "a", "parameters": {}}, {"name": "b", "arguments": {}}]') == [
        ("a", "{}"), ("b", "{}")]
    assert parse_tool_calls("not json") == []


def test_the_talker_never_hears_tool_names_or_arguments():
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([['Checking. <tool', '_call>{"name": "get_wea', 'ther", "argu',
                                            'ments": {"city": "Paris"}}</tool_', 'call>']]),
                  talker=talker, middleware=[MarkupGuard()])
    r = agent.ask("weather?")
    assert talker.spoken == ["Checking."]
    assert "get_weather" not in r.text and "Paris" not in r.text


def test_a_call_passed_on_as_an_event_is_run_by_a_tool_middleware_after_the_guard():
    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"

    thinker = ScriptedThinker([
        ["One moment. ", '{"name": "get_weather", "arguments": {"city": "Paris"}}'],
        "It is sunny in Paris.",
    ])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, middleware=[MarkupGuard(), ToolCalling([get_weather])])
    r = agent.ask("weather in Paris?")
    assert talker.spoken == ["One moment.", "It is sunny in Paris."]
    assert [tc["name"] for tc in r.trace.tool_calls] == ["get_weather"]
    assert any(m.role == "tool" and "Sunny in Paris" in m.text for m in thinker.requests[1].messages)
