"""Conversation memory: token budget, persistence across restarts, interrupted turns."""

from __future__ import annotations

import sqlite3

import pytest

from omni_agent.agent import Agent
from omni_agent.errors import ConfigError
from omni_agent.events import AudioChunk, AudioPart, ImagePart, TextPart, TurnEnd
from omni_agent.memory import ConversationMemory, HistoryError, estimate_tokens
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.thinker import Message


def turn(i: int, words: int = 3) -> list[Message]:
    return [Message("user", f"question{i} " * words), Message("assistant", f"answer{i} " * words)]


def texts(messages: list[Message]) -> list[str]:
    return [m.text for m in messages]


def test_load_returns_saved_turns_in_order(tmp_path):
    mem = ConversationMemory(tmp_path)
    mem.save_turn("s", turn(1))
    mem.save_turn("s", turn(2))
    assert texts(mem.load("s")) == texts(turn(1) + turn(2))


def test_sessions_are_kept_apart(tmp_path):
    mem = ConversationMemory(tmp_path)
    mem.save_turn("a", turn(1))
    mem.save_turn("b", turn(2))
    assert texts(mem.load("a")) == texts(turn(1))
    assert mem.load("never") == []
    assert mem.sessions() == ["a", "b"]


def test_history_survives_a_restart(tmp_path):
    ConversationMemory(tmp_path / "h.sqlite3").save_turn("s", turn(1))
    reopened = ConversationMemory(tmp_path / "h.sqlite3")
    assert texts(reopened.load("s")) == texts(turn(1))


def test_oldest_turns_are_dropped_to_fit_the_token_budget(tmp_path):
    per_turn = ConversationMemory(":memory:").count_tokens(turn(0))
    mem = ConversationMemory(tmp_path, max_tokens=per_turn * 2 + 1)
    for i in range(5):
        mem.save_turn("s", turn(i))
    assert texts(mem.load("s")) == texts(turn(3) + turn(4))
    assert mem.count_tokens(mem.load("s")) <= mem.max_tokens
    assert len(mem.turns("s")) == 5  # dropped from what the Thinker sees, not from disk


def test_a_tool_call_is_never_separated_from_its_result(tmp_path):
    tool_turn = [
        Message("user", "What time is it?"),
        Message("assistant", "", tool_calls=[{"id": "c1", "name": "current_time", "arguments": "{}"}]),
        Message("tool", "12:00", tool_call_id="c1", name="current_time"),
        Message("assistant", "It is noon."),
    ]
    mem = ConversationMemory(tmp_path)
    budget = mem.count_tokens(tool_turn) + mem.count_tokens(turn(9))
    mem = ConversationMemory(tmp_path, max_tokens=budget - 1)
    mem.save_turn("s", tool_turn)
    mem.save_turn("s", turn(9))
    assert texts(mem.load("s")) == texts(turn(9))  # the whole tool turn goes, not half of it
    big = ConversationMemory(tmp_path, max_tokens=budget)
    loaded = big.load("s")
    assert loaded[1].tool_calls == tool_turn[1].tool_calls
    assert (loaded[2].role, loaded[2].tool_call_id, loaded[2].name) == ("tool", "c1", "current_time")


def test_max_turns_caps_the_history_too(tmp_path):
    mem = ConversationMemory(tmp_path, max_turns=1)
    mem.save_turn("s", turn(1))
    mem.save_turn("s", turn(2))
    assert texts(mem.load("s")) == texts(turn(2))


def test_a_pluggable_counter_decides_the_budget(tmp_path):
    words = ConversationMemory(tmp_path, max_tokens=2 * (3 + 4) + 1, counter=lambda t: len(t.split()))
    for i in range(3):
        words.save_turn("s", turn(i))  # 3 words + 4 overhead per message
    assert texts(words.load("s")) == texts(turn(2))


def test_a_summarizer_folds_dropped_turns_into_a_stored_summary(tmp_path):
    seen = []

    def summarize(previous, dropped):
        seen.append((previous, texts(dropped)))
        return ((previous + "; ") if previous else "") + ", ".join(m.text.split()[0] for m in dropped)

    per_turn = ConversationMemory(":memory:").count_tokens(turn(0))
    mem = ConversationMemory(tmp_path, max_tokens=per_turn * 2 + 30, summarizer=summarize)
    for i in range(4):
        mem.save_turn("s", turn(i))
    loaded = mem.load("s")
    assert loaded[0].role == "system"
    # Every turn is either summarized or kept whole, and all of it fits the budget.
    assert loaded[0].text == ("Summary of the earlier conversation: "
                              "question0, answer0; question1, answer1")
    assert texts(loaded[1:]) == texts(turn(2) + turn(3))
    assert mem.count_tokens(loaded) <= mem.max_tokens
    # The summary is stored: loading again (even after a restart) does not summarize again.
    again = ConversationMemory(tmp_path, max_tokens=mem.max_tokens, summarizer=summarize)
    assert texts(again.load("s")) == texts(loaded)
    assert len(seen) == 2
    mem.save_turn("s", turn(4))
    assert "question2" in mem.load("s")[0].text and seen[-1][0] is not None


