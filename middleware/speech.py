"""SpeechShaper: turns display text into text a Talker can say.

The display text keeps everything (``Utterance.display``); the spoken text
(``Utterance.text``) loses what should not be read aloud and spells out what a
synthesizer would read badly:

* markdown — emphasis, headings, list bullets, quotes, tables, inline code marks,
  ``[links](url)`` (the link text stays), images, HTML tags;
* code blocks — never read; ``code_text`` ("" by default) is said instead;
* URLs — replaced by ``url_text`` ("the link");
* emoji — removed;
* numbers, currency, percentages, dates, times, ordinals and units — spoken as words in
  the utterance's language (``Utterance.lang``, the turn's language, ``lang=``, or the
  Talker's ``lang``), via the ``num2words`` package (50+ languages). Languages it does
  not know keep their digits (the Talker reads them).

::

    SpeechShaper(lang="en")   # "Costs $12.50 at 10:30 — see https://x.io 🎉"
                              # -> "Costs twelve dollars, fifty cents at ten thirty — see the link"
"""

from __future__ import annotations

import datetime as _dt
import functools
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

import regex

from omni_agent.bus import Middleware, TurnContext
from omni_agent.errors import ConfigError
from omni_agent.events import Utterance

__all__ = ["SpeechShaper", "speakable"]

try:  # optional: without it numbers keep their digits (the Talker reads them)
    from num2words import CONVERTER_CLASSES as _N2W
except ImportError:  # pragma: no cover - depends on the install
    _N2W = None

_F = regex.VERSION0

# ---------------------------------------------------------------------------- markup
_FENCE = regex.compile(r"```|~~~", _F)
_IMAGE = regex.compile(r"!\[([^\]\n]*)\]\([^)\s]*(?:\s+\"[^\"]*\")?\)", _F)
_LINK = regex.compile(r"\[([^\]\n]+)\]\([^)\s]*(?:\s+\"[^\"]*\")?\)", _F)
_AUTOLINK = regex.compile(r"<((?:https?|ftp)://[^>\s]+)>", _F)
_URL = regex.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"'\]\)]+?(?=[.,;:!?)\]]*(?:\s|$))", _F)
_INLINE_CODE = regex.compile(r"`+([^`\n]*)`+", _F)
_BOLD = regex.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", _F)
_ITALIC = regex.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])|(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])", _F)
_STRIKE = regex.compile(r"~~(?=\S)(.+?)(?<=\S)~~", _F)
_HEADING = regex.compile(r"(?m)^[ \t]{0,3}#{1,6}[ \t]+", _F)
_BULLET = regex.compile(r"(?m)^[ \t]*(?:[-*+•]|\d{1,3}[.)])[ \t]+", _F)
_QUOTE = regex.compile(r"(?m)^[ \t]{0,3}>[ \t]?", _F)
_RULE = regex.compile(r"(?m)^[ \t]*(?:[-*_][ \t]*){3,}$", _F)
_TABLE_SEP = regex.compile(r"(?m)^[ \t]*\|?[ \t]*:?-{2,}:?[ \t]*(?:\|[ \t]*:?-{2,}:?[ \t]*)*\|?[ \t]*$", _F)
_PIPES = regex.compile(r"[ \t]*\|[ \t]*", _F)
_HTML = regex.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>", _F)
_EMOJI = regex.compile(r"[\p{Extended_Pictographic}\p{Regional_Indicator}\p{Emoji_Modifier}\u200d\ufe0f\u20e3•▪►◆★☆]", _F)
_SPACES = regex.compile(r"[ \t\u00a0]+", _F)
_SPACE_PUNCT = regex.compile(r"\s+([,.;:!?])", _F)
_HAS_MARKUP = regex.compile(r"[*_`#>\[|<~]|://|www\.|^\s*[-+•\d]", _F)

# ---------------------------------------------------------------------------- numbers
_CURRENCY_SYMBOLS = {"$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "₹": "INR", "₩": "KRW",
                     "₽": "RUB", "CHF": "CHF", "USD": "USD", "EUR": "EUR", "GBP": "GBP",
                     "JPY": "JPY", "INR": "INR", "CNY": "CNY", "RMB": "CNY", "CAD": "CAD", "AUD": "AUD"}
