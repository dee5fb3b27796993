"""PII redaction: each kind and format, the actions, the channels, and streaming safety."""

import asyncio
import re

import pytest
from hypothesis import given, settings, strategies as st

from omni_agent.agent import Agent
from omni_agent.bus import Bus, RoundEnd, TurnContext
from omni_agent.errors import Blocked, ConfigError
from omni_agent.events import TextDelta
from omni_agent.middleware._scan import StreamHold
from omni_agent.middleware.pii import PIIDetector, PIIRedactor, iban_ok, luhn_ok
from omni_agent.testing import RecordingTalker, ScriptedThinker

DET = PIIDetector()


def found(text):
    return [(f.kind, text[f.start:f.end]) for f in DET.find(text)]


@pytest.mark.parametrize("text, kind, value", [
    ("Call me at +44 20 7946 0958 tomorrow.", "phone", "+44 20 7946 0958"),
    ("My number is (555) 010-0199.", "phone", "(555) 010-0199"),
    ("Ring 555-0199!", "phone", "555-0199"),
    ("Tel: 030/1234567", "phone", "030/1234567"),
    ("Appelez le 01 23 45 67 89.", "phone", "01 23 45 67 89"),
    ("我的电话是13812345678。", "phone", "13812345678"),
    ("Call +49 (0)30 1234567 now", "phone", "+49 (0)30 1234567"),
    ("Mail jane.doe@example.com now", "email", "jane.doe@example.com"),
    ("jane (at) example (dot) com", "email", "jane (at) example (dot) com"),
    ("Card 4111 1111 1111 1111 exp 12/27", "card", "4111 1111 1111 1111"),
    ("Amex 3782 822463 10005.", "card", "3782 822463 10005"),
    ("IBAN DE89 3704 0044 0532 0130 00 please", "iban", "DE89 3704 0044 0532 0130 00"),
    ("iban GB82WEST12345698765432.", "iban", "GB82WEST12345698765432"),
    ("SSN 123-45-6789", "ssn", "123-45-6789"),
    ("ssn is 123456789", "ssn", "123456789"),
    ("server 192.168.1.20 is up", "ip", "192.168.1.20"),
    ("use 2001:db8::ff00:42:8329 now", "ip", "2001:db8::ff00:42:8329"),
])
def test_each_kind_is_found_with_its_exact_span(text, kind, value):
    assert (kind, value) in found(text)


@pytest.mark.parametrize("text", [
    "The meeting is at 10:30 in room 512, flight UA 1234.",
    "In 2024 we sold 500 units at $1,299.99 each.",
    "Python 3.11.2 was released on 2023-05-01.",
    "It lasted from 1990-2000.",
    "The city has 1 234 567 people.",
    "ISBN 978-0-306-40615-7",
    "Your order number is 1234567890.",
    "version 1.2.3.4",
])
def test_numbers_that_are_not_pii_are_left_alone(text):
    assert found(text) == []


def test_a_card_number_must_pass_the_luhn_check():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert [k for k, _ in found("card 4111 1111 1111 1111")] == ["card"]
    assert "card" not in [k for k, _ in found("card 4111 1111 1111 1112")]


def test_an_iban_must_have_its_country_length_and_checksum():
    assert iban_ok("DE89370400440532013000")
    assert not iban_ok("DE89370400440532013001")  # checksum
    assert not iban_ok("DE8937040044053201300")  # length
    assert "iban" not in [k for k, _ in found("IBAN DE89 3704 0044 0532 0130 01")]


def test_redact_is_the_default_action_and_uses_a_label():
    r = PIIRedactor()
    text, _ = r.scrub("Call 555-0199 or jane@example.com.")
    assert text == "Call [phone number] or [email address]."


def test_mask_keeps_the_last_four_digits_on_screen_and_says_them_in_speech():
    r = PIIRedactor(action="mask")
    shown, _ = r.scrub("Card 4111 1111 1111 1111.", spoken=False)
    said, _ = r.scrub("Card 4111 1111 1111 1111.", spoken=True)
    assert shown == "Card •••• •••• •••• 1111."
    assert said == "Card [card number] ending in 1 1 1 1."


def test_block_action_raises_blocked_naming_the_kind():
    r = PIIRedactor(actions={"card": "block"})
    with pytest.raises(Blocked, match="card"):
        r.scrub("Card 4111 1111 1111 1111.")
    assert r.scrub("Call 555-0199.")[0] == "Call [phone number]."


def test_labels_follow_the_language_and_can_be_set():
    assert PIIRedactor(lang="de").scrub("Ruf 030 12345678 an")[0] == "Ruf [Telefonnummer] an"
    assert PIIRedactor(labels={"phone": "<phone>"}).scrub("Ring 555-0199")[0] == "Ring <phone>"


