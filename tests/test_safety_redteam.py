"""The red-team set (PII across kinds, formats and languages, split across stream chunks)
never reaches the Talker; the clean set (numbers that are not PII) is left alone.

Data: tests/data/pii_redteam.jsonl and tests/data/clean_numbers.jsonl (written by
tests/data/make_safety_sets.py).
"""

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from omni_agent.agent import Agent
from omni_agent.events import TextDelta
from omni_agent.middleware.markup import MarkupGuard
from omni_agent.middleware.pii import KINDS, PIIDetector, PIIRedactor
from omni_agent.testing import RecordingTalker, ScriptedThinker

DATA = Path(__file__).parent / "data"
REDTEAM = [json.loads(line) for line in (DATA / "pii_redteam.jsonl").read_text(encoding="utf-8").splitlines()]
CLEAN = [json.loads(line) for line in (DATA / "clean_numbers.jsonl").read_text(encoding="utf-8").splitlines()]


def _digits(s):
    return "".join(str(int(c)) for c in s if c.isdigit())


def _piis(case):
    return case["pii"] if isinstance(case["pii"], list) else [case["pii"]]


def leaks(case, spoken):
    """Pieces of the case's PII that appear in ``spoken`` (and not elsewhere in the
    sentence): words of three or more characters, and any four digits in a row."""
    text = case["text"]
    context = text
    for p in _piis(case):
        context = context.replace(p, " ")
    out = []
    spoken = re.sub(r"\[[^\]]*\]", " ", spoken)  # the labels ("[email address]") are ours
    low, ctx_low = spoken.lower(), context.lower()
    sd, cd = _digits(spoken), _digits(context)
    for p in _piis(case):
        for piece in re.split(r"[\s\-.@()/:+\[\]{}%_]+", p):
            if len(piece) >= 3 and not piece.isdigit() and piece.lower() in low and piece.lower() not in ctx_low \
                    and piece.lower() not in ("at", "dot"):
                out.append(piece)
        d = _digits(p)
        for i in range(len(d) - 3):
            w = d[i:i + 4]
            if w in sd and w not in cd:
                out.append(w)
                break
    return out


def _split_inside(text, pii, fractions):
    start = text.index(pii)
    cuts = sorted({start + max(1, min(len(pii) - 1, int(len(pii) * f))) for f in fractions})
    out, last = [], 0
    for c in cuts:
        out.append(text[last:c])
        last = c
    out.append(text[last:])
    return out


def _speak(chunks, **pii):
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([chunks]), talker=talker,
                  middleware=[MarkupGuard(), PIIRedactor(**pii)])
    r = agent.ask("?")
    return " ".join(talker.spoken), r


def test_the_red_team_set_is_large_and_covers_every_kind_and_several_languages():
    assert len(REDTEAM) >= 200
    kinds = {c["kind"] for c in REDTEAM}
    assert set(KINDS) <= kinds
    assert len({c["lang"] for c in REDTEAM}) >= 8
    assert len({(c["kind"], c["format"]) for c in REDTEAM}) >= 100


def test_no_red_team_pii_reaches_the_talker_when_split_inside_the_pii():
    failures = []
    for case in REDTEAM:
        for fractions in ((0.5,), (0.2, 0.6), (0.1, 0.3, 0.5, 0.7, 0.9)):
            chunks = _split_inside(case["text"], _piis(case)[0], fractions)
            spoken, _ = _speak(chunks)
            bad = leaks(case, spoken)
            if bad:
                failures.append((case["id"], case["kind"], case["format"], chunks, spoken, bad))
    assert failures == [], f"{len(failures)} leaks, first: {failures[:3]}"


def test_no_red_team_pii_reaches_the_talker_one_character_at_a_time():
    failures = []
    for case in REDTEAM:
        spoken, _ = _speak(list(case["text"]))
        if leaks(case, spoken):
            failures.append((case["id"], spoken))
    assert failures == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REDTEAM), st.lists(st.integers(min_value=1, max_value=120), max_size=30))
