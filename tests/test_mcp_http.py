"""MCP tools over streamable HTTP, against a server built with the SDK in this module
(``MCPServer``, run by uvicorn in a child process on a free loopback port that the test
owns, so the test can kill it mid-call and start it again)."""

import socket
import subprocess
import sys
import textwrap
import time

import anyio
import httpx
import pytest

pytest.importorskip("mcp")

from omni_agent.tools.mcp import MCPSource

from omni_agent.agent import Agent
from omni_agent.testing import ScriptedThinker

SERVER = textwrap.dedent('''
    import sys
    import anyio
    import uvicorn
    import base64
    from mcp.server.mcpserver import Context, Image, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer("test-tools")
    PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")

    @server.tool(description="Add two whole numbers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="A tool that always fails.")
    def broken() -> str:
        raise ToolError("the sky fell")

    @server.tool(description="Wait, then say done.")
    async def slow(seconds: float) -> str:
        await anyio.sleep(seconds)
        return "done"

    @server.tool(description="Add the echo tool and announce the change.")
    async def grow(ctx: Context) -> str:
        def echo(text: str) -> str:
            return text
        server.add_tool(echo, name="echo", description="Say the text back.")
        await ctx.notify_tools_changed()
        return "grown"

    @server.tool(description="A tiny picture.")
    def picture() -> Image:
        return Image(data=PNG, format="png")

    @server.tool(description="A tool the allow-list leaves out.")
    def hidden() -> str:
        return "not exposed"

    uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning")
''')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """The SDK server in a child process; ``start``/``kill`` as a test needs."""

    def __init__(self, path):
        self.path, self.port, self.proc = path, free_port(), None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self):
        self.proc = subprocess.Popen([sys.executable, str(self.path), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("the test MCP server did not start")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server(tmp_path):
    path = tmp_path / "mcp_test_server.py"
    path.write_text(SERVER)
    s = LoopbackServer(path)
    s.start()
    yield s
    s.kill()


def call(name, **arguments):
    return [{"tool_call": {"name": name, "arguments": arguments}}]


def source(server, **kw):
    kw.setdefault("tools", ["add", "broken", "slow", "grow", "echo", "picture"])
    return MCPSource.http("test", server.url, **kw)


async def test_the_servers_allowed_tools_are_listed_with_their_schemas(server):
    src = source(server)
    async with Agent(thinker=ScriptedThinker("ok"), tools=[src]) as agent:
        assert sorted(agent.tools.names) == ["add", "broken", "grow", "picture", "slow"]  # not "hidden"
        add = agent.tools["add"]
        assert add.description == "Add two whole numbers."
        assert add.parameters["required"] == ["a", "b"]


async def test_a_call_returns_the_tools_result_to_the_thinker(server):
    thinker = ScriptedThinker([call("add", a=2, b=40), lambda req: f"It is {req.messages[-1].content}."])
    async with Agent(thinker=thinker, tools=[source(server)]) as agent:
        r = await agent.session().aask("What is 2 plus 40?")
    assert r.tool_calls[0]["status"] == "ok" and r.tool_calls[0]["result"] == "42"
    assert r.text == "It is 42."


async def test_an_image_result_is_shown_to_a_thinker_that_sees_and_summarised_for_one_that_does_not(server):
    from omni_agent.events import ImagePart

    seeing = ScriptedThinker([call("picture"), "A tiny picture."], accepts=["text", "image"])
    async with Agent(thinker=seeing, tools=[source(server)]) as agent:
        await agent.session().aask("Show me the picture")
    follow = seeing.requests[-1].messages
    tool_msg = next(m for m in follow if m.role == "tool")
    assert "[image: image/png" in tool_msg.content and "shown below" in tool_msg.content
    images = [p for p in follow[-1].content if isinstance(p, ImagePart)] if follow[-1].role == "user" else []
    assert len(images) == 1 and images[0].data.startswith(b"\x89PNG") and images[0].mime == "image/png"

    blind = ScriptedThinker([call("picture"), "There was a picture."], accepts=["text"])
    async with Agent(thinker=blind, tools=[source(server)]) as agent:
        await agent.session().aask("Show me the picture")
    follow = blind.requests[-1].messages
    assert follow[-1].role == "tool" and "[image: image/png" in follow[-1].content
    assert "shown below" not in follow[-1].content
    assert not any(isinstance(p, ImagePart) for m in follow if not isinstance(m.content, str)
                   for p in m.content)


async def test_an_error_result_goes_back_to_the_thinker_as_an_error(server):
    thinker = ScriptedThinker([call("broken"), "It failed."])
    async with Agent(thinker=thinker, tools=[source(server)]) as agent:
        r = await agent.session().aask("Break it")
    [c] = r.tool_calls
    assert c["status"] == "error" and c["is_error"] and "the sky fell" in c["result"]
    assert r.text == "It failed."


async def test_arguments_are_checked_against_the_servers_schema_before_the_call(server):
    thinker = ScriptedThinker([call("add", a="two", b=1), "Bad."])
    async with Agent(thinker=thinker, tools=[source(server)]) as agent:
        r = await agent.session().aask("add")
    assert r.tool_calls[0]["status"] == "invalid"
    assert "'two' is not of type 'integer'" in r.tool_calls[0]["result"]


async def test_a_slow_tool_hits_its_timeout_and_the_turn_goes_on(server):
    thinker = ScriptedThinker([call("slow", seconds=10), "Too slow."])
    async with Agent(thinker=thinker, tools=[source(server, timeout=0.5)]) as agent:
        t0 = time.monotonic()
        r = await agent.session().aask("wait")
        assert time.monotonic() - t0 < 5
        assert r.tool_calls[0]["status"] == "timeout"
        assert r.text == "Too slow."
        # The session survives a cancelled call.
        thinker.replies, thinker._i = [call("add", a=1, b=1), "Two."], 0
        assert (await agent.session().aask("1+1")).tool_calls[0]["result"] == "2"


async def test_a_tool_list_change_is_picked_up(server):
    src = source(server)
    thinker = ScriptedThinker([call("grow"), "Grown."])
    async with Agent(thinker=thinker, tools=[src]) as agent:
        assert "echo" not in agent.tools
        await agent.session().aask("grow")
        with anyio.fail_after(10):
            while "echo" not in agent.tools:
                await anyio.sleep(0.05)
        assert agent.tools["echo"].description == "Say the text back."


async def test_a_server_killed_mid_call_is_a_clear_error_and_the_next_turn_works(server):
    src = source(server, restart_backoff=0.2)
    thinker = ScriptedThinker([call("slow", seconds=5), "It broke."])
    async with Agent(thinker=thinker, tools=[src]) as agent:
        session = agent.session()

        async def kill_soon():
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(server.kill)

        async with anyio.create_task_group() as tg:
            tg.start_soon(kill_soon)
            r = await session.aask("wait")
        [c] = r.tool_calls
        assert c["status"] == "error"
        assert "stopped during the call to 'slow'" in c["result"] and server.url in c["result"]
        assert r.text == "It broke."
        await anyio.to_thread.run_sync(server.start)
        thinker.replies, thinker._i = [call("add", a=3, b=4), "Seven."], 0
        with anyio.fail_after(30):
            while True:  # the owner reconnects with backoff; a turn waits for one attempt
                r2 = await session.aask("3+4")
                if r2.tool_calls[0]["status"] == "ok":
                    break
                thinker._i = 0
                await anyio.sleep(0.3)
        assert r2.tool_calls[0]["result"] == "7" and r2.text == "Seven."


async def test_a_token_is_sent_as_a_bearer_header(server, monkeypatch):
    monkeypatch.setenv("TEST_MCP_TOKEN", "s3cret")
    src = source(server, token_env="TEST_MCP_TOKEN")
    assert src.spec.http_headers() == {"Authorization": "Bearer s3cret"}
    async with Agent(thinker=ScriptedThinker("ok"), tools=[src]):
        assert src.status == "ready"  # this server ignores the header; it was accepted
