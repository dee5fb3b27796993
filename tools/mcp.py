"""Tools from MCP servers (the Model Context Protocol), with the official ``mcp`` SDK.

::

    from omni_agent.tools.mcp import MCPSource

    time = MCPSource.stdio("time", sys.executable, ["-m", "mcp_server_time"],
                           tools=["get_current_time"])
    web = MCPSource.http("search", "https://mcp.example.com/mcp", token_env="SEARCH_TOKEN",
                         tools=["*"], return_direct=["lookup"])
    agent = Agent(thinker=..., tools=[current_time, time, web])
    async with agent:                      # the servers run while the agent is entered
        await agent.session().aask("What time is it in Tokyo?")

An :class:`MCPSource` is one server. Its tools (those its allow-list names) are listed when
the server starts and again when it says its list changed, and are put into the agent's
:class:`~omni_agent.tools.registry.ToolRegistry` as ordinary :class:`Tool` objects: the tool
middleware calls them like any other (timeouts, parallel calls, confirmation, fillers, the
trace, errors back to the Thinker, the router for small models).

Ownership: the SDK's client context managers must be entered and left in one task, so each
server has **one owner task** (:meth:`MCPSource.serve`) that holds the session open, lists
the tools, restarts the server after a crash with exponential backoff, and closes it when
its scope is cancelled. The owner runs in the agent's task group (``async with agent``);
calls from turns only send requests over the session the owner holds. See docs/mcp.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from time import monotonic
from types import TracebackType
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from omni_agent.errors import OmniAgentError, ToolError

from .registry import Tool, ToolOutput, ToolRegistry

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

__all__ = ["MCPServerSpec", "MCPSource", "MCPStartError", "MCPTool", "result_text", "result_output"]

log = logging.getLogger(__name__)

#: A server's stderr is kept in a temporary file for error messages; past this size the
#: file is emptied (the owner checks it once a second) so a chatty server cannot fill a disk.
STDERR_LIMIT = 1 << 20
#: How much of the stderr tail an error message quotes.
STDERR_TAIL = 600


class MCPStartError(OmniAgentError):
    """An MCP server could not be started or listed (the message names its command or URL)."""


class MCPServerSpec(BaseModel):
    """One MCP server: a command to launch (stdio) or a URL (streamable HTTP).

    The ``[[mcp]]`` section of a config has the same keys (docs/mcp.md).
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # stdio
    command: str | None = None
    args: list[str] = []
    env: dict[str, str] = {}
    cwd: str | None = None
    # streamable HTTP
    url: str | None = None
    headers: dict[str, str] = {}
    token: str | None = None
    token_env: str | None = None
    # what is exposed, and how
    tools: list[str] | None = None
    prefix: str = ""
    return_direct: list[str] = []
    confirm: list[str] = []
    timeout: float | None = Field(None, gt=0)
    examples: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    # lifecycle and bounds
    start_timeout: float = Field(30.0, gt=0)
    restart_backoff: float = Field(0.5, gt=0)
    restart_backoff_max: float = Field(30.0, gt=0)
    wait_for_restart: float = Field(5.0, ge=0)
    max_result_chars: int = Field(20_000, ge=100)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL: give the server's MCP endpoint, "
                             "e.g. 'http://127.0.0.1:8000/mcp'")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> MCPServerSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError(f"MCP server {self.name!r}: give either command (a local server over "
                             "stdio) or url (a streamable-HTTP server), not both or neither")
        if self.command is not None and (self.headers or self.token or self.token_env):
            raise ValueError(f"MCP server {self.name!r}: headers and tokens are for url servers; "
                             "pass a stdio server's secrets in env")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError(f"MCP server {self.name!r}: args, env and cwd are for command servers")
        if self.token and self.token_env:
            raise ValueError(f"MCP server {self.name!r}: give token or token_env, not both")
        return self

    @property
    def where(self) -> str:
        """The command line or URL, for messages."""
        if self.command is not None:
            return " ".join([self.command, *self.args])
        return self.url or ""

    def http_headers(self) -> dict[str, str]:
        """The headers of every request: ``headers`` plus ``Authorization: Bearer`` from the
        token (read from ``$token_env`` at connect time, so a config need not hold it)."""
        headers = dict(self.headers)
        token = self.token
        if self.token_env:
            token = os.environ.get(self.token_env)
            if not token:
                raise MCPStartError(f"MCP server {self.name!r} ({self.url}): the environment "
                                    f"variable {self.token_env} with its token is not set")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def exposes(self, name: str) -> bool:
        return self.tools is None or "*" in self.tools or name in self.tools


# --------------------------------------------------------------------------- results


