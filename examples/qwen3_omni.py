"""Qwen3-Omni with the bus between its Thinker and its Talker: the model hears and sees,
a middleware rewrites what it is about to say, and its own voice says the rewritten text.

    # a local checkpoint (a GPU box: see docs/qwen3_omni.md)
    python examples/qwen3_omni.py --model /models/Qwen3-Omni-30B-A3B-Instruct \\
        --audio question.wav --image photo.jpg --speaker Chelsie --out reply.wav

    # a vLLM-Omni server as the Thinker; our bus and the embedded Piper voice speak
    vllm serve Qwen/Qwen3-Omni-30B-A3B-Instruct --omni --port 8091
    python examples/qwen3_omni.py --url http://localhost:8091/v1 --text "Read me 4 8 15 16 23 42"

    # the same server speaking itself (no rewriting possible: the example then shows the refusal)
    python examples/qwen3_omni.py --url http://localhost:8091/v1 --server-speech

    # anywhere, no weights: the tiny random-weight model (gibberish, but every step runs)
    python examples/qwen3_omni.py --tiny

The middleware, ``DigitByDigit``, is a speech rewrite: long numbers are read digit by digit
("4815" -> "4 8 1 5") while the screen keeps the number. With the local model the
Talker speaks exactly that rewritten clause; the trace records the intervention.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

from omni_agent.agent import Agent
from omni_agent.audio import write_wav
from omni_agent.bus import Middleware
from omni_agent.events import AudioPart, ImagePart, TextPart, UserTurn, VideoPart
from omni_agent.thinker import GenerationSettings


class DigitByDigit(Middleware):
    """Reads numbers of three or more digits one digit at a time (the display keeps them)."""

    name = "digit-by-digit"
    timeout = 0.05  # a hook that overruns blocks its clause (fail-closed)

    pattern = re.compile(r"\d{3,}")

    def on_utterance(self, utt, ctx):
        spoken = self.pattern.sub(lambda m: " ".join(m.group()), utt.text)
        if spoken != utt.text:
            ctx.note("numbers read digit by digit")
            utt.text = spoken
        return utt


def build(args: argparse.Namespace) -> Agent:
    """The agent for the chosen backend: local weights, tiny weights or a vLLM-Omni URL."""
    middleware = [DigitByDigit()]
    settings = GenerationSettings(max_tokens=args.max_tokens)
    system = "You are a helpful voice assistant. Answer briefly."
    if args.url:
        from omni_agent.thinkers.vllm_omni import VLLMOmniTalker, VLLMOmniThinker

        thinker = VLLMOmniThinker(args.url, speaker=args.speaker)
        if args.server_speech:  # Thinker and Talker together on the server
            talker = VLLMOmniTalker(thinker)
        else:  # the server thinks; our bus and our Talker speak
            from omni_agent.talkers.piper import PiperTalker

            talker = PiperTalker()
        return Agent(thinker=thinker, talker=talker, middleware=middleware, settings=settings,
                     system_prompt=system)
    from omni_agent.thinkers.qwen3_omni import Qwen3OmniModel, Qwen3OmniTalker, Qwen3OmniThinker

    if args.tiny:
        from omni_agent.thinkers.qwen3_omni_tiny import tiny_qwen3_omni

        omni = tiny_qwen3_omni()
        talker = Qwen3OmniTalker(omni, speaker=args.speaker, max_frames=40, do_sample=False)  # random
        # weights may sample the end-of-speech code at once; greedy always says something
    else:
        omni = Qwen3OmniModel(args.model, talker=True, device=args.device, dtype=args.dtype)
        talker = Qwen3OmniTalker(omni, speaker=args.speaker)
    return Agent(thinker=Qwen3OmniThinker(omni), talker=talker, middleware=middleware, settings=settings,
                 system_prompt=system)


def turn_of(args: argparse.Namespace) -> UserTurn:
    parts = [TextPart(args.text)] if args.text else []
    for path, cls in ((args.audio, AudioPart), (args.image, ImagePart), (args.video, VideoPart)):
        if path:
            parts.append(cls.from_file(path))
    return UserTurn(parts=parts)


async def run(args: argparse.Namespace) -> int:
    agent = build(args)
    try:
        result = await agent.session().aask(turn_of(args))
    finally:
        await agent.aclose()
    print(f"shown:  {result.text}")
    print(f"spoken: {result.spoken}")
    for iv in result.trace.interventions:
        print(f"  {iv.middleware} {iv.action} {iv.before!r} -> {iv.after!r} ({iv.reason})")
    for err in result.trace.errors:
        print(f"  error in {err['stage']}: {err['message']}")
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.trace.timings.items())
    print(f"timings: {timings}")
    if result.audio:
        write_wav(args.out, result.audio, result.sample_rate or 24000)
        seconds = len(result.audio) / 2 / (result.sample_rate or 24000)
        print(f"wrote {args.out} ({seconds:.1f} s at {result.sample_rate} Hz)")
    return 0 if result.reason == "completed" else 1


def main() -> int:
    ap = argparse.ArgumentParser(description="Qwen3-Omni with a speech-rewriting middleware")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--model", help="a local Qwen3-Omni checkpoint directory")
    where.add_argument("--url", help="a vLLM-Omni server, e.g. http://localhost:8091/v1")
    where.add_argument("--tiny", action="store_true", help="the tiny random-weight model (no weights)")
    ap.add_argument("--server-speech", action="store_true",
                    help="with --url: let the server speak (no speech rewriting possible)")
    ap.add_argument("--text", default="Please read me the code 4815162342 and tell me a fun fact.")
    ap.add_argument("--audio", help="a question as audio (wav, flac, mp3, ...)")
    ap.add_argument("--image", help="an image to look at")
    ap.add_argument("--video", help="a video to watch")
    ap.add_argument("--speaker", default="Ethan", help="Ethan, Chelsie or Aiden")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("qwen3_omni_reply.wav"))
    args = ap.parse_args()
    if not (args.model or args.url or args.tiny):
        ap.error("give --model PATH, --url URL or --tiny")
    if args.tiny:
        import torch

        torch.set_num_threads(1)
        args.max_tokens = min(args.max_tokens, 12)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
