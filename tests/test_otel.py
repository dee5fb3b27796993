"""OpenTelemetry: a turn is one span tree (turn -> ASR, Thinker rounds -> tool calls and
middleware changes, synthesis per utterance), its texts only as ``keep_originals`` allows;
a client's ``traceparent`` reaches the OpenAI-compatible Thinker server the agent calls;
nothing of OpenTelemetry runs when it is not installed or not configured.

The spans are read with the SDK's in-memory exporter; the agent server and the Thinker
server are real uvicorn servers on loopback.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import sys
import threading
from typing import ClassVar

import httpx
import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from omni_agent.middleware.pii import PIIRedactor
from omni_agent.tools import tool
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from omni_agent import otel
from omni_agent.agent import Agent
from omni_agent.errors import ConfigError
from omni_agent.events import AudioPart, UserTurn
from omni_agent.server.agent_server import AgentServer
from omni_agent.server.thinker_server import create_app
from omni_agent.testing import RecordingTalker, ScriptedThinker
from omni_agent.thinkers.openai import OpenAIThinker

PHONE = "555-0199"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@tool
def find_number(name: str) -> str:
    """Look up someone's phone number."""
    return f"{name}: {PHONE}"


class ScriptedEars:
    """Speech recognition test double: the audio part is real PCM, the words are scripted."""

    def __init__(self, text: str):
        self.text = text

    async def transcribe(self, part: AudioPart) -> str:
        await asyncio.sleep(0.01)  # a measurable stage
        return self.text


