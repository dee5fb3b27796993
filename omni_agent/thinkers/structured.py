"""Structured output for local backends: ``response_format`` and forced ``tool_choice`` as
decoding constraints.

OpenAI's ``response_format`` (``{"type": "json_object"}`` or ``{"type": "json_schema",
"json_schema": {"name", "schema", "strict"}}``) and a forced ``tool_choice`` ("required" or
a tool's name) are promises about the answer's shape. An HTTP backend passes them on to a
server that keeps them; a local backend keeps them itself, with schema-constrained decoding:
only tokens that keep the output valid are allowed, and after the last one only
end-of-sequence. The grammar engine is llguidance, as for the router's tool calls
(:mod:`omni_agent.tools.constrained`, which explains the choice).

The contract is :attr:`ThinkerRequest.constraint`'s: a callable ``constraint(tokenizer)``
that returns a fresh transformers ``LogitsProcessor`` for one generation::

    constraint = response_format_constraint({"type": "json_object"})
    processor = constraint(tokenizer)

A schema llguidance cannot compile raises :class:`StructuredOutputError` (an
:class:`~omni_agent.errors.UnsupportedInputError` naming the request field) before any
token is generated, so a server answers it with a 400, not a broken stream.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import UnsupportedInputError

__all__ = ["StructuredOutputError", "response_format_grammar", "response_format_constraint",
           "GrammarConstraint", "tool_choice_constraint", "forced_tool_names"]

#: One compact JSON layout: fewer tokens to write for a small model (the client's
#: ``x-guidance`` in the schema, if any, overrides it).
_JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class StructuredOutputError(UnsupportedInputError):
    """A ``response_format`` or ``tool_choice`` this backend cannot keep; ``param`` names
    the request field (``response_format``, ``tool_choice``)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def response_format_grammar(response_format: dict[str, Any] | None) -> str | None:
    """The llguidance grammar that keeps an answer to ``response_format``; None for plain
    text (no format, or ``{"type": "text"}``). Raises :class:`StructuredOutputError` for a
    format or schema that cannot be compiled (the message says what to change)."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise StructuredOutputError(
                "response_format.json_schema must be an object like {\"name\": \"answer\", "
                "\"schema\": {...}}", "response_format.json_schema")
        schema = spec.get("schema")
        if schema is None:
            schema = {"type": "object"}  # OpenAI: no schema means any JSON object
        if not isinstance(schema, dict):
            raise StructuredOutputError("response_format.json_schema.schema must be a JSON "
                                        "schema object", "response_format.json_schema.schema")
    else:
        raise StructuredOutputError(
            f"response_format.type must be text, json_object or json_schema (got {kind!r})",
            "response_format.type")
    try:
        import llguidance
    except ImportError:
        raise StructuredOutputError(
            "response_format needs llguidance for constrained decoding on this backend: "
            "pip install 'omni-agent[tools]' (or pip install llguidance)", "response_format") from None
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                                defaults=_JSON_LAYOUT)  # type: ignore[arg-type]
    except ValueError as e:
        raise StructuredOutputError(f"response_format's schema is not usable: {e}",
                                    "response_format.json_schema.schema") from None
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise StructuredOutputError(
            "response_format's JSON schema cannot be enforced by constrained decoding: "
            f"{' '.join(problem.split())}. Simplify the schema (drop that keyword) or leave "
            "response_format out", "response_format.json_schema.schema")
    return grammar


class GrammarConstraint:
    """The value for :attr:`ThinkerRequest.constraint` from a ready llguidance grammar:
    ``constraint(tokenizer)`` returns a fresh logits processor for one generation."""

    def __init__(self, grammar: str, what: str = "response_format"):
        self.grammar = grammar
        self.what = what

    def __call__(self, tokenizer: Any) -> Any:
        from ..errors import ToolError
        from ..tools.constrained import ToolCallLogitsProcessor, _ll_tokenizer

        try:
            return ToolCallLogitsProcessor(_ll_tokenizer(tokenizer), self.grammar)
        except ToolError as e:
            raise StructuredOutputError(f"{self.what} cannot be enforced for this model: {e}",
                                        self.what) from None

    def __repr__(self) -> str:
        return f"GrammarConstraint({self.what!r})"


def response_format_constraint(response_format: dict[str, Any] | None) -> GrammarConstraint | None:
    """A constraint keeping the answer to ``response_format`` (None for plain text)."""
    grammar = response_format_grammar(response_format)
    return None if grammar is None else GrammarConstraint(grammar)


def forced_tool_names(tools: list[dict[str, Any]], tool_choice: str) -> list[str] | None:
    """The tools one of which must be called: all of ``tools`` for "required", the named
    one for a name; None when nothing is forced ("auto", "none"). Raises
    :class:`StructuredOutputError` when the choice cannot be kept."""
    if tool_choice in ("auto", "none", "", None):
        return None
    names = [t.get("function", {}).get("name") for t in tools]
    if not names:
        raise StructuredOutputError(f"tool_choice {tool_choice!r} needs tools: send the "
                                    "tools the model may call", "tool_choice")
    if tool_choice == "required":
        return [n for n in names if n]
    if tool_choice not in names:
        raise StructuredOutputError(
            f"tool_choice names the tool {tool_choice!r}, which is not in tools "
            f"({', '.join(repr(n) for n in names)}): add it to tools or name one of them",
            "tool_choice")
    return [tool_choice]


def _closed(schema: Any) -> Any:
    """Objects without an ``additionalProperties`` get ``false``: a small model forced
    into a call otherwise invents arguments the tool never named (measured with SmolLM2 on
    a tool with no parameters). A schema that allows extra keys says so and keeps it."""
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if out.get("type") == "object" and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def tool_choice_constraint(tools: list[dict[str, Any]], tool_choice: str) -> Any:
    """A :class:`~omni_agent.tools.constrained.ToolCallConstraint` that makes the model
    call one of the tools ``tool_choice`` forces (see :func:`forced_tool_names`), built
    from the request's OpenAI tool schemas; None when nothing is forced."""
    names = forced_tool_names(tools, tool_choice)
    if names is None:
        return None
    from ..errors import ToolError
    from ..tools.constrained import ToolCallConstraint
    from ..tools.registry import Tool, ToolRegistry

    def _never_run(**kwargs: Any) -> None:  # the schema is all the constraint needs
        raise ToolError("a tool built from a request schema cannot run here")

    registry = ToolRegistry()
    for t in tools:
        f = t.get("function", {})
        if f.get("name") in names:
            params = _closed(f.get("parameters") or {"type": "object", "properties": {}})
            registry.add(Tool(_never_run, name=f["name"], description=f.get("description") or "",
                              parameters=params))
    try:
        constraint = ToolCallConstraint(registry, names)
        import llguidance
    except (ToolError, ImportError) as e:
        raise StructuredOutputError(f"tool_choice cannot be enforced: {e}", "tool_choice") from None
    problem = llguidance.LLMatcher.validate_grammar(constraint.grammar)
    if problem and not problem.startswith("WARNING"):
        raise StructuredOutputError(
            f"tool_choice cannot be enforced: the parameters schema of {names} does not "
            f"compile ({' '.join(problem.split())}); simplify it or use tool_choice auto", "tools")
    return constraint
