"""``omni-agent serve``: run a Thinker, a Talker or a whole agent as an HTTP service."""

from __future__ import annotations

import click


@click.group()
def serve() -> None:
    """Run a Thinker, Talker or agent as its own service (OpenAI-compatible HTTP)."""


def register(group: click.Group) -> None:
    group.add_command(serve)
