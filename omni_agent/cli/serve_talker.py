"""``omni-agent serve talker``: a Talker as an OpenAI-compatible ``/v1/audio/speech`` service.

::

    omni-agent serve talker                          # Piper, embedded en_US voice, port 8002
    omni-agent serve talker --talker espeak --lang fr --port 8003
    omni-agent serve talker --config agent.toml      # the config's [talker]

An agent in another process then speaks through it with
``[talker] backend = "openai"  base_url = "http://127.0.0.1:8002/v1"``.
"""

from __future__ import annotations

import click

from .common import friendly_errors

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
@friendly_errors
def serve_talker(talker_name, voice, lang, url, config_path, host, port):
    """Serve a Talker over HTTP (POST /v1/audio/speech, streaming pcm or wav)."""
    import uvicorn

    from ..server.talker import create_talker_app
    from .voice import make_talker

    if config_path and not (talker_name or voice or lang or url):
        from ..config import build_talker, load_config

        cfg = load_config(config_path)
        if cfg.talker is None:
            raise click.ClickException(f"{config_path} has no [talker] section to serve")
        talker = build_talker(cfg.talker)
    else:
        talker = make_talker(talker_name or "piper", voice=voice, lang=lang, url=url)
    click.echo(f"serving the {talker.name} Talker ({talker.sample_rate} Hz) at "
               f"http://{host}:{port}/v1/audio/speech", err=True)
    uvicorn.run(create_talker_app(talker), host=host, port=port, log_level="warning")


def register_serve(group: click.Group) -> None:
    group.add_command(serve_talker)
