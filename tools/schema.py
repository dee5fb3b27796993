"""JSON schemas for tools, from a function's type hints, pydantic models and docstring.

pydantic does the real work (``create_model`` builds an argument model from the signature,
``model_json_schema`` turns it into JSON schema, and the same model validates the
Thinker's arguments before the call). This module only adds what pydantic does not do:
reading per-argument descriptions out of Google, NumPy or Sphinx style docstrings, and
trimming the schema of noise a language model would have to read (titles).

>>> def weather(city: str, days: int = 1) -> str:
...     '''Weather forecast.
...
...     Args:
...         city: The city, e.g. "Paris".
...         days: How many days ahead.
...     '''
>>> fs = function_schema(weather)
>>> fs.parameters["properties"]["city"]["description"]
'The city, e.g. "Paris".'
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from omni_agent.errors import ToolError

__all__ = ["FunctionSchema", "function_schema", "parse_docstring", "clean_schema",
           "format_validation_error"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Section headers of Google-style docstrings (the ones that end an "Args:" block too).
_GOOGLE_ARGS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments",
                "other parameters"}
_GOOGLE_OTHER = {"returns", "return", "yields", "yield", "raises", "raise", "examples", "example",
                 "note", "notes", "see also", "warning", "warnings", "attributes", "references",
                 "todo"}
_NUMPY_ARGS = {"parameters", "other parameters", "keyword arguments"}


@dataclass
class FunctionSchema:
    """What :func:`function_schema` found: the tool's name, description, JSON schema of
    its parameters, the pydantic model that validates them, and the names of parameters
    the framework fills in itself (``injected``: name -> kind, e.g. ``"ctx"``)."""

    name: str
    description: str
    parameters: dict[str, Any]
    model: type[BaseModel]
    injected: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- docstrings


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a docstring into (description, {argument: description}).

    Understands Google style (``Args:`` then ``name (type): text``), NumPy style
    (``Parameters`` underlined with dashes, then ``name : type`` and indented text) and
    Sphinx style (``:param name: text``). Continuation lines are joined with spaces. The
    description is the text before the first section, paragraphs kept.
    """
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    args: dict[str, str] = {}
    desc_lines: list[str] = []
    i, n = 0, len(lines)
    in_desc = True
    while i < n:
        line = lines[i]
        stripped = line.strip()
        low = stripped.rstrip(":").lower()
        # NumPy section: a header line followed by a line of dashes.
        if i + 1 < n and stripped and re.fullmatch(r"-{3,}", lines[i + 1].strip()):
            in_desc = False
            i += 2
            if low in _NUMPY_ARGS:
                i = _numpy_args(lines, i, args)
            else:
                while i < n and not (i + 1 < n and lines[i].strip()
                                     and re.fullmatch(r"-{3,}", lines[i + 1].strip())):
                    i += 1
            continue
        # Google section: "Args:" alone on a line.
        if stripped.endswith(":") and (low in _GOOGLE_ARGS or low in _GOOGLE_OTHER):
            in_desc = False
            indent = len(line) - len(line.lstrip())
            i += 1
            if low in _GOOGLE_ARGS:
                i = _google_args(lines, i, indent, args)
            else:
                while i < n and (not lines[i].strip()
                                 or len(lines[i]) - len(lines[i].lstrip()) > indent):
                    i += 1
            continue
        # Sphinx fields.
        m = re.match(r"^:param\s+(?:[^:]*\s)?(\w+):\s*(.*)$", stripped)
        if m:
            in_desc = False
            text = [m.group(2).strip()]
            i += 1
            while i < n and lines[i].strip() and not lines[i].strip().startswith(":"):
                text.append(lines[i].strip())
                i += 1
            args[m.group(1)] = " ".join(t for t in text if t)
            continue
        if stripped.startswith(":"):  # :returns:, :raises: ... end the description
            in_desc = False
        elif in_desc:
            desc_lines.append(line)
        i += 1
    return _paragraphs(desc_lines), args


def _google_args(lines: list[str], i: int, header_indent: int, out: dict[str, str]) -> int:
    n = len(lines)
    entry_indent: int | None = None
    current: str | None = None
    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= header_indent:
            break
        if entry_indent is None:
            entry_indent = indent
        if indent == entry_indent:
            m = re.match(r"^\s*\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1)
                out[current] = m.group(3).strip()
            else:
                current = None
        elif current is not None:
            out[current] = (out[current] + " " + line.strip()).strip()
        i += 1
    return i


def _numpy_args(lines: list[str], i: int, out: dict[str, str]) -> int:
    n = len(lines)
    current: str | None = None
    while i < n:
        line = lines[i]
        if i + 1 < n and line.strip() and re.fullmatch(r"-{3,}", lines[i + 1].strip()):
            break  # the next section
        if not line.strip():
            i += 1
            continue
        if not line.startswith((" ", "\t")):
            names = line.split(":", 1)[0]
            # "x, y : int" documents two parameters at once.
            current_names = [s.strip().lstrip("*") for s in names.split(",") if s.strip()]
            for nm in current_names:
                out[nm] = ""
            current = ",".join(current_names)
        elif current is not None:
            for nm in current.split(","):
                out[nm] = (out[nm] + " " + line.strip()).strip()
        i += 1
    return i


def _paragraphs(lines: list[str]) -> str:
    paras, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


# ---------------------------------------------------------------------------- schemas

_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not", "contains", "propertyNames", "if",
                   "then", "else")
_SUBSCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def clean_schema(schema: Any) -> Any:
    """Drop pydantic's generated ``title`` keys (tokens a model reads for nothing),
    leaving properties that happen to be *named* "title" alone."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k == "title" and isinstance(v, str):
            continue
        if k in _SUBSCHEMA_MAPS and isinstance(v, dict):
            out[k] = {name: clean_schema(sub) for name, sub in v.items()}
        elif k in _SUBSCHEMA_LISTS and isinstance(v, list):
            out[k] = [clean_schema(sub) for sub in v]
        elif k in _SUBSCHEMA_KEYS and isinstance(v, dict):
            out[k] = clean_schema(v)
        else:
            out[k] = v
    return out


def _is_context(annotation: Any) -> bool:
    from omni_agent.bus import TurnContext

    return annotation is TurnContext or (isinstance(annotation, str)
                                         and annotation.split(".")[-1] == "TurnContext")


def function_schema(fn: Callable[..., Any], *, name: str | None = None,
                    description: str | None = None) -> FunctionSchema:
    """Build the schema and validating model of a typed function.

    Every parameter becomes a property (required when it has no default); its type comes
    from the annotation (anything pydantic understands: ``int``, ``Literal[...]``,
    ``list[str]``, ``Annotated[int, Field(ge=1)]``, pydantic models, dataclasses, enums)
    and its description from the docstring. A parameter annotated ``TurnContext`` is not
    part of the schema: the tool middleware passes the current turn's context to it.
    ``*args`` and ``**kwargs`` cannot be described and are refused.
    """
    tool_name = name or getattr(fn, "__name__", None) or type(fn).__name__
    if not _NAME.match(tool_name):
        raise ToolError(f"tool name {tool_name!r} is not allowed: use 1-64 letters, digits, "
                        "'_' or '-' (pass tool(name=...) to rename it)")
    doc_desc, arg_docs = parse_docstring(inspect.getdoc(fn))
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise ToolError(f"cannot read the signature of tool {tool_name!r}: {e}") from e
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to raw annotations
        hints = {}
    fields: dict[str, Any] = {}
    injected: dict[str, str] = {}
    for pname, p in sig.parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ToolError(f"tool {tool_name!r} takes *{pname}: a tool's parameters must be "
                            "named one by one so that the Thinker can be told about them")
        if p.kind is p.POSITIONAL_ONLY:
            raise ToolError(f"tool {tool_name!r}: parameter {pname!r} is positional-only; "
                            "tools are called with keyword arguments")
        ann = hints.get(pname, p.annotation)
        if _is_context(ann):
            injected[pname] = "ctx"
            continue
        if ann is inspect.Parameter.empty:
            ann = Any
        kw: dict[str, Any] = {}
        if arg_docs.get(pname):
            kw["description"] = arg_docs[pname]
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[pname] = (ann, Field(default, **kw))
    model_name = "".join(part.capitalize() for part in re.split(r"[_-]", tool_name)) + "Arguments"
    try:
        # extra="forbid": an argument the tool does not take is an error the Thinker hears
        # about, not something silently dropped.
        model = create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)
        params = clean_schema(model.model_json_schema())
    except Exception as e:  # noqa: BLE001 - pydantic's schema errors, re-said for the user
        raise ToolError(f"cannot build a JSON schema for tool {tool_name!r}: {e}. Use types "
                        "pydantic understands (str, int, float, bool, list, Literal, "
                        "pydantic models...)") from e
    params.setdefault("properties", {})
    return FunctionSchema(tool_name, (description if description is not None else doc_desc).strip(),
                          params, model, injected)


def format_validation_error(tool_name: str, err: ValidationError) -> str:
    """A short, model-readable account of what was wrong with the arguments."""
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(x) for x in e.get("loc", ())) or "arguments"
        msg = e.get("msg", "invalid")
        if e.get("type") == "missing":
            msg = "missing (required)"
        elif e.get("type") == "extra_forbidden":
            msg = "not a parameter of this tool"
        parts.append(f"{loc}: {msg}")
    return f"invalid arguments for tool {tool_name!r}: " + "; ".join(parts)
