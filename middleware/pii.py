"""PII redaction: phone numbers, e-mail addresses, payment cards, IBANs, US SSNs and IP
addresses never reach the Talker (and, when asked, the display text and memory).

::

    from omni_agent.middleware.pii import PIIRedactor

    agent = Agent(thinker=..., middleware=[PIIRedactor(actions={"card": "block"})])

What each kind covers:

* ``phone`` — international (``+44 20 7946 0958``, ``0049 30 1234567``) and national
  formats (``(555) 010-0199``, ``555-0199``, ``030/1234567``, ``01 23 45 67 89``,
  ``13812345678``); dates, year ranges, decimals, thousands groupings and version numbers
  are not phones. ``phone_regions=["IT", "FO"]`` adds the numbering plans of the countries
  a deployment serves (libphonenumber's, via :mod:`phonenumbers`): where the rules cannot
  tell (a grouping that also reads as thousands, "800 123 456"; a number after "call" too
  short for most countries, the Faroese "20 12 34"), a number valid in those plans is a
  phone;
* ``email`` — ``name@example.com``, also spaced (``name @ example . com``) and written out
  or defanged (``name (at) example (dot) com``, ``name at example dot com``,
  ``name[@]example[.]com``);
* ``card`` — 13–19 digit card numbers in any grouping, only when the Luhn check passes;
* ``iban`` — IBANs with or without spaces, checked by length per country and mod-97;
* ``ssn`` — US social security numbers ``123-45-6789`` / ``123 45 6789`` (a bare nine-digit
  number only after "SSN" or "social security");
* ``ip`` — IPv4 and IPv6 addresses (validated by :mod:`ipaddress`), also defanged
  (``192[.]168[.]1[.]20``).

Every kind is matched on the normalised text (:mod:`.normalize`): invisible characters
("555\u200b-0199"), NUL, fullwidth forms ("５５５－０１９９", "jo＠example．com") and
look-alike dashes and dots do not hide anything. The redaction replaces the matching span
of the original text, and what is said or shown loses its invisible characters.

Actions, per kind: ``redact`` (replace with a label: "[phone number]"), ``mask`` (keep the
last four digits: "•••-•••-0199", spoken "phone number ending in 0 1 9 9") or ``block``
(the clause is not spoken; the fallback line is).

Channels: the spoken text is always filtered (``on_utterance``). ``display=True`` also
filters what is shown: a stream-level hold keeps back only text that could still be the
start of a pattern (a word or number in progress, never more than a clause), so
"555-01" + "99" is caught whatever the chunking. ``memory=True`` filters what the
conversation memory keeps. ``input=True`` screens the user's turn before the Thinker sees
it (an input rail). With the agent's ``keep_originals=False`` the display text is filtered
too, so the original is kept nowhere.

For text outside the speech path (tool arguments and results that are shown, logged or
remembered): ``PIIRedactor.redact_text(text)`` and ``PIIRedactor.redact_json(text)``.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any, AsyncIterator, Iterable, Mapping

import phonenumbers
import regex

from omni_agent.bus import Middleware, TurnContext
from omni_agent.errors import Blocked, ConfigError
from omni_agent.events import AudioPart, Event, ReasoningDelta, TextDelta, TextPart, UserTurn, Utterance

from ._scan import Finding, NormalizedScanner, StreamHold, apply_findings, held_stream, partial_start
from .normalize import normalize, visible

__all__ = ["PIIRedactor", "PIIDetector", "KINDS", "ACTIONS"]

KINDS = ("email", "iban", "card", "ssn", "ip", "phone")
ACTIONS = ("redact", "mask", "block")

# ---------------------------------------------------------------------------- patterns

# The patterns match normalised text (NFKC, no invisible characters, look-alike dashes and
# dots folded), so they name only plain characters. Digits are \d (any script's decimal
# digits: "١٣٨…" in Arabic text is a phone too).
_SEP = r"(?:[ \u00a0]?[.\-/\u2010\u2011\u2013][ \u00a0]?|[ \u00a0]|(?<=\)))"  # "(0)30" needs none
_GROUP = r"\(?\d+\)?"
# A run of digit groups: the candidate for phone, card and SSN numbers. Not inside a word
# or a decimal number ("v1.2", "3.14159265"); a leading "+" or "00" marks an
# international number.
_RUN = (r"(?<![\dA-Za-z\u00C0-\u024F+_])(?<!\d[.,])(?:\+[ \u00a0]?)?" + _GROUP
        + r"(?:" + _SEP + _GROUP + r")*(?![\dA-Za-z_])(?![.,]\d)")
_LOCAL = r"[A-Za-z0-9\u00C0-\u024F._%+\-]"
_DOMAIN = r"[A-Za-z0-9\u00C0-\u024F\-]"
# "@" and "." may be spaced ("jo @ example . com": a dot with a space on one side only is
# a sentence end), bracketed ("jo[@]example[.]com", "(at)", "(dot)") or written as words
# ("jo at example dot com"). The word "at" needs a written-out dot as well ("look at
# example.com" is no address).
_AT_SIGN = r"(?:[ ]?@[ ]?|[ ]?[(\[{](?:@|(?i:at))[)\]}][ ]?)"
_AT_WORD = r"[ ](?i:at)[ ]"
_DOT_WORD = r"(?:[ ]?[(\[{](?:\.|(?i:dot))[)\]}][ ]?|[ ](?i:dot)[ ])"
_DOT_ANY = rf"(?:\.|[ ]\.[ ]|{_DOT_WORD})"
_EMAIL = (rf"(?<!{_LOCAL}){_LOCAL}{{1,64}}{_AT_SIGN}{_DOMAIN}{{1,63}}(?:{_DOT_ANY}{_DOMAIN}{{1,63}})*"
          rf"{_DOT_ANY}[A-Za-z]{{2,24}}(?![A-Za-z0-9\-])")
_EMAIL_WORDS = (rf"(?<!{_LOCAL}){_LOCAL}{{1,64}}{_AT_WORD}{_DOMAIN}{{1,63}}(?:{_DOT_ANY}{_DOMAIN}{{1,63}})*"
                rf"{_DOT_WORD}[A-Za-z]{{2,24}}(?![A-Za-z0-9_])")
_IBAN = r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){10,32}"
_IPDOT = r"(?:\.|[(\[{](?:\.|(?i:dot))[)\]}])"  # defanged: 192[.]168[.]1[.]20
_IPV4 = rf"(?<![\dA-Za-z\u00C0-\u024F.])(?:\d{{1,3}}{_IPDOT}){{3}}\d{{1,3}}(?!\d|\.\d)"
_HEX = r"[0-9A-Fa-f]"
_IPV6 = (rf"(?<![A-Za-z0-9\u00C0-\u024F_:.])(?:{_HEX}{{1,4}}|(?=:))(?::{_HEX}{{0,4}}){{2,7}}"
         r"(?:\.\d{1,3}){0,3}(?:%[A-Za-z0-9_.]+)?(?![A-Za-z0-9_:])")

_FLAGS = regex.VERSION0
RE_RUN = regex.compile(_RUN, _FLAGS)
RE_EMAIL = regex.compile(_EMAIL, _FLAGS)
RE_EMAIL_WORDS = regex.compile(_EMAIL_WORDS, _FLAGS)
RE_IBAN = regex.compile(_IBAN, _FLAGS)
RE_IPV4 = regex.compile(_IPV4, _FLAGS)
RE_IPV6 = regex.compile(_IPV6, _FLAGS)
_RE_DIGITS = regex.compile(r"\d+")
# Cheap test: text without any of these cannot hold PII of any kind.
_MAYBE = regex.compile(r"[\d@:]|(?i:[ (\[{]dot[ )\]}])")
# What an e-mail address cannot be written without (tested first: the spaced and
# bracketed forms cost the patterns their fast scan for a literal "@").
_EMAIL_HINT = regex.compile(r"@|(?i:[(\[{](?:at|dot|\.)[)\]}]| dot )")

# Where a piece of PII can begin: not right after a letter or digit (every pattern above
# has a look-behind that says so), so the stream hold only tries these positions.
_STARTS = regex.compile(r"(?<![A-Za-z\u00C0-\u024F\d])(?=\S)", _FLAGS)

# For holding streamed text: what could *become* PII (looser than the validated kinds).
_CANDIDATES = {
    "email": [_EMAIL, _EMAIL_WORDS],
    "iban": [_IBAN],
    "card": [_RUN],
    "ssn": [_RUN],
    "phone": [_RUN],
    "ip": [_IPV4, _IPV6, _RUN],
}

# Registered IBAN lengths per country (ISO 13616 registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}

# Words that, just before a number, say it is a phone number (lowers the bar: "call 555 0199").
_PHONE_WORDS = regex.compile(
    r"(?i:phone|call|tel\b|mobile|cell|fax|number|reach|text me|whatsapp|contact|dial|hotline|"
    r"telefon|handy|nummer|anruf|ruf|téléphone|portable|numéro|appel|teléfono|telefono|"
    r"móvil|movil|número|llam|cellulare|numero|chiam|telefone|celular|ligue|telefoon|bel |"
    r"电话|電話|手机|携帯|番号|전화|번호|телефон|номер|звон)")
# ...and words that say it is something else ("order number 1234567890", "ISBN 978…").
_NOT_PHONE_WORDS = regex.compile(
    r"(?i:order|invoice|ticket|tracking|isbn|issn|reference|\bref\b|case|model|serial|part|item|sku|"
    r"build|version|release|patent|batch|lot\b|bestell|rechnung|commande|facture|pedido|factura)"
    r"[\w .#:-]{0,12}$")
_SSN_WORDS = regex.compile(r"(?i:ssn|social security|soc\. sec|sozialversicherung)")

# Spoken labels for redacted content, per language (others fall back to English).
LABELS: dict[str, dict[str, str]] = {
    "en": {"phone": "phone number", "email": "email address", "card": "card number",
           "iban": "bank account number", "ssn": "social security number", "ip": "IP address",
           "ending": "ending in"},
    "de": {"phone": "Telefonnummer", "email": "E-Mail-Adresse", "card": "Kartennummer",
           "iban": "Kontonummer", "ssn": "Sozialversicherungsnummer", "ip": "IP-Adresse",
           "ending": "endend auf"},
    "fr": {"phone": "numéro de téléphone", "email": "adresse e-mail", "card": "numéro de carte",
           "iban": "numéro de compte", "ssn": "numéro de sécurité sociale", "ip": "adresse IP",
           "ending": "se terminant par"},
    "es": {"phone": "número de teléfono", "email": "correo electrónico", "card": "número de tarjeta",
           "iban": "número de cuenta", "ssn": "número de seguro social", "ip": "dirección IP",
           "ending": "que termina en"},
}


# ---------------------------------------------------------------------------- validators


def _digits(s: str) -> str:
    return "".join(str(int(c)) for c in s if c.isdigit())


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(compact: str) -> bool:
    """ISO 13616 check: the registered length for the country and mod 97 == 1."""
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    moved = compact[4:] + compact[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _is_date(groups: list[str], seps: list[str]) -> bool:
    kinds = {s.strip() for s in seps}
    if len(groups) != 3 or len(kinds) != 1 or kinds.pop() not in (".", "-", "/", "\u2013"):
        return False
    a, b, c = (int(_digits(g) or 0) for g in groups)
    la, lb, lc = (len(g) for g in groups)
    if la == 4 and lb <= 2 and lc <= 2:  # 2024-05-01
        return 1 <= b <= 12 and 1 <= c <= 31
    if la <= 2 and lb <= 2 and lc in (2, 4):  # 01.05.2024 / 5/1/24
        return (1 <= a <= 31 and 1 <= b <= 12) or (1 <= a <= 12 and 1 <= b <= 31)
    return False


def _split_run(s: str) -> tuple[list[str], list[str]]:
    """Digit groups of a run and the separators between them."""
    groups: list[str] = []
    seps: list[str] = []
    last = 0
    for m in _RE_DIGITS.finditer(s):
        if groups:
            seps.append(s[last:m.start()])
        groups.append(m.group())
        last = m.end()
    return groups, seps


def phone_ok(run: str, before: str) -> bool:
    """Whether a run of digit groups reads as a phone number (``before``: preceding text)."""
    return phone_verdict(run, before) is True


def phone_verdict(run: str, before: str) -> bool | None:
    """:func:`phone_ok` with doubt: True (a phone), False (something else: a date, a
    decimal, a version, an order number...) or None (the rules cannot tell: a number
    after "call" too short for most plans, a grouping that also reads as thousands or as
    two numbers). A numbering plan (``phone_regions``) settles the None cases."""
    groups, seps = _split_run(run)
    n = sum(len(g) for g in groups)
    if run.startswith("+"):
        return 7 <= n <= 15
    if run.startswith("00"):
        return 8 <= n - 2 <= 15
    if _NOT_PHONE_WORDS.search(before[-24:]) is not None:
        return False
    keyword = _PHONE_WORDS.search(before[-32:]) is not None
    short = None if keyword and n >= 3 else False  # "call 21 234": maybe, in a small country
    if len(groups) == 1:
        if keyword:
            return 7 <= n <= 15 or (short if n < 7 else False)
        return 10 <= n <= 15 or (n == 9 and run[0] == "0")
    if n > 15:
        return False
    if n < 7:
        return short
    bare = [s.strip(" \u00a0()") for s in seps]
    if _is_date(groups, seps):
        return False
    if len(groups) == 2 and all(len(g) == 4 and 1000 <= int(_digits(g)) <= 2999 for g in groups):
        # a year range: 1990-2000 (but "1700 1234", with a space, may be a number)
        return None if bare[0] == "" else False
    if len(groups) == 2 and bare[0] in ("-", "\u2013", "/") and (
            (len(groups[0]) == 4 and 1900 <= int(_digits(groups[0])) <= 2099)  # 2024-0042
            or all(g[-1] == "0" and g[0] != "0" for g in groups)):  # a range: 100-2000
        return False
    if bare.count("/") > 1:
        return False  # 2023/11/45: phone numbers use at most one slash (030/1234567)
    if keyword:
        return True
    if any(len(g) == 1 for g in groups[1:]):
        return False  # ISBNs, versions: 978-0-306-40615-7, 10.0.19041.1
    if len(groups) == 2 and bare[0] in (".", "/"):
        return False  # a decimal or a fraction
    if (len(set(bare)) == 1 and bare[0] in ("", ".") and 1 <= len(groups[0]) <= 3
            and groups[0][0] != "0" and all(len(g) == 3 for g in groups[1:])):
        return None if bare[0] == "" else False  # thousands: 1 234 567 / 1.234.567
    if all(b == "" for b in bare) and "(" not in run and run[0] != "0" and n < 8:
        return None  # "in 2023 500 people": two numbers, not "555 0199"
    return True


def _windows(groups: list[str], lo: int, hi: int) -> Iterable[tuple[int, int]]:
    """Runs of consecutive groups whose digit count is in [lo, hi], longest first."""
    spans = []
    for i in range(len(groups)):
        n = 0
        for j in range(i, len(groups)):
            n += len(groups[j])
            if n > hi:
                break
            if n >= lo:
                spans.append((j - i, i, j))
    for _, i, j in sorted(spans, key=lambda t: (-t[0], t[1])):
        yield i, j


# ---------------------------------------------------------------------------- the detector


class PIIDetector(NormalizedScanner):
    """Finds PII in text. ``kinds`` limits what it looks for (default: all of KINDS);
    ``phone_regions`` (two-letter country codes) adds those countries' numbering plans to
    the phone rules.

    ``find(text)`` returns :class:`~omni_agent.middleware._scan.Finding` spans of
    ``text``, sorted and non-overlapping; ``hold_from(text)`` says where streamed text
    could still grow into PII (used by the stream-level hold). Both match the normalised
    text (:mod:`.normalize`) and give positions in ``text``.
    """

    _PRIORITY = {"email": 0, "iban": 1, "card": 2, "ssn": 3, "ip": 4, "phone": 5}

    def __init__(self, kinds: Iterable[str] = KINDS, *, phone_regions: Iterable[str] = ()):
        self.kinds = frozenset(kinds)
        unknown = self.kinds - set(KINDS)
        if unknown:
            raise ConfigError(f"unknown PII kind(s) {sorted(unknown)}: use {', '.join(KINDS)}")
        self.phone_regions = tuple(r.upper() for r in phone_regions)
        bad = [r for r in self.phone_regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if bad:
            raise ConfigError(f"pii: phone_regions {bad} are not regions libphonenumber knows: "
                              "use two-letter country codes such as 'US', 'GB', 'DE'")
        pats: list[str] = []
        for k in KINDS:
            if k in self.kinds:
                for p in _CANDIDATES[k]:
                    if p not in pats:
                        pats.append(p)
        self._candidates = regex.compile("|".join(f"(?:{p})" for p in pats), _FLAGS)
        self._runs = bool(self.kinds & {"phone", "card", "ssn"})

    def hold_from_normalized(self, text: str, pos: int = 0) -> int:
        return partial_start(self._candidates, text, pos, starts=_STARTS)

    def find_normalized(self, text: str, pos: int = 0) -> list[Finding]:
        if _MAYBE.search(text, pos) is None:
            return []
        found: list[Finding] = []
        kinds = self.kinds
        if "email" in kinds:
            if _EMAIL_HINT.search(text, pos) is not None:
                for rx in (RE_EMAIL, RE_EMAIL_WORDS):
                    found.extend(Finding("email", m.start(), m.end()) for m in rx.finditer(text, pos))
        if "iban" in kinds:
            found.extend(self._ibans(text, pos))
        if "ip" in kinds:
            found.extend(self._ips(text, pos))
        if self._runs:
            for m in RE_RUN.finditer(text, pos):
                found.extend(self._classify_run(text, m.start(), m.group()))
        if not found:
            return []
        # Overlaps: the more specific kind wins (an e-mail's digits are not a phone).
        found.sort(key=lambda f: (self._PRIORITY[f.kind], f.start))
        taken: list[Finding] = []
        for f in found:
            if all(f.end <= t.start or f.start >= t.end for t in taken):
                taken.append(f)
        taken.sort(key=lambda f: f.start)
        return taken

    # -------------------------------------------------------------- kinds

    def _ibans(self, text: str, pos: int) -> Iterable[Finding]:
        for m in RE_IBAN.finditer(text, pos):
            s = m.group()
            want = IBAN_LENGTHS.get(s[:2].upper())
            if want is None:
                continue
            count, end = 0, 0
            for i, ch in enumerate(s):
                if ch != " ":
                    count += 1
                    if count == want:
                        end = i + 1
                        break
            if not end:
                continue
            if end < len(s) and s[end] != " ":
                continue  # the IBAN would run on into more letters/digits
            if iban_ok(s[:end].replace(" ", "")):
                yield Finding("iban", m.start(), m.start() + end)

    def _ips(self, text: str, pos: int) -> Iterable[Finding]:
        for m in RE_IPV4.finditer(text, pos):
            if all(int(o) <= 255 for o in _RE_DIGITS.findall(m.group())):
                if regex.search(r"(?i:\bv|version|build|release)\s*$", text[max(0, m.start() - 12):m.start()]):
                    continue  # "version 1.2.3.4"
                yield Finding("ip", m.start(), m.end())
        if ":" in text:
            for m in RE_IPV6.finditer(text, pos):
                s = m.group()
                if sum(c in "0123456789abcdefABCDEF" for c in s) < 2:
                    continue
                try:
                    ipaddress.IPv6Address(s.split("%", 1)[0])
                except ValueError:
                    continue
                yield Finding("ip", m.start(), m.end())

    def _classify_run(self, text: str, start: int, run: str) -> list[Finding]:
        groups, seps = _split_run(run)
        if not groups:
            return []
        if len(groups) > 3 and 4 in (len(groups[0]), len(groups[2])) and _is_date(groups[:3], seps[:2]):
            # "2024-05-01 10:30": a date, then the rest of the run on its own.
            cut = run.index(groups[3], len(groups[0]) + len(groups[1]) + len(groups[2]))
            rest = run[cut:]
            return self._classify_run(text, start + cut, rest) if rest else []
        # Offsets of each group inside the run.
        offs: list[tuple[int, int]] = []
        for m in _RE_DIGITS.finditer(run):
            offs.append((m.start(), m.end()))
        out: list[Finding] = []
        n = sum(len(g) for g in groups)
        kinds = self.kinds
        if "card" in kinds and n >= 13 and run[0] != "+":  # "+86 138…" is a phone
            for i, j in _windows(groups, 13, 19):
                if luhn_ok(_digits("".join(groups[i:j + 1]))):
                    out.append(Finding("card", start + offs[i][0], start + offs[j][1]))
                    break
        if "ssn" in kinds and not out and run[0] != "+":  # "+591 800 17 1234" is a phone
            for i in range(len(groups)):
                if (i + 2 < len(groups) and [len(g) for g in groups[i:i + 3]] == [3, 2, 4]
                        and seps[i] == seps[i + 1] and seps[i] in ("-", " ")
                        and self._ssn_valid(groups[i:i + 3])):
                    out.append(Finding("ssn", start + offs[i][0], start + offs[i + 2][1]))
                    break
                if (len(groups[i]) == 9 and self._ssn_valid([groups[i][:3], groups[i][3:5], groups[i][5:]])
                        and _SSN_WORDS.search(text[max(0, start + offs[i][0] - 40):start + offs[i][0]])):
                    out.append(Finding("ssn", start + offs[i][0], start + offs[i][1]))
                    break
        if "phone" in kinds and not out:
            before = text[max(0, start - 40):start]
            verdict = phone_verdict(run, before)
            if verdict is None and self.phone_regions:
                verdict = self._national_number(run)
            if verdict:
                out.append(Finding("phone", start, start + len(run)))
            elif n > 15 and len(groups) > 1 and any(
                    phone_ok(run[offs[i][0]:offs[j][1]], before) for i, j in _windows(groups, 7, 15)):
                # Numbers run together ("2024 0151 23456789"): which part is the phone is
                # unclear, so the whole run goes (a missed digit would be spoken).
                out.append(Finding("phone", start, start + len(run)))
        return out

    def _national_number(self, run: str) -> bool:
        """Whether ``run`` is a valid national number in one of the ``phone_regions``
        (libphonenumber's numbering plans)."""
        digits = _digits(run)
        for region in self.phone_regions:
            try:
                number = phonenumbers.parse(digits, region)
            except phonenumbers.NumberParseException:
                continue
            if phonenumbers.is_valid_number(number):
                return True
        return False

    @staticmethod
    def _ssn_valid(parts: list[str]) -> bool:
        a, g, s = parts
        return a not in ("000", "666") and g != "00" and s != "0000"


# ---------------------------------------------------------------------------- middleware


def _mask(kind: str, s: str) -> str:
    """Display form of a masked value: the last four digits (a card, a phone) or the
    first letter and the domain (an e-mail) stay."""
    if kind == "email":
        local, _, domain = s.partition("@")
        return (local[:1] + "•••@" + domain) if domain else "•••"
    keep = 4
    chars = list(s)
    for i in range(len(chars) - 1, -1, -1):
        c = chars[i]
        if c.isalnum():
            if keep > 0:
                keep -= 1
            else:
                chars[i] = "•"
    return "".join(chars)


class PIIRedactor(Middleware):
    """Keeps personal data (phones, e-mails, cards, IBANs, SSNs, IPs) off the speech channel.

    ``PIIRedactor(actions={"card": "block"}, display=True)`` — cards block the clause
    (the fallback line is spoken), everything else is replaced by a label, in speech and
    on screen.

    * ``kinds`` — what to look for (default all: email, iban, card, ssn, ip, phone);
    * ``action`` — the default action: ``redact``, ``mask`` or ``block``;
    * ``actions`` — per-kind actions overriding ``action``;
    * ``display`` — also filter the display text (a stream-level hold of at most the
      pattern in progress);
    * ``memory`` — also filter what conversation memory keeps (default: as ``display``);
    * ``input`` — also screen the user's turn before the Thinker (``block`` refuses it);
    * ``labels`` — replacement words per kind (default by language: "[phone number]");
    * ``phone_regions`` — countries (``["GB", "DE"]``) whose national numbers count as
      phones whenever libphonenumber calls them valid, beyond the built-in rules.
    """

    name = "pii"

    def __init__(self, *, kinds: Iterable[str] = KINDS, action: str = "redact",
                 actions: Mapping[str, str] | None = None, display: bool = False,
                 memory: bool | None = None, input: bool = False,
                 labels: Mapping[str, str] | None = None, lang: str | None = None,
                 phone_regions: Iterable[str] = (),
                 name: str | None = None, timeout: float | None = None, fallback: str | None = None):
        super().__init__(name=name, timeout=timeout, fallback=fallback)
        self.detector = PIIDetector(kinds, phone_regions=phone_regions)
        if action not in ACTIONS:
            raise ConfigError(f"pii: action {action!r} is not one of {', '.join(ACTIONS)}")
        self.actions = {k: action for k in KINDS}
        for k, a in (actions or {}).items():
            if k not in KINDS:
                raise ConfigError(f"pii: actions.{k}: unknown kind (use {', '.join(KINDS)})")
            if a not in ACTIONS:
                raise ConfigError(f"pii: actions.{k} = {a!r} is not one of {', '.join(ACTIONS)}")
            self.actions[k] = a
        for k in (labels or {}):
            if k not in KINDS:
                raise ConfigError(f"pii: labels.{k}: unknown kind (use {', '.join(KINDS)})")
        self.labels = dict(labels or {})
        self.display = display
        self.memory = display if memory is None else memory
        self.input = input
        self.lang = lang
        if not display:
            # Without a display filter there is nothing to do at stream level: the bus
            # then skips this stage entirely (no cost per event).
            self.stream = None  # type: ignore[assignment]
        if not input:
            self.on_input = None  # type: ignore[assignment]

    # -------------------------------------------------------------- text

    def _lang_table(self, lang: str | None) -> dict[str, str]:
        base = (lang or self.lang or "en").replace("-", "_").split("_")[0].lower()
        return LABELS.get(base, LABELS["en"])

    def _placeholder(self, kind: str, lang: str | None) -> str:
        """What replaces a finding: the configured label as given, else "[label]"."""
        if kind in self.labels:
            return self.labels[kind]
        return f"[{self._lang_table(lang)[kind]}]"

    def _replacement(self, f: Finding, s: str, spoken: bool, lang: str | None) -> str:
        if self.actions[f.kind] == "mask":
            s = normalize(s).text  # "jo＠example.com", "555\u200b-0199": mask what it says
            if not spoken:
                return _mask(f.kind, s)
            tail = _digits(s)[-4:] if f.kind not in ("ip", "email") else ""
            if tail:
                ending = self._lang_table(lang)["ending"]
                return f"{self._placeholder(f.kind, lang)} {ending} {' '.join(tail)}"
        return self._placeholder(f.kind, lang)

    def scrub(self, text: str, *, spoken: bool = True, lang: str | None = None,
              block: bool = True) -> tuple[str, list[Finding]]:
        """Filter one piece of text. Returns (new text, findings: spans of ``text``). The
        new text has no invisible characters. Raises :class:`~omni_agent.errors.Blocked`
        when a finding's action is ``block`` (and ``block`` is true; else it is redacted)."""
        findings = self.detector.find(text)
        if not findings:
            return visible(text), findings
        if block:
            blocking = sorted({f.kind for f in findings if self.actions[f.kind] == "block"})
            if blocking:
                raise Blocked(f"contains PII ({', '.join(blocking)})")
        return visible(apply_findings(text, findings,
                                      lambda f, s: self._replacement(f, s, spoken, lang))), findings

    def redact_text(self, text: str, *, lang: str | None = None) -> str:
        """``text`` with every PII kind this redactor looks for replaced as on screen
        (label or mask; a ``block`` kind is replaced by its label, never raised), and no
        invisible characters. For text outside the speech path: tool arguments and
        results that are shown, logged or remembered.

        ``PIIRedactor().redact_text("mail jo@example.com")`` -> ``"mail [email address]"``
        """
        return self.scrub(text, spoken=False, lang=lang, block=False)[0]

    def redact_json(self, text: str, *, lang: str | None = None) -> str:
        """:meth:`redact_text` for a JSON document (tool arguments, a tool's JSON result):
        every string in it, keys included, is redacted after JSON decoding, so a value
        written with escapes (``"jo\\u0040example.com"``) is caught too; the result is
        JSON again. Text that is not JSON is redacted as text."""
        try:
            value = json.loads(text)
        except ValueError:
            return self.redact_text(text, lang=lang)

        def walk(v: Any) -> Any:
            if isinstance(v, str):
                return self.redact_text(v, lang=lang)
            if isinstance(v, list):
                return [walk(x) for x in v]
            if isinstance(v, dict):
                return {walk(k): walk(x) for k, x in v.items()}
            return v

        return json.dumps(walk(value), ensure_ascii=False)

    # -------------------------------------------------------------- hooks

    def may_cut(self, text: str, at: int) -> bool:
        """Whether a reply's first phrase may end at ``text[:at]`` (:class:`CutGuard`): not
        inside something that is, or may still grow into, personal data ("write to jane |
        at example dot com"), which each half alone would not show."""
        if self.detector.hold_from(text) < at:
            return False
        return not any(f.start < at < f.end for f in self.detector.find(text))

    def on_utterance(self, utt: Utterance, ctx: TurnContext) -> Utterance:
        lang = utt.lang or ctx.lang
        if ctx.state.get("pii_stream_blocks"):
            # The display filter already replaced a "block" kind in the stream: the
            # clause that carries its label is blocked, as if the PII were still there.
            for kind in sorted(k for k, a in self.actions.items() if a == "block"):
                if self._placeholder(kind, lang) in utt.text:
                    ctx.state["pii_stream_blocks"] -= 1
                    raise Blocked(f"contains PII ({kind})")
        text, found = self.scrub(utt.text, spoken=True, lang=lang)
        # A clause boundary inside a number ("... +44 20" | "7946 0958") must not hide it:
        # look at the end of the previous clause together with this one.
        state = ctx.state
        prev = state.get("pii_tail", "")
        state["pii_tail"] = utt.original[-40:] if utt.original else utt.text[-40:]
        if prev and _MAYBE.search(normalize(utt.text[:40]).text) is not None:
            joined = prev + " " + utt.text
            cut = len(prev) + 1
            cross = [f for f in self.detector.find(joined) if f.start < cut < f.end]
            if cross:
                kinds = sorted({f.kind for f in cross})
                if any(self.actions[k] == "block" for k in kinds):
                    raise Blocked(f"contains PII split across clauses ({', '.join(kinds)})")
                head_end = max(f.end for f in cross) - cut
                text, _ = self.scrub(utt.text[head_end:], spoken=True, lang=lang)
                text = self._placeholder(cross[0].kind, lang) + text
                ctx.trace.record(self.label, "utterance", "redact", None, None,
                                 f"{', '.join(kinds)} split across clauses: the rest of it kept off speech")
        utt.text = text
        disp = utt.display
        if disp is not None and (self.display or self.memory or not ctx.trace.keep_originals):
            new, dfound = self.scrub(disp, spoken=False, lang=lang, block=False)
            utt.display = new
            if dfound:
                ctx.trace.record(self.label, "utterance", "redact",
                                 disp, new, "display: " + ", ".join(sorted({f.kind for f in dfound})))
        return utt

    async def stream(self, events: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        """Hold display text only while it could be the start of PII; redact what is found.

        Reasoning deltas (kept in ``trace.reasoning``) get the same treatment, with their
        own hold, so redacted content does not survive in the trace's reasoning either."""
        lang = ctx.lang

        def describe(found: list[Finding], kind: type) -> str:
            blocks = sum(1 for f in found if self.actions[f.kind] == "block")
            if blocks and kind is TextDelta:
                ctx.state["pii_stream_blocks"] = ctx.state.get("pii_stream_blocks", 0) + blocks
            return ", ".join(sorted({f.kind for f in found})) + (" (reasoning)" if kind is ReasoningDelta else "")

        holds = {ReasoningDelta: StreamHold(self.detector), TextDelta: StreamHold(self.detector)}
        async for ev in held_stream(events, ctx, holds, self.label,
                                    lambda f, s: self._replacement(f, s, False, lang), describe):
            yield ev

    def on_input(self, turn: UserTurn, ctx: TurnContext) -> UserTurn:
        """Input rail: redact PII in the user's text (``block`` kinds refuse the turn)."""
        for p in turn.parts:
            if isinstance(p, TextPart):
                p.text, _ = self.scrub(p.text, spoken=False, lang=ctx.lang)
            elif isinstance(p, AudioPart) and p.transcript:
                p.transcript, _ = self.scrub(p.transcript, spoken=False, lang=ctx.lang)
        return turn
