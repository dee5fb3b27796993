"""Pydantic wire models of the servers, and their errors in words.

A request body or a WebSocket message is validated by a model built on :class:`WireModel`
(strict JSON types, unknown fields ignored). :func:`explain` turns pydantic's first error
into the message a client reads — the field's name, then what it must be::

    try:
        req = SpeechRequest.model_validate(body)
    except ValidationError as e:
        message, param = explain(e.errors()[0])     # "speed must be a number", "speed"
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Awaitable, Callable, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["WireModel", "fail", "explain", "describe", "error_code", "param_of", "route_errors", "SessionId",
           "UnicodeText", "SESSION_ID_RULE"]


class WireModel(BaseModel):
    """Base of request models: strict types (no "0.5" for 0.5, no true for 1), no NaN or
    infinity, and unknown fields allowed and ignored (clients send fields we do not use)."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


def fail(text: str, code: str | None = None) -> PydanticCustomError:
    """An error for a validator to raise; :func:`explain` puts ``text`` after the field's
    name (``fail("must be 1")`` on ``n`` reads "n must be 1"). ``code``: the error code a
    client gets for it instead of the message's usual one (:func:`error_code`)."""
    return PydanticCustomError("omni_agent" if code is None else f"omni_agent.{code}", "{text}",
                               {"text": text})


def error_code(err: Mapping[str, Any], default: str) -> str:
    """The client-facing error code of one pydantic error: the ``code`` its validator gave
    :func:`fail`, else ``default``."""
    kind = str(err["type"])
    return kind.removeprefix("omni_agent.") if kind.startswith("omni_agent.") else default


def _valid_unicode(text: str) -> str:
    # JSON can write a lone UTF-16 surrogate ("\\ud800"): no character, and nothing
    # downstream could say, show or store it.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise fail("holds a lone surrogate (like \\ud800), which is not a character: "
                       "send valid Unicode text", code="bad_text") from None
    return text


#: A string that is valid Unicode (no lone surrogates); error code ``bad_text`` otherwise.
UnicodeText = Annotated[str, AfterValidator(_valid_unicode)]


def _not_blank(text: str) -> str:
    if not text.strip():
        raise fail("must be a non-empty string")
    return text


#: A user's typed turn: valid Unicode (``bad_text``), and not empty or only spaces.
TurnText = Annotated[UnicodeText, AfterValidator(_not_blank)]

#: What a session id may be, in words (the pattern of :data:`SessionId`).
SESSION_ID_RULE = "1-64 letters, digits or _.:-"

#: A client-chosen session id: 1-64 letters, digits or ``_.:-`` (safe in logs, keys, paths).
SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")]


_KIND = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
         "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
         "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
         "list_type": "a list",
         "dict_type": "an object", "model_type": "an object", "model_attributes_type": "an object"}


_RULES = {"session_id": SESSION_ID_RULE}


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
    if kind == "omni_agent" or kind.startswith("omni_agent."):
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
    elif kind == "string_pattern_mismatch" and param in _RULES:
        text = f"must be {_RULES[param]}"
    elif kind == "extra_forbidden":
        text = "is not a known field"
    else:
        text = f"is not valid: {err['msg']}"
    return (f"{param} {text}" if param else text), (param or None)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def describe(err: Mapping[str, Any], **kw: Any) -> str:
    """:func:`explain`'s message, then the value that was given (``barge_in must be true
    or false, not "false"``); keywords as for :func:`explain`."""
    message = explain(err, **kw)[0]
    kind = str(err["type"])
    if kind not in ("missing", "extra_forbidden") and not kind.startswith("omni_agent") and "input" in err:
        message += f", not {_show(err['input'])}"
    return message


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
