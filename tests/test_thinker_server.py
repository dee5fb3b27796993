"""The Thinker server's wire format and its answers to malformed requests (real loopback HTTP)."""

from __future__ import annotations

import json

import httpx
import pytest

from omni_agent.errors import UnsupportedInputError
from omni_agent.server.background import serve_in_background
from omni_agent.server.thinker_server import create_app
from omni_agent.testing import ScriptedThinker
from omni_agent.thinker import GenerationSettings

USER = [{"role": "user", "content": "hi"}]


class Counting(ScriptedThinker):
    """A scripted Thinker that can count tokens (one per word), so usage is reported."""

    def count_tokens(self, text: str) -> int:
        return len(text.split())


@pytest.fixture(scope="module")
def server():
    thinker = Counting(default=["Hello", " there", {"tool_call": {"id": "c1", "name": "lookup",
                                                                   "arguments": {"q": "x"}}}])
    app = create_app(thinker, model_name="test-model",
                     defaults=GenerationSettings(max_tokens=77, temperature=0.0))
    with serve_in_background(app) as url:
        yield thinker, url


def post(url: str, body, **kw) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(url + "/v1/chat/completions", json=body, timeout=10, **kw)
    return httpx.post(url + "/v1/chat/completions", content=body, timeout=10,
                      headers={"content-type": "application/json"}, **kw)


def sse_chunks(resp: httpx.Response) -> list:
    out = []
    for block in resp.text.split("\n\n"):
        if block.startswith("data: "):
            data = block[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_streaming_answer_is_openai_chunks_ending_in_done(server):
    _, url = server
    resp = post(url, {"model": "test-model", "messages": USER, "stream": True,
                      "stream_options": {"include_usage": True}})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(resp)
    assert chunks[-1] == "[DONE]"
    body = chunks[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "test-model" for c in body)
    assert body[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in body if c["choices"])
    assert text == "Hello there"
    calls = [tc for c in body if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert calls == [{"index": 0, "id": "c1", "type": "function",
                      "function": {"name": "lookup", "arguments": '{"q": "x"}'}}]
    finish = [c["choices"][0]["finish_reason"] for c in body if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish == ["tool_calls"]
    assert body[-1]["choices"] == [] and body[-1]["usage"]["completion_tokens"] == 4


def test_non_streaming_answer_is_one_chat_completion(server):
    _, url = server
    resp = post(url, {"messages": USER})
    assert resp.status_code == 200
    obj = resp.json()
    assert obj["object"] == "chat.completion"
    msg = obj["choices"][0]["message"]
    assert msg["content"] == "Hello there"
    assert msg["tool_calls"][0]["function"]["name"] == "lookup"
    assert obj["choices"][0]["finish_reason"] == "tool_calls"
    assert obj["usage"]["prompt_tokens"] == 1


def test_generation_settings_reach_the_thinker_with_server_defaults_for_missing_ones(server):
    thinker, url = server
    post(url, {"messages": USER, "temperature": 0.5, "stop": "END", "seed": 3})
    s = thinker.requests[-1].settings
    assert (s.max_tokens, s.temperature, s.stop, s.seed) == (77, 0.5, ["END"], 3)
    post(url, {"messages": USER, "max_completion_tokens": 12})
    assert thinker.requests[-1].settings.max_tokens == 12


def test_models_lists_the_served_model(server):
    _, url = server
    obj = httpx.get(url + "/v1/models").json()
    assert [m["id"] for m in obj["data"]] == ["test-model"]


def test_health_says_ok_and_names_the_thinker(server):
    _, url = server
    obj = httpx.get(url + "/health").json()
    assert obj["status"] == "ok" and obj["thinker"] == "scripted" and obj["model"] == "test-model"


@pytest.mark.parametrize("body, param, words", [
    (b"{not json", None, "not valid JSON"),
    ({"model": "x"}, "messages", "messages must be a non-empty list"),
    ({"messages": []}, "messages", "non-empty"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "must be system, user"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "string or a list"),
    ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "messages[0].content[0].type",
     "unknown content part type"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]},
     "messages[0].content[0].image_url.url", "bad base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}]},
     "messages[0].content[0].image_url.url", "http(s) or data: URL"),
    ({"messages": [{"role": "tool", "content": "18 C"}]}, "messages[0].tool_call_id", "tool_call_id is required"),
    ({"messages": USER, "temperature": "hot"}, "temperature", "must be a number"),
    ({"messages": USER, "temperature": 9}, "temperature", "between 0 and 2"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens", "must be at least 1"),
    ({"messages": USER, "stop": [1, 2]}, "stop", "list of strings"),
    ({"messages": USER, "tools": [{"type": "function"}]}, "tools", "tools must be a list"),
    ({"messages": USER, "tool_choice": "sometimes"}, "tool_choice", "tool_choice must be"),
    ({"messages": USER, "stream": "yes"}, "stream", "stream must be true or false"),
    ({"messages": USER, "n": 2}, "n", "only n=1"),
])
def test_malformed_requests_get_400_with_a_json_error_naming_the_field(server, body, param, words):
    _, url = server
    resp = post(url, body)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert words in err["message"]
    assert err["param"] == param
    assert err["type"] == "invalid_request_error"


def test_server_keeps_answering_after_a_malformed_request(server):
    _, url = server
    assert post(url, b"]").status_code == 400
    assert post(url, {"messages": USER}).json()["choices"][0]["message"]["content"] == "Hello there"


def test_input_the_thinker_cannot_take_is_a_400_not_a_broken_stream():
    class TextOnly:
        name, accepts = "text-only", frozenset({"text"})

        async def stream(self, request):
            raise UnsupportedInputError("this Thinker cannot read image input")
            yield  # pragma: no cover - makes this an async generator

        async def aclose(self):
            pass

    with serve_in_background(create_app(TextOnly())) as url:
        resp = post(url, {"stream": True, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]})
    assert resp.status_code == 400
    assert "cannot read image input" in resp.json()["error"]["message"]


def test_a_thinker_failing_mid_stream_sends_an_error_chunk_then_done():
    from omni_agent.errors import ThinkerError
    from omni_agent.events import TextDelta

    class Failing:
        name, accepts = "failing", frozenset({"text"})

        async def stream(self, request):
            yield TextDelta("Partial")
            raise ThinkerError("model crashed")

        async def aclose(self):
            pass

    with serve_in_background(create_app(Failing())) as url:
        chunks = sse_chunks(post(url, {"stream": True, "messages": USER}))
    assert chunks[-1] == "[DONE]"
    assert chunks[-2]["error"]["message"] == "model crashed"
    assert any(c["choices"][0]["delta"].get("content") == "Partial" for c in chunks[:-2] if "choices" in c)
