"""No web page talks to a local agent: the agent server checks Host (DNS rebinding) and
Origin (cross-site WebSocket and POST) by default, refuses cross-site "simple" posts, sends
security headers with its page, keeps tokens out of its logs and cuts off slow-header
clients. Real uvicorn on loopback, real websockets and httpx clients."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from time import monotonic

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from omni_agent import Agent
from omni_agent.live import EnergyVAD
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.testing import RecordingTalker, ScriptedThinker


def server(**cfg) -> tuple[AgentServer, ScriptedThinker]:
    thinker = ScriptedThinker("Hello.", accepts=["text"])
    cfg.setdefault("shutdown_grace", 0.2)
    return AgentServer(Agent(thinker=thinker, talker=RecordingTalker()), ServerConfig(**cfg),
                       vad=EnergyVAD()), thinker


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1/live"


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost.evil.example"])
async def test_a_websocket_from_another_origin_is_refused(origin):
    srv, _ = server()
    async with srv.running() as url:
        with pytest.raises(InvalidStatus) as e:
            await connect(ws_url(url), additional_headers={"Origin": origin})
        assert e.value.response.status_code == 403
        assert not srv._conns


async def test_a_websocket_from_the_servers_own_page_or_a_non_browser_client_is_accepted():
    srv, _ = server()
    async with srv.running() as url:
        for headers in ({"Origin": url}, {"Origin": "http://localhost:3000"}, {}):
            async with connect(ws_url(url), additional_headers=headers) as ws:
                assert json.loads(await ws.recv())["type"] == "ready"


async def test_a_configured_origin_may_connect():
    srv, _ = server(allowed_origins=["https://app.example.com"])
    async with srv.running() as url:
        async with connect(ws_url(url), additional_headers={"Origin": "https://app.example.com"}) as ws:
            assert json.loads(await ws.recv())["type"] == "ready"


async def test_a_rebound_host_name_is_refused_on_http_and_websocket():
    srv, thinker = server()
    async with srv.running() as url, httpx.AsyncClient(base_url=url) as h:
        r = await h.post("/v1/turn", json={"text": "hi"}, headers={"Host": "evil.example"})
        assert r.status_code == 400 and "host" in r.json()["error"]["message"].lower()
        # The WebSocket handshake, written by hand: a client library sets Host itself.
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v1/live HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert b" 101 " not in status and b" 4" in status, status
        assert (await h.get("/health")).status_code == 200  # by its own address: fine
    assert thinker.requests == []


async def test_a_cross_site_simple_post_does_not_run_a_turn():
    srv, thinker = server()
    async with srv.running() as url, httpx.AsyncClient(base_url=url) as h:
        r1 = await h.post("/v1/turn", content='{"text": "hi"}',
                          headers={"Content-Type": "text/plain", "Origin": "https://evil.example"})
        r2 = await h.post("/v1/turn", content='{"text": "hi"}', headers={"Content-Type": "text/plain"})
    assert r1.status_code == 403 and r2.status_code == 415
    assert thinker.requests == []


async def test_the_page_has_security_headers():
    srv, _ = server()
    async with srv.running() as url, httpx.AsyncClient(base_url=url) as h:
        r = await h.get("/")
    assert r.status_code == 200
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "default-src 'self'" in r.headers["content-security-policy"]


class Capture(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


async def test_the_token_never_appears_in_the_access_log():
    srv, _ = server(token="s3cret-token")
    cap = Capture()
    async with srv.running(log_level="info") as url:
        for name in ("uvicorn.access", "uvicorn.error"):  # uvicorn's loggers do not propagate
            logging.getLogger(name).addHandler(cap)
        try:
            async with connect(ws_url(url) + "?token=s3cret-token") as ws:
                await ws.recv()
            async with httpx.AsyncClient(base_url=url) as h:
                await h.get("/metrics?token=s3cret-token")
        finally:
            for name in ("uvicorn.access", "uvicorn.error"):
                logging.getLogger(name).removeHandler(cap)
    assert any("/metrics" in line for line in cap.lines), "the access log was captured"
    assert not any("s3cret-token" in line for line in cap.lines), cap.lines


async def test_slow_header_clients_are_cut_off():
    srv, _ = server(header_timeout=0.5)
    async with srv.running() as url:
        port = int(url.rsplit(":", 1)[1])
        socks = []
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            s.setblocking(False)
            socks.append(s)
        t0 = monotonic()
        closed = 0
        while closed < len(socks) and monotonic() - t0 < 5:
            await asyncio.sleep(0.1)
            closed = 0
            for s in socks:
                try:
                    data = s.recv(4096)
                    closed += 1 if data == b"" or b"408" in data else 0
                except BlockingIOError:
                    pass
                except OSError:
                    closed += 1
        for s in socks:
            s.close()
        assert closed == len(socks), f"only {closed} of {len(socks)} slow clients were cut off"
        async with httpx.AsyncClient(base_url=url) as h:
            assert (await h.get("/health")).status_code == 200
