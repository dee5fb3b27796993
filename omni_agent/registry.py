"""Short names for built-in backends and middleware, resolved lazily by import path.

A config names a backend (``backend = "transformers"``) or a middleware
(``use = "pii"``) by short name, or anything else by ``"package.module:attr"``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError

__all__ = ["THINKERS", "TALKERS", "MIDDLEWARE", "TOOLS", "resolve"]

THINKERS: dict[str, str] = {
    "transformers": "omni_agent.thinkers.transformers:TransformersThinker",
    "openai": "omni_agent.thinkers.openai:OpenAIThinker",
    "scripted": "omni_agent.testing:ScriptedThinker",
    "qwen3-omni": "omni_agent.thinkers.qwen3_omni:Qwen3OmniThinker",
    "vllm-omni": "omni_agent.thinkers.vllm_omni:VLLMOmniThinker",
}

TALKERS: dict[str, str] = {
    "piper": "omni_agent.talkers.piper:PiperTalker",
    "espeak": "omni_agent.talkers.espeak:EspeakTalker",
    "openai": "omni_agent.talkers.openai:OpenAITalker",
    "recording": "omni_agent.testing:RecordingTalker",
    "qwen3-omni": "omni_agent.thinkers.qwen3_omni:Qwen3OmniTalker",
    "vllm-omni": "omni_agent.thinkers.vllm_omni:VLLMOmniTalker",
}

MIDDLEWARE: dict[str, str] = {
    "pii": "omni_agent.middleware.pii:PIIRedactor",
    "blocklist": "omni_agent.middleware.policy:Blocklist",
    "moderation": "omni_agent.middleware.policy:Moderation",
    "markup": "omni_agent.middleware.markup:MarkupGuard",
    "speech": "omni_agent.middleware.speech:SpeechShaper",
    "tools": "omni_agent.middleware.tool_calling:ToolCalling",
    "rag": "omni_agent.middleware.rag:RAG",
}

TOOLS: dict[str, str] = {
    "current_time": "omni_agent.tools.builtin:current_time",
    "calculator": "omni_agent.tools.builtin:calculator",
    "memory_search": "omni_agent.tools.builtin:memory_search",
}


def resolve(name: str, table: dict[str, str] | None = None, what: str = "object") -> Any:
    """Resolve a short name from ``table`` or a ``module:attr`` import path."""
    target = (table or {}).get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(table or {}))
        raise ConfigError(f"unknown {what} {name!r}: use one of {known}, or an import path "
                          "like 'mypackage.module:Name'")
    mod_name, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"cannot import {what} {name!r} ({target}): {e}. Is the package "
                          "installed (and its extra, e.g. pip install 'omni-agent[speech]')?") from e
    try:
        obj: Any = mod
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise ConfigError(f"{what} {name!r}: module {mod_name!r} has no attribute {attr!r}") from e
    return obj
