"""One normalisation before every filter: invisible characters, fullwidth forms, look-alike
dashes and dots, and spaced or defanged e-mail addresses do not hide PII or a blocked word
(whole, streamed, or split across chunks at the hidden character); the redaction replaces
the original span, and no invisible character reaches the Talker."""

import asyncio
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from omni_agent.agent import Agent
from omni_agent.bus import Bus, RoundEnd, TurnContext
from omni_agent.events import TextDelta
from omni_agent.middleware.markup import MarkupGuard
from omni_agent.middleware.normalize import normalize, visible
from omni_agent.middleware.pii import PIIRedactor
from omni_agent.middleware.policy import Blocklist
from omni_agent.testing import RecordingTalker, ScriptedThinker

DATA = Path(__file__).parents[1] / "data"
REDTEAM = [json.loads(line) for line in (DATA / "pii_redteam.jsonl").read_text(encoding="utf-8").splitlines()]
CLEAN = [json.loads(line) for line in (DATA / "clean_numbers.jsonl").read_text(encoding="utf-8").splitlines()]

INVISIBLE = ["\u200b", "\u2060", "\u00ad", "\x00", "\ufeff", "\u200d", "\u200c", "\u202e", "\u180e",
             "\U000e0041", "\ufe0f", "\x07"]
FULLWIDTH = str.maketrans("0123456789@.-+()", "０１２３４５６７８９＠．－＋（）")


def _speak(chunks, guard=True, **pii):
    talker = RecordingTalker()
    chain = [MarkupGuard(), PIIRedactor(**pii)] if guard else [PIIRedactor(**pii)]
    r = Agent(thinker=ScriptedThinker([chunks]), talker=talker, middleware=chain, display="stream").ask("?")
    shown = "".join(e.text for e in r.events if isinstance(e, TextDelta))
    return " ".join(talker.spoken), shown


def _digits(s):
    return "".join(str(int(c)) for c in s if c.isdigit())


def leaks(text, pii, said):
    """Pieces of ``pii`` in ``said`` (as it reads: normalised) that are not elsewhere in
    ``text``: words of three or more letters, any four digits in a row."""
    said = re.sub(r"\[[^\]]*\]", " ", normalize(said).text).lower()
    context = text.replace(pii, " ").lower()
    out = [w for w in re.split(r"[\s\-.@()/:+\[\]{}%_]+", pii)
           if len(w) >= 3 and not w.isdigit() and w.lower() in said and w.lower() not in context
           and w.lower() not in ("at", "dot")]
    d, sd, cd = _digits(pii), _digits(said), _digits(context)
    out += [d[i:i + 4] for i in range(len(d) - 3) if d[i:i + 4] in sd and d[i:i + 4] not in cd][:1]
    return out


def _has_invisible(s):
    return visible(s) != s


# ----------------------------------------------------------------------------- the normaliser


@pytest.mark.parametrize("text, normal", [
    ("555\u200b-0199", "555-0199"),
    ("555\u2060-\u00ad0199\x00", "555-0199"),
    ("５５５－０１９９", "555-0199"),
    ("jo＠example．com", "jo@example.com"),
    ("555\u2212 0199 \u2013 555\u2014 0199 555\ufe630199", "555- 0199 - 555- 0199 555-0199"),
    ("example\u3002com \u00b7 x\u2024y", "example.com . x.y"),
    ("1\u20442 \u2215", "1/2 /"),
    ("a\u00a0b\u2003c\u3000d\u2028e", "a b c d\ne"),
    ("<ＴＨＩ\u200bＮＫ>", "<THINK>"),
    ("<\uff5ctool\u2581calls\u2581begin\uff5c>", "<|tool\u2581calls\u2581begin|>"),
    ("cafe\u0301 ﬁne", "café fine"),
    ("tab\tnew\nline\r", "tab\tnew\nline\r"),
])
def test_normalize_gives_the_text_as_it_reads(text, normal):
    assert normalize(text).text == normal


