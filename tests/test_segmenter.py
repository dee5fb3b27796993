"""The segmenter: clause and sentence boundaries in a streamed answer."""

from __future__ import annotations

import re

from hypothesis import given, settings, strategies as st

from omni_agent.middleware.segmenter import Segmenter


def segment(text: str, *, step: int | None = None, cuts: list[int] | None = None, **kw) -> list[str]:
    """Feed ``text`` in pieces (every ``step`` chars, or at ``cuts``) and flush."""
    seg = Segmenter(**kw)
    if cuts is None:
        step = step or len(text) or 1
        cuts = list(range(step, len(text), step))
    out: list[str] = []
    prev = 0
    for c in sorted(set(cuts)) + [len(text)]:
        out += seg.feed(text[prev:c])
        prev = c
    return out + seg.flush()


def test_splits_at_sentence_ends():
    assert segment("Hello there. How are you? Fine!", first_clause=False) == [
        "Hello there.", "How are you?", "Fine!"]


def test_nothing_is_returned_before_a_boundary_is_complete():
    seg = Segmenter()
    assert seg.feed("The answer is 3") == []
    assert seg.feed(".") == []  # could still be 3.5
    assert seg.feed("5 exactly") == []
    assert seg.flush() == ["The answer is 3.5 exactly"]


def test_decimal_split_across_deltas_stays_whole():
    assert segment("It costs 3.5 dollars. Then more.", step=1, first_clause=False) == [
        "It costs 3.5 dollars.", "Then more."]


def test_titles_and_latin_abbreviations_do_not_end_a_sentence():
    text = "Dr. Smith met Mr. Jones, e.g. at noon, i.e. lunch. They talked."
    assert segment(text, step=2, first_clause=False) == [
        "Dr. Smith met Mr. Jones, e.g. at noon, i.e. lunch.", "They talked."]


def test_dotted_acronyms_stay_whole():
    assert segment("The U.S. Army left. Next.", step=1, first_clause=False) == [
        "The U.S. Army left.", "Next."]


def test_times_stay_whole_and_am_pm_ends_a_sentence_only_before_a_capital():
    text = "We open at 10:30 a.m. every day. We close at 5 p.m. Then we rest."
    assert segment(text, step=1, first_clause=False) == [
        "We open at 10:30 a.m. every day.", "We close at 5 p.m.", "Then we rest."]


def test_urls_are_never_split():
    text = "See https://example.com/a.html?x=1&y=2.5 for more. Or mail a.b@c.org. Bye."
    assert segment(text, step=1, first_clause=False) == [
        "See https://example.com/a.html?x=1&y=2.5 for more.", "Or mail a.b@c.org.", "Bye."]


def test_list_markers_stay_with_their_item():
    text = "Steps:\n1. Open the box.\n2. Take the item.\n10. Close it."
    assert segment(text, step=1) == ["Steps:", "1. Open the box.", "2. Take the item.", "10. Close it."]


def test_inline_list_markers_after_a_colon_stay_with_their_item():
    assert segment("Do this: 1. open it. 2. close it.", step=3, first_clause=False) == [
        "Do this: 1. open it.", "2. close it."]


def test_a_number_ending_a_sentence_still_ends_it():
    assert segment("I counted to 3. Then I stopped.", step=1, first_clause=False) == [
        "I counted to 3.", "Then I stopped."]


def test_initials_do_not_end_a_sentence():
    assert segment("J. K. Rowling wrote it. Yes.", step=1, first_clause=False) == [
        "J. K. Rowling wrote it.", "Yes."]


def test_etc_ends_a_sentence_before_a_capital_only():
    assert segment("Apples, pears, etc. are fruit. Cats, dogs, etc. Those are pets.", step=1,
                   first_clause=False) == [
        "Apples, pears, etc. are fruit.", "Cats, dogs, etc.", "Those are pets."]


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    assert segment('He said "stop." Then (quietly.) she left.', step=1, first_clause=False) == [
        'He said "stop."', "Then (quietly.)", "she left."]


