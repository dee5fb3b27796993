"""Load-and-fault benchmark for the agent server: honest sessions while a hostile client attacks.

The server runs in its own process (so its memory can be read from /proc) on 127.0.0.1,
with a scripted Thinker (a short two-clause reply; a ``calculator`` tool call when the
text holds ``round(`` or ``**``), the built-in calculator tool, a safety filter whose
sync check hangs for 5 s on clauses with "sleepy" (its budget is 0.05 s), a fast Talker
and the energy VAD. Then:

1. quiet run: N honest live sessions take turns at a conversational pace (a turn, a
   0.5-1.5 s pause, the next) for ``--quiet-seconds``; time to first audio per turn;
2. fault run: the same sessions again for ``--seconds`` while a hostile client (bounded
   asyncio loops in a process of its own) sends lone surrogates, sockets that stop reading or
   vanish mid-turn, deeply nested / malformed / oversized / unknown messages, calculator
   CPU bombs, turns that hit the hanging filter, abandoned HTTP turns, a FLAC of two hours
   of silence and oversized bodies to /v1/voice, cross-site requests, and slowloris sockets;
3. report: first audio p50/p99 in both runs and their p99 ratio, honest turns completed,
   the server's peak RSS, what each attack got back, and /metrics' active sessions and
   turns once everything has closed.

    .venv/bin/python bench/fault.py [--sessions 100] [--seconds 60] [--quiet-seconds 20]

Targets: fault-run p99 first audio <= 2x the quiet run's; every honest turn completed
(``turn_end`` reason ``completed``, with audio); peak RSS of the server and its upload
decoders <= 1.5 GiB; ``omni_agent_active_sessions`` and ``omni_agent_active_turns`` back to
0. The exit code is 1 when a target is missed. What each attack got back is reported (not
asserted: the tests assert it). ``--skip KIND,...`` leaves attacks out, to see what each
one costs. On a 2-core machine the attacker's own process takes a core from the honest
sessions and the server: read the p99 ratio with that in mind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Awaitable, Callable

HOST = "127.0.0.1"
EVIL = "https://evil.example"
HONEST_TEXT = "hi, how are you?"
RSS_BOUND = 1536 << 20  # 1.5 GiB
P99_RATIO_TARGET = 2.0
TURN_TIMEOUT = 20.0  # an honest turn with no reply in this long has failed
ATTACK_TIMEOUT = 20.0  # one hostile attempt gives up after this long
SLOWLORIS_SOCKETS = 50
# '{"type":"text","text":"hi \ud800"}' as a client writes it: the JSON escape of a lone surrogate.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import FastTalker, serve_until_stopped  # noqa: E402 - as the load benchmark does

LONE_SURROGATE = '{"type":"text","text":"hi \\ud800"}'
DEEP_JSON = "[" * 100_000
MIB = 1 << 20


def expression_of(text: str) -> str:
    """The arithmetic in a question: "What is 1 + round(1, -7)?" -> "1 + round(1, -7)"."""
    m = re.search(r"[-(0-9].*", text)
    return (m.group(0) if m else text).rstrip("?.! ")


def scripted_reply(request: Any) -> list[Any]:
    """One generation round of the scripted Thinker: the reply depends on the user's text."""
    last = request.messages[-1]
    if last.role == "tool":  # the calculator answered: say so
        return [f"The calculator says {last.text[:60]}. ", "Anything else?"]
    text = last.text
    if "round(" in text or "**" in text:
        return [{"tool_call": {"name": "calculator", "arguments": {"expression": expression_of(text)}}}]
    if "sleepy" in text:
        return ["I am sleepy too. ", "Let us rest."]
    return ["Hello there. ", "How can I help you today?"]


def serve(port_file: str) -> None:
    """The server process: scripted Thinker, calculator, hanging filter, fast Talker, energy VAD."""

    from omni_agent.agent import Agent
    from omni_agent.bus import Middleware
    from omni_agent.live import EnergyVAD
    from omni_agent.server.agent_server import AgentServer, ServerConfig
    from omni_agent.testing import ScriptedThinker
    from omni_agent.tools.builtin import calculator

    class HangingFilter(Middleware):
        """A safety filter whose check hangs (a blocking call that never answers in time)
        on clauses with "sleepy"; its budget is 0.05 s, so the bus must block the clause
        and go on without waiting the 5 s."""

        name = "hanging_filter"
        timeout = 0.05

        def on_utterance(self, utt, ctx):
            if "sleepy" in utt.text.lower():
                time.sleep(5)
            return utt

    agent = Agent(thinker=ScriptedThinker(scripted_reply, accepts=["text"]), talker=FastTalker(),
                  tools=[calculator], middleware=[HangingFilter()])
    server = AgentServer(agent, ServerConfig(max_sessions_per_client=10_000), vad=EnergyVAD())

    asyncio.run(serve_until_stopped(server, port_file, HOST))


