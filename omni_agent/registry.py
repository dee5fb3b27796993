"""Short names for the built-ins, and the rule for what a config's import paths may name.

A config names a backend (``backend = "transformers"``) or a middleware (``use = "pii"``)
by short name, or your own code by import path (``use = "mypkg.safety:MyFilter"``).
A config that names import paths is code: importing runs the module, building calls what
it names with the config's options. So an import path must name a class or function
*defined in your own package* — never the standard library — of the kind that place of
the config expects (docs/security.md). Checked in this order, each before anything is
imported or called:

1. the path is ``package.module:Name``, made of identifiers, with no dunder parts;
2. its module is not in the standard library (``os``, ``subprocess``, ``builtins``, ...);
3. every import allow-list given admits its module (``--allow-import PKG``,
   ``$OMNI_AGENT_ALLOW_IMPORTS``, ``[security] allow_imports``); then it is imported;
4. the object is a class or function whose ``__module__`` lies in the same package and
   passes 2 and 3 too — so a re-export (``os:system`` is ``posix.system``; a package's
   ``from subprocess import check_output``) is refused — or an instance made to be used
   there (a ``@hook`` middleware, a ``@tool``);
5. it is of the kind expected there (a Middleware, a Thinker class, a tool, ...).

Built-in short names are trusted: they skip 2-4 and need no allow-list.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError

__all__ = [
    "THINKERS", "TALKERS", "MIDDLEWARE", "TOOLS", "resolve",
    "Kind", "Table", "ImportPolicy", "AllowList", "ALLOW_IMPORTS_ENV",
    "import_policy", "current_import_policy", "parse_allow_list", "is_stdlib_module",
    "check_command", "ALLOW_COMMANDS_ENV",
]

ALLOW_IMPORTS_ENV = "OMNI_AGENT_ALLOW_IMPORTS"
DOCS = "docs/security.md"


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Kind:
    """What an import path must name in one place of a config.

    ``accepts`` judges a class or function (already known to be defined in the package
    the path names); ``instance`` accepts a ready-made object wherever it was defined,
    for objects made to be used there (a ``@hook`` middleware, a ``@tool``).
    """

    description: str
    accepts: Callable[[Any], bool]
    instance: Callable[[Any], bool] = lambda obj: False


def _backend_class(*methods: str) -> Callable[[Any], bool]:
    """A class with these methods (and ``aclose``) that is not a Middleware (which has a
    ``stream`` hook of its own), or a class whose ``from_options`` builds one (a factory
    such as the embedded Thinker, which picks its engine)."""
    def accepts(obj: Any) -> bool:
        from .bus import Middleware

        if not inspect.isclass(obj) or issubclass(obj, Middleware):
            return False
        return (callable(getattr(obj, "from_options", None))
                or all(callable(getattr(obj, m, None)) for m in (*methods, "aclose")))

    return accepts


def _middleware_class_or_function(obj: Any) -> bool:
    from .bus import Middleware

    return inspect.isfunction(obj) or (inspect.isclass(obj) and issubclass(obj, Middleware))


def _middleware_instance(obj: Any) -> bool:
    from .bus import Middleware

    return isinstance(obj, Middleware)


def _tool_instance(obj: Any) -> bool:
    from .tools import Tool
    from .tools.interop import is_langchain_tool

    return isinstance(obj, Tool) or is_langchain_tool(obj)


ANY = Kind("a class or a function", lambda obj: True)
THINKER = Kind("a Thinker class (with stream() and aclose() methods)", _backend_class("stream"))
TALKER = Kind("a Talker class (with speak() and aclose() methods)", _backend_class("speak"))
MIDDLEWARE_KIND = Kind("a Middleware subclass, a Middleware instance (@hook) or a function",
                       _middleware_class_or_function, _middleware_instance)
TOOL = Kind("a function (typed, with a docstring), a @tool or a langchain-core tool",
            inspect.isfunction, _tool_instance)


class Table(dict[str, str]):
    """Short names of one kind of built-in, each mapped to its import path.

    A plain ``dict`` to read; ``what`` names the kind in messages and ``kind`` says what
    an import path given in its place must name.
    """

    def __init__(self, what: str, kind: Kind, entries: dict[str, str]):
        super().__init__(entries)
        self.what = what
        self.kind = kind


THINKERS = Table("thinker backend", THINKER, {
    "embedded": "omni_agent.thinkers.embedded:EmbeddedThinker",
    "llama-cpp": "omni_agent.thinkers.llama_cpp:LlamaCppThinker",
    "transformers": "omni_agent.thinkers.transformers:TransformersThinker",
    "openai": "omni_agent.thinkers.openai:OpenAIThinker",
    "scripted": "omni_agent.testing:ScriptedThinker",
    "qwen3-omni": "omni_agent.thinkers.qwen3_omni:Qwen3OmniThinker",
    "vllm-omni": "omni_agent.thinkers.vllm_omni:VLLMOmniThinker",
})

TALKERS = Table("talker backend", TALKER, {
    "piper": "omni_agent.talkers.piper:PiperTalker",
    "espeak": "omni_agent.talkers.espeak:EspeakTalker",
    "openai": "omni_agent.talkers.openai:OpenAITalker",
    "recording": "omni_agent.testing:RecordingTalker",
    "qwen3-omni": "omni_agent.thinkers.qwen3_omni:Qwen3OmniTalker",
    "vllm-omni": "omni_agent.thinkers.vllm_omni:VLLMOmniTalker",
})

MIDDLEWARE = Table("middleware", MIDDLEWARE_KIND, {
    "pii": "omni_agent.middleware.pii:PIIRedactor",
    "blocklist": "omni_agent.middleware.policy:Blocklist",
    "moderation": "omni_agent.middleware.policy:Moderation",
    "markup": "omni_agent.middleware.markup:MarkupGuard",
    "speech": "omni_agent.middleware.speech:SpeechShaper",
    "tools": "omni_agent.middleware.tool_calling:ToolCalling",
    "rag": "omni_agent.middleware.rag:RAG",
})

TOOLS = Table("tool", TOOL, {
    "current_time": "omni_agent.tools.builtin:current_time",
    "calculator": "omni_agent.tools.builtin:calculator",
    "memory_search": "omni_agent.tools.builtin:memory_search",
})


# ------------------------------------------------------------------- the standard library


@lru_cache(maxsize=None)
def _stdlib_folders() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    return tuple(Path(paths[k]).resolve() for k in ("stdlib", "platstdlib") if k in paths)


def _in_stdlib_folder(file: str | None) -> bool:
    if file in ("built-in", "frozen"):
        return True
    if not file:
        return False
    path = Path(file).resolve()
    if {"site-packages", "dist-packages"} & set(path.parts):
        return False
    return any(path.is_relative_to(folder) for folder in _stdlib_folders())


def is_stdlib_module(module: str) -> bool:
    """True when ``module`` is part of Python's standard library (without importing it).

    Python's own list, plus anything else shipped in its folder (its ``test`` package,
    vendored tools) outside ``site-packages``.
    """
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return True
    loaded = sys.modules.get(top)
    if loaded is not None:
        return _in_stdlib_folder(getattr(loaded, "__file__", None))
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: finds, imports nothing
    except (ImportError, ValueError):
        return False
    return spec is not None and _in_stdlib_folder(spec.origin)


# --------------------------------------------------------------------------- the allow-list

_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def parse_allow_list(values: str | Iterable[str], source: str = "allow_imports") -> tuple[str, ...]:
    """Package names from ``values`` (each may hold several, comma- or space-separated).

    Raises :class:`ConfigError` for a malformed name or a standard-library package, which
    no allow-list can admit.
    """
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        for entry in re.split(r"[,\s]+", value.strip()):
            if not entry:
                continue
            if not _DOTTED.fullmatch(entry):
                raise ConfigError(f"{source}: {entry!r} is not a package name: give dotted Python "
                                  "names like 'mypackage' or 'mypackage.safety'")
            if is_stdlib_module(entry):
                raise ConfigError(f"{source}: {entry!r} is in the standard library, which a config may "
                                  "never import: put what you need in a function or class of your own "
                                  f"package and allow that package ({DOCS})")
            if entry not in out:
                out.append(entry)
    return tuple(out)


@dataclass(frozen=True)
class AllowList:
    """Packages whose modules (the package and everything under it) a config may import."""

    packages: tuple[str, ...]
    source: str  # where it was given, for messages: "--allow-import", "[security] allow_imports"

    def admits(self, module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in self.packages)

    def how_to_add(self, package: str) -> str:
        if self.source.startswith("--"):
            return f"add it with {self.source} {package}"
        if self.source.startswith("["):
            return f"add {package!r} to {self.source} in the config"
        return f"add {package} to {self.source}"


@dataclass(frozen=True)
class ImportPolicy:
    """The import allow-lists in force. A module must be admitted by every one of them:
    each list can only narrow what the others allow. No list: any package but the
    standard library."""

    allow_lists: tuple[AllowList, ...] = ()

    def restricted(self, packages: Iterable[str] | None, source: str) -> ImportPolicy:
        """This policy narrowed by one more allow-list (``None``: unchanged)."""
        if packages is None:
            return self
        names = packages if isinstance(packages, str) else list(packages)
        extra = AllowList(parse_allow_list(names, source), source)
        if extra in self.allow_lists:
            return self
        return ImportPolicy(self.allow_lists + (extra,))

    def refusing(self, module: str) -> AllowList | None:
        """The first allow-list that does not admit ``module``, if any."""
        return next((a for a in self.allow_lists if not a.admits(module)), None)


ALLOW_COMMANDS_ENV = "OMNI_AGENT_ALLOW_COMMANDS"


def check_command(command: str, args: list[str], what: str, policy: ImportPolicy | None = None) -> None:
    """Refuse a command a config would launch (an ``[[mcp]]`` stdio server) unless the rule
    allows it. A command is code, like an import path:

    * with no import allow-list in force, any command may run (as any package may be
      imported: the config is trusted as code);
    * with one, ``python -m module ...`` (the running interpreter, or ``python``/``python3``)
      is checked as the module's import would be: never the standard library, and admitted
      by every allow-list; any other command must be listed in ``$OMNI_AGENT_ALLOW_COMMANDS``
      (executable names or absolute paths, commas or spaces) — a list only the person
      running omni-agent can give, never the config.
    """
    policy = policy if policy is not None else current_import_policy()
    if not policy.allow_lists:
        return
    exe = os.path.basename(command)
    pythons = {os.path.basename(sys.executable), "python", "python3", f"python3.{sys.version_info[1]}"}
    if (command == sys.executable or exe in pythons) and len(args) >= 2 and args[0] == "-m":
        module = args[1]
        if not _DOTTED.fullmatch(module):
            raise ConfigError(f"{what}: {module!r} is not a module name")
        _refuse_module(module, what, f"{command} -m {module}", policy)
        return
    allowed = [c for c in re.split(r"[,\s]+", os.environ.get(ALLOW_COMMANDS_ENV, "").strip()) if c]
    if command in allowed or (exe == command and exe in allowed):
        return
    listed = ", ".join(f"{a.source}: {', '.join(a.packages) or 'nothing'}" for a in policy.allow_lists)
    raise ConfigError(f"{what} would run the command {command!r}, and an import allow-list is in force "
                      f"({listed}): a config may launch only 'python -m <allowed package>' then. If you "
                      f"trust {command!r}, add it to ${ALLOW_COMMANDS_ENV} ({DOCS})")


def _env_allow_list() -> ImportPolicy:
    value = os.environ.get(ALLOW_IMPORTS_ENV, "")
    return ImportPolicy().restricted([value], ALLOW_IMPORTS_ENV) if value.strip() else ImportPolicy()


_ACTIVE: ContextVar[ImportPolicy] = ContextVar("omni_agent_import_policy", default=ImportPolicy())


def current_import_policy() -> ImportPolicy:
    """The policy :func:`resolve` applies now: ``$OMNI_AGENT_ALLOW_IMPORTS`` (always, in
    every process that reads a config) plus the lists of the enclosing
    :func:`import_policy` blocks."""
    policy = _env_allow_list()
    for allow in _ACTIVE.get().allow_lists:
        if allow not in policy.allow_lists:
            policy = ImportPolicy(policy.allow_lists + (allow,))
    return policy


@contextmanager
def import_policy(policy: ImportPolicy) -> Iterator[ImportPolicy]:
    """Apply ``policy`` to every :func:`resolve` in the block (also those made by
    middleware while being built, such as a moderation ``check``)::

        with import_policy(ImportPolicy().restricted(["mypkg"], "allow_imports")):
            agent = build_agent(cfg)
    """
    token = _ACTIVE.set(policy)
    try:
        yield policy
    finally:
        _ACTIVE.reset(token)


# --------------------------------------------------------------------------- resolve


def _parse(target: str, what: str, name: str) -> tuple[str, list[str]]:
    mod_name, _, attr = target.partition(":")
    parts = attr.split(".")
    if (not _DOTTED.fullmatch(mod_name) or not _DOTTED.fullmatch(attr)
            or any(p.startswith("__") for p in mod_name.split(".") + parts)):
        raise ConfigError(f"{what} {name!r} is not a valid import path: write "
                          "'package.module:Name', naming a public class or function of your own")
    return mod_name, parts


def _refuse_module(module: str, what: str, name: str, policy: ImportPolicy, *, via: str = "") -> None:
    """Refuse ``module`` (checked before it is imported) if the rule does not allow it."""
    if is_stdlib_module(module):
        whose = f"comes from {module!r}, " if via else f"names {module!r}, "
        raise ConfigError(f"{what} {name!r} {whose}which is in the standard library: a config may "
                          "import only your own code, never the standard library. Write a class "
                          "or function in your own package and name that instead (a config is "
                          f"code: {DOCS})")
    refusing = policy.refusing(module)
    if refusing is not None:
        package = module.partition(".")[0]
        listed = ", ".join(refusing.packages) or "nothing"
        whose = f"comes from {module!r}, which" if via else f"names {module!r}, which"
        raise ConfigError(f"{what} {name!r} {whose} is not in the import allow-list "
                          f"({refusing.source}: {listed}). If you trust that code, "
                          f"{refusing.how_to_add(package)} ({DOCS})")


def _describe(obj: Any) -> str:
    if inspect.ismodule(obj):
        return f"the module {obj.__name__!r}"
    if inspect.isbuiltin(obj) or inspect.isroutine(obj):
        return f"the built-in {getattr(obj, '__qualname__', obj)!r}"
    return f"a {type(obj).__name__} object"


def _check_origin(obj: Any, mod_name: str, attrs: list[str], what: str, name: str,
                  policy: ImportPolicy, kind: Kind) -> None:
    """A class or function must be defined in the package the path names."""
    if not (inspect.isclass(obj) or inspect.isfunction(obj)):
        raise ConfigError(f"{what} {name!r} names {_describe(obj)}, not a class or function: "
                          f"a {what} import path must name {kind.description} ({DOCS})")
    defined = getattr(obj, "__module__", None)
    if not isinstance(defined, str):
        raise ConfigError(f"{what} {name!r}: cannot tell where it is defined; name a class or "
                          "function of your own package")
    if defined != mod_name:
        _refuse_module(defined, what, name, policy, via="re-export")
        if defined.partition(".")[0] != mod_name.partition(".")[0]:
            real = f"{defined}:{getattr(obj, '__qualname__', attrs[-1])}"
            raise ConfigError(f"{what} {name!r} is defined in {defined!r}, not in package "
                              f"{mod_name.partition('.')[0]!r}: name it where it is defined "
                              f"({real!r})")


def _short_name_for(target: str, table: dict[str, str]) -> str | None:
    return next((short for short, path in table.items() if path == target), None)


def resolve(name: str, table: dict[str, str] | None = None, what: str | None = None, *,
            kind: Kind | None = None) -> Any:
    """Resolve a short name from ``table``, or an import path ``"package.module:Name"``
    checked against the rule above and the :func:`current_import_policy`.

    ``what`` names the place in messages and ``kind`` says what is expected there (both
    default to the table's). Raises :class:`ConfigError` saying what to do instead.
    """
    table = table or {}
    if isinstance(table, Table):
        what, kind = what or table.what, kind or table.kind
    what, kind = what or "object", kind or ANY
    trusted = name in table
    target = table.get(name, name)
    if ":" not in target:
        known = ", ".join(sorted(table))
        raise ConfigError(f"unknown {what} {name!r}: use one of {known}, or an import path "
                          "like 'mypackage.module:Name'" if known else
                          f"unknown {what} {name!r}: give an import path like 'mypackage.module:Name'")
    mod_name, attrs = _parse(target, what, name)
    policy = current_import_policy()
    if not trusted:
        try:
            _refuse_module(mod_name, what, name, policy)
        except ConfigError as e:
            short = _short_name_for(target, table)
            if short is None:
                raise
            raise ConfigError(f"{e} — or use the built-in short name {short!r}") from None
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"cannot import {what} {name!r} ({target}): {e}. Is the package "
                          "installed (and its extra, e.g. pip install 'omni-agent[speech]')?") from e
    try:
        obj: Any = mod
        for part in attrs:
            obj = getattr(obj, part)
    except AttributeError as e:
        raise ConfigError(f"{what} {name!r}: module {mod_name!r} has no attribute "
                          f"{'.'.join(attrs)!r}") from e
    if kind.instance(obj):
        return obj
    if not trusted:
        _check_origin(obj, mod_name, attrs, what, name, policy, kind)
    if not kind.accepts(obj):
        shown = "a class" if inspect.isclass(obj) else "a function"
        raise ConfigError(f"{what} {name!r} is {shown} that is not a {_noun(what)}: a {what} "
                          f"import path must name {kind.description}")
    return obj


def _noun(what: str) -> str:
    return {"thinker backend": "Thinker", "talker backend": "Talker", "middleware": "Middleware"}.get(what, what)
