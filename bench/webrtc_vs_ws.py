"""First audio over WebRTC vs the WebSocket, on loopback, in one run (issue 16).

One agent server (loudness VAD, scripted ears and Thinker, the tone Talker from
``omni_agent.testing``, so the transports are what differ), two Python clients that behave
like the browser page: each streams 1 s of "speech" (a tone) and then silence in real
time, 20 ms at a time, and measures **end of the user's speech sent -> first reply audio
received**:

* WebRTC: an aiortc peer (Opus both ways, data channel); "received" is the first decoded
  20 ms frame of the reply track that is not silent (after aiortc's jitter buffer);
* WebSocket (``/v1/live``): int16 PCM frames in; "received" is the first binary audio frame.

Both include the server's end-of-turn silence (``end_silence_ms``, 400 ms here), which is
the same for both; the server's own ``first_audio_ms`` (end of turn -> first audio
produced) is printed beside it. The WebRTC figure also includes Opus encode/decode, the
track's 20 ms pacing and the jitter buffer: what a WebRTC listener really waits for.

::

    .venv/bin/python bench/webrtc_vs_ws.py --turns 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path
from time import monotonic

import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_webrtc import WebRTCClient, make_server

SR = 16000


async def webrtc_turns(url: str, turns: int) -> list[tuple[float, float]]:
    out = []
    client = WebRTCClient(url)
    try:
        await client.connect()
        for i in range(turns):
            n = len(client.loud)
            client.mic.say(1.0)
            lat = await client.wait_for("latency", i + 1, timeout=20)
            deadline = monotonic() + 5
            while len(client.loud) == n or client.loud[n] < client.mic.said_until:
                assert monotonic() < deadline, "no reply audio"
                await asyncio.sleep(0.005)
            out.append(((client.loud[n] - client.mic.said_until) * 1000, lat["first_audio_ms"]))
            await asyncio.sleep(2.0)  # the reply (~0.8 s) has played out
    finally:
        await client.close()
    return out


async def ws_turns(url: str, turns: int) -> list[tuple[float, float]]:
    out = []
    t = np.arange(SR) / SR
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes()
    step = SR * 20 // 1000 * 2
    async with websockets.connect(url.replace("http", "ws") + "/v1/live") as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        got: list[tuple[float, object]] = []

        async def read() -> None:
            async for m in ws:
                got.append((monotonic(), m))

        reader = asyncio.ensure_future(read())
        t0 = monotonic()
        sent = 0

        async def send(pcm: bytes) -> float:
            nonlocal sent
            for i in range(0, len(pcm), step):
                await ws.send(pcm[i:i + step])
                sent += 1
                wait = t0 + sent * 0.02 - monotonic()  # the pace of a microphone
                if wait > 0:
                    await asyncio.sleep(wait)
            return monotonic()

        try:
            for _ in range(turns):
                n = len(got)
                said = await send(speech)
                first = None
                latency = None
                deadline = monotonic() + 20
                while latency is None:
                    assert monotonic() < deadline, "no reply"
                    await send(bytes(step))
                    for at, m in got[n:]:
                        if isinstance(m, bytes) and first is None:
                            first = at
                        elif isinstance(m, str) and json.loads(m)["type"] == "latency":
                            latency = json.loads(m)["first_audio_ms"]
                assert first is not None
                out.append(((first - said) * 1000, latency))
                await send(bytes(step * 100))  # 2 s of silence: the reply plays out
        finally:
            reader.cancel()
    return out


def show(name: str, rows: list[tuple[float, float]]) -> None:
    client = [c for c, _ in rows]
    server = [s for _, s in rows]
    print(f"  {name:8s} client p50 {statistics.median(client):6.1f} ms  (min {min(client):6.1f}, "
          f"max {max(client):6.1f})   server first_audio_ms p50 {statistics.median(server):5.1f} ms")


async def main(turns: int) -> None:
    server = make_server("The capital is Paris.")
    async with server.running() as url:
        rtc = await webrtc_turns(url, turns)
        ws = await ws_turns(url, turns)
    print(f"end of speech sent -> first reply audio received, {turns} turns each "
          f"(includes the 400 ms end-of-turn silence)")
    show("WebRTC", rtc)
    show("WebSocket", ws)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=10)
    asyncio.run(main(p.parse_args().turns))
