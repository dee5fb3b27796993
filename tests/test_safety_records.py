"""Aligned records: for each clause the trace keeps what the Thinker wrote, what was
shown and what was spoken, side by side; memory keeps what was shown; with
``keep_originals=False`` redacted originals are kept nowhere (trace or memory)."""


from omni_agent.agent import Agent
from omni_agent.events import TextDelta
from omni_agent.middleware.markup import MarkupGuard
from omni_agent.middleware.pii import PIIRedactor
from omni_agent.middleware.policy import Blocklist
from omni_agent.middleware.speech import SpeechShaper
from omni_agent.testing import RecordingTalker, ScriptedThinker

REPLY = ["**Sure!** ", "Call me at 555-01", "99 or see https://example.com/help. ", "It costs $5. 🎉"]


def turn(middleware, keep_originals=True, user="hi", **kw):
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([REPLY, ["Ok."]]), talker=talker, middleware=middleware,
                  keep_originals=keep_originals, **kw)
    session = agent.session("s")
    r = session.ask(user)
    return talker, session, r


def test_each_segment_aligns_original_display_and_spoken_by_clause():
    talker, _, r = turn([MarkupGuard(), PIIRedactor(), SpeechShaper()])
    segs = [(s.index, s.original, s.display, s.spoken) for s in r.trace.segments]
    assert segs == [
        (0, "**Sure!**", "**Sure!**", "Sure!"),
        (1, "Call me at 555-0199 or see https://example.com/help.",
         "Call me at 555-0199 or see https://example.com/help.", "Call me at [phone number] or see the link."),
        (2, "It costs $5.", "It costs $5.", "It costs five dollars."),
        (3, "🎉", "🎉", ""),  # shown, with nothing to say: the Talker is not called for it
    ]
    assert talker.spoken == [s[3] for s in segs if s[3]]
    assert r.text.endswith("It costs $5. 🎉")


def test_the_trace_records_each_change_with_the_middleware_that_made_it():
    _, _, r = turn([PIIRedactor(), SpeechShaper()])
    changes = [(i.middleware, i.point, i.action, i.before, i.after) for i in r.trace.interventions]
    assert ("pii", "utterance", "rewrite", "Call me at 555-0199 or see https://example.com/help.",
            "Call me at [phone number] or see https://example.com/help.") in changes
    assert ("speech", "utterance", "rewrite", "Call me at [phone number] or see https://example.com/help.",
            "Call me at [phone number] or see the link.") in changes


def test_memory_keeps_the_display_text_which_by_default_still_shows_the_number():
    _, session, r = turn([PIIRedactor()])
    reply = session.history[-1]
    assert reply.role == "assistant" and reply.text == r.text
    assert "555-0199" in reply.text  # display is not filtered unless asked


def test_memory_true_keeps_pii_out_of_memory_and_the_shown_clauses():
    _, session, r = turn([PIIRedactor(memory=True)])
    assert "555-0199" not in session.history[-1].text
    assert "[phone number]" in session.history[-1].text
    assert "555-0199" not in r.trace.segments[1].display


def test_display_true_keeps_pii_out_of_display_memory_and_stream_alike():
    _, session, r = turn([PIIRedactor(display=True)])
    shown = "".join(e.text for e in r.events if isinstance(e, TextDelta))
    for where in (shown, r.text, session.history[-1].text, r.trace.segments[1].display):
        assert "555-0199" not in where and "[phone number]" in where


def _texts(obj):
    """Every string in a JSON-like value, keys included."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _texts(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _texts(v)


def test_without_keep_originals_no_redacted_text_is_in_the_trace_or_memory():
    _, session, r = turn([PIIRedactor(), Blocklist(["swordfish"], action="redact")], keep_originals=False)
    # Every text of the trace (its numbers, the timings, may hold the digits "0199").
    texts = _texts(r.trace.to_dict())
    assert not any("555-0199" in t or "0199" in t for t in texts)
    assert all(s.original is None for s in r.trace.segments)
    assert all(i.before is None for i in r.trace.interventions)
    assert all("0199" not in m.text for m in session.history)


def test_without_keep_originals_the_users_own_pii_stays_out_of_memory_with_an_input_rail():
    _, session, r = turn([PIIRedactor(input=True)], keep_originals=False, user="my card is 4111 1111 1111 1111")
    assert all("4111" not in m.text for m in session.history)
    assert not any("4111" in t for t in _texts(r.trace.to_dict()))


def test_blocked_clause_reasons_name_no_redacted_text_without_keep_originals():
    talker, _, r = turn([Blocklist(["swordfish", "555"], whole_word=False)], keep_originals=False)
    reasons = " ".join(i.reason for i in r.trace.interventions)
    assert "555" not in reasons and "a listed term" in reasons
    assert r.trace.segments[1].status == "blocked"


def test_reasoning_is_kept_in_the_trace_not_in_display_speech_or_memory():
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([["<think>The user wants", " a joke.</think>", "Why not? Here goes."]]),
                  talker=talker, middleware=[MarkupGuard()])
    session = agent.session("s")
    r = session.ask("joke")
    assert r.trace.reasoning == "The user wants a joke."
    assert "joke" not in " ".join(talker.spoken) and "think" not in r.text
    assert "user wants" not in session.history[-1].text


def test_with_display_filtering_pii_in_reasoning_stays_out_of_the_trace_too():
    agent = Agent(thinker=ScriptedThinker([["<think>user gave 555-01", "99 earlier</think>", "Noted."]]),
                  middleware=[MarkupGuard(), PIIRedactor(display=True)])
    r = agent.ask("?")
    assert r.trace.reasoning == "user gave [phone number] earlier"