_NUM = r"\d{1,3}(?:[,.\u00a0\u202f' ]\d{3})+(?:[.,]\d+)?|\d+(?:[.,]\d+)?"
_CUR_CODES = "CHF|USD|EUR|GBP|JPY|INR|CNY|RMB|CAD|AUD"
_MONEY_BEFORE = regex.compile(rf"(?<![\w])(-)?([$€£¥₹₩₽]|(?:{_CUR_CODES})\s?)\s?({_NUM})(?:\s?(k|K|m|M|bn|million|billion))?(?!\d)", _F)
_MONEY_AFTER = regex.compile(rf"(?<![\w.,])(-)?({_NUM})\s?([€$£¥₹₩₽]|(?:{_CUR_CODES})\b)", _F)
_PERCENT = regex.compile(rf"(?<![\w.,])(-)?({_NUM})\s?%", _F)
_ISO_DATE = regex.compile(r"(?<![\d\-])(\d{4})-(\d{2})-(\d{2})(?![\d\-])", _F)
_DMY_DATE = regex.compile(r"(?<![\d./])(\d{1,2})([./])(\d{1,2})\2(\d{4})(?![\d/]|\.\d)", _F)
_TIME = regex.compile(r"(?<![\d:.])(\d{1,2})[:h](\d{2})(?::(\d{2}))?(?![\d:])()", _F)
_TIME_EN = regex.compile(r"(?<![\d:.])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])(?:\s?([AaPp])\.?\s?[Mm]\.?(?![A-Za-z]))?", _F)
_TIME_AMPM = regex.compile(r"(?<![\d:.])(\d{1,2})\s?([AaPp])\.?[Mm]\.?(?![A-Za-z])", _F)
_ORDINAL_EN = regex.compile(r"(?<![\w.,])(\d+)(?:st|nd|rd|th)\b", _F)
_ORDINAL_FR = regex.compile(r"(?<![\w.,])(\d+)(?:er|re|e|ème|eme)\b", _F)
_UNITS_RX = None  # built lazily from _UNITS
_YEAR = regex.compile(r"(?<![\w.,:/\-$€£])(1[1-9]\d\d|20\d\d)(?![\w:/%]|[.,]\d)", _F)
_NUMBER = regex.compile(r"(?<![\w])(-)?(\d+(?:[.,\u00a0\u202f' ]\d+)*)(?![\w])", _F)
_DIGIT = regex.compile(r"\d", _F)

# Words the number rules need, per language (others: English words with num2words digits).
_WORDS: dict[str, dict[str, str]] = {
    "en": {"percent": "percent", "and": "and", "point": "point", "oclock": "o'clock", "oh": "oh",
           "am": "a.m.", "pm": "p.m.", "url": "the link"},
    "de": {"percent": "Prozent", "and": "und", "point": "Punkt", "oclock": "Uhr", "am": "", "pm": "",
           "url": "der Link"},
    "fr": {"percent": "pour cent", "and": "et", "point": "point", "oclock": "heures", "am": "", "pm": "",
           "url": "le lien"},
    "es": {"percent": "por ciento", "and": "y", "point": "punto", "oclock": "en punto", "am": "", "pm": "",
           "url": "el enlace"},
    "it": {"percent": "per cento", "and": "e", "point": "punto", "oclock": "", "am": "", "pm": "",
           "url": "il link"},
    "pt": {"percent": "por cento", "and": "e", "point": "ponto", "oclock": "horas", "am": "", "pm": "",
           "url": "o link"},
    "nl": {"percent": "procent", "and": "en", "point": "punt", "oclock": "uur", "am": "", "pm": "",
           "url": "de link"},
}
# Languages writing 1.234,5 (others: 1,234.5).
_DECIMAL_COMMA = {"de", "fr", "es", "it", "pt", "nl", "ru", "pl", "cs", "da", "sv", "no", "fi",
                  "tr", "id", "ro", "hu", "uk", "sk", "sl", "lt", "lv", "hr", "sr", "ca"}
