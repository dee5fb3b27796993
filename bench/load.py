"""Load benchmark for the agent server: 100 concurrent live WebSocket sessions.

The server runs in its own process (so its memory can be read from /proc) with a
scripted Thinker, a fast Talker (slices of a precomputed tone) and the real silero VAD. The client opens the sessions and measures, per turn, the time from sending
a text turn to receiving the first reply audio. Prints:

* time to first audio, p50 / p99, with the sessions talking at a conversational pace
  (each sends a turn, waits 0.5-1.5 s, sends the next) and in a burst (all at once);
* memory per idle session: the server's RSS growth with the sessions open and idle,
  divided by their number; once just connected, once after each streamed 1 s of
  (silent) microphone audio, which gives each its VAD state.

    .venv/bin/python bench/load.py [--sessions 100] [--turns 10]

Targets (issue 7): p99 time to first audio <= 50 ms; <= 1 MiB per idle session.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import subprocess
import sys
from time import perf_counter
from typing import Any

REPLY = "Hello there. How can I help you today?"


class FastTalker:
    """A Talker that costs next to nothing: slices of a precomputed tone, ~60 ms of audio
    per character, all at once (so the figures measure the server, not synthesis)."""

    name = "fast"
    sample_rate = 16000

    def __init__(self) -> None:
        import numpy as np

        t = np.arange(self.sample_rate * 10) / self.sample_rate
        self._pcm = (0.2 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()

    async def speak(self, utterance):
        from omni_agent.events import AudioChunk

        total = min(len(self._pcm), int(len(utterance.text) * 0.06 * self.sample_rate) * 2)
        step = self.sample_rate // 10 * 2  # 100 ms chunks
        for i in range(0, total, step):
            yield AudioChunk(pcm=self._pcm[i:i + step], sample_rate=self.sample_rate,
                             utterance_index=utterance.index, final=i + step >= total)

    async def aclose(self) -> None:
        return None


def serve(port_file: str) -> None:
    """The server process: scripted Thinker, fast Talker, silero VAD."""

    from omni_agent.agent import Agent
    from omni_agent.server.agent_server import AgentServer, ServerConfig
    from omni_agent.testing import ScriptedThinker

    agent = Agent(thinker=ScriptedThinker(REPLY, accepts=["text"]), talker=FastTalker())
    server = AgentServer(agent, ServerConfig(max_sessions_per_client=10_000))

    asyncio.run(serve_until_stopped(server, port_file))


async def serve_until_stopped(server: Any, port_file: str, host: str = "127.0.0.1") -> None:
    """Serve ``server`` (an AgentServer) on a free port until the process is told to stop;
    the port goes to ``port_file`` once it listens (the benchmark waits for that file)."""
    import anyio

    await server.warm_up()
    uv = server.make_uvicorn(host, 0, log_level="error")
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve)
        await uv.ready.wait()  # set once listening, or once it failed to
        if not uv.started:
            raise SystemExit(f"the benchmark server could not listen on {host}")
        with open(port_file, "w") as f:
            f.write(str(uv.servers[0].sockets[0].getsockname()[1]))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Session:
    def __init__(self, ws):
        self.ws = ws

    async def turn(self) -> float:
        """Send a text turn; seconds until its first audio arrives (then read to its end)."""
        t0 = perf_counter()
        await self.ws.send(json.dumps({"type": "text", "text": "hi"}))
        first = None
        while True:
            raw = await self.ws.recv()
            if isinstance(raw, bytes):  # a binary frame is reply audio
                if first is None:
                    first = perf_counter() - t0
                continue
            if json.loads(raw)["type"] == "trace":  # the last message of a turn
                assert first is not None, "the turn had no audio"
                return first


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def run(n: int, turns: int, url: str, pid: int) -> None:
    from websockets.asyncio.client import connect

    async def open_session() -> Session:
        ws = await connect(url, max_size=None, compression=None)
        assert json.loads(await ws.recv())["type"] == "ready"
        return Session(ws)

    # Warm the server's code paths (first-use imports, allocator pools) before measuring.
    warm = await open_session()
    for _ in range(3):
        await warm.turn()
    await warm.ws.close()
    await asyncio.sleep(0.5)
    gc.collect()

    base = rss_bytes(pid)
    sessions = await asyncio.gather(*(open_session() for _ in range(n)))
    await asyncio.sleep(1.0)
    connected = rss_bytes(pid)
    silence = bytes(640)  # 20 ms at 16 kHz
    async def listen(s: Session) -> None:
        for _ in range(50):  # 1 s of microphone audio
            await s.ws.send(silence)
    await asyncio.gather(*(listen(s) for s in sessions))
    await asyncio.sleep(1.0)
    listening = rss_bytes(pid)

    paced: list[float] = []

    async def conversation(s: Session) -> None:
        await asyncio.sleep(random.uniform(0, 1.0))
        for _ in range(turns):
            paced.append(await s.turn())
            await asyncio.sleep(random.uniform(0.5, 1.5))

    t0 = perf_counter()
    await asyncio.gather(*(conversation(s) for s in sessions))
    wall = perf_counter() - t0
    burst = await asyncio.gather(*(s.turn() for s in sessions))
    after = rss_bytes(pid)
    await asyncio.gather(*(s.ws.close() for s in sessions))

    ms = lambda x: f"{x * 1000:.1f} ms"  # noqa: E731
    print(f"{n} concurrent WebSocket sessions, scripted Thinker, fast Talker, silero VAD "
          f"(server in its own process, pid {pid})")
    print(f"time to first audio, conversational pace ({len(paced)} turns, "
          f"{len(paced) / wall:.0f} turns/s): p50 {ms(statistics.median(paced))}, "
          f"p99 {ms(pct(paced, 99))}, max {ms(max(paced))}")
    print(f"time to first audio, burst (all {n} at once): p50 {ms(statistics.median(burst))}, "
          f"p99 {ms(pct(burst, 99))}, max {ms(max(burst))}")
    mib = 1 << 20
    print(f"server RSS: {base / mib:.1f} MiB before, {connected / mib:.1f} MiB with {n} idle sessions, "
          f"{listening / mib:.1f} MiB after each streamed 1 s of audio, {after / mib:.1f} MiB after "
          "the turns")
    print(f"memory per idle session: {(connected - base) / n / 1024:.0f} KiB connected, "
          f"{(listening - base) / n / 1024:.0f} KiB with its VAD state "
          f"(targets: p99 <= 50 ms, <= 1024 KiB per idle session)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--turns", type=int, default=10, help="turns per session at conversational pace")
    ap.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    import tempfile

    port_file = tempfile.mktemp(prefix="omni-load-port-")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
    try:
        for _ in range(600):
            if os.path.exists(port_file) and open(port_file).read().strip():
                break
            if proc.poll() is not None:
                raise SystemExit("the benchmark server failed to start")
            import time

            time.sleep(0.1)
        port = int(open(port_file).read())
        asyncio.run(run(args.sessions, args.turns, f"ws://127.0.0.1:{port}/v1/live", proc.pid))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if os.path.exists(port_file):
            os.remove(port_file)


if __name__ == "__main__":
    main()
