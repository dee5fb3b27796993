"""``omni-agent chat``: a Thinker-only text agent in the terminal."""

from __future__ import annotations

import asyncio

import click

from .common import build_agent_from, config_option, friendly_errors, make_turn, print_turn, warm_up


@click.command()
@click.option("-p", "--prompt", help="Ask one question, print the answer and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print every event and the trace as JSON lines.")
@click.option("--image", type=click.Path(), help="Attach an image (Thinkers that accept images).")
@click.option("--audio", type=click.Path(), help="Attach audio (heard by the Thinker or transcribed).")
@click.option("--video", type=click.Path(), help="Attach a video (Thinkers that accept video).")
@click.option("--session", "session_id", default=None, help="Session id (keeps history across turns).")
@click.option("--no-trace", is_flag=True, help="Do not print the trace after each answer.")
@config_option
@friendly_errors
def chat(prompt, as_json, image, audio, video, session_id, no_trace, config_path, allow_imports):
    """Chat with the agent (a REPL; -p for one turn). Tokens print as they stream."""
    agent = build_agent_from(config_path, allow_imports)
    session = agent.session(session_id)
    failed = False

    async def one(text, first):
        nonlocal failed
        turn = make_turn(text, image if first else None, audio if first else None,
                         video if first else None)
        end = await print_turn(session, turn, as_json=as_json, show_trace=not no_trace)
        failed = end is None or end.reason == "error"

    async def repl():
        async with agent:  # runs the agent's MCP servers for the chat (docs/mcp.md)
            await chat_in(agent)

    async def chat_in(agent):
        first = True
        await warm_up(agent, quiet=as_json or no_trace)
        if prompt or image or audio or video:
            await one(prompt, True)
            return
        click.echo("omni-agent chat — type your message, Ctrl-D to quit.", err=True)
        while True:
            try:
                text = await asyncio.to_thread(input, "you> ")
            except EOFError:
                click.echo("", err=True)
                return
            if not text.strip():
                continue
            await one(text, first)
            first = False

    try:
        asyncio.run(repl())
    finally:
        try:
            asyncio.run(agent.aclose())
        except Exception:  # noqa: BLE001 - closing must not hide the real error
            pass
    if failed and (prompt or image or audio or video):
        raise SystemExit(1)


def register(group: click.Group) -> None:
    group.add_command(chat)