_MONTHS: dict[str, list[str]] = {
    "en": "January February March April May June July August September October November December".split(),
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember".split(),
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre".split(),
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre".split(),
    "it": "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre".split(),
    "pt": "janeiro fevereiro março abril maio junho julho agosto setembro outubro novembro dezembro".split(),
    "nl": "januari februari maart april mei juni juli augustus september oktober november december".split(),
}
_MONTH_DAY_EN = regex.compile(r"\b(" + "|".join(_MONTHS["en"]) + r"|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.?"
                              r" (\d{1,2})(?:st|nd|rd|th)?\b(?!:)", _F)
# Units after a number: symbol -> (singular, plural) per language.
_UNITS: dict[str, dict[str, tuple[str, str]]] = {
    "en": {"km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
           "mm": ("millimeter", "millimeters"), "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"),
           "mg": ("milligram", "milligrams"), "l": ("liter", "liters"), "L": ("liter", "liters"),
           "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"),
           "°C": ("degree Celsius", "degrees Celsius"), "°F": ("degree Fahrenheit", "degrees Fahrenheit"),
           "°": ("degree", "degrees"), "km/h": ("kilometer per hour", "kilometers per hour"),
           "mph": ("mile per hour", "miles per hour"), "mi": ("mile", "miles"), "ft": ("foot", "feet"),
           "in": ("inch", "inches"), "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"),
           "oz": ("ounce", "ounces"), "h": ("hour", "hours"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
           "min": ("minute", "minutes"), "s": ("second", "seconds"), "sec": ("second", "seconds"),
           "ms": ("millisecond", "milliseconds"), "KB": ("kilobyte", "kilobytes"), "MB": ("megabyte", "megabytes"),
           "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"), "kW": ("kilowatt", "kilowatts"),
           "W": ("watt", "watts"), "kWh": ("kilowatt hour", "kilowatt hours"), "V": ("volt", "volts"),
           "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"), "GHz": ("gigahertz", "gigahertz")},
    "de": {"km": ("Kilometer", "Kilometer"), "m": ("Meter", "Meter"), "cm": ("Zentimeter", "Zentimeter"),
           "mm": ("Millimeter", "Millimeter"), "kg": ("Kilogramm", "Kilogramm"), "g": ("Gramm", "Gramm"),
           "l": ("Liter", "Liter"), "ml": ("Milliliter", "Milliliter"), "°C": ("Grad Celsius", "Grad Celsius"),
           "°": ("Grad", "Grad"), "km/h": ("Kilometer pro Stunde", "Kilometer pro Stunde"),
           "h": ("Stunde", "Stunden"), "min": ("Minute", "Minuten"), "s": ("Sekunde", "Sekunden"),
           "GB": ("Gigabyte", "Gigabyte"), "MB": ("Megabyte", "Megabyte")},
    "fr": {"km": ("kilomètre", "kilomètres"), "m": ("mètre", "mètres"), "cm": ("centimètre", "centimètres"),
           "kg": ("kilogramme", "kilogrammes"), "g": ("gramme", "grammes"), "l": ("litre", "litres"),
           "°C": ("degré Celsius", "degrés Celsius"), "°": ("degré", "degrés"),
           "km/h": ("kilomètre par heure", "kilomètres par heure"), "h": ("heure", "heures"),
           "min": ("minute", "minutes"), "s": ("seconde", "secondes"), "Go": ("gigaoctet", "gigaoctets")},
    "es": {"km": ("kilómetro", "kilómetros"), "m": ("metro", "metros"), "cm": ("centímetro", "centímetros"),
           "kg": ("kilogramo", "kilogramos"), "g": ("gramo", "gramos"), "l": ("litro", "litros"),
           "°C": ("grado Celsius", "grados Celsius"), "°": ("grado", "grados"),
           "km/h": ("kilómetro por hora", "kilómetros por hora"), "h": ("hora", "horas"),
           "min": ("minuto", "minutos"), "s": ("segundo", "segundos"), "GB": ("gigabyte", "gigabytes")},
}
_UNIT_RXS: dict[str, Any] = {}


def _unit_rx(lang: str) -> Any:
    rx = _UNIT_RXS.get(lang)
    if rx is None:
        units = sorted(_UNITS[lang], key=len, reverse=True)
        alt = "|".join(regex.escape(u) for u in units)
        rx = _UNIT_RXS[lang] = regex.compile(
            rf"(?<![\w.,])(-)?({_NUM})\s?({alt})(?![\w/°])", _F)
    return rx


