"""A server connection owns its tasks: a live socket whose sender fails is closed with a
reason (never left accepting audio nobody answers), a client that stops reading is cut off,
an HTTP turn whose client hung up is cancelled, and every slot comes back. Real uvicorn on
loopback, the real websockets and httpx clients; scripted Thinker, recording Talker."""

from __future__ import annotations

import asyncio
import json
import socket
from time import monotonic

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from omni_agent import Agent, Middleware
from omni_agent.events import AudioChunk, ToolCall
from omni_agent.live import EnergyVAD
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.testing import RecordingTalker, ScriptedThinker


def make_server(thinker=None, talker=None, middleware=(), **cfg) -> AgentServer:
    cfg.setdefault("shutdown_grace", 0.5)
    agent = Agent(thinker=thinker or ScriptedThinker("Hello there.", accepts=["text"]),
                  talker=talker or RecordingTalker(), middleware=list(middleware))
    return AgentServer(agent, ServerConfig(**cfg), vad=EnergyVAD())


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/live"


async def wait_until(pred, timeout: float = 5.0) -> None:
    deadline = monotonic() + timeout
    while not pred():
        assert monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def next_of(ws, kind: str) -> dict:
    """The next JSON message of this type (binary audio frames are skipped)."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), 5)
        if isinstance(raw, str) and (m := json.loads(raw))["type"] == kind:
            return m


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(base_url=url) as h:
        text = (await h.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


class LoudTalker:
    """A Talker that makes a lot of audio fast: 1 MB chunks (silence), 4 per clause."""

    name = "loud"
    sample_rate = 16000

    async def speak(self, utt):
        for i in range(4):
            await asyncio.sleep(0)
            yield AudioChunk(pcm=bytes(1 << 20), sample_rate=16000, utterance_index=utt.index,
                             final=i == 3)

    async def aclose(self):
        return None


class Unsendable(Middleware):
    """A (buggy) middleware that puts a value JSON cannot encode into an event."""

    def on_event(self, event, ctx):
        if isinstance(event, ToolCall):
            return event
        return ToolCall(id="x", name="oops", arguments={1, 2})  # a set: not JSON


async def test_a_live_socket_whose_sender_fails_is_closed_with_a_reason_and_its_slot_freed():
    server = make_server(middleware=[Unsendable()])
    async with server.running() as url:
        async with connect(ws_url(url)) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(json.dumps({"type": "text", "text": "hi"}))
            t0 = monotonic()
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as e:
                closed = e
            assert monotonic() - t0 < 5
        assert closed.rcvd is not None and closed.rcvd.code == 1011
        assert "sending" in closed.rcvd.reason
        await wait_until(lambda: not server._conns)
        assert await metric(url, "omni_agent_active_sessions") == 0
        assert await metric(url, "omni_agent_active_turns") == 0


async def test_a_lone_surrogate_in_a_text_message_is_refused_clearly_and_the_session_goes_on():
    server = make_server()
    async with server.running() as url, connect(ws_url(url)) as ws:
        await ws.recv()
        await ws.send('{"type": "text", "text": "hi \\ud800 there"}')
        err = json.loads(await ws.recv())
        assert err["type"] == "error" and err["code"] == "bad_text" and "surrogate" in err["message"]
        await ws.send(json.dumps({"type": "text", "text": "hi"}))
        assert (await next_of(ws, "turn_end"))["text"] == "Hello there."


async def test_a_lone_surrogate_in_an_http_turn_is_a_400_before_any_turn_runs():
    thinker = ScriptedThinker("x")
    server = make_server(thinker=thinker)
    async with server.running() as url, httpx.AsyncClient(base_url=url) as h:
        r = await h.post("/v1/turn", content=b'{"text": "hi \\ud800"}',
                         headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_text"
    assert thinker.requests == []


async def test_deeply_nested_json_is_a_clear_400_on_http_and_an_error_on_the_socket():
    deep = "[" * 100_000 + "]" * 100_000
    server = make_server()
    async with server.running() as url:
        async with httpx.AsyncClient(base_url=url) as h:
            r = await h.post("/v1/turn", content=deep, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
        async with connect(ws_url(url), max_size=None) as ws:
            await ws.recv()
            await ws.send(deep)
            err = json.loads(await ws.recv())
            assert err["code"] == "bad_json" and "nested" in err["message"]


async def test_a_client_that_stops_reading_is_cut_off_and_its_turn_and_slot_are_freed():
    # A long reply of big audio chunks to a client that reads nothing: the server's sends
    # block on the full socket; after send_timeout it gives up on the client.
    thinker = ScriptedThinker([[f"Sentence number {i} of a long answer. " for i in range(200)]],
                              accepts=["text"])
    server = make_server(thinker=thinker, talker=LoudTalker(), send_timeout=0.5)
    async with server.running() as url:
        ws = await connect(ws_url(url), max_queue=1, max_size=None)
        await ws.recv()
        ws.transport.pause_reading()  # a client that stops reading (TCP backpressure)
        await ws.send(json.dumps({"type": "text", "text": "talk"}))
        await wait_until(lambda: not server._conns, timeout=20)
        assert await metric(url, "omni_agent_active_turns") == 0
        ws.transport.abort()
        rejected = (await httpx.AsyncClient(base_url=url).get("/metrics")).text
        assert 'omni_agent_rejected_total{reason="slow_client"} 1.0' in rejected


async def test_an_http_turn_whose_client_hangs_up_is_cancelled():
    class Forever(ScriptedThinker):
        def __init__(self):
            super().__init__([[f"word{i} " for i in range(10_000)]], delay=0.01)
            self.cancelled = asyncio.Event()

        async def stream(self, request):
            try:
                async for ev in super().stream(request):
                    yield ev
            except (asyncio.CancelledError, GeneratorExit):
                self.cancelled.set()
                raise

    thinker = Forever()
    server = make_server(thinker=thinker)
    async with server.running() as url:
        port = int(url.rsplit(":", 1)[1])
        body = b'{"text": "go on forever"}'
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /v1/turn HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await wait_until(lambda: server._http_turns == 1)
        sock.close()  # the client hangs up mid-turn
        await asyncio.wait_for(thinker.cancelled.wait(), 5)
        await wait_until(lambda: server._http_turns == 0)
        assert await metric(url, "omni_agent_active_turns") == 0


async def test_concurrent_http_turns_per_client_are_bounded_with_a_clear_429():
    thinker = ScriptedThinker([[f"w{i} " for i in range(30)]], delay=0.02)
    server = make_server(thinker=thinker, max_http_turns_per_client=2)
    async with server.running() as url, httpx.AsyncClient(base_url=url, timeout=30) as h:
        rs = await asyncio.gather(*(h.post("/v1/turn", json={"text": f"t{i}"}) for i in range(4)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 200, 429, 429]
    refused = next(r for r in rs if r.status_code == 429)
    assert refused.json()["error"]["code"] == "too_many_turns"