def rss_bytes(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key}")


def children(pid: int) -> list[int]:
    """The server's child processes (its upload decoders)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_rss(pid: int) -> int:
    """RSS of the server and its child processes together."""
    total = rss_bytes(pid)
    for child in children(pid):
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_bytes(child)
    return total


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def flac_bomb() -> bytes:
    """Two hours of silence at 8 kHz as FLAC: ~180 KB on the wire, ~460 MB as 16 kHz float32."""
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    minute = np.zeros(8000 * 60, dtype="int16")
    with sf.SoundFile(buf, "w", samplerate=8000, channels=1, format="FLAC", subtype="PCM_16") as f:
        for _ in range(120):
            f.write(minute)
    return buf.getvalue()


# ---------------------------------------------------------------------- honest sessions


@dataclass
class HonestStats:
    attempted: int = 0
    completed: int = 0
    first_audio: list[float] = field(default_factory=list)
    failures: Counter = field(default_factory=Counter)


async def open_live(url: str, **kw: Any) -> tuple[Any, dict[str, Any]]:
    """A live session and its first message (``ready``, or the error it was refused with)."""
    from websockets.asyncio.client import connect

    ws = await connect(url, max_size=None, compression=None, open_timeout=10, close_timeout=2, **kw)
    try:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
    except BaseException:
        ws.transport.abort()
        raise
    return ws, first


async def honest_turn(ws: Any) -> tuple[float | None, str]:
    """Send a text turn; (seconds to its first audio, how it ended), read to its trace."""
    t0 = perf_counter()
    await ws.send(json.dumps({"type": "text", "text": HONEST_TEXT}))
    first, reason = None, "no turn_end"
    while True:
        raw = await ws.recv()
        if isinstance(raw, bytes):  # a binary frame is reply audio
            if first is None:
                first = perf_counter() - t0
            continue
        m = json.loads(raw)
        if m["type"] == "turn_end":
            reason = m.get("reason", "?")
        elif m["type"] == "error" and "code" in m:
            return first, f"error {m['code']}"
        elif m["type"] == "trace":  # the last message of a turn
            return first, reason


class Honest:
    """One honest live session; reconnects (a bounded number of times) if it is dropped."""

    def __init__(self, url: str):
        self.url = url
        self.ws: Any = None
        self.reconnects = 0

    async def connect(self, stats: HonestStats) -> bool:
        try:
            self.ws, first = await open_live(self.url)
        except Exception as e:  # noqa: BLE001 - counted as a failure, reported
            stats.failures[f"connect: {describe(e)}"] += 1
            return False
        if first.get("type") != "ready":
            stats.failures[f"connect refused: {first.get('code')}"] += 1
            self.ws.transport.abort()
            self.ws = None
            return False
        return True

    async def converse(self, deadline: float, stats: HonestStats) -> None:
        await asyncio.sleep(random.uniform(0, 1.0))
        while perf_counter() < deadline:
            if self.ws is None:  # dropped (a failure already counted): reconnect, 3 times at most
                if self.reconnects >= 3:
                    return
                self.reconnects += 1
                if not await self.connect(stats):
                    await asyncio.sleep(1.0)
                    continue
            stats.attempted += 1
            try:
                first, reason = await asyncio.wait_for(honest_turn(self.ws), TURN_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - a dropped or stuck session is a failed turn
                stats.failures[describe(e)] += 1
                self.ws.transport.abort()
                self.ws = None
                continue
            if reason == "completed" and first is not None:
                stats.completed += 1
                stats.first_audio.append(first)
            else:
                stats.failures[f"{reason}{'' if first is not None else ', no audio'}"] += 1
            await asyncio.sleep(random.uniform(0.5, 1.5))

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 3)
            self.ws.transport.abort()
            self.ws = None


# ---------------------------------------------------------------------- hostile client


def describe(e: BaseException) -> str:
    """What an exception says about the server's answer, in a few words."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if isinstance(e, InvalidStatus):
        return f"HTTP {e.response.status_code} at handshake"
    if isinstance(e, ConnectionClosed):
        return f"closed {e.rcvd.code}" if e.rcvd is not None else "closed, no close frame"
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "timed out"
    return type(e).__name__


