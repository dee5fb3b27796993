"""Agent configuration in TOML.

::

    tools = ["current_time", "calculator"]

    [agent]
    system_prompt = "You are a helpful voice assistant."
    fallback = "Sorry, I can't say that."

    [thinker]
    backend = "transformers"        # or openai, qwen3-omni, vllm-omni, scripted, module:Class
    threads = 1

    [generation]
    max_tokens = 128

    [talker]
    backend = "piper"

    [[middleware]]
    use = "pii"                     # a built-in by short name
    [[middleware]]
    use = "mypkg.safety:MyFilter"   # a custom one by import path
    timeout = 0.05                  # other keys are passed to it

Every key is checked: a misspelt or unknown key fails with a message naming it.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .registry import MIDDLEWARE, TALKERS, THINKERS, TOOLS, resolve
from .thinker import GenerationSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["AgentConfig", "load_config", "build_agent", "build_component"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Strict):
    system_prompt: str | None = None
    fallback: str | None = "Sorry, I can't say that."
    keep_originals: bool = True
    display: str = "auto"
    lang: str | None = None
    max_rounds: int = Field(6, ge=1)


class GenerationSection(_Strict):
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: list[str] = []
    seed: int | None = None


class BackendSection(BaseModel):
    """``backend`` plus options passed to the backend (checked against its signature)."""

    model_config = ConfigDict(extra="allow")
    backend: str


class MiddlewareSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    use: str


class AgentConfig(_Strict):
    tools: list[str] = []
    agent: AgentSection = AgentSection()
    thinker: BackendSection = BackendSection(backend="transformers")
    generation: GenerationSection = GenerationSection()
    talker: BackendSection | None = None
    ears: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    middleware: list[MiddlewareSection] = []


def load_config(source: Any) -> AgentConfig:
    """Read a config from a path, TOML text, a dict, or pass an AgentConfig through."""
    if isinstance(source, AgentConfig):
        return source
    where = "config"
    if isinstance(source, (str, Path)) and not (isinstance(source, str) and "\n" in source):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        where = str(path)
        source = path.read_text(encoding="utf-8")
    if isinstance(source, str):
        try:
            data = tomllib.loads(source)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where} is not valid TOML: {e}") from e
    elif isinstance(source, dict):
        data = source
    else:
        raise ConfigError(f"cannot read a config from {type(source).__name__}")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{key}: {msg}")
        raise ConfigError(f"invalid {where}: " + "; ".join(problems)) from None


def _extras(model: BaseModel, skip: str) -> dict[str, Any]:
    return {k: v for k, v in (model.model_extra or {}).items() if k != skip}


def build_component(target: Any, options: dict[str, Any], where: str) -> Any:
    """Call ``target(**options)`` after checking every option against its signature."""
    factory = target
    if isinstance(target, type) and hasattr(target, "from_options"):
        factory = target.from_options
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None and not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        allowed = [n for n, p in sig.parameters.items()
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
        for key in options:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}: unknown option (allowed: {', '.join(allowed) or 'none'})")
    try:
        return factory(**options)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from e


def build_thinker(section: BackendSection) -> Any:
    cls = resolve(section.backend, THINKERS, "thinker backend")
    return build_component(cls, _extras(section, "backend"), "thinker")


def build_talker(section: BackendSection | None) -> Any:
    if section is None or section.backend in ("none", ""):
        return None
    cls = resolve(section.backend, TALKERS, "talker backend")
    return build_component(cls, _extras(section, "backend"), "talker")


def _is_middleware(obj: Any) -> bool:
    from .bus import Middleware

    return isinstance(obj, Middleware)


def build_middleware(sections: list[MiddlewareSection]) -> list[Any]:
    out = []
    for i, sec in enumerate(sections):
        target = resolve(sec.use, MIDDLEWARE, "middleware")
        opts = _extras(sec, "use")
        if not opts and not isinstance(target, type) and (callable(target) or _is_middleware(target)):
            out.append(target)  # a plain function (an utterance hook) or a ready instance (@hook)
        else:
            out.append(build_component(target, opts, f"middleware[{i}] ({sec.use})"))
    return out


def build_agent(cfg: AgentConfig, **overrides: Any) -> Any:
    """Build an :class:`~omni_agent.agent.Agent` from a validated config."""
    from .agent import Agent

    kw: dict[str, Any] = dict(
        thinker=build_thinker(cfg.thinker),
        talker=build_talker(cfg.talker),
        middleware=build_middleware(cfg.middleware),
        tools=[resolve(t, TOOLS, "tool") for t in cfg.tools] or None,
        settings=GenerationSettings(**cfg.generation.model_dump()),
        **cfg.agent.model_dump(),
    )
    if cfg.ears is not None:
        from .ears import Ears

        kw["ears"] = build_component(Ears, dict(cfg.ears), "ears")
    if cfg.history is not None:
        from .memory import ConversationMemory

        kw["history"] = build_component(ConversationMemory, dict(cfg.history), "history")
    kw.update(overrides)
    return Agent(**kw)