def test_plain_text_is_its_own_normal_form():
    for s in ("Call me at 555-0199.", "Der Zug fährt um 14:05 Uhr ab.", "我的电话是"):
        n = normalize(s)
        assert n.identity and n.text == s


def test_a_normalised_span_maps_back_to_the_whole_original_span():
    text = "Call ５５５\u200b－\u2060０１９９ now"
    n = normalize(text)
    start = n.text.index("555")
    s, e = n.span(start, start + len("555-0199"))
    assert text[s:e] == "５５５\u200b－\u2060０１９９"
    assert n.index(s) == start and n.index(e) == start + 8


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab5 -@.<") + INVISIBLE + ["５", "＠", "\u2212", "\u3002", "ﬁ"]),
               max_size=30), st.integers(min_value=0, max_value=30))
def test_normalising_in_pieces_is_normalising_the_whole(text, cut):
    # What the streaming holds rely on: a chunk boundary changes nothing.
    a, b = text[:cut], text[cut:]
    assert normalize(a).text + normalize(b).text == normalize(text).text


def test_visible_removes_invisible_characters_but_keeps_the_joiners_that_shape_letters():
    assert visible("555\u200b-\u20600199\x00") == "555-0199"
    assert visible("5\u200d5 a\u200db") == "55 ab"
    assert visible("می\u200cخواهم") == "می\u200cخواهم"  # Persian: the ZWNJ is spelling
    assert visible("\U0001f468\u200d\U0001f469") == "\U0001f468\u200d\U0001f469"  # one emoji
    assert visible("\u202eevil\u202c") == "evil"


# ----------------------------------------------------------------------------- PII, whole text


@pytest.mark.parametrize("text, said", [
    ("Call 555\u200b-0199 now.", "Call [phone number] now."),
    ("Call 555-\u20600199 now.", "Call [phone number] now."),
    ("Call 555\u00ad-0199 now.", "Call [phone number] now."),
    ("Call 555\x00-0199 now.", "Call [phone number] now."),
    ("Call 5\u200b5\u200b5\u200b-\u200b0\u200b1\u200b9\u200b9 now.", "Call [phone number] now."),
    ("Call ５５５－０１９９ now.", "Call [phone number] now."),
    ("Call 555\u22120199 now.", "Call [phone number] now."),
    ("Call 555\u20140199 now.", "Call [phone number] now."),
    ("Call +44\ufeff 20 7946 0958 now.", "Call [phone number] now."),
    ("Mail jo＠example.com now.", "Mail [email address] now."),
    ("Mail jo@exa\u200bmple.com now.", "Mail [email address] now."),
    ("Mail j\u200bo@example.com now.", "Mail [email address] now."),
    ("Mail jo@example\u3002com now.", "Mail [email address] now."),
    ("Mail jo@example[.]com now.", "Mail [email address] now."),
    ("Mail jo[@]example[.]com now.", "Mail [email address] now."),
    ("Mail jo(at)example(dot)com now.", "Mail [email address] now."),
    ("Mail jo @ example . com now.", "Mail [email address] now."),
    ("Mail jo@example dot com now.", "Mail [email address] now."),
    ("Mail jo at example dot com now.", "Mail [email address] now."),
    ("Card 4111\u200b1111\u200b1111\u200b1111 ok.", "Card [card number] ok."),
    ("SSN 123\u200b-45-6789 ok.", "SSN [social security number] ok."),
    ("IBAN DE89\u200b 3704 0044 0532 0130 00 ok.", "IBAN [bank account number] ok."),
    ("Host 192\u200b.168.1.20 ok.", "Host [IP address] ok."),
    ("Host 192[.]168[.]1[.]20 ok.", "Host [IP address] ok."),
])
def test_hidden_or_disguised_pii_is_redacted(text, said):
    assert PIIRedactor().scrub(text)[0] == said


