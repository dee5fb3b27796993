"""SpeechShaper: markdown, code, URLs and emoji stay out of speech but in the display;
numbers, currency, dates, times and units are spoken as words per language."""

import pytest

from omni_agent.agent import Agent
from omni_agent.errors import ConfigError
from omni_agent.middleware.speech import SpeechShaper, speakable
from omni_agent.testing import RecordingTalker, ScriptedThinker


def speak(reply, lang=None, **kw):
    talker = RecordingTalker()
    r = Agent(thinker=ScriptedThinker([reply]), talker=talker, middleware=[SpeechShaper(**kw)], lang=lang).ask("?")
    return talker.spoken, r


@pytest.mark.parametrize("text, said", [
    ("**Bold** and *italic* and ~~gone~~ text.", "Bold and italic and gone text."),
    ("Use `pip install x` now.", "Use pip install x now."),
    ("Read [the guide](https://example.com/guide) first.", "Read the guide first."),
    ("![a cat](cat.png) Cute.", "a cat Cute."),
    ("## Results", "Results"),
    ("- first item", "first item"),
    ("> quoted words", "quoted words"),
    ("| a | b |", "a, b"),
    ("Line<br>break", "Line break"),
    ("See https://example.com/a?b=1.", "See the link."),
    ("Visit www.example.org today", "Visit the link today"),
    ("Great job 🎉👍🏽!", "Great job!"),
    ("snake_case_name stays", "snake_case_name stays"),
])
def test_markup_urls_and_emoji_are_not_spoken(text, said):
    assert speakable(text, "en", numbers=False) == said


def test_the_display_keeps_what_speech_leaves_out():
    spoken, r = speak(["**Done!** ", "See https://example.com 🎉"])
    assert spoken == ["Done!", "See the link"]
    assert [u.display for u in r.utterances] == ["**Done!**", "See https://example.com 🎉"]
    assert r.text == "**Done!** See https://example.com 🎉"


def test_a_code_block_across_clauses_is_never_spoken():
    spoken, r = speak(["Here it is:\n", "```python\n", "total = 1. ", "show(total)\n", "```\n", "That shows one."])
    said = " ".join(spoken)
    assert "total" not in said and "show(" not in said and "python" not in said
    assert spoken[0] == "Here it is:" and spoken[-1] == "That shows one."
    assert "show(total)" in r.text


def test_a_code_block_can_be_announced():
    spoken, _ = speak(["Try this ```\nrm -rf build\n``` then retry."], code_text="the code is on screen")
    assert " ".join(s for s in spoken if s) == "Try this the code is on screen then retry."


@pytest.mark.parametrize("text, said", [
    ("It costs $12.50.", "It costs twelve dollars, fifty cents."),
    ("Only €3 today", "Only three euro today"),
    ("Revenue hit $4.5bn.", "Revenue hit four billion, five hundred million dollars."),
    ("Meet at 10:30 am.", "Meet at ten thirty a.m."),
    ("At 9:05 sharp", "At nine oh five sharp"),
    ("Due 2024-05-01.", "Due May first, twenty twenty-four."),
    ("Born 12/25/1990 in Ohio", "Born December twenty-fifth, nineteen ninety in Ohio"),
    ("Born in 1990, moved in 2005.", "Born in nineteen ninety, moved in two thousand and five."),
    ("It is 5 km and 20°C.", "It is five kilometers and twenty degrees Celsius."),
    ("1 kg of flour", "one kilogram of flour"),
    ("Growth was 2.5%.", "Growth was two point five percent."),
    ("The 21st century", "The twenty-first century"),
    ("Python 3.11.2 is out", "Python three point eleven point two is out"),
    ("We sold 1,234 units.", "We sold one thousand, two hundred and thirty-four units."),
    ("Agent 007", "Agent zero zero seven"),
    ("It fell to -12 overnight", "It fell to minus twelve overnight"),
])
def test_english_numbers_are_spoken_as_words(text, said):
    assert speakable(text, "en") == said


@pytest.mark.parametrize("lang, text, said", [
    ("de", "Das kostet 12,50 € und dauert 2 h.", "Das kostet zwölf Euro und fünfzig Cent und dauert zwei Stunden."),
    ("de", "Um 10:30 am 01.05.2024.", "Um zehn Uhr dreißig am erster Mai zweitausendvierundzwanzig."),
    ("de", "Es sind 1.234 Leute.", "Es sind eintausendzweihundertvierunddreißig Leute."),
    ("fr", "Ça coûte 12,50 € à 10h30.", "Ça coûte douze euros et cinquante centimes à dix heures trente."),
    ("fr", "Le 1er mai.", "Le premier mai."),
    ("es", "Son 30 km y cuesta 5 €.", "Son treinta kilómetros y cuesta cinco euros."),
    ("de", "Es ist -5 Grad.", "Es ist minus fünf Grad."),
    ("pl", "Jest -5 stopni.", "Jest minus pięć stopni."),  # num2words alone raises here
])
def test_numbers_follow_the_language(lang, text, said):
    assert speakable(text, lang) == said


def test_a_language_num2words_does_not_know_keeps_its_digits():
    assert speakable("今天是2024年。", "zh") == "今天是2024年。"


def test_the_language_comes_from_the_utterance_or_turn():
    spoken, _ = speak(["Es kostet 3 €."], lang="de")
    assert spoken == ["Es kostet drei Euro."]


def test_number_shaping_can_be_switched_off():
    spoken, _ = speak(["It costs $5."], numbers=False)
    assert spoken == ["It costs $5."]


def test_bad_numbers_option_is_a_config_error():
    with pytest.raises(ConfigError):
        SpeechShaper(numbers="sometimes")


def test_the_talkers_language_is_used_when_nothing_else_says_it():
    from omni_agent.talkers.espeak import EspeakTalker

    talker = EspeakTalker(lang="de")  # the real multilingual Talker
    r = Agent(thinker=ScriptedThinker([["Es kostet 3 € um 10:30."]]), talker=talker,
              middleware=[SpeechShaper()]).ask("?")
    assert [u.text for u in r.utterances] == ["Es kostet drei Euro um zehn Uhr dreißig."]
    assert len(r.audio) > 0


@pytest.mark.parametrize(("text", "said"), [
    ("17 * 23 = 391", "seventeen times twenty-three is three hundred and ninety-one"),
    ("144 / 12 = 12", "one hundred and forty-four divided by twelve is twelve"),
    ("2 × 3 + 1 = 7", "two times three plus one is seven"),
    ("3 - 5 days", "three - five days"),  # a range, not a sum: left alone
])
def test_a_calculators_answer_is_spoken_as_a_sentence(text, said):
    assert speakable(text) == said