def _base_lang(lang: str | None) -> str:
    return (lang or "en").replace("-", "_").split("_")[0].lower()


class _Numbers:
    """Number rules for one language (num2words does the words)."""

    def __init__(self, lang: str):
        full = lang.replace("-", "_")
        base = _base_lang(lang)
        self.lang = full if _N2W and full in _N2W else base
        self.base = base
        self.ok = bool(_N2W) and self.lang in _N2W
        self.conv = _N2W[self.lang] if self.ok else None
        self.words = _WORDS.get(base, _WORDS["en"])
        self.decimal_comma = base in _DECIMAL_COMMA

    # ---------------------------------------------------------------- parsing

    def parse(self, s: str) -> Decimal | None:
        """'1,234.5' (or '1.234,5' in decimal-comma languages) -> Decimal."""
        s = s.replace("\u00a0", "").replace("\u202f", "").replace("'", "").replace(" ", "")
        dec, thou = (",", ".") if self.decimal_comma else (".", ",")
        parts = s.split(dec)
        if len(parts) > 2:
            return None
        whole = parts[0]
        if thou in whole:
            groups = whole.split(thou)
            if not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])):
                return None
            whole = "".join(groups)
        try:
            return Decimal(whole + ("." + parts[1] if len(parts) == 2 else ""))
        except InvalidOperation:
            return None

    # ---------------------------------------------------------------- words

    def cardinal(self, n: Decimal | int) -> str:
        assert self.conv is not None
        if isinstance(n, Decimal) and n == n.to_integral_value() and "." not in str(n):
            n = int(n)
        if isinstance(n, Decimal):
            # Read decimals digit by digit after the point, as people say them.
            sign = "-" if n < 0 else ""
            whole, _, frac = str(abs(n)).partition(".")
            head = self.conv.to_cardinal(int(whole))
            digits = " ".join(self.conv.to_cardinal(int(d)) for d in frac)
            point = {"en": "point"}.get(self.base) or self._point_word()
            out = f"{head} {point} {digits}"
            return (self.conv.negword.strip() + " " + out) if sign else out
        if n < 0:
            # Some num2words languages (Polish) fail on a negative number: say its sign.
            try:
                return self.conv.to_cardinal(n)
            except (ValueError, TypeError):
                neg = (getattr(self.conv, "negword", "") or "minus").strip()
                return f"{neg} {self.conv.to_cardinal(-n)}"
        return self.conv.to_cardinal(n)

    def _point_word(self) -> str:
        try:
            said = self.conv.to_cardinal(1.5)  # type: ignore[union-attr]
            one, five = self.conv.to_cardinal(1), self.conv.to_cardinal(5)  # type: ignore[union-attr]
            mid = said.replace(one, "", 1).rsplit(five, 1)[0].strip()
            return mid or self.words["point"]
        except Exception:  # noqa: BLE001 - a converter without decimals
            return self.words["point"]

    def ordinal(self, n: int) -> str:
        try:
            return self.conv.to_ordinal(n)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001
            return self.cardinal(n)

    def year(self, n: int) -> str:
        try:
            return self.conv.to_year(n)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001
            return self.cardinal(n)

    def money(self, amount: Decimal, code: str) -> str:
        conv = self.conv
        assert conv is not None
        try:
            cr1, _ = conv.CURRENCY_FORMS[code]
        except (KeyError, AttributeError):
            return f"{self.cardinal(amount)} {code}"
        if amount == amount.to_integral_value():
            n = int(amount)
            sign = (conv.negword.strip() + " ") if n < 0 else ""
            try:
                return f"{sign}{conv.to_cardinal(abs(n))} {conv.pluralize(abs(n), cr1)}"
            except Exception:  # noqa: BLE001
                return f"{self.cardinal(amount)} {code}"
        try:
            return conv.to_currency(float(amount), currency=code)
        except Exception:  # noqa: BLE001
            return f"{self.cardinal(amount)} {code}"


# ---------------------------------------------------------------------------- shaping


