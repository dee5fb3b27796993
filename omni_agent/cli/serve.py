"""``omni-agent serve``: run a Thinker, a Talker or a whole agent as an HTTP service.

Also the flags every server shares (token, allowed hosts and origins, uvicorn's limits):
decorate a serve command with :func:`web_options` and it receives ``web``, a
:class:`WebOptions` that builds the server's ``WebSecurity`` and ``ServerLimits``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import click

__all__ = ["serve", "register", "web_options", "WebOptions", "checked", "warn_if_exposed",
           "allow_host_option", "allow_origin_option", "header_timeout_option"]


@click.group()
def serve() -> None:
    """Run a Thinker, Talker or agent as its own service (OpenAI-compatible HTTP)."""


def register(group: click.Group) -> None:
    group.add_command(serve)


_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class WebOptions:
    """The shared web-safety flags of a serve command, as given."""

    token: str | None
    allow_host: tuple[str, ...]
    allow_origin: tuple[str, ...]
    limit_concurrency: int
    timeout_keep_alive: int
    header_timeout: float

    def security(self, bind_host: str, **extra: Any) -> Any:
        """The server's ``WebSecurity`` (``extra``: more of its fields)."""
        from ..server.security import WebSecurity

        return checked(WebSecurity, token=self.token, bind_host=bind_host,
                        allowed_hosts=list(self.allow_host),
                        allowed_origins=list(self.allow_origin), **extra)

    def limits(self) -> Any:
        """uvicorn's limits (``ServerLimits``)."""
        from ..server.security import ServerLimits

        return checked(ServerLimits, limit_concurrency=self.limit_concurrency,
                        timeout_keep_alive=self.timeout_keep_alive,
                        header_timeout=self.header_timeout)

    def warn_if_exposed(self, host: str) -> None:
        """Say so on stderr when the server listens beyond loopback without a token."""
        warn_if_exposed(host, self.token)


def warn_if_exposed(host: str, token: str | None) -> None:
    """Say so on stderr when a server listens beyond loopback without a token."""
    if host not in _LOOPBACK and not token:
        click.echo(f"warning: listening on {host} without --token: anyone who can reach "
                   "this port can use the server (give --token, or listen on 127.0.0.1)",
                   err=True)


# The Host/Origin/slow-header flags, shared by every serve command (the agent server takes
# them without the rest of web_options: it sizes uvicorn's limits from its own sessions).
allow_host_option = click.option(
    "--allow-host", multiple=True, metavar="NAME",
    help="Accept this Host name besides 127.0.0.1/localhost/[::1] and --host (repeatable; "
         "'*.example.com' for subdomains). Guards against DNS rebinding.")
allow_origin_option = click.option(
    "--allow-origin", multiple=True, metavar="ORIGIN",
    help="Let web pages from this origin (e.g. https://app.example.com) call the server "
         "(repeatable). Loopback pages and clients without Origin always may.")
header_timeout_option = click.option(
    "--header-timeout", default=10.0, show_default=True, type=float,
    help="Seconds a client has to send its request headers (against slowloris).")


def checked(model: Any, **fields: Any) -> Any:
    """Build a settings model; its validation error becomes a usage error naming the flag."""
    from pydantic import ValidationError

    try:
        return model(**fields)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        name = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "an option"
        name = {"--allowed-hosts": "--allow-host", "--allowed-origins": "--allow-origin"}.get(name, name)
        raise click.UsageError(f"{name}: {first['msg'].removeprefix('Value error, ')}") from None


_WEB_KEYS = ("token", "allow_host", "allow_origin", "limit_concurrency", "timeout_keep_alive",
             "header_timeout")


def web_options(token_envvar: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``--token`` (also read from ``$token_envvar`` or ``$OMNI_AGENT_TOKEN``),
    ``--allow-host``, ``--allow-origin`` (repeatable), ``--limit-concurrency``,
    ``--timeout-keep-alive`` and ``--header-timeout`` to a serve command; the command gets
    them as one ``web`` argument (a :class:`WebOptions`)."""

    options = [
        click.option("--token", default=None, envvar=[token_envvar, "OMNI_AGENT_TOKEN"],
                     help=f"Require 'Authorization: Bearer TOKEN'. Also read from ${token_envvar} "
                          "or $OMNI_AGENT_TOKEN."),
        allow_host_option,
        allow_origin_option,
        click.option("--limit-concurrency", default=256, show_default=True, type=int,
                     help="Connections plus running requests before new requests get 503."),
        click.option("--timeout-keep-alive", default=5, show_default=True, type=int,
                     help="Seconds an idle kept-alive connection stays open."),
        header_timeout_option,
    ]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            web = WebOptions(**{k: kwargs.pop(k) for k in _WEB_KEYS})
            return fn(*args, web=web, **kwargs)

        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate
