"""OpenAIThinker against llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``).

Two layers:

* its quirks, replayed by a small Starlette app of our own on loopback from streams
  recorded off the real server (``fixtures/llamacpp_*.sse``): a tool name repeated whole in
  every delta, ``finish_reason: "length"``, logprobs, no usage, and a 200 whose body simply
  stops (what it sends when a streamed tool choice fails server-side);
* the real server, started by the tests on loopback with the embedded SmolLM2 GGUF and one
  thread (slow; needs the ``llama`` extra and the server's own dependencies).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from omni_agent.agent import Agent
from omni_agent.errors import ThinkerError
from omni_agent.events import Finish, TextDelta, ToolCall
from omni_agent.server.background import serve_in_background
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest
from omni_agent.thinkers.openai import OpenAIThinker

FIXTURES = Path(__file__).parent / "fixtures"

# A schema llama.cpp can turn into a grammar; the length limit keeps the call short.
CALC = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 12}},
                   "required": ["expression"]}}}


def ask(text: str, **kw) -> ThinkerRequest:
    return ThinkerRequest([Message("user", text)], **kw)


async def collect(thinker, request) -> list:
    return [ev async for ev in thinker.stream(request)]


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# ---------------------------------------------------------------------------- replayed quirks

FIRST_TWO_CHUNKS = (FIXTURES / "llamacpp_length_logprobs.sse").read_bytes().split(b"\n\n")[1:3]

REPLIES: dict[str, bytes] = {
    "tool": (FIXTURES / "llamacpp_tool_call.sse").read_bytes(),
    "length": (FIXTURES / "llamacpp_length_logprobs.sse").read_bytes(),
    # What llama.cpp sends when a streamed tool choice fails after its 200: nothing more.
    "failed": b"",
    "failed after text": b"\n\n".join(FIRST_TWO_CHUNKS) + b"\n\n",
}


async def replay(request: Request) -> StreamingResponse:
    body = await request.json()
    key = body["messages"][-1]["content"]

    async def stream():
        for piece in REPLIES[key].split(b"\n\n"):
            if piece.strip():
                yield piece + b"\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def replay_url():
    app = Starlette(routes=[Route("/v1/chat/completions", replay, methods=["POST"])])
    with serve_in_background(app) as url:
        yield url + "/v1"


async def test_a_tool_name_repeated_in_every_delta_is_kept_once(replay_url):
    thinker = OpenAIThinker(replay_url, model="m")
    events = await collect(thinker, ask("tool", tools=[CALC], tool_choice="calculator"))
    await thinker.aclose()
    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert call.name == "calculator"
    assert json.loads(call.arguments) == {"expression": "17 * 23 = 40"}
    assert call.id.startswith("call__0_calculator_")
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"


async def test_a_length_finish_reaches_the_finish_event_without_usage(replay_url):
    thinker = OpenAIThinker(replay_url, model="m")
    events = await collect(thinker, ask("length", logprobs=2))
    await thinker.aclose()
    assert text_of(events)
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "length"
    assert finish.prompt_tokens is None and finish.completion_tokens is None  # it sent no usage
    assert thinker.last_usage is None


async def test_logprobs_arrive_on_each_text_delta(replay_url):
    thinker = OpenAIThinker(replay_url, model="m")
    deltas = [e for e in await collect(thinker, ask("length", logprobs=2)) if isinstance(e, TextDelta)]
    await thinker.aclose()
    assert deltas and all(d.logprobs for d in deltas)
    for d in deltas:
        [entry] = d.logprobs
        assert entry["token"] == d.text and entry["logprob"] <= 0
        assert {t["token"] for t in entry["top_logprobs"]}


def test_an_answer_cut_by_length_ends_the_turn_with_max_tokens(replay_url):
    agent = Agent(thinker=OpenAIThinker(replay_url, model="m"))
    r = agent.ask("length")
    assert r.reason == "max_tokens" and r.text
    assert r.trace.rounds[0]["finish_reason"] == "length"


async def test_a_stream_that_stops_without_done_or_finish_reason_is_a_thinker_error(replay_url):
    thinker = OpenAIThinker(replay_url, model="m")
    with pytest.raises(ThinkerError, match=r"neither a finish_reason nor \[DONE\].*server's log"):
        await collect(thinker, ask("failed", tools=[CALC], tool_choice="calculator"))
    await thinker.aclose()


async def test_text_already_streamed_comes_before_the_error_of_a_stopped_stream(replay_url):
    thinker = OpenAIThinker(replay_url, model="m")
    got = []
    with pytest.raises(ThinkerError, match="ended after 2 chunks"):
        async for ev in thinker.stream(ask("failed after text")):
            got.append(ev)
    await thinker.aclose()
    assert [type(e) for e in got] == [TextDelta, TextDelta]  # and no Finish: it did not finish


def test_a_turn_whose_stream_stops_is_an_error_not_an_empty_success(replay_url):
    agent = Agent(thinker=OpenAIThinker(replay_url, model="m"))
    r = agent.ask("failed")
    assert r.reason == "error"
    assert any("neither a finish_reason" in e["message"] for e in r.trace.errors)


# ---------------------------------------------------------------------------- the real llama.cpp server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    pytest.importorskip("llama_cpp", reason="needs the llama extra (llama-cpp-python)")
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server] (fastapi, ...)")
    from omni_agent.thinkers.transformers import embedded_gguf_path

    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
             "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "2048",
             "--verbose", "False"],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start in 120 s:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


SHORT = GenerationSettings(max_tokens=30)


@pytest.mark.slow
async def test_real_llama_cpp_server_streams_text_and_a_finish(llama_server):
    thinker = OpenAIThinker(llama_server)  # the model id comes from its /v1/models
    events = await collect(thinker, ask("What is the capital of France?", settings=SHORT))
    await thinker.aclose()
    assert len([e for e in events if isinstance(e, TextDelta)]) > 1 and text_of(events).strip()
    assert isinstance(events[-1], Finish) and events[-1].reason in ("stop", "length")
    assert thinker.model.endswith(".gguf")


@pytest.mark.slow
def test_real_llama_cpp_server_cut_by_max_tokens_ends_the_turn_with_max_tokens(llama_server):
    agent = Agent(thinker=OpenAIThinker(llama_server), settings=GenerationSettings(max_tokens=3))
    r = agent.ask("Tell me a long story about a dragon.")
    agent.close()
    assert r.reason == "max_tokens" and r.text
    assert r.trace.rounds[0]["finish_reason"] == "length"


@pytest.mark.slow
async def test_real_llama_cpp_server_calls_the_named_tool_once_by_its_name(llama_server):
    thinker = OpenAIThinker(llama_server)
    events = await collect(thinker, ask("What is 17 times 23?", tools=[CALC], tool_choice="calculator",
                                        settings=GenerationSettings(max_tokens=40)))
    await thinker.aclose()
    [call] = [e for e in events if isinstance(e, ToolCall)]
    assert call.name == "calculator"  # the server repeats it in every delta
    assert isinstance(json.loads(call.arguments)["expression"], str)
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"


@pytest.mark.slow
async def test_real_llama_cpp_server_failing_a_streamed_tool_choice_is_a_thinker_error(llama_server):
    thinker = OpenAIThinker(llama_server)
    # A tool choice the server cannot do: it answers 200, raises, and closes the stream.
    with pytest.raises(ThinkerError, match=r"neither a finish_reason nor \[DONE\]"):
        await collect(thinker, ask("What is 2 plus 2?", tools=[CALC], tool_choice="weather", settings=SHORT))
    await thinker.aclose()


@pytest.mark.slow
async def test_real_llama_cpp_server_returns_logprobs_on_the_text(llama_server):
    thinker = OpenAIThinker(llama_server)
    deltas = [e for e in await collect(thinker, ask("Say hello.", logprobs=2, settings=SHORT))
              if isinstance(e, TextDelta)]
    await thinker.aclose()
    assert deltas and all(d.logprobs for d in deltas)
    assert all(lp["token"] for d in deltas for lp in d.logprobs)
    assert all(len(lp["top_logprobs"]) >= 2 for d in deltas for lp in d.logprobs)


PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}}}


@pytest.mark.slow
async def test_real_llama_cpp_server_follows_a_schema_in_its_own_response_format(llama_server):
    # llama_cpp.server takes a schema as {"type": "json_object", "schema": ...}.
    thinker = OpenAIThinker(llama_server)
    events = await collect(thinker, ask("Describe a person as JSON.", settings=GenerationSettings(max_tokens=60),
                                        response_format={"type": "json_object", "schema": PERSON}))
    await thinker.aclose()
    person = json.loads(text_of(events))
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


@pytest.mark.slow
async def test_real_llama_cpp_server_refusing_openais_json_schema_form_says_why(llama_server):
    thinker = OpenAIThinker(llama_server)
    with pytest.raises(ThinkerError, match=r"(?s)answered 500: .*'text' or 'json_object'"):
        await collect(thinker, ask("Describe a person as JSON.", settings=SHORT, response_format={
            "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}))
    await thinker.aclose()