class Tally:
    """What the hostile client sent, per kind, and what came back."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.slowest: dict[str, float] = defaultdict(float)

    def note(self, kind: str, outcome: str, seconds: float = 0.0) -> None:
        self.outcomes[kind][outcome] += 1
        self.slowest[kind] = max(self.slowest[kind], seconds)

    def table(self) -> list[str]:
        width = max([len(k) for k in self.outcomes] + [4])
        lines = [f"  {'kind':<{width}}  sent  slowest  what came back"]
        for kind in sorted(self.outcomes):
            c = self.outcomes[kind]
            got = ", ".join(f"{o} x{n}" for o, n in c.most_common())
            lines.append(f"  {kind:<{width}}  {sum(c.values()):>4}  {self.slowest[kind]:>6.2f}s  {got}")
        return lines


async def ws_answer(ws: Any, timeout: float = 5.0) -> str:
    """The server's answer to what was just sent: an error code, a turn's end, or a close."""
    from websockets.exceptions import ConnectionClosed

    end = perf_counter() + timeout
    try:
        while (left := end - perf_counter()) > 0:
            raw = await asyncio.wait_for(ws.recv(), left)
            if isinstance(raw, bytes):
                continue
            m = json.loads(raw)
            if m["type"] == "error" and "code" in m:
                return f"error {m['code']}"
            if m["type"] in ("turn_end", "pong"):
                return m["type"] + (f" {m['reason']}" if "reason" in m else "")
    except ConnectionClosed as e:
        return describe(e)
    except asyncio.TimeoutError:
        pass
    return f"no answer in {timeout:g} s"


async def http_raw(port: int, head: str, body: bytes = b"", *, read: bool = True,
                   timeout: float = 10.0) -> str:
    """Send a hand-made HTTP/1.1 request; the status line that came back."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        if not read:
            return "sent"
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.decode("latin-1").split()
        return f"HTTP {parts[1]}" if len(parts) > 1 else "closed, no answer"
    finally:
        writer.transport.abort()


def http_outcome(r: Any) -> str:
    """HTTP status, then the error code or the turn's reason."""
    try:
        data = r.json()
    except ValueError:
        return f"HTTP {r.status_code}"
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        return f"HTTP {r.status_code} {data['error'].get('code')}"
    if isinstance(data, dict) and "reason" in data:
        return f"HTTP {r.status_code} {data['reason']}"
    return f"HTTP {r.status_code}"


