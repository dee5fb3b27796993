"""The omni-agent command line: ``omni-agent chat | demo | serve ... | say | ask | filter | ingest``.

Each command lives in its own module exposing ``register(group)``; modules that add
``serve`` subcommands expose ``register_serve(serve_group)``.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

__all__ = ["main", "COMMAND_MODULES"]

COMMAND_MODULES = [
    "chat",
    "demo",
    "serve",
    "voice",
    "filter",
    "ingest",
    "serve_thinker",
    "serve_talker",
    "serve_agent",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="omni-agent")
@click.option("--otel", is_flag=True, help="Export OpenTelemetry spans of every turn (OTLP, "
              "configured by the OTEL_* variables; on by itself when OTEL_EXPORTER_OTLP_ENDPOINT "
              "or OTEL_TRACES_EXPORTER is set). Needs omni-agent[otel]. See docs/observability.md.")
def main(otel: bool = False) -> None:
    """Voice and text agents: a Thinker, an intervenable bus of middleware, a Talker."""
    from .. import otel as tracing
    from ..errors import OmniAgentError

    if otel:
        try:
            tracing.configure()
        except OmniAgentError as e:
            raise click.UsageError(f"--otel: {e}") from None
    else:
        tracing.configure_from_env()  # reads the environment only, unless it asks for traces


def _load() -> None:
    from .serve import serve

    for name in COMMAND_MODULES:
        mod_name = f"{__name__}.{name}"
        if importlib.util.find_spec(mod_name) is None:
            continue  # a command whose module is not in this build
        mod = importlib.import_module(mod_name)
        if hasattr(mod, "register"):
            mod.register(main)
        if hasattr(mod, "register_serve"):
            mod.register_serve(serve)


_load()
