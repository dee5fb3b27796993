"""``omni-agent serve thinker``: run the configured Thinker as an OpenAI-compatible server."""

from __future__ import annotations

import click

from .common import friendly_errors
from .serve import web_options


@click.command("thinker")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Agent config (TOML); its [thinker] and [generation] sections are used. "
                   "Default: the embedded SmolLM2-135M-Instruct.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--model", "model", default=None,
              help="Override the thinker's model (a directory, a .gguf file or a hub id).")
@click.option("--model-name", default=None, help="Model id reported by /v1/models.")
@click.option("--any-model", is_flag=True,
              help="Answer requests naming any model (for clients that hard-code one, such as "
                   "gpt-4o-mini) instead of a 404 model_not_found.")
@click.option("--max-body-bytes", default=16 << 20, show_default=True, type=int,
              help="Largest request body, media included (413 beyond).")
@click.option("--max-prompt-chars", default=128 * 1024, show_default=True, type=int,
              help="Characters of text per request, all messages and tools together (400 beyond).")
@click.option("--max-concurrent-requests", default=None, type=int,
              help="Generations at once (default: what the backend can run; 1 for a local "
                   "model). More wait in the queue.")
@click.option("--max-queued-requests", default=16, show_default=True, type=int,
              help="Requests waiting for a free slot; one more is answered 429 with Retry-After.")
@click.option("--max-queue-seconds", default=60.0, show_default=True, type=float,
              help="How long a request may wait for a slot (then 429).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@web_options("OMNI_AGENT_THINKER_TOKEN")
@friendly_errors
def serve_thinker(config_path, host, port, model, model_name, any_model, max_body_bytes,
                  max_prompt_chars, max_concurrent_requests, max_queued_requests,
                  max_queue_seconds, log_level, web):
    """Serve a Thinker at /v1/chat/completions (streaming and not), /v1/models, /health
    and /metrics."""
    import uvicorn

    from ..config import build_thinker, load_config
    from ..server.security import uvicorn_config
    from ..server.thinker_server import ThinkerServerLimits, create_app
    from ..thinker import GenerationSettings
    from .serve import checked

    security = web.security(host)
    server_limits = web.limits()
    limits = checked(ThinkerServerLimits, max_body_bytes=max_body_bytes,
                     max_prompt_chars=max_prompt_chars,
                     max_concurrent_requests=max_concurrent_requests,
                     max_queued_requests=max_queued_requests, max_queue_seconds=max_queue_seconds)
    cfg = load_config(config_path if config_path else {"thinker": {"backend": "embedded"}})
    section = cfg.thinker
    if model:
        section = section.model_copy(update={"model": model})
    thinker = build_thinker(section)
    load = getattr(thinker, "load", None)
    if callable(load):
        click.echo(f"loading {getattr(thinker, 'model_name', thinker.name)} ...", err=True)
        load()  # fail now, with a clear message, not on the first request
    app = create_app(thinker, model_name=model_name,
                     defaults=GenerationSettings(**cfg.generation.model_dump()),
                     security=security, limits=limits, any_model=any_model)
    click.echo(f"serving {app.state.model_name} at http://{host}:{port}/v1 "
               f"(POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics)"
               + (", any model name accepted" if any_model else "")
               + (" with a token" if web.token else ""), err=True)
    web.warn_if_exposed(host)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, limits=server_limits,
                                  log_level=log_level)).run()


def register_serve(serve_group: click.Group) -> None:
    """Add ``thinker`` to the ``omni-agent serve`` group."""
    serve_group.add_command(serve_thinker)
