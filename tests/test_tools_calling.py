"""Tool scenarios on the bus, against the scripted Thinker: recognising calls (native and
Hermes text, split across chunks), running them (parallel, errors, timeouts, round limit),
confirmation, filler speech, and the ordering of text and calls."""

import asyncio
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from omni_agent.agent import Agent
from omni_agent.bus import Bus, RoundEnd, TurnContext
from omni_agent.errors import ToolError
from omni_agent.events import ErrorEvent, TextDelta, ToolCall, ToolResult, Utterance
from omni_agent.middleware.tool_calling import TextCallParser, ToolCalling
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.tools import ToolRegistry, calculator, tool


def call_text(name, arguments, *, key="arguments"):
    return "<tool_call>" + json.dumps({"name": name, key: arguments}) + "</tool_call>"


def chunks(text, size):
    return [text[i:i + size] for i in range(0, len(text), size)]


@tool
def add(a: int, b: int) -> int:
    """Add two whole numbers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def tool_messages(request):
    return [m for m in request.messages if m.role == "tool"]


def make(replies, tools=(add, calculator), talker=None, **mw):
    thinker = ScriptedThinker(replies)
    middleware = [ToolCalling(ToolRegistry(list(tools)), **mw)] if mw else []
    agent = Agent(thinker=thinker, talker=talker, tools=list(tools), middleware=middleware)
    return agent, thinker


# ---------------------------------------------------------------------------- recognising calls


def test_native_tool_call_runs_and_its_result_reaches_the_next_round():
    agent, thinker = make([[{"tool_call": {"name": "add", "arguments": {"a": 2, "b": 3}}}], "It is 5."])
    r = agent.ask("2+3?")
    assert r.text == "It is 5."
    [msg] = tool_messages(thinker.requests[1])
    assert msg.text == "5" and msg.name == "add"
    assistant = thinker.requests[1].messages[-2]
    assert assistant.role == "assistant" and assistant.tool_calls[0]["name"] == "add"
    assert assistant.tool_calls[0]["id"] == msg.tool_call_id


def test_hermes_text_call_in_one_chunk_is_run_and_never_shown():
    agent, thinker = make([call_text("add", {"a": 1, "b": 1}), "Two."])
    r = agent.ask("1+1")
    assert r.text == "Two."
    assert "<tool_call>" not in "".join(e.text for e in r.events if isinstance(e, TextDelta))
    assert [c["result"] for c in r.tool_calls] == ["2"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 11])
def test_hermes_call_split_across_chunks_is_recognised(size):
    text = "Sure. " + call_text("add", {"a": 20, "b": 22})
    agent, thinker = make([chunks(text, size), "42."])
    talker = RecordingTalker()
    agent.talker = talker
    r = agent.ask("20+22")
    assert [c["result"] for c in r.tool_calls] == ["42"]
    assert talker.spoken == ["Sure.", "42."]


def test_parameters_key_is_accepted_instead_of_arguments():
    agent, _ = make([call_text("add", {"a": 4, "b": 4}, key="parameters"), "Eight."])
    assert [c["result"] for c in agent.ask("4+4").tool_calls] == ["8"]


def test_arguments_given_as_a_json_string_are_accepted():
    body = json.dumps({"name": "add", "arguments": json.dumps({"a": 1, "b": 2})})
    agent, _ = make([f"<tool_call>{body}</tool_call>", "Three."])
    assert [c["result"] for c in agent.ask("1+2").tool_calls] == ["3"]


def test_call_wrapped_in_a_code_fence_inside_the_tags_is_parsed():
    body = '```json\n{"name": "add", "arguments": {"a": 5, "b": 5}}\n```'
    agent, _ = make([f"<tool_call>{body}</tool_call>", "Ten."])
    assert [c["result"] for c in agent.ask("5+5").tool_calls] == ["10"]


def test_unclosed_call_at_the_end_of_a_round_still_runs():
    # Generation often stops at a stop string before the closing tag.
    agent, _ = make(['<tool_call>{"name": "add", "arguments": {"a": 7, "b": 1}}', "Eight."])
    r = agent.ask("7+1")
    assert [c["result"] for c in r.tool_calls] == ["8"] and r.text == "Eight."


def test_a_list_of_calls_in_one_tag_runs_each():
    body = json.dumps([{"name": "add", "arguments": {"a": 1, "b": 1}},
                       {"name": "calculator", "arguments": {"expression": "3*3"}}])
    agent, thinker = make([f"<tool_call>{body}</tool_call>", "Done."])
    r = agent.ask("both")
    assert sorted(c["name"] for c in r.tool_calls) == ["add", "calculator"]
    assert [m.text for m in tool_messages(thinker.requests[1])] == ["2", "3*3 = 9"]


def test_angle_brackets_that_are_not_a_call_pass_through_unchanged():
    text = "3 < 5 and <b>bold</b> and <tool_cal"
    agent, _ = make([chunks(text, 4)])
    r = agent.ask("compare")
    assert r.text == text
    assert r.tool_calls == []


def test_held_tag_prefix_at_the_end_of_a_round_is_released_as_text():
    agent, _ = make([["Look: ", "<tool"]])
    assert agent.ask("x").text == "Look: <tool"


def test_malformed_call_becomes_an_error_result_and_is_not_spoken():
    talker = RecordingTalker()
    agent, thinker = make(['Checking. <tool_call>{"name": "add", "arguments": {"a": 1,</tool_call>',
                           "Sorry, I could not."], talker=talker)
    r = agent.ask("1+?")
    [msg] = tool_messages(thinker.requests[1])
    assert msg.text.startswith("Error:") and "not valid JSON" in msg.text
    assert r.tool_calls[0]["status"] == "invalid"
    assert all("tool_call" not in s for s in talker.spoken)


def test_call_without_a_name_becomes_an_error_result():
    agent, thinker = make(['<tool_call>{"arguments": {"a": 1}}</tool_call>', "Hm."])
    agent.ask("x")
    [msg] = tool_messages(thinker.requests[1])
    assert 'no "name"' in msg.text


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=80), min_size=0, max_size=8))
def test_any_split_of_text_and_call_gives_the_same_text_and_call(cuts):
    text = "First part. " + call_text("add", {"a": 3, "b": 4}) + " trailing"
    pieces, last = [], 0
    for c in sorted(set(cuts)):
        if c < len(text):
            pieces.append(text[last:c])
            last = c
    pieces.append(text[last:])
    parser = TextCallParser()
    out = []
    for p in pieces:
        out.extend(parser.feed(p))
    out.extend(parser.flush())
    assert "".join(x for x in out if isinstance(x, str)) == "First part.  trailing"
    calls = [x for x in out if not isinstance(x, str)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 3, "b": 4})]


# ---------------------------------------------------------------------------- parallel


def _sleeper(name, seconds, log):
    async def fn(x: int) -> str:
        log.append(("start", name, time.monotonic()))
        await asyncio.sleep(seconds)
        log.append(("end", name, time.monotonic()))
        return f"{name}:{x}"

    fn.__name__ = name
    fn.__doc__ = f"Sleeps {seconds} s."
    return tool(fn)


def test_calls_of_one_round_run_in_parallel():
    log = []
    slow_a, slow_b = _sleeper("slow_a", 0.4, log), _sleeper("slow_b", 0.4, log)
    agent, _ = make([[{"tool_call": {"name": "slow_a", "arguments": {"x": 1}}},
                      {"tool_call": {"name": "slow_b", "arguments": {"x": 2}}}], "Both done."],
                    tools=[slow_a, slow_b])
    t0 = time.monotonic()
    r = agent.ask("go")
    elapsed = time.monotonic() - t0
    starts = [t for kind, _, t in log if kind == "start"]
    ends = [t for kind, _, t in log if kind == "end"]
    assert max(starts) < min(ends)  # both started before either finished
    assert elapsed < 0.75 and r.text == "Both done."


def test_results_go_back_in_call_order_even_when_finishing_out_of_order():
    log = []
    slow, fast = _sleeper("slow", 0.3, log), _sleeper("fast", 0.0, log)
    agent, thinker = make([[{"tool_call": {"name": "slow", "arguments": {"x": 1}}},
                            {"tool_call": {"name": "fast", "arguments": {"x": 2}}}], "ok"],
                          tools=[slow, fast])
    r = agent.ask("go")
    assert [m.text for m in tool_messages(thinker.requests[1])] == ["slow:1", "fast:2"]
    results = [e.name for e in r.events if isinstance(e, ToolResult)]
    assert results == ["fast", "slow"]  # events come as calls finish


def test_native_and_text_calls_in_one_round_both_run():
    agent, thinker = make([[{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 2}}},
                            call_text("calculator", {"expression": "2*5"})], "ok"])
    agent.ask("both")
    assert [m.text for m in tool_messages(thinker.requests[1])] == ["3", "2*5 = 10"]


# ---------------------------------------------------------------------------- errors


def test_tool_exception_becomes_an_error_result_and_the_session_goes_on():
    @tool
    def broken(city: str) -> str:
        """Always fails.

        Args:
            city: Any city.
        """
        raise RuntimeError("backend down")

    agent, thinker = make([[{"tool_call": {"name": "broken", "arguments": {"city": "Oslo"}}}],
                           "The service is down.", "Hello again."], tools=[broken])
    session = agent.session()
    r = session.ask("weather?")
    [msg] = tool_messages(thinker.requests[1])
    assert "RuntimeError: backend down" in msg.text and msg.text.startswith("Error:")
    assert r.reason == "completed" and r.text == "The service is down."
    assert [e for e in r.events if isinstance(e, ToolResult)][0].is_error
    assert session.ask("hi").text == "Hello again."


def test_invalid_argument_types_are_reported_before_the_tool_runs():
    ran = []

    @tool
    def count(n: int) -> str:
        """Count.

        Args:
            n: How many.
        """
        ran.append(n)
        return "ok"

    agent, thinker = make([[{"tool_call": {"name": "count", "arguments": {"n": "many"}}}], "Oops."],
                          tools=[count])
    r = agent.ask("count")
    [msg] = tool_messages(thinker.requests[1])
    assert "invalid arguments for tool 'count'" in msg.text and "n:" in msg.text
    assert ran == [] and r.tool_calls[0]["status"] == "invalid"


def test_unknown_tool_gets_an_error_naming_the_real_tools():
    agent, thinker = make([[{"tool_call": {"name": "weather", "arguments": {}}}], "Sorry."])
    agent.ask("weather?")
    [msg] = tool_messages(thinker.requests[1])
    assert "no tool named 'weather'" in msg.text and "add" in msg.text and "calculator" in msg.text


def test_extra_argument_is_reported_as_not_a_parameter():
    agent, thinker = make([[{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}}], "x"])
    agent.ask("x")
    assert "c: not a parameter of this tool" in tool_messages(thinker.requests[1])[0].text


def test_tool_error_message_is_passed_on_as_written():
    agent, thinker = make([[{"tool_call": {"name": "calculator", "arguments": {"expression": "1/0"}}}], "x"])
    r = agent.ask("1/0")
    assert tool_messages(thinker.requests[1])[0].text == "Error: division by zero"
    assert r.tool_calls[0]["status"] == "error"


# ---------------------------------------------------------------------------- timeouts and limits


def test_per_tool_timeout_cancels_the_tool_and_reports_it():
    seen = {}

    @tool(timeout=0.1)
    async def hang(x: int) -> str:
        """Never answers.

        Args:
            x: Anything.
        """
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise
        return "never"

    agent, thinker = make([[{"tool_call": {"name": "hang", "arguments": {"x": 1}}}], "It timed out."],
                          tools=[hang])
    t0 = time.monotonic()
    r = agent.ask("go")
    assert time.monotonic() - t0 < 2
    assert "did not finish within 0.1 s" in tool_messages(thinker.requests[1])[0].text
    assert seen == {"cancelled": True} and r.tool_calls[0]["status"] == "timeout"


def test_middleware_timeout_applies_to_tools_without_their_own():
    @tool
    async def slowish(x: int) -> str:
        """Slow.

        Args:
            x: Anything.
        """
        await asyncio.sleep(5)
        return "late"

    agent, thinker = make([[{"tool_call": {"name": "slowish", "arguments": {"x": 1}}}], "x"],
                          tools=[slowish], timeout=0.05, filler=None)
    agent.ask("go")
    assert "within 0.05 s" in tool_messages(thinker.requests[1])[0].text


def test_tool_rounds_are_limited_and_the_thinker_is_told_to_answer():
    looping = [{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 1}}}]
    agent, thinker = make([looping, looping, looping, "Giving up: 2."], max_rounds=2)
    r = agent.ask("loop")
    assert r.text == "Giving up: 2."
    assert [c["status"] for c in r.tool_calls] == ["ok", "ok", "not_run"]
    assert thinker.requests[3].tool_choice == "none"
    assert "already used its 2 tool rounds" in tool_messages(thinker.requests[3])[-1].text


def test_a_thinker_that_ignores_the_limit_ends_the_turn_with_an_error():
    looping = [{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 1}}}]
    agent, thinker = make([looping], max_rounds=1)
    r = agent.ask("loop")
    assert len(thinker.requests) == 3  # two tool rounds (the second refused), then stopped
    assert any(isinstance(e, ErrorEvent) and e.stage == "tools" for e in r.events)


# ---------------------------------------------------------------------------- filler speech


def _slow_tool(seconds):
    @tool
    async def lookup(q: str) -> str:
        """Looks something up slowly.

        Args:
            q: What to look up.
        """
        await asyncio.sleep(seconds)
        return "found"

    return lookup


def test_filler_is_spoken_when_a_tool_is_slow_then_the_answer():
    talker = RecordingTalker()
    agent, _ = make([[{"tool_call": {"name": "lookup", "arguments": {"q": "x"}}}], "Here it is."],
                    tools=[_slow_tool(0.4)], talker=talker, filler="One moment.", filler_after=0.05)
    r = agent.ask("find x")
    assert talker.spoken == ["One moment.", "Here it is."]
    assert [u.text for u in r.utterances] == ["One moment.", "Here it is."]


def test_no_filler_when_the_tool_is_quick():
    talker = RecordingTalker()
    agent, _ = make([[{"tool_call": {"name": "lookup", "arguments": {"q": "x"}}}], "Here."],
                    tools=[_slow_tool(0.0)], talker=talker, filler="One moment.", filler_after=0.5)
    agent.ask("find x")
    assert talker.spoken == ["Here."]


def test_no_filler_when_text_was_said_before_the_call():
    talker = RecordingTalker()
    agent, _ = make([["Let me look that up. ", {"tool_call": {"name": "lookup", "arguments": {"q": "x"}}}],
                     "Found it."], tools=[_slow_tool(0.3)], talker=talker, filler="One moment.",
                    filler_after=0.05)
    agent.ask("find x")
    assert talker.spoken == ["Let me look that up.", "Found it."]


def test_filler_is_said_at_most_once_per_turn():
    talker = RecordingTalker()
    call = [{"tool_call": {"name": "lookup", "arguments": {"q": "x"}}}]
    agent, _ = make([call, call, "Done."], tools=[_slow_tool(0.2)], talker=talker,
                    filler="Hold on.", filler_after=0.02)
    agent.ask("twice")
    assert talker.spoken == ["Hold on.", "Done."]


def test_filler_none_turns_it_off():
    talker = RecordingTalker()
    agent, _ = make([[{"tool_call": {"name": "lookup", "arguments": {"q": "x"}}}], "Done."],
                    tools=[_slow_tool(0.2)], talker=talker, filler=None, filler_after=0.01)
    agent.ask("x")
    assert talker.spoken == ["Done."]


# ---------------------------------------------------------------------------- confirmation


def _transfer(ran):
    @tool(confirm=True)
    def transfer(amount: int) -> str:
        """Send money.

        Args:
            amount: Euros to send.
        """
        ran.append(amount)
        return f"sent {amount}"

    return transfer


def test_confirmed_call_runs_and_the_policy_sees_the_call():
    ran, asked = [], []

    def policy(call, t, ctx):
        asked.append((call.name, json.loads(call.arguments), t.name, ctx.session_id))
        return True

    agent, thinker = make([[{"tool_call": {"name": "transfer", "arguments": {"amount": 5}}}], "Sent."],
                          tools=[_transfer(ran)], confirm=policy)
    agent.session("s1").ask("send 5")
    assert ran == [5] and asked == [("transfer", {"amount": 5}, "transfer", "s1")]
    assert tool_messages(thinker.requests[1])[0].text == "sent 5"


def test_refused_confirmation_does_not_run_the_tool():
    ran = []
    agent, thinker = make([[{"tool_call": {"name": "transfer", "arguments": {"amount": 5}}}], "Not sent."],
                          tools=[_transfer(ran)], confirm=lambda call, t, ctx: False)
    r = agent.ask("send 5")
    assert ran == [] and r.tool_calls[0]["status"] == "denied"
    assert "did not allow" in tool_messages(thinker.requests[1])[0].text


def test_tool_needing_confirmation_is_refused_without_a_policy():
    ran = []
    agent, thinker = make([[{"tool_call": {"name": "transfer", "arguments": {"amount": 5}}}], "x"],
                          tools=[_transfer(ran)])
    agent.ask("send 5")
    assert ran == [] and "no confirmation policy" in tool_messages(thinker.requests[1])[0].text


def test_async_policy_is_awaited_and_a_failing_policy_refuses():
    ran = []

    async def slow_yes(call, t, ctx):
        await asyncio.sleep(0.01)
        return True

    def broken(call, t, ctx):
        raise ValueError("no UI")

    call = [{"tool_call": {"name": "transfer", "arguments": {"amount": 1}}}]
    agent, _ = make([call, "ok"], tools=[_transfer(ran)], confirm=slow_yes)
    agent.ask("send")
    assert ran == [1]
    agent2, thinker2 = make([call, "ok"], tools=[_transfer(ran)], confirm=broken)
    agent2.ask("send")
    assert ran == [1] and "confirmation for 'transfer' failed" in tool_messages(thinker2.requests[1])[0].text


def test_policy_is_not_asked_for_tools_without_confirm():
    asked = []
    agent, _ = make([[{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 1}}}], "2"],
                    confirm=lambda *a: asked.append(a) or False)
    r = agent.ask("1+1")
    assert asked == [] and r.tool_calls[0]["status"] == "ok"


# ---------------------------------------------------------------------------- text and calls


def test_text_before_a_call_is_spoken_before_the_tool_runs():
    talker = RecordingTalker()
    order = []

    @tool
    async def probe(x: int) -> str:
        """Notes when it runs.

        Args:
            x: Anything.
        """
        order.append(("tool", list(talker.spoken)))
        return "ok"

    agent, thinker = make([["Let me check", {"tool_call": {"name": "probe", "arguments": {"x": 1}}}],
                           "All good."], tools=[probe], talker=talker)
    agent.ask("check")
    # "Let me check" has no full stop: only the round's end can flush it, and it did so
    # before the tool ran (the Talker runs concurrently, so its record may lag; the
    # utterance order is what the bus guarantees).
    assert talker.spoken == ["Let me check", "All good."]
    assert thinker.requests[1].messages[-2].text == "Let me check"


def test_text_before_a_call_is_never_repeated_when_the_thinker_says_it_again():
    talker = RecordingTalker()
    agent, _ = make([["Sure, checking.", {"tool_call": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
                     ["Sure, ", "checking. ", "It is 3."]], talker=talker)
    r = agent.ask("1+2")
    assert talker.spoken == ["Sure, checking.", "It is 3."]
    assert r.text == "Sure, checking. It is 3."
    assert any(iv.action == "drop" and "repeats" in iv.reason for iv in r.trace.interventions)


def test_a_new_answer_that_only_starts_like_the_said_text_is_kept():
    talker = RecordingTalker()
    agent, _ = make([["Sure.", {"tool_call": {"name": "add", "arguments": {"a": 1, "b": 2}}}],
                     ["Sure", "ly it is 3."]], talker=talker)
    agent.ask("1+2")
    assert talker.spoken == ["Sure.", "Surely it is 3."]


def test_text_after_a_call_in_the_same_round_is_dropped_and_traced():
    talker = RecordingTalker()
    agent, _ = make([[call_text("add", {"a": 2, "b": 2}), " The answer is probably 5."], "It is 4."],
                    talker=talker)
    r = agent.ask("2+2")
    assert talker.spoken == ["It is 4."]
    assert any(iv.action == "drop" and "probably 5" in (iv.before or "") for iv in r.trace.interventions)


def test_tool_call_and_result_events_come_in_stream_order():
    agent, _ = make([["Checking. ", {"tool_call": {"name": "add", "arguments": {"a": 1, "b": 1}}}], "Two."])
    kinds = [type(e).__name__ for e in agent.ask("1+1").events
             if type(e).__name__ in ("TextDelta", "ToolCall", "ToolResult")]
    assert kinds == ["TextDelta", "ToolCall", "ToolResult", "TextDelta"]


# ---------------------------------------------------------------------------- cancellation, trace, misc


async def test_barge_in_during_a_slow_tool_cancels_it_and_leaks_no_task():
    state = {}

    @tool
    async def slow(x: int) -> str:
        """Slow.

        Args:
            x: Anything.
        """
        state["task"] = asyncio.current_task()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        return "late"

    agent, _ = make([[{"tool_call": {"name": "slow", "arguments": {"x": 1}}}], "never"], tools=[slow],
                    filler=None)
    session = agent.session()
    events = []
    async for ev in session.run("go"):
        events.append(ev)
        if isinstance(ev, ToolCall):
            await asyncio.sleep(0.05)
            session.interrupt()
    assert events[-1].reason == "interrupted"
    assert state.get("cancelled") and state["task"].done()
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert left == []


async def test_closing_the_stream_mid_round_cancels_running_tools():
    state = {}

    @tool
    async def slow(x: int) -> str:
        """Slow.

        Args:
            x: Anything.
        """
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        return "late"

    mw = ToolCalling(ToolRegistry([slow]), filler="Wait.", filler_after=0.01)
    ctx = TurnContext("s", 1)

    async def source():
        yield ToolCall(id="c1", name="slow", arguments='{"x": 1}')
        yield RoundEnd(round=0)

    stream = Bus([mw]).process_stream(source(), ctx)
    seen = []
    async for ev in stream:
        seen.append(ev)
        if isinstance(ev, Utterance):  # the filler: the tool is running now
            break
    await stream.aclose()
    assert state == {"cancelled": True}


def test_trace_records_each_call():
    agent, _ = make([[{"tool_call": {"id": "c9", "name": "add", "arguments": {"a": 2, "b": 5}}}], "7"])
    [rec] = agent.ask("2+5").tool_calls
    assert rec["id"] == "c9" and rec["name"] == "add" and json.loads(rec["arguments"]) == {"a": 2, "b": 5}
    assert rec["result"] == "7" and rec["status"] == "ok" and rec["round"] == 1 and rec["seconds"] >= 0
    assert "tool:add" in agent.session("default").last_trace.timings


def test_a_reply_without_calls_passes_unchanged_and_ends_after_one_round():
    agent, thinker = make([["Just ", "text <i>with</i> ", "tags."]])
    r = agent.ask("hi")
    assert r.text == "Just text <i>with</i> tags." and len(thinker.requests) == 1
    assert r.tool_calls == []


def test_a_tool_can_take_the_turn_context():
    @tool
    def whoami(ctx: TurnContext) -> str:
        """Says which session asks."""
        return f"session {ctx.session_id}"

    assert "ctx" not in json.dumps(whoami.openai_schema())
    agent, thinker = make([[{"tool_call": {"name": "whoami", "arguments": {}}}], "ok"], tools=[whoami])
    agent.session("abc").ask("who?")
    assert tool_messages(thinker.requests[1])[0].text == "session abc"


def test_tools_middleware_without_a_registry_uses_the_agents_tools():
    thinker = ScriptedThinker([[{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 1}}}], "2"])
    agent = Agent(thinker=thinker, tools=[add], middleware=[ToolCalling(filler=None)])
    assert sum(isinstance(m, ToolCalling) for m in agent.middleware) == 1
    assert agent.ask("1+1").tool_calls[0]["result"] == "2"


def test_the_next_turn_sees_the_tool_exchange_in_its_history():
    agent, thinker = make([[{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 1}}}], "Two.", "Yes."])
    s = agent.session()
    s.ask("1+1")
    s.ask("sure?")
    roles = [m.role for m in thinker.requests[2].messages]
    assert roles == ["user", "assistant", "tool", "assistant", "user"]


def test_the_request_offers_the_registered_tools():
    agent, thinker = make(["hi"])
    agent.ask("hi")
    names = [t["function"]["name"] for t in thinker.requests[0].tools]
    assert names == ["add", "calculator"]


class _PickRouter:
    """A router double with a fixed answer (the real router has its own tests)."""

    def __init__(self, pick):
        self.pick = pick

    def route(self, text, registry):
        return self.pick


def test_with_a_router_the_first_round_is_constrained_and_shown_examples():
    agent, thinker = make([call_text("calculator", {"expression": "2*3"}), "6."],
                          router=_PickRouter(("calculator", 0.9)))
    r = agent.ask("two times three")
    first, second = thinker.requests
    assert first.tool_choice == "calculator" and first.constraint is not None
    assert first.constraint.names == ["calculator"]
    assert any("<tool_call>" in m.text for m in first.messages if m.role == "assistant")  # examples
    assert second.tool_choice == "none" and second.constraint is None
    # The call is shown to a template that cannot render tool_calls, as text.
    assert "<tool_call>" in [m for m in second.messages if m.role == "assistant"][-1].text
    assert r.text == "6." and any(iv.action == "route" for iv in r.trace.interventions)


def test_when_the_router_finds_no_tool_none_is_offered():
    agent, thinker = make(["Hello!"], router=_PickRouter(None))
    agent.ask("hi")
    assert thinker.requests[0].tool_choice == "none" and thinker.requests[0].constraint is None


def test_a_failing_router_leaves_the_turn_unrouted_and_records_why():
    class Broken:
        def route(self, text, registry):
            raise RuntimeError("no model")

    agent, thinker = make(["Hello!"], router=Broken())
    r = agent.ask("hi")
    assert r.text == "Hello!" and thinker.requests[0].tool_choice == "auto"
    assert any("router failed" in e["message"] for e in r.trace.errors)


def test_registry_call_raises_tool_error_for_bad_arguments():
    reg = ToolRegistry([add])
    with pytest.raises(ToolError, match="b: missing"):
        asyncio.run(reg.call("add", '{"a": 1}'))


def test_with_a_router_earlier_calls_are_shown_as_text_in_later_turns():
    agent, thinker = make([call_text("add", {"a": 1, "b": 1}), "Two.", "Bye."],
                          router=_PickRouter(("add", 0.9)))
    s = agent.session()
    s.ask("1+1")
    agent.bus.middleware[0].router = _PickRouter(None)
    s.ask("thanks")
    history = thinker.requests[2].messages
    shown = [m for m in history if m.role == "assistant" and "<tool_call>" in m.text]
    assert shown and all(not m.tool_calls for m in history)
