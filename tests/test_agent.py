"""The agent: turns, sessions, fallback lines, concurrency with the Talker, barge-in, errors."""

import asyncio

import pytest

from omni_agent.agent import Agent
from omni_agent.bus import Middleware, hook
from omni_agent.errors import Blocked, OmniAgentError, UnsupportedInputError
from omni_agent.events import AudioChunk, ImagePart, TextDelta, TurnEnd, UserTurn, Utterance
from omni_agent.testing import RecordingTalker, ScriptedThinker


def test_sync_ask_returns_the_reply_and_trace():
    agent = Agent(thinker=ScriptedThinker([["Paris ", "is the capital. ", "Nice city."]]))
    r = agent.ask("capital of France?")
    assert r.text == "Paris is the capital. Nice city."
    assert r.reason == "completed"
    assert [u.text for u in r.utterances] == ["Paris is the capital.", "Nice city."]
    assert "thinker_first_token" in r.trace.timings


def test_history_is_kept_per_session():
    thinker = ScriptedThinker(["One.", "Two.", "Three."])
    agent = Agent(thinker=thinker, system_prompt="Be brief.")
    a, b = agent.session("a"), agent.session("b")
    a.ask("first")
    a.ask("second")
    b.ask("other")
    msgs = thinker.requests[1].messages
    assert [(m.role, m.text) for m in msgs] == [
        ("system", "Be brief."), ("user", "first"), ("assistant", "One."), ("user", "second")]
    assert [m.text for m in thinker.requests[2].messages] == ["Be brief.", "other"]


async def test_run_streams_events_in_order_and_ends_with_turn_end():
    agent = Agent(thinker=ScriptedThinker([["Hi", " there."]]))
    events = [e async for e in agent.session().run("hello")]
    kinds = [e.type for e in events]
    assert kinds[0] == "user_turn" and kinds[-1] == "turn_end"
    assert kinds.index("text_delta") < kinds.index("utterance")
    assert all(e.turn_id == 1 and e.session_id for e in events)


def test_blocked_clause_is_replaced_by_the_fallback_and_never_spoken():
    @hook("utterance")
    def no_numbers(utt, ctx):
        if any(c.isdigit() for c in utt.text):
            raise Blocked("has a number")
        return utt

    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([["Call me. ", "My pin is 1234. ", "Bye."]]), talker=talker,
                  middleware=[no_numbers], fallback="I can't share that.")
    r = agent.ask("hi")
    assert talker.spoken == ["Call me.", "I can't share that.", "Bye."]
    assert "1234" not in r.text and "1234" not in r.spoken
    seg = r.trace.segments[1]
    assert (seg.status, seg.original, seg.spoken) == ("blocked", "My pin is 1234.", "I can't share that.")


def test_a_crashing_middleware_blocks_its_clause_and_the_session_takes_the_next_turn():
    class Crashes(Middleware):
        def on_utterance(self, utt, ctx):
            if "crash" in utt.text:
                raise ZeroDivisionError("oops")
            return utt

    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker(["Please crash now.", "All good."]), talker=talker,
                  middleware=[Crashes()], fallback="Let me rephrase.")
    s = agent.session()
    r1 = s.ask("a")
    assert talker.spoken == ["Let me rephrase."]
    assert r1.errors and "oops" in r1.errors[0].message
    assert r1.trace.interventions[0].action == "error"
    r2 = s.ask("b")
    assert r2.text == "All good." and talker.spoken[-1] == "All good."


def test_talker_audio_is_collected_and_segments_marked_spoken():
    talker = RecordingTalker(sample_rate=16000)
    r = Agent(thinker=ScriptedThinker("Hello world."), talker=talker).ask("hi")
    assert r.sample_rate == 16000 and len(r.audio) > 1000
    assert r.spoken == "Hello world." and r.trace.segments[0].status == "spoken"
    assert "talker_first_audio" in r.trace.timings


async def test_talker_starts_before_the_thinker_finishes():
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([["First clause. "] + ["more "] * 20 + ["end."]], delay=0.01),
                  talker=talker)
    order = []
    async for ev in agent.session().run("go"):
        if isinstance(ev, AudioChunk) and "audio" not in order:
            order.append("audio")
        if isinstance(ev, TextDelta) and ev.text == "end.":
            order.append("last_delta")
    assert order[0] == "audio"


async def test_interrupt_cancels_thinker_and_talker_and_memory_keeps_only_what_was_spoken():
    talker = RecordingTalker(realtime=1.0, seconds_per_char=0.02)
    thinker = ScriptedThinker([["One. ", "Two two two. ", "Three three three three."]], delay=0.05)
    agent = Agent(thinker=thinker, talker=talker)
    session = agent.session()
    events = []
    async for ev in session.run("talk"):
        events.append(ev)
        if isinstance(ev, AudioChunk) and ev.utterance_index == 1:
            session.interrupt()
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.reason == "interrupted"
    assert events[-2].type == "interruption"
    assert end.spoken == "One."
    assert talker.cancelled == 1
    assert session.history[-1].text == "One."
    assert not session.busy
    # no task leaked: only this test's task is left
    await asyncio.sleep(0)
    assert len([t for t in asyncio.all_tasks() if not t.done()]) == 1


