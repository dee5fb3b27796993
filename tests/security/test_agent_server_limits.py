"""The agent server's own bounds: a compressed-audio bomb is stopped while it decodes (the
413 comes before hours of audio are held), and the HTTP turn limits hold."""

from __future__ import annotations

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
                      ServerConfig(max_request_bytes=1 << 20, shutdown_grace=0.2), vad=EnergyVAD())

    async def chunks():
        block = bytes(1 << 20)
        for _ in range(24):
            yield block  # 24 MiB in all, with no Content-Length

    async with srv.running() as url, httpx.AsyncClient(base_url=url, timeout=30) as h:
        for _ in range(3):  # and again on the same kept-alive connection
            r = await h.post("/v1/voice", content=chunks())
            assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert (await h.get("/health")).status_code == 200


async def test_a_text_turn_body_is_capped_far_below_an_upload():
    thinker = ScriptedThinker("x", accepts=["text"])
    srv = AgentServer(Agent(thinker=thinker), ServerConfig(shutdown_grace=0.2), vad=EnergyVAD())
    async with srv.running() as url, httpx.AsyncClient(base_url=url, timeout=30) as h:
        r = await h.post("/v1/turn", json={"text": "x" * (2 << 20)})
    assert r.status_code == 413 and thinker.requests == []
