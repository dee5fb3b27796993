"""JSON schemas for tools, from a function's type hints, pydantic models and docstring.

pydantic does the real work (``create_model`` builds an argument model from the signature,
``model_json_schema`` turns it into JSON schema, and the same model validates the
Thinker's arguments before the call). griffe (the docstring parser of mkdocstrings)
reads the per-argument descriptions out of Google, NumPy or Sphinx style docstrings. This
module only joins the two and trims the schema of noise a language model would have to
read (titles).

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
import itertools
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import griffe
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from omni_agent.errors import ToolError

__all__ = ["FunctionSchema", "function_schema", "parse_docstring", "clean_schema",
           "format_validation_error"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_TEXT = griffe.DocstringSectionKind.text
# "Keyword Args:" (Google) and "Other Parameters" (NumPy) describe arguments too.
_PARAMETERS = (griffe.DocstringSectionKind.parameters, griffe.DocstringSectionKind.other_parameters)
# griffe logs what it finds odd (a ":param x:" with no function to match it against, a
# missing type); a tool's docstring owes it neither, so parse without warnings.
_QUIET: griffe.PerStyleOptions = {"google": {"warnings": False}, "numpy": {"warnings": False},
                                  "sphinx": {"warnings": False}}


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

    griffe reads the docstring and infers its style: Google (``Args:`` then
    ``name (type): text``), NumPy (``Parameters`` underlined with dashes, then
    ``name : type`` and indented text) or Sphinx (``:param name: text``). Wrapped lines are
    joined with spaces. The description is the text before the first section, its
    paragraphs kept; a docstring with no sections is all description.

    >>> parse_docstring(":param city: The city.")
    ('', {'city': 'The city.'})
    """
    if not doc or not doc.strip():
        return "", {}
    # "max_sections": parse with each style and keep the one that found the most sections.
    # (griffe's faster regex guess misses a section on the last line of a docstring.)
    sections = griffe.parse_auto(griffe.Docstring(inspect.cleandoc(doc), lineno=1),
                                 method="max_sections", per_style_options=_QUIET)
    # The description is the text before the first section; later text (after "Returns:",
    # say) is about something else.
    desc = [section.value for section in itertools.takewhile(lambda sec: sec.kind is _TEXT,
                                                             sections)]
    args = {param.name.lstrip("*"): _one_line(param.description)
            for section in sections if section.kind in _PARAMETERS for param in section.value}
    return _paragraphs("\n\n".join(desc)), args


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _paragraphs(text: str) -> str:
    """Paragraphs kept, the lines inside each joined with single spaces."""
    return "\n\n".join(p for p in map(_one_line, re.split(r"\n\s*\n", text)) if p)


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
