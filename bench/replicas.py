"""Several agent servers sharing their sessions on one Redis: throughput, and a replica killed mid-run.

Everything runs on loopback and stops by itself (bounded in turns and in time):

1. a throwaway ``redis-server`` (no persistence) and three ``omni-agent serve agent``
   processes started from one config file: ``[history] store = "redis://..."`` and the
   Thinker below (``backend = "replicas:CountingThinker"``, found through PYTHONPATH), which
   answers ``"turn N: <text>."`` where N is the number of user turns in the messages it was
   sent — so every answer shows whether the replica had the session's whole history;
2. throughput: ``--phase-turns`` HTTP turns of 30 sessions with one, two and three
   replicas (a session's turns one after another, the 30 sessions at once, each turn sent
   round-robin to the next replica, as a load balancer would), turns/s and the history
   store's share of the server's turn time (the trace's ``history_load`` +
   ``history_save`` over the turn's ``end``);
3. failover: 300 turns of 30 sessions round-robin over the three replicas; after a third
   of them one replica is killed (SIGKILL: no drain, no goodbye). The client then sends
   every turn to a live replica. A turn whose reply was lost with the killed replica is
   looked up in the store before it is sent again (what an idempotency key would do): it
   may have been saved just before the kill. Checked: every answer carries the session's
   full history, and at the end every session holds exactly its 10 turns, in order, none
   twice.

Each session's requests carry ``X-Forwarded-For: 10.0.0.<n>`` as a load balancer on this
host would send them (uvicorn trusts it from 127.0.0.1), so the per-client turn limit
applies per session, not to the whole bench.

    .venv/bin/python bench/replicas.py [--phase-turns 600] [--thinker-ms 20] [--max-seconds 300]

``--thinker-ms`` stands in for the Thinker's time (a vLLM server's, say): replicas scale
the turns that wait on it. The exit code is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

from omni_agent.events import TextDelta

HERE = Path(__file__).resolve().parent
SESSIONS = 30
FAILOVER_TURNS = 300


class CountingThinker:
    """A Thinker for this bench: ``"turn N: <last user text>."``, N = user turns it was sent."""

    name = "counting"
    accepts = frozenset({"text"})

    def __init__(self, delay_ms: float = 0.0):
        self.delay = delay_ms / 1000.0

    async def stream(self, request: Any) -> AsyncIterator[Any]:
        users = [m for m in request.messages if m.role == "user"]
        if self.delay:
            await asyncio.sleep(self.delay)
        yield TextDelta(text=f"turn {len(users)}: {users[-1].text}.")

    async def aclose(self) -> None:
        return None


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_replica(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("omni-agent")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    out = open(log, "wb")
    try:
        return subprocess.Popen([str(exe), "serve", "agent", "--config", str(config), "--port", str(port),
                                 "--shutdown-grace", "1"], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    finally:
        out.close()


async def wait_healthy(http: Any, url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"replica {url} exited: {log.read_text(errors='replace')[-1500:]}")
        try:
            if (await http.get(f"{url}/health", timeout=1.0)).status_code == 200:
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"replica {url} did not come up in {timeout:.0f} s: {log.read_text(errors='replace')[-1500:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- the client (a load balancer)


class Balancer:
    """Round-robin over the replicas that are alive; a replica that fails a request is
    taken out (a load balancer's passive health check)."""

    def __init__(self, urls: list[str]):
        self.urls = list(urls)
        self.dead: set[str] = set()
        self._i = 0

    def next(self) -> str:
        live = [u for u in self.urls if u not in self.dead]
        if not live:
            raise RuntimeError("no replica is left")
        url = live[self._i % len(live)]
        self._i += 1
        return url


class Run:
    """The figures of one run."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.history_s: list[float] = []
        self.turn_s: list[float] = []
        self.bad: list[str] = []
        self.lost_replies = 0  # a reply lost with the killed replica, the turn found saved
        self.resent = 0        # a reply lost with the killed replica, the turn not saved: sent again
        self.refused = 0       # sent to the killed replica after its death: refused, sent on
        self.after_kill = 0
        self.after_kill_by: dict[str, int] = {}


async def session_turns(http: Any, lb: Balancer, run: Run, sid: str, n: int, xff: str, store: Any,
                        killed: asyncio.Event | None = None, done: list[int] | None = None) -> None:
    for k in range(1, n + 1):
        text = f"{sid}-t{k}"
        expected = f"turn {k}: {text}."
        while True:
            url = lb.next()
            sent_after_kill = killed is not None and killed.is_set()
            t0 = time.perf_counter()
            try:
                r = await http.post(f"{url}/v1/turn", json={"text": text, "session_id": sid},
                                    headers={"X-Forwarded-For": xff}, timeout=20)
            except Exception as e:  # noqa: BLE001 - the replica died under this turn
                import httpx

                if not isinstance(e, httpx.TransportError):
                    raise
                lb.dead.add(url)
                if isinstance(e, httpx.ConnectError):
                    run.refused += 1  # it never reached the dead replica: send it to the next
                    continue
                turns = await store.aturns(sid)
                if turns and turns[-1].messages[0].text == text:
                    run.lost_replies += 1  # saved before the kill: its answer is in the store
                    reply = turns[-1].messages[-1].text
                    if reply != expected:
                        run.bad.append(f"{sid} turn {k}: stored {reply!r}, expected {expected!r}")
                    break
                run.resent += 1
                continue
            run.latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                run.bad.append(f"{sid} turn {k}: HTTP {r.status_code} {r.text[:200]}")
                break
            body = r.json()
            if body["text"] != expected:
                run.bad.append(f"{sid} turn {k} on {url}: {body['text']!r}, expected {expected!r}")
            if body.get("trace", {}).get("errors"):
                run.bad.append(f"{sid} turn {k}: {body['trace']['errors']}")
            timings = body.get("trace", {}).get("timings", {})
            if "end" in timings:
                run.turn_s.append(timings["end"])
                run.history_s.append(timings.get("history_load", 0.0) + timings.get("history_save", 0.0))
            if sent_after_kill:
                run.after_kill += 1
                run.after_kill_by[url] = run.after_kill_by.get(url, 0) + 1
            break
        if done is not None:
            done[0] += 1


async def phase(http: Any, urls: list[str], store: Any, tag: str, turns: int) -> tuple[Run, float]:
    lb, run = Balancer(urls), Run()
    per = max(1, turns // SESSIONS)
    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(SESSIONS):
            tg.create_task(session_turns(http, lb, run, f"{tag}-s{i}", per, f"10.0.0.{i + 1}", store))
    return run, time.perf_counter() - t0


async def failover(http: Any, urls: list[str], procs: list[subprocess.Popen[bytes]], store: Any) -> tuple[Run, float, int]:
    lb, run = Balancer(urls), Run()
    per = FAILOVER_TURNS // SESSIONS
    killed, done = asyncio.Event(), [0]
    victim = procs[-1]

    async def killer() -> None:
        while done[0] < FAILOVER_TURNS // 3:
            await asyncio.sleep(0.001)
        victim.send_signal(signal.SIGKILL)
        killed.set()

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(killer())
        for i in range(SESSIONS):
            tg.create_task(session_turns(http, lb, run, f"fo-s{i}", per, f"10.0.1.{i + 1}", store, killed, done))
    elapsed = time.perf_counter() - t0
    # What the store holds: every session its turns, in order, none twice.
    for i in range(SESSIONS):
        sid = f"fo-s{i}"
        users = [t.messages[0].text for t in await store.aturns(sid)]
        if users != [f"{sid}-t{k}" for k in range(1, per + 1)]:
            run.bad.append(f"{sid}: the store holds {users}")
    return run, elapsed, done[0]


def share(run: Run, thinker_s: float) -> str:
    if not run.turn_s:
        return "n/a"
    return (f"{100 * sum(run.history_s) / sum(run.turn_s):.1f}% "
            f"(history p50 {1000 * statistics.median(run.history_s):.2f} ms of a turn p50 "
            f"{1000 * statistics.median(run.turn_s):.2f} ms, {thinker_s * 1000:g} ms of it the Thinker's)")


async def main_async(args: argparse.Namespace) -> int:
    import httpx

    from omni_agent.memory import RedisHistory
    from omni_agent.memory.testing import RedisServer

    failed = False
    with tempfile.TemporaryDirectory(prefix="omni-replicas-") as tmp:
        tmpdir = Path(tmp)
        redis = RedisServer(tmpdir / "redis").start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            config = tmpdir / "agent.toml"
            config.write_text(f'''
[thinker]
backend = "replicas:CountingThinker"
delay_ms = {args.thinker_ms}

[history]
store = "{redis.url}"
max_tokens = 4096
''', encoding="utf-8")
            ports = [free_port() for _ in range(3)]
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            logs = [tmpdir / f"replica-{p}.log" for p in ports]
            procs = [start_replica(config, p, log) for p, log in zip(ports, logs)]
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=100)
            async with httpx.AsyncClient(limits=limits) as http:
                for url, proc, log in zip(urls, procs, logs):
                    await wait_healthy(http, url, proc, log)
                print(f"redis {redis.url}; replicas {', '.join(urls)}; Thinker {args.thinker_ms:g} ms per turn; "
                      f"{SESSIONS} sessions at once")
                store = RedisHistory(redis.url, max_tokens=4096)
                await phase(http, urls, store, "warm", SESSIONS)  # first-use imports, pools
                for n in (1, 2, 3):
                    run, secs = await phase(http, urls[:n], store, f"p{n}", args.phase_turns)
                    turns = len(run.latencies)
                    print(f"{n} replica(s): {turns} turns in {secs:.2f} s = {turns / secs:.0f} turns/s; "
                          f"client p50 {1000 * statistics.median(run.latencies):.1f} ms; "
                          f"history store share of the server's turn time {share(run, args.thinker_ms / 1000)}")
                    if run.bad:
                        failed = True
                        print("  WRONG:", *run.bad[:5], sep="\n    ")
                run, secs, done = await failover(http, urls, procs, store)
                alive = [u for u in urls if u not in {urls[-1]}]
                print(f"failover: {done} of {FAILOVER_TURNS} turns in {secs:.2f} s; replica {urls[-1]} killed "
                      f"(SIGKILL) after {FAILOVER_TURNS // 3}; {run.after_kill} turns sent after the kill, answered by "
                      + ", ".join(f"{u} ({run.after_kill_by.get(u, 0)})" for u in alive)
                      + f"; replies lost with the replica: {run.lost_replies} (turn already saved, "
                      f"answer read from the store), {run.resent} (not saved, sent again); "
                      f"connections refused by the dead replica: {run.refused}")
                ok = not run.bad and done == FAILOVER_TURNS and urls[-1] not in run.after_kill_by
                print("failover check: " + ("every turn answered once with the session's full history; "
                                            "the store holds each session's 10 turns in order, none twice"
                                            if ok else "FAILED"))
                if not ok:
                    failed = True
                    print("  WRONG:", *run.bad[:10], sep="\n    ")
                await store.aclose()
        finally:
            for p in procs:
                stop(p)
            redis.stop()
    return 1 if failed else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase-turns", type=int, default=600, help="turns per throughput phase (30 sessions)")
    ap.add_argument("--thinker-ms", type=float, default=20.0, help="the scripted Thinker's time per turn")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="the whole bench stops after this long")
    args = ap.parse_args()
    if not 30 <= args.phase_turns <= 3000:
        ap.error("--phase-turns must be 30..3000")
    try:
        code = asyncio.run(asyncio.wait_for(main_async(args), args.max_seconds))
    except TimeoutError:
        print(f"the bench ran past --max-seconds {args.max_seconds:g} and was stopped")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
