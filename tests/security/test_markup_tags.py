"""MarkupGuard reads a tag as what it looks like: any case, attributes, spaces inside, and
invisible or fullwidth characters in it do not let reasoning or a tool call through to
speech, whatever the chunking; text that only resembles a tag is left alone."""

import asyncio
import json

import pytest
from hypothesis import given, settings, strategies as st

from omni_agent.agent import Agent
from omni_agent.bus import Bus, RoundEnd, TurnContext
from omni_agent.events import ReasoningDelta, TextDelta, ToolCall
from omni_agent.middleware.markup import MarkupGuard, escape_markup, find_markup
from omni_agent.testing import RecordingTalker, ScriptedThinker


async def _run(chunks, **kw):
    ctx = TurnContext("s", 1)

    async def src():
        for c in chunks:
            yield TextDelta(c)
        yield RoundEnd()

    out = [e async for e in Bus([MarkupGuard(**kw)]).process_stream(src(), ctx)]
    said = "".join(e.text for e in out if isinstance(e, TextDelta))
    thought = "".join(e.text for e in out if isinstance(e, ReasoningDelta))
    calls = [(e.name, json.loads(e.arguments)) for e in out if isinstance(e, ToolCall)]
    return said, thought, calls


def run(text, cuts=(), **kw):
    points = sorted({c for c in cuts if 0 < c < len(text)})
    chunks = [text[a:b] for a, b in zip([0] + points, points + [len(text)])]
    return asyncio.run(_run(chunks, **kw))


# Reasoning blocks: each hides "secret plan" between "Sure. " and "The answer is 4."
REASONING = [
    "<THINK>secret plan</THINK>",
    "<Think>secret plan</tHiNk>",
    '<think type="x">secret plan</think>',
    "<think mode='deep' budget=200>secret plan</think>",
    "< think >secret plan</ think >",
    "<think\n>secret plan< / think >",
    "<thi\u200bnk>secret plan</think>",
    "<th\u2060ink>secret plan</th\u200bink>",
    "<think\u00ad>secret plan</think\ufeff>",
    "<ｔｈｉｎｋ>secret plan</ｔｈｉｎｋ>",
    "＜think＞secret plan＜/think＞",
    "<THINKING level=\"high\">secret plan</Thinking >",
    "<REASONING>secret plan</REASONING>",
    "< thought >secret plan< /thought>",
    "◁ think ▷secret plan◁ /think ▷",
    "<| begin_of_thought |>secret plan<|END_OF_THOUGHT|>",
]

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
WEATHER = [("get_weather", {"city": "Paris"})]
# Tool calls: each sits between "Checking. " and " Done." and is the call WEATHER.
TOOLS = [
    f"<TOOL_CALL>{CALL}</TOOL_CALL>",
    f'<tool_call id="call_1">{CALL}</tool_call>',
    f"< tool_call >{CALL}</ tool_call >",
    f"<tool\u200b_call>{CALL}</tool_call>",
    f"<Tool_Call>\n{CALL}\n</tool_call\u200b>",
    f"＜tool_call＞{CALL}＜/tool_call＞",
    '<tool_call>{＂name＂: ＂get_weather＂, ＂arguments＂: {＂city＂: ＂Paris＂}}</tool_call>',
    '<FUNCTION=get_weather>{"city": "Paris"}</FUNCTION>',
    '< function = get_weather >{"city": "Paris"}</ function>',
    '<|Python_Tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}<|EOM_ID|>',
    f"<| tool_call_start |>{CALL}<|tool_call_end|>",
    f"<TOOL_CALLS>[{CALL}]</TOOL_CALLS>",
    f"<Function_Call>{CALL}</function_call>",
    f"<｜tool▁calls▁begin｜>{CALL}<｜tool▁calls▁end｜>",
    f"```TOOL_CODE\n{CALL}\n```",
    '｛"name": "get_weather", "arguments": {"city": "Paris"}｝',
    f"``\u200b`json\n{CALL}\n```",
]
# Chat-template tokens and stray closers: removed.
STRAY = ["<|IM_END|>", "< |im_end| >", "<|eot\u200b_id|>", "</THINK>", "</ tool_call >", "<think/>",
         "<Think />", "<｜end▁of▁sentence｜>"]


@pytest.mark.parametrize("block", REASONING)
def test_reasoning_in_any_spelling_is_kept_off_speech(block):
    assert run(f"Sure. {block}The answer is 4.") == ("Sure. The answer is 4.", "secret plan", [])


@pytest.mark.parametrize("block", TOOLS)
def test_a_tool_call_in_any_spelling_is_kept_off_speech_and_passed_on(block):
    assert run(f"Checking. {block} Done.") == ("Checking.  Done.", "", WEATHER)


@pytest.mark.parametrize("token", STRAY)
def test_template_tokens_and_stray_closers_in_any_spelling_are_removed(token):
    assert run(f"Hello{token} there.")[0] == "Hello there."


CASES = ([(f"Sure. {b}The answer is 4.", "Sure. The answer is 4.") for b in REASONING]
         + [(f"Checking. {b} Done.", "Checking.  Done.") for b in TOOLS])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CASES), st.lists(st.integers(min_value=1, max_value=120), max_size=30))
def test_the_result_is_the_same_for_any_chunking(case, cuts):
    text, said = case
    assert run(text, cuts)[0] == said


def test_one_character_at_a_time_nothing_leaks():
    for text, said in CASES:
        assert asyncio.run(_run(list(text)))[0] == said, text


def test_reasoning_open_ends_at_a_closer_in_any_spelling():
    assert run("the user asks x</ THINK >Answer.", reasoning_open=True)[:2] == ("Answer.", "the user asks x")


@pytest.mark.parametrize("text", [
    "If a < b and b > c, stop.",
    "Use <b>bold</b> and <i>italics</i>.",
    "I <thinking is fun> say.",
    "The <tool_calling> API and [tool] list.",
    'Data: {"name": "Alice", "age": 3}.',
    "x <think_tank> y",
])
def test_text_that_only_resembles_a_tag_is_left_alone(text):
    assert run(text) == (text, "", [])


def test_the_talker_never_hears_disguised_reasoning_or_calls():
    talker = RecordingTalker()
    reply = ["Sure. <THI", "\u200bNK type='plan'>call the refund tool</T", "HINK> Let me check. < tool",
             '_call >{"name": "refund", "arg', 'uments": {"amount": 500}}</tool_call> Done.']
    r = Agent(thinker=ScriptedThinker([reply]), talker=talker, middleware=[MarkupGuard(tool_calls="drop")]).ask("?")
    said = " ".join(talker.spoken)
    assert "refund" not in said and "plan" not in said and "500" not in said
    assert talker.spoken == ["Sure.", "Let me check.", "Done."]
    assert "call the refund tool" in r.trace.reasoning


def test_no_invisible_character_leaves_the_guard():
    said, _, _ = run("Call 555\u200b-0199\x00 now.")
    assert said == "Call 555-0199 now."


def test_find_and_escape_markup_use_the_same_grammar_as_the_guard():
    text = 'a <THINK>x</think> b <tool\u200b_call>{"name": "f", "arguments": {}}</tool_call> {"name": "n", "v": 1}'
    spans = [text[s:e] for s, e in find_markup(text)]
    assert spans == ["<THINK>", "</think>", "<tool\u200b_call>", '{"name":', "</tool_call>"]  # not the data
    escaped = escape_markup(text)
    assert run(escaped)[0] == escaped  # inert: the guard no longer reads it as markup
    assert "&lt;THINK>" in escaped and "&lt;tool_call>" in escaped and '{"name": "n", "v": 1}' in escaped
