"""Voice commands: ``omni-agent say`` (text to speech) and ``omni-agent ask`` (a spoken answer).

::

    omni-agent say "Hello there." -o hello.wav
    omni-agent say "Bonjour." --talker espeak --lang fr -o bonjour.wav
    omni-agent say "Hello." --raw | aplay -r 22050 -f S16_LE -c 1
    omni-agent ask -p "Tell me about Paris in two sentences." -o reply.wav
    omni-agent ask --audio question.wav -o reply.wav

``ask`` prints the answer and the turn's latency breakdown (ASR, Thinker first token,
first utterance, middleware holds, Talker first audio).
"""

from __future__ import annotations

import asyncio
import json
import sys
from time import monotonic
from typing import Any

import click

from ..errors import ConfigError
from ..events import (
    AudioChunk,
    AudioPart,
    ErrorEvent,
    TextDelta,
    ToolCall,
    ToolResult,
    TurnEnd,
    UserTurn,
    Utterance,
    event_to_dict,
)
from .common import config_option, default_config, friendly_errors, make_turn

__all__ = ["make_talker", "latency_breakdown", "register"]

TALKER_CHOICES = "piper, espeak, openai, recording or module:Class"


def make_talker(name: str = "piper", *, voice: str | None = None, lang: str | None = None,
                url: str | None = None) -> Any:
    """Build a Talker from command-line style options.

    ``piper``: ``voice`` is a ``.onnx`` path (default: the embedded en_US voice).
    ``espeak``: ``lang`` picks the voice, or ``voice`` names one. ``openai``: ``url`` is the
    server's ``/v1`` base, ``voice`` its voice name. Anything else: a registry name or
    ``module:Class``, built with no arguments.
    """
    if name == "piper":
        from ..talkers.piper import PiperTalker

        return PiperTalker(voice)
    if name == "espeak":
        from ..talkers.espeak import EspeakTalker

        return EspeakTalker(lang or "en", voice=voice)
    if name == "openai":
        from ..talkers.openai import OpenAITalker

        kw: dict[str, Any] = {"lang": lang}
        if url:
            kw["base_url"] = url
        if voice:
            kw["voice"] = voice
        return OpenAITalker(**kw)
    from ..registry import TALKERS, resolve

    if voice or lang or url:
        raise ConfigError(f"--voice/--lang/--url apply to piper, espeak and openai, not {name!r}: "
                          "configure that Talker in a config file ([talker] section)")
    return resolve(name, TALKERS)()


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def latency_breakdown(trace: Any) -> str:
    """One line per stage of the time to first audio, from a turn's trace.

    Times are since the turn started; the figure in brackets is the stage's own share.
    """
    t = trace.timings
    lines = []
    asr = t.get("asr")
    if asr is not None:
        lines.append(f"  asr (speech to text)       {_ms(asr)}")
    first_tok = t.get("thinker_first_token")
    start = t.get("thinker_start")
    if first_tok is not None:
        own = f" (+{_ms(first_tok - start)} after the Thinker started)" if start is not None else ""
        lines.append(f"  thinker first token        {_ms(first_tok)}{own}")
    first_utt = t.get("first_utterance")
    if first_utt is not None:
        own = f" (+{_ms(first_utt - first_tok)} after first token)" if first_tok is not None else ""
        lines.append(f"  first utterance            {_ms(first_utt)}{own}")
    holds = dict(trace.holds)
    for k, v in t.items():
        if k.startswith("utterance:"):
            holds[k.split(":", 1)[1] + " (utterance hook)"] = v
    if holds:
        lines.append("  middleware holds           " + ", ".join(f"{k} {_ms(v)}" for k, v in holds.items()))
    audio = t.get("talker_first_audio")
    if audio is not None:
        own = f" (+{_ms(audio - first_utt)} after first utterance)" if first_utt is not None else ""
        lines.append(f"  talker first audio         {_ms(audio)}{own}")
    end = t.get("end")
    if end is not None:
        lines.append(f"  turn total                 {_ms(end)}")
    return "latency:\n" + "\n".join(lines) if lines else "latency: (no timings recorded)"


def _emit_audio(chunks: list[AudioChunk], output: str | None, play: bool) -> tuple[float, int]:
    from ..audio import join_chunks, play as play_audio, write_wav

    pcm, rate = join_chunks(chunks)
    seconds = len(pcm) / 2 / rate if rate else 0.0
    if output:
        write_wav(output, pcm, rate)
    if play and pcm:
        play_audio(pcm, rate)
    return seconds, rate


