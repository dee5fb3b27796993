"""Agent configuration in TOML.

::

    tools = ["current_time", "calculator"]

    [agent]
    system_prompt = "You are a helpful voice assistant."
    fallback = "Sorry, I can't say that."

    [thinker]
    backend = "embedded"            # or llama-cpp, transformers, openai, qwen3-omni, vllm-omni, scripted, module:Class
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

    [security]
    allow_imports = ["mypkg"]       # import paths may name only these packages

Every key is checked: a misspelt or unknown key fails with a message naming it.

A config that names import paths is code: it runs the modules it names. What an import
path may name, and the allow-lists that restrict it, are in :mod:`omni_agent.registry`
and docs/security.md.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .agent import Agent
from .errors import ConfigError
from .registry import (
    MIDDLEWARE,
    TALKERS,
    THINKERS,
    TOOLS,
    ImportPolicy,
    current_import_policy,
    import_policy,
    parse_allow_list,
    resolve,
)
from .thinker import GenerationSettings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["AgentConfig", "load_config", "build_agent", "build_component", "imports_policy"]

CONFIG_ALLOW_LIST = "[security] allow_imports"
CLI_ALLOW_LIST = "--allow-import"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _default_of(owner: Callable[..., Any], name: str) -> dict[str, Any]:
    """The default ``owner`` itself gives ``name`` (a dataclass field's, or a keyword's of
    its signature), as keywords for :func:`pydantic.Field`. A section states types and
    limits, never defaults: those stay with what is built, so each is written once."""
    if dataclasses.is_dataclass(owner):
        f = next(f for f in dataclasses.fields(owner) if f.name == name)
        if f.default_factory is not dataclasses.MISSING:
            return {"default_factory": f.default_factory}
        return {"default": f.default}
    default = inspect.signature(owner).parameters[name].default
    if default is inspect.Parameter.empty:
        raise TypeError(f"{owner.__name__}() gives {name} no default")
    return {"default": default}


class AgentSection(_Strict):
    """``[agent]``: keywords of :class:`~omni_agent.agent.Agent`, with its defaults."""

    system_prompt: str | None = Field(**_default_of(Agent, "system_prompt"))
    fallback: str | None = Field(**_default_of(Agent, "fallback"))
    keep_originals: bool = Field(**_default_of(Agent, "keep_originals"))
    display: str = Field(**_default_of(Agent, "display"))
    lang: str | None = Field(**_default_of(Agent, "lang"))
    max_rounds: int = Field(**_default_of(Agent, "max_rounds"), ge=1)


class GenerationSection(_Strict):
    """``[generation]``: :class:`~omni_agent.thinker.GenerationSettings`, with its defaults."""

    max_tokens: int = Field(**_default_of(GenerationSettings, "max_tokens"), ge=1)
    temperature: float = Field(**_default_of(GenerationSettings, "temperature"), ge=0)
    top_p: float = Field(**_default_of(GenerationSettings, "top_p"), gt=0, le=1)
    stop: list[str] = Field(**_default_of(GenerationSettings, "stop"))
    seed: int | None = Field(**_default_of(GenerationSettings, "seed"))


class BackendSection(BaseModel):
    """``backend`` plus options passed to the backend (checked against its signature)."""

    model_config = ConfigDict(extra="allow")
    backend: str


class MiddlewareSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    use: str


class SecuritySection(_Strict):
    """``allow_imports``: the packages this config's import paths may name (``[]``: only
    the built-in short names). It can only narrow ``--allow-import`` and
    ``$OMNI_AGENT_ALLOW_IMPORTS``, never widen them."""

    allow_imports: list[str] | None = None

    @field_validator("allow_imports")
    @classmethod
    def _packages(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        try:
            return list(parse_allow_list(value, CONFIG_ALLOW_LIST))
        except ConfigError as e:
            raise ValueError(str(e).removeprefix(f"{CONFIG_ALLOW_LIST}: ")) from None


def _mcp_section() -> type[BaseModel]:
    from .tools.mcp import MCPServerSpec

    class MCPSection(MCPServerSpec):
        """An ``[[mcp]]`` entry: like MCPServerSpec, but the allow-list of tools to expose
        must be written out (``tools = ["*"]`` for all of them): a config says what the
        model gets."""

        tools: list[str]

    return MCPSection


MCPSection = _mcp_section()


class AgentConfig(_Strict):
    tools: list[str] = []
    mcp: list[MCPSection] = []  # type: ignore[valid-type]
    agent: AgentSection = AgentSection()
    thinker: BackendSection = BackendSection(backend="embedded")
    generation: GenerationSection = GenerationSection()
    talker: BackendSection | None = None
    ears: dict[str, Any] | None = None
    history: dict[str, Any] | None = None
    middleware: list[MiddlewareSection] = []
    security: SecuritySection = SecuritySection()


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
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
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
    cls = resolve(section.backend, THINKERS)
    return build_component(cls, _extras(section, "backend"), "thinker")


def build_talker(section: BackendSection | None) -> Any:
    if section is None or section.backend in ("none", ""):
        return None
    cls = resolve(section.backend, TALKERS)
    return build_component(cls, _extras(section, "backend"), "talker")


def _is_middleware(obj: Any) -> bool:
    from .bus import Middleware

    return isinstance(obj, Middleware)


def build_middleware(sections: list[MiddlewareSection]) -> list[Any]:
    out = []
    for i, sec in enumerate(sections):
        target = resolve(sec.use, MIDDLEWARE)
        opts = _extras(sec, "use")
        if not opts and not isinstance(target, type) and (callable(target) or _is_middleware(target)):
            out.append(target)  # a plain function (an utterance hook) or a ready instance (@hook)
        else:
            out.append(build_component(target, opts, f"middleware[{i}] ({sec.use})"))
    return out


def imports_policy(cfg: AgentConfig, allow_imports: Iterable[str] | None = None) -> ImportPolicy:
    """The import policy for building ``cfg``: the one in force (with
    ``$OMNI_AGENT_ALLOW_IMPORTS``), narrowed by ``allow_imports`` (``--allow-import``) and
    by the config's own ``[security] allow_imports``. A module must be in every list."""
    policy = current_import_policy().restricted(allow_imports, CLI_ALLOW_LIST)
    return policy.restricted(cfg.security.allow_imports, CONFIG_ALLOW_LIST)


