"""``omni-agent demo``: the project's main job — a short live conversation with the
embedded default voice agent. Each reply is generated live, spoken by the Talker into a
WAV file, and shown with its trace (interventions, tool calls, citations, latency)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ..events import AudioChunk, UserTurn
from .common import build_agent_from, config_option, friendly_errors, print_turn, warm_up

# Each step: (what it shows, the user's words).
DEMO_TURNS: list[tuple[str, str]] = [
    ("a plain question", "What is the capital of France?"),
    ("a follow-up that needs the conversation so far", "And what is a famous tower there?"),
    ("general knowledge", "Name a planet in our solar system."),
]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print events and traces as JSON lines.")
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the spoken replies are written (one WAV per turn).")
@click.option("--no-speech", is_flag=True, help="Text only: no Talker, no WAV files.")
@config_option
@friendly_errors
def demo(as_json, out_dir, no_speech, config_path):
    """Run a short spoken conversation with the embedded default agent and show the trace."""
    from .voice import latency_breakdown, make_talker

    click.echo("Loading the embedded default agent (SmolLM2-135M-Instruct, Piper voice; CPU)...", err=True)
    overrides = {} if no_speech or config_path else {"talker": make_talker("piper")}
    agent = build_agent_from(config_path, **overrides)
    session = agent.session("demo")
    out = Path(out_dir)

    async def run():
        await warm_up(agent)
        for i, (what, text) in enumerate(DEMO_TURNS, 1):
            if not as_json:
                click.echo(click.style(f"\n== {i}. {what}", bold=True))
                click.echo(f"you> {text}")
                click.echo("agent> ", nl=False)
            result_audio: list[AudioChunk] = []
            await print_turn(session, UserTurn.of(text), as_json=as_json, audio=result_audio)
            if agent.talker is not None and not as_json:
                click.echo(click.style(latency_breakdown(session.last_trace), dim=True), err=True)
            if result_audio:
                path = _write(out, i, result_audio)
                click.echo(click.style(f"spoken reply: {path}", fg="green"), err=True)
        await agent.aclose()

    asyncio.run(run())


def _write(out: Path, i: int, chunks: list[AudioChunk]) -> Path:
    from ..audio import join_chunks, write_wav

    pcm, sr = join_chunks(chunks)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"turn-{i}.wav"
    write_wav(path, pcm, sr)
    return path


def register(group: click.Group) -> None:
    group.add_command(demo)
