"""The shared web-safety layer (omni_agent.server.security) on a small Starlette app: Host
allow-list, Origin check, token, headers, body limit, JSON depth, log redaction, and the
uvicorn guard against slow-header connections (real uvicorn on 127.0.0.1)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from omni_agent.server.security import (
    InvalidJSON,
    RedactTokens,
    ServerLimits,
    WebSecurity,
    parse_json,
    secure_app,
    security_middleware,
    uvicorn_config,
)


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


async def live(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_text("welcome")
    await ws.close()


ROUTES = [Route("/echo", echo, methods=["POST", "PUT", "DELETE"]), Route("/", hello),
          Route("/health", hello), WebSocketRoute("/live", live)]


def make_app(security: WebSecurity | None = None, **kw) -> Starlette:
    return Starlette(routes=ROUTES, middleware=security_middleware(security, **kw))


async def call(app, method: str = "GET", path: str = "/", **kw) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
        return await c.request(method, path, **kw)


def error_code(resp: httpx.Response) -> str:
    err = resp.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    return err["code"]


@contextlib.contextmanager
def real_server(app, limits: ServerLimits | None = None, **kw):
    """uvicorn on 127.0.0.1 (a free port) in a thread, built by uvicorn_config."""
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, host="127.0.0.1", port=0, limits=limits,
                                           log_level="warning", lifespan="off", **kw))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield server, port
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------------------- Host


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8765", "[::1]:8000", "LOCALHOST"])
async def test_loopback_host_names_pass(host):
    assert (await call(make_app(), headers={"host": host})).status_code == 200


async def test_a_rebinding_host_name_is_refused_with_a_json_400_that_says_what_to_do():
    resp = await call(make_app(), headers={"host": "evil.example:8000"})
    assert resp.status_code == 400 and error_code(resp) == "host_not_allowed"
    assert "--allow-host" in resp.json()["error"]["message"]


async def test_the_bind_host_and_allowed_hosts_pass():
    app = make_app(WebSecurity(bind_host="10.0.0.5", allowed_hosts=["box.lan", "*.corp.example"]))
    for host in ("10.0.0.5:8000", "box.lan", "a.corp.example:1"):
        assert (await call(app, headers={"host": host})).status_code == 200, host
    assert (await call(app, headers={"host": "corp.example.evil"})).status_code == 400


async def test_a_wildcard_bind_adds_no_host_name():
    app = make_app(WebSecurity(bind_host="0.0.0.0"))
    assert (await call(app, headers={"host": "0.0.0.0:8000"})).status_code == 400


def test_bad_allowed_hosts_and_origins_are_config_errors_that_say_the_form():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="host name like"):
        WebSecurity(allowed_hosts=["http://box.lan/"])
    with pytest.raises(ValidationError, match="https://app.example.com"):
        WebSecurity(allowed_origins=["app.example.com"])
    with pytest.raises(ValidationError, match="token"):
        WebSecurity(token="  ")


# ---------------------------------------------------------------------------- Origin


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://127.0.0.1.evil.example",
                                    "file://", "chrome-extension://abc"])
async def test_a_post_from_another_page_is_refused_with_403(origin):
    resp = await call(make_app(), "POST", "/echo", json={}, headers={"origin": origin})
    assert resp.status_code == 403 and error_code(resp) == "origin_not_allowed"


@pytest.mark.parametrize("origin", [None, "http://127.0.0.1:5173", "http://localhost:3000",
                                    "http://[::1]:8000", "http://127.0.0.1:8000"])
async def test_posts_without_origin_or_from_loopback_pages_pass(origin):
    headers = {"origin": origin} if origin else {}
    assert (await call(make_app(), "POST", "/echo", json={}, headers=headers)).status_code == 200


async def test_the_servers_own_origin_and_allowed_origins_pass():
    app = make_app(WebSecurity(allowed_hosts=["box.lan"], allowed_origins=["https://app.example.com"]))
    own = await call(app, "PUT", "/echo", json={}, headers={"host": "box.lan", "origin": "http://box.lan"})
    allowed = await call(app, "DELETE", "/echo", headers={"origin": "https://APP.example.com"})
    other_port = await call(app, "POST", "/echo", json={}, headers={"origin": "https://app.example.com:444"})
    assert (own.status_code, allowed.status_code, other_port.status_code) == (200, 200, 403)


async def test_reading_pages_is_not_an_origin_matter():
    assert (await call(make_app(), headers={"origin": "https://evil.example"})).status_code == 200


@pytest.mark.parametrize("ctype", ["text/plain", "text/plain;charset=UTF-8",
                                   "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
async def test_posts_a_cross_site_form_could_send_get_415(ctype):
    resp = await call(make_app(), "POST", "/echo", content=b"{}", headers={"content-type": ctype})
    assert resp.status_code == 415 and "application/json" in resp.json()["error"]["message"]


async def test_json_and_raw_media_posts_pass_the_content_type_check():
    app = make_app()
    for ctype in ("application/json", "audio/wav", "application/octet-stream"):
        assert (await call(app, "POST", "/echo", content=b"{}", headers={"content-type": ctype})).status_code == 200


def test_websocket_handshakes_from_other_pages_are_refused_before_accept():
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with real_server(make_app()) as (_, port):
        url = f"ws://127.0.0.1:{port}/live"
        with connect(url) as ws:  # no Origin: a non-browser client
            assert ws.recv() == "welcome"
        with connect(url, origin="http://localhost:3000") as ws:
            assert ws.recv() == "welcome"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        assert b"origin_not_allowed" in refused.value.response.body


# ---------------------------------------------------------------------------- token


async def test_with_a_token_only_requests_that_carry_it_pass():
    app = make_app(WebSecurity(token="s3cret"))
    anon = await call(app, "POST", "/echo", json={})
    wrong = await call(app, "POST", "/echo", json={}, headers={"authorization": "Bearer nope"})
    right = await call(app, "POST", "/echo", json={}, headers={"authorization": "bearer s3cret"})
    unicode = await call(app, "POST", "/echo", json={}, headers={"authorization": "Bearer s3cr\u00e9t".encode()})
    in_query = await call(app, "POST", "/echo?token=s3cret", json={})
    assert anon.status_code == 401 and anon.headers["www-authenticate"] == "Bearer"
    assert error_code(anon) == "unauthorized"
    assert (wrong.status_code, right.status_code, unicode.status_code) == (401, 200, 401)
    assert in_query.status_code == 401  # plain HTTP takes the header unless query_token


async def test_public_paths_need_no_token_and_prefixes_end_in_a_slash():
    app = make_app(WebSecurity(token="s3cret", public_paths=["/", "/static/"], query_token=True))
    assert (await call(app, "GET", "/")).status_code == 200
    assert (await call(app, "GET", "/health")).status_code == 401
    assert (await call(app, "POST", "/echo?token=s3cret", json={})).status_code == 200


def test_a_websocket_may_give_the_token_as_query_or_subprotocol():
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with real_server(make_app(WebSecurity(token="s3cret"))) as (_, port):
        url = f"ws://127.0.0.1:{port}/live"
        with connect(url + "?token=s3cret") as ws:
            assert ws.recv() == "welcome"
        with connect(url, subprotocols=["bearer", "bearer.s3cret"]) as ws:
            assert ws.subprotocol == "bearer" and ws.recv() == "welcome"
        with connect(url, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert ws.recv() == "welcome"
        with pytest.raises(InvalidStatus) as refused:
            connect(url + "?token=wrong")
        assert refused.value.response.status_code == 401


# ---------------------------------------------------------------------------- headers


async def test_every_answer_carries_the_security_headers_refusals_too():
    app = make_app(WebSecurity(token="t"))
    for resp in (await call(app, "GET", "/health"), await call(app, "POST", "/echo", json={}),
                 await call(app, "GET", "/missing")):
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["x-frame-options"] == "DENY"
        assert resp.headers["referrer-policy"] == "no-referrer"
        csp = resp.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp
        assert "frame-ancestors 'none'" in csp


def test_the_voice_page_needs_nothing_the_policy_forbids():
    """The CSP allows scripts, styles and worklets only from 'self' and no inline code:
    the agent server's page must keep its code in files."""
    import omni_agent.server

    static = Path(omni_agent.server.__file__).parent / "static"
    html = (static / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and not re.search(r"\sstyle=", html), "inline style"
    assert not re.search(r"\son[a-z]+=", html), "inline event handler"
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src.startswith("/"), f"{src} is not same-origin"
    js = (static / "app.js").read_text()
    assert "eval(" not in js and "new Function" not in js
    assert not re.search(r"style=\\?[\"']", js), "inline style attribute written by the script"


async def test_a_response_that_sets_its_own_policy_keeps_it():
    async def framed(request):
        return PlainTextResponse("x", headers={"X-Frame-Options": "SAMEORIGIN"})

    app = Starlette(routes=[Route("/", framed)], middleware=security_middleware())
    assert (await call(app)).headers["x-frame-options"] == "SAMEORIGIN"


# ---------------------------------------------------------------------------- body size


async def test_a_declared_body_over_the_limit_is_refused_before_it_is_read():
    resp = await call(make_app(WebSecurity(max_body_bytes=1000)), "POST", "/echo",
                      content=b"x" * 1001, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and error_code(resp) == "request_too_large"
    assert "1000 bytes" in resp.json()["error"]["message"]


async def test_a_body_with_a_lying_content_length_is_cut_off_while_it_streams():
    seen = []

    async def lying(scope, receive, send):
        # Says 10 bytes, then keeps sending: the limit counts what arrives.
        scope = dict(scope, headers=[(b"host", b"127.0.0.1"), (b"content-length", b"10")])
        chunks = iter([b"x" * 600, b"x" * 600, b"x" * 600])

        async def more():
            chunk = next(chunks, None)
            seen.append(chunk)
            return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

        await inner(scope, more, send)

    inner = make_app(WebSecurity(max_body_bytes=1000))
    resp = await call(lying, "POST", "/echo")
    assert resp.status_code == 413
    assert len(seen) == 2  # it stopped reading at the chunk that passed the limit


def test_a_chunked_body_over_the_limit_gets_413_from_a_real_server():
    def body():
        for _ in range(50):
            yield b"x" * 100_000

    with real_server(make_app(WebSecurity(max_body_bytes=1_000_000))) as (_, port):
        resp = httpx.post(f"http://127.0.0.1:{port}/echo", content=body(),
                          headers={"content-type": "application/json"}, timeout=30)
        small = httpx.post(f"http://127.0.0.1:{port}/echo", content=b"{}", timeout=30)
    assert resp.status_code == 413 and small.json() == {"bytes": 2}


async def test_secure_app_wraps_any_asgi_app_with_the_same_layers():
    app = secure_app(Starlette(routes=ROUTES), WebSecurity(max_body_bytes=10))
    assert (await call(app, headers={"host": "evil.example"})).status_code == 400
    assert (await call(app, "POST", "/echo", content=b"x" * 11)).status_code == 413
    assert (await call(app)).headers["x-frame-options"] == "DENY"


# ---------------------------------------------------------------------------- JSON


def test_json_nested_100k_deep_is_refused_not_a_recursion_error():
    with pytest.raises(InvalidJSON, match="nested too deeply"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(InvalidJSON, match="at most 8 levels"):
        parse_json(json.dumps({"a": [[[[[[[[1]]]]]]]]}), max_depth=8)
    assert parse_json(b'{"a": [[1], {"b": 2}]}') == {"a": [[1], {"b": 2}]}


@pytest.mark.parametrize("raw", [b'{"t": NaN}', b'[Infinity]', b'{"a": 1', b'\xff\xfe'])
def test_not_quite_json_is_refused(raw):
    with pytest.raises(InvalidJSON, match="not valid"):
        parse_json(raw)


# ---------------------------------------------------------------------------- logs


def test_tokens_in_query_strings_never_reach_the_access_log():
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep()
    with real_server(make_app(WebSecurity(token="s3cret", query_token=True)), access_log=True) as (_, port):
        access = logging.getLogger("uvicorn.access")
        access.addHandler(handler)
        level = access.level
        access.setLevel(logging.INFO)
        try:
            httpx.post(f"http://127.0.0.1:{port}/echo?token=s3cret&x=1", json={})
            httpx.post(f"http://127.0.0.1:{port}/echo?access_token=s3cret", json={})
        finally:
            access.removeHandler(handler)
            access.setLevel(level)
    assert len(records) == 2
    assert all("s3cret" not in r for r in records) and "token=[redacted]&x=1" in records[0]


def test_the_redaction_filter_also_cleans_preformatted_messages():
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0,
                               'WebSocket /v1/live?session_id=a&token=abc%20d "accepted"', None, None)
    RedactTokens().filter(record)
    assert record.getMessage() == 'WebSocket /v1/live?session_id=a&token=[redacted] "accepted"'


# ---------------------------------------------------------------------------- uvicorn limits


def test_uvicorn_config_carries_the_limits():
    import uvicorn

    config = uvicorn_config(make_app(), host="127.0.0.1", port=0,
                            limits=ServerLimits(limit_concurrency=5, timeout_keep_alive=3,
                                                max_header_bytes=4096, header_timeout=2))
    assert isinstance(config, uvicorn.Config)
    assert (config.limit_concurrency, config.timeout_keep_alive,
            config.h11_max_incomplete_event_size) == (5, 3, 4096)
    assert config.http._limits.header_timeout == 2


def _slow_client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")  # never finished
    return s


def _closed_by_server(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("http", ["h11", "httptools"])
def test_300_slow_header_connections_are_bounded_in_number_and_time(http):
    pytest.importorskip(http)
    limits = ServerLimits(header_timeout=1.0, max_pending_connections=50,
                          max_pending_per_client=None, http=http)
    with real_server(make_app(), limits) as (server, port):
        t0 = time.monotonic()
        clients = [_slow_client(port) for _ in range(300)]
        time.sleep(0.3)
        held = len(server.server_state.connections)
        assert held <= 50  # the rest were answered 503 and closed at once
        # one trickles a header line now and then: the deadline still holds
        trickler = clients[0]
        for _ in range(4):
            with contextlib.suppress(OSError):
                trickler.sendall(b"X-More: 1\r\n")
            time.sleep(0.2)
        closed = sum(_closed_by_server(c, max(0.1, 3.0 - (time.monotonic() - t0))) for c in clients)
        elapsed = time.monotonic() - t0
        for c in clients:
            c.close()
        assert closed == 300 and elapsed < 4.0
        # and the server still answers normal requests
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout():
    with real_server(make_app(), ServerLimits(header_timeout=0.5)) as (_, port):
        idle = socket.create_connection(("127.0.0.1", port))
        assert _closed_by_server(idle, 3.0)
        idle.close()


def test_slow_connections_from_one_client_cannot_take_every_slot():
    limits = ServerLimits(header_timeout=5.0, max_pending_per_client=10)
    with real_server(make_app(), limits) as (server, port):
        clients = [_slow_client(port) for _ in range(30)]
        time.sleep(0.3)
        refused = [c for c in clients if _closed_by_server(c, 0.2)]
        assert len(refused) == 20
        for c in clients:
            c.close()


def test_an_oversized_request_head_is_refused():
    with real_server(make_app(), ServerLimits(max_header_bytes=2048, http="httptools")) as (_, port):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Pad: " + b"a" * 4000 + b"\r\n")
        s.settimeout(3)
        answer = s.recv(65536)
        s.close()
    assert answer.startswith(b"HTTP/1.1 431")


def test_kept_alive_connections_and_websockets_are_not_cut_by_the_header_timeout():
    from websockets.sync.client import connect

    async def slow_live(ws: WebSocket) -> None:
        await ws.accept()
        import asyncio

        await asyncio.sleep(1.2)
        await ws.send_text("still here")
        await ws.close()

    app = Starlette(routes=ROUTES + [WebSocketRoute("/slow", slow_live)],
                    middleware=security_middleware())
    with real_server(app, ServerLimits(header_timeout=0.5, timeout_keep_alive=5)) as (_, port):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert client.get("/").text == "hello"
            time.sleep(0.8)  # idle longer than header_timeout, less than keep-alive
            assert client.get("/").text == "hello"
        with connect(f"ws://127.0.0.1:{port}/slow") as ws:
            assert ws.recv(timeout=5) == "still here"
