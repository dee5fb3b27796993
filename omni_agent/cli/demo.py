"""``omni-agent demo``: the project's main job — a short live conversation with the
embedded default voice agent.

Every reply is generated live by the embedded Thinker, passes the bus (tool calling, RAG
over ``examples/docs``, safety and speech shaping), is spoken by the Piper Talker into a
WAV file, and is shown with its trace: interventions, tool calls, citations, latency.
A last step streams a scripted reply with personal data through the same safety chain,
to show what the Talker is never given.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from ..events import AudioChunk, UserTurn
from .common import build_agent_from, config_option, default_config, friendly_errors, print_turn, warm_up

# Each step: (what it shows, the user's words).
DEMO_TURNS: list[tuple[str, str]] = [
    ("a plain question", "What is the capital of France?"),
    ("a tool call (the time tool)", "What time is it in Tokyo?"),
    ("a tool call (the calculator)", "What is 17 times 23?"),
    # A new conversation: with the earlier turns in its short context the 135M model
    # mixes up the retrieved facts; a bigger Thinker does not need this.
    ("an answer from your documents (RAG, with the citation; a new conversation)",
     "What time does the Zorblax Museum open?"),
]

# The safety step: what a Thinker might say, streamed in small chunks through the bus.
SAFETY_REPLY = ("Sure! You can reach Dana at +1 415 555 0199 or dana@example.com. "
                "Her card 4111 1111 1111 1111 is on file. See https://example.com/help for more.")

DOCS = Path(__file__).resolve().parents[2] / "examples" / "docs"

# The safety and speech middleware every demo turn passes (names from the registry);
# personal data is kept off the display too, not only off speech.
SAFETY_CHAIN = [{"use": "markup"}, {"use": "pii", "display": True}, {"use": "speech"}]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print events and traces as JSON lines.")
@click.option("--out", "out_dir", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the spoken replies are written (one WAV per turn).")
@click.option("--no-speech", is_flag=True, help="Text only: no Talker, no WAV files.")
@config_option
@friendly_errors
def demo(as_json, out_dir, no_speech, config_path, allow_imports):
    """Run a short spoken conversation with the embedded default agent and show the trace."""
    from .voice import latency_breakdown, make_talker

    say = (lambda *a, **k: None) if as_json else click.echo
    say("Loading the embedded default agent (SmolLM2-135M-Instruct, Piper voice; CPU)...", err=True)
    talker = None if no_speech else make_talker("piper")
    if config_path:
        agent = build_agent_from(config_path, allow_imports, **({"talker": talker} if talker else {}))
    else:
        agent = _demo_agent(talker, say, allow_imports)
    session = agent.session("demo")
    out = Path(out_dir)

    async def turn(i: int, what: str, text: str, ag: Any, sess: Any) -> None:
        say(click.style(f"\n== {i}. {what}", bold=True))
        say(f"you> {text}")
        say("agent> ", nl=False)
        audio: list[AudioChunk] = []
        await print_turn(sess, UserTurn.of(text), as_json=as_json, audio=audio)
        if ag.talker is not None:
            say(click.style(latency_breakdown(sess.last_trace), dim=True), err=True)
        if audio:
            say(click.style(f"spoken reply: {_write(out, i, audio)}", fg="green"), err=True)

    async def run() -> None:
        await warm_up(agent, quiet=as_json)
        sess = session
        for i, (what, text) in enumerate(DEMO_TURNS, 1):
            if "a new conversation" in what:
                sess = agent.session("demo-docs")
            await turn(i, what, text, agent, sess)
        if not config_path:
            guard = _safety_agent(agent)
            await turn(len(DEMO_TURNS) + 1,
                       "safety: a scripted reply with personal data, streamed in 3-character chunks",
                       "How do I reach Dana?", guard, guard.session("demo-safety"))
            await guard.aclose()
        await agent.aclose()
        say(click.style("\nTo talk to this agent in your browser: .venv/bin/omni-agent serve agent, "
                        "then open http://127.0.0.1:8765/", bold=True))

    asyncio.run(run())


def _demo_agent(talker: Any, say: Any, allow_imports: Any = None) -> Any:
    """The default agent plus RAG over examples/docs and the safety chain."""
    from ..config import build_agent, load_config

    cfg = default_config()
    rag = _demo_docs(say)
    if rag is not None:
        cfg["middleware"] = [m for m in cfg["middleware"] if m.get("use") != "rag"] + [rag]
    cfg["middleware"] = cfg["middleware"] + SAFETY_CHAIN
    return build_agent(load_config(cfg), allow_imports=allow_imports, talker=talker)


def _demo_docs(say: Any) -> dict[str, Any] | None:
    """Ingest examples/docs into the demo's own collection (quick; re-runs add nothing)."""
    if not DOCS.is_dir():
        return None
    from ..memory.paths import default_data_dir

    return _ingest_demo_docs(default_data_dir(), say)


def _ingest_demo_docs(data_dir: Path, say: Any) -> dict[str, Any]:
    from ..memory.ingest import ingest
    from ..memory.vector import VectorMemory

    memory = VectorMemory("demo-docs", data_dir=data_dir)
    report = ingest([DOCS], memory, progress=False)
    say(click.style(f"(documents: {DOCS.name}/ in collection 'demo-docs': {report.summary()})", dim=True), err=True)
    return {"use": "rag", "collection": "demo-docs", "data_dir": str(data_dir)}


def _safety_agent(agent: Any) -> Any:
    """A scripted Thinker through the demo agent's own bus and Talker."""
    from ..agent import Agent
    from ..testing import ScriptedThinker

    chunks = [SAFETY_REPLY[i:i + 3] for i in range(0, len(SAFETY_REPLY), 3)]
    return Agent(thinker=ScriptedThinker([chunks]), talker=agent.talker,
                 middleware=[m for m in agent.middleware if m.label not in ("rag",)
                             and type(m).__name__ != "ToolCalling"])


def _write(out: Path, i: int, chunks: list[AudioChunk]) -> Path:
    from ..audio import join_chunks, write_wav

    pcm, sr = join_chunks(chunks)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"turn-{i}.wav"
    write_wav(path, pcm, sr)
    return path


def register(group: click.Group) -> None:
    group.add_command(demo)
