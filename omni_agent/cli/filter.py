"""``omni-agent filter``: check a safety config before going live.

Reads text on stdin and streams it through the configured middleware as if the Thinker
had said it (a scripted Thinker, no Talker: the real bus, segmenter and agent), then
prints JSON lines: each utterance that would reach the Talker and each intervention::

    echo "Call me at 555-0199." | omni-agent filter --random-chunks 7
    {"type": "utterance", "text": "Call me at [phone number].", "display": "Call me at 555-0199.", ...}
    {"type": "intervention", "middleware": "pii", "action": "rewrite", ...}
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
from typing import Any

import click

from .common import config_option, friendly_errors

__all__ = ["filter_command", "chunk_text", "run_filter", "register"]

_TOKENS = re.compile(r"\s*\S+|\s+")


def chunk_text(text: str, chunk: int | None = None, seed: int | None = None) -> list[str]:
    """Cut ``text`` into stream deltas: ``chunk`` characters each, random sizes (1–12)
    from ``seed``, or word-like tokens (the default), as a Thinker streams them."""
    if chunk is not None:
        if chunk < 1:
            raise click.BadParameter("--chunk must be at least 1")
        return [text[i:i + chunk] for i in range(0, len(text), chunk)]
    if seed is not None:
        rng = random.Random(seed)
        out, i = [], 0
        while i < len(text):
            n = rng.randint(1, 12)
            out.append(text[i:i + n])
            i += n
        return out
    return _TOKENS.findall(text)


def _default_middleware() -> list[Any]:
    from ..middleware.markup import MarkupGuard
    from ..middleware.pii import PIIRedactor
    from ..middleware.speech import SpeechShaper

    return [MarkupGuard(), PIIRedactor(), SpeechShaper()]


async def run_filter(chunks: list[str], middleware: list[Any], agent_options: dict[str, Any],
                     emit: Any) -> int:
    """Stream ``chunks`` through an agent with ``middleware``; call ``emit(dict)`` per line.
    Returns the number of utterances that would reach the Talker."""
    from ..agent import Agent
    from ..events import ErrorEvent, ToolCall, Utterance
    from ..testing import ScriptedThinker

    agent = Agent(thinker=ScriptedThinker([chunks]), middleware=middleware, **agent_options)
    session = agent.session("filter")
    n = 0
    async for ev in session.run("(filter input)"):
        if isinstance(ev, Utterance):
            n += 1
            emit({"type": "utterance", "text": ev.text, "display": ev.display, "index": ev.index,
                  "fallback": ev.fallback})
        elif isinstance(ev, ToolCall):
            emit({"type": "tool_call", "name": ev.name, "arguments": ev.arguments})
        elif isinstance(ev, ErrorEvent):
            emit({"type": "error", "stage": ev.stage, "message": ev.message})
    trace = session.last_trace
    if trace is not None:
        for iv in trace.interventions:
            emit({"type": "intervention", "middleware": iv.middleware, "point": iv.point,
                  "action": iv.action, "before": iv.before, "after": iv.after, "reason": iv.reason})
        if trace.reasoning:
            emit({"type": "reasoning", "text": trace.reasoning})
    return n


@click.command("filter")
@config_option(help="Agent config (TOML); its [[middleware]] and [agent] settings are used. "
                    "Default: the built-in safety chain (markup, pii, speech).")
@click.option("--chunk", type=int, default=None, help="Stream the text in pieces of N characters.")
@click.option("--random-chunks", "seed", type=int, default=None,
              help="Stream the text in random pieces of 1-12 characters (reproducible with SEED).")
@click.option("--lang", default=None, help="The language of the text (for speech shaping and labels).")
@friendly_errors
def filter_command(config_path: str | None, allow_imports: tuple[str, ...] | None, chunk: int | None,
                   seed: int | None, lang: str | None) -> None:
    """Stream stdin through the safety middleware as if the Thinker said it; print JSON lines."""
    if chunk is not None and seed is not None:
        raise click.UsageError("give either --chunk or --random-chunks, not both")
    text = sys.stdin.read()
    if not text.strip():
        raise click.UsageError("nothing on stdin: pipe in the text to check, e.g. "
                               "echo 'Call 555-0199' | omni-agent filter")
    options: dict[str, Any] = {}
    if config_path:
        from ..config import build_middleware, imports_policy, load_config
        from ..registry import import_policy

        cfg = load_config(config_path)
        with import_policy(imports_policy(cfg, allow_imports)):
            middleware = build_middleware(cfg.middleware)
        a = cfg.agent
        options = {"fallback": a.fallback, "keep_originals": a.keep_originals, "lang": a.lang}
    else:
        middleware = _default_middleware()
    if lang:
        options["lang"] = lang

    def emit(d: dict[str, Any]) -> None:
        click.echo(json.dumps(d, ensure_ascii=False))

    asyncio.run(run_filter(chunk_text(text, chunk, seed), middleware, options, emit))


def register(group: click.Group) -> None:
    group.add_command(filter_command)