def _mcp() -> Any:
    try:
        import mcp
    except ImportError as e:  # pragma: no cover - the extra is missing
        raise OmniAgentError("MCP tools need the mcp SDK: pip install 'omni-agent[mcp]'") from e
    return mcp


def _size(b64: str) -> str:
    n = len(b64) * 3 // 4
    return f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def result_text(result: Any, *, accepts: Iterable[str] = ("text",), limit: int = 20_000) -> str:
    """The text a ``CallToolResult`` becomes for the Thinker.

    Text blocks as they are; structured content as JSON when there is no text; embedded
    text resources as their text; images, audio and binary resources as a one-line summary
    (``[image: image/png, 3.2 KB]``, with ", shown below" when the Thinker ``accepts`` that
    kind: :func:`result_output` then hands it the media too). Cut at ``limit`` characters.
    """
    accepts = set(accepts)
    pieces: list[str] = []
    for block in getattr(result, "content", None) or ():
        kind = getattr(block, "type", "")
        if kind == "text":
            pieces.append(block.text)
        elif kind in ("image", "audio"):
            shown = ", shown below" if kind in accepts and _media_fits(block) else ""
            pieces.append(f"[{kind}: {block.mime_type}, {_size(block.data)}{shown}]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            if text is not None:
                pieces.append(text)
            else:
                pieces.append(f"[resource {res.uri}: {getattr(res, 'mime_type', None) or 'binary'}, "
                              f"{_size(getattr(res, 'blob', ''))}]")
        elif kind == "resource_link":
            label = getattr(block, "name", "") or ""
            pieces.append(f"[link: {block.uri}{' ' + label if label else ''}]")
        else:
            pieces.append(f"[{kind or 'unknown'} content]")
    structured = getattr(result, "structured_content", None)
    if structured is not None and not any(getattr(b, "type", "") == "text"
                                          for b in getattr(result, "content", None) or ()):
        pieces.insert(0, json.dumps(structured, ensure_ascii=False))
    text = "\n".join(p for p in pieces if p) or ("done" if not getattr(result, "is_error", False)
                                                  else "the tool failed and said nothing")
    if len(text) > limit:
        text = text[:limit] + f" … (cut: {len(text) - limit} more characters)"
    return text


#: Media larger than this (decoded) are summarised, never handed to the Thinker.
MAX_MEDIA_BYTES = 8 * 1024 * 1024


def _media_fits(block: Any) -> bool:
    return len(getattr(block, "data", "") or "") * 3 // 4 <= MAX_MEDIA_BYTES


def result_output(result: Any, *, accepts: Iterable[str] = ("text",), limit: int = 20_000) -> ToolOutput:
    """:func:`result_text`, plus the result's images and audio as parts for a Thinker that
    ``accepts`` them (a :class:`~omni_agent.tools.registry.ToolOutput`)."""
    import base64
    import binascii

    from omni_agent.events import AudioPart, ImagePart

    accepts = set(accepts)
    parts: list[Any] = []
    for block in getattr(result, "content", None) or ():
        kind = getattr(block, "type", "")
        if kind not in ("image", "audio") or kind not in accepts or not _media_fits(block):
            continue
        try:
            data = base64.b64decode(block.data, validate=True)
        except (binascii.Error, ValueError, TypeError):
            continue  # not base64: the text summary still says what it was
        cls = ImagePart if kind == "image" else AudioPart
        parts.append(cls(data=data, mime=block.mime_type))
    return ToolOutput(result_text(result, accepts=accepts, limit=limit), parts)


# --------------------------------------------------------------------------- tools


class MCPTool(Tool):
    """A tool of an MCP server: its JSON schema as the server gave it, arguments checked
    against it (``jsonschema``) before the call, the call sent over the source's session."""

    def __init__(self, source: MCPSource, listed: Any):
        spec = source.spec
        self.source = source
        self.remote_name: str = listed.name
        self.schema_validator: Any = None
        schema = dict(listed.input_schema or {"type": "object", "properties": {}})
        remote = listed.name

        async def call(**kwargs: Any) -> ToolOutput:
            return await source.call(remote, kwargs)

        call.__name__ = call.__qualname__ = spec.prefix + listed.name
        call.__doc__ = listed.description or ""
        annotations = getattr(listed, "annotations", None)
        super().__init__(call, name=spec.prefix + listed.name,
                         description=listed.description or getattr(annotations, "title", None) or "",
                         timeout=spec.timeout, confirm=listed.name in spec.confirm,
                         examples=[(q, a) for q, a in spec.examples.get(listed.name, ())],
                         return_direct=listed.name in spec.return_direct,
                         parameters=schema, runner=lambda kw: source.call(remote, kw))
        try:
            from jsonschema import validators

            cls = validators.validator_for(schema)
            cls.check_schema(schema)
            self.schema_validator = cls(schema)
        except Exception:  # noqa: BLE001 - no validator (or a schema it cannot read): the server checks
            self.schema_validator = None

    def parse_arguments(self, arguments: str | dict[str, Any] | None) -> dict[str, Any]:
        data = super().parse_arguments(arguments)
        if self.schema_validator is not None:
            errors = sorted(self.schema_validator.iter_errors(data), key=lambda e: list(e.path))
            if errors:
                what = "; ".join(f"{'.'.join(map(str, e.path)) or 'arguments'}: {e.message}"
                                 for e in errors[:5])
                raise ToolError(f"invalid arguments for tool {self.name!r}: {what}")
        return data


# --------------------------------------------------------------------------- the source


@dataclass
class _Status:
    """What the owner last reported: ready (with the client), or down (with why)."""

    state: Literal["idle", "starting", "ready", "down", "closed"] = "idle"
    error: str | None = None
    next_attempt: float = 0.0  # monotonic time of the next start attempt when down


class MCPSource:
    """The tools of one MCP server, and the task that owns its session.

    Build with :meth:`stdio`, :meth:`http` or from an :class:`MCPServerSpec`; hand it to an
    agent with its other tools (``Agent(tools=[..., source])``). The agent runs
    :meth:`serve` in its task group while it is entered (``async with agent``, or by its
    sync ``ask()``), which starts the server, and cancels it on exit, which closes it.
    """

    def __init__(self, spec: MCPServerSpec | dict[str, Any]):
        self.spec = spec if isinstance(spec, MCPServerSpec) else MCPServerSpec.model_validate(spec)
        self.name = self.spec.name
        self.registry: ToolRegistry | None = None
        self.tools: dict[str, MCPTool] = {}
        self.restarts = 0
        #: The Thinker's input kinds (set by the agent), for the result summary.
        self.accepts: frozenset[str] = frozenset({"text"})
        self._status = _Status()
        self._changed = anyio.Event()   # set (and replaced) on every status change
        self._wake = anyio.Event()      # wakes the owner: a list change or a lost connection
        self._wanted = anyio.Event()
        self._relist = False
        self._lost = False
        self._client: Any = None
        self._stderr: Any = None
        self._serving = False

    # ------------------------------------------------------------------ building

    @classmethod
    def stdio(cls, name: str, command: str, args: Iterable[str] = (), *,
              env: dict[str, str] | None = None, **options: Any) -> MCPSource:
        """A local server launched as ``command args`` and spoken to over stdin/stdout."""
        return cls(MCPServerSpec(name=name, command=command, args=list(args), env=env or {}, **options))

    @classmethod
    def http(cls, name: str, url: str, *, headers: dict[str, str] | None = None,
             token: str | None = None, **options: Any) -> MCPSource:
        """A streamable-HTTP server at ``url`` (``token``: sent as ``Authorization: Bearer``)."""
        return cls(MCPServerSpec(name=name, url=url, headers=headers or {}, token=token, **options))

    def attach(self, registry: ToolRegistry) -> None:
        """Put this server's tools into ``registry`` (done by the registry on ``add``)."""
        self.registry = registry
        for t in self.tools.values():
            registry.add(t)

    def __repr__(self) -> str:
        return f"MCPSource({self.name!r}, {self.spec.where!r})"

    @property
    def status(self) -> str:
        """``idle`` (not started), ``starting``, ``ready``, ``down`` (restarting) or ``closed``."""
        return self._status.state

    @property
    def error(self) -> str | None:
        """Why the server is down, if it is."""
        return self._status.error

    # ------------------------------------------------------------------ the owner task

    def start(self) -> None:
        """Ask the owner to start the server now (else on the first call)."""
        self._wanted.set()

    async def wait_started(self) -> None:
        """Start the server (if not yet) and wait for its first listing; raises
        :class:`MCPStartError` naming the command or URL when it does not start."""
        self.start()
        while self._status.state in ("idle", "starting"):
            await self._changed.wait()
        if self._status.state != "ready":
            raise MCPStartError(self._status.error or f"MCP server {self.name!r} is not running")

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """The owner: start the server when wanted, hold its session, relist its tools on
        change, restart it with backoff when it dies; cancel the scope to close it."""
        self._serving = True
        task_status.started()
        delay = self.spec.restart_backoff
        try:
            await self._wanted.wait()
            while True:
                self._set("starting")
                connected = await self._session_once()
                if connected:
                    delay = self.spec.restart_backoff  # it ran: the next crash starts over
                    self.restarts += 1
                self._status.next_attempt = monotonic() + delay
                self._set("down", self._status.error)
                await anyio.sleep(delay)
                delay = min(delay * 2, self.spec.restart_backoff_max)
        finally:
            self._serving = False
            self._client = None
            self._set("closed", "the agent was closed")
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None

    async def _session_once(self) -> bool:
        """One server session, from launch to loss. Returns True if it got to ready."""
        mcp = _mcp()
        ready = False
        try:
            async with self._client_for(mcp) as client:
                await self._relisted(client)
                self._client, self._lost, self._relist = client, False, False
                ready = True
                self._set("ready")
                async with anyio.create_task_group() as tg:
                    caps = getattr(client.server_capabilities, "tools", None)
                    if getattr(caps, "list_changed", False):
                        tg.start_soon(self._listen, client)
                    while not self._lost and not _closed(client):
                        self._wake = anyio.Event()
                        with anyio.move_on_after(1.0):  # also notices a quiet crash
                            await self._wake.wait()
                        self._trim_stderr()
                        if self._relist:
                            self._relist = False
                            await self._relisted(client)
                    tg.cancel_scope.cancel()
                why = "its connection closed"
        except Exception as e:  # noqa: BLE001 - any failure of the server is a restart, not a crash
            why = _describe(e)
        self._client = None
        if ready:
            self._status.error = (f"the MCP server {self.name!r} ({self.spec.where}) stopped "
                                  f"({why}){self._stderr_tail()}; it is being restarted")
        else:
            self._status.error = (f"the MCP server {self.name!r} did not start ({self.spec.where}): "
                                  f"{why}{self._stderr_tail()}")
        log.warning("%s", self._status.error)
        return ready

    def _client_for(self, mcp: Any) -> Any:
        spec = self.spec
        client_kw = dict(read_timeout_seconds=spec.start_timeout, message_handler=self._on_message)
        if spec.command is not None:
            from mcp.client.stdio import stdio_client

            if self._stderr is not None:
                self._stderr.close()
            # The server's stderr goes to a file we can quote when it fails (bounded: see
            # STDERR_LIMIT); a pipe would need a reader task of its own.
            self._stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")
            params = mcp.StdioServerParameters(command=spec.command, args=spec.args,
                                               env=spec.env or None, cwd=spec.cwd)
            return mcp.Client(stdio_client(params, errlog=self._stderr), **client_kw)
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        assert spec.url is not None  # the spec's validator: a url when there is no command
        http = create_mcp_http_client(headers=spec.http_headers())
        return _HTTPClient(mcp.Client(streamable_http_client(spec.url, http_client=http), **client_kw), http)

    async def _listen(self, client: Any) -> None:
        """2026-07-28 servers announce list changes on a ``subscriptions/listen`` stream."""
        try:
            async with client.listen(tools_list_changed=True) as sub:
                async for _ in sub:
                    self._relist = True
                    self._wake.set()
        except Exception as e:  # noqa: BLE001 - no subscription: the tools stay as listed
            log.info("MCP server %r: no tool-list subscription (%s)", self.name, _describe(e))

    async def _on_message(self, message: Any) -> None:
        """Handshake-era servers send ``notifications/tools/list_changed``."""
        if type(message).__name__ == "ToolListChangedNotification":
            self._relist = True
            self._wake.set()

    async def _relisted(self, client: Any) -> None:
        """List the server's tools (all pages) and put the allowed ones in the registry."""
        listed: list[Any] = []
        cursor = None
        for _ in range(100):  # a paginator that never ends cannot hang the start
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        wanted = [t for t in listed if self.spec.exposes(t.name)]
        missing = [n for n in (self.spec.tools or ()) if n != "*" and n not in {t.name for t in listed}]
        if missing:
            log.warning("MCP server %r has no tool %s (it has: %s)", self.name,
                        ", ".join(map(repr, missing)), ", ".join(t.name for t in listed) or "none")
        new = {self.spec.prefix + t.name: MCPTool(self, t) for t in wanted}
        reg = self.registry
        if reg is not None:
            for name in set(self.tools) - set(new):
                reg.remove(name)
            for name, t in new.items():
                old = reg.get(name)
                if old is not None and old is not self.tools.get(name):
                    raise MCPStartError(f"the MCP server {self.name!r} has a tool {name!r} and the agent "
                                        "already has one of that name: set prefix = "
                                        f"\"{self.name}_\" for this server (docs/mcp.md)")
                reg.remove(name)
                reg.add(t)
        self.tools = new

    # ------------------------------------------------------------------ calls

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolOutput:
        """Call the server's tool ``name``; returns its result (text, and media the Thinker
        takes). Raises
        :class:`ToolError` with what happened (an error result, the server down or lost
        mid-call) — the tool middleware turns it into an error result for the Thinker."""
        client = await self._ready_client()
        try:
            result = await client.call_tool(name, arguments, read_timeout_seconds=self.spec.timeout)
        except Exception as e:  # noqa: BLE001 - sorted into "lost" and "refused" below
            if _is_connection_loss(e) or _closed(client):
                self._lost = True
                self._wake.set()
                raise ToolError(f"the MCP server {self.name!r} ({self.spec.where}) stopped during "
                                f"the call to {name!r} ({_describe(e)}); it is being restarted — "
                                "tell the user and try again later") from None
            raise ToolError(f"the MCP server {self.name!r} refused the call to {name!r}: "
                            f"{_describe(e)}") from None
        out = result_output(result, accepts=self.accepts, limit=self.spec.max_result_chars)
        if result.is_error:
            raise ToolError(out.text)
        return out

    async def _ready_client(self) -> Any:
        """The session, once the owner has one. A call waits for at most one start attempt
        (and only if it is due within ``wait_for_restart`` seconds): a server that does not
        start is an error at once, not a wait until the call's timeout."""
        if not self._serving:
            raise ToolError(f"the MCP server {self.name!r} is not running: its agent must be "
                            "entered first (`async with agent:`, or agent.ask() from sync code)")
        self.start()
        saw_attempt = False
        while True:
            st = self._status
            if st.state == "ready" and self._client is not None and not self._lost:
                return self._client
            if st.state == "closed":
                raise ToolError(f"the MCP server {self.name!r} is closed (the agent was closed)")
            if st.state == "down" and (saw_attempt or
                                       st.next_attempt - monotonic() > self.spec.wait_for_restart):
                raise ToolError(st.error or f"the MCP server {self.name!r} is down")
            saw_attempt = saw_attempt or st.state == "starting"
            await self._changed.wait()

    # ------------------------------------------------------------------ helpers

    def _set(self, state: Any, error: str | None = None) -> None:
        self._status.state = state
        self._status.error = error
        self._changed.set()  # wakes every waiting call; later waits get a fresh event
        self._changed = anyio.Event()

    def _trim_stderr(self) -> None:
        f = self._stderr
        with contextlib.suppress(Exception):
            if f is not None and os.fstat(f.fileno()).st_size > STDERR_LIMIT:
                f.truncate(0)
                f.seek(0)

    def _stderr_tail(self) -> str:
        f = self._stderr
        if f is None:
            return ""
        try:
            f.flush()
            size = os.fstat(f.fileno()).st_size
            with open(f.fileno(), "rb", closefd=False) as raw:
                raw.seek(max(0, size - STDERR_TAIL))
                tail = raw.read().decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001 - the message is still useful without it
            return ""
        return f"; its last output: {tail!r}" if tail else ""


class _HTTPClient:
    """An SDK client that also closes the httpx2 client we gave it (with its headers)."""

    def __init__(self, client: Any, http: Any):
        self.client, self.http = client, http

    async def __aenter__(self) -> Any:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.http)
            await stack.enter_async_context(self.client)
            self._stack = stack.pop_all()
        return self.client

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        return await self._stack.__aexit__(exc_type, exc, tb)