def test_ellipsis_and_combined_marks_end_a_sentence():
    assert segment("Wait... what?! Okay.", step=1, first_clause=False) == ["Wait...", "what?!", "Okay."]


def test_cjk_sentence_punctuation_needs_no_space():
    assert segment("巴黎是法国的首都。它很美！你去过吗？", step=1, first_clause=False) == [
        "巴黎是法国的首都。", "它很美！", "你去过吗？"]


def test_cjk_first_clause_at_a_full_width_comma():
    assert segment("巴黎是法国的首都，也是最大的城市。它很美。", step=1) == [
        "巴黎是法国的首都，", "也是最大的城市。", "它很美。"]


def test_japanese_sentences_split():
    assert segment("こんにちは。元気ですか？", step=2, first_clause=False) == ["こんにちは。", "元気ですか？"]


def test_first_utterance_may_be_a_short_clause():
    text = "Paris is the capital of France, and it is lovely, old and big. It has museums, parks."
    assert segment(text, step=1, first_words=0) == [
        "Paris is the capital of France,", "and it is lovely, old and big.", "It has museums, parks."]


def test_first_clause_is_cut_as_soon_as_its_comma_arrives():
    seg = Segmenter(first_words=0)
    assert seg.feed("Paris is the capital of France") == []
    assert seg.feed(",") == ["Paris is the capital of France,"]


def test_a_long_first_phrase_is_cut_before_a_joining_word():
    text = "Le Grand Paris is the capital of France. It is old."
    for step in (1, 3, None):
        assert segment(text, step=step) == ["Le Grand Paris is", "the capital of France.", "It is old."]


def test_a_first_phrase_is_cut_only_after_whole_words():
    seg = Segmenter()
    assert seg.feed("Le Grand Paris is the") == []  # "the" may become "theory"
    assert seg.feed("ory") == []  # "theory" is no joining word
    assert seg.feed(" o") == []  # "o" may become "of", or "oranges"
    assert seg.feed("f France") == ["Le Grand Paris is theory"]
    assert seg.flush() == ["of France"]


def test_a_first_phrase_with_no_joining_word_is_cut_after_first_words():
    assert segment("I think you should probably go home now because it is late.", step=2,
                   first_words=6) == ["I think you should probably go", "home now because it is late."]
    # Only the first utterance: a later long sentence is whole.
    assert segment("Yes. I think you should probably go home now because it is late.", step=2) == [
        "Yes.", "I think you should probably go home now because it is late."]


def test_a_first_phrase_is_never_cut_inside_a_number():
    for text, number in (("Call me on plus 44 20 7946 0958 3333 anytime you like.", "plus 44 20 7946 0958 3333"),
                         ("Please call me back at 555 123 4567 tomorrow morning.", "555 123 4567"),
                         ("My card 4111 1111 1111 1111 is the one I use.", "4111 1111 1111 1111")):
        for step in (1, 2, 5, None):
            out = segment(text, step=step)
            assert " ".join(out) == text
            assert any(number in piece for piece in out), (step, out)


def test_a_first_phrase_never_ends_on_a_joining_word():
    out = segment("You asked about I'd like to book a table for two people tonight.", step=1)
    assert out == ["You asked about I'd like", "to book a table for two people tonight."]


def test_a_too_short_first_clause_waits_for_more():
    assert segment("Sure, Paris is lovely. Yes.", step=1) == ["Sure, Paris is lovely.", "Yes."]


def test_first_clause_can_be_turned_off():
    assert segment("Paris is the capital of France, and lovely. Yes.", step=1, first_clause=False) == [
        "Paris is the capital of France, and lovely.", "Yes."]


def test_numbers_with_commas_are_not_clauses():
    assert segment("There are 1,000,000 people here, roughly. Yes.", step=1) == [
        "There are 1,000,000 people here,", "roughly.", "Yes."]