@pytest.mark.parametrize("kwargs, msg", [
    ({"kinds": ["phone", "passport"]}, "passport"),
    ({"action": "shred"}, "shred"),
    ({"actions": {"card": "burn"}}, "actions.card"),
    ({"actions": {"cards": "block"}}, "actions.cards"),
    ({"phone_regions": ["GB", "XX"]}, "XX"),
])
def test_bad_options_fail_with_a_config_error_naming_them(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        PIIRedactor(**kwargs)


def test_an_international_number_shaped_like_an_ssn_inside_is_one_phone():
    assert found("Call +591 800 17 1234 now.") == [("phone", "+591 800 17 1234")]


@pytest.mark.parametrize("text, regions, value", [
    ("Call 20 12 34 tomorrow.", ["FO"], "20 12 34"),             # six digits: the Faroe Islands
    ("Call me on 21 234.", ["CK"], "21 234"),                     # five: the Cook Islands
    ("The office is 800 123 456, ask for Sam.", ["IT"], "800 123 456"),  # not 800 million
    ("Our desk is 1700 1234 until six.", ["BH"], "1700 1234"),    # not a year range
])
def test_phone_regions_add_their_numbering_plans_where_the_rules_cannot_tell(text, regions, value):
    assert value in PIIRedactor().scrub(text)[0]
    assert PIIRedactor(phone_regions=regions).scrub(text)[0] == text.replace(value, "[phone number]")


@pytest.mark.parametrize("text", [
    "The meeting was on 01.05.2024 in Rome.",   # a date stays a date
    "Version 10.0.19041.1 is installed.",
    "Order number 800 123 456 has shipped.",     # said to be something else
    "It weighs 3.14159265 kg.",
])
def test_phone_regions_do_not_make_dates_versions_or_order_numbers_phones(text):
    assert PIIRedactor(phone_regions=["IT", "DE", "US"]).scrub(text)[0] == text


def test_a_number_only_a_phone_region_knows_is_caught_across_stream_chunks():
    agent = Agent(thinker=ScriptedThinker([["Call 20 1", "2 3", "4 tomorrow."]]),
                  middleware=[PIIRedactor(display=True, phone_regions=["FO"])], display="stream")
    r = agent.ask("number?")
    deltas = "".join(e.text for e in r.events if isinstance(e, TextDelta))
    assert deltas == "Call [phone number] tomorrow." and r.text == deltas


def test_only_chosen_kinds_are_redacted():
    r = PIIRedactor(kinds=["email"])
    assert r.scrub("Call 555-0199 or jane@example.com.")[0] == "Call 555-0199 or [email address]."


# ----------------------------------------------------------------------------- channels


def test_speech_is_redacted_and_the_display_keeps_the_text_by_default():
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([["Call me at 555-01", "99 please."]]), talker=talker,
                  middleware=[PIIRedactor()])
    r = agent.ask("number?")
    assert talker.spoken == ["Call me at [phone number] please."]
    assert r.utterances[0].display == "Call me at 555-0199 please."


def test_display_true_redacts_the_streamed_text_before_anyone_sees_it():
    agent = Agent(thinker=ScriptedThinker([["Call me at 555-01", "99 please."]]),
                  middleware=[PIIRedactor(display=True)], display="stream")
    r = agent.ask("number?")
    deltas = "".join(e.text for e in r.events if isinstance(e, TextDelta))
    assert "0199" not in deltas and deltas == "Call me at [phone number] please."
    assert r.text == "Call me at [phone number] please."


def test_a_blocked_kind_speaks_the_fallback_instead():
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([["Sure. ", "It is 4111 1111 1111 1111. ", "Bye."]]), talker=talker,
                  middleware=[PIIRedactor(actions={"card": "block"}, fallback="I can't read card numbers.")])
    r = agent.ask("card?")
    assert talker.spoken == ["Sure.", "I can't read card numbers.", "Bye."]
    block = [i for i in r.trace.interventions if i.action == "block"]
    assert block and "card" in block[0].reason


def test_input_rail_redacts_the_users_turn_before_the_thinker_sees_it():
    thinker = ScriptedThinker(["Noted."])
    agent = Agent(thinker=thinker, middleware=[PIIRedactor(input=True)])
    agent.ask("my card is 4111 1111 1111 1111, remember it")
    assert thinker.requests[0].messages[-1].text == "my card is [card number], remember it"


