"""Fail-closed: a safety middleware that raises, answers nonsense or overruns its time
budget blocks the clause; the fallback line is spoken instead, the trace says why, and
the session takes the next turn."""

import asyncio
import time

from omni_agent.agent import Agent
from omni_agent.bus import Middleware, hook
from omni_agent.errors import Blocked
from omni_agent.events import ErrorEvent, TextDelta
from omni_agent.middleware.pii import PIIRedactor
from omni_agent.middleware.policy import Moderation
from omni_agent.testing import RecordingTalker, ScriptedThinker

REPLY = ["Hello there. ", "The secret word is swordfish. ", "Goodbye."]


def run(middleware, replies=(REPLY,), **kw):
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker(list(replies)), talker=talker, middleware=middleware,
                  fallback="Sorry, I can't say that.", **kw)
    session = agent.session("s")
    return talker, session, session.ask("hi")


class Crashes(Middleware):
    """A buggy custom filter: crashes on one clause."""

    def on_utterance(self, utt, ctx):
        if "secret" in utt.text:
            raise KeyError("lookup table missing")
        return utt


def test_a_raising_middleware_blocks_only_that_clause_and_the_fallback_is_spoken():
    talker, _, r = run([Crashes()])
    assert talker.spoken == ["Hello there.", "Sorry, I can't say that.", "Goodbye."]
    assert "swordfish" not in r.spoken


def test_the_trace_and_the_events_say_why_a_crashing_middleware_blocked():
    _, _, r = run([Crashes()])
    iv = [i for i in r.trace.interventions if i.action == "error"]
    assert iv and iv[0].middleware == "Crashes" and "KeyError" in iv[0].reason and "fail-closed" in iv[0].reason
    assert r.trace.segments[1].status == "blocked" and r.trace.segments[1].fallback
    assert any(isinstance(e, ErrorEvent) and "Crashes" in e.message for e in r.events)


def test_the_session_takes_the_next_turn_after_a_middleware_crashed():
    talker, session, _ = run([Crashes()], replies=(REPLY, ["All good now."]))
    r2 = session.ask("again")
    assert r2.reason == "completed" and talker.spoken[-1] == "All good now."


def test_an_async_hook_over_its_time_budget_blocks_the_clause():
    class Slow(Middleware):
        timeout = 0.02

        async def on_utterance(self, utt, ctx):
            if "secret" in utt.text:
                await asyncio.sleep(1)
            return utt

    t0 = time.monotonic()
    talker, _, r = run([Slow()])
    assert time.monotonic() - t0 < 0.5  # it was cut at its budget, not awaited
    assert talker.spoken == ["Hello there.", "Sorry, I can't say that.", "Goodbye."]
    iv = [i for i in r.trace.interventions if i.action == "timeout"]
    assert iv and "0.02" in iv[0].reason and "fail-closed" in iv[0].reason


def test_a_sync_hook_over_its_budget_has_its_late_answer_refused():
    @hook("utterance", timeout=0.01)
    def slow_check(utt, ctx):
        if "secret" in utt.text:
            time.sleep(0.05)
        return utt

    talker, _, r = run([slow_check])
    assert "swordfish" not in " ".join(talker.spoken)
    assert [i.middleware for i in r.trace.interventions if i.action == "timeout"] == ["slow_check"]


def test_a_moderation_check_that_raises_blocks():
    def judge(text):
        if "secret" in text:
            raise ConnectionError("classifier service down")
        return True

    talker, _, r = run([Moderation(judge)])
    assert talker.spoken[1] == "Sorry, I can't say that."
    assert any("ConnectionError" in i.reason for i in r.trace.interventions)


def test_a_moderation_answer_that_cannot_be_read_blocks():
    talker, _, r = run([Moderation(lambda text: 0.93 if "secret" in text else True)])
    assert talker.spoken[1] == "Sorry, I can't say that."
    assert any("TypeError" in i.reason and "0.93" in i.reason for i in r.trace.interventions)


def test_an_async_moderation_check_over_budget_blocks():
    async def judge(text):
        await asyncio.sleep(1 if "secret" in text else 0)
        return True

    talker, _, r = run([Moderation(judge, timeout=0.05)])
    assert talker.spoken == ["Hello there.", "Sorry, I can't say that.", "Goodbye."]


def test_a_slow_sync_check_in_a_thread_is_cut_at_its_budget():
    def judge(text):
        if "secret" in text:
            time.sleep(0.3)
        return True

    t0 = time.monotonic()
    talker, _, _ = run([Moderation(judge, in_thread=True, timeout=0.05)])
    assert talker.spoken[1] == "Sorry, I can't say that."
    assert time.monotonic() - t0 < 0.28  # the turn did not wait for the slow check


def test_a_middlewares_own_fallback_line_wins_over_the_agents():
    talker, _, _ = run([Moderation(lambda t: "secret" not in t, fallback="Let's change the subject.")])
    assert talker.spoken[1] == "Let's change the subject."


def test_a_blocked_exception_may_carry_its_own_fallback_line():
    @hook("utterance")
    def no_secrets(utt, ctx):
        if "secret" in utt.text:
            raise Blocked("mentions a secret", fallback="That's classified.")
        return utt

    talker, _, r = run([no_secrets])
    assert talker.spoken[1] == "That's classified."
    assert [i.reason for i in r.trace.interventions if i.action == "block"] == ["mentions a secret"]


def test_a_crashing_stream_middleware_blocks_the_rest_of_the_answer_and_the_session_goes_on():
    class BadStream(Middleware):
        async def stream(self, events, ctx):
            async for ev in events:
                if isinstance(ev, TextDelta) and "secret" in ev.text:
                    raise RuntimeError("parser state corrupt")
                yield ev

    talker, session, r = run([BadStream()], replies=(REPLY, ["Fine again."]))
    assert "swordfish" not in " ".join(talker.spoken)
    assert any(i.point == "stream" and i.action == "error" for i in r.trace.interventions)
    assert session.ask("next").text == "Fine again."


def test_a_crashing_input_rail_refuses_the_turn_without_calling_the_thinker():
    class BadRail(Middleware):
        def on_input(self, turn, ctx):
            raise ValueError("rail broken")

    thinker = ScriptedThinker(["Never said."])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, middleware=[BadRail()], fallback="Sorry, I can't help with that.")
    r = agent.ask("hi")
    assert thinker.requests == [] and talker.spoken == ["Sorry, I can't help with that."]
    assert r.reason == "blocked" and any("rail broken" in i.reason for i in r.trace.interventions)


def test_the_built_in_chain_keeps_within_a_small_budget():
    # A 50 ms budget per clause is plenty for the built-ins: nothing times out.
    talker, _, r = run([PIIRedactor(timeout=0.05), Moderation(lambda t: True, timeout=0.05)],
                       replies=(["Call 555-0199 now. ", "Or mail a@b.io."],))
    assert talker.spoken == ["Call [phone number] now.", "Or mail [email address]."]
    assert not [i for i in r.trace.interventions if i.action in ("timeout", "error")]
