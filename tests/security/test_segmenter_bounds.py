"""The segmenter's work is linear in the text it is fed, and no utterance outgrows
``max_chars``, however the text comes: one megabyte in one delta or in tiny ones.

A Thinker (or whoever controls its output) can send one huge delta with no sentence end;
rescanning or re-copying the buffer per cut made that quadratic and stalled the event
loop for tens of seconds, and a clause mark far behind let one piece grow unbounded.
"""

from __future__ import annotations

import time

import pytest

from omni_agent.middleware.segmenter import Segmenter

MEGABYTE = 1_000_000
CAP = 250  # Segmenter's default max_chars
CJK_CHARS = set("中文字。！？，")

# Text shapes that each found a slow or unbounded path: no punctuation at all, no spaces,
# only clause marks, only sentence ends, runs of punctuation, newlines, CJK, numbers.
SHAPES = {
    "words": "word ",
    "no spaces": "x",
    "commas": "word, ",
    "commas without spaces": "a,b",
    "sentences": "Hi there. ",
    "abbreviations": "Dr. a.m. etc. ",
    "newlines": "a\n",
    "blank lines": "\n",
    "spaces": " ",
    "periods": ".",
    "exclamations": "!",
    "cjk": "中文字",
    "cjk sentence ends": "。",
    "cjk clauses": "中文，",
    "number groups": "1 2 ",
    "closers": "a.)",
}


def weight(piece: str) -> int:
    """Length as the segmenter counts it: a CJK character counts three."""
    return len(piece) + 2 * sum(c in CJK_CHARS for c in piece)


def segment(text: str, step: int | None) -> tuple[list[str], float]:
    seg = Segmenter()
    t0 = time.perf_counter()
    if step is None:
        out = seg.feed(text)
    else:
        out = []
        for i in range(0, len(text), step):
            out += seg.feed(text[i:i + step])
    out += seg.flush()
    return out, time.perf_counter() - t0


def visible(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("step", [None, 10], ids=["one delta", "10-char deltas"])
def test_a_megabyte_without_punctuation_comes_out_quickly_in_bounded_clauses(step):
    text = "word " * (MEGABYTE // 5)
    out, seconds = segment(text, step)
    assert seconds < 2.0, f"{seconds:.1f} s for 1 MB"
    assert max(map(weight, out)) <= CAP
    assert " ".join(out) == text.strip()  # cut at word boundaries, nothing lost


@pytest.mark.parametrize("step", [None, 10], ids=["one delta", "10-char deltas"])
@pytest.mark.parametrize("shape", SHAPES)
def test_a_megabyte_of_any_shape_comes_out_quickly_in_bounded_pieces(shape, step):
    unit = SHAPES[shape]
    text = unit * (MEGABYTE // len(unit))
    out, seconds = segment(text, step)
    assert seconds < 2.0, f"{seconds:.1f} s for 1 MB of {shape!r}"
    assert all(weight(p) <= CAP for p in out), max(map(weight, out))
    assert visible("".join(out)) == visible(text)


def test_a_long_sentence_in_one_delta_is_cut_as_if_it_had_streamed_in():
    text = "This sentence goes on " + "and on " * 100 + "until it ends. Then a short one."
    whole, _ = segment(text, None)
    streamed, _ = segment(text, 3)
    assert whole == streamed
    assert all(weight(p) <= CAP for p in whole)


def test_a_clause_mark_past_the_cap_does_not_make_a_piece_longer_than_the_cap():
    seg = Segmenter()
    seg.feed("Hello there.")
    text = " " + "word " * 60 + "and later, " + "word " * 60
    out = seg.feed(text) + seg.flush()
    assert out[0] == "Hello there."
    assert all(weight(p) <= CAP for p in out), [len(p) for p in out]
    assert " ".join(out[1:]) == text.strip()
