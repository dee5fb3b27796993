"""The shared conversation history on a real Redis server (``redis-server`` started by the
tests on a free loopback port): round trip, token budget, summaries, revising after a
barge-in, two replicas writing one session at once, the store going down and coming back,
live sessions resuming on another replica, and how the agent calls a store (off the loop)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect

from omni_agent.agent import Agent, InMemoryHistory
from omni_agent.errors import ConfigError
from omni_agent.events import AudioChunk
from omni_agent.history import HistoryUnavailable
from omni_agent.live import EnergyVAD
from omni_agent.memory import ConversationMemory, HistoryStoreDown, RedisHistory
from omni_agent.memory.testing import RedisServer
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.thinker import Message


def _started(path) -> RedisServer:
    try:
        RedisServer.executable()
    except FileNotFoundError as e:
        pytest.fail(str(e))  # a missing store is a broken setup, not a reason to skip
    return RedisServer(path).start()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = _started(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path):
    """A server of this test's own (the test stops and starts it)."""
    server = _started(tmp_path / "redis")
    yield server
    server.stop()


def store(server: RedisServer, **kw) -> RedisHistory:
    """A history on ``server`` under a key prefix of this test's own."""
    kw.setdefault("prefix", f"test-{uuid.uuid4().hex[:8]}:")
    return RedisHistory(server.url, **kw)


def counting_thinker(**kw) -> ScriptedThinker:
    """Answers with how many user turns it was sent (history included) and the last one."""
    def reply(request):
        users = [m.text for m in request.messages if m.role == "user"]
        return f"turn {len(users)}: {users[-1]}."
    return ScriptedThinker(reply, accepts=["text"], **kw)


# --------------------------------------------------------------------------- round trip


async def test_a_turn_saved_on_one_replica_is_the_history_of_the_next_turn_on_another(redis_server):
    a = store(redis_server)
    b = RedisHistory(redis_server.url, prefix=a.prefix)  # another process, the same store
    first = Agent(thinker=counting_thinker(), history=a)
    second = Agent(thinker=counting_thinker(), history=b)
    r1 = await first.session("alice").aask("my name is Alice")
    r2 = await second.session("alice").aask("what is my name?")
    assert r1.text == "turn 1: my name is Alice."
    assert r2.text == "turn 2: what is my name?."
    assert [(m.role, m.text) for m in second.thinker.requests[0].messages] == [
        ("user", "my name is Alice"), ("assistant", "turn 1: my name is Alice."), ("user", "what is my name?")]
    assert [(m.role, m.text) for m in b.load("alice")][-1] == ("assistant", "turn 2: what is my name?.")
    assert not r2.errors
    await a.aclose()
    await b.aclose()


async def test_tool_calls_and_results_round_trip_as_one_turn(redis_server):
    h = store(redis_server)
    call = Message("assistant", "", tool_calls=[{"id": "c1", "name": "calc", "arguments": {"x": []}}])
    turn = [Message("user", "2+2?"), call, Message("tool", "4", tool_call_id="c1", name="calc"),
            Message("assistant", "Four.")]
    await h.asave_turn("s", turn)
    back = await h.aload("s")
    assert [(m.role, m.text, m.tool_calls, m.tool_call_id) for m in back] == [
        (m.role, m.text, m.tool_calls, m.tool_call_id) for m in turn]
    await h.aforget("s")
    assert await h.aload("s") == []
    await h.aclose()


# --------------------------------------------------------------------------- budget


async def test_the_budget_keeps_the_newest_whole_turns_and_the_store_keeps_them_all(redis_server):
    h = store(redis_server, max_tokens=60)
    for i in range(80):  # more than one read page: the load reads only the newest ones
        await h.asave_turn("s", [Message("user", f"question {i} " + "x" * 40), Message("assistant", f"answer {i}")])
    loaded = await h.aload("s")
    assert loaded[-1].text == "answer 79" and loaded[0].role == "user"
    assert h.count_tokens(loaded) <= 60 and len(loaded) == 4  # two whole turns fit
    assert len(await h.aturns("s")) == 80
    capped = RedisHistory(redis_server.url, prefix=h.prefix, max_tokens=10_000, max_turns=3)
    assert [m.text for m in await capped.aload("s")][::2] == [
        f"question {i} " + "x" * 40 for i in (77, 78, 79)]
    await h.aclose()
    await capped.aclose()