def test_interrupted_turn_is_stored_with_what_was_spoken_and_marked(tmp_path):
    mem = ConversationMemory(tmp_path, interrupted_note=" [interrupted]")
    mem.save_turn("s", [Message("user", "Tell me a story."), Message("assistant", "Once upon")],
                  interrupted=True)
    stored = mem.turns("s")[0]
    assert stored.interrupted and stored.messages[-1].text == "Once upon"
    assert mem.load("s")[-1].text == "Once upon [interrupted]"
    assert ConversationMemory(tmp_path).load("s")[-1].text == "Once upon"  # no note by default


def test_media_parts_are_stored_as_text_not_bytes(tmp_path):
    mem = ConversationMemory(tmp_path)
    msg = Message("user", [TextPart("What is this?"), ImagePart(data=b"\x89PNG" * 1000, url="/pics/cat.png"),
                           AudioPart(data=b"RIFF" * 1000, transcript="and this sound")])
    mem.save_turn("s", [msg, Message("assistant", "A cat.")])
    loaded = mem.load("s")[0]
    assert [p.text for p in loaded.content] == ["What is this?", "[image: /pics/cat.png]", "and this sound"]
    assert (tmp_path / "history.sqlite3").stat().st_size < 64_000


def test_clear_forgets_a_session(tmp_path):
    mem = ConversationMemory(tmp_path)
    mem.save_turn("s", turn(1))
    mem.clear("s")
    assert mem.load("s") == [] and mem.sessions() == []


def test_a_damaged_history_file_is_a_clear_error(tmp_path):
    f = tmp_path / "history.sqlite3"
    f.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(HistoryError, match="damaged"):
        ConversationMemory(f)


def test_a_damaged_row_costs_only_that_turn(tmp_path):
    mem = ConversationMemory(tmp_path)
    mem.save_turn("s", turn(1))
    mem.save_turn("s", turn(2))
    with sqlite3.connect(tmp_path / "history.sqlite3") as db:
        db.execute("UPDATE turns SET messages='{not json' WHERE idx=0")
    assert texts(ConversationMemory(tmp_path).load("s")) == texts(turn(2))


def test_bad_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="max_tokens"):
        ConversationMemory(":memory:", max_tokens=0)


def test_default_location_follows_omni_agent_home(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNI_AGENT_HOME", str(tmp_path / "home"))
    mem = ConversationMemory()
    assert mem.path == str(tmp_path / "home" / "history.sqlite3")


def test_estimate_is_about_four_characters_per_token():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd" * 10) == 10


# --------------------------------------------------------------------------- with the agent

def test_an_agent_resumes_a_session_after_a_restart(tmp_path):
    first = Agent(thinker=ScriptedThinker("Your name is Ada."), history=ConversationMemory(tmp_path))
    first.session("ada").ask("My name is Ada. What is my name?")
    thinker = ScriptedThinker("Still Ada.")
    restarted = Agent(thinker=thinker, history=ConversationMemory(tmp_path))
    restarted.session("ada").ask("And now?")
    sent = texts(thinker.requests[-1].messages)
    assert sent[-3:] == ["My name is Ada. What is my name?", "Your name is Ada.", "And now?"]


def test_the_agent_built_from_config_uses_conversation_memory(tmp_path):
    agent = Agent.from_config({"thinker": {"backend": "scripted", "replies": ["Hi."]},
                               "history": {"path": str(tmp_path), "max_tokens": 500}})
    assert isinstance(agent.history, ConversationMemory) and agent.history.max_tokens == 500
    agent.session("x").ask("hello")
    assert texts(ConversationMemory(tmp_path).load("x")) == ["hello", "Hi."]


async def test_an_interrupted_turn_is_remembered_as_what_was_actually_spoken(tmp_path):
    talker = RecordingTalker(realtime=1.0, seconds_per_char=0.02)
    thinker = ScriptedThinker([["One. ", "Two two two. ", "Three three three three."]], delay=0.05)
    agent = Agent(thinker=thinker, talker=talker, history=ConversationMemory(tmp_path))
    session = agent.session("s")
    async for ev in session.run("talk"):
        if isinstance(ev, AudioChunk) and ev.utterance_index == 1:
            session.interrupt()
        end = ev
    assert isinstance(end, TurnEnd) and end.reason == "interrupted"
    stored = ConversationMemory(tmp_path).turns("s")[-1]
    assert stored.interrupted
    assert texts(stored.messages) == ["talk", "One."]


def test_revise_last_reply_keeps_only_what_was_heard_across_a_restart(tmp_path):
    from omni_agent.thinker import Message
    from omni_agent.memory import ConversationMemory

    mem = ConversationMemory(tmp_path)
    mem.save_turn("s", [Message("user", "tell me"), Message("assistant", "One. Two. Three.")])
    assert mem.revise_last_reply("s", "One.") is True
    mem.close()
    again = ConversationMemory(tmp_path)
    assert [m.text for m in again.load("s")] == ["tell me", "One."]
    assert again.turns("s")[-1].interrupted
    assert again.revise_last_reply("nobody", "x") is False
    again.forget("s")
    assert again.load("s") == []