def test_input_rail_refuses_a_turn_with_a_blocked_kind_without_calling_the_thinker():
    thinker = ScriptedThinker(["Noted."])
    agent = Agent(thinker=thinker, middleware=[PIIRedactor(input=True, actions={"ssn": "block"})],
                  fallback="Please don't share that.")
    r = agent.ask("my SSN is 123-45-6789")
    assert thinker.requests == [] and r.reason == "blocked" and r.text == "Please don't share that."


def test_a_number_cut_between_two_clauses_is_still_kept_off_speech():
    # A segmenter that cuts in the middle of the number (a long-sentence cut, say).
    class CutAfter:
        def __init__(self):
            self.buf = ""

        def feed(self, text):
            self.buf += text
            if "+44 20" in self.buf and len(self.buf) > 20:
                i = self.buf.index("+44 20") + len("+44 20")
                out, self.buf = [self.buf[:i].strip()], self.buf[i:]
                return out
            return []

        def flush(self):
            out, self.buf = [self.buf.strip()] if self.buf.strip() else [], ""
            return out

    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([["The office line is +44 20", " 7946 0958 today."]]),
                  talker=talker, middleware=[PIIRedactor()], segmenter=CutAfter)
    r = agent.ask("?")
    assert "7946" not in " ".join(talker.spoken) and "0958" not in " ".join(talker.spoken)
    assert any("split across clauses" in i.reason for i in r.trace.interventions)


# ----------------------------------------------------------------------------- streaming


async def _stream(bus, chunks, ctx=None):
    ctx = ctx or TurnContext("s", 1)

    async def src():
        for c in chunks:
            yield TextDelta(c)
        yield RoundEnd()

    out = [e async for e in bus.process_stream(src(), ctx)]
    return "".join(e.text for e in out if isinstance(e, TextDelta)), ctx


SAMPLES = [
    "Call me at +44 20 7946 0958 or at 555-0199, or mail jane.doe@example.com.",
    "My card is 4111 1111 1111 1111 and IBAN DE89 3704 0044 0532 0130 00. Thanks!",
    "The server 192.168.1.20 (and 2001:db8::ff00:42:8329) had SSN 123-45-6789 in logs.",
    "At 10:30 in room 512 we paid $1,299.99 in 2024; version 3.11.2 is out.",
    "我的电话是13812345678，邮箱是 wang@example.cn。",
]


def _cuts(text, points):
    points = sorted(set(p for p in points if 0 < p < len(text)))
    out, last = [], 0
    for p in points:
        out.append(text[last:p])
        last = p
    out.append(text[last:])
    return out


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SAMPLES), st.lists(st.integers(min_value=1, max_value=90), max_size=25))
def test_streamed_display_equals_whole_text_redaction_for_any_chunking(text, points):
    r = PIIRedactor(display=True)
    expected, _ = r.scrub(text, spoken=False, block=False)
    got, _ = asyncio.run(_stream(Bus([r]), _cuts(text, points)))
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SAMPLES), st.lists(st.integers(min_value=1, max_value=90), max_size=25))
def test_the_hold_never_holds_more_than_one_clause(text, points):
    hold = StreamHold(PIIDetector())
    for piece in _cuts(text, points):
        hold.feed(piece)
        held = hold.held
        # A finished clause (sentence end, a space, then a word) is never held back.
        assert re.search(r"[.!?;,]\s+[^\d\s+(]", held) is None, held
        assert len(held) <= 64, held


def test_text_that_cannot_start_pii_is_released_at_once():
    hold = StreamHold(PIIDetector())
    released, _ = hold.feed("Hello there, my friend")
    # Only the word in progress may be held (it could still become an e-mail address).
    assert released == "Hello there, my " and hold.held == "friend"
    released, _ = hold.feed(" is here")
    assert released == "friend is " and hold.held == "here"


def test_the_trace_records_how_long_the_display_hold_lasted():
    agent = Agent(thinker=ScriptedThinker([["Call 555-0", "199 now."]], delay=0.01),
                  middleware=[PIIRedactor(display=True)], display="stream")
    r = agent.ask("?")
    assert r.trace.holds.get("pii", 0) > 0
    assert any(i.point == "stream" and i.action == "redact" for i in r.trace.interventions)


def test_with_display_filtering_a_blocked_kind_still_blocks_its_clause():
    talker = RecordingTalker()
    agent = Agent(thinker=ScriptedThinker([["Ok. My card is 4111 1111 ", "1111 1111. Bye."]]), talker=talker,
                  middleware=[PIIRedactor(display=True, actions={"card": "block"})], fallback="No cards.")
    r = agent.ask("?")
    assert talker.spoken == ["Ok.", "No cards.", "Bye."]
    assert "4111" not in r.text
