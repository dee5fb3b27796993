"""The web-safety layer every omni-agent server shares (agent, Thinker and Talker servers).

Two halves, both configured by pydantic models:

* :class:`WebSecurity` — ASGI middleware for the app: a ``Host`` allow-list (DNS
  rebinding), an ``Origin`` check for WebSocket handshakes and state-changing requests
  (cross-site pages), refusal of cross-site "simple" form/text POSTs (415), an optional
  bearer token, security headers (CSP and friends) and a body-size limit (413, counted while
  the body streams in). Apply it to a Starlette app with :func:`security_middleware`, or wrap
  any ASGI app with :func:`secure_app`::

      sec = WebSecurity(token="s3cret", bind_host="0.0.0.0", allowed_hosts=["box.lan"])
      app = Starlette(routes=routes, middleware=security_middleware(sec))

* :class:`ServerLimits` — what uvicorn itself must bound: concurrent connections,
  keep-alive, header size, and a header-read timeout against slowloris (uvicorn has none:
  https://github.com/Kludex/uvicorn/issues/157), enforced by a small guard mixed into
  uvicorn's HTTP protocol class. :func:`uvicorn_config` builds a ``uvicorn.Config`` with
  them and installs :class:`RedactTokens` so ``?token=`` never reaches the logs::

      config = uvicorn_config(app, host="127.0.0.1", port=8000, limits=ServerLimits())
      uvicorn.Server(config).run()

:func:`parse_json` parses a request body with a nesting-depth bound (a 100k-deep array is a
400, not a RecursionError and a 500).

Every refusal is JSON shaped like OpenAI's errors, so OpenAI clients and our own read it::

    {"error": {"message": "...what to do...", "type": "invalid_request_error",
               "param": null, "code": "origin_not_allowed"}}
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Sequence
from urllib.parse import parse_qsl, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "WebSecurity",
    "ServerLimits",
    "security_middleware",
    "secure_app",
    "uvicorn_config",
    "install_log_redaction",
    "RedactTokens",
    "parse_json",
    "InvalidJSON",
    "error_body",
    "token_matches",
    "LOOPBACK_HOSTS",
    "DEFAULT_CSP",
    "DEFAULT_MAX_BODY_BYTES",
    "HostAllowList",
    "OriginCheck",
    "BearerToken",
    "SecurityHeaders",
    "BodySizeLimit",
]

log = logging.getLogger(__name__)

#: Host names that always reach this machine (a DNS-rebinding page cannot be served from them).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
#: Body limit used when neither the settings nor the server say otherwise.
DEFAULT_MAX_BODY_BYTES = 1 << 20
#: A policy for same-origin pages: scripts, styles and workers only from this server (no
#: inline code), WebSockets back to it (``ws:``/``wss:`` because older browsers do not
#: count them as ``'self'``), Web Audio playback from ``blob:`` media, no framing.
DEFAULT_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "media-src 'self' blob:; connect-src 'self' ws: wss:; worker-src 'self' blob:; "
               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# What a cross-site <form> or a CORS-"simple" fetch can send without a preflight.
_SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
_WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "*"})
_TOKEN_SUBPROTOCOL = "bearer."


def error_body(message: str, code: str, *, kind: str = "invalid_request_error",
               param: str | None = None) -> dict[str, Any]:
    """The JSON error every refusal here carries (OpenAI's shape, with a string ``code``)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time token comparison (``hmac.compare_digest`` over UTF-8 bytes)."""
    return given is not None and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _host_name(host: str) -> str:
    """'[::1]' stays bracketed (as Starlette parses a Host header); a bare '::1' gets them."""
    host = host.strip().lower()
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def _is_loopback(hostname: str) -> bool:
    name = hostname.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True  # browsers resolve *.localhost to loopback themselves (RFC 6761)
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------- settings


class WebSecurity(BaseModel):
    """What an omni-agent server lets in over HTTP and WebSocket.

    * ``allowed_hosts`` — ``Host`` names accepted besides the loopback names
      (:data:`LOOPBACK_HOSTS`), the ``bind_host`` and the address the connection arrived on.
      ``"*.example.com"`` matches subdomains; ``"*"`` turns the check off (not advised).
    * ``bind_host`` — the interface the server listens on (a wildcard like ``0.0.0.0``
      adds nothing: name the hosts clients use in ``allowed_hosts``).
    * ``allowed_origins`` — browser ``Origin``\\ s (``"https://app.example.com"``) that may
      open WebSockets and send POST/PUT/PATCH/DELETE, besides loopback origins and the
      server's own origin. Requests without ``Origin`` (curl, SDKs) are not affected.
      ``"*"`` allows any origin (not advised).
    * ``token`` — when set, requests need ``Authorization: Bearer <token>``; a WebSocket may
      also give ``?token=`` or the subprotocol ``bearer.<token>`` (offer ``bearer`` too, and
      the server answers with it). ``public_paths`` need none (an entry ending in ``/``
      is a prefix). ``query_token`` accepts ``?token=`` on plain HTTP too (for pages opened
      from a link).
    * ``max_body_bytes`` — largest request body (413 beyond); ``None``: the server's default.
    * ``refuse_simple_posts`` — answer 415 to state-changing requests whose content type a
      cross-site form can send (``text/plain``, form-encoded, multipart).
    * ``security_headers`` / ``content_security_policy`` — add ``X-Content-Type-Options``,
      ``X-Frame-Options``, ``Referrer-Policy`` and this CSP to every response (a response
      that sets its own keeps it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_hosts: list[str] = Field(default_factory=list)
    bind_host: str | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    token: SecretStr | None = None
    public_paths: list[str] = Field(default_factory=lambda: ["/health"])
    query_token: bool = False
    max_body_bytes: int | None = Field(default=None, ge=1)
    refuse_simple_posts: bool = True
    security_headers: bool = True
    content_security_policy: str = DEFAULT_CSP

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        out = []
        for h in v:
            h = h.strip()
            if not h or "/" in h or (h != "*" and "*" in h[1:]) or (h.startswith("*") and h != "*"
                                                                     and not h.startswith("*.")):
                raise ValueError(f"allowed host {h!r} must be a host name like 'box.lan', "
                                 "'10.0.0.5' or '*.example.com' (no scheme or path; a port is ignored)")
            out.append(h if h.startswith("*") else _host_name(_strip_port(h)))
        return out

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for o in v:
            o = o.strip().rstrip("/").lower()
            if o == "*":
                out.append(o)
                continue
            parts = urlsplit(o)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path \
                    or parts.query or parts.fragment:
                raise ValueError(f"allowed origin {o!r} must look like 'https://app.example.com' "
                                 "or 'http://10.0.0.5:3000' (scheme, host, optional port; no path)")
            out.append(f"{parts.scheme}://{parts.netloc}")
        return out

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return v
        raw = v.get_secret_value()
        if not raw.strip() or raw != raw.strip() or any(c.isspace() for c in raw):
            raise ValueError("token must be non-empty and contain no spaces: give a real token "
                             "or leave it out (no auth)")
        return v

    def hosts(self) -> list[str]:
        """Every Host name this server accepts (loopback, bind host, ``allowed_hosts``)."""
        names = list(LOOPBACK_HOSTS)
        if self.bind_host and self.bind_host.strip().lower() not in _WILDCARD_BINDS:
            names.append(_host_name(self.bind_host))
        names += self.allowed_hosts
        return list(dict.fromkeys(names))


class ServerLimits(BaseModel):
    """Limits uvicorn enforces per connection (see :func:`uvicorn_config`).

    * ``limit_concurrency`` — connections plus running requests before uvicorn answers 503.
    * ``timeout_keep_alive`` — seconds an idle kept-alive connection stays open.
    * ``header_timeout`` — seconds a client has to send a complete request head, from the
      moment it connects (or starts its next request on a kept-alive connection); then the
      server answers 408 and closes (slowloris).
    * ``max_header_bytes`` — largest request head (431 beyond; h11's own limit too).
    * ``max_pending_connections`` / ``max_pending_per_client`` — connections still sending
      their request head, in all and per client address; more are answered 503 and closed
      at once. Behind a reverse proxy every client has the proxy's address: raise or unset
      the per-client bound there.
    * ``http`` — uvicorn's HTTP parser (``auto``: httptools when installed, else h11).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit_concurrency: int | None = Field(default=256, ge=1)
    timeout_keep_alive: int = Field(default=5, ge=1)
    header_timeout: float = Field(default=10.0, gt=0)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    max_pending_connections: int = Field(default=128, ge=1)
    max_pending_per_client: int | None = Field(default=32, ge=1)
    http: Literal["auto", "h11", "httptools"] = "auto"

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config`` carrying these limits (including a
        header-guarded HTTP protocol class made for this one server)."""
        return {"limit_concurrency": self.limit_concurrency,
                "timeout_keep_alive": self.timeout_keep_alive,
                "h11_max_incomplete_event_size": self.max_header_bytes,
                "http": guarded_http_protocol(self)}


# ---------------------------------------------------------------------------- JSON bodies


class InvalidJSON(Exception):
    """A request body that is not acceptable JSON (``status`` 400); the message says why."""

    status = 400


def _refuse_constant(name: str) -> Any:
    raise InvalidJSON(f"the request body is not valid JSON: {name} is not a JSON number")


def parse_json(body: bytes | str, *, max_depth: int = 64) -> Any:
    """Parse a JSON request body, refusing nesting deeper than ``max_depth`` levels and
    NaN/Infinity (not JSON). Raises :class:`InvalidJSON` with a message for the client.

    >>> parse_json(b'{"a": [1, 2]}')
    {'a': [1, 2]}
    """
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise InvalidJSON(f"the request body is nested too deeply (at most {max_depth} levels "
                          "of arrays and objects)") from None
    except UnicodeDecodeError as e:
        raise InvalidJSON(f"the request body is not valid UTF-8 JSON: {e}") from None
    except ValueError as e:
        raise InvalidJSON(f"the request body is not valid JSON: {e}") from None
    # Walk without recursion: the C decoder allows ~1000 levels, our code wants far fewer.
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise InvalidJSON(f"the request body is nested too deeply (at most {max_depth} "
                                  "levels of arrays and objects)")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return data


# ---------------------------------------------------------------------------- ASGI middleware


async def _refuse(scope: Scope, send: Send, status: int, code: str, message: str,
                  headers: dict[str, str] | None = None) -> None:
    """Answer an HTTP request, or deny a WebSocket handshake, with a JSON error."""
    body = json.dumps(error_body(message, code)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if scope["type"] == "websocket":
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": status, "headers": raw})
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # the server cannot send a body: closing before accept answers 403
            reason = message.encode()[:120].decode("utf-8", "ignore")  # a close reason: <= 123 bytes
            await send({"type": "websocket.close", "code": 1008, "reason": reason})
        return
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class HostAllowList:
    """Refuse requests whose ``Host`` is not allowed (DNS rebinding), with a JSON 400.

    Starlette's :class:`TrustedHostMiddleware` decides; this wrapper words the refusal and
    also accepts the address the connection arrived on (``scope["server"]``: an IP literal
    under a real server, which a rebinding page cannot forge).
    """

    _PASSED = "omni_agent.host_ok"

    def __init__(self, app: ASGIApp, allowed_hosts: Sequence[str]):
        self.app = app
        self.allowed = list(allowed_hosts)
        self._trusted = TrustedHostMiddleware(self._passed, allowed_hosts=self.allowed,
                                              www_redirect=False)

    async def _passed(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope[self._PASSED] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        server = scope.get("server")
        if server and _strip_port(host) == _host_name(str(server[0])):
            await self._passed(scope, receive, send)
            return
        refused = False

        async def guard(message: Message) -> None:
            nonlocal refused
            if scope.get(self._PASSED):
                await send(message)
                return
            if not refused:  # TrustedHostMiddleware's plain-text refusal: say it in JSON
                refused = True
                shown = host[:100] or "(none)"
                await _refuse(scope, send, 400, "host_not_allowed",
                              f"the Host header {shown!r} is not allowed here (DNS-rebinding "
                              "protection): connect through 127.0.0.1/localhost, or start the "
                              "server with --allow-host NAME for each name clients use")

        await self._trusted(scope, receive, guard)


def _strip_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class OriginCheck:
    """Keep other web pages out: WebSocket handshakes and POST/PUT/PATCH/DELETE that carry an
    ``Origin`` must come from loopback, from the server's own origin or from
    ``allowed_origins`` (403 otherwise; ``Origin: null`` too). Requests without ``Origin``
    (non-browser clients) pass. With ``refuse_simple_posts`` a state-changing request with
    a form or ``text/plain`` content type gets 415: a JSON API never takes one, and it is
    what a cross-site form can send without a CORS preflight.
    """

    def __init__(self, app: ASGIApp, allowed_origins: Sequence[str] = (), *,
                 refuse_simple_posts: bool = True):
        self.app = app
        self.allowed = frozenset(allowed_origins)
        self.allow_any = "*" in self.allowed
        self.refuse_simple_posts = refuse_simple_posts

    def origin_allowed(self, origin: str, host: str) -> bool:
        """Whether a request to ``host`` (its Host header) may come from page ``origin``."""
        if self.allow_any:
            return True
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (sandboxed frames, file: pages) and other schemes
        if _is_loopback(parts.hostname):
            return True
        if parts.netloc == host.strip().lower():
            return True  # same origin: the page this server served
        return f"{parts.scheme}://{parts.netloc}" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" or (kind == "http" and scope["method"] in _STATE_CHANGING):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self.origin_allowed(origin, headers.get("host", "")):
                await _refuse(scope, send, 403, "origin_not_allowed",
                              f"requests from the web page at {origin[:100]!r} are not allowed: "
                              "only this server's own pages and loopback pages may call it "
                              "(start the server with --allow-origin ORIGIN to allow one)")
                return
            if kind == "http" and self.refuse_simple_posts:
                ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if ctype in _SIMPLE_TYPES:
                    await _refuse(scope, send, 415, "unsupported_media_type",
                                  f"Content-Type {ctype!r} is not accepted: send the body as "
                                  "JSON with 'Content-Type: application/json' (or as raw data "
                                  "with its own media type)")
                    return
        await self.app(scope, receive, send)


class BearerToken:
    """Require ``Authorization: Bearer <token>`` (401 otherwise), compared in constant time.

    A WebSocket may give the token as ``?token=`` or as the subprotocol ``bearer.<token>``
    (browsers cannot set headers on one); that subprotocol is removed from the scope before
    the app sees it, and when the client also offered ``bearer`` the handshake answers with
    it. ``public_paths`` pass without a token (an entry ending in ``/`` is a prefix).
    """

    def __init__(self, app: ASGIApp, token: str, *, public_paths: Sequence[str] = ("/health",),
                 query_token: bool = False):
        self.app = app
        self.token = token
        self.exact = frozenset(p for p in public_paths if not p.endswith("/") or p == "/")
        self.prefixes = tuple(p for p in public_paths if p.endswith("/") and p != "/")
        self.query_token = query_token

    def _public(self, path: str) -> bool:
        return path in self.exact or path.startswith(self.prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or self._public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        auth = headers.get("authorization", "")
        given: str | None = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if given is None and (kind == "websocket" or self.query_token):
            for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1")):
                if k == "token":
                    given = v
                    break
        offered_bearer = False
        if kind == "websocket":
            protocols = list(scope.get("subprotocols") or [])
            mine = [p for p in protocols if p.startswith(_TOKEN_SUBPROTOCOL)]
            if mine:
                scope = dict(scope, subprotocols=[p for p in protocols if p not in mine])
                if given is None:
                    given = mine[0][len(_TOKEN_SUBPROTOCOL):]
            offered_bearer = "bearer" in protocols
        if not token_matches(given, self.token):
            await _refuse(scope, send, 401, "unauthorized",
                          "missing or wrong token: send the header 'Authorization: Bearer "
                          "<token>' with the server's token"
                          + (" (a WebSocket may use ?token=<token>)" if kind == "websocket" else ""),
                          headers={"WWW-Authenticate": "Bearer"})
            return
        if offered_bearer:
            async def answer_bearer(message: Message) -> None:
                if message["type"] == "websocket.accept" and not message.get("subprotocol"):
                    message = dict(message, subprotocol="bearer")
                await send(message)

            await self.app(scope, receive, answer_bearer)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Add ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
    ``Referrer-Policy: no-referrer`` and a ``Content-Security-Policy`` to every HTTP
    response that does not set its own."""

    def __init__(self, app: ASGIApp, csp: str = DEFAULT_CSP):
        self.app = app
        self.headers = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                        (b"referrer-policy", b"no-referrer")]
        if csp:
            self.headers.append((b"content-security-policy", csp.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                have = {k.lower() for k, _ in raw}
                raw += [(k, v) for k, v in self.headers if k not in have]
                message = dict(message, headers=raw)
            await send(message)

        await self.app(scope, receive, with_headers)


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with a JSON 413: at once when
    ``Content-Length`` says so, else as soon as the streamed body passes the limit (a
    missing or lying ``Content-Length`` changes nothing). The app reading the body sees an
    exception, which this middleware turns into the 413 (and closes the connection)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self, size: str) -> str:
        return (f"the request body is {size}; at most {self.max_bytes} bytes are accepted: "
                "send less (shorter text, smaller media)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            # No "Connection: close": closing on unread upload bytes resets the socket, and
            # the client would see a connection error instead of this answer. The server
            # decides itself whether the connection can be kept.
            await _refuse(scope, send, 413, "request_too_large", self._message(f"{declared} bytes"))
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge:
            if not started:
                await _refuse(scope, send, 413, "request_too_large",
                              self._message(f"over {self.max_bytes} bytes"))


def _layers(security: WebSecurity, default_max_body_bytes: int) -> list[tuple[Callable[..., Any], dict[str, Any]]]:
    """The layers, outermost first: headers on every answer, then Host, Origin, token, size."""
    out: list[tuple[Callable[..., Any], dict[str, Any]]] = []
    if security.security_headers:
        out.append((SecurityHeaders, {"csp": security.content_security_policy}))
    if "*" not in security.allowed_hosts:
        out.append((HostAllowList, {"allowed_hosts": security.hosts()}))
    out.append((OriginCheck, {"allowed_origins": security.allowed_origins,
                              "refuse_simple_posts": security.refuse_simple_posts}))
    if security.token is not None:
        out.append((BearerToken, {"token": security.token.get_secret_value(),
                                  "public_paths": security.public_paths,
                                  "query_token": security.query_token}))
    out.append((BodySizeLimit, {"max_bytes": security.max_body_bytes or default_max_body_bytes}))
    return out


def security_middleware(security: WebSecurity | None = None, *,
                        default_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> list[Middleware]:
    """The layers of ``security`` as Starlette middleware, in order::

        Starlette(routes=..., middleware=security_middleware(WebSecurity(token="t")))

    ``default_max_body_bytes`` is the server's own body limit, used when
    ``security.max_body_bytes`` is None.
    """
    security = security or WebSecurity()
    return [Middleware(cls, **kw) for cls, kw in _layers(security, default_max_body_bytes)]


def secure_app(app: ASGIApp, security: WebSecurity | None = None, *,
               default_max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> ASGIApp:
    """Wrap any ASGI app in the layers of ``security`` (outside everything the app does, so
    even its crash pages get the headers)."""
    security = security or WebSecurity()
    for cls, kw in reversed(_layers(security, default_max_body_bytes)):
        app = cls(app, **kw)
    return app


# ---------------------------------------------------------------------------- logs


class RedactTokens(logging.Filter):
    """Replace token-like query values (``?token=``, ``access_token``, ``api_key``, ``key``)
    in log records with ``[redacted]`` (uvicorn logs request paths with their query)."""

    _PATTERN = re.compile(r"(?i)([?&](?:token|access_token|api_key|apikey|key)=)[^&\s\"'#]*")

    def _clean(self, value: Any) -> Any:
        return self._PATTERN.sub(r"\1[redacted]", value) if isinstance(value, str) else value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        return True


class RefusedHandshakes(logging.Filter):
    """uvicorn logs every WebSocket handshake an app refuses on purpose (a 403 for a foreign
    Origin, a 400 for a foreign Host) as an ERROR, "returned without completing handshake".
    Here the refusal is the design, answered with a clear error: log it as INFO."""

    _TEXT = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and record.msg == self._TEXT:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "WebSocket handshake refused (the client was told why)"
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


def install_log_redaction(loggers: Sequence[str] = ("uvicorn.access", "uvicorn.error")) -> None:
    """Attach :class:`RedactTokens` to uvicorn's loggers (idempotent). ``uvicorn.error``
    is included because uvicorn logs WebSocket paths, query and all, there; it also gets
    :class:`RefusedHandshakes`."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
    error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, RefusedHandshakes) for f in error.filters):
        error.addFilter(RefusedHandshakes())


# ---------------------------------------------------------------------------- uvicorn


def _raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps(error_body(message, code)).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


if TYPE_CHECKING:
    # What the mixin relies on from its host (loop, transport, client, the asyncio.Protocol
    # callbacks): uvicorn's HTTP protocols share these; h11's stands for them all.
    from uvicorn.protocols.http.h11_impl import H11Protocol as _GuardHost
else:
    _GuardHost = object


class _HeaderGuard(_GuardHost):
    """Mixed into uvicorn's HTTP protocol: bounds how long and how many connections may sit
    before their request head is complete. ``_limits`` and the counters belong to the
    subclass made for one server by :func:`guarded_http_protocol`."""

    _limits: ClassVar[ServerLimits]
    _pending: ClassVar[Counter[str]]
    _pending_total: ClassVar[list[int]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_timer: asyncio.TimerHandle | None = None
        self._guard_waiting = False
        self._guard_bytes = 0
        self._guard_peer = ""

    # -- state

    def _guard_in_request(self) -> bool:
        # A request is in hand while its response is unfinished, or while its body is still
        # arriving (the app may answer early, a 413 say, before the upload is done: those
        # bytes are body, not the next request's head).
        cycle = getattr(self, "cycle", None)
        return cycle is not None and (not cycle.response_complete or getattr(cycle, "more_body", False))

    def _guard_start(self) -> None:
        cls = type(self)
        self._guard_waiting = True
        self._guard_bytes = 0
        cls._pending[self._guard_peer] += 1
        cls._pending_total[0] += 1
        self._guard_timer = self.loop.call_later(cls._limits.header_timeout, self._guard_expired)

    def _guard_stop(self) -> None:
        if self._guard_timer is not None:
            self._guard_timer.cancel()
            self._guard_timer = None
        if self._guard_waiting:
            cls = type(self)
            self._guard_waiting = False
            cls._pending_total[0] -= 1
            cls._pending[self._guard_peer] -= 1
            if cls._pending[self._guard_peer] <= 0:
                del cls._pending[self._guard_peer]

    def _guard_close(self, raw: bytes) -> None:
        self._guard_stop()
        transport = self.transport
        if not transport.is_closing():
            transport.write(raw)
            transport.close()

    def _guard_expired(self) -> None:
        self._guard_timer = None
        log.debug("closing %s: no complete request head in %.1f s", self._guard_peer,
                  self._limits.header_timeout)
        self._guard_close(_raw_response(408, "Request Timeout", "header_timeout",
                                        f"the request head did not arrive within "
                                        f"{self._limits.header_timeout:g} s"))

    # -- asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        cls = type(self)
        limits = cls._limits
        self._guard_peer = self.client[0] if self.client else ""
        per_client = limits.max_pending_per_client
        if cls._pending_total[0] >= limits.max_pending_connections or (
                per_client is not None and cls._pending[self._guard_peer] >= per_client):
            log.debug("refusing a connection from %s: too many unfinished requests", self._guard_peer)
            transport.write(_raw_response(503, "Service Unavailable", "too_many_connections",
                                          "too many connections are still sending their request: "
                                          "try again shortly"))
            transport.close()
            return
        self._guard_start()

    def data_received(self, data: bytes) -> None:
        if not self._guard_waiting and not self._guard_in_request() and not self.transport.is_closing():
            self._guard_start()  # the next request on a kept-alive connection
        if self._guard_waiting:
            self._guard_bytes += len(data)
        super().data_received(data)
        if self._guard_waiting:
            if self._guard_in_request():
                self._guard_stop()
            elif self._guard_bytes > self._limits.max_header_bytes:
                self._guard_close(_raw_response(431, "Request Header Fields Too Large",
                                                "headers_too_large",
                                                f"the request head is over "
                                                f"{self._limits.max_header_bytes} bytes"))

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._guard_stop()  # the WebSocket protocol takes over the connection
        super().handle_websocket_upgrade(*args)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard_stop()
        super().connection_lost(exc)


def guarded_http_protocol(limits: ServerLimits) -> type:
    """uvicorn's HTTP protocol class (per ``limits.http``) with the header guard mixed in.
    Each call makes a new class with its own counters: use one per server."""
    base: type[asyncio.Protocol]
    if limits.http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    elif limits.http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    else:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol as base
    return type(f"Guarded{base.__name__}", (_HeaderGuard, base),
                {"_limits": limits, "_pending": Counter(), "_pending_total": [0]})


def uvicorn_config(app: Any, *, host: str = "127.0.0.1", port: int = 8000,
                   limits: ServerLimits | None = None, **kwargs: Any) -> Any:
    """A ``uvicorn.Config`` for ``app`` with ``limits`` applied and token redaction in the
    logs; other keyword arguments go to ``uvicorn.Config`` (they win over the limits)."""
    import uvicorn

    options = (limits or ServerLimits()).uvicorn_kwargs()
    options.update(kwargs)
    config = uvicorn.Config(app, host=host, port=port, **options)
    install_log_redaction()  # after Config: it (re)configures uvicorn's loggers
    return config