class Hostile:
    """The hostile client: one bounded loop per kind of attack, all on loopback."""

    def __init__(self, port: int, deadline: float, tally: Tally, skip: frozenset[str] = frozenset()):
        import httpx

        self.skip = skip
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.live = f"ws://{HOST}:{port}/v1/live"
        self.deadline = deadline
        self.tally = tally
        self.http = httpx.AsyncClient(base_url=self.base, timeout=ATTACK_TIMEOUT,
                                      limits=httpx.Limits(max_connections=32))
        self.bomb = flac_bomb()

    async def run(self) -> None:
        loops: list[tuple[str, Callable[[], Awaitable[None]], float]] = [
            ("ws lone surrogate", self.ws_surrogate, 0.3),
            ("ws stops reading", self.ws_stall, 0.3),
            ("ws vanishes mid-turn", self.ws_vanish, 0.3),
            ("ws garbage", self.ws_garbage, 0.5),
            ("http garbage", self.http_garbage, 0.3),
            ("http calculator bomb", self.http_calculator, 0.3),
            ("http sleepy", self.http_sleepy, 0.3),
            ("http abandoned", self.http_abandon, 0.3),
            ("voice FLAC bomb", self.voice_bomb, 1.0),
            ("voice oversized", self.voice_oversized, 1.0),
            ("cross-site", self.cross_site, 0.5),
        ]
        loops = [x for x in loops if x[0] not in self.skip]
        extra = [] if "slowloris" in self.skip else [self.slowloris()]
        try:
            await asyncio.gather(*extra, *(self.loop(k, f, p) for k, f, p in loops))
        finally:
            await self.http.aclose()

    async def loop(self, kind: str, attack: Callable[[], Awaitable[None]], pause: float,
                   max_rounds: int = 10_000) -> None:
        for _ in range(max_rounds):
            if perf_counter() >= self.deadline:
                return
            t0 = perf_counter()
            try:
                await asyncio.wait_for(attack(), ATTACK_TIMEOUT)
            except Exception as e:  # noqa: BLE001 - what went wrong is the outcome
                self.tally.note(f"{kind} (failed)", describe(e), perf_counter() - t0)
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))

    async def timed(self, kind: str, coro: Awaitable[str]) -> None:
        t0 = perf_counter()
        try:
            outcome = await coro
        except Exception as e:  # noqa: BLE001 - what went wrong is the outcome
            outcome = describe(e)
        self.tally.note(kind, outcome, perf_counter() - t0)

    # -- WebSocket

    async def ws_surrogate(self) -> None:
        async def one() -> str:
            ws, first = await open_live(self.live)
            try:
                await ws.send(LONE_SURROGATE)
                got = await ws_answer(ws)
                await ws.send(json.dumps({"type": "ping", "t": 1}))
                alive = await ws_answer(ws)
                return f"{got}, then {'alive' if alive == 'pong' else alive}"
            finally:
                ws.transport.abort()

        await self.timed("ws lone surrogate", one())

    async def ws_stall(self) -> None:
        async def one() -> str:
            ws, first = await open_live(self.live)
            try:
                await ws.send(json.dumps({"type": "text", "text": HONEST_TEXT}))
                ws.transport.pause_reading()
                for _ in range(10):  # more turns, so the unread replies pile up
                    await asyncio.sleep(0.4)
                    await ws.send(json.dumps({"type": "text", "text": HONEST_TEXT}))
                return "paused reading 4 s, aborted"
            finally:
                ws.transport.abort()

        await self.timed("ws stops reading", one())

    async def ws_vanish(self) -> None:
        async def one() -> str:
            ws, first = await open_live(self.live)
            try:
                await ws.send(json.dumps({"type": "text", "text": HONEST_TEXT}))
                raw = await asyncio.wait_for(ws.recv(), 5)
                what = "audio" if isinstance(raw, bytes) else json.loads(raw).get("type")
                return f"vanished after {what}"
            finally:
                ws.transport.abort()

        await self.timed("ws vanishes mid-turn", one())

    async def ws_garbage(self) -> None:
        ws, first = await open_live(self.live)
        try:
            for kind, msg in (("ws deep JSON (100k '[')", DEEP_JSON),
                              ("ws malformed JSON", '{"type": "text", "text": '),
                              ("ws unknown type", '{"type": "launch_missiles"}'),
                              ("ws odd-length audio", b"\x00\x01\x02"),
                              ("ws oversized text (2 MiB)",
                               '{"type":"text","text":"' + "a" * (2 * MIB) + '"}')):
                t0 = perf_counter()
                await ws.send(msg)
                self.tally.note(kind, await ws_answer(ws), perf_counter() - t0)
        finally:
            ws.transport.abort()

        async def huge() -> str:  # over uvicorn's frame limit (4x max_message_bytes)
            ws, first = await open_live(self.live)
            try:
                await ws.send(b"\x00" * (5 * MIB))
                return await ws_answer(ws)
            finally:
                ws.transport.abort()

        async def flood() -> str:  # more malformed messages than max_protocol_errors
            ws, first = await open_live(self.live)
            try:
                got = ""
                for _ in range(30):
                    await ws.send("not json")
                    got = await ws_answer(ws, 2.0)
                    if got.startswith(("closed", "error too_many")):
                        break
                if got.startswith("error too_many"):
                    got += ", then " + await ws_answer(ws, 2.0)
                return got
            finally:
                ws.transport.abort()

        await self.timed("ws huge frame (5 MiB)", huge())
        await self.timed("ws error flood (30 bad)", flood())

    # -- HTTP turns

    async def http_garbage(self) -> None:
        for kind, body in (("http deep JSON (100k '[')", DEEP_JSON),
                           ("http malformed JSON", '{"text": '),
                           ("http unknown field", '{"txt": "hi"}')):
            await self.timed(kind, self._post_turn(body))

    async def _post_turn(self, body: str, **headers: str) -> str:
        h = {"content-type": "application/json", **headers}
        return http_outcome(await self.http.post("/v1/turn", content=body.encode(), headers=h))

    async def http_calculator(self) -> None:
        for kind, text in (("http calc round(1, -1e7)", "What is 1 + round(1, -10000000)?"),
                           ("http calc 2**2**2**2**2**2", "2**2**2**2**2**2")):
            await self.timed(kind, self._post_turn(json.dumps({"text": text})))

    async def http_sleepy(self) -> None:
        await self.timed("http sleepy (hanging filter)",
                         self._post_turn(json.dumps({"text": "I am so sleepy today"})))

    async def http_abandon(self) -> None:
        text = random.choice([HONEST_TEXT, "I am so sleepy today", "What is 2**2**2**2**2**2?"])
        body = json.dumps({"text": text}).encode()
        head = (f"POST /v1/turn HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n")

        async def one() -> str:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            try:
                writer.write(head.encode() + body)
                await writer.drain()
                await asyncio.sleep(random.uniform(0.0, 0.03))
                return "closed mid-turn"
            finally:
                writer.transport.abort()

        await self.timed("http abandoned mid-turn", one())

    # -- voice

    async def voice_bomb(self) -> None:
        async def one() -> str:
            r = await self.http.post("/v1/voice", content=self.bomb,
                                     headers={"content-type": "audio/flac"})
            return http_outcome(r)

        await self.timed(f"voice FLAC bomb (2 h silence, {len(self.bomb) // 1024} KiB)", one())

    async def voice_oversized(self) -> None:
        head = (f"POST /v1/voice HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nContent-Type: audio/wav\r\n"
                f"Content-Length: {100 * MIB}\r\n\r\n")
        await self.timed("voice declared 100 MiB body",
                         http_raw(self.port, head, b"\x00" * 65536, timeout=5))

        async def chunks():
            block = b"\x00" * MIB
            for _ in range(70):
                yield block

        async def chunked() -> str:
            r = await self.http.post("/v1/voice", content=chunks(), headers={"content-type": "audio/wav"})
            return http_outcome(r)

        await self.timed("voice chunked 70 MiB body", chunked())

    # -- cross-site

    async def cross_site(self) -> None:
        async def ws_origin() -> str:
            ws, first = await open_live(self.live, origin=EVIL)
            ws.transport.abort()
            return "accepted (ready)" if first.get("type") == "ready" else f"error {first.get('code')}"

        await self.timed("cross-site WS Origin evil", ws_origin())
        await self.timed("cross-site POST text/plain + evil Origin",
                         self._post_turn(json.dumps({"text": HONEST_TEXT}),
                                         **{"content-type": "text/plain", "origin": EVIL}))
        await self.timed("cross-site POST Host: evil.example",
                         self._post_turn(json.dumps({"text": HONEST_TEXT}), host="evil.example"))

        async def ws_host() -> str:
            head = ("GET /v1/live HTTP/1.1\r\nHost: evil.example\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n")
            return await http_raw(self.port, head, timeout=5)

        await self.timed("cross-site WS Host: evil.example", ws_host())

    # -- slowloris

    async def slowloris(self) -> None:
        """Up to SLOWLORIS_SOCKETS sockets each sending a request header one byte a second;
        all are closed by the deadline."""
        head = f"GET /health HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nX-Slow: " + "a" * 4000

        async def one(delay: float) -> None:
            await asyncio.sleep(delay)
            if perf_counter() >= self.deadline:
                return
            t0 = perf_counter()
            outcome = "still open at the end (client closed it)"
            try:
                reader, writer = await asyncio.open_connection(HOST, self.port)
            except OSError as e:
                self.tally.note("slowloris socket", f"connect failed: {type(e).__name__}")
                return
            try:
                for ch in head:  # bounded: one byte a second, until the deadline
                    if perf_counter() >= self.deadline:
                        break
                    writer.write(ch.encode())
                    await writer.drain()
                    try:
                        got = await asyncio.wait_for(reader.read(256), 1.0)
                    except asyncio.TimeoutError:
                        continue
                    parts = got.decode("latin-1").split()
                    outcome = (f"server answered HTTP {parts[1]}" if got and len(parts) > 1
                               else "server closed it")
                    break
            except OSError as e:
                outcome = f"server reset it ({type(e).__name__})"
            finally:
                writer.transport.abort()
            self.tally.note("slowloris socket", outcome, perf_counter() - t0)

        span = max(0.1, (self.deadline - perf_counter()) / 4)
        await asyncio.gather(*(one(random.uniform(0, span)) for _ in range(SLOWLORIS_SOCKETS)))


# ---------------------------------------------------------------------- the run


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError, RuntimeError):
            peak[0] = max(peak[0], tree_rss(pid))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def hostile_process(port: int, seconds: float, table: list[str], skip: str = "",
                          nice: int = 0) -> None:
    """The hostile client in a process of its own, so its work (building bombs and huge
    bodies) does not share the honest clients' event loop; its tally comes back as lines.
    ``nice``: its CPU priority (an attacker on another machine takes no core from the
    server; on one small machine a lower priority stands in for that)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--hostile", str(port), str(seconds), "--skip", skip,
        stdout=asyncio.subprocess.PIPE, preexec_fn=(lambda: os.nice(nice)) if nice else None)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    table.extend(out.decode().splitlines())


def run_hostile(port: int, seconds: float, skip: str) -> None:
    tally = Tally()
    kinds = frozenset(k.strip() for k in skip.split(",") if k.strip())
    asyncio.run(Hostile(port, perf_counter() + seconds, tally, kinds).run())
    print("\n".join(tally.table()), flush=True)


async def phase(sessions: list[Honest], seconds: float, pid: int, port: int | None = None,
                table: list[str] | None = None, skip: str = "", nice: int = 0,
                ) -> tuple[HonestStats, int]:
    """The honest sessions converse for ``seconds`` (with the hostile client, if ``port``);
    returns their stats and the server's peak sampled RSS."""
    stats, peak, stop = HonestStats(), [0], asyncio.Event()
    deadline = perf_counter() + seconds
    sampler = asyncio.ensure_future(sample_rss(pid, peak, stop))
    try:
        tasks = [s.converse(deadline, stats) for s in sessions]
        if port is not None and table is not None:
            tasks.append(hostile_process(port, seconds, table, skip, nice))
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        await sampler
    return stats, peak[0]


