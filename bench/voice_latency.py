"""Voice to voice, as a user of the browser page feels it (issue 14).

From the true end of the user's speech to the reply's first audio being audible, per turn,
with the real ``omni-agent serve agent`` (the embedded default: SmolLM2 Thinker, Piper
Talker, whisper ears) started here on 127.0.0.1, and the voice page at ``/`` in headless
Chromium over the WebSocket transport. Chromium's fake microphone plays a WAV this bench
makes with the embedded Piper voice: plain questions, tool questions (time, calculator),
and one with a pause mid-sentence ("I'd like to know... the capital of Spain"), with
silence between them.

For each turn it prints, from the end of the user's speech:

* ``transcript`` — the server had the final transcript;
* ``token`` — the Thinker's first token;
* ``sent`` — the first reply audio was sent;
* ``audible`` — the page started playing it: the page's own figure (``window.omniTurns``),
  which maps the server's ``speech_end_ms`` (a position in the audio it was sent) to the
  moment the page captured that audio, and the first reply buffer's scheduled start to
  ``performance.now()`` — so the uplink, the silence the server waited to end the turn and
  the playback scheduling are all in it;

then the p50/p90 of each per kind of question. Targets (issue 14): audible ≤ 800 ms p50 for a
plain question, ≤ 1.2 s for a tool question.

::

    .venv/bin/python bench/voice_latency.py                  # today's server defaults
    .venv/bin/python bench/voice_latency.py --baseline       # whole-turn ears, silence only
    .venv/bin/python bench/voice_latency.py --compare --out results.json   # both, side by side
    .venv/bin/python bench/voice_latency.py --turns 4 --gap 8

A reply still running when the next question starts is cut by it (barge-in) and has no
audible figure: on a slow or busy machine give a longer ``--gap``.

Needs Chromium and chromedriver (``apt-get install -y chromium chromium-driver``), selenium
(the dev extra) and the speech extra. Loopback only; it stops by itself (``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from omni_agent.audio import float_to_pcm16, pcm16_to_float, write_wav
from omni_agent.events import Utterance

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
RATE = 22050  # the Piper voice's rate; Chromium's fake device resamples it

#: Live-session settings that give the behaviour before issue 14: recognition of the whole
#: turn after it ends, the end of a turn from silence alone, no preemptive drafts.
BASELINE = {"streaming_asr": "false", "semantic_turn": "false", "preemptive": "false",
            "end_silence_ms": "600"}


@dataclass
class Question:
    """One spoken question: its pieces (spoken with ``mid_pause`` s between them) and its kind."""

    pieces: tuple[str, ...]
    kind: str  # plain | tool | pause (a pause mid-sentence)
    mid_pause: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(self.pieces)


QUESTIONS = [
    Question(("What is the capital of France?",), "plain"),
    Question(("What time is it in Tokyo?",), "tool"),
    Question(("I'd like to know...", "the capital of Spain."), "pause", mid_pause=0.8),
    Question(("What is 17 times 23?",), "tool"),
    Question(("Who wrote Romeo and Juliet?",), "plain"),
    Question(("What is the time in London?",), "tool"),
    Question(("What colour is the sky?",), "plain"),
    Question(("What is 144 divided by 12?",), "tool"),
]


# --------------------------------------------------------------------------- the microphone


def speak(texts: list[str]) -> list[np.ndarray]:
    """Each text spoken by the embedded Piper voice, float32 at 22.05 kHz."""
    from omni_agent.talkers.piper import PiperTalker

    talker = PiperTalker()

    async def one(text: str) -> np.ndarray:
        chunks = [c async for c in talker.speak(Utterance(text=text))]
        if chunks and chunks[0].sample_rate != RATE:
            raise SystemExit(f"the Piper voice speaks at {chunks[0].sample_rate} Hz, not {RATE}")
        return pcm16_to_float(b"".join(c.pcm for c in chunks))

    async def all_of() -> list[np.ndarray]:
        return [await one(t) for t in texts]

    return asyncio.run(all_of())


def microphone(questions: list[Question], path: Path, gap: float, lead_in: float = 2.0) -> float:
    """Write the microphone WAV (16-bit PCM: what Chromium's fake capture plays unchanged),
    ``gap`` seconds of silence after each question (2 s more after a tool question); returns
    its length in seconds."""
    texts = [p for q in questions for p in q.pieces]
    spoken = iter(speak(texts))
    silence = lambda s: np.zeros(int(s * RATE), np.float32)  # noqa: E731
    parts = [silence(lead_in)]
    for q in questions:
        for i, _ in enumerate(q.pieces):
            if i:
                parts.append(silence(q.mid_pause))
            parts.append(next(spoken))
        parts.append(silence(gap + (2.0 if q.kind == "tool" else 0.0)))
    audio = np.concatenate(parts)
    write_wav(path, float_to_pcm16(audio), RATE)
    return audio.size / RATE


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log: Path, timeout: float) -> subprocess.Popen:
    """``omni-agent serve agent`` on 127.0.0.1:port, once its /health answers."""
    exe = Path(sys.executable).with_name("omni-agent")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from omni_agent.cli import main; main()"]
    cmd += ["serve", "agent", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"omni-agent serve agent exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc)
            raise SystemExit(f"the server did not answer /health within {timeout:.0f} s:\n"
                             f"{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful stop
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --------------------------------------------------------------------------- the browser


def chromium(wav: Path, profile: Path):
    """Headless Chromium whose microphone plays ``wav`` once (DESIGN.md's flags)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop",
                "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


PAGE_STATE = """
const s = window.omni || {};
return JSON.parse(JSON.stringify({turns: window.omniTurns || [], ready: s.ready, errors: s.errors || [],
  userTexts: s.userTexts || [], agentTexts: s.agentTexts || [], interruptions: s.interruptions || [],
  transcripts: (s.transcripts || []).length, captureMaxRms: s.captureMaxRms || 0,
  sourcesStarted: s.sourcesStarted || 0, sourcesEnded: s.sourcesEnded || 0,
  latencies: (s.latencies || []).length,
  events: (s.events || []).filter((e) => e !== 'audio_chunk' && e !== 'text_delta' && e !== 'utterance')}));
"""


def run_page(url: str, wav: Path, seconds: float, profile: Path, timeout: float) -> dict:
    """Open the page, let the microphone play, and return the page's figures once every
    turn has ended and its audio has played (or the time is up)."""
    driver = chromium(wav, profile)
    try:
        driver.get(url)
        start = time.monotonic()
        deadline = start + timeout
        st: dict = {}
        while time.monotonic() < deadline:
            st = driver.execute_script(PAGE_STATE) or {}
            if st.get("errors"):
                raise SystemExit(f"the page reported an error: {st['errors']}")
            done = (time.monotonic() - start > seconds + 2.0 and st["latencies"] >= len(st["userTexts"])
                    and st["sourcesEnded"] == st["sourcesStarted"])
            if done:
                break
            time.sleep(0.25)
        else:
            print(f"warning: stopped after {timeout:.0f} s with turns still running", file=sys.stderr)
        if st.get("captureMaxRms", 0) < 0.01:
            raise SystemExit("the fake microphone delivered only silence: check the WAV and Chromium's flags")
        return st
    finally:
        driver.quit()


# --------------------------------------------------------------------------- the figures


def words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", (text or "").lower()))


def match(transcript: str, questions: list[Question]) -> tuple[int | None, float]:
    """The question this transcript is (a part of), and how well it matches (0..1)."""
    heard = words(transcript)
    best, score = None, 0.0
    for i, q in enumerate(questions):
        for candidate in (q.text, *q.pieces):
            r = difflib.SequenceMatcher(None, heard, words(candidate)).ratio()
            if r > score:
                best, score = i, r
    return (best, score) if score >= 0.5 else (None, score)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def ms(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def end_of_turn(row: dict) -> str:
    """How the server decided the end of the turn, e.g. ``semantic 250``: the detector and
    the silence it waited (ms)."""
    if not row["end_of_turn"]:
        return "-"
    return f"{row['end_of_turn']} {ms(row['end_wait_ms'])}"


FIELDS = (("transcript", "transcript_final_ms"), ("token", "first_token_ms"),
          ("sent", "first_audio_sent_ms"), ("audible", "audible_ms"))


def report(st: dict, questions: list[Question]) -> dict:
    rows = []
    for t in st["turns"]:
        if t.get("kind") == "text":
            continue
        transcript = t.get("transcript") or ""
        qi, score = match(transcript, questions)
        q = questions[qi] if qi is not None else None
        rows.append({
            "turn_id": t.get("turn_id"),
            "question": q.text if q else None,
            "kind": q.kind if q else "unmatched",
            "transcript": transcript,
            "complete": bool(q) and words(transcript) != "" and difflib.SequenceMatcher(
                None, words(transcript), words(q.text)).ratio() > 0.8,
            "tools": t.get("tools") or [],
            "draft": t.get("draft"),
            "end_of_turn": (t.get("end_of_turn") or {}).get("detector"),
            "end_wait_ms": (t.get("end_of_turn") or {}).get("wait_ms"),
            "p_end": (t.get("end_of_turn") or {}).get("p_end"),
            "measure": t.get("measure"),
            "interrupted": t.get("reason") == "interrupted",
            "reason": t.get("reason"),
            "reply": t.get("reply"),
            **{key: t.get(key) for _, key in FIELDS},
        })
    print(f"{'#':>3} {'kind':<9} {'transcript':>10} {'token':>7} {'sent':>7} {'audible':>8}  "
          f"{'draft':<9} {'end of turn':<14} heard")
    for r in rows:
        print(f"{r['turn_id']:>3} {r['kind']:<9} {ms(r['transcript_final_ms']):>10} {ms(r['first_token_ms']):>7} "
              f"{ms(r['first_audio_sent_ms']):>7} {ms(r['audible_ms']):>8}  {str(r['draft'] or '-'):<9} "
              f"{end_of_turn(r):<14} {r['transcript']!r}{'' if r['complete'] else '  (not the whole question)'}"
              f"{'  (interrupted by the next question)' if r['interrupted'] else ''}")
    summary: dict = {}
    print("\nms from the end of the user's speech, p50 / p90 (n):")
    for kind in sorted({r["kind"] for r in rows}):
        of_kind = [r for r in rows if r["kind"] == kind]
        summary[kind] = {"n": len(of_kind)}
        line = [f"  {kind:<9}"]
        for label, key in FIELDS:
            vals = [r[key] for r in of_kind if r[key] is not None]
            summary[kind][key] = {"p50": pct(vals, 50), "p90": pct(vals, 90), "n": len(vals)}
            line.append(f"{label} {ms(pct(vals, 50))} / {ms(pct(vals, 90))} ({len(vals)})")
        print("  ".join(line))
    drafts = [r["draft"] for r in rows if r["draft"]]
    if drafts:
        print(f"drafts kept: {drafts.count('kept')} of {len(drafts)}")
    split = [q.text for q in questions if sum(1 for r in rows if r["question"] == q.text) > 1]
    if split:
        print(f"questions cut into several turns: {split}")
    print("targets (issue 14): audible p50 ≤ 800 ms for a plain question, ≤ 1200 ms for a tool question")
    return {"turns": rows, "summary": summary, "drafts_kept": drafts.count("kept"), "drafts": len(drafts),
            "split_questions": split}


def run_mode(name: str, session: dict, base_url: str, wav: Path, seconds: float, questions: list[Question],
             profile: Path, timeout: float) -> dict:
    """One browser session against the running server with these live-session settings."""
    query = urlencode({"autostart": "1", "transport": "ws", **session})
    st = run_page(f"{base_url}/?{query}", wav, seconds, profile, timeout=timeout)
    config = (st.get("ready") or {}).get("config") or {}
    print(f"\n== {name}: " + ", ".join(f"{k}={config.get(k)}" for k in sorted(config)
                                      if k in session or k in SHOWN_SETTINGS))
    result = report(st, questions)
    result.update(mode=name, session_params=session, live_config=config,
                  interruptions=len(st.get("interruptions", [])),
                  transcript_messages=st.get("transcripts", 0),
                  no_speech=st.get("events", []).count("no_speech"), events=st.get("events", []))
    return result


SHOWN_SETTINGS = ("end_silence_ms", "min_end_silence_ms", "max_end_silence_ms", "pause_ms",
                  "semantic_turn", "streaming_asr", "preemptive")


def compare(results: list[dict]) -> None:
    """The audible p50 / p90 of each mode side by side, per kind of question."""
    kinds = sorted({k for r in results for k in r["summary"]})
    print("\nreply audible after the end of speech, ms p50 / p90: " + " | ".join(r["mode"] for r in results))
    for kind in kinds:
        cells = []
        for r in results:
            a = r["summary"].get(kind, {}).get("audible_ms", {})
            cells.append(f"{ms(a.get('p50'))} / {ms(a.get('p90'))}")
        print(f"  {kind:<9} " + " | ".join(cells))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--baseline", action="store_true",
                      help="the behaviour before issue 14: " + "&".join(f"{k}={v}" for k, v in BASELINE.items()))
    mode.add_argument("--compare", action="store_true",
                      help="the baseline, then today's defaults, against the same server; both side by side")
    ap.add_argument("--turns", type=int, default=len(QUESTIONS),
                    help=f"how many questions to ask (default {len(QUESTIONS)}; more repeats them)")
    ap.add_argument("--gap", type=float, default=6.0,
                    help="seconds of silence after each question, 2 s more after a tool question "
                         "(default 6: a reply that has not ended by the next question is cut by it)")
    ap.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                    help="another live-session setting for the page to pass on (repeatable)")
    ap.add_argument("--out", type=Path, help="write the turns and the summary to this JSON file")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds in all")
    args = ap.parse_args(argv)
    for p in (CHROMIUM, CHROMEDRIVER):
        if not Path(p).exists():
            raise SystemExit(f"{p} not found: apt-get install -y chromium chromium-driver")
    if args.turns < 1:
        raise SystemExit("--turns must be at least 1")
    t_start = time.monotonic()
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    extra = {}
    for p in args.param:
        name, sep, value = p.partition("=")
        if not sep:
            raise SystemExit(f"--param {p!r}: write NAME=VALUE, e.g. --param end_silence_ms=400")
        extra[name] = value
    modes = [("baseline", {**BASELINE, **extra})] if args.baseline or args.compare else []
    if not args.baseline:
        modes.append(("default", dict(extra)))
    results = []
    with tempfile.TemporaryDirectory(prefix="voice_latency_") as tmp:
        tmp_path = Path(tmp)
        wav = tmp_path / "mic.wav"
        seconds = microphone(questions, wav, args.gap)
        print(f"microphone: {len(questions)} questions, {seconds:.1f} s of audio", file=sys.stderr)
        port = free_port()
        print("starting omni-agent serve agent (loading the models) ...", file=sys.stderr)
        proc = start_server(port, tmp_path / "server.log", timeout=min(300.0, args.timeout / 2))
        try:
            for i, (name, session) in enumerate(modes):
                left = (args.timeout - (time.monotonic() - t_start)) / (len(modes) - i)
                results.append(run_mode(name, session, f"http://127.0.0.1:{port}", wav, seconds, questions,
                                        tmp_path / f"profile-{name}", timeout=max(30.0, left - 10)))
        finally:
            stop_server(proc)
    if len(results) > 1:
        compare(results)
    if args.out:
        args.out.write_text(json.dumps({"questions": [asdict(q) for q in questions], "runs": results}, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
