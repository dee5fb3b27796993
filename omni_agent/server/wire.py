"""Pydantic wire models of the OpenAI-compatible servers, and their errors in words.

A request body is validated by a model built on :class:`WireModel` (strict JSON types,
unknown fields ignored). :func:`explain` turns pydantic's first error into the message a
client reads — the field's name, then what it must be::

    try:
        req = SpeechRequest.model_validate(body)
    except ValidationError as e:
        message, param = explain(e.errors()[0])     # "speed must be a number", "speed"
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["WireModel", "fail", "explain", "param_of", "route_errors"]


class WireModel(BaseModel):
    """Base of request models: strict types (no "0.5" for 0.5, no true for 1), no NaN or
    infinity, and unknown fields allowed and ignored (clients send fields we do not use)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


def fail(text: str) -> PydanticCustomError:
    """An error for a validator to raise; :func:`explain` puts ``text`` after the field's
    name (``fail("must be 1")`` on ``n`` reads "n must be 1")."""
    return PydanticCustomError("omni_agent", "{text}", {"text": text})


_KIND = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
         "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
         "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
         "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object"}


def param_of(loc: tuple[Any, ...]) -> str:
    """A pydantic ``loc`` as the field path clients know: ``messages[0].content``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in part or part in ("str", "int", "float", "bool") or part[:1].isupper():
            continue  # a union branch's tag (e.g. 'list[str]'), not a field
        else:
            out += f".{part}" if out else part
    return out


def explain(err: Mapping[str, Any], *, whole_field: Mapping[str, str] | None = None,
            ranges: Mapping[str, tuple[float, float]] | None = None) -> tuple[str, str | None]:
    """One pydantic error -> (message, param). ``whole_field`` gives one sentence for any
    error inside a top-level field (unions, lists of objects read better that way);
    ``ranges`` the bounds to name for a field out of range ("between 0 and 2")."""
    loc, kind = tuple(err["loc"]), err["type"]
    param = param_of(loc)
    if loc and whole_field and loc[0] in whole_field:
        return whole_field[loc[0]], str(loc[0])
    ctx = err.get("ctx") or {}
    if kind == "omni_agent":
        text = ctx["text"]
    elif kind == "missing":
        text = "is required"
    elif kind in _KIND:
        text = f"must be {_KIND[kind]}"
    elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bounds = (ranges or {}).get(param)
        if bounds:
            text = f"must be between {bounds[0]} and {bounds[1]}"
        elif "ge" in ctx or "gt" in ctx:
            text = f"must be at least {ctx.get('ge', ctx.get('gt'))}"
        else:
            text = f"must be at most {ctx.get('le', ctx.get('lt'))}"
    elif kind == "literal_error":
        text = f"must be one of {ctx.get('expected')}"
    elif kind in ("too_short", "string_too_short"):
        text = "must not be empty"
    else:
        text = f"is not valid: {err['msg']}"
    return (f"{param} {text}" if param else text), (param or None)


def route_errors(error: Callable[..., Response], serves: str,
                 ) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette exception handlers for an OpenAI-compatible server: unknown routes (404),
    wrong methods (405) and crashes (500) answered in OpenAI's error shape (clients parse
    nothing else), through the server's own ``error(status, message, kind=, headers=)``.
    ``serves`` names what it does serve, for the 404: "POST /v1/audio/speech, GET /health"."""

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        headers = getattr(exc, "headers", None)
        if status == 404:
            message = f"no route {request.method} {request.url.path}: this server serves {serves}"
        elif status == 405:
            message = (f"{request.method} is not allowed on {request.url.path}: "
                       f"use {(headers or {}).get('Allow', 'another method')}")
        else:
            message = str(getattr(exc, "detail", "")) or "the request failed"
        return error(status, message, headers=headers)

    async def crash(request: Request, exc: Exception) -> Response:
        return error(500, f"the server failed: {type(exc).__name__}", kind="server_error")

    return {HTTPException: http_error, Exception: crash}