@pytest.mark.parametrize("text", [
    "Look at example.com for the rules.",
    "Meet me @ home. Then we eat.",
    "Apples are 5 @ 3.50 each.",
    "We sold 500 units in 2023\u2014a record.",
])
def test_spaced_at_signs_and_dashes_in_ordinary_text_are_not_pii(text):
    assert PIIRedactor().scrub(text)[0] == text


def test_the_redaction_replaces_the_original_span_and_the_rest_keeps_its_characters():
    text = "Ｈｉ! Call ５５５\u200b－０１９９, room ①, x²."
    assert PIIRedactor().scrub(text)[0] == "Ｈｉ! Call [phone number], room ①, x²."


def test_mask_shows_and_says_the_value_as_it_reads():
    r = PIIRedactor(action="mask")
    assert r.scrub("Call 555\u200b-0199.", spoken=False)[0] == "Call •••-0199."
    assert r.scrub("Call ５５５-０１９９.")[0] == "Call [phone number] ending in 0 1 9 9."
    assert r.scrub("Mail jo＠example.com.", spoken=False)[0] == "Mail j•••@example.com."


def test_a_blocked_kind_still_blocks_when_hidden():
    talker = RecordingTalker()
    Agent(thinker=ScriptedThinker([["Ok. It is 4111\u200b 1111 1111 1111. ", "Bye."]]), talker=talker,
          middleware=[PIIRedactor(actions={"card": "block"}, fallback="No cards.")]).ask("?")
    assert talker.spoken == ["Ok.", "No cards.", "Bye."]


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("chunks", [
    ["Call me at 555\u200b", "-0199 please."],
    ["Call me at 555", "\u200b-0199 please."],
    ["Call me at 55", "5\u2060-01", "\u00ad99 please."],
    ["Mail jo\u200b@exa", "\u200bmple.com now."],
    ["Mail jane (at) example (d", "ot) com now."],
    ["Host 192[", ".]168[.]1[.]20 ok."],
    ["Card 4111 1111\u200b", " 1111 1111 ok."],
])
def test_a_pattern_split_at_a_hidden_character_is_still_caught(chunks):
    text = "".join(chunks)
    expected = PIIRedactor().scrub(text, spoken=False)[0]
    said, shown = _speak(chunks, display=True)
    assert re.search(r"\[[a-zA-Z ]+\]", expected) and said == expected and shown == expected


def _obfuscate(case, i):
    """The case's text with its PII disguised one way (chosen by ``i``), and the chunks it
    is streamed in: cut right after the hidden character."""
    pii = case["pii"] if isinstance(case["pii"], str) else case["pii"][0]
    text = case["text"]
    at = text.index(pii)
    mid = max(1, len(pii) // 2)
    how = i % (len(INVISIBLE) + 2)
    if how == len(INVISIBLE):
        new = pii.translate(FULLWIDTH)
        return text[:at] + new + text[at + len(pii):], pii, at + mid
    if how == len(INVISIBLE) + 1:
        new = "\u200b".join(pii)
        return text[:at] + new + text[at + len(pii):], pii, at + 2 * mid
    new = pii[:mid] + INVISIBLE[how] + pii[mid:]
    return text[:at] + new + text[at + len(pii):], pii, at + mid + 1


def test_the_leak_check_itself_catches_a_disguised_leak():
    case = next(c for c in REDTEAM if c["kind"] == "phone")
    text, pii, cut = _obfuscate(case, 0)
    said, _ = _speak([text[:cut], text[cut:]], kinds=["email"])  # phones not filtered: must leak
    assert leaks(case["text"], pii, said)


@pytest.mark.parametrize("guard", [True, False], ids=["with markup guard", "pii alone"])
def test_no_disguised_red_team_pii_reaches_the_talker_or_the_screen(guard):
    failures = []
    for i, case in enumerate(REDTEAM):
        text, pii, cut = _obfuscate(case, i)
        said, shown = _speak([text[:cut], text[cut:]], guard, display=True)
        bad = leaks(case["text"], pii, said) + leaks(case["text"], pii, shown)
        if bad or _has_invisible(said) or _has_invisible(shown):
            failures.append((case["id"], repr(text), said, bad))
    assert failures == [], f"{len(failures)} of {len(REDTEAM)} leak, first: {failures[:3]}"


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(REDTEAM), st.integers(min_value=0, max_value=13),
       st.lists(st.integers(min_value=1, max_value=120), max_size=20))