# --------------------------------------------------------------------------- say


@click.command()
@click.argument("text")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the speech to this WAV file.")
@click.option("--talker", "talker_name", default="piper", show_default=True,
              help=f"Which Talker speaks: {TALKER_CHOICES}.")
@click.option("--voice", help="piper: a .onnx voice path; espeak: a voice name; openai: a voice name.")
@click.option("--lang", help="Language of the text (espeak picks its voice by it: en, zh, fr, de, ...).")
@click.option("--url", help="openai: the server's base URL (default http://127.0.0.1:8002/v1).")
@click.option("--raw", is_flag=True, help="Write raw int16 mono PCM to stdout as it is made.")
@click.option("--play", is_flag=True, help="Play the speech on this machine's speakers.")
@friendly_errors
def say(text, output, talker_name, voice, lang, url, raw, play):
    """Speak TEXT with a Talker ("-" reads the text from stdin)."""
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        raise click.UsageError("nothing to say: TEXT is empty")
    if not (output or raw or play):
        raise click.UsageError("say where the speech goes: -o FILE.wav, --raw (stdout) or --play")
    talker = make_talker(talker_name, voice=voice, lang=lang, url=url)

    async def run() -> tuple[list[AudioChunk], float | None]:
        from ..middleware.segmenter import Segmenter

        chunks: list[AudioChunk] = []
        first: float | None = None
        t0 = monotonic()
        seg = Segmenter(first_clause=False)
        clauses = seg.feed(text) + seg.flush()
        try:
            for i, clause in enumerate(clauses):
                async for chunk in talker.speak(Utterance(text=clause, display=clause, index=i, lang=lang)):
                    if first is None and chunk.pcm:
                        first = monotonic() - t0
                    chunks.append(chunk)
                    if raw and chunk.pcm:
                        from ..audio import write_pcm

                        write_pcm(chunk.pcm)
        finally:
            await talker.aclose()
        return chunks, first

    chunks, first = asyncio.run(run())
    seconds, rate = _emit_audio(chunks, output, play)
    where = f" -> {output}" if output else ""
    click.echo(f"{talker.name}: {seconds:.2f} s of speech at {rate} Hz, first audio after "
               f"{_ms(first)}{where}", err=True)


# --------------------------------------------------------------------------- ask


@click.command()
@click.option("-p", "--prompt", help="The question, as text.")
@click.option("--audio", type=click.Path(dir_okay=False), help="The question, spoken (WAV, FLAC, MP3, ...).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the spoken answer to this WAV file.")
@click.option("--talker", "talker_name", default=None,
              help=f"Which Talker speaks ({TALKER_CHOICES}); default: the config's, else piper.")
@click.option("--voice", help="Talker voice (see `omni-agent say --help`).")
@click.option("--lang", help="Answer language for the Talker (espeak voices).")
@click.option("--url", help="openai Talker: the server's base URL.")
@click.option("--raw", is_flag=True, help="Write the answer's raw int16 PCM to stdout (text goes to stderr).")
@click.option("--play", is_flag=True, help="Play the answer on this machine's speakers.")
@click.option("--json", "as_json", is_flag=True, help="Print every event and the trace as JSON lines.")
@click.option("--no-trace", is_flag=True, help="Do not print the trace.")
@config_option
@friendly_errors
def ask(prompt, audio, output, talker_name, voice, lang, url, raw, play, as_json, no_trace, config_path,
        allow_imports):
    """Ask one question (typed or spoken) and get a spoken answer."""
    if not prompt and not audio:
        raise click.UsageError("give the question: -p TEXT or --audio FILE")
    if raw and as_json:
        raise click.UsageError("--raw and --json both want stdout: pick one")
    agent, turn = _ask_agent(config_path, allow_imports, prompt, audio, talker_name=talker_name, voice=voice,
                             lang=lang, url=url)
    session = agent.session()
    out = _AskOutput(sys.stderr if raw else sys.stdout, as_json=as_json, raw=raw,
                     clause_mode=agent.display == "clause")

    async def run() -> None:
        try:
            async with agent:  # the agent's services (MCP servers) run for the turn
                # Load models first, so the turn's timings measure the turn, not the loading.
                loaded = await agent.warm_up()
                if loaded and not as_json:
                    click.echo(click.style("loaded " + ", ".join(f"{k} {v:.1f} s" for k, v in loaded.items()),
                                           dim=True), err=True)
                async for ev in session.run(turn):
                    out.show(ev)
        finally:
            await agent.aclose()

    asyncio.run(run())
    out.finish(session.last_trace, output=output, play=play, no_trace=no_trace)
    if out.end is None or out.end.reason == "error":
        raise SystemExit(1)


def _ask_agent(config_path: str | None, allow_imports: Any, prompt: str | None, audio: str | None, *,
               talker_name: str | None, voice: str | None, lang: str | None, url: str | None) -> tuple[Any, Any]:
    """The agent ``ask`` runs and the user's turn.

    The Talker comes from the options when any is given (or the config has none), else
    from the config; a spoken question gets default Ears when the config has none.
    """
    from ..config import build_agent, imports_policy, load_config
    from ..registry import import_policy

    cfg = load_config(config_path if config_path else default_config())
    with import_policy(imports_policy(cfg, allow_imports)):
        if talker_name or voice or lang or url or cfg.talker is None:
            talker = make_talker(talker_name or "piper", voice=voice, lang=lang, url=url)
        else:
            from ..config import build_talker

            talker = build_talker(cfg.talker)
        overrides: dict[str, Any] = {"talker": talker}
        if lang:
            overrides["lang"] = lang
        turn = make_turn(prompt, audio=audio)
        if audio and cfg.ears is None:
            from ..ears import Ears

            overrides["ears"] = Ears()
        return build_agent(cfg, **overrides), turn


class _AskOutput:
    """Where ``ask`` puts what a turn yields: the answer's text (or JSON lines), notes on
    stderr, raw PCM on stdout; it keeps the audio and the turn's end."""

    def __init__(self, text_out: Any, *, as_json: bool, raw: bool, clause_mode: bool):
        self.text_out = text_out
        self.as_json = as_json
        self.raw = raw
        self.clause_mode = clause_mode
        self.first_clause = True
        self.chunks: list[AudioChunk] = []
        self.end: TurnEnd | None = None

    def show(self, ev: Any) -> None:
        """One event of the turn."""
        if self.as_json:
            self.text_out.write(json.dumps(event_to_dict(ev), ensure_ascii=False) + "\n")
        else:
            self._show_text(ev)
        if isinstance(ev, AudioChunk):
            self.chunks.append(ev)
            if self.raw and ev.pcm:
                from ..audio import write_pcm

                write_pcm(ev.pcm)
        elif isinstance(ev, TurnEnd):
            self.end = ev
        self.text_out.flush()

    def _show_text(self, ev: Any) -> None:
        if isinstance(ev, UserTurn):
            for p in ev.parts:
                if isinstance(p, AudioPart) and p.transcript is not None:
                    click.echo(click.style(f"heard: {p.transcript}", dim=True), err=True)
        elif isinstance(ev, TextDelta) and not self.clause_mode:
            self.text_out.write(ev.text)
        elif isinstance(ev, Utterance) and self.clause_mode and ev.display:
            self.text_out.write(("" if self.first_clause else " ") + ev.display)
            self.first_clause = False
        elif isinstance(ev, (ToolCall, ToolResult)):
            what = f"[tool call] {ev.name}({ev.arguments})" if isinstance(ev, ToolCall) else \
                f"[tool result] {ev.name}: {ev.content}"
            click.echo(click.style(what, dim=True), err=True)
        elif isinstance(ev, ErrorEvent):
            click.echo(click.style(f"[error] {ev.stage}: {ev.message}", fg="red"), err=True)

    def finish(self, trace: Any, *, output: str | None, play: bool, no_trace: bool) -> None:
        """After the turn: the trace (JSON) or a newline, the audio out, the latency breakdown."""
        text_out = self.text_out
        if self.as_json:
            text_out.write(json.dumps({"type": "trace", **trace.to_dict()}, ensure_ascii=False) + "\n")
        else:
            text_out.write("\n")
        text_out.flush()
        seconds, rate = _emit_audio(self.chunks, output, play)
        if self.as_json:
            return
        if output:
            click.echo(f"spoken answer: {seconds:.2f} s at {rate} Hz -> {output}", err=True)
        if not no_trace:
            click.echo(click.style(latency_breakdown(trace), dim=True), err=True)
            summary = trace.summary()
            if summary:
                click.echo(click.style(summary, dim=True), err=True)


def register(group: click.Group) -> None:
    group.add_command(say)
    group.add_command(ask)
