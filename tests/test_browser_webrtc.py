"""The voice page over WebRTC in a real headless Chromium, on loopback: Chromium's fake
microphone plays a Piper-made WAV into a WebRTC peer connection (Opus), the agent server's
aiortc peer feeds the same LiveSession as the WebSocket, real whisper ears transcribe it,
and the reply comes back as an Opus track that the page plays (and measures with an
analyser). Barge-in flushes the server's track; memory keeps what the track sent. One
test runs the same question over WebRTC and over the WebSocket and prints the first-audio
figures the page measured.

Needs: ``apt-get install -y chromium chromium-driver`` and aiortc (the webrtc extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("aiortc")

from omni_agent.agent import Agent
from omni_agent.live import LiveConfig
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.testing import ScriptedThinker

sys.path.insert(0, str(Path(__file__).parent))  # the WebSocket test's helpers, shared
from test_browser import (  # noqa: F401 - the WebSocket test's helpers and fixtures
    ServerThread,
    _require_browser,
    chromium,
    city_namer,
    ears,
    gap,
    microphone_wav,
    piper,
    speech,
    wait_for,
)

pytestmark = pytest.mark.slow

# processing=off: Chromium's fake microphone feeds its file exactly only with capture
# processing off (DESIGN.md); a real user gets echo cancellation on the WebRTC path.
WEBRTC = "/?autostart=1&transport=webrtc&processing=off"


def _played(st: dict) -> bool:
    return bool(st["agentTexts"]) and st["rtcPlayedSeconds"] > 1.5 and bool(st["heardAfterMs"])


def test_page_talks_over_webrtc_transcribed_played_and_latency_shown(tmp_path, ears, piper):
    _require_browser()
    wav = microphone_wav(tmp_path / "mic.wav", gap(1.0), speech("What is the capital of France?"), gap(5.0))
    agent = Agent(thinker=ScriptedThinker("The capital is Paris. It is a lovely city.", accepts=["text"]),
                  talker=piper, ears=ears, middleware=[city_namer])
    server = AgentServer(agent, ServerConfig(live=LiveConfig(end_silence_ms=500)))
    with ServerThread(server) as url:
        driver = chromium(wav, tmp_path)
        try:
            driver.get(url + WEBRTC)
            st = wait_for(driver, lambda s: _played(s) and s["latencies"] and not s["errors"], 90,
                          "the reply to be played over WebRTC")
            transcript = driver.find_element("css selector", ".turn .utext").text
            agent_text = driver.find_element("css selector", ".turn .atext").text
            latency = driver.find_element("css selector", ".turn .latency").text
        finally:
            driver.quit()
    assert st["transport"] == "webrtc" and st["ready"]["transport"] == "webrtc"
    assert st["captureMaxRms"] > 0.01, "the fake microphone delivered sound"
    assert "capital" in st["userTexts"][0].lower() and "france" in st["userTexts"][0].lower()
    assert "capital" in transcript.lower()
    assert agent_text == "The capital is Paris, France. It is a lovely city."
    # Piper says it in ~3 s; the page heard most of it through the Opus track by now.
    assert st["rtcPlayedSeconds"] > 1.5
    # From the end of speech: the final transcript, the first token (a draft's may come
    # before the turn is confirmed, so no whole-turn recognition is left to show).
    assert "→ transcript" in latency and "→ first token" in latency and "heard after" in latency
    print(f"\nWebRTC: first reply audio heard {st['heardAfterMs'][0]} ms after speech_stopped")


def test_speaking_over_the_webrtc_reply_stops_it_and_memory_keeps_what_was_sent(tmp_path, ears, piper):
    _require_browser()
    long_reply = ("Let me tell you about Paris. It has wide avenues and old bridges. "
                  "The river Seine runs through the middle of it. There are many museums to visit. "
                  "The food is famous all over the world. Spring is a good time to go.")
    wav = microphone_wav(tmp_path / "mic.wav", gap(1.0), speech("Tell me about Paris."), gap(4.5),
                         speech("Wait, stop please."), gap(4.0))
    thinker = ScriptedThinker([long_reply, "Sure, I will stop."], accepts=["text"])
    agent = Agent(thinker=thinker, talker=piper, ears=ears)
    server = AgentServer(agent, ServerConfig(live=LiveConfig(end_silence_ms=500, min_interrupt_ms=250)))
    with ServerThread(server) as url:
        driver = chromium(wav, tmp_path)
        try:
            driver.get(url + WEBRTC)
            st = wait_for(driver, lambda s: len(s["agentTexts"]) >= 2 and s["revisions"], 90,
                          "the barge-in and the second turn")
        finally:
            driver.quit()
    assert st["transport"] == "webrtc"
    assert st["stops"] >= 1, "playback was stopped by the barge-in"
    # The long reply is ~15 s of speech; the page heard far less: the track was flushed.
    assert st["rtcPlayedSeconds"] < 10, st["rtcPlayedSeconds"]
    heard = st["revisions"][0]["heard"]
    assert heard and long_reply.startswith(heard.rstrip(".")) and len(heard) < len(long_reply) - 20
    assert "stop" in st["userTexts"][1].lower()
    # The Thinker's second request carries only what the server's track sent of the first reply.
    assert thinker.requests[1].messages[-2].text == heard


def test_first_audio_over_webrtc_and_websocket_in_one_run(tmp_path, ears, piper):
    """The same question over both transports, one after the other; the page measures
    speech_stopped -> first reply sound (WebRTC: an analyser on the played Opus track;
    WebSocket: when the first PCM chunk is scheduled to play)."""
    _require_browser()
    wav = microphone_wav(tmp_path / "mic.wav", gap(1.0), speech("What is the capital of France?"), gap(5.0))
    figures = {}
    for transport in ("webrtc", "ws"):
        agent = Agent(thinker=ScriptedThinker("The capital is Paris.", accepts=["text"]), talker=piper, ears=ears)
        server = AgentServer(agent, ServerConfig(live=LiveConfig(end_silence_ms=500)))
        with ServerThread(server) as url:
            (tmp_path / transport).mkdir()
            driver = chromium(wav, tmp_path / transport)
            try:
                driver.get(f"{url}/?autostart=1&transport={transport}&processing=off")
                st = wait_for(driver, lambda s: s["heardAfterMs"] and s["latencies"], 90,
                              f"the reply over {transport}")
            finally:
                driver.quit()
        assert st["transport"] == transport
        figures[transport] = (st["heardAfterMs"][0], st["latencies"][0]["first_audio_ms"])
    print("\nfirst audio (page: speech_stopped -> reply audible; server: end of turn -> first audio sent)")
    for k, (page, srv) in figures.items():
        print(f"  {k:7s} page {page:6.0f} ms   server {srv:6.0f} ms")
    assert all(0 < page < 5000 for page, _ in figures.values())
