"""Schema-constrained decoding of tool calls for local models (transformers backend).

Given the tokenizer and the registry, only tokens that keep the output a valid
``<tool_call>{"name": <registered tool>, "arguments": {...valid per its schema}}</tool_call>``
are allowed; after the closing tag only end-of-sequence is. A model too small to write a
call on its own (the embedded SmolLM2-135M) then writes a well-formed one every time,
and a larger local model never writes a malformed one.

The grammar engine is `llguidance <https://github.com/guidance-ai/llguidance>`_ (a small
Rust wheel with no dependencies, maintained by the Guidance team; it compiles JSON
schemas inside a Lark grammar and computes the token mask over the whole vocabulary in
microseconds). We chose it over outlines-core (builds a full regex index over the
vocabulary up front: seconds per schema) and lm-format-enforcer (pure Python per token).

The contract with the transformers backend: ``ThinkerRequest.constraint`` is a callable
``constraint(tokenizer) -> LogitsProcessor``, called once per generation::

    request.constraint = ToolCallConstraint(registry, ["current_time"])
    processor = request.constraint(tokenizer)      # a fresh transformers LogitsProcessor
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any, Iterable

from omni_agent.errors import ToolError

from .registry import ToolRegistry

__all__ = ["ToolCallConstraint", "ToolCallLogitsProcessor", "tool_call_grammar"]

_tokenizers: dict[int, tuple[Any, Any]] = {}
_tok_lock = threading.Lock()


def _ll_tokenizer(tokenizer: Any) -> Any:
    """llguidance's view of a Hugging Face fast tokenizer (built once: ~1 s)."""
    hit = _tokenizers.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    try:
        import llguidance.hf
    except ImportError as e:
        raise ToolError("constrained tool calls need llguidance: pip install llguidance") from e
    with _tok_lock:
        hit = _tokenizers.get(id(tokenizer))
        if hit is not None and hit[0] is tokenizer:
            return hit[1]
        try:
            lt = llguidance.hf.from_tokenizer(tokenizer)
        except ValueError as e:
            raise ToolError(f"constrained tool calls need a fast (Rust) Hugging Face tokenizer: {e}") from e
        _tokenizers[id(tokenizer)] = (tokenizer, lt)  # keeps the tokenizer alive: ids stay unique
        return lt


def _cap_strings(schema: Any, max_len: int) -> Any:
    """Give every free string length limits: a small model must not ramble inside a string
    until it runs out of tokens, nor leave it empty."""
    if isinstance(schema, dict):
        out = {k: _cap_strings(v, max_len) for k, v in schema.items()}
        if out.get("type") == "string" and "enum" not in out and "const" not in out \
                and "format" not in out:
            out.setdefault("maxLength", max_len)
            # An empty string is never what a small model means (it "answers" by closing
            # the quote at once).
            out.setdefault("minLength", 1)
        return out
    if isinstance(schema, list):
        return [_cap_strings(v, max_len) for v in schema]
    return schema


def _require_all(params: dict[str, Any]) -> dict[str, Any]:
    p = copy.deepcopy(params)
    props = p.get("properties") or {}
    if props:
        p["required"] = list(props)
    return p


def tool_call_grammar(registry: ToolRegistry, names: Iterable[str] | None = None, *,
                      allow_text: bool = False, open_tag: str = "<tool_call>",
                      close_tag: str = "</tool_call>", max_string_length: int = 200,
                      require_all: bool = True) -> str:
    """The Lark grammar (llguidance dialect, with ``%json`` schemas) of one tool call.

    ``names`` limits the call to these tools (default: all of the registry);
    ``allow_text`` also allows a plain-text answer instead of a call (one that does not
    start with ``<``); ``require_all`` makes the model write every argument (a small model
    otherwise tends to close the object at once and leave everything to defaults).
    """
    names = list(names) if names is not None else registry.names
    if not names:
        raise ToolError("a tool-call constraint needs at least one tool")
    alts = []
    for n in names:
        t = registry[n]
        params = t.parameters or {"type": "object", "properties": {}}
        if require_all:
            params = _require_all(params)
        params = _cap_strings(params, max_string_length)
        alts.append({"type": "object", "properties": {"name": {"const": t.name}, "arguments": params},
                     "required": ["name", "arguments"], "additionalProperties": False})
    schema: dict[str, Any] = alts[0] if len(alts) == 1 else {"anyOf": alts}
    # One compact JSON layout: fewer tokens to write, and the same layout as the examples.
    schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ",
                            "key_separator": ": ", "lenient": True}
    call = f"call: {json.dumps(open_tag)} body {json.dumps(close_tag)}\nbody: %json {json.dumps(schema)}\n"
    if allow_text:
        return "start: call | free\nfree: /[^<][\\s\\S]*/\n" + call
    return "start: call\n" + call


class ToolCallLogitsProcessor:
    """A transformers ``LogitsProcessor`` that masks every token that would break the
    grammar. One per generation (it keeps the parser state); batch size 1."""

    def __init__(self, ll_tokenizer: Any, grammar: str):
        import llguidance

        self.matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
        if self.matcher.is_error():
            raise ToolError(f"invalid tool-call grammar: {self.matcher.get_error()}")
        self._seen: int | None = None
        self._mask: Any = None
        self.tokens = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np
        import torch

        if input_ids.shape[0] != 1:
            raise ToolError("constrained tool calls support batch size 1 only")
        n = input_ids.shape[1]
        if self._seen is not None:
            for tok in input_ids[0, self._seen:n].tolist():
                if not self.matcher.consume_token(int(tok)):
                    raise ToolError(f"the model left the tool-call grammar: {self.matcher.get_error()}")
                self.tokens += 1
        self._seen = n
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8),
                             bitorder="little")
        vocab = scores.shape[-1]
        allowed = np.zeros(vocab, dtype=bool)
        k = min(vocab, bits.shape[0])
        allowed[:k] = bits[:k].astype(bool)
        mask = torch.from_numpy(~allowed).to(scores.device)
        return scores.masked_fill(mask.unsqueeze(0), float("-inf"))


class ToolCallConstraint:
    """The value for ``ThinkerRequest.constraint``: ``constraint(tokenizer)`` returns a
    fresh :class:`ToolCallLogitsProcessor` for one generation.

    >>> ThinkerRequest(messages, tool_choice="current_time",
    ...                constraint=ToolCallConstraint(registry, ["current_time"]))
    """

    def __init__(self, registry: ToolRegistry, names: Iterable[str] | None = None, *,
                 allow_text: bool = False, max_string_length: int = 200, require_all: bool = True):
        self.names = list(names) if names is not None else registry.names
        self.allow_text = allow_text
        self.grammar = tool_call_grammar(registry, self.names, allow_text=allow_text,
                                         max_string_length=max_string_length,
                                         require_all=require_all)

    def __call__(self, tokenizer: Any) -> ToolCallLogitsProcessor:
        return ToolCallLogitsProcessor(_ll_tokenizer(tokenizer), self.grammar)

    def __repr__(self) -> str:
        return f"ToolCallConstraint({self.names!r}, allow_text={self.allow_text})"