def _strip_markup(text: str, url_text: str) -> str:
    if "[" in text:
        text = _IMAGE.sub(lambda m: m.group(1), text)
        text = _LINK.sub(lambda m: m.group(1), text)
    if "<" in text:
        text = _AUTOLINK.sub(url_text, text)
        text = _HTML.sub(" ", text)
    if "://" in text or "www." in text:
        text = _URL.sub(url_text, text)
    if "`" in text:
        text = _INLINE_CODE.sub(lambda m: m.group(1), text)
    if "*" in text or "_" in text:
        text = _BOLD.sub(lambda m: m.group(2), text)
        text = _ITALIC.sub(lambda m: m.group(1) or m.group(2), text)
    if "~" in text:
        text = _STRIKE.sub(lambda m: m.group(1), text)
    if "|" in text:
        text = _TABLE_SEP.sub("", text)
        text = _PIPES.sub(", ", text).strip(", ")
    text = _RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    return text


# Each kind of number: a function from its match to the words (None: leave it as written).

_MONEY_SCALES = {"k": 1000, "K": 1000, "m": 10**6, "M": 10**6, "million": 10**6, "bn": 10**9,
                 "billion": 10**9}


def _say_money_before(m: Any, nums: _Numbers) -> str | None:
    amount = nums.parse(m.group(3))
    if amount is None:
        return None
    amount *= _MONEY_SCALES.get(m.group(4) or "", 1)
    if m.group(1):
        amount = -amount
    return nums.money(amount, _CURRENCY_SYMBOLS[m.group(2).strip()])



def _say_money_after(m: Any, nums: _Numbers) -> str | None:
    amount = nums.parse(m.group(2))
    if amount is None:
        return None
    return nums.money(-amount if m.group(1) else amount, _CURRENCY_SYMBOLS[m.group(3).strip()])


def _say_percent(m: Any, nums: _Numbers) -> str | None:
    v = nums.parse(m.group(2))
    if v is None:
        return None
    return f"{nums.cardinal(-v if m.group(1) else v)} {nums.words['percent']}"


def _date_words(nums: _Numbers, y: int, mo: int, d: int) -> str | None:
    try:
        _dt.date(y, mo, d)
    except ValueError:
        return None
    months = _MONTHS.get(nums.base)
    if months is None:
        return None
    month, base = months[mo - 1], nums.base
    if base == "en":
        return f"{month} {nums.ordinal(d)}, {nums.year(y)}"
    if base == "de":
        return f"{nums.ordinal(d)}r {month} {nums.year(y)}"  # "erster Mai"
    if base == "fr":
        day = nums.ordinal(1) if d == 1 else nums.cardinal(d)
        return f"{day} {month} {nums.year(y)}"
    if base in ("es", "pt"):
        return f"{nums.cardinal(d)} de {month} de {nums.year(y)}"
    return f"{nums.cardinal(d)} {month} {nums.year(y)}"