async def test_turns_that_fall_out_of_the_budget_are_summarized_once_for_every_replica(redis_server):
    calls = []

    def summarize(previous, dropped):
        calls.append(len(dropped))
        return (previous or "") + "".join(m.text[0] for m in dropped if m.role == "user")

    h = store(redis_server, max_tokens=40, summarizer=summarize)
    for word in ("apple", "banana", "cherry", "date"):
        await h.asave_turn("s", [Message("user", word + " " * 30), Message("assistant", "ok")])
    loaded = await h.aload("s")
    assert loaded[0].role == "system" and loaded[0].text.startswith("Summary of the earlier conversation: ab")
    other = RedisHistory(redis_server.url, prefix=h.prefix, max_tokens=40, summarizer=summarize)
    n = len(calls)
    assert [m.text for m in await other.aload("s")] == [m.text for m in loaded]
    assert len(calls) == n  # the stored summary is used, not made again
    await h.aclose()
    await other.aclose()


def test_the_sync_methods_serve_scripts_on_the_same_store(redis_server):
    h = store(redis_server)
    h.save_turn("s", [Message("user", "hi"), Message("assistant", "Hello.")])
    assert [m.text for m in h.load("s")] == ["hi", "Hello."]
    assert h.revise_last_reply("s", "Hel") is True
    assert [t.interrupted for t in h.turns("s")] == [True]
    h.forget("s")
    assert h.load("s") == []


# --------------------------------------------------------------------------- barge-in


async def test_after_a_barge_in_memory_keeps_what_was_spoken_then_what_was_heard(redis_server):
    h = store(redis_server, interrupted_note=" [interrupted]")
    talker = RecordingTalker(realtime=1.0, seconds_per_char=0.02)
    thinker = ScriptedThinker([["One two. ", "Three four five. ", "Six seven eight nine."], "Sure."], delay=0.05)
    agent = Agent(thinker=thinker, talker=talker, history=h)
    session = agent.session("bob")
    async for ev in session.run("count"):
        if isinstance(ev, AudioChunk) and ev.utterance_index == 1:
            session.interrupt()
    assert [m.text for m in await h.aload("bob")][-1] == "One two. [interrupted]"
    assert await session.arevise_last_reply("One") is True  # the client played less
    await session.aask("go on")
    sent = [(m.role, m.text) for m in thinker.requests[1].messages]
    assert sent[-2] == ("assistant", "One [interrupted]")
    assert await RedisHistory(redis_server.url, prefix=h.prefix).arevise_last_reply("nobody", "x") is False
    await h.aclose()


# --------------------------------------------------------------------------- concurrent writers


async def test_two_replicas_writing_one_session_at_once_store_only_whole_turns(redis_server):
    # Two agents (two replicas, each its own client) run turns of one session at the same
    # time; every turn has a tool call, so a turn is four messages that must stay together.
    prefix = f"test-{uuid.uuid4().hex[:8]}:"

    def replica(name):
        def reply(request):
            last = request.messages[-1]
            if last.role == "tool":
                return f"{name} done with {last.text}."
            return [{"tool_call": {"name": "echo", "arguments": {"tag": last.text}}}]
        from omni_agent.tools import tool

        @tool
        def echo(tag: str) -> str:
            """Echo the tag."""
            return tag

        return Agent(thinker=ScriptedThinker(reply, accepts=["text"], delay=0.001), tools=[echo],
                     history=RedisHistory(redis_server.url, prefix=prefix))

    a, b = replica("A"), replica("B")

    async def run(agent, name):
        for i in range(15):
            r = await agent.session("shared").aask(f"{name}{i}")
            assert r.reason == "completed" and not r.errors, r.errors

    await asyncio.gather(run(a, "A"), run(b, "B"))
    turns = await a.history.aturns("shared")
    assert len(turns) == 30
    for t in turns:
        roles = [m.role for m in t.messages]
        assert roles == ["user", "assistant", "tool", "assistant"], roles
        tag = t.messages[0].text
        assert t.messages[2].text == tag and t.messages[3].text.endswith(f"done with {tag}.")
        assert t.messages[3].text.startswith(tag[0])  # answered by the replica that asked
    assert sorted(t.messages[0].text for t in turns) == sorted([f"A{i}" for i in range(15)] + [f"B{i}" for i in range(15)])
    assert [t.index for t in turns] == list(range(30))
    # Each replica's own turns are in its own order.
    for name in "AB":
        mine = [int(t.messages[0].text[1:]) for t in turns if t.messages[0].text[0] == name]
        assert mine == list(range(15))
    await a.history.aclose()
    await b.history.aclose()