async def read_gauges(base: str) -> dict[str, float]:
    import httpx

    async with httpx.AsyncClient(timeout=5) as c:
        text = (await c.get(f"{base}/metrics")).text
    out = {}
    for name in ("omni_agent_active_sessions", "omni_agent_active_turns"):
        m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        out[name] = float(m.group(1)) if m else float("nan")
    return out


def summary(stats: HonestStats) -> str:
    ms = lambda x: f"{x * 1000:.1f} ms"  # noqa: E731
    fa = stats.first_audio
    figures = (f"first audio p50 {ms(statistics.median(fa))}, p99 {ms(pct(fa, 99))}, max {ms(max(fa))}"
               if fa else "no first audio measured")
    failed = "; failed: " + ", ".join(f"{k} x{n}" for k, n in stats.failures.most_common()) \
        if stats.failures else ""
    return f"{stats.completed}/{stats.attempted} turns completed, {figures}{failed}"


async def run(args: argparse.Namespace, port: int, pid: int) -> bool:
    import httpx

    base, url = f"http://{HOST}:{port}", f"ws://{HOST}:{port}/v1/live"
    # Warm the server's code paths (first-use imports, the tool, the filter's worker threads).
    warm = Honest(url)
    warm_stats = HonestStats()
    if await warm.connect(warm_stats):
        for _ in range(3):
            await asyncio.wait_for(honest_turn(warm.ws), TURN_TIMEOUT)
        await warm.close()
    async with httpx.AsyncClient(timeout=TURN_TIMEOUT) as c:
        await c.post(f"{base}/v1/turn", json={"text": "What is 2**10?"})
    await asyncio.sleep(0.5)

    sessions = [Honest(url) for _ in range(args.sessions)]
    opened = HonestStats()
    await asyncio.gather(*(s.connect(opened) for s in sessions))
    print(f"fault benchmark: {args.sessions} live sessions on {base} (server pid {pid}: scripted "
          "Thinker with the calculator tool, a filter that hangs on 'sleepy' (budget 0.05 s), "
          "fast Talker, energy VAD)", flush=True)
    if opened.failures:
        print(f"  opening the sessions failed: {dict(opened.failures)}", flush=True)

    quiet, quiet_peak = await phase(sessions, args.quiet_seconds, pid)
    print(f"quiet run ({args.quiet_seconds:g} s): {summary(quiet)}; server RSS peak "
          f"{quiet_peak / MIB:.0f} MiB", flush=True)

    table: list[str] = []
    fault, fault_peak = await phase(sessions, args.seconds, pid, port, table, args.skip,
                                    args.attacker_nice)
    print(f"fault run ({args.seconds:g} s): {summary(fault)}", flush=True)
    print(f"hostile traffic, from its own process at nice +{args.attacker_nice} "
          "(sent, slowest answer, what came back):")
    print("\n".join(table))

    await asyncio.gather(*(s.close() for s in sessions))
    t_end = perf_counter()
    gauges = await read_gauges(base)
    while any(v != 0 for v in gauges.values()) and perf_counter() - t_end < 10:
        await asyncio.sleep(0.5)
        gauges = await read_gauges(base)
    settle = perf_counter() - t_end
    hwm = rss_bytes(pid, "VmHWM")
    for child in children(pid):
        with contextlib.suppress(OSError, RuntimeError):
            hwm += rss_bytes(child, "VmHWM")

    ok = True

    def target(name: str, passed: bool, detail: str) -> None:
        nonlocal ok
        ok &= passed
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}")

    print("targets:")
    if quiet.first_audio and fault.first_audio:
        ratio = pct(fault.first_audio, 99) / pct(quiet.first_audio, 99)
        target("p99 first audio, fault run / quiet run", ratio <= P99_RATIO_TARGET,
               f"{pct(fault.first_audio, 99) * 1000:.1f} ms / {pct(quiet.first_audio, 99) * 1000:.1f} ms"
               f" = {ratio:.2f}x (target <= {P99_RATIO_TARGET:g}x)")
    else:
        target("p99 first audio, fault run / quiet run", False, "a run measured no first audio")
    for name, s in (("quiet", quiet), ("fault", fault)):
        target(f"honest turns completed, {name} run", s.attempted > 0 and s.completed == s.attempted,
               f"{s.completed}/{s.attempted} (target: all, reason completed, with audio)")
    peak = max(fault_peak, hwm)
    target("server peak RSS, fault run", peak <= RSS_BOUND,
           f"{fault_peak / MIB:.0f} MiB sampled every 0.25 s, {hwm / MIB:.0f} MiB VmHWM "
           "(server and its upload decoders together) "
           f"(bound {RSS_BOUND / MIB:.0f} MiB)")
    target("slots back to 0 after the run", all(v == 0 for v in gauges.values()),
           f"omni_agent_active_sessions {gauges['omni_agent_active_sessions']:g}, "
           f"omni_agent_active_turns {gauges['omni_agent_active_turns']:g} "
           f"(target 0 and 0; read {settle:.1f} s after the last client closed)")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=100, help="honest live sessions")
    ap.add_argument("--seconds", type=float, default=60, help="length of the fault run")
    ap.add_argument("--quiet-seconds", type=float, default=20, help="length of the quiet run")
    ap.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--skip", default="", metavar="KINDS",
                    help="attack loops to leave out, comma-separated (e.g. 'voice FLAC bomb,slowloris'), "
                         "to see what each one costs")
    ap.add_argument("--attacker-nice", type=int, default=0, metavar="N",
                    help="run the hostile client at this CPU niceness (e.g. 10: as if it ran on "
                         "another machine, taking no core from the server); default 0")
    ap.add_argument("--hostile", nargs=2, metavar=("PORT", "SECONDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.hostile:
        run_hostile(int(args.hostile[0]), float(args.hostile[1]), args.skip)
        return

    fd, port_file = tempfile.mkstemp(prefix="omni-fault-port-")
    os.close(fd)
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", port_file], stderr=log)
    ok = False
    try:
        for _ in range(600):
            if open(port_file).read().strip():
                break
            if proc.poll() is not None:
                raise SystemExit("the benchmark server failed to start")
            time.sleep(0.1)
        else:
            raise SystemExit("the benchmark server did not start in 60 s")
        port = int(open(port_file).read())
        ok = asyncio.run(run(args, port, proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        os.remove(port_file)
        log.seek(0)
        lines = log.read().splitlines()
        log.close()
        errors = [ln for ln in lines if "Traceback" in ln or "ERROR" in ln or "Error" in ln]
        print(f"server stderr: {len(lines)} lines, {len(errors)} naming an error"
              + ("".join(f"\n  | {ln[:200]}" for ln in lines[:15]) if lines else ""))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
