"""The Thinker server bounds what a request may cost and refuses malformed ones with
OpenAI-shaped 4xx errors (real uvicorn on 127.0.0.1, the official openai SDK where installed)."""

from __future__ import annotations

import json

import httpx
import pytest

from omni_agent.server.background import serve_in_background
from omni_agent.server.thinker_server import create_app
from omni_agent.testing import ScriptedThinker

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def served():
    thinker = ScriptedThinker(default=["Hello there"])
    with serve_in_background(create_app(thinker, model_name="m")) as url:
        yield thinker, url


def chat(url: str, body, **kw) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(url + "/v1/chat/completions", json=body, timeout=30, **kw)
    kw.setdefault("headers", {"content-type": "application/json"})
    return httpx.post(url + "/v1/chat/completions", content=body, timeout=30, **kw)


def openai_error(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    return err


# ---------------------------------------------------------------------------- size limits


def test_a_20_mb_prompt_is_refused_with_413_before_the_thinker_sees_it(served):
    thinker, url = served
    before = len(thinker.requests)
    resp = chat(url, {"messages": [{"role": "user", "content": "a" * 20_000_000}]})
    err = openai_error(resp, 413)
    assert "at most" in err["message"] and "bytes" in err["message"]
    assert len(thinker.requests) == before


def test_a_body_without_content_length_is_cut_off_at_the_limit_too(served):
    thinker, url = served

    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"a" * 1_000_000

    resp = httpx.post(url + "/v1/chat/completions", content=chunks(), timeout=30,
                      headers={"content-type": "application/json"})
    openai_error(resp, 413)


def test_a_prompt_over_the_character_limit_is_a_400_naming_the_limit():
    from omni_agent.server.thinker_server import ThinkerServerLimits

    thinker = ScriptedThinker(default=["x"])
    app = create_app(thinker, limits=ThinkerServerLimits(max_prompt_chars=1000))
    with serve_in_background(app) as url:
        resp = chat(url, {"messages": [{"role": "system", "content": "s" * 600},
                                       {"role": "user", "content": "u" * 600}]})
        ok = chat(url, {"messages": [{"role": "user", "content": "u" * 900}]})
    err = openai_error(resp, 400)
    assert err["code"] == "context_length_exceeded" and "1000" in err["message"]
    assert ok.status_code == 200
    assert len(thinker.requests) == 1


def test_json_nested_100k_deep_is_a_400_not_a_500(served):
    _, url = served
    deep = b'{"messages": [{"role": "user", "content": "hi"}], "metadata": ' + b"[" * 100_000 \
        + b"]" * 100_000 + b"}"
    err = openai_error(chat(url, deep), 400)
    assert "nested too deeply" in err["message"]


# ---------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]}, "messages[0].tool_calls"),
    ({"messages": USER, "stream_options": "x"}, "stream_options"),
    ({"messages": USER, "stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"messages": USER, "response_format": ["wav"]}, "response_format"),
    ({"messages": USER, "seed": 2 ** 70}, "seed"),
    ({"messages": USER, "n": 0}, "n"),
    ({"messages": USER, "top_p": True}, "top_p"),
    ({"messages": USER, "max_tokens": 1.5}, "max_tokens"),
    ({"messages": USER, "user": 7}, "user"),
    ({"messages": USER, "modalities": "text"}, "modalities"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x", "name": 3}]}, "messages[0].name"),
])
def test_wrong_types_are_openai_shaped_400s_naming_the_field(served, body, param):
    thinker, url = served
    before = len(thinker.requests)
    err = openai_error(chat(url, body), 400)
    assert err["param"] == param
    assert err["message"].startswith(param)
    assert len(thinker.requests) == before


def test_temperature_nan_is_refused_with_400(served):
    _, url = served
    body = b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'
    err = openai_error(chat(url, body), 400)
    assert "NaN" in err["message"]


def test_a_body_that_is_not_an_object_is_a_400(served):
    _, url = served
    err = openai_error(chat(url, b"[1, 2]"), 400)
    assert "JSON object" in err["message"]


def test_unknown_fields_clients_send_are_ignored(served):
    _, url = served
    resp = chat(url, {"messages": USER, "logprobs": False, "metadata": {"a": "b"},
                      "parallel_tool_calls": True, "frequency_penalty": 0.5})
    assert resp.status_code == 200


def test_unknown_routes_and_methods_answer_openai_shaped_json(served):
    _, url = served
    missing = httpx.get(url + "/v1/embeddings")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "invalid_request_error"
    assert "/v1/embeddings" in missing.json()["error"]["message"]
    wrong = httpx.get(url + "/v1/chat/completions")
    assert wrong.status_code == 405 and "POST" in wrong.json()["error"]["message"]


# ---------------------------------------------------------------------------- web safety


def test_a_foreign_host_header_is_refused(served):
    _, url = served
    resp = chat(url, {"messages": USER}, headers={"host": "evil.example"})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "host_not_allowed"


def test_a_cross_site_page_cannot_post(served):
    _, url = served
    resp = chat(url, {"messages": USER}, headers={"origin": "https://evil.example"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "origin_not_allowed"


def test_a_form_post_is_refused_with_415(served):
    _, url = served
    resp = httpx.post(url + "/v1/chat/completions", content=json.dumps({"messages": USER}),
                      headers={"content-type": "text/plain"})
    assert resp.status_code == 415


def test_answers_carry_security_headers(served):
    _, url = served
    resp = httpx.get(url + "/v1/models")
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert resp.headers["x-frame-options"] == "DENY"


def test_with_a_token_requests_without_it_get_401_and_health_stays_open():
    from omni_agent.server.security import WebSecurity

    app = create_app(ScriptedThinker(default=["ok"]), security=WebSecurity(token="s3cret"))
    with serve_in_background(app) as url:
        anon = chat(url, {"messages": USER})
        wrong = chat(url, {"messages": USER}, headers={"authorization": "Bearer nope"})
        right = chat(url, {"messages": USER}, headers={"authorization": "Bearer s3cret"})
        health = httpx.get(url + "/health")
    assert anon.status_code == 401 and anon.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert right.status_code == 200 and health.status_code == 200


# ---------------------------------------------------------------------------- the openai SDK


def test_the_openai_sdk_talks_to_a_token_protected_server():
    openai = pytest.importorskip("openai")
    from omni_agent.server.security import WebSecurity

    app = create_app(ScriptedThinker(default=["Hello", " there"]), model_name="m",
                     security=WebSecurity(token="s3cret"))
    with serve_in_background(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        reply = client.chat.completions.create(model="m", messages=USER)
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="m", messages=USER, stream=True) if c.choices)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0) \
                .chat.completions.create(model="m", messages=USER)
        with pytest.raises(openai.BadRequestError, match="seed"):
            client.chat.completions.create(model="m", messages=USER, seed=2 ** 70)
    assert reply.choices[0].message.content == "Hello there"
    assert streamed == "Hello there"


# ---------------------------------------------------------------------------- the CLI


def test_serve_thinker_applies_the_token_hosts_and_uvicorn_limits(monkeypatch, tmp_path):
    import uvicorn
    from click.testing import CliRunner

    from omni_agent.cli import main

    seen = {}

    def fake_run(self, *a, **kw):  # stands in for serving: we only look at what was built
        seen["config"] = self.config

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[thinker]\nbackend = "scripted"\n')
    result = CliRunner().invoke(main, [
        "serve", "thinker", "--config", str(cfg), "--port", "0", "--token", "s3cret",
        "--allow-host", "box.lan", "--allow-origin", "https://app.example.com",
        "--limit-concurrency", "7", "--header-timeout", "3", "--max-body-bytes", "4096"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.limit_concurrency == 7
    assert config.http._limits.header_timeout == 3

    async def call(messages=USER, host="box.lan", **headers):
        transport = httpx.ASGITransport(app=config.app)
        headers["host"] = host
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            return await c.post("/v1/chat/completions", json={"messages": messages}, headers=headers)

    import asyncio

    token = {"authorization": "Bearer s3cret"}
    assert asyncio.run(call()).status_code == 401
    assert asyncio.run(call(**token, origin="https://app.example.com")).status_code == 200
    assert asyncio.run(call(**token, origin="https://other.example.com")).status_code == 403
    assert asyncio.run(call(**token, host="other.lan")).status_code == 400
    big = [{"role": "user", "content": "a" * 5000}]
    assert asyncio.run(call(big, **token)).status_code == 413


def test_the_cli_defaults_are_the_servers_defaults():
    from omni_agent.cli.serve_thinker import serve_thinker
    from omni_agent.server.thinker_server import ThinkerServerLimits

    cli = {p.name: p.default for p in serve_thinker.params}
    for name in ("max_body_bytes", "max_prompt_chars"):
        assert cli[name] == ThinkerServerLimits.model_fields[name].default, name