def test_a_long_sentence_is_cut_at_a_clause_mark():
    text = ("word " * 30).strip() + ", " + ("more " * 30).strip() + "."
    out = segment(text, step=4, first_clause=False, max_chars=200)
    assert out == [("word " * 30).strip() + ",", ("more " * 30).strip() + "."]


def test_a_long_sentence_without_clause_marks_is_cut_at_a_space():
    text = ("word " * 100).strip() + "."
    out = segment(text, step=7, first_clause=False, max_chars=100)
    assert all(len(o) <= 100 for o in out)
    assert " ".join(out) == text
    assert all(not o.startswith(" ") and "wor d" not in o for o in out)


def test_newlines_end_paragraph_lines():
    assert segment("First line\nSecond line\n\nThird", step=1) == ["First line", "Second line", "Third"]


def test_reset_forgets_buffer_and_first_clause_state():
    seg = Segmenter()
    seg.feed("Paris is the capital of France, and")
    seg.reset()
    # The first utterance's rules apply again: the long first phrase is cut.
    assert seg.feed("London is the capital of England,") == ["London is the capital"]


def test_flush_on_empty_buffer_returns_nothing():
    seg = Segmenter()
    assert seg.flush() == []
    assert seg.feed("") == []


_WORDS = st.sampled_from([
    "Hello", "world", "Dr.", "Smith", "3.5", "e.g.", "U.S.", "10:30", "a.m.", "https://x.io/a.b?c=1",
    "1.", "etc.", "end.", "Really?", "Yes!", "wait...", "one,", "two;", "巴黎。", "好，", "\n", "p.m.",
    "It", "The", "(see", "this.)", '"quoted."', "1,000", "—", "fine",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, min_size=1, max_size=40), st.lists(st.integers(0, 400), max_size=30),
       st.booleans())
def test_any_chunking_gives_the_same_utterances(words, cuts, first_clause):
    text = " ".join(words)
    cuts = [c for c in cuts if c < len(text)]
    assert segment(text, cuts=cuts, first_clause=first_clause) == segment(text, first_clause=first_clause)


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, min_size=1, max_size=40), st.lists(st.integers(0, 400), max_size=30))
def test_no_text_is_lost_or_added(words, cuts):
    text = " ".join(words)
    out = segment(text, cuts=[c for c in cuts if c < len(text)])
    assert all(o == o.strip() and o for o in out)
    assert re.sub(r"\s+", "", "".join(out)) == re.sub(r"\s+", "", text)


def test_a_cut_guard_keeps_a_first_phrase_whole_where_it_says_no():
    asked: list[tuple[str, int]] = []

    def guard(text: str, at: int) -> bool:
        asked.append((text, at))
        return "jane" not in text[:at].split()[-1:]  # never right after "jane"

    out = segment("Please write to jane at example dot com today.", step=1, cut_guard=guard)
    assert " ".join(out) == "Please write to jane at example dot com today."
    assert not any(piece.endswith("jane") for piece in out)
    assert asked  # it was asked before each cut it considered


def test_the_pii_middleware_guards_the_first_phrase():
    from omni_agent.agent import Agent
    from omni_agent.middleware.pii import PIIRedactor
    from omni_agent.testing import RecordingTalker, ScriptedThinker

    talker = RecordingTalker()
    reply = [w + " " for w in "Please write to jane at example dot com and I will answer.".split()]
    agent = Agent(thinker=ScriptedThinker([reply]), talker=talker, middleware=[PIIRedactor()])
    agent.ask("How do I reach you?")
    assert not any("jane" in s for s in talker.spoken), talker.spoken
    plain = Agent(thinker=ScriptedThinker([reply]), talker=RecordingTalker())
    seg = plain.make_segmenter()
    assert isinstance(seg, Segmenter) and seg.cut_guard is None  # no guard, no cost
