"""Tools: ``@tool`` on a typed function, and the per-agent :class:`ToolRegistry`.

::

    @tool
    def weather(city: str, days: int = 1) -> str:
        '''The weather forecast for a city.

        Args:
            city: The city, e.g. "Paris".
            days: How many days ahead (1-7).
        '''
        return f"Sunny in {city}."

    registry = ToolRegistry([weather])
    registry.openai_schemas()                       # for the Thinker request
    await registry.call("weather", '{"city": "Oslo"}')   # validated, then called
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, Sequence

from pydantic import BaseModel, ValidationError

from omni_agent.errors import ToolError

from .schema import FunctionSchema, format_validation_error, function_schema

__all__ = ["Tool", "tool", "ToolRegistry", "ToolOutput", "format_result"]


@dataclass
class ToolOutput:
    """A tool result with media: ``text`` for every Thinker (it should say what the media
    are), ``parts`` (``ImagePart``/``AudioPart``) for a Thinker that can see or hear them.
    The tool middleware shows the parts to a Thinker whose ``accepts`` has their kind, in
    a user message after the tool results (chat APIs carry only text in tool messages)."""

    text: str
    parts: list[Any] = field(default_factory=list)


def format_result(value: Any) -> str:
    """The text a tool's return value becomes for the Thinker.

    A :class:`ToolOutput` gives its text; strings pass unchanged; pydantic models, dataclasses, dicts and lists become JSON;
    ``None`` becomes ``"done"`` (the call worked and had nothing to say).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, ToolOutput):
        return value.text
    if value is None:
        return "done"
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    try:
        from pydantic_core import to_json

        return to_json(value).decode()
    except Exception:  # noqa: BLE001 - anything pydantic cannot serialise is shown as text
        return str(value)


