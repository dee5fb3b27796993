"""Interop with langchain-core and OpenAI tool schemas.

* A langchain-core tool (a ``BaseTool`` subclass, or anything made with its ``@tool``)
  works as one of ours: pass it to ``Agent(tools=[...])`` or :func:`from_langchain`.
* Ours convert to langchain-core tools (:func:`to_langchain`) for use in a LangChain
  agent, and to OpenAI tool schemas (:func:`to_openai`).

langchain-core is optional (``pip install 'omni-agent[tools]'``); it is imported only
when one of these functions needs it.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel, ValidationError

from omni_agent.errors import ToolError

from .registry import Tool, format_result
from .schema import clean_schema, format_validation_error, parse_docstring

__all__ = ["from_langchain", "to_langchain", "to_openai", "is_langchain_tool"]


def is_langchain_tool(obj: Any) -> bool:
    """True for an instance of langchain-core's ``BaseTool`` (without importing
    langchain-core when the object cannot be one)."""
    if not any(c.__module__.startswith("langchain") for c in type(obj).__mro__):
        return False
    from langchain_core.tools import BaseTool

    return isinstance(obj, BaseTool)


def _langchain() -> Any:
    try:
        import langchain_core.tools as lc_tools
    except ImportError as e:  # pragma: no cover - only without the optional extra
        raise ToolError("LangChain interop needs langchain-core: pip install "
                        "'omni-agent[tools]'") from e
    return lc_tools


def from_langchain(lc_tool: Any, *, timeout: float | None = None, confirm: bool = False) -> Tool:
    """Wrap a langchain-core tool as a :class:`Tool`.

    The schema is langchain-core's own (``convert_to_openai_tool``); arguments are
    validated with the tool's pydantic ``tool_call_schema`` before the call, and the call
    goes through the tool's ``ainvoke`` so its callbacks and error handling still apply.
    A Google-style ``Args:`` block left in the description is moved into the argument
    descriptions.
    """
    if not is_langchain_tool(lc_tool):
        raise ToolError(f"{lc_tool!r} is not a langchain-core BaseTool")
    from langchain_core.utils.function_calling import convert_to_openai_tool

    fn_schema = convert_to_openai_tool(lc_tool)["function"]
    params = clean_schema(fn_schema.get("parameters") or {"type": "object", "properties": {}})
    params.setdefault("type", "object")
    params.setdefault("properties", {})
    description, arg_docs = parse_docstring(fn_schema.get("description") or lc_tool.description or "")
    for pname, text in arg_docs.items():
        prop = params["properties"].get(pname)
        if isinstance(prop, dict) and text and "description" not in prop:
            prop["description"] = text
    model = getattr(lc_tool, "tool_call_schema", None)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        model = None  # a dict schema: langchain-core validates it inside ainvoke

    async def run(kwargs: dict[str, Any]) -> Any:
        try:
            return await lc_tool.ainvoke(kwargs)
        except ValidationError as e:
            raise ToolError(format_validation_error(lc_tool.name, e)) from None

    def call(**kwargs: Any) -> Any:  # the plain-callable side of our Tool
        return lc_tool.invoke(kwargs)

    call.__doc__ = description
    return Tool(call, name=lc_tool.name, description=description,
                parameters=params, args_model=model, runner=run, timeout=timeout,
                confirm=confirm)


def to_langchain(t: Tool) -> Any:
    """Our tool as a langchain-core ``StructuredTool`` (same name, description and
    argument model; async tools become its coroutine, sync ones its function)."""
    lc_tools = _langchain()

    async def coroutine(**kwargs: Any) -> str:
        return await t.run(kwargs)

    func = None
    if not t.is_async and t._runner is None:
        def func(**kwargs: Any) -> str:
            call_kw = t.parse_arguments(kwargs)
            for pname in t.injected:
                call_kw[pname] = None
            value = t.fn(**call_kw)
            if inspect.isawaitable(value):  # pragma: no cover - defensive
                raise ToolError(f"tool {t.name!r} returned an awaitable from a sync call")
            return format_result(value)

    return lc_tools.StructuredTool.from_function(
        func=func, coroutine=coroutine, name=t.name, description=t.description or t.name,
        args_schema=t.args_model if t.args_model is not None else t.parameters,
        infer_schema=False)


def to_openai(t: Tool | Any) -> dict[str, Any]:
    """The OpenAI ``tools`` entry of a tool (ours, a function, or a langchain-core tool)."""
    from .registry import as_tool

    return as_tool(t).openai_schema()