def _closed(client: Any) -> bool:
    """True once the session's dispatcher saw the end of the connection (a stdio server
    that exited). The SDK has no public flag for it; a missing attribute reads as open."""
    session = getattr(client, "_session", None)
    return bool(getattr(getattr(session, "_dispatcher", None), "_closed", False))


def _is_connection_loss(e: BaseException) -> bool:
    code = getattr(getattr(e, "error", None), "code", getattr(e, "code", None))
    if code == -32000 and "closed" in str(e).lower():  # CONNECTION_CLOSED
        return True
    return isinstance(e, (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError,
                          anyio.EndOfStream)) or type(e).__module__.startswith(("httpx", "httpcore"))


def _describe(e: BaseException) -> str:
    """One line for an exception, looking inside (nested) exception groups."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    text = str(e).strip() or type(e).__name__
    if isinstance(e, FileNotFoundError):
        return f"the command was not found ({text})"
    if isinstance(e, TimeoutError):
        return "it did not answer in time"
    return f"{type(e).__name__}: {text}" if type(e).__name__ not in text else text


def sources_of(tools: Any) -> list[MCPSource]:
    """The MCP sources of a registry (the agent starts and stops them)."""
    return [s for s in getattr(tools, "sources", ()) if isinstance(s, MCPSource)]

