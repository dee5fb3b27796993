"""The WebRTC transport (``POST /v1/webrtc/offer``) against a real aiortc client on
loopback: Opus both ways, the live protocol's JSON on the data channel, barge-in, memory
cut to what was sent, bad offers refused with clear 400s, limits, handshake timeout and
shutdown. The agent parts are scripted (loudness VAD, scripted ears and Thinker, a tone
Talker) so the transport is what is tested; tests/test_browser_webrtc.py runs Chromium."""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from fractions import Fraction
from time import monotonic

import httpx
import numpy as np
import pytest

pytest.importorskip("aiortc")

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from omni_agent.agent import Agent
from omni_agent.events import AudioChunk
from omni_agent.live import EnergyVAD, LiveConfig
from omni_agent.server.agent_server import AgentServer, ServerConfig
from omni_agent.server.webrtc import WebRTCConfig, _ReplyBuffer
from omni_agent.server.webrtc_offer import OfferError, check_sdp
from omni_agent.testing import RecordingTalker, ScriptedThinker

RATE = 48000


class ScriptedEars:
    def __init__(self, *texts: str):
        self.texts = list(texts) or ["hello"]

    async def transcribe(self, part):
        return self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]


class MicTrack(MediaStreamTrack):
    """A microphone for the aiortc client: plays what :meth:`say` queued, in real time,
    and silence otherwise (a real microphone never stops sending)."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self.queue: deque[np.ndarray] = deque()
        self.start: float | None = None
        self.pts = 0
        #: monotonic() when the last queued sample went out
        self.said_until = 0.0

    def say(self, seconds: float, amp: float = 0.3) -> None:
        t = np.arange(int(seconds * RATE)) / RATE
        x = (amp * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2")
        self.queue.extend(x[i:i + 960] for i in range(0, x.size, 960))

    async def recv(self):
        import av

        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = monotonic()
        else:
            self.pts += 960
            wait = self.start + self.pts / RATE - monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        if self.queue:
            block = self.queue.popleft()
            block = np.pad(block, (0, 960 - block.size))
            if not self.queue:
                self.said_until = monotonic()
        else:
            block = np.zeros(960, "<i2")
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self.pts, Fraction(1, RATE)
        return frame


class WebRTCClient:
    """A WebRTC peer like the browser page: microphone track + data channel."""

    def __init__(self, url: str, *, token: str | None = None, query: str = ""):
        self.url, self.token, self.query = url, token, query
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = MicTrack()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("omni")
        self.messages: list[dict] = []
        self.loud: list[float] = []  # monotonic() of each received 20 ms that is not silent
        self.frames = 0
        self._reader: asyncio.Task | None = None
        self.channel.on("message", lambda m: self.messages.append(json.loads(m)))
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        self._reader = asyncio.ensure_future(self._read(track))

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.frames += 1
                x = frame.to_ndarray().astype(np.float32) / 32768
                if np.sqrt(np.mean(x * x)) > 0.01:
                    self.loud.append(monotonic())
        except MediaStreamError:
            pass

    async def connect(self, timeout: float = 10.0) -> dict:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        headers = {"content-type": "application/sdp"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        async with httpx.AsyncClient() as http:
            r = await http.post(f"{self.url}/v1/webrtc/offer{self.query}",
                                content=self.pc.localDescription.sdp, headers=headers)
        assert r.status_code == 201, r.text
        assert r.headers["content-type"].startswith("application/sdp")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
        return await self.wait_for("ready", timeout=timeout)

    def send(self, **msg) -> None:
        self.channel.send(json.dumps(msg))

    def of(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    async def wait_for(self, kind: str, n: int = 1, timeout: float = 10.0) -> dict:
        deadline = monotonic() + timeout
        while len(self.of(kind)) < n:
            if monotonic() > deadline:
                raise AssertionError(f"no {kind!r} within {timeout} s; got "
                                     f"{[m.get('type') for m in self.messages]}")
            await asyncio.sleep(0.01)
        return self.of(kind)[n - 1]

    async def close(self) -> None:
        await self.pc.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def make_server(reply="The capital is Paris. It is a lovely city.", *, spc=0.02, **cfg) -> AgentServer:
    replies = reply if isinstance(reply, list) else [reply]
    agent = Agent(thinker=ScriptedThinker(replies, accepts=["text"]),
                  talker=RecordingTalker(sample_rate=22050, seconds_per_char=spc, chunk_ms=100),
                  ears=ScriptedEars("what is the capital of france", "stop please"))
    webrtc = cfg.pop("webrtc", WebRTCConfig())
    return AgentServer(agent, ServerConfig(live=LiveConfig(end_silence_ms=400, min_interrupt_ms=200),
                                           webrtc=webrtc, **cfg),
                       vad=EnergyVAD())


async def offer_sdp(*, audio: bool = True, channel: bool = True) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if audio:
        pc.addTransceiver("audio")
    if channel:
        pc.createDataChannel("x")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def post(url: str, body, ctype: str = "application/sdp", **kw) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        if isinstance(body, (dict, list)):
            return await http.post(f"{url}/v1/webrtc/offer", json=body, **kw)
        return await http.post(f"{url}/v1/webrtc/offer", content=body,
                               headers={"content-type": ctype, **kw.pop("headers", {})}, **kw)


# --------------------------------------------------------------------------- the path


async def test_a_spoken_question_is_transcribed_and_the_reply_arrives_as_opus_audio():
    server = make_server()
    async with server.running() as url:
        client = WebRTCClient(url)
        try:
            ready = await client.connect()
            assert ready["transport"] == "webrtc" and ready["output"]["format"] == "opus"
            client.mic.say(1.0)
            st = await client.wait_for("speech_started")
            user = await client.wait_for("user_turn")
            assert user["text"] == "what is the capital of france"
            end = await client.wait_for("turn_end")
            assert end["text"] == "The capital is Paris. It is a lovely city."
            lat = await client.wait_for("latency")
            assert lat["first_audio_ms"] is not None and lat["turn_ms"] > 0
            # The reply is ~0.84 s of tone: it arrives, paced in real time, as Opus.
            await asyncio.sleep(1.5)
            assert st and len(client.loud) * 0.02 > 0.5
            heard_after = client.loud[0] - client.mic.said_until
            assert 0 < heard_after < 3.0
        finally:
            await client.close()
        await asyncio.sleep(0.3)
        assert not server.webrtc.peers, "the peer's task ended when the client closed"


async def test_speaking_over_the_reply_flushes_it_and_memory_keeps_what_was_sent():
    long_reply = ("Let me tell you about Paris. It has wide avenues and old bridges. "
                  "The river Seine runs through the middle of it. There are many museums.")
    server = make_server([long_reply, "Sure, I will stop."], spc=0.05)  # ~7 s of reply
    async with server.running() as url:
        client = WebRTCClient(url)
        try:
            await client.connect()
            client.mic.say(1.0)
            await client.wait_for("turn_end")
            await asyncio.sleep(1.5)  # the reply is playing
            assert client.loud
            client.mic.say(1.0)
            stop = await client.wait_for("stop_playback")
            t_stop = monotonic()
            revised = await client.wait_for("memory_revised")
            await client.wait_for("turn_end", 2, timeout=15)
            await asyncio.sleep(0.5)
        finally:
            await client.close()
    assert stop["turn_id"] == revised["turn_id"]
    heard = revised["heard"]
    assert heard and long_reply.startswith(heard.rstrip(".")) and len(heard) < len(long_reply) - 20
    # The first reply's voice stopped within a few frames of the stop (the flush), not
    # after its ~7 s; the reply loud after that is the second, short one.
    first_reply_after = [t for t in client.loud if t_stop + 0.3 < t < t_stop + 0.6]
    assert len(first_reply_after) < 10


async def test_data_channel_speaks_the_live_protocol():
    server = make_server()
    async with server.running() as url:
        client = WebRTCClient(url)
        try:
            await client.connect()
            client.send(type="ping", t=7)
            assert (await client.wait_for("pong"))["t"] == 7
            client.send(type="configure", barge_in=False)
            assert (await client.wait_for("configured"))["config"]["barge_in"] is False
            client.send(type="text", text="hello there")
            end = await client.wait_for("turn_end")
            assert end["text"].startswith("The capital")
            client.send(type="nonsense")
            err = await client.wait_for("error")
            assert err["code"] == "unknown_type"
        finally:
            await client.close()


# --------------------------------------------------------------------------- bad offers


@pytest.mark.parametrize("body, ctype, code", [
    (b"hello, I am not SDP", "application/sdp", "bad_offer"),
    (b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\nthis line is broken\r\n", "application/sdp", "bad_offer"),
    (b'{"type": "offer"}', "application/json", "bad_offer"),
    (b'{"sdp": 5', "application/json", "bad_json"),
])
async def test_a_malformed_offer_is_a_clear_400(body, ctype, code):
    server = make_server()
    async with server.running() as url:
        r = await post(url, body, ctype)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
        assert r.json()["error"]["message"]


async def test_offers_without_opus_audio_are_refused_and_the_server_goes_on():
    server = make_server()
    good = await offer_sdp()
    no_audio = await offer_sdp(audio=False)
    # The same offer with Opus taken out: only G.711 (PCMU/PCMA) left.
    m = re.search(r"a=rtpmap:(\d+) opus/48000/2", good)
    assert m
    pt = m.group(1)
    g711 = "\r\n".join(ln for ln in good.split("\r\n") if not re.match(rf"a=(rtpmap|fmtp|rtcp-fb):{pt}\b", ln))
    g711 = re.sub(r"(m=audio \d+ \S+)((?: \d+)*)", lambda mm: mm.group(1) + " " + " ".join(
        p for p in mm.group(2).split() if p != pt), g711)
    video = good + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    async with server.running() as url:
        for body, code in ((no_audio, "no_audio"), (g711, "unsupported_codec"), (video, "unsupported_media")):
            r = await post(url, body)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == code, r.text
        r = await post(url, "x" * 70_000)
        assert r.status_code == 413
        r = await post(url, good, "text/plain")
        assert r.status_code == 415
        # The server is still up: a good offer (JSON form this time) gets an answer.
        client = WebRTCClient(url)
        try:
            await client.pc.setLocalDescription(await client.pc.createOffer())
            r = await post(url, {"sdp": client.pc.localDescription.sdp, "type": "offer"})
            assert r.status_code == 201 and r.json()["type"] == "answer"
            await client.pc.setRemoteDescription(RTCSessionDescription(**r.json()))
            await client.wait_for("ready")
        finally:
            await client.close()


def test_the_offer_check_names_what_is_wrong():
    with pytest.raises(OfferError, match="no DTLS fingerprint"):
        check_sdp("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n"
                  "a=ice-ufrag:x\r\na=ice-pwd:y\r\n")
    with pytest.raises(OfferError, match="offers pcmu"):
        check_sdp("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=rtpmap:0 PCMU/8000\r\n")


# --------------------------------------------------------------------------- limits and ownership


async def test_the_answer_offers_only_loopback_host_candidates_and_no_stun():
    server = make_server()
    async with server.running() as url:
        r = await post(url, await offer_sdp())
        assert r.status_code == 201
        cands = [ln for ln in r.text.split("\r\n") if ln.startswith("a=candidate:")]
        assert cands and all(" 127.0.0.1 " in c and " typ host" in c for c in cands), cands
        info = (await httpx.AsyncClient().get(f"{url}/v1/webrtc")).json()
        assert info == {"enabled": True, "ice_servers": [], "codec": "opus/48000"}


async def test_token_and_peer_limit_are_enforced():
    server = make_server(token="s3cret", webrtc=WebRTCConfig(max_peers=1, handshake_timeout=30))
    async with server.running() as url:
        sdp = await offer_sdp()
        r = await post(url, sdp)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        auth = {"authorization": "Bearer s3cret"}
        assert (await post(url, sdp, headers=auth)).status_code == 201
        r = await post(url, await offer_sdp(), headers=auth)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_full"


async def test_a_cross_site_page_or_a_foreign_host_cannot_post_an_offer():
    server = make_server()
    async with server.running() as url:
        sdp = await offer_sdp()
        r = await post(url, sdp, headers={"origin": "https://evil.example"})
        assert r.status_code == 403, r.text
        r = await post(url, sdp, headers={"host": "evil.example"})
        assert r.status_code == 400, r.text
        assert not server.webrtc.peers
        assert (await post(url, sdp, headers={"origin": url})).status_code == 201


async def test_a_peer_that_never_connects_is_closed_after_the_handshake_timeout():
    server = make_server(webrtc=WebRTCConfig(handshake_timeout=0.5))
    async with server.running() as url:
        r = await post(url, await offer_sdp())  # nobody answers the ICE checks
        assert r.status_code == 201
        assert server.webrtc.peers
        await asyncio.sleep(1.5)
        assert not server.webrtc.peers and server.webrtc._count == 0
        assert not server._per_client


async def test_an_idle_peer_is_closed_and_shutdown_closes_the_rest():
    server = make_server(webrtc=WebRTCConfig(idle_timeout=1.0))
    async with server.running() as url:
        client = WebRTCClient(url)
        await client.connect()
        client.mic.stop()  # the microphone goes quiet for good (no RTP at all)
        await asyncio.sleep(2.5)
        assert not server.webrtc.peers, "closed for idleness"
        await client.close()
        second = WebRTCClient(url)
        await second.connect()
        assert len(server.webrtc.peers) == 1
    # The server's lifespan ended: its task group closed the peer connection.
    assert not server.webrtc.peers and not server._conns
    await asyncio.sleep(0.2)
    assert second.of("shutdown"), "the peer was told the server is going away"
    await second.close()


# --------------------------------------------------------------------------- the track


async def test_the_reply_track_paces_frames_and_flushes_on_barge_in():
    buf = _ReplyBuffer(max_seconds=1.0)
    pcm = (np.ones(22050, "<i2") * 1000).tobytes()  # 1 s at 22.05 kHz
    await buf.push(AudioChunk(pcm=pcm, sample_rate=22050, turn_id=1, final=True))
    assert buf.queued_seconds == pytest.approx(1.0, abs=0.01)
    t0 = monotonic()
    for _ in range(10):
        await buf.recv()
    assert monotonic() - t0 == pytest.approx(0.18, abs=0.06)  # 9 frame intervals of 20 ms
    assert buf.played_ms(1) == pytest.approx(200, abs=1)
    buf.flush()
    assert buf.queued_seconds == 0
    await buf.push(AudioChunk(pcm=pcm, sample_rate=22050, turn_id=1))  # late chunk of the cut turn
    assert buf.queued_seconds == 0
    await buf.push(AudioChunk(pcm=pcm, sample_rate=22050, turn_id=2))
    assert buf.queued_seconds > 0.9