async def test_a_write_that_is_retried_is_stored_once(redis_server):
    h = store(redis_server)
    client, scripts = h._async_client()
    item = h._pending_turn("s", [Message("user", "hi"), Message("assistant", "Hello.")], False)
    await h._aappend(scripts, item)
    await h._aappend(scripts, item)  # the reply was lost and the write sent again
    assert len(await h.aturns("s")) == 1
    await h.aclose()


# --------------------------------------------------------------------------- the store going down


async def test_a_store_that_goes_down_does_not_stop_the_conversation_and_gets_the_turns_later(own_redis):
    h = store(own_redis, retry_after=0.0, timeout=0.5)
    thinker = counting_thinker()
    agent = Agent(thinker=thinker, history=h)
    s = agent.session("carol")
    assert (await s.aask("one")).text == "turn 1: one."

    own_redis.stop()
    r2 = await s.aask("two")
    assert r2.reason == "completed" and r2.text  # the answer is given all the same
    load_err, save_err = r2.errors
    assert load_err.stage == save_err.stage == "history" and load_err.recoverable and save_err.recoverable
    assert "unreachable" in load_err.message and "without it" in load_err.message
    assert "kept in this server's buffer (1 of at most 1000 turns)" in save_err.message
    assert "lost if this server stops" in save_err.message
    assert h.buffered == 1 and r2.trace.errors[0]["stage"] == "history"

    r3 = await s.aask("three")  # still down: it goes on with the turn only this server has
    assert "still holds 2 message(s)" in r3.errors[0].message
    assert r3.text == "turn 2: three."
    assert h.buffered == 2

    own_redis.start()  # back (empty: it keeps nothing on disk), on the same port
    r4 = await s.aask("four")
    assert not r4.errors and h.buffered == 0
    stored = [t.messages[0].text for t in await h.aturns("carol")]
    assert stored == ["two", "three", "four"]  # written in order, none twice
    await h.aclose()


