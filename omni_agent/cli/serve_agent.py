"""``omni-agent serve agent``: the whole agent behind WebSocket and HTTP, with the browser
voice page at ``/``."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from .common import default_config, friendly_errors
from .serve import allow_host_option, allow_origin_option, header_timeout_option, warn_if_exposed


def server_default_config() -> dict[str, Any]:
    """The embedded default agent with a voice: SmolLM2 Thinker, Piper Talker, whisper ears
    — and, since a server is a product, safe by default: the markup guard (no tool-call or
    reasoning text is ever spoken or shown) and PII redaction on every clause."""
    cfg = default_config()
    cfg["talker"] = {"backend": "piper"}
    cfg["ears"] = {"max_seconds": 2400}
    cfg["middleware"] = [*cfg["middleware"], {"use": "markup"}, {"use": "pii", "display": True}]
    return cfg


def page_url(host: str, port: int, token: str | None = None, tls: bool = False) -> str:
    """The address of the voice page for a server on ``host:port``."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    url = f"{'https' if tls else 'http'}://{shown}:{port}/"
    return url + (f"?token={token}" if token else "")


@click.command("agent")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Agent config (TOML). Default: the embedded agent (SmolLM2 + Piper + whisper).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=int, help="Port to listen on.")
@click.option("--token", default=None, envvar="OMNI_AGENT_TOKEN",
              help="Require 'Authorization: Bearer TOKEN' (or ?token= on the WebSocket). "
                   "Also read from $OMNI_AGENT_TOKEN.")
@allow_host_option
@allow_origin_option
@header_timeout_option
@click.option("--barge-in/--no-barge-in", default=True, show_default=True,
              help="Let the user interrupt the agent by speaking.")
@click.option("--min-interrupt-ms", default=200, show_default=True, type=int,
              help="Speech this long, while the agent talks, interrupts it.")
@click.option("--end-silence-ms", default=600, show_default=True, type=int,
              help="Silence this long ends the user's turn.")
@click.option("--max-sessions-per-client", default=8, show_default=True, type=int,
              help="Live sessions one client address may hold at once.")
@click.option("--max-audio-seconds", default=2400.0, show_default=True, type=float,
              help="Longest audio per request or user turn (at most 2400 s, 40 minutes).")
@click.option("--shutdown-grace", default=10.0, show_default=True, type=float,
              help="Seconds running turns may take to finish on shutdown before they are cancelled.")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS certificate: browsers allow the microphone only on https or localhost.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="TLS private key for --ssl-certfile.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@friendly_errors
def serve_agent(config_path, host, port, token, allow_host, allow_origin, header_timeout, barge_in,
                min_interrupt_ms, end_silence_ms, max_sessions_per_client, max_audio_seconds, shutdown_grace, ssl_certfile,
                ssl_keyfile, log_level):
    """Serve the agent: live voice sessions (WS /v1/live), one-shot turns (POST /v1/turn,
    /v1/voice), /metrics, /health, and the voice page at /."""
    from ..config import build_agent, load_config
    from ..live import LiveConfig
    from ..server.agent_server import AgentServer, ServerConfig

    cfg = load_config(config_path if config_path else server_default_config())
    agent = build_agent(cfg)
    live = LiveConfig(barge_in=barge_in, min_interrupt_ms=min_interrupt_ms, end_silence_ms=end_silence_ms)
    server = AgentServer(agent, ServerConfig(
        token=token, allowed_hosts=list(allow_host), allowed_origins=list(allow_origin),
        header_timeout=header_timeout, max_sessions_per_client=max_sessions_per_client,
        max_audio_seconds=max_audio_seconds, shutdown_grace=shutdown_grace, live=live))
    if agent.ears is None and "audio" not in agent.thinker.accepts:
        click.echo("note: this agent has no [ears] and its Thinker cannot hear: voice turns will be "
                   "refused (add an [ears] section to the config)", err=True)
    click.echo("loading models ...", err=True)
    loaded = asyncio.run(server.warm_up())
    if loaded:
        click.echo("loaded " + ", ".join(f"{k} {v:.1f} s" for k, v in loaded.items()), err=True)
    tls = bool(ssl_certfile)
    click.echo(f"omni-agent is listening on {page_url(host, port, tls=tls).rstrip('/')}  "
               "(WS /v1/live, POST /v1/turn, POST /v1/voice, GET /metrics, GET /health)", err=True)
    click.echo(f"open {page_url(host, port, token, tls)} in a browser to talk to the agent "
               "(Ctrl+C stops the server)", err=True)
    warn_if_exposed(host, token)
    if host not in ("127.0.0.1", "localhost", "::1") and not tls:
        click.echo("note: browsers allow the microphone only on https or localhost: use "
                   "--ssl-certfile/--ssl-keyfile for other machines", err=True)
    kw: dict[str, Any] = {"log_level": log_level}
    if ssl_certfile:
        kw.update(ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    server.run(host=host, port=port, **kw)


def register_serve(serve_group: click.Group) -> None:
    """Add ``agent`` to the ``omni-agent serve`` group."""
    serve_group.add_command(serve_agent)