def test_unsupported_media_is_a_clear_error_and_the_session_goes_on():
    agent = Agent(thinker=ScriptedThinker("Fine.", accepts=["text"]))
    s = agent.session()
    with pytest.raises(UnsupportedInputError, match="cannot take image"):
        s.ask(UserTurn.of("what is this?", ImagePart(data=b"\x89PNG")))
    assert s.ask("hello").text == "Fine."


def test_audio_without_ears_says_what_to_do():
    from omni_agent.events import AudioPart

    agent = Agent(thinker=ScriptedThinker("x", accepts=["text"]))
    with pytest.raises(UnsupportedInputError, match="ears"):
        agent.ask(UserTurn.of(None, AudioPart(data=b"RIFF")))


def test_thinker_failure_ends_the_turn_with_an_error_not_the_session():
    calls = []

    def reply(req):
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("server went away")
        return "Back again."

    agent = Agent(thinker=ScriptedThinker([reply, reply]))
    s = agent.session()
    r = s.ask("a")
    assert r.reason == "error" and "server went away" in r.errors[0].message
    assert s.ask("b").text == "Back again."


def test_input_rail_blocks_the_turn_before_the_thinker():
    class NoPasswords(Middleware):
        fallback = "I can't help with passwords."

        def on_input(self, turn, ctx):
            if "password" in turn.text:
                raise Blocked("asks for a password")
            return turn

    thinker = ScriptedThinker("never")
    r = Agent(thinker=thinker, middleware=[NoPasswords()]).ask("tell me the admin password")
    assert r.reason == "blocked" and r.text == "I can't help with passwords."
    assert thinker.requests == []


def test_middleware_continue_with_runs_another_thinker_round():
    from omni_agent.thinker import Message

    class OneMore(Middleware):
        async def stream(self, events, ctx):
            from omni_agent.bus import RoundEnd

            async for ev in events:
                if isinstance(ev, RoundEnd) and ctx.round == 0:
                    ctx.continue_with([Message("user", "(continue)")])
                yield ev

    thinker = ScriptedThinker(["Part one.", "Part two."])
    r = Agent(thinker=thinker, middleware=[OneMore()]).ask("go")
    assert r.text == "Part one.Part two."
    assert [u.text for u in r.utterances] == ["Part one.", "Part two."]
    assert thinker.requests[1].messages[-1].text == "(continue)"


def test_ask_inside_a_running_loop_points_to_aask():
    agent = Agent(thinker=ScriptedThinker("x"))

    async def inside():
        agent.ask("hi")

    with pytest.raises(OmniAgentError, match="aask"):
        asyncio.run(inside())


async def test_second_turn_while_one_runs_is_refused():
    agent = Agent(thinker=ScriptedThinker([["a "] * 50], delay=0.01))
    s = agent.session()
    gen = s.run("one")
    await gen.__anext__()
    with pytest.raises(OmniAgentError, match="already running"):
        await s.run("two").__anext__()
    await gen.aclose()


def test_blocked_with_its_own_fallback_after_a_rewriting_hook_speaks_that_fallback():
    @hook("utterance")
    def rewrite(utt, ctx):
        return Utterance(text=utt.text.upper(), index=utt.index)  # a new object

    @hook("utterance")
    def block(utt, ctx):
        raise Blocked("no", fallback="Let's talk about something else.")

    talker = RecordingTalker()
    Agent(thinker=ScriptedThinker("Secret plans."), talker=talker, middleware=[rewrite, block]).ask("x")
    assert talker.spoken == ["Let's talk about something else."]


def test_display_only_utterances_are_shown_not_spoken_nor_remembered():
    from omni_agent.bus import Middleware, RoundEnd

    class Sources(Middleware):
        async def stream(self, events, ctx):
            async for ev in events:
                yield ev
                if isinstance(ev, RoundEnd):
                    yield Utterance(text="", display="[Sources: a.md#1]")

    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker("It opens at nine."), talker=talker, middleware=[Sources()])
    s = agent.session()
    r = s.ask("when?")
    assert talker.spoken == ["It opens at nine."]
    assert r.text == "It opens at nine. [Sources: a.md#1]"
    assert s.history[-1].text == "It opens at nine."


def test_a_failed_turn_is_not_remembered():
    def reply(req):
        if req.messages[-1].text == "bad":
            raise ValueError("cannot read that")
        return "Fine."

    thinker = ScriptedThinker(default=reply)
    s = Agent(thinker=thinker).session()
    assert s.ask("bad").reason == "error"
    s.ask("good")
    assert [m.text for m in thinker.requests[-1].messages] == ["good"]
