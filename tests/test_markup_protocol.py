"""The markup protocol (omni_agent.markup_protocol): one sans-IO parser of reasoning and
tool-call markup in streamed text. Each format, malformed input, stop strings, the
partial-tag hold; any chunking of a text gives the same events; and its users (the
Thinker text router, ToolCalling) behave as the protocol says."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from omni_agent.agent import Agent
from omni_agent.errors import ConfigError
from omni_agent.events import ReasoningDelta, TextDelta, ToolCall
from omni_agent.markup_protocol import (GUARD_FORMATS, HERMES, THINK, BadCall, Dropped, MarkupParser,
                                        Reasoning, Stopped, TagFormat, Text, TextRouter, ToolCalls,
                                        read_calls)
from omni_agent.middleware.tool_calling import ToolCalling
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import ToolRegistry, tool


def parse(pieces, *formats, **kw):
    """Feed ``pieces`` to a fresh parser, close it; the events with adjacent text merged."""
    p = MarkupParser(formats or (HERMES,), **kw)
    out = []
    for piece in pieces:
        out.extend(p.feed(piece))
    out.extend(p.close())
    return merged(out)


def merged(events):
    out = []
    for ev in events:
        if out and type(ev) in (Text, Reasoning) and type(out[-1]) is type(ev):
            out[-1] = type(ev)(out[-1].text + ev.text)
        else:
            out.append(ev)
    return out


def chunked(text, cuts):
    points = sorted({c for c in cuts if 0 < c < len(text)})
    return [text[a:b] for a, b in zip([0] + points, points + [len(text)])]


CALL = '{"name": "add", "arguments": {"a": 1, "b": 2}}'


# ---------------------------------------------------------------------------- Hermes tool calls


def test_a_hermes_call_split_across_chunks_becomes_one_tool_calls_event():
    out = parse(["Sure. <tool_", "call>", CALL[:9], CALL[9:], "</tool_", "call> after"])
    assert out[0] == Text("Sure. ") and out[2] == Text(" after")
    assert isinstance(out[1], ToolCalls) and out[1].closed
    assert out[1].markup == f"<tool_call>{CALL}</tool_call>"
    assert [(c.name, json.loads(c.arguments)) for c in out[1].calls] == [("add", {"a": 1, "b": 2})]


def test_a_list_of_calls_in_one_block_gives_each_call():
    body = json.dumps([{"name": "a", "arguments": {}}, {"name": "b", "parameters": {"x": 1}}])
    [ev] = parse([f"<tool_call>{body}</tool_call>"])
    assert [(c.name, c.arguments) for c in ev.calls] == [("a", "{}"), ("b", '{"x": 1}')]


def test_a_call_left_open_at_the_end_of_the_round_is_read_as_it_stands():
    [ev] = parse(["<tool_call>" + CALL])
    assert isinstance(ev, ToolCalls) and not ev.closed and ev.calls[0].name == "add"


def test_malformed_json_is_a_bad_call_that_keeps_the_markup_and_says_why():
    [ev] = parse(['<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>'])
    assert isinstance(ev, BadCall)
    assert ev.markup == '<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>'
    assert "not valid JSON" in ev.error


def test_a_call_without_a_name_is_a_bad_call():
    [ev] = parse(['<tool_call>{"arguments": {"a": 1}}</tool_call>'])
    assert isinstance(ev, BadCall) and 'no "name"' in ev.error


def test_an_empty_block_is_a_bad_call():
    [ev] = parse(["<tool_call></tool_call>"])
    assert isinstance(ev, BadCall) and ev.error == "the tool call is empty"


def test_a_list_entry_that_is_no_call_is_reported_next_to_the_calls():
    [ev] = parse(['<tool_call>[{"name": "a", "arguments": {}}, {"x": 1}]</tool_call>'])
    assert isinstance(ev, ToolCalls)
    assert [c.name for c in ev.valid] == ["a"] and 'no "name"' in ev.calls[1].error


def test_angle_brackets_that_open_no_tag_are_text():
    assert parse(["3 < 5 and <b>bold</b> and x<", "y"]) == [Text("3 < 5 and <b>bold</b> and x<y")]


def test_a_partial_tag_is_held_until_decided_and_released_at_the_end():
    p = MarkupParser([HERMES])
    assert p.feed("Look: <tool") == [Text("Look: ")]
    assert not p.idle
    assert p.close() == [Text("<tool")]
    assert p.idle


def test_plain_says_which_text_needs_no_parsing():
    p = MarkupParser([HERMES])
    assert p.plain("no tags here") and not p.plain("a < b")
    p.feed("<tool")
    assert not p.plain("no tags here")  # something is held


def test_a_custom_tag_format_is_matched_exactly():
    fmt = TagFormat("<call>", "</call>")
    out = parse([f"x <call>{CALL}</call> <CALL>y</CALL>"], fmt)
    assert out[0] == Text("x ") and isinstance(out[1], ToolCalls) and out[2] == Text(" <CALL>y</CALL>")


def test_a_tag_format_without_tags_is_a_config_error():
    with pytest.raises(ConfigError, match="opening and a closing tag"):
        TagFormat("", "</x>")
    with pytest.raises(ConfigError, match="kind"):
        TagFormat("<x>", "</x>", kind="speech")


# ---------------------------------------------------------------------------- reasoning, stops


def test_think_becomes_reasoning_and_the_newlines_after_it_go():
    out = parse(["<th", "ink>plan", " it</thi", "nk>", "\n", "\nAnswer."], THINK, HERMES)
    assert out == [Reasoning("plan it"), Text("Answer.")]


def test_an_unclosed_think_at_the_end_is_reasoning():
    assert parse(["<think>still thinking</th"], THINK) == [Reasoning("still thinking</th")]


def test_a_stop_string_ends_the_round_and_is_not_emitted():
    p = MarkupParser([THINK], stop=["END"])
    out = p.feed("Hello wor") + p.feed("ld EN") + p.feed("D more")
    assert merged(out) == [Text("Hello world "), Stopped("END")]
    assert p.done and p.feed("ignored") == [] and p.close() == []


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    assert parse(["value E", "xact"], THINK, stop=["END"]) == [Text("value Exact")]


def test_a_stop_string_inside_reasoning_does_not_stop():
    assert parse(["<think>END</think>ok"], THINK, stop=["END"]) == [Reasoning("END"), Text("ok")]


def test_reasoning_open_starts_every_round_inside_reasoning():
    p = MarkupParser([THINK], reasoning_open=True)
    first = p.feed("the user asks x</think>Answer.") + p.close()
    second = p.feed("again</think>Two.") + p.close()
    assert merged(first) == [Reasoning("the user asks x"), Text("Answer.")]
    assert merged(second) == [Reasoning("again"), Text("Two.")]


def test_reasoning_open_needs_a_reasoning_format():
    with pytest.raises(ConfigError, match="reasoning format"):
        MarkupParser([HERMES], reasoning_open=True)


def test_flush_ends_an_open_block_but_stays_in_the_round():
    p = MarkupParser([THINK], reasoning_open=True)
    assert p.feed("plan") == [Reasoning("plan")]
    assert p.flush() == []
    assert p.feed("now text") == [Text("now text")]  # the seam ended the reasoning


# ---------------------------------------------------------------------------- the guard grammar


def guard(text, **kw):
    return parse([text], *GUARD_FORMATS, normalize=True, **kw)


@pytest.mark.parametrize("text", [
    "<THINK>secret</think>", '<think type="plan">secret</think>', "< thinking >secret</ thinking >",
    "<reasoning>secret</reasoning>", "<thought>secret</thought>", "◁think▷secret◁/think▷",
    "<|begin_of_thought|>secret<|end_of_thought|>", "<thi\u200bnk>secret</think>",
    "<|channel|>analysis<|message|>secret<|end|>",
])
def test_every_reasoning_spelling_the_guard_knows_is_reasoning(text):
    assert guard(text) == [Reasoning("secret")]


@pytest.mark.parametrize("text, name", [
    ('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', "f"),
    ('<TOOL_CALL id="1">{"name": "f", "arguments": {"a": 1}}</tool_call>', "f"),
    ('<function=f>{"a": 1}</function>', "f"),
    ('[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}]', "f"),
    ('<|python_tag|>{"name": "f", "parameters": {"a": 1}}<|eom_id|>', "f"),
    ('{"name": "f", "arguments": {"a": 1}}', "f"),
    ('```json\n{"name": "f", "arguments": {"a": 1}}\n```', "f"),
    ('<|channel|>commentary to=functions.f<|message|>{"a": 1}<|call|>', "f"),
    ("<tool_call><function=f><parameter=a>1</parameter></function></tool_call>", "f"),
])
def test_every_tool_call_spelling_the_guard_knows_is_a_call(text, name):
    [ev] = guard(text)
    assert isinstance(ev, ToolCalls) and [(c.name, json.loads(c.arguments)) for c in ev.valid] == [(name, {"a": 1})]


def test_json_that_is_data_not_a_call_stays_text():
    text = 'Data: {"name": "Alice", "age": 3}.'
    assert guard(text) == [Text(text)]


def test_chat_template_tokens_and_stray_closers_are_dropped():
    assert guard("Hi<|im_end|> there</think>.") == [Text("Hi"), Dropped("<|im_end|>"), Text(" there"),
                                                     Dropped("</think>"), Text(".")]


def test_a_json_value_that_never_closes_is_text_after_max_json():
    text = '{"name": "x", "note": "' + "a" * 100
    assert guard(text + " more", max_json=40) == [Text(text + " more")]


def test_literal_formats_do_not_match_other_spellings():
    text = "<THINK>x</THINK><thinking>y</thinking>"
    assert parse([text], THINK, HERMES) == [Text(text)]


# ---------------------------------------------------------------------------- reading calls


@pytest.mark.parametrize("body, want", [
    ('{"name": "f", "arguments": {"a": 1}}', [("f", {"a": 1})]),
    ('{"name": "f", "parameters": {"a": 1}}', [("f", {"a": 1})]),
    ('{"name": "f", "arguments": "{\\"a\\": 1}"}', [("f", {"a": 1})]),
    ('{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}}', [("f", {"a": 1})]),
    ('```json\n{"name": "f", "arguments": {"a": 1}}\n```', [("f", {"a": 1})]),
    ('{"name": "f", "arguments": {"a": 1}} and then some', [("f", {"a": 1})]),
    ('{"name": "f"}', [("f", {})]),
    ("<function=f><parameter=a>1</parameter></function>", [("f", {"a": 1})]),
    ('｛＂name＂: ＂f＂, ＂arguments＂: {＂a＂: 1}｝', [("f", {"a": 1})]),
])
def test_read_calls_reads_the_common_shapes(body, want):
    calls = read_calls(body)
    assert [(c.name, json.loads(c.arguments)) for c in calls if c.error is None] == want


def test_read_calls_uses_the_name_an_opener_gave():
    [c] = read_calls('{"tz": "UTC"}', name="get_time")
    assert (c.name, json.loads(c.arguments)) == ("get_time", {"tz": "UTC"})


# ---------------------------------------------------------------------------- any chunking, same events


_WORDS = st.sampled_from(["Hello", " world", ". ", "a < b", "x<y", "<b>", "</b>", "<", ">", "3<4", " ",
                          "\n", "<tool", "<tool_c", "</tool_call", "<thi", "</thin", "<think", "END", "EN",
                          "{", "}", "[", '"name":', "<|", "|>"])
_CALLS = st.sampled_from([
    "<tool_call>" + CALL + "</tool_call>",
    '<tool_call>\n{"name": "f", "arguments": {"q": "a<b"}}\n</tool_call>',
    "<tool_call>[" + CALL + ", " + CALL + "]</tool_call>",
    '<tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>',   # malformed
    "<tool_call>not json at all</tool_call>",
    "<tool_call></tool_call>",
])
_THINKS = st.builds(lambda w: "<think>" + w + "</think>", st.text(st.sampled_from("ab <>/\n"), max_size=12))
_GUARDISH = st.sampled_from([
    "<THINK>x</think>", "<|im_end|>", '{"name": "f", "arguments": {}}', '{"name": "Al", "age": 3}',
    "[TOOL_CALLS]", "<function=g>{}</function>", "◁think▷y◁/think▷", "<thi\u200bnk>z</think>",
    "<|channel|>analysis<|message|>w<|end|>", "```json\n{\"name\": \"f\", \"arguments\": {}}\n```",
])


def _texts(extra=None):
    parts = st.one_of(_WORDS, _CALLS, _THINKS, *(extra or []))
    return st.lists(parts, max_size=10).map("".join)


_CUTS = st.lists(st.integers(min_value=1, max_value=200), max_size=25)
_CONFIGS = {
    "hermes": dict(formats=(HERMES,)),
    "think+hermes": dict(formats=(THINK, HERMES)),
    "think+hermes+stop": dict(formats=(THINK, HERMES), stop=["END"]),
    "guard": dict(formats=GUARD_FORMATS, normalize=True, max_json=60),
}


@settings(max_examples=150, deadline=None)
@given(text=_texts([_GUARDISH]), cuts=_CUTS, config=st.sampled_from(sorted(_CONFIGS)))
def test_any_chunking_of_a_text_gives_the_same_events(text, cuts, config):
    kw = dict(_CONFIGS[config])
    formats = kw.pop("formats")
    whole = parse([text], *formats, **kw)
    assert parse(chunked(text, cuts), *formats, **kw) == whole


@settings(max_examples=150, deadline=None)
@given(text=_texts(), cuts=_CUTS)
def test_hermes_markup_loses_no_text(text, cuts):
    # Every character comes back: as text, or as the markup of a (bad) call.
    out = parse(chunked(text, cuts), HERMES)
    assert "".join(e.text if type(e) is Text else e.markup for e in out) == text


@settings(max_examples=150, deadline=None)
@given(text=_texts(), cuts=_CUTS)
def test_text_is_held_only_while_it_may_still_become_a_tag(text, cuts):
    # After each piece, what has not come out yet is a call block in progress or a
    # proper prefix of its opening tag: nothing else is ever held.
    p = MarkupParser([HERMES])
    seen, out = "", ""
    for piece in chunked(text, cuts):
        seen += piece
        out += "".join(e.text if type(e) is Text else e.markup for e in p.feed(piece))
        assert seen.startswith(out)
        held = seen[len(out):]
        assert held == "" or held.startswith("<tool_call>") or ("<tool_call>".startswith(held) and held != "<tool_call>")


# ---------------------------------------------------------------------------- its users


def route(pieces, **kw):
    r = TextRouter(**kw)
    out = []
    for piece in pieces:
        out.extend(r.feed(piece))
    return out + r.finish(), r


def test_the_text_router_passes_calls_on_only_when_tools_were_offered():
    with_tools, r = route(["<tool_call>" + CALL + "</tool_call>"], parse_tools=True)
    without, _ = route(["<tool_call>" + CALL + "</tool_call>"])
    assert [type(e) for e in with_tools] == [ToolCall] and r.n_calls == 1
    assert [e.text for e in without] == ["<tool_call>" + CALL + "</tool_call>"]


def test_the_text_router_keeps_a_bad_or_unclosed_call_as_text():
    bad, r = route(["<tool_call>not json</tool_call>"], parse_tools=True)
    unclosed, _ = route(["<tool_call>" + CALL], parse_tools=True)
    assert [e.text for e in bad] == ["<tool_call>not json</tool_call>"] and r.n_calls == 0
    assert [e.text for e in unclosed] == ["<tool_call>" + CALL]


def test_the_text_router_turns_think_into_reasoning_and_stops_at_a_stop_string():
    out, r = route(["<think>hm</think>\nHi END never"], stop_strings=["END"])
    assert [(type(e), e.text) for e in out] == [(ReasoningDelta, "hm"), (TextDelta, "Hi ")] and r.done


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


class _NoTool:
    """A router double that finds no tool for the request."""

    def route(self, text, registry):
        return None


def test_call_markup_in_a_round_that_offers_no_tools_is_not_run_nor_spoken():
    talker = RecordingTalker()
    thinker = ScriptedThinker(["I can't. <tool_call>" + CALL + "</tool_call>"])
    agent = Agent(thinker=thinker, talker=talker, tools=[add],
                  middleware=[ToolCalling(ToolRegistry([add]), router=_NoTool())])
    r = agent.ask("hello")
    assert thinker.requests[0].tool_choice == "none"
    assert r.tool_calls == [] and len(thinker.requests) == 1
    assert r.text.strip() == "I can't." and all("tool_call" not in s for s in talker.spoken)
    assert any("offers no tools" in i.reason for i in r.trace.interventions)


def test_after_the_round_limit_text_calls_are_not_run_either():
    looping = "<tool_call>" + CALL + "</tool_call>"
    thinker = ScriptedThinker([looping, looping, "Three. " + looping])
    agent = Agent(thinker=thinker, tools=[add], middleware=[ToolCalling(ToolRegistry([add]), max_rounds=1)])
    r = agent.ask("loop")
    # Round 1 runs, round 2 is over the limit (refused; no tools next), round 3 must answer:
    # its call markup is neither run nor an error that ends the turn.
    assert [c["status"] for c in r.tool_calls] == ["ok", "not_run"]
    assert thinker.requests[2].tool_choice == "none" and r.text.strip() == "Three."
    assert not r.trace.errors
