"""Shared pieces of the CLI commands: building the agent, printing a turn, errors."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from ..errors import OmniAgentError
from ..events import (
    AudioChunk,
    AudioPart,
    ErrorEvent,
    ImagePart,
    TextDelta,
    TextPart,
    ToolCall,
    ToolResult,
    TurnEnd,
    UserTurn,
    Utterance,
    VideoPart,
    event_to_dict,
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer in one or two short sentences."


CONFIG_HELP = "Agent config (TOML). Default: the embedded default agent."

ALLOW_IMPORT_HELP = ("Let the config import code from package PKG (repeatable). When given, the "
                     "config may import only from these packages, never from the standard library; "
                     "$OMNI_AGENT_ALLOW_IMPORTS (comma-separated) and the config's [security] "
                     "allow_imports narrow it further. A config is code: see docs/security.md.")


def allow_import_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--allow-import PKG`` (repeatable), passed as ``allow_imports``: a tuple, or None
    when not given."""
    def to_none(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...] | None:
        return value or None

    return click.option("--allow-import", "allow_imports", multiple=True, metavar="PKG",
                        callback=to_none, help=ALLOW_IMPORT_HELP)(fn)


def config_option(fn: Callable[..., Any] | None = None, *, help: str = CONFIG_HELP) -> Any:
    """``--config PATH`` (as ``config_path``) and ``--allow-import PKG`` (as
    ``allow_imports``): every command that reads a config takes both. Use as
    ``@config_option`` or ``@config_option(help="...")``."""
    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        f = allow_import_option(f)
        return click.option("--config", "config_path", type=click.Path(dir_okay=False), help=help)(f)

    return wrap(fn) if fn is not None else wrap


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors (and missing files) into a clear message and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except (OmniAgentError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None

    return wrapper


def default_config() -> dict[str, Any]:
    """The embedded default agent: SmolLM2-135M-Instruct on llama.cpp (transformers when
    llama-cpp-python is not installed), on CPU, with the time and calculator tools (the
    time and calculator tools' answers are said as they are, in one Thinker round), and retrieval over the default collection once
    documents were ingested (``omni-agent ingest PATH``)."""
    from ..middleware.rag import default_rag_config

    cfg: dict[str, Any] = {
        "tools": ["current_time", "calculator"],
        "agent": {"system_prompt": DEFAULT_SYSTEM_PROMPT},
        "thinker": {"backend": "embedded"},
        "generation": {"max_tokens": 96},
        # The router picks a tool from the user's words and constrained decoding writes a
        # valid call: SmolLM2-135M does not call tools on its own (docs/tools.md).
        "middleware": [{"use": "tools", "router": True, "return_direct": ["current_time", "calculator"]}],
    }
    rag = default_rag_config()
    if rag is not None:
        cfg["middleware"].append(rag)
    return cfg


def build_agent_from(config_path: str | None, allow_imports: Any = None, **overrides: Any) -> Any:
    """The agent of ``config_path`` (else the embedded default), its import paths checked
    against ``allow_imports`` (``--allow-import``)."""
    from ..config import build_agent, load_config

    cfg = load_config(config_path if config_path else default_config())
    return build_agent(cfg, allow_imports=allow_imports, **overrides)


def make_turn(text: str | None, image: str | None = None, audio: str | None = None,
              video: str | None = None) -> UserTurn:
    parts: list[Any] = []
    if text:
        parts.append(TextPart(text))
    for path, cls in ((image, ImagePart), (audio, AudioPart), (video, VideoPart)):
        if path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"{cls.__name__.replace('Part', '').lower()} file not found: {path}")
            parts.append(cls.from_file(path))
    if not parts:
        raise click.UsageError("give a prompt (-p) or an attachment (--image/--audio/--video)")
    return UserTurn(parts=parts)


async def warm_up(agent: Any, quiet: bool = False) -> None:
    """Load the models before the first turn and say how long it took (on stderr)."""
    loaded = await agent.warm_up()
    if loaded and not quiet:
        parts = ", ".join(f"{role} {secs:.1f} s" for role, secs in loaded.items())
        click.echo(click.style(f"(loaded: {parts})", dim=True), err=True)


async def print_turn(session: Any, turn: UserTurn, *, as_json: bool, show_trace: bool = True,
                     stream: Any = None, audio: list[Any] | None = None) -> Any:
    """Run a turn, printing display text as it comes (or every event as JSON lines).

    Audio chunks are appended to ``audio`` when a list is given. Returns the TurnEnd."""
    out = stream or sys.stdout
    clause_mode = session.agent.display == "clause"
    end = None
    first_clause = True
    async for ev in session.run(turn):
        if as_json:
            out.write(json.dumps(event_to_dict(ev), ensure_ascii=False) + "\n")
            out.flush()
        elif type(ev) is TextDelta and not clause_mode:
            out.write(ev.text)
            out.flush()
        elif type(ev) is Utterance and ev.display and (clause_mode or (ev.added and not ev.text.strip())):
            # clause mode shows approved clauses; display-only lines (sources) show in both
            out.write(("" if first_clause and clause_mode else " ") + ev.display)
            first_clause = False
            out.flush()
        elif isinstance(ev, ToolCall):
            click.echo(click.style(f"[tool call] {ev.name}({ev.arguments})", dim=True), err=True)
        elif isinstance(ev, ToolResult):
            click.echo(click.style(f"[tool result] {ev.name}: {ev.content}", dim=True), err=True)
        elif isinstance(ev, ErrorEvent):
            click.echo(click.style(f"[error] {ev.stage}: {ev.message}", fg="red"), err=True)
        if audio is not None and isinstance(ev, AudioChunk):
            audio.append(ev)
        if isinstance(ev, TurnEnd):
            end = ev
    trace = session.last_trace
    if as_json:
        out.write(json.dumps({"type": "trace", **trace.to_dict()}, ensure_ascii=False) + "\n")
    else:
        out.write("\n")
        if show_trace:
            summary = trace.summary()
            if summary:
                click.echo(click.style(summary, dim=True), err=True)
    out.flush()
    return end