def test_disguised_pii_is_redacted_the_same_for_any_chunking(case, how, points):
    text, pii, _ = _obfuscate(case, how)
    r = PIIRedactor(display=True)
    expected, _ = r.scrub(text, spoken=False, block=False)
    cuts = sorted({p for p in points if p < len(text)})
    chunks = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]

    async def run():
        async def src():
            for c in chunks:
                yield TextDelta(c)
            yield RoundEnd()
        return [e async for e in Bus([r]).process_stream(src(), TurnContext("s", 1))]

    shown = "".join(e.text for e in asyncio.run(run()) if isinstance(e, TextDelta))
    assert shown == expected and not leaks(case["text"], pii, shown)


def test_clean_sentences_with_hidden_characters_reach_the_talker_as_the_plain_sentence():
    changed = []
    for i, c in enumerate(CLEAN):
        text = c["text"]
        k = len(text) // 2
        hidden = text[:k] + INVISIBLE[i % 6] + text[k:]
        said, _ = _speak([hidden[:k + 1], hidden[k + 1:]])
        if said != text:
            changed.append((text, said))
    assert len(changed) / len(CLEAN) <= 0.02, changed


def test_a_number_that_is_not_pii_reaches_the_talker_without_the_hidden_character():
    said, shown = _speak(["Go to room 5\u200b", "12 at 10:\u206030."], display=True)
    assert said == "Go to room 512 at 10:30." and shown == said


# ----------------------------------------------------------------------------- text outside speech


def test_redact_text_redacts_any_string_and_never_blocks():
    r = PIIRedactor(actions={"card": "block"})
    out = r.redact_text("Mail jo\u200b@example.com, card 4111 1111 1111 1111.")
    assert out == "Mail [email address], card [card number]."


def test_redact_json_redacts_the_decoded_strings_of_a_json_document():
    r = PIIRedactor()
    args = '{"to": "jo\\u0040example.com", "notes": ["call 555-0199", 3], "jo@example.com": true}'
    assert json.loads(r.redact_json(args)) == {"to": "[email address]", "notes": ["call [phone number]", 3],
                                                "[email address]": True}
    assert r.redact_json("not json: 555-0199") == "not json: [phone number]"


# ----------------------------------------------------------------------------- blocklist


@pytest.mark.parametrize("text", ["the sword\u200bfish code", "ｓｗｏｒｄｆｉｓｈ!", "SWORD\u00adFISH",
                                  "Project\u00a0Zeus", "project\u2003zeus", "pro\u2060ject zeus"])
def test_blocklist_words_are_found_through_hidden_and_fullwidth_characters(text):
    b = Blocklist(["swordfish", "project zeus"], action="redact")
    assert "[removed]" in b.check(text)


def test_blocklist_words_are_normalised_like_the_text():
    assert Blocklist(["ｓｗｏｒｄｆｉｓｈ"], action="redact").check("a swordfish") == "a [removed]"


def test_blocklist_display_filter_catches_a_word_split_at_a_hidden_character():
    async def run():
        async def src():
            for c in ["The sword\u200b", "fish is here."]:
                yield TextDelta(c)
            yield RoundEnd()
        bus = Bus([Blocklist(["swordfish"], action="redact", display=True)])
        return [e async for e in bus.process_stream(src(), TurnContext("s", 1))]

    assert "".join(e.text for e in asyncio.run(run()) if isinstance(e, TextDelta)) == "The [removed] is here."