class Tool:
    """A function the Thinker may call, with its JSON schema and argument validation.

    Usually made with :func:`tool`. ``timeout`` (seconds) overrides the tool middleware's
    default for this tool; ``confirm=True`` makes the middleware ask its confirmation
    policy before every call; ``examples`` are sample user requests with the arguments
    they should produce (``[("What time is it in Paris?", {"timezone": "Paris"})]``) —
    the router and small-model prompting use them. ``return_direct=True`` makes the tool's
    result the answer: it is said as it is (through the utterance middleware like any clause)
    with no second Thinker round; an error result still goes back to the Thinker (LangChain's
    ``return_direct``, the OpenAI Agents SDK's ``stop_on_first_tool``). Sync functions run in a worker thread
    so a slow one never blocks the event loop. A Tool stays callable as the plain
    function (``weather(city="Oslo")``).
    """

    def __init__(self, fn: Callable[..., Any], *, name: str | None = None,
                 description: str | None = None, timeout: float | None = None,
                 confirm: bool = False,
                 examples: Sequence[tuple[str, dict[str, Any]]] = (),
                 return_direct: bool = False,
                 parameters: dict[str, Any] | None = None,
                 args_model: type[BaseModel] | None = None,
                 runner: Callable[[dict[str, Any]], Awaitable[Any]] | None = None):
        self.fn = fn
        # A given schema (e.g. from langchain-core) is taken as is; else it is derived.
        fs: FunctionSchema | None = None
        if parameters is None:
            fs = function_schema(fn, name=name, description=description)
            parameters = fs.parameters
        self.name: str = name or (fs.name if fs else str(getattr(fn, "__name__", "tool")))
        self.description: str = description if description is not None else (fs.description if fs else "")
        self.parameters: dict[str, Any] = parameters
        self.args_model: type[BaseModel] | None = args_model if args_model is not None else (fs.model if fs else None)
        self.injected: dict[str, str] = fs.injected if fs else {}
        self.timeout = timeout
        self.confirm = confirm
        self.return_direct = bool(return_direct)
        self.examples: list[tuple[str, dict[str, Any]]] = [(q, dict(a)) for q, a in examples]
        self._runner = runner
        # A function, or an object whose class has an async __call__ (looked up on the class, as
        # a call does: a class passed as fn is not async because it defines one).
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
        functools.update_wrapper(self, fn, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool({self.name!r})"

    # ------------------------------------------------------------------ schemas

    def openai_schema(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry: ``{"type": "function", "function": {...}}``."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}

    # ------------------------------------------------------------------ calling

    def parse_arguments(self, arguments: str | dict[str, Any] | None) -> dict[str, Any]:
        """Decode and validate arguments (JSON text or a dict); raises :class:`ToolError`
        with a message the Thinker can act on. Returns keyword arguments for the call."""
        if arguments is None or arguments == "":
            data: Any = {}
        elif isinstance(arguments, str):
            try:
                data = json.loads(arguments)
            except ValueError as e:
                raise ToolError(f"arguments for tool {self.name!r} are not valid JSON ({e}); "
                                'send a JSON object like {"name": value}') from None
        else:
            data = arguments
        if not isinstance(data, dict):
            raise ToolError(f"arguments for tool {self.name!r} must be a JSON object, not "
                            f"{type(data).__name__}")
        if self.args_model is None:
            return dict(data)
        try:
            model = self.args_model.model_validate(data)
        except ValidationError as e:
            raise ToolError(format_validation_error(self.name, e)) from None
        # Keep validated values as the model made them (nested models stay models).
        return {k: getattr(model, k) for k in type(model).model_fields}

    async def run(self, arguments: str | dict[str, Any] | None = None, ctx: Any = None) -> str:
        """Validate ``arguments``, call the tool and return its result as text.

        Bad arguments raise :class:`ToolError` before the tool runs; what the tool itself
        raises propagates (the middleware turns it into an error result).
        """
        return await self.invoke(self.parse_arguments(arguments), ctx)

    async def invoke(self, kwargs: dict[str, Any], ctx: Any = None) -> str:
        """Call the tool with already validated keyword arguments (from
        :meth:`parse_arguments`); returns the result as text."""
        return (await self.invoke_output(kwargs, ctx)).text

    async def invoke_output(self, kwargs: dict[str, Any], ctx: Any = None) -> ToolOutput:
        """:meth:`invoke`, keeping media the tool returned (a :class:`ToolOutput`)."""
        kwargs = dict(kwargs)
        for pname in self.injected:
            kwargs[pname] = ctx
        if self._runner is not None:
            value = await self._runner(kwargs)
        elif self.is_async:
            value = await self.fn(**kwargs)
        else:
            value = await asyncio.to_thread(self.fn, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        if isinstance(value, ToolOutput):
            return value
        return ToolOutput(format_result(value))


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, timeout: float | None = None, confirm: bool = False,
         examples: Sequence[tuple[str, dict[str, Any]]] = (), return_direct: bool = False) -> Any:
    """Make a typed function a :class:`Tool`: ``@tool`` or ``@tool(timeout=5, confirm=True)``.

    The schema comes from the type hints and the docstring (see
    :func:`~omni_agent.tools.schema.function_schema`); nothing is registered globally —
    hand the tool to an agent (``Agent(tools=[weather])``) or a :class:`ToolRegistry`.
    """
    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description, timeout=timeout, confirm=confirm,
                    examples=examples, return_direct=return_direct)

    return wrap(fn) if fn is not None else wrap


def as_tool(obj: Any) -> Tool:
    """Accept a Tool, a plain function, a langchain-core tool, a built-in tool's short name
    ("current_time") or an import path ("package.module:function")."""
    if isinstance(obj, Tool):
        return obj
    if isinstance(obj, str):
        from omni_agent.registry import TOOLS, resolve

        return as_tool(resolve(obj, TOOLS, "tool"))
    from .interop import from_langchain, is_langchain_tool

    if is_langchain_tool(obj):
        return from_langchain(obj)
    if callable(obj):
        return Tool(obj)
    raise ToolError(f"{obj!r} is not a tool: give a function (typed, with a docstring), a "
                    "@tool, a langchain-core tool, or an import path 'package.module:function'")


class ToolRegistry:
    """The tools one agent may call, by name. Each agent has its own.

    ``ToolRegistry([weather, "calculator", langchain_tool])`` — entries as accepted by
    :func:`as_tool`. Names must be unique within a registry.
    """

    def __init__(self, tools: Iterable[Any] | Any = ()):
        self._tools: dict[str, Tool] = {}
        self._schemas: list[dict[str, Any]] | None = None
        #: Tool sources whose tools come and go (MCP servers, omni_agent.tools.mcp): the
        #: agent runs and closes them; they add and remove their tools here.
        self.sources: list[Any] = []
        one = isinstance(tools, (str, Tool)) or callable(tools) and not isinstance(tools, type)
        entries: Iterable[Any] = [tools] if one else tools
        for t in entries:
            self.add(t)

    # ------------------------------------------------------------------ contents

    def add(self, obj: Any) -> Any:
        """Register a tool (see :func:`as_tool` for what is accepted); returns it. A tool
        source (an :class:`~omni_agent.tools.mcp.MCPSource`) is kept in :attr:`sources`
        and puts its tools here itself once its server has listed them."""
        if callable(getattr(obj, "attach", None)) and callable(getattr(obj, "serve", None)):
            if obj not in self.sources:
                self.sources.append(obj)
                obj.attach(self)
            return obj
        t = as_tool(obj)
        if t.name in self._tools and self._tools[t.name] is not t:
            raise ToolError(f"two tools are named {t.name!r}: rename one with "
                            "@tool(name=...)")
        self._tools[t.name] = t
        self._schemas = None
        return t

    def remove(self, name: str) -> Tool | None:
        """Take tool ``name`` out (a tool source whose server dropped it); returns it."""
        t = self._tools.pop(name, None)
        if t is not None:
            self._schemas = None
        return t

    def tool(self, fn: Callable[..., Any] | None = None, **kw: Any) -> Any:
        """Decorator: make a tool and register it here (``@registry.tool``)."""
        def wrap(f: Callable[..., Any]) -> Tool:
            return self.add(tool(f, **kw))

        return wrap(fn) if fn is not None else wrap

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def __getitem__(self, name: str) -> Tool:
        t = self._tools.get(name)
        if t is None:
            raise ToolError(self._unknown(name))
        return t

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __bool__(self) -> bool:
        return True  # an empty registry is still a registry (not None)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def subset(self, names: Iterable[str]) -> "ToolRegistry":
        """A registry with only these tools (e.g. the one a router picked)."""
        return ToolRegistry([self[n] for n in names])

    def _unknown(self, name: str) -> str:
        known = ", ".join(self._tools) or "none"
        return f"there is no tool named {name!r}; the tools are: {known}"

    # ------------------------------------------------------------------ for the Thinker

    def openai_schemas(self) -> list[dict[str, Any]]:
        """The OpenAI ``tools`` list for a Thinker request (cached until a tool is added)."""
        if self._schemas is None:
            self._schemas = [t.openai_schema() for t in self._tools.values()]
        return self._schemas

    async def call(self, name: str, arguments: str | dict[str, Any] | None = None,
                   ctx: Any = None) -> str:
        """Call tool ``name`` with JSON ``arguments``; returns the result text (what the
        :class:`~omni_agent.events.ToolResult` carries).

        Raises :class:`ToolError` for an unknown tool or invalid arguments (before the
        tool runs); an exception from the tool itself propagates unchanged.
        """
        t = self._tools.get(name)
        if t is None:
            raise ToolError(self._unknown(name))
        return await t.run(arguments, ctx)