def build_agent(cfg: AgentConfig, *, allow_imports: Iterable[str] | None = None, **overrides: Any) -> Any:
    """Build an :class:`~omni_agent.agent.Agent` from a validated config.

    ``allow_imports`` lists the packages the config's import paths may name (what
    ``--allow-import`` gives); see :func:`imports_policy`. ``overrides`` replace Agent
    arguments (``talker=...``).
    """
    with import_policy(imports_policy(cfg, allow_imports)):
        return _build_agent(cfg, overrides)


def build_history(options: dict[str, Any]) -> Any:
    """The ``[history]`` section: ``store`` says where (left out or ``"sqlite"``: a
    ConversationMemory file, with ``path``; ``"redis://host:port/db"``: a RedisHistory
    shared by several agent servers); the other keys go to that store."""
    from .memory import ConversationMemory

    store = options.pop("store", "sqlite")
    if store == "sqlite":
        return build_component(ConversationMemory, options, "history")
    if isinstance(store, str) and store.startswith(("redis://", "rediss://", "unix://")):
        from .memory import RedisHistory

        return build_component(RedisHistory, {"url": store, **options}, "history")
    raise ConfigError(f"history.store: {store!r} is not a store: use \"sqlite\" (the default, a file "
                      "on this machine) or a Redis URL like \"redis://127.0.0.1:6379/0\"")


def build_mcp(sections: list[Any]) -> list[Any]:
    """The ``[[mcp]]`` servers as tool sources. A command is code: under an import
    allow-list it must be ``python -m <allowed package>`` or be listed in
    ``$OMNI_AGENT_ALLOW_COMMANDS`` (:func:`~omni_agent.registry.check_command`)."""
    from .registry import check_command
    from .tools.mcp import MCPServerSpec, MCPSource

    names: set[str] = set()
    out = []
    for i, sec in enumerate(sections):
        if sec.name in names:
            raise ConfigError(f"mcp[{i}]: two MCP servers are named {sec.name!r}: give each its own name")
        names.add(sec.name)
        if sec.command is not None:
            check_command(sec.command, sec.args, f"mcp[{i}] ({sec.name})")
        out.append(MCPSource(MCPServerSpec.model_validate(sec.model_dump())))
    return out


def _build_agent(cfg: AgentConfig, overrides: dict[str, Any]) -> Any:
    kw: dict[str, Any] = dict(
        thinker=build_thinker(cfg.thinker),
        talker=build_talker(cfg.talker),
        middleware=build_middleware(cfg.middleware),
        tools=[resolve(t, TOOLS) for t in cfg.tools] + build_mcp(cfg.mcp) or None,
        settings=GenerationSettings(**cfg.generation.model_dump()),
        **cfg.agent.model_dump(),
    )
    if cfg.ears is not None:
        from .ears import Ears

        kw["ears"] = build_component(Ears, dict(cfg.ears), "ears")
    if cfg.history is not None:
        kw["history"] = build_history(dict(cfg.history))
    kw.update(overrides)
    return Agent(**kw)
