"""The Thinker server as a drop-in for the OpenAI chat completions API: the official
``openai`` SDK and LangChain's ``ChatOpenAI`` against a real server on 127.0.0.1.

Fast tests use the scripted Thinker (the server's own promises: model names, tool_choice
"none", refusals, the queue, metrics); the slow ones the embedded SmolLM2 model, which
keeps response_format and tool_choice by constrained decoding.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from pydantic import BaseModel

from omni_agent.events import Finish, TextDelta
from omni_agent.server.background import serve_in_background
from omni_agent.server.thinker_server import ThinkerServerLimits, create_app
from omni_agent.testing import ScriptedThinker

openai = pytest.importorskip("openai")

USER = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "current_time", "description": "The current time in a timezone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}},
                   "required": ["timezone"]}}}


class City(BaseModel):
    city: str
    country: str


def client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, **kw)


@pytest.fixture(scope="module")
def scripted():
    thinker = ScriptedThinker(default=["Hello", " there"])
    with serve_in_background(create_app(thinker, model_name="m")) as url:
        yield thinker, url


def script(thinker: ScriptedThinker, *replies) -> None:
    thinker.replies, thinker._i = list(replies), 0


# ---------------------------------------------------------------------------- models


def test_an_unknown_model_is_a_not_found_error_naming_the_served_one(scripted):
    _, url = scripted
    with pytest.raises(openai.NotFoundError) as e:
        client(url).chat.completions.create(model="gpt-4o-mini", messages=USER)
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "'m'" in err["message"] and "--any-model" in err["message"]


def test_with_any_model_every_model_name_is_answered_by_the_served_model():
    app = create_app(ScriptedThinker(default=["ok"]), model_name="m", any_model=True)
    with serve_in_background(app) as url:
        reply = client(url).chat.completions.create(model="gpt-4o-mini", messages=USER)
        got = client(url).models.retrieve("org/some-model")
    assert reply.choices[0].message.content == "ok" and reply.model == "m"
    assert got.id == "org/some-model"


def test_a_model_can_be_retrieved_by_id_and_an_unknown_id_is_not_found(scripted):
    _, url = scripted
    assert client(url).models.retrieve("m").id == "m"
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        client(url).models.retrieve("other")


ROUTES = ["/v1/chat/completions", "/chat/completions", "/v1/models", "/v1/models/m",
          "/v1/models/nope", "/health", "/metrics", "/v1/chat/completions/", "/v1/models/",
          "/v1/embeddings", "/", "/v1/completions", "/nope/deeper"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_refusal_on_every_route_is_an_openai_json_error(scripted, method):
    _, url = scripted
    with httpx.Client(base_url=url, timeout=10) as c:
        for path in ROUTES:
            resp = c.request(method, path, json={"messages": USER} if method != "GET" else None)
            if resp.status_code < 400:
                continue
            assert resp.headers["content-type"].startswith("application/json"), (method, path)
            err = resp.json()["error"]
            assert isinstance(err["message"], str) and err["message"], (method, path)
            assert isinstance(err["type"], str), (method, path)


# ---------------------------------------------------------------------------- tool_choice


def test_a_named_tool_choice_not_in_tools_is_a_bad_request(scripted):
    _, url = scripted
    with pytest.raises(openai.BadRequestError) as e:
        client(url).chat.completions.create(
            model="m", messages=USER, tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "launch_rocket"}})
    assert e.value.body["param"] == "tool_choice"
    assert "'launch_rocket'" in e.value.body["message"] and "'get_weather'" in e.value.body["message"]


def test_tool_choice_required_without_tools_is_a_bad_request(scripted):
    _, url = scripted
    with pytest.raises(openai.BadRequestError, match="needs tools"):
        client(url).chat.completions.create(model="m", messages=USER, tool_choice="required")


def test_tool_choice_none_offers_no_tools_and_passes_out_no_call(scripted):
    thinker, url = scripted
    script(thinker, ["Sunny.", {"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}])
    reply = client(url).chat.completions.create(model="m", messages=USER, tools=[WEATHER],
                                                tool_choice="none")
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.message.content == "Sunny."
    assert choice.finish_reason == "stop"
    assert thinker.requests[-1].tools == [] and thinker.requests[-1].tool_choice == "none"


def test_tool_choice_none_holds_back_calls_in_a_stream_too(scripted):
    thinker, url = scripted
    script(thinker, [{"tool_call": {"name": "get_weather", "arguments": {}}}, "Rain."])
    chunks = list(client(url).chat.completions.create(model="m", messages=USER, tools=[WEATHER],
                                                      tool_choice="none", stream=True))
    assert not any(c.choices[0].delta.tool_calls for c in chunks if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Rain."
    assert chunks[-1].choices[0].finish_reason == "stop"
    script(thinker)


# ---------------------------------------------------------------------------- what a backend supports


@pytest.mark.parametrize("extra, param", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": {}}}},
     "response_format"),
    ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     "tool_choice"),
    ({"logprobs": True}, "logprobs"),
])
def test_a_promise_the_backend_cannot_keep_is_refused_not_ignored(extra, param):
    thinker = ScriptedThinker(default=["not JSON at all"], supports=())
    with serve_in_background(create_app(thinker, model_name="m")) as url, \
            pytest.raises(openai.BadRequestError) as e:
        client(url).chat.completions.create(model="m", messages=USER, **extra)
    assert e.value.body["param"] == param and e.value.body["code"] == "unsupported_parameter"
    assert "cannot" in e.value.body["message"] or "does not" in e.value.body["message"]
    assert thinker.requests == []  # refused before the backend ran


def test_plain_text_response_format_needs_no_support():
    thinker = ScriptedThinker(default=["fine"], supports=())
    with serve_in_background(create_app(thinker, model_name="m")) as url:
        reply = client(url).chat.completions.create(model="m", messages=USER,
                                                    response_format={"type": "text"})
    assert reply.choices[0].message.content == "fine"
    assert thinker.requests[-1].response_format is None


def test_response_format_reaches_the_backend_in_openai_shape(scripted):
    thinker, url = scripted
    script(thinker, '{"city": "Paris", "country": "France"}')
    parsed = client(url).chat.completions.parse(model="m", messages=USER, response_format=City)
    assert parsed.choices[0].message.parsed == City(city="Paris", country="France")
    fmt = thinker.requests[-1].response_format
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
    assert fmt["json_schema"]["schema"]["required"] == ["city", "country"]
    script(thinker)


def test_a_json_schema_format_without_its_schema_object_is_a_bad_request(scripted):
    _, url = scripted
    with pytest.raises(openai.BadRequestError) as e:
        client(url).chat.completions.create(model="m", messages=USER,
                                            response_format={"type": "json_schema"})
    assert e.value.body["param"] == "response_format" and "json_schema" in e.value.body["message"]


def test_top_logprobs_without_logprobs_is_a_bad_request(scripted):
    _, url = scripted
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        client(url).chat.completions.create(model="m", messages=USER, top_logprobs=2)


def test_n_above_one_is_refused(scripted):
    _, url = scripted
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        client(url).chat.completions.create(model="m", messages=USER, n=2)


# ---------------------------------------------------------------------------- finish and usage


def test_finish_reason_and_token_counts_come_from_the_backends_finish(scripted):
    thinker, url = scripted
    script(thinker, ["Once upon", Finish(reason="length", prompt_tokens=37, completion_tokens=3)])
    reply = client(url).chat.completions.create(model="m", messages=USER, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (37, 3, 40)
    script(thinker, ["Once upon", Finish(reason="length", prompt_tokens=37, completion_tokens=3)])
    chunks = list(client(url).chat.completions.create(
        model="m", messages=USER, max_tokens=3, stream=True, stream_options={"include_usage": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.prompt_tokens == 37
    script(thinker)


def test_logprobs_are_reported_per_token_in_openai_shape(scripted):
    thinker, url = scripted
    script(thinker, ["Hello", " there"])
    reply = client(url).chat.completions.create(model="m", messages=USER, logprobs=True, top_logprobs=1)
    content = reply.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hello", " there"]
    assert content[0].logprob == 0.0 and content[0].bytes == list(b"Hello")
    assert content[0].top_logprobs[0].token == "Hello"
    assert thinker.requests[-1].logprobs == 1
    script(thinker)


def test_without_logprobs_the_choice_says_null(scripted):
    _, url = scripted
    assert client(url).chat.completions.create(model="m", messages=USER).choices[0].logprobs is None


# ---------------------------------------------------------------------------- the queue


class OneAtATime(ScriptedThinker):
    """A backend that can run one generation at a time (like a local model)."""

    max_concurrency = 1


async def _post(c: httpx.AsyncClient, **body):
    return await c.post("/v1/chat/completions", json={"messages": USER, **body}, timeout=30)


def test_requests_beyond_the_backend_wait_in_order_and_past_the_queue_get_429():
    thinker = OneAtATime(default=["a", "b", "c"], delay=0.3)
    app = create_app(thinker, model_name="m", limits=ThinkerServerLimits(max_queued_requests=1))

    async def three():
        async with httpx.AsyncClient(base_url=url) as c:
            first = asyncio.create_task(_post(c))
            await asyncio.sleep(0.15)
            second = asyncio.create_task(_post(c))
            await asyncio.sleep(0.15)
            third = await _post(c)
            return await first, await second, third

    with serve_in_background(app) as url:
        first, second, third = asyncio.run(three())
        health = httpx.get(url + "/health").json()
    assert first.status_code == 200 and second.status_code == 200
    waits = sorted(float(r.headers["x-queue-seconds"]) for r in (first, second))
    assert waits[0] == 0 and waits[1] > 0.2  # one ran, the other waited for it
    assert third.status_code == 429
    assert int(third.headers["retry-after"]) >= 1
    assert third.json()["error"]["code"] == "queue_full"
    assert health["queue"] == {"running": 0, "waiting": 0, "max_running": 1, "max_waiting": 1}


def test_a_request_that_waits_too_long_gets_429_and_the_sdk_sees_a_rate_limit():
    thinker = OneAtATime(default=["a", "b", "c", "d"], delay=0.6)
    app = create_app(thinker, model_name="m", limits=ThinkerServerLimits(max_queue_seconds=0.3))

    async def two():
        async with httpx.AsyncClient(base_url=url) as c:
            slow = asyncio.create_task(_post(c))
            await asyncio.sleep(0.3)
            sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.RateLimitError) as e:
                await sdk.chat.completions.create(model="m", messages=USER)
            await sdk.close()
            return await slow, e.value

    with serve_in_background(app) as url:
        slow, err = asyncio.run(two())
    assert slow.status_code == 200
    assert err.body["code"] == "queue_timeout" and err.response.headers["retry-after"]


def test_a_client_that_gives_up_while_queued_frees_its_place():
    thinker = OneAtATime(default=["a", "b", "c", "d"], delay=0.5)
    app = create_app(thinker, model_name="m", limits=ThinkerServerLimits(max_queued_requests=1))

    async def three():
        async with httpx.AsyncClient(base_url=url) as c:
            first = asyncio.create_task(_post(c))
            await asyncio.sleep(0.3)
            with pytest.raises(httpx.ReadTimeout):  # waits in the queue, then hangs up
                await c.post("/v1/chat/completions", json={"messages": USER}, timeout=0.3)
            await asyncio.sleep(0.1)
            third = await _post(c)  # the place is free again: it waits, not a 429
            return await first, third

    with serve_in_background(app) as url:
        first, third = asyncio.run(three())
        metrics = httpx.get(url + "/metrics").text
    assert first.status_code == 200 and third.status_code == 200
    assert 'omni_thinker_rejected_total{reason="client_gone"} 1.0' in metrics
    assert len(thinker.requests) == 2  # the one that left never reached the Thinker


def test_a_client_that_leaves_the_stream_frees_its_slot_for_the_next():
    thinker = OneAtATime([["tick "] * 100, "done"], delay=0.05)  # 5 s if it ran to the end
    app = create_app(thinker, model_name="m", limits=ThinkerServerLimits(max_queue_seconds=10))
    with serve_in_background(app) as url:
        stream = client(url).chat.completions.create(model="m", messages=USER, stream=True)
        next(iter(stream))
        stream.close()
        t0 = time.monotonic()
        reply = client(url).chat.completions.create(model="m", messages=USER)
    assert reply.choices[0].message.content == "done"
    assert time.monotonic() - t0 < 3  # it did not wait out the abandoned stream


# ---------------------------------------------------------------------------- metrics


def test_metrics_are_prometheus_text_with_requests_queue_and_finish_reasons(scripted):
    _, url = scripted
    client(url).chat.completions.create(model="m", messages=USER)
    with pytest.raises(openai.NotFoundError):
        client(url).chat.completions.create(model="nope", messages=USER)
    resp = httpx.get(url + "/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert 'omni_thinker_requests_total{status="200"}' in text
    assert 'omni_thinker_rejected_total{reason="model_not_found"}' in text
    assert 'omni_thinker_finish_total{reason="stop"}' in text
    assert "omni_thinker_requests_queued 0.0" in text
    assert "omni_thinker_queue_wait_seconds_count" in text


def test_metrics_need_the_token_when_the_server_has_one():
    from omni_agent.server.security import WebSecurity

    app = create_app(ScriptedThinker(default=["ok"]), security=WebSecurity(token="s3cret"))
    with serve_in_background(app) as url:
        anon = httpx.get(url + "/metrics")
        ok = httpx.get(url + "/metrics", headers={"authorization": "Bearer s3cret"})
    assert anon.status_code == 401 and "error" in anon.json()
    assert ok.status_code == 200 and "omni_thinker_requests_running" in ok.text


# ---------------------------------------------------------------------------- the CLI


def test_serve_thinker_takes_any_model_and_the_queue_sizes(monkeypatch, tmp_path):
    import uvicorn
    from click.testing import CliRunner

    from omni_agent.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: seen.setdefault("config", self.config))
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[thinker]\nbackend = "scripted"\n')
    result = CliRunner().invoke(main, [
        "serve", "thinker", "--config", str(cfg), "--port", "0", "--any-model",
        "--max-concurrent-requests", "2", "--max-queued-requests", "3", "--max-queue-seconds", "9"])
    assert result.exit_code == 0, result.output
    app = seen["config"].app
    service = app.state.service
    assert service.any_model
    assert (service.queue.max_running, service.queue.max_waiting, service.limits.max_queue_seconds) == (2, 3, 9)

    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://127.0.0.1") as c:
            return await c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": USER})

    assert asyncio.run(call()).status_code == 200


def test_the_cli_queue_defaults_are_the_servers_defaults():
    from omni_agent.cli.serve_thinker import serve_thinker

    cli = {p.name: p.default for p in serve_thinker.params}
    for name in ("max_concurrent_requests", "max_queued_requests", "max_queue_seconds"):
        assert cli[name] == ThinkerServerLimits.model_fields[name].default, name


# ---------------------------------------------------------------------------- the embedded model


@pytest.fixture(scope="module")
def smol():
    from omni_agent.thinkers.transformers import TransformersThinker

    thinker = TransformersThinker.default().load()
    with serve_in_background(create_app(thinker)) as url:
        yield thinker, url


FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.slow
def test_parse_with_a_pydantic_model_returns_a_valid_object_from_the_embedded_model(smol):
    thinker, url = smol
    reply = client(url).chat.completions.parse(model=thinker.model_name, messages=FRANCE,
                                               response_format=City, max_tokens=40)
    city = reply.choices[0].message.parsed
    assert isinstance(city, City) and city.city == "Paris"
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_json_object_format_makes_the_embedded_model_answer_a_json_object(smol):
    thinker, url = smol
    reply = client(url).chat.completions.create(model=thinker.model_name, messages=FRANCE,
                                                response_format={"type": "json_object"}, max_tokens=40)
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


@pytest.mark.slow
def test_tool_choice_required_makes_the_embedded_model_call_a_tool(smol):
    thinker, url = smol
    reply = client(url).chat.completions.create(
        model=thinker.model_name, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER, TIME], tool_choice="required", max_tokens=60)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0].function
    assert call.name in ("get_weather", "current_time") and isinstance(json.loads(call.arguments), dict)


@pytest.mark.slow
def test_a_named_tool_choice_makes_the_embedded_model_call_that_tool(smol):
    thinker, url = smol
    reply = client(url).chat.completions.create(
        model=thinker.model_name, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "current_time"}},
        max_tokens=60)
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["current_time"]
    assert set(json.loads(calls[0].function.arguments)) == {"timezone"}


@pytest.mark.slow
def test_a_reply_cut_by_max_tokens_says_length_and_counts_the_templated_prompt(smol):
    thinker, url = smol
    reply = client(url).chat.completions.create(model=thinker.model_name, messages=FRANCE, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    templated = thinker.tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"]
    assert reply.usage.prompt_tokens == len(templated) > len(thinker.tokenizer.encode(FRANCE[0]["content"]))
    assert reply.usage.completion_tokens == 3


@pytest.mark.slow
def test_a_reply_that_ends_by_itself_says_stop(smol):
    thinker, url = smol
    reply = client(url).chat.completions.create(model=thinker.model_name, messages=FRANCE, max_tokens=60)
    assert reply.choices[0].finish_reason == "stop" and "Paris" in reply.choices[0].message.content


@pytest.mark.slow
def test_the_embedded_model_reports_logprobs_of_its_tokens(smol):
    thinker, url = smol
    reply = client(url).chat.completions.create(model=thinker.model_name, messages=FRANCE, max_tokens=5,
                                                logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in content)
    assert all(t.top_logprobs[0].logprob >= t.logprob for t in content)  # the best is first


@pytest.mark.slow
def test_the_embedded_model_streams_logprobs_and_the_finish_reason(smol):
    thinker, url = smol
    chunks = list(client(url).chat.completions.create(model=thinker.model_name, messages=FRANCE,
                                                      max_tokens=4, logprobs=True, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    tokens = [t.token for c in chunks if c.choices and c.choices[0].logprobs
              for t in c.choices[0].logprobs.content]
    assert "".join(tokens) == text and len(tokens) == 4
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.slow
async def test_the_backend_itself_ends_with_finish_and_rejects_a_schema_it_cannot_keep(smol):
    from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest
    from omni_agent.thinkers.structured import StructuredOutputError

    thinker, _ = smol
    req = ThinkerRequest([Message("user", "Hi")], settings=GenerationSettings(max_tokens=2))
    events = [ev async for ev in thinker.stream(req)]
    assert isinstance(events[-1], Finish) and events[-1].reason == "length"
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    bad = ThinkerRequest([Message("user", "Hi")], response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "string", "pattern": "(?<=x)a"}}}}})
    with pytest.raises(StructuredOutputError, match="look-around") as e:
        [ev async for ev in thinker.stream(bad)]
    assert e.value.param == "response_format.json_schema.schema"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output_gets_a_model_object(smol, method):
    lc = pytest.importorskip("langchain_openai")
    thinker, url = smol
    llm = lc.ChatOpenAI(base_url=url + "/v1", api_key="unused", model=thinker.model_name,
                        max_retries=0, max_tokens=60, temperature=0)
    city = llm.with_structured_output(City, method=method).invoke("What is the capital of France?")
    assert isinstance(city, City) and city.city == "Paris"


# ------------------------------------------- the same on the default engine (llama.cpp)


@pytest.fixture(scope="module")
def smol_llama():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: ./setup.sh builds it")
    from omni_agent.thinkers.llama_cpp import LlamaCppThinker

    thinker = LlamaCppThinker.default().load()
    with serve_in_background(create_app(thinker)) as url:
        yield thinker, url


@pytest.mark.slow
def test_parse_works_on_the_llama_cpp_default_too(smol_llama):
    thinker, url = smol_llama
    reply = client(url).chat.completions.parse(model=thinker.model_name, messages=FRANCE,
                                               response_format=City, max_tokens=40)
    assert isinstance(reply.choices[0].message.parsed, City)
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_required_and_named_tool_choice_on_the_llama_cpp_default(smol_llama):
    thinker, url = smol_llama
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    reply = client(url).chat.completions.create(model=thinker.model_name, messages=ask,
                                                tools=[WEATHER, TIME], tool_choice="required", max_tokens=60)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.tool_calls[0].function.name in ("get_weather", "current_time")
    reply = client(url).chat.completions.create(
        model=thinker.model_name, messages=ask, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "current_time"}}, max_tokens=60)
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["current_time"]


@pytest.mark.slow
def test_length_and_templated_prompt_tokens_on_the_llama_cpp_default(smol_llama):
    from omni_agent.thinker import Message, ThinkerRequest

    thinker, url = smol_llama
    reply = client(url).chat.completions.create(model=thinker.model_name, messages=FRANCE, max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    templated = thinker._prompt_tokens(ThinkerRequest(messages=[Message("user", FRANCE[0]["content"])]))
    assert reply.usage.prompt_tokens == len(templated) > thinker.count_tokens(FRANCE[0]["content"])
    assert reply.usage.completion_tokens == 3
