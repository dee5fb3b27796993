"""The agent server's own bounds: a compressed-audio bomb is stopped while it decodes (the
413 comes before hours of audio are held), and the HTTP turn limits hold."""

from __future__ import annotations

import asyncio
import io
import tracemalloc
from time import monotonic

import httpx
import numpy as np
import soundfile as sf

from omni_agent import Agent
from omni_agent.live import EnergyVAD
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.testing import ScriptedThinker


class Ears:
    def __init__(self):
        self.calls = 0

    async def transcribe(self, part):
        self.calls += 1
        return "hello"


def flac_of_silence(seconds: float, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", samplerate=rate, channels=1, format="FLAC") as f:
        block = np.zeros(rate * 60, dtype=np.int16)
        for _ in range(int(seconds // 60)):
            f.write(block)
    return buf.getvalue()


async def test_a_flac_bomb_is_refused_while_it_decodes_without_holding_its_audio():
    bomb = flac_of_silence(2 * 3600)  # two hours of silence: a few hundred KB
    assert len(bomb) < 1 << 20
    ears = Ears()
    srv = AgentServer(Agent(thinker=ScriptedThinker("x", accepts=["text"]), ears=ears),
                      ServerConfig(max_audio_seconds=60, shutdown_grace=0.2), vad=EnergyVAD())
    async with srv.running() as url, httpx.AsyncClient(base_url=url, timeout=60) as h:
        tracemalloc.start()
        t0 = monotonic()
        r = await h.post("/v1/voice", content=bomb)
        took = monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert r.status_code == 413 and r.json()["error"]["code"] == "audio_too_long"
    assert ears.calls == 0
    # Two hours at 16 kHz float32 would be 460 MB; the cap stops it near 60 s (4 MB).
    assert peak < 64 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert took < 10


async def test_an_upload_refused_mid_stream_gets_its_413_not_a_broken_connection():
    srv = AgentServer(Agent(thinker=ScriptedThinker("x", accepts=["text"]), ears=Ears()),
                      ServerConfig(max_json_bytes=1 << 20, shutdown_grace=0.2), vad=EnergyVAD())

    async def chunks():
        block = bytes(1 << 20)
        for _ in range(24):
            yield block  # 24 MiB in all, with no Content-Length

    async with srv.running() as url, httpx.AsyncClient(base_url=url, timeout=30) as h:
        for _ in range(3):  # and again on the same kept-alive connection
            # A text turn of unknown length (uploads must say theirs: see below).
            r = await h.post("/v1/turn", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert (await h.get("/health")).status_code == 200


async def test_an_upload_of_unknown_length_is_refused_before_it_is_read():
    srv = AgentServer(Agent(thinker=ScriptedThinker("x", accepts=["text"]), ears=Ears()),
                      ServerConfig(shutdown_grace=0.2), vad=EnergyVAD())
    async with srv.running() as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # The head and a first chunk of a stream that would go on for ever: the answer comes
        # now, without the server waiting for (or keeping) the rest.
        writer.write(b"POST /v1/voice HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: audio/flac\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n10000\r\n" + bytes(0x10000) + b"\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
    assert b" 411 " in status


async def test_a_text_turn_body_is_capped_far_below_an_upload():
    thinker = ScriptedThinker("x", accepts=["text"])
    srv = AgentServer(Agent(thinker=thinker), ServerConfig(shutdown_grace=0.2), vad=EnergyVAD())
    async with srv.running() as url, httpx.AsyncClient(base_url=url, timeout=30) as h:
        r = await h.post("/v1/turn", json={"text": "x" * (2 << 20)})
    assert r.status_code == 413 and thinker.requests == []