def test_no_red_team_pii_reaches_the_talker_for_random_chunkings(case, points):
    text = case["text"]
    cuts = sorted({p for p in points if p < len(text)})
    chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    spoken, _ = _speak(chunks)
    assert leaks(case, spoken) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REDTEAM), st.lists(st.integers(min_value=1, max_value=120), max_size=30))
def test_with_display_filtering_no_red_team_pii_is_shown_either(case, points):
    text = case["text"]
    cuts = sorted({p for p in points if p < len(text)})
    chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    spoken, r = _speak(chunks, display=True)
    shown = "".join(e.text for e in r.events if isinstance(e, TextDelta))
    assert leaks(case, spoken) == [] and leaks(case, shown) == [] and leaks(case, r.text) == []


def test_the_clean_set_is_large_and_covers_the_number_categories():
    assert len(CLEAN) >= 200
    cats = {c["category"] for c in CLEAN}
    assert {"time", "price", "year", "quantity", "version", "room", "flight"} <= cats


def test_at_most_two_percent_of_the_clean_set_is_flagged():
    det = PIIDetector()
    flagged = [(c["text"], [c["text"][f.start:f.end] for f in det.find(c["text"])]) for c in CLEAN]
    flagged = [f for f in flagged if f[1]]
    assert len(flagged) / len(CLEAN) <= 0.02, flagged


def test_clean_sentences_reach_the_talker_unchanged():
    changed = []
    for c in CLEAN:
        talker = RecordingTalker()
        Agent(thinker=ScriptedThinker([[c["text"]]]), talker=talker,
              middleware=[MarkupGuard(), PIIRedactor()]).ask("?")
        if " ".join(talker.spoken) != c["text"]:
            changed.append((c["text"], talker.spoken))
    assert len(changed) / len(CLEAN) <= 0.02, changed


def test_the_leak_check_itself_catches_a_leak():
    case = next(c for c in REDTEAM if c["kind"] == "phone")
    spoken, _ = _speak([case["text"]], kinds=["email"])  # phones not filtered: must leak
    assert leaks(case, spoken)


def test_a_sentence_too_long_for_one_clause_is_never_cut_inside_its_pii():
    # The segmenter cuts a sentence longer than max_chars (250) at a space: never between
    # the groups of a number, so no half of a phone, card or IBAN is spoken first.
    values = ["+44 20 7946 0958", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00",
              "GB29 NWBK 6016 1331 9268 19", "01 23 45 67 89", "123 45 6789"]
    failures = []
    for v in values:
        for pad in range(200, 262, 2):
            text = ("word " * 60)[:pad] + f" call {v} and then some more words here."
            case = {"text": text, "pii": v}
            spoken, _ = _speak(list(text))
            if leaks(case, spoken) or any(g in spoken for g in v.split() if any(c.isdigit() for c in g)):
                failures.append((v, pad, spoken[-60:]))
    assert failures == []


@pytest.mark.slow
def test_real_voice_path_speaks_no_pii_as_heard_by_speech_recognition():
    # The real Talker (Piper) speaks the filtered answer; the real ears (whisper) listen.
    import asyncio

    from omni_agent.ears import Ears
    from omni_agent.events import AudioPart
    from omni_agent.middleware.speech import SpeechShaper
    from omni_agent.talkers.piper import PiperTalker

    reply = ["<think>they want my details</think>Sure, call me at 555-01", "99 or mail jane.doe@exa",
             "mple.com. ", "My card is 4111 1111 ", "1111 1111. ", '<tool_call>{"name": "f", "arguments": {}}</tool_call>']
    r = Agent(thinker=ScriptedThinker([reply]), talker=PiperTalker(),
              middleware=[MarkupGuard(), PIIRedactor(), SpeechShaper()]).ask("?")
    heard = asyncio.run(Ears().transcribe(AudioPart(pcm=r.audio, sample_rate=r.sample_rate))).lower()
    assert "phone number" in heard and "email address" in heard and "card number" in heard
    assert not any(c.isdigit() for c in heard)
    numbers = {"zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    words = re.findall(r"[a-z]+", heard)
    assert not any(all(w in numbers for w in words[i:i + 3]) for i in range(len(words) - 2)), heard
    assert "jane" not in heard and "example" not in heard and "think" not in heard and "tool" not in heard
