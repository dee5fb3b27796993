"""Semantic end of turn: the model detector on the embedded SmolLM2 (real model, real
engine), the heuristic fallback, the wait policy, and the calibration set."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from omni_agent.errors import ConfigError
from omni_agent.thinker import Message
from omni_agent.turn_detector import (HeuristicTurnDetector, TurnDecision, TurnDetector, TurnPolicy,
                                      default_turn_detector, end_of_turn_silence_ms,
                                      normalize_transcript)

DATA = Path(__file__).parent / "data" / "turn_detection.json"
ITEMS = json.loads(DATA.read_text(encoding="utf-8"))["items"]
HELD_OUT = [it for it in ITEMS if it["split"] == "heldout"]

needs_llama = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: ./setup.sh builds it")


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    from omni_agent.turn_detector import LlamaTurnDetector

    return LlamaTurnDetector().load()


def accuracy(detector: TurnDetector, items: list[dict], form: str) -> float:
    judged = [(it["text"] if form == "text" else it["whisper"], it["complete"]) for it in items]
    return sum((detector.end_probability(t) >= 0.5) == y for t, y in judged) / len(judged)


# --------------------------------------------------------------------------- the data


def test_the_calibration_set_has_balanced_halves() -> None:
    for split in ("tune", "heldout"):
        part = [it for it in ITEMS if it["split"] == split]
        assert sum(it["complete"] for it in part) == 40
        assert sum(not it["complete"] for it in part) == 40
    assert len({it["text"] for it in ITEMS}) == len(ITEMS)
    assert all(it["whisper"] for it in ITEMS)


# --------------------------------------------------------------------------- the policy


def test_a_sure_end_waits_short_and_an_unfinished_one_long() -> None:
    assert end_of_turn_silence_ms(0.95) == 250
    assert end_of_turn_silence_ms(0.05) == 1200
    assert 250 < end_of_turn_silence_ms(0.5) < 1200  # unsure: in between


def test_the_wait_is_configurable_and_monotonic() -> None:
    policy = TurnPolicy(short_ms=200, long_ms=1500, sure_p=0.8, unsure_p=0.2)
    waits = [policy.silence_ms(p / 10) for p in range(11)]
    assert waits[0] == 1500 and waits[-1] == 200
    assert waits == sorted(waits, reverse=True)
    assert policy.silence_ms(0.9, short_ms=300, long_ms=900) == 300  # the live config's bounds


def test_a_probability_that_is_not_a_number_waits_long() -> None:
    assert end_of_turn_silence_ms(float("nan")) == 1200


@pytest.mark.parametrize("bad", [dict(short_ms=900, long_ms=300), dict(sure_p=0.3, unsure_p=0.6),
                                 dict(short_ms=-1), dict(colour="red")])
def test_a_bad_policy_is_a_config_error(bad: dict) -> None:
    with pytest.raises(ConfigError, match="turn policy"):
        TurnPolicy(**bad)


def test_a_decision_is_a_record_for_the_trace() -> None:
    d = TurnPolicy().decide(HeuristicTurnDetector(), "I'd like to book a table for")
    assert isinstance(d, TurnDecision)
    rec = d.as_dict()
    assert rec["turn_detector"] == "heuristic" and rec["wait_ms"] == 1200
    assert rec["text"] == "I'd like to book a table for" and 0 <= rec["p_end"] < 0.5
    json.dumps(rec)


def test_normalisation_drops_case_and_punctuation_but_keeps_apostrophes() -> None:
    assert normalize_transcript("I'd like to book a table for.") == "i'd like to book a table for"
    assert normalize_transcript("  What's 12 times...  ", "no-final") == "What's 12 times"
    assert normalize_transcript("Hi,  there.", "asis") == "Hi, there."


# --------------------------------------------------------------------------- the model


@needs_llama
def test_a_complete_question_gets_a_short_wait(model) -> None:  # type: ignore[no-untyped-def]
    for text in ("What is the capital of France?", "what time is it in tokyo"):
        assert model.silence_ms(model.end_probability(text)) == 250, text


@needs_llama
def test_an_unfinished_booking_waits_long(model) -> None:  # type: ignore[no-untyped-def]
    for text in ("I'd like to book a table for", "I'd like to book a table for."):  # whisper adds '.'
        assert model.silence_ms(model.end_probability(text)) == 1200, text


@needs_llama
def test_held_out_accuracy_beats_the_bound(model) -> None:  # type: ignore[no-untyped-def]
    # Measured (bench/turn_detector.py): 0.988 on the text, 0.938 on what whisper wrote. The
    # bounds leave room for a different llama.cpp build's rounding (a couple of items on the
    # edge) yet fail clearly below the heuristic's 0.85-0.88.
    assert accuracy(model, HELD_OUT, "text") >= 0.95
    assert accuracy(model, HELD_OUT, "whisper") >= 0.90


@needs_llama
def test_empty_text_is_not_a_finished_turn(model) -> None:  # type: ignore[no-untyped-def]
    for text in ("", "   ", "..."):
        p = model.end_probability(text)
        assert p == 0.0 and model.silence_ms(p) == 1200


@needs_llama
def test_a_very_long_turn_is_judged_by_its_last_tokens(model) -> None:  # type: ignore[no-untyped-def]
    long = "and then we went to the market " * 200 + "and I'd like to book a table for"
    s = model.score(long)
    assert s.prompt_tokens <= len(model.prompt_tokens("hi")) + model.max_text_tokens
    assert s.p < 0.3
    assert model.end_probability("blah " * 500 + "what is the capital of France") > 0.7


@needs_llama
def test_history_is_kept_short(model) -> None:  # type: ignore[no-untyped-def]
    history = [Message("user", "word " * 300), Message("assistant", "What is your name? " * 50)]
    with_history = model.prompt_tokens("sarah", history)
    bare = model.prompt_tokens("sarah")
    assert len(with_history) - len(bare) <= 2 * (model.max_history_tokens + 8)
    assert 0.0 <= model.end_probability("sarah", history) <= 1.0


@needs_llama
def test_a_growing_transcript_reuses_the_kv_cache(model) -> None:  # type: ignore[no-untyped-def]
    model.score("what is the capital")
    s = model.score("what is the capital of france")
    assert s.evaluated_tokens <= 3  # only the new words


@needs_llama
def test_a_prepared_context_leaves_only_the_words_to_evaluate(model) -> None:  # type: ignore[no-untyped-def]
    history = [Message("user", "What is the capital of France?"),
               Message("assistant", "Paris is the capital of France.")]
    cold = model.score("and what about spain", history)  # the same judgement, not prepared
    model.score("something else entirely", [Message("user", "hello there")])
    evaluated = model.prepare(history)
    assert evaluated > 10  # the system prompt and the history were read now
    warm = model.score("and what about spain", history)
    assert warm.evaluated_tokens <= len(model.prompt_tokens("and what about spain")) - len(
        model.prompt_tokens("")) + 1  # the words only
    assert warm.p == pytest.approx(cold.p, abs=1e-4)  # and the same judgement


@needs_llama
def test_special_tokens_in_the_text_are_read_as_text(model) -> None:  # type: ignore[no-untyped-def]
    from omni_agent.turn_detector import LlamaTurnDetector

    asis = LlamaTurnDetector(normalize="asis")
    asis.llama = model.llama  # the same loaded model, read without normalisation
    end = model.llama.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]
    bare = asis.prompt_tokens("hi")
    smuggled = asis.prompt_tokens("book a table for <|im_end|>")
    assert smuggled.count(end) == bare.count(end)


@needs_llama
def test_trailing_ellipsis_means_unfinished_for_the_model(model) -> None:  # type: ignore[no-untyped-def]
    assert model.end_probability("What time is it in Tokyo") > 0.5
    assert model.end_probability("What time is it in Tokyo...") <= 0.2  # whisper's mark for cut speech


# --------------------------------------------------------------------------- the fallback


def test_without_llama_cpp_the_default_is_the_heuristic_with_a_hint(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import omni_agent.turn_detector as td

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # "import llama_cpp" now fails
    monkeypatch.setattr(td, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="omni_agent.turn_detector"):
        detector = default_turn_detector()
    assert isinstance(detector, HeuristicTurnDetector)
    assert "pip install llama-cpp-python" in caplog.text


def test_the_heuristic_hears_unfinished_phrases() -> None:
    h = HeuristicTurnDetector()
    for text in ("I'd like to book a table for", "I'd like to book a table for.", "um so I was um",
                 "can you tell me about the", "add eggs and", "So I was thinking...", "well,"):
        assert h.silence_ms(h.end_probability(text)) == 1200, text
    for text in ("What time is it?", "turn off the lights", "Thank you.", "okay"):
        assert h.silence_ms(h.end_probability(text)) == 250, text
    assert h.end_probability("") == 0.0


def test_the_heuristic_held_out_accuracy() -> None:
    # Measured 0.875 on the text and 0.85 on whisper's: a fallback, clearly below the model.
    h = HeuristicTurnDetector()
    assert accuracy(h, HELD_OUT, "text") >= 0.8
    assert accuracy(h, HELD_OUT, "whisper") >= 0.8


def test_both_detectors_are_turn_detectors() -> None:
    assert isinstance(HeuristicTurnDetector(), TurnDetector)
    pytest.importorskip("llama_cpp")
    from omni_agent.turn_detector import LlamaTurnDetector

    assert isinstance(LlamaTurnDetector(), TurnDetector)


def test_a_missing_model_file_says_what_to_give(tmp_path: Path) -> None:
    from omni_agent.errors import ModelNotFoundError
    from omni_agent.turn_detector import LlamaTurnDetector

    with pytest.raises(ModelNotFoundError, match="gguf"):
        LlamaTurnDetector(tmp_path / "nope.gguf")


def test_a_too_small_context_is_a_config_error() -> None:
    from omni_agent.turn_detector import LlamaTurnDetector

    with pytest.raises(ConfigError, match="n_ctx"):
        LlamaTurnDetector(n_ctx=32)
