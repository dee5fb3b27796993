"""``omni-agent demo``: the project's main job — a short live conversation with the
embedded default agent, printing each reply and its trace."""

from __future__ import annotations

import asyncio

import click

from .common import build_agent_from, config_option, friendly_errors, print_turn, warm_up

# Each step: (what it shows, the user's words). Later capabilities add their own steps.
DEMO_TURNS: list[tuple[str, str]] = [
    ("a plain question", "What is the capital of France?"),
    ("a follow-up that needs the conversation so far", "And what is a famous tower there?"),
    ("general knowledge", "Name a planet in our solar system."),
]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print events and traces as JSON lines.")
@config_option
@friendly_errors
def demo(as_json, config_path):
    """Run a short conversation with the embedded default agent and show the trace."""
    click.echo("Loading the embedded default agent (SmolLM2-135M-Instruct on CPU)...", err=True)
    agent = build_agent_from(config_path)
    session = agent.session("demo")

    async def run():
        await warm_up(agent)
        for what, text in DEMO_TURNS:
            if not as_json:
                click.echo(click.style(f"\n== {what}", bold=True))
                click.echo(f"you> {text}")
                click.echo("agent> ", nl=False)
            await print_turn(session, _turn(text), as_json=as_json)
        await agent.aclose()

    asyncio.run(run())


def _turn(text):
    from ..events import UserTurn

    return UserTurn.of(text)


def register(group: click.Group) -> None:
    group.add_command(demo)