def _say_iso_date(m: Any, nums: _Numbers) -> str | None:
    return _date_words(nums, int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _say_dmy_date(m: Any, nums: _Numbers) -> str | None:
    a, b, y = int(m.group(1)), int(m.group(3)), int(m.group(4))
    # English (US) writes month first with a slash; everyone else day first.
    if nums.base == "en" and m.group(2) == "/":
        return _date_words(nums, y, a, b)
    return _date_words(nums, y, b, a)


def _time_words_en(nums: _Numbers, h: int, mi: int, ampm: str) -> str:
    w = nums.words
    suffix = (" " + (w.get("am" if ampm == "a" else "pm") or "")) if ampm else ""
    if mi == 0:
        words = f"{nums.cardinal(h)}" + ("" if ampm else f" {w['oclock']}")
    elif mi < 10:
        words = f"{nums.cardinal(h)} {w['oh']} {nums.cardinal(mi)}"
    else:
        words = f"{nums.cardinal(h)} {nums.cardinal(mi)}"
    return (words + suffix).strip()


def _say_time(m: Any, nums: _Numbers) -> str | None:
    h, mi = int(m.group(1)), int(m.group(2))
    if h > 24 or mi > 59:
        return None
    base, w = nums.base, nums.words
    if base == "en":
        return _time_words_en(nums, h, mi, (m.group(4) or "").lower())
    hour_word = w.get("oclock", "")
    minutes = f" {nums.cardinal(mi)}" if mi else ""
    if base == "de":
        return f"{nums.cardinal(h)} Uhr{minutes}"
    if base in ("fr", "pt", "nl"):
        return f"{nums.cardinal(h)} {hour_word}{minutes}"
    if base == "es":
        return f"{nums.cardinal(h)}" + (f" {w['and']} {nums.cardinal(mi)}" if mi else f" {hour_word}")
    return f"{nums.cardinal(h)}{minutes}" if mi else nums.cardinal(h)


def _say_time_ampm(m: Any, nums: _Numbers) -> str | None:
    h = int(m.group(1))
    if not 1 <= h <= 12:
        return None
    return f"{nums.cardinal(h)} " + (nums.words.get("am" if m.group(2).lower() == "a" else "pm") or "")


def _say_unit(m: Any, nums: _Numbers) -> str | None:
    v = nums.parse(m.group(2))
    if v is None:
        return None
    if m.group(1):
        v = -v
    one, many = _UNITS[nums.base][m.group(3)]
    return f"{nums.cardinal(v)} {one if v == 1 else many}"


def _say_ordinal(m: Any, nums: _Numbers) -> str:
    return nums.ordinal(int(m.group(1)))


def _say_month_day(m: Any, nums: _Numbers) -> str:
    return f"{m.group(1)} {nums.ordinal(int(m.group(2)))}"


def _say_year(m: Any, nums: _Numbers) -> str:
    return nums.year(int(m.group(1)))


def _digit_by_digit(s: str, nums: _Numbers) -> str:
    return " ".join(nums.cardinal(int(c)) for c in s if c.isdigit())


def _say_number(m: Any, nums: _Numbers) -> str | None:
    s = m.group(2)
    if len(s) > 1 and s[0] == "0" and s[1].isdigit():
        return _digit_by_digit(s, nums)  # 007, zip codes
    v = nums.parse(s)
    if v is None:
        if s.count(".") + s.count(",") >= 2:  # a version: 3.11.2 -> three point eleven point two
            sep = f" {nums.words['point']} "
            return sep.join(nums.cardinal(int(p)) for p in regex.split(r"[.,]", s) if p.isdigit())
        return None
    if m.group(1):
        v = -v
    if abs(v) >= 10**15:
        return _digit_by_digit(s, nums)
    return nums.cardinal(v)


# An operator spaced between numbers ("17 * 23 = 391", a calculator's answer): words.
_ARITH_EN = regex.compile(r"(?<=\d) ([*×÷/+=]) (?=[-−]?\d)", _F)
_ARITH_WORDS_EN = {"*": "times", "×": "times", "÷": "divided by", "/": "divided by", "+": "plus",
                   "=": "is"}


def _say_arith(m: Any, nums: _Numbers) -> str:
    return f" {_ARITH_WORDS_EN[m.group(1)]} "


def _only(lang: str, rx: Any) -> Callable[[str], Any]:
    return lambda base: rx if base == lang else None


# The kinds in the order they are tried (a price before a plain number, a date before a
# time): for a language, the pattern that finds the kind (None: not in that language).
_NUMBER_KINDS: list[tuple[Callable[[str], Any], Callable[[Any, _Numbers], str | None]]] = [
    (_only("en", _ARITH_EN), _say_arith),
    (lambda base: _MONEY_BEFORE, _say_money_before),
    (lambda base: _MONEY_AFTER, _say_money_after),
    (lambda base: _PERCENT, _say_percent),
    (lambda base: _ISO_DATE, _say_iso_date),
    (lambda base: _DMY_DATE, _say_dmy_date),
    (lambda base: _TIME_EN if base == "en" else _TIME, _say_time),
    (_only("en", _TIME_AMPM), _say_time_ampm),
    (_only("en", _MONTH_DAY_EN), _say_month_day),
    (_only("en", _ORDINAL_EN), _say_ordinal),
    (_only("en", _YEAR), _say_year),
    (_only("fr", _ORDINAL_FR), _say_ordinal),
    (lambda base: _unit_rx(base) if base in _UNITS else None, _say_unit),
    (lambda base: _NUMBER, _say_number),
]


def _say_numbers(text: str, nums: _Numbers) -> str:
    """Numbers, dates, times, prices, percentages and measures in ``text`` as words."""
    if _DIGIT.search(text) is None or not nums.ok:
        return text
    for pattern_for, say in _NUMBER_KINDS:
        rx = pattern_for(nums.base)
        if rx is not None:
            text = rx.sub(functools.partial(_said, say, nums), text)
    return text


def _said(say: Callable[[Any, _Numbers], str | None], nums: _Numbers, m: Any) -> str:
    words = say(m, nums)
    return m.group() if words is None else words


def speakable(text: str, lang: str | None = "en", *, url_text: str | None = None,
              numbers: bool = True, emoji: bool = True, markdown: bool = True) -> str:
    """The spoken form of one clause of display text (code fences are handled by
    :class:`SpeechShaper`, which sees the clauses of a turn in order)."""
    base = _base_lang(lang)
    if url_text is None:
        url_text = _WORDS.get(base, _WORDS["en"])["url"]
    if markdown and _HAS_MARKUP.search(text) is not None:
        text = _strip_markup(text, url_text)
    if emoji:
        text = _EMOJI.sub("", text)
    if numbers:
        text = _say_numbers(text, _numbers_for(lang or "en"))
    if "\n" in text:
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    text = _SPACES.sub(" ", text)
    text = _SPACE_PUNCT.sub(r"\1", text)
    return text.strip()


_NUMBERS_CACHE: dict[str, _Numbers] = {}


def _numbers_for(lang: str) -> _Numbers:
    n = _NUMBERS_CACHE.get(lang)
    if n is None:
        n = _NUMBERS_CACHE[lang] = _Numbers(lang)
    return n


class SpeechShaper(Middleware):
    """Makes each clause speakable; the display text keeps its markdown, URLs and emoji.

    * ``lang`` — the language when neither the utterance nor the turn says (else the
      Talker's ``lang`` attribute, else English);
    * ``numbers`` — spell out numbers, currency, dates, times, units (needs ``num2words``;
      ``"auto"``: when it is installed);
    * ``url_text`` — said instead of a URL (default per language: "the link");
    * ``code_text`` — said instead of a code block ("" : nothing);
    * ``emoji``, ``markdown`` — remove emoji / markdown from speech.

    A clause with nothing left to say keeps its display text and an empty spoken text.
    """

    name = "speech"

    def __init__(self, *, lang: str | None = None, numbers: bool | str = "auto",
                 url_text: str | None = None, code_text: str = "", emoji: bool = True,
                 markdown: bool = True, name: str | None = None, timeout: float | None = None,
                 fallback: str | None = None):
        super().__init__(name=name, timeout=timeout, fallback=fallback)
        if numbers not in (True, False, "auto"):
            raise ConfigError(f"speech: numbers must be true, false or 'auto', not {numbers!r}")
        if numbers is True and _N2W is None:
            raise ConfigError("speech: numbers=true needs the num2words package: pip install num2words")
        self.numbers = bool(numbers) and _N2W is not None
        self.lang = lang
        self.url_text = url_text
        self.code_text = code_text
        self.emoji = emoji
        self.markdown = markdown

    def _lang(self, utt: Utterance, ctx: TurnContext) -> str:
        if utt.lang or ctx.lang or self.lang:
            return utt.lang or ctx.lang or self.lang  # type: ignore[return-value]
        talker = getattr(ctx.agent, "talker", None)
        return getattr(talker, "lang", None) or "en"

    def on_utterance(self, utt: Utterance, ctx: TurnContext) -> Utterance:
        text = utt.text
        # Code blocks may span clauses: the fence state lives in the turn.
        in_code = ctx.state.get("speech_in_code", False)
        if self.markdown and (in_code or "```" in text or "~~~" in text):
            pieces = []
            pos = 0
            for m in _FENCE.finditer(text):
                if not in_code:
                    pieces.append(text[pos:m.start()])
                    if self.code_text:  # said where the block starts
                        pieces.append(f" {self.code_text} ")
                in_code = not in_code
                # The language tag after an opening fence ("```python") is code too.
                pos = m.end()
            if not in_code:
                pieces.append(text[pos:])
            ctx.state["speech_in_code"] = in_code
            text = "".join(pieces)
        if text:
            text = speakable(text, self._lang(utt, ctx), url_text=self.url_text, numbers=self.numbers,
                             emoji=self.emoji, markdown=self.markdown)
        if utt.display is None:
            utt.display = utt.text
        utt.text = text
        return utt