async def test_a_hanging_store_costs_a_turn_at_most_its_timeout(own_redis):
    h = store(own_redis, retry_after=30.0, timeout=0.3)
    agent = Agent(thinker=counting_thinker(), history=h)
    s = agent.session("dave")
    await s.aask("one")
    os.kill(own_redis.proc.pid, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        t0 = asyncio.get_running_loop().time()
        r = await s.aask("two")
        first = asyncio.get_running_loop().time() - t0
        t0 = asyncio.get_running_loop().time()
        await s.aask("three")  # left alone for retry_after: no wait at all
        second = asyncio.get_running_loop().time() - t0
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
    assert r.reason == "completed" and [e.stage for e in r.errors] == ["history", "history"]
    assert first < 1.5 and second < 0.2
    assert await h.aflush() == 0  # back: the buffered turns are written now
    assert [t.messages[0].text for t in await h.aturns("dave")] == ["one", "two", "three"]
    await h.aclose()


async def test_a_full_buffer_refuses_the_turn_loudly(own_redis):
    h = store(own_redis, retry_after=0.0, max_buffered_turns=1, timeout=0.5)
    own_redis.stop()
    with pytest.raises(HistoryStoreDown, match="kept in this server's buffer"):
        await h.asave_turn("s", [Message("user", "a"), Message("assistant", "A.")])
    with pytest.raises(HistoryStoreDown, match="is NOT saved"):
        await h.asave_turn("s", [Message("user", "b"), Message("assistant", "B.")])
    assert h.buffered == 1
    await h.aclose()  # still down: logs that the buffered turn is lost


def test_a_redis_url_with_a_password_never_shows_it():
    h = RedisHistory("redis://user:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(h) and "s3cret" not in h._unreachable(OSError("refused"))


# --------------------------------------------------------------------------- config


def test_the_config_chooses_the_store(redis_server, tmp_path):
    agent = Agent.from_config({"thinker": {"backend": "scripted", "replies": ["Hi."]},
                         "history": {"store": redis_server.url, "max_tokens": 500, "ttl": 3600}})
    assert isinstance(agent.history, RedisHistory) and agent.history.max_tokens == 500
    default = Agent.from_config({"thinker": {"backend": "scripted"}, "history": {"path": str(tmp_path)}})
    assert isinstance(default.history, ConversationMemory)
    with pytest.raises(ConfigError, match="history.store: 'postgres://x' is not a store"):
        Agent.from_config({"thinker": {"backend": "scripted"}, "history": {"store": "postgres://x"}})
    with pytest.raises(ConfigError, match="history.max_token"):
        Agent.from_config({"thinker": {"backend": "scripted"}, "history": {"store": redis_server.url, "max_token": 5}})


# --------------------------------------------------------------------------- how the agent calls a store


class ThreadNotingHistory:
    """A sync store that notes which thread each call ran on."""

    def __init__(self):
        self.threads: list[int] = []
        self.inner = InMemoryHistory()

    def load(self, session_id):
        self.threads.append(threading.get_ident())
        return self.inner.load(session_id)

    def save_turn(self, session_id, messages, *, interrupted=False):
        self.threads.append(threading.get_ident())
        self.inner.save_turn(session_id, messages, interrupted=interrupted)


async def test_a_sync_store_is_called_off_the_event_loop():
    h = ThreadNotingHistory()
    await Agent(thinker=counting_thinker(), history=h).session("s").aask("hi")
    assert len(h.threads) == 2 and threading.get_ident() not in h.threads


async def test_a_store_that_fails_on_load_gives_a_recoverable_error_and_the_turn_goes_on():
    class Broken(InMemoryHistory):
        async def aload(self, session_id):
            raise HistoryUnavailable("the store is on fire")

    r = await Agent(thinker=counting_thinker(), history=Broken()).session("s").aask("hi")
    assert r.reason == "completed" and r.text == "turn 1: hi."
    assert r.errors[0].stage == "history" and "the store is on fire" in r.errors[0].message


def test_an_object_that_is_no_history_is_refused_with_what_to_give():
    with pytest.raises(Exception, match="neither load/save_turn nor aload/asave_turn"):
        Agent(thinker=counting_thinker(), history=object())


# --------------------------------------------------------------------------- replicas


def _server(history: RedisHistory, **cfg) -> AgentServer:
    agent = Agent(thinker=counting_thinker(), talker=RecordingTalker(), history=history)
    cfg.setdefault("shutdown_grace", 0.5)
    return AgentServer(agent, ServerConfig(**cfg), vad=EnergyVAD())


async def _live_turn(ws, text: str) -> dict:
    await ws.send(json.dumps({"type": "text", "text": text}))
    while True:
        raw = await asyncio.wait_for(ws.recv(), 10)
        if isinstance(raw, str) and json.loads(raw)["type"] == "turn_end":
            return json.loads(raw)


async def test_http_turns_of_one_session_spread_over_two_replicas_see_the_whole_conversation(redis_server):
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    a, b = (_server(RedisHistory(redis_server.url, prefix=prefix)) for _ in range(2))
    async with a.running() as url_a, b.running() as url_b, httpx.AsyncClient(timeout=10) as http:
        texts = []
        for i in range(6):
            r = await http.post(f"{(url_a, url_b)[i % 2]}/v1/turn", json={"text": f"q{i}", "session_id": "eve"})
            texts.append(r.json()["text"])
    assert texts == [f"turn {i + 1}: q{i}." for i in range(6)]


async def test_a_live_session_resumes_on_another_replica_with_its_session_id(redis_server):
    prefix = f"test-{uuid.uuid4().hex[:8]}:"
    b = _server(RedisHistory(redis_server.url, prefix=prefix))
    async with b.running() as url_b:
        a = _server(RedisHistory(redis_server.url, prefix=prefix))
        async with a.running() as url_a:
            ws = await connect(url_a.replace("http", "ws") + "/v1/live?session_id=frank")
            ready = json.loads(await ws.recv())
            assert ready["session_id"] == "frank"
            assert (await _live_turn(ws, "hello"))["text"] == "turn 1: hello."
        # Replica A is gone (its socket was closed with 1001); the client goes to B.
        async with connect(url_b.replace("http", "ws") + "/v1/live?session_id=frank") as ws2:
            assert json.loads(await ws2.recv())["session_id"] == "frank"
            assert (await _live_turn(ws2, "again"))["text"] == "turn 2: again."
            # The same session cannot be live twice on one replica.
            async with connect(url_b.replace("http", "ws") + "/v1/live?session_id=frank") as dup:
                err = json.loads(await dup.recv())
        await ws.close()
    assert err["code"] == "session_busy"


async def test_a_draining_replica_answers_health_with_503_so_the_balancer_stops_sending(redis_server):
    server = _server(store(redis_server))
    async with server.running() as url, httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/health")).status_code == 200
        server.draining = True  # what SIGTERM starts (AgentServer.drain)
        r = await http.get(f"{url}/health")
        turn = await http.post(f"{url}/v1/turn", json={"text": "hi"})
        server.draining = False
    assert r.status_code == 503 and r.json()["status"] == "draining"
    assert turn.status_code == 503 and turn.json()["error"]["code"] == "shutting_down"
