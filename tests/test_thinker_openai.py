"""OpenAIThinker: against our real Thinker server on loopback, and against recorded-shape
SSE fixtures of vLLM and vLLM-Omni served through httpx.MockTransport."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from pathlib import Path

import httpx
import pytest

from omni_agent.errors import ConfigError, ThinkerError, UnsupportedInputError
from omni_agent.events import AudioPart, Finish, ImagePart, ReasoningDelta, TextDelta, TextPart, ToolCall, VideoPart
from omni_agent.server.background import serve_in_background
from omni_agent.server.thinker_server import create_app
from omni_agent.testing import ScriptedThinker
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest
from omni_agent.thinkers.openai import OpenAIThinker

FIXTURES = Path(__file__).parent / "fixtures"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(40)


def ask(text: str = "hi", **kw) -> ThinkerRequest:
    return ThinkerRequest([Message("user", text)], **kw)


async def collect(thinker, request) -> list:
    return [ev async for ev in thinker.stream(request)]


def text_of(events, cls=TextDelta) -> str:
    return "".join(e.text for e in events if isinstance(e, cls))


def sse_transport(name: str, seen: list | None = None) -> httpx.MockTransport:
    body = (FIXTURES / name).read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- fixtures (vLLM shapes)


async def test_vllm_text_stream_becomes_text_deltas_and_usage_is_kept():
    thinker = OpenAIThinker("http://vllm:8000/v1", model="Qwen/Qwen2.5-7B-Instruct",
                            transport=sse_transport("vllm_text.sse"))
    events = await collect(thinker, ask("What is the capital of France?"))
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    assert len(events) == 8
    assert text_of(events) == "The capital of France is Paris."
    assert thinker.last_usage == {"prompt_tokens": 31, "total_tokens": 39, "completion_tokens": 8}


async def test_the_last_event_is_a_finish_with_the_reason_and_token_counts():
    thinker = OpenAIThinker("http://vllm:8000/v1", model="m", transport=sse_transport("vllm_text.sse"))
    *_, last = await collect(thinker, ask())
    assert isinstance(last, Finish)
    assert (last.reason, last.prompt_tokens, last.completion_tokens) == ("stop", 31, 8)


async def test_tool_calls_end_with_a_tool_calls_finish():
    thinker = OpenAIThinker("http://vllm:8000/v1", model="m", transport=sse_transport("vllm_tool_calls.sse"))
    events = await collect(thinker, ask())
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"
    assert isinstance(events[-2], ToolCall)


async def test_response_format_and_logprobs_are_passed_to_the_server():
    seen: list[httpx.Request] = []
    thinker = OpenAIThinker("http://vllm/v1", model="m", transport=sse_transport("vllm_text.sse", seen))
    schema = {"type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}}}
    await collect(thinker, ask(response_format=schema, logprobs=3))
    await collect(thinker, ask(logprobs=0))
    await collect(thinker, ask())
    bodies = [json.loads(r.content) for r in seen]
    assert bodies[0]["response_format"] == schema
    assert (bodies[0]["logprobs"], bodies[0]["top_logprobs"]) == (True, 3)
    assert bodies[1]["logprobs"] is True and "top_logprobs" not in bodies[1]
    assert not {"response_format", "logprobs", "top_logprobs"} & set(bodies[2])


async def test_tool_call_deltas_split_across_chunks_are_assembled_into_complete_calls():
    thinker = OpenAIThinker("http://vllm:8000/v1", model="m", transport=sse_transport("vllm_tool_calls.sse"))
    events = await collect(thinker, ask("weather in Paris?"))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.id, c.name) for c in calls] == [("chatcmpl-tool-4f1e9a", "get_weather"),
                                               ("chatcmpl-tool-77c0d2", "current_time")]
    assert json.loads(calls[0].arguments) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(calls[1].arguments) == {"timezone": "Europe/Paris"}
    assert text_of(events) == ""


async def test_reasoning_content_becomes_reasoning_deltas_not_answer_text():
    thinker = OpenAIThinker("http://vllm:8000/v1", model="m", transport=sse_transport("vllm_reasoning.sse"))
    events = await collect(thinker, ask())
    assert text_of(events, ReasoningDelta) == "The user asks for a capital. Answer briefly."
    assert text_of(events) == "Paris is the capital."


async def test_vllm_omni_audio_chunks_never_leak_into_the_text():
    thinker = OpenAIThinker("http://omni:8091/v1", model="m",
                            transport=sse_transport("vllm_omni_text_audio.sse"))
    events = await collect(thinker, ask())
    assert text_of(events) == "Hello! The capital of France is Paris."
    assert "UklGR" not in text_of(events)  # base64 of "RIFF": the WAV bytes


async def test_a_subclass_receives_vllm_omni_audio_through_media_delta():
    class AudioCollector(OpenAIThinker):
        def media_delta(self, modality, delta, chunk, state):
            state.extra.setdefault("audio", []).append(base64.b64decode(delta["content"]))
            self.audio = state.extra["audio"]
            return []

    thinker = AudioCollector("http://omni:8091/v1", model="m",
                             transport=sse_transport("vllm_omni_text_audio.sse"))
    await collect(thinker, ask())
    assert len(thinker.audio) == 3
    assert all(a[:4] == b"RIFF" and a[8:12] == b"WAVE" for a in thinker.audio)


async def test_error_sent_mid_stream_raises_a_thinker_error_with_the_server_message():
    thinker = OpenAIThinker("http://vllm:8000/v1", model="m",
                            transport=sse_transport("vllm_error_midstream.sse"))
    got = []
    with pytest.raises(ThinkerError, match="longer than the maximum model length"):
        async for ev in thinker.stream(ask()):
            got.append(ev)
    assert text_of(got) == "Let me"


async def test_request_body_carries_multimodal_parts_tools_and_settings(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test-123")
    seen: list[httpx.Request] = []
    thinker = OpenAIThinker("http://vllm:8000/v1", model="omni", api_key_env="MY_KEY",
                            accepts=("text", "image", "audio", "video"),
                            transport=sse_transport("vllm_text.sse", seen))
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    req = ThinkerRequest(
        [Message("system", "Be brief."),
         Message("user", [TextPart("What is in these?"), ImagePart(data=PNG),
                          AudioPart(data=WAV), VideoPart(url="https://example.com/clip.mp4")])],
        tools=tools, tool_choice="get_weather",
        settings=GenerationSettings(max_tokens=50, temperature=0.2, stop=["\n\n"], seed=7))
    await collect(thinker, req)
    assert seen[0].url == "http://vllm:8000/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-test-123"
    body = json.loads(seen[0].content)
    content = body["messages"][1]["content"]
    assert content[0] == {"type": "text", "text": "What is in these?"}
    assert content[1]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert content[2] == {"type": "input_audio",
                          "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"}}
    assert content[3] == {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}}
    assert body["tools"] == tools
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert (body["max_tokens"], body["temperature"], body["stop"], body["seed"]) == (50, 0.2, ["\n\n"], 7)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_audio_url_form_sends_audio_as_a_data_url():
    seen: list[httpx.Request] = []
    thinker = OpenAIThinker("http://omni/v1", model="m", accepts=("text", "audio"), audio_input="audio_url",
                            transport=sse_transport("vllm_text.sse", seen))
    await collect(thinker, ThinkerRequest([Message("user", [AudioPart(data=WAV)])]))
    part = json.loads(seen[0].content)["messages"][0]["content"][0]
    assert part == {"type": "audio_url",
                    "audio_url": {"url": "data:audio/wav;base64," + base64.b64encode(WAV).decode()}}


async def test_assistant_tool_calls_and_tool_results_go_back_in_openai_form():
    seen: list[httpx.Request] = []
    thinker = OpenAIThinker("http://vllm/v1", model="m", transport=sse_transport("vllm_text.sse", seen))
    req = ThinkerRequest([
        Message("user", "weather?"),
        Message("assistant", "", tool_calls=[{"id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]),
        Message("tool", "18 C and sunny", tool_call_id="c1", name="get_weather")])
    await collect(thinker, req)
    msgs = json.loads(seen[0].content)["messages"]
    assert msgs[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    assert msgs[2] == {"role": "tool", "content": "18 C and sunny", "tool_call_id": "c1"}


async def test_input_the_server_does_not_accept_fails_before_any_request():
    seen: list[httpx.Request] = []
    thinker = OpenAIThinker("http://vllm/v1", model="m", accepts=("text",),
                            transport=sse_transport("vllm_text.sse", seen))
    with pytest.raises(UnsupportedInputError, match="not image"):
        await collect(thinker, ThinkerRequest([Message("user", [TextPart("?"), ImagePart(data=PNG)])]))
    assert seen == []


async def test_audio_the_ears_transcribed_is_sent_as_text_to_a_text_only_server():
    seen: list[httpx.Request] = []
    thinker = OpenAIThinker("http://vllm/v1", model="m", accepts=("text",),
                            transport=sse_transport("vllm_text.sse", seen))
    await collect(thinker, ThinkerRequest([Message("user", [AudioPart(data=WAV, transcript="hello there")])]))
    assert json.loads(seen[0].content)["messages"][0]["content"] == "hello there"


async def test_model_is_discovered_from_the_models_endpoint_when_not_configured():
    seen: list[str] = []
    text = (FIXTURES / "vllm_text.sse").read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "served-model"}]})
        assert json.loads(request.content)["model"] == "served-model"
        return httpx.Response(200, content=text, headers={"content-type": "text/event-stream"})

    thinker = OpenAIThinker("http://vllm:8000", transport=httpx.MockTransport(handler))  # no /v1 given
    assert text_of(await collect(thinker, ask())) == "The capital of France is Paris."
    assert seen == ["/v1/models", "/v1/chat/completions"]


async def test_a_plain_json_completion_is_accepted_when_the_server_does_not_stream():
    def handler(request):
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": [{
            "index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.", "tool_calls": [{
                    "id": "t1", "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}}]})

    thinker = OpenAIThinker("http://x/v1", model="m", transport=httpx.MockTransport(handler))
    events = await collect(thinker, ask())
    assert text_of(events) == "Checking."
    assert [(e.id, e.name, e.arguments) for e in events if isinstance(e, ToolCall)] == [
        ("t1", "get_weather", '{"city": "Oslo"}')]
    assert isinstance(events[-1], Finish) and events[-1].reason == "tool_calls"
    assert events[-1].prompt_tokens is None  # this server sent no usage: fine


async def test_logprobs_of_a_plain_json_completion_reach_the_text():
    lp = [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]

    def handler(request):
        return httpx.Response(200, json={"object": "chat.completion", "choices": [{
            "index": 0, "finish_reason": "length", "logprobs": {"content": lp},
            "message": {"role": "assistant", "content": "Hi"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1}})

    thinker = OpenAIThinker("http://x/v1", model="m", transport=httpx.MockTransport(handler))
    text, finish = await collect(thinker, ask(logprobs=0))
    assert text.text == "Hi" and text.logprobs == lp
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens) == ("length", 5, 1)


# ---------------------------------------------------------------------------- errors and retries


async def test_unreachable_server_raises_a_thinker_error_naming_the_url_and_what_to_check():
    url = f"http://127.0.0.1:{free_port()}/v1"
    thinker = OpenAIThinker(url, model="m", retries=1, retry_backoff=0.01)
    with pytest.raises(ThinkerError) as info:
        await collect(thinker, ask())
    msg = str(info.value)
    assert url in msg and "tried 2 times" in msg and "running" in msg


async def test_overloaded_server_is_retried_before_the_first_byte_then_succeeds():
    calls = []
    text = (FIXTURES / "vllm_text.sse").read_bytes()

    def handler(request):
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "busy"}}, headers={"retry-after": "0"})
        return httpx.Response(200, content=text, headers={"content-type": "text/event-stream"})

    thinker = OpenAIThinker("http://x/v1", model="m", retries=2, retry_backoff=0.01,
                            transport=httpx.MockTransport(handler))
    assert text_of(await collect(thinker, ask())) == "The capital of France is Paris."
    assert len(calls) == 3


async def test_retries_give_up_with_the_status_and_server_message():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(503, json={"error": {"message": "model is loading"}}, headers={"retry-after": "0"})

    thinker = OpenAIThinker("http://x/v1", model="m", retries=2, retry_backoff=0.01,
                            transport=httpx.MockTransport(handler))
    with pytest.raises(ThinkerError, match="answered 503: model is loading"):
        await collect(thinker, ask())
    assert len(calls) == 3


async def test_client_errors_are_not_retried_and_say_what_to_check():
    calls = []

    def handler(request):
        calls.append(request)
        return httpx.Response(401, json={"error": {"message": "Incorrect API key provided"}})

    thinker = OpenAIThinker("http://x/v1", model="m", transport=httpx.MockTransport(handler))
    with pytest.raises(ThinkerError, match=r"401: Incorrect API key provided.*OPENAI_API_KEY"):
        await collect(thinker, ask())
    assert len(calls) == 1


async def test_a_stream_that_breaks_midway_is_not_retried():
    calls = []
    first_chunks = (FIXTURES / "vllm_text.sse").read_bytes().split(b"\n\n")[:3]

    class Breaking(httpx.AsyncByteStream):
        async def __aiter__(self):
            for c in first_chunks:
                yield c + b"\n\n"
            raise httpx.ReadError("connection reset by peer")

    def handler(request):
        calls.append(request)
        return httpx.Response(200, stream=Breaking(), headers={"content-type": "text/event-stream"})

    thinker = OpenAIThinker("http://x/v1", model="m", retries=3, transport=httpx.MockTransport(handler))
    got = []
    with pytest.raises(ThinkerError, match="broke after 3 chunks"):
        async for ev in thinker.stream(ask()):
            got.append(ev)
    assert text_of(got) == "The capital"
    assert len(calls) == 1


def test_a_base_url_without_a_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="base_url 'localhost:8000/v1' must start with http"):
        OpenAIThinker("localhost:8000/v1")


# ---------------------------------------------------------------------------- our real server on loopback


@pytest.fixture(scope="module")
def scripted_server():
    thinker = ScriptedThinker(default=["Hello", " from", " the", " server."])
    with serve_in_background(create_app(thinker, model_name="scripted-model")) as url:
        yield thinker, url


async def test_text_streams_from_our_server_over_loopback(scripted_server):
    scripted, url = scripted_server
    thinker = OpenAIThinker(url + "/v1", model="scripted-model")
    events = await collect(thinker, ask("hi"))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hello", " from", " the", " server."]
    assert isinstance(events[-1], Finish) and events[-1].reason == "stop"
    await thinker.aclose()


async def test_model_id_comes_from_our_server_models_endpoint(scripted_server):
    _, url = scripted_server
    thinker = OpenAIThinker(url + "/v1")
    await collect(thinker, ask())
    assert thinker.model == "scripted-model"
    await thinker.aclose()


async def test_tool_calls_and_reasoning_round_trip_through_our_server():
    scripted = ScriptedThinker([["<think>look it up</think>", "One moment.",
                                 {"tool_call": {"id": "c7", "name": "get_weather", "arguments": {"city": "Rome"}}},
                                 {"tool_call": {"id": "c8", "name": "current_time", "arguments": {}}}]])
    with serve_in_background(create_app(scripted)) as url:
        thinker = OpenAIThinker(url + "/v1")  # the served model, from /v1/models
        tools = [{"type": "function", "function": {"name": "get_weather"}}]
        events = await collect(thinker, ask("weather?", tools=tools))
        await thinker.aclose()
    assert text_of(events, ReasoningDelta) == "look it up"
    assert text_of(events) == "One moment."
    assert [(e.id, e.name, json.loads(e.arguments)) for e in events if isinstance(e, ToolCall)] == [
        ("c7", "get_weather", {"city": "Rome"}), ("c8", "current_time", {})]
    assert scripted.requests[0].tools == tools


async def test_media_parts_reach_the_served_thinker_byte_for_byte():
    scripted = ScriptedThinker(["ok"])
    with serve_in_background(create_app(scripted)) as url:
        thinker = OpenAIThinker(url + "/v1", accepts=("text", "image", "audio", "video"))
        await collect(thinker, ThinkerRequest([Message("user", [
            TextPart("Describe"), ImagePart(data=PNG), AudioPart(data=WAV), VideoPart(data=b"\x00\x00\x00\x18ftypmp42")])]))
        await thinker.aclose()
    parts = scripted.requests[0].messages[0].content
    assert [p.kind for p in parts] == ["text", "image", "audio", "video"]
    assert parts[1].data == PNG and parts[1].mime == "image/png"
    assert parts[2].data == WAV and parts[2].mime == "audio/wav"
    assert parts[3].data == b"\x00\x00\x00\x18ftypmp42" and parts[3].mime == "video/mp4"


async def test_leaving_the_stream_early_stops_the_served_thinker():
    closed = asyncio.Event()
    state = {"sent": 0}

    class Endless:
        name, accepts = "endless", frozenset({"text"})

        async def stream(self, request):
            try:
                while True:
                    state["sent"] += 1
                    yield TextDelta("tick ")
                    await asyncio.sleep(0.02)
            finally:
                closed.set()

        async def aclose(self):
            pass

    endless = Endless()
    with serve_in_background(create_app(endless)) as url:
        thinker = OpenAIThinker(url + "/v1")  # the served model, from /v1/models
        agen = thinker.stream(ask())
        n = 0
        async for _ in agen:
            n += 1
            if n == 3:
                break
        await agen.aclose()
        await thinker.aclose()
        # The server notices the disconnect and closes the Thinker's stream.
        for _ in range(200):
            if closed.is_set():
                break
            await asyncio.sleep(0.01)
        assert closed.is_set()
        sent = state["sent"]
        await asyncio.sleep(0.2)
        assert state["sent"] == sent  # nothing generated after the stop


@pytest.mark.slow
async def test_embedded_model_served_over_loopback_names_paris():
    from omni_agent.thinkers.transformers import TransformersThinker

    local = TransformersThinker.default().load()
    with serve_in_background(create_app(local)) as url:
        thinker = OpenAIThinker(url + "/v1", accepts=("text", "image"))
        events = await collect(thinker, ask("What is the capital of France?",
                                            settings=GenerationSettings(max_tokens=30)))
        assert "Paris" in text_of(events)
        assert thinker.model == "SmolLM2-135M-Instruct"
        assert thinker.last_usage["completion_tokens"] > 0
        # The served model is text-only: an image comes back as a clear client error.
        with pytest.raises(ThinkerError, match="400.*cannot read image input"):
            await collect(thinker, ThinkerRequest([Message("user", [TextPart("?"), ImagePart(data=PNG)])]))
        await thinker.aclose()
    await local.aclose()
