"""``omni-agent serve talker``: a Talker as an OpenAI-compatible ``/v1/audio/speech`` service.

::

    omni-agent serve talker                          # Piper, embedded en_US voice, port 8002
    omni-agent serve talker --talker espeak --lang fr --port 8003
    omni-agent serve talker --config agent.toml      # the config's [talker]

An agent in another process then speaks through it with
``[talker] backend = "openai"  base_url = "http://127.0.0.1:8002/v1"`` (with ``--token``,
give the talker ``api_key``, or set ``$OPENAI_API_KEY`` for it).
"""

from __future__ import annotations

import click

from .common import friendly_errors
from .serve import web_options

__all__ = ["register_serve"]


@click.command("talker")
@click.option("--talker", "talker_name", default=None,
              help="piper (default), espeak, openai or module:Class.")
@click.option("--voice", help="piper: a .onnx voice path; espeak/openai: a voice name.")
@click.option("--lang", help="espeak: the default language (a request's 'language' overrides it).")
@click.option("--url", help="openai: the upstream server's base URL (a relay).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Take the Talker from this agent config's [talker] section.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8002, show_default=True, type=int, help="Port to listen on.")
@click.option("--max-input-chars", default=4096, show_default=True, type=int,
              help="Longest 'input' per request (OpenAI's limit is 4096).")
@click.option("--max-piece-chars", default=200, show_default=True, type=int,
              help="Longest text synthesized at once: longer input is spoken piece by piece.")
@click.option("--max-concurrent", default=2, show_default=True, type=int,
              help="Syntheses running at once; more requests wait (--queue-timeout) then get 503.")
@click.option("--queue-timeout", default=10.0, show_default=True, type=float,
              help="Seconds a request may wait for a free synthesis slot.")
@click.option("--max-body-bytes", default=64 * 1024, show_default=True, type=int,
              help="Largest request body (413 beyond).")
@click.option("--sample-rate", default="24000", show_default=True,
              help="Rate of every answer in Hz (24000 is OpenAI's), or 'native' for the Talker's "
                   "own; a request's X-Sample-Rate header overrides it.")
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@web_options("OMNI_AGENT_TALKER_TOKEN")
@friendly_errors
def serve_talker(talker_name, voice, lang, url, config_path, host, port, max_input_chars,
                 max_piece_chars, max_concurrent, queue_timeout, max_body_bytes, sample_rate,
                 log_level, web):
    """Serve a Talker over HTTP (POST /v1/audio/speech: mp3, opus, aac, flac, wav, pcm)."""
    import uvicorn

    from ..server.security import uvicorn_config
    from ..server.talker import SpeechLimits, create_talker_app, parse_sample_rate
    from .serve import checked
    from .voice import make_talker

    try:
        rate = parse_sample_rate(sample_rate)
    except ValueError as e:
        raise click.UsageError(f"--sample-rate: {e}") from None
    security = web.security(host)
    server_limits = web.limits()
    limits = checked(SpeechLimits, max_input_chars=max_input_chars, max_piece_chars=max_piece_chars,
                      max_concurrent=max_concurrent, queue_timeout=queue_timeout,
                      max_body_bytes=max_body_bytes)
    if config_path and not (talker_name or voice or lang or url):
        from ..config import build_talker, load_config

        cfg = load_config(config_path)
        if cfg.talker is None:
            raise click.ClickException(f"{config_path} has no [talker] section to serve")
        talker = build_talker(cfg.talker)
    else:
        talker = make_talker(talker_name or "piper", voice=voice, lang=lang, url=url)
    app = create_talker_app(talker, security=security, limits=limits, sample_rate=rate)
    click.echo(f"serving the {talker.name} Talker ({talker.sample_rate} Hz, answers at "
               f"{rate or talker.sample_rate} Hz) at "
               f"http://{host}:{port}/v1/audio/speech" + (" with a token" if web.token else ""),
               err=True)
    web.warn_if_exposed(host)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, limits=server_limits,
                                  log_level=log_level)).run()


def register_serve(group: click.Group) -> None:
    group.add_command(serve_talker)