def one_second_of_speech_like_audio() -> AudioPart:
    t = np.arange(16000) / 16000
    pcm = (0.3 * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()
    return AudioPart(pcm=pcm, sample_rate=16000, mime="audio/L16")


@pytest.fixture
def spans():
    """Route the agent's spans to an in-memory exporter (a user's own TracerProvider)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.configure(tracer_provider=provider)
    yield exporter
    otel.reset()
    provider.shutdown()


def tool_turn_agent(keep_originals: bool) -> Agent:
    thinker = ScriptedThinker([
        [{"tool_call": {"id": "call_1", "name": "find_number", "arguments": {"name": "Ann"}}}],
        f"Ann's number is {PHONE}. Anything else?",
    ], accepts=["text"])
    return Agent(thinker=thinker, talker=RecordingTalker(), tools=[find_number],
                 middleware=[PIIRedactor()], ears=ScriptedEars("what is Ann's number"),
                 keep_originals=keep_originals)


async def run_tool_turn(keep_originals: bool):
    agent = tool_turn_agent(keep_originals)
    result = await agent.session().aask(UserTurn(parts=[one_second_of_speech_like_audio()]))
    assert PHONE not in result.spoken and "[phone number]" in result.spoken
    return result


def by_name(finished) -> dict[str, list]:
    out: dict[str, list] = {}
    for s in finished:
        out.setdefault(s.name, []).append(s)
    return out


def texts_of(span) -> list[str]:
    """Every string a span carries: its name, attribute values, event attributes."""
    out = [span.name]

    def add(v):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            for x in v:
                add(x)

    for v in span.attributes.values():
        add(v)
    for ev in span.events:
        out.append(ev.name)
        for v in (ev.attributes or {}).values():
            add(v)
    return out


# ---------------------------------------------------------------------------- the span tree


async def test_a_tool_turn_is_one_span_tree_with_stages_under_the_turn(spans):
    await run_tool_turn(keep_originals=True)
    finished = spans.get_finished_spans()
    names = by_name(finished)
    (turn,) = names["turn"]
    assert turn.parent is None
    assert {s.context.trace_id for s in finished} == {turn.context.trace_id}
    (asr,) = names["asr"]
    rounds = sorted(names["thinker.round"], key=lambda s: s.attributes["omni_agent.round"])
    (tool_span,) = names["execute_tool find_number"]
    synthesis = sorted(names["synthesis"], key=lambda s: s.attributes["omni_agent.utterance.index"])
    pii = names["middleware pii"]

    turn_id = turn.context.span_id
    assert asr.parent.span_id == turn_id
    assert [r.parent.span_id for r in rounds] == [turn_id, turn_id]
    assert tool_span.parent.span_id == rounds[0].context.span_id  # the round that asked for it
    assert all(p.parent.span_id == rounds[1].context.span_id for p in pii)  # where it happened
    assert len(synthesis) == 2 and all(s.parent.span_id == turn_id for s in synthesis)
    # the stages sit inside the turn, in the order they ran
    assert turn.start_time <= asr.start_time <= asr.end_time <= rounds[0].start_time
    assert rounds[0].end_time <= tool_span.start_time <= tool_span.end_time <= rounds[1].start_time
    assert synthesis[-1].end_time <= turn.end_time


async def test_the_spans_carry_the_traces_facts(spans):
    result = await run_tool_turn(keep_originals=True)
    names = by_name(spans.get_finished_spans())
    (turn,) = names["turn"]
    a = turn.attributes
    assert a["omni_agent.session.id"] == result.trace.session_id and a["omni_agent.turn.id"] == 1
    assert a["omni_agent.thinker"] == "scripted" and a["omni_agent.talker"] == "recording"
    assert a["omni_agent.turn.tool_calls"] == 1 and a["omni_agent.turn.rounds"] == 2
    assert a["omni_agent.turn.spoken"] == result.spoken
    assert a["omni_agent.timing.talker_first_audio_s"] > 0
    (asr,) = names["asr"]
    assert asr.attributes["omni_agent.asr.transcript"] == "what is Ann's number"
    assert asr.attributes["omni_agent.asr.audio_s"] == 1.0
    assert (asr.end_time - asr.start_time) / 1e9 >= 0.01
    rounds = sorted(names["thinker.round"], key=lambda s: s.attributes["omni_agent.round"])
    assert [r.attributes["gen_ai.response.finish_reasons"] for r in rounds] == [("tool_calls",), ("stop",)]
    (tool_span,) = names["execute_tool find_number"]
    t = tool_span.attributes
    assert (t["gen_ai.tool.name"], t["gen_ai.tool.call.id"], t["omni_agent.tool.status"]) == (
        "find_number", "call_1", "ok")
    assert t["omni_agent.tool.arguments"] == '{"name": "Ann"}'
    rewrite = next(s for s in names["middleware pii"]
                   if s.attributes["omni_agent.middleware.point"] == "utterance"
                   and s.attributes["omni_agent.middleware.action"] == "rewrite")
    assert PHONE in rewrite.attributes["omni_agent.middleware.before"]  # keep_originals: kept
    assert "[phone number]" in rewrite.attributes["omni_agent.middleware.after"]
    spoken = [s.attributes["omni_agent.utterance.spoken"] for s in names["synthesis"]]
    assert any("[phone number]" in s for s in spoken)
    assert all(s.attributes["omni_agent.utterance.status"] == "spoken" for s in names["synthesis"])


async def test_without_keep_originals_the_original_text_is_in_no_span(spans):
    await run_tool_turn(keep_originals=False)
    finished = spans.get_finished_spans()
    assert {"turn", "asr", "thinker.round", "execute_tool find_number", "middleware pii",
            "synthesis"} <= {s.name for s in finished}
    for s in finished:
        for text in texts_of(s):
            assert PHONE not in text and "0199" not in text, (s.name, text)
    # the facts are still there: who changed what, and what was said instead
    rewrite = next(s for s in finished if s.name == "middleware pii"
                   and s.attributes["omni_agent.middleware.action"] == "rewrite")
    assert "omni_agent.middleware.before" not in rewrite.attributes
    assert "[phone number]" in rewrite.attributes["omni_agent.middleware.after"]
    (turn,) = [s for s in finished if s.name == "turn"]
    assert "omni_agent.turn.input" not in turn.attributes  # the user's words are originals too


async def test_a_failed_tool_marks_its_span_as_an_error(spans):
    @tool
    def broken(x: int) -> str:
        """Always fails."""
        raise RuntimeError("down")

    thinker = ScriptedThinker([[{"tool_call": {"name": "broken", "arguments": {"x": 1}}}], "Sorry."])
    await Agent(thinker=thinker, tools=[broken]).session().aask("go")
    (span,) = [s for s in spans.get_finished_spans() if s.name == "execute_tool broken"]
    assert span.status.status_code.name == "ERROR"
    assert span.attributes["omni_agent.tool.status"] == "error"


# ---------------------------------------------------------------------------- traceparent


class HeaderRecorder:
    """A tiny ASGI wrapper that keeps the headers of every HTTP request to ``app``."""

    def __init__(self, app):
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            self.seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "the loopback Thinker server did not start"
    return server, task


async def test_a_clients_traceparent_reaches_the_thinker_server_with_the_same_trace_id(spans):
    recorder = HeaderRecorder(create_app(ScriptedThinker("Hello there."), model_name="scripted"))
    port = free_port()
    server, task = await serve(recorder, port)
    try:
        thinker = OpenAIThinker(f"http://127.0.0.1:{port}/v1", model="scripted")
        agent_server = AgentServer(Agent(thinker=thinker, talker=RecordingTalker()))
        async with agent_server.running() as url, httpx.AsyncClient(base_url=url) as c:
            r = await c.post("/v1/turn", json={"text": "hi"},
                             headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
        assert r.status_code == 200, r.text
        assert r.json()["text"] == "Hello there."
        await thinker.aclose()
    finally:
        server.should_exit = True
        await task
    completions = [h for h in recorder.seen if "traceparent" in h]
    assert completions, recorder.seen
    _, trace_id, parent_id, _ = completions[-1]["traceparent"].split("-")
    assert trace_id == CLIENT_TRACE
    (turn,) = [s for s in spans.get_finished_spans() if s.name == "turn"]
    assert format(turn.context.trace_id, "032x") == CLIENT_TRACE
    assert format(turn.parent.span_id, "016x") == CLIENT_SPAN  # the client's span is its parent
    assert parent_id == format(turn.context.span_id, "016x")  # the Thinker call is in the turn


async def test_a_traceparent_on_the_live_websocket_is_the_parent_of_its_turns(spans):
    import json

    from websockets.asyncio.client import connect

    from omni_agent.live import EnergyVAD

    agent = Agent(thinker=ScriptedThinker("Hi."), talker=RecordingTalker())
    server = AgentServer(agent, vad=EnergyVAD())
    headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
    async with server.running() as url, connect(url.replace("http://", "ws://") + "/v1/live",
                                                additional_headers=headers) as ws:
        kinds = []
        while not kinds or kinds[-1] != "turn_end":
            raw = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(raw, str):
                kinds.append(json.loads(raw)["type"])
                if kinds[-1] == "ready":
                    await ws.send(json.dumps({"type": "text", "text": "hello"}))
    (turn,) = [s for s in spans.get_finished_spans() if s.name == "turn"]
    assert format(turn.context.trace_id, "032x") == CLIENT_TRACE
    assert format(turn.parent.span_id, "016x") == CLIENT_SPAN


# ---------------------------------------------------------------------------- off: no cost


async def test_without_opentelemetry_installed_a_turn_does_no_span_work(monkeypatch):
    for name in [n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")]:
        monkeypatch.setitem(sys.modules, name, None)  # "import opentelemetry..." now fails
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    otel.reset()

    def no_span_work(*a, **kw):
        raise AssertionError("OpenTelemetry work ran although it is not installed")

    monkeypatch.setattr(otel, "_write", no_span_work)
    monkeypatch.setattr(otel, "start_soon_in", no_span_work)
    assert otel.start_turn is not None and not otel.enabled()
    result = await tool_turn_agent(keep_originals=True).session().aask("what is Ann's number")
    assert "[phone number]" in result.spoken
    with pytest.raises(ConfigError, match=r"omni-agent\[otel\]"):
        otel.configure()
    headers: dict[str, str] = {}
    otel.inject(headers)
    assert headers == {}


async def test_installed_but_not_configured_nothing_is_traced_or_propagated(monkeypatch):
    from opentelemetry import trace as api
    from opentelemetry.util._once import Once

    # As in a fresh process: no global TracerProvider (another library in this test run may
    # have set one); the API's own globals, put back after the test.
    monkeypatch.setattr(api, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(api, "_TRACER_PROVIDER_SET_ONCE", Once())
    assert isinstance(api.get_tracer_provider(), api.ProxyTracerProvider)
    otel.reset()
    calls = []
    monkeypatch.setattr(otel, "_write", lambda *a, **kw: calls.append(a))
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        body = (b'data: {"choices":[{"index":0,"delta":{"content":"Hi."},"finish_reason":"stop"}]}\n\n'
                b"data: [DONE]\n\n")
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    thinker = OpenAIThinker("http://x/v1", model="m", transport=httpx.MockTransport(handler))
    result = await Agent(thinker=thinker).session().aask("hi")
    assert result.text == "Hi."
    assert calls == [] and "traceparent" not in seen[0]


def test_the_environment_decides_whether_the_cli_configures_tracing():
    assert otel.configure_from_env({}) is False  # nothing set: nothing imported, nothing done
    assert otel.configure_from_env({"OTEL_TRACES_EXPORTER": "none"}) is False
    assert otel.configure_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318",
                                    "OTEL_SDK_DISABLED": "true"}) is False


def test_an_unknown_exporter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin-v0")
    with pytest.raises(ConfigError, match="unknown exporter 'zipkin-v0'.*otlp, console or none"):
        otel.configure(set_global=False)
    otel.reset()


# ---------------------------------------------------------------------------- OTLP export


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


async def test_configure_exports_spans_by_otlp_http_to_the_endpoint_in_the_environment(monkeypatch):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    collector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    _Collector.received = []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{collector.server_port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "otel-test-agent")
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    try:
        provider = otel.configure(set_global=False)
        await Agent(thinker=ScriptedThinker("Hello.")).session().aask("hi")
        assert await asyncio.to_thread(provider.force_flush, 10_000)
        provider.shutdown()
    finally:
        otel.reset()
        collector.shutdown()
    paths = [p for p, _ in _Collector.received]
    assert paths and set(paths) == {"/v1/traces"}
    body = b"".join(b for _, b in _Collector.received)
    assert b"otel-test-agent" in body and b"thinker.round" in body and b"turn" in body
