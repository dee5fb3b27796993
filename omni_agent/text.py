"""Text helpers the core and the safety filters share: one normalisation, the partial-match hold.

Moved here from ``omni_agent.middleware.normalize`` and ``omni_agent.middleware._scan`` so the
core (:mod:`omni_agent.markup_protocol`) needs no plug-in; those modules re-export them.

**Normalisation** (DESIGN.md, "Secure by default"). A filter must match what a reader, a
speech engine or a model takes the text to say, not its code points: ``"555\\u200b-0199"`` is
a phone number, ``"jo＠example．com"`` an e-mail address, ``"<THI\\u200bNK>"`` a reasoning
tag. :func:`normalize` gives the text that the markup parser, the PII redactor, the
blocklist, the markup guard and the RAG injection check match on:

* NFKC: compatibility forms become their plain letters, digits and signs ("５" -> "5",
  "＠" -> "@", "ﬁ" -> "fi", "＜｜" -> "<|");
* invisible characters are removed: format characters (category Cf: zero-width space,
  joiners, word joiner, soft hyphen, bidi controls, tag characters), the other
  default-ignorable code points (variation selectors, Hangul fillers) and control
  characters (NUL, ...) except tab, newline and carriage return;
* look-alike punctuation is folded: dashes and minus signs -> "-", dot-like signs (one-dot
  leader, ideographic full stop, middle dots) -> ".", fraction and division slashes ->
  "/", every space -> " ", line and paragraph separators -> newline.

Each character (or a base character with its combining marks) is normalised on its own,
so normalising a text in pieces gives the same result as normalising it whole: the
streaming holds rely on that. Written-out obfuscations ("jane (at) example (dot) com")
are words, not characters: the filters that know them (PII) match them in their patterns.

The normalised text is for matching only. :class:`Normalized` maps its positions back to
the original, so a filter replaces the *original* span and everything else that is said
or shown keeps its own characters; :func:`visible` removes the invisible characters from
text that goes out (they must never reach a Talker inside a number).

::

    n = normalize("Call 555\\u200b-0199")
    n.text                      # 'Call 555-0199'
    n.span(5, 13)               # (5, 14): the number in the original, zero-width space included
    visible("555\\u200b-0199")   # '555-0199'

**Partial matching.** :func:`partial_start` says from where a streamed text could still
grow into a match of a pattern, so a streaming parser or filter holds only that tail
(``partial_start(regex.compile("<think>"), "ok <th")`` -> ``3``).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from typing import Iterable

import regex

__all__ = ["Normalized", "normalize", "is_normal", "visible", "INVISIBLE", "partial_start"]

# Invisible: format characters, default-ignorable code points, controls but \t \n \r
# (\x85, NEL, is a line break: folded below).
INVISIBLE = r"\p{Cf}\p{DI}\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f"

_DASHES = ("\u058a\u05be\u1400\u1806\u2010\u2011\u2012\u2013\u2014\u2015\u2e17\u2e1a\u2e3a\u2e3b"
           "\u2e40\u2e5d\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d\u2212\u2043\u02d7\u2796")
_DOTS = "\u2024\u3002\uff61\u00b7\u0387\u2027\u2219\u22c5\u30fb\uff65"
_SLASHES = "\u2044\u2215\u29f8"
_FOLD = {**{c: "-" for c in _DASHES}, **{c: "." for c in _DOTS}, **{c: "/" for c in _SLASHES},
         "\u1680": " ", "\u2028": "\n", "\u2029": "\n", "\x85": "\n"}
_FOLD_TABLE = str.maketrans(_FOLD)
_FOLD_CLASS = "".join(regex.escape(c) for c in _FOLD)

# Anything normalisation changes. ASCII text can only hold controls (a cheaper test).
_ANY = regex.compile(rf"[{INVISIBLE}{_FOLD_CLASS}\p{{NFKC_QC=N}}\p{{NFKC_QC=M}}]")
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The pieces normalised one at a time: a run of invisibles (removed), a character with the
# combining marks that may compose with it, or one character NFKC or the folding changes.
_PIECE = regex.compile(
    rf"(?P<gone>[{INVISIBLE}]+)|(?s:.)\p{{NFKC_QC=M}}+|[{_FOLD_CLASS}\p{{NFKC_QC=N}}\p{{NFKC_QC=M}}]")
_INVISIBLE_RUN = regex.compile(rf"[{INVISIBLE}]+")

# Joiners, direction marks and variation selectors shape the letter or emoji before them
# (Persian "می‌خواهم", "👨‍👩‍👧", "❤️"): :func:`visible` keeps them there, never after a digit.
_SHAPING = frozenset("\u200c\u200d\u200e\u200f" + "".join(chr(c) for c in range(0xFE00, 0xFE10)))

_PIECE_CACHE: dict[str, str] = {}


def _normal_piece(s: str) -> str:
    out = _PIECE_CACHE.get(s)
    if out is None:
        out = unicodedata.normalize("NFKC", _INVISIBLE_RUN.sub("", s)).translate(_FOLD_TABLE)
        if len(_PIECE_CACHE) < 4096:
            _PIECE_CACHE[s] = out
    return out


class Normalized:
    """A text as the filters match it (``text``), with the way back to the ``source``.

    ``span(start, end)`` turns a span of ``text`` into the span of ``source`` that it
    came from (widened to whole source characters, invisible characters inside it
    included); ``index(i)`` is the position in ``text`` of the source position ``i``.
    """

    __slots__ = ("text", "source", "_n", "_o", "_copy")

    def __init__(self, text: str, source: str, n: list[int] | None = None, o: list[int] | None = None,
                 copy: list[bool] | None = None):
        self.text = text
        self.source = source
        # Segments: segment k starts at text position _n[k] and source position _o[k];
        # a copied segment maps character for character, any other as a whole.
        self._n = n
        self._o = o
        self._copy = copy

    @property
    def identity(self) -> bool:
        """True when normalising changed nothing (positions are the same)."""
        return self._n is None

    def start(self, j: int) -> int:
        """Source position where the normalised character ``j`` comes from."""
        return j if self._n is None else self._start(j)

    def _start(self, j: int) -> int:
        n, o = self._n, self._o
        assert n is not None and o is not None and self._copy is not None
        if j >= len(self.text):
            return len(self.source)
        k = bisect_right(n, j) - 1
        return o[k] + (j - n[k]) if self._copy[k] else o[k]

    def end(self, j: int) -> int:
        """Source position just after the normalised character ``j - 1``."""
        if self._n is None:
            return j
        if j <= 0:
            return self._start(0)
        n, o = self._n, self._o
        assert o is not None and self._copy is not None
        k = bisect_right(n, j - 1) - 1
        if self._copy[k]:
            return o[k] + (j - n[k])
        return o[k + 1] if k + 1 < len(o) else len(self.source)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The source span of the normalised span ``[start, end)``."""
        if self._n is None:
            return start, end
        return self._start(start), max(self._start(start), self.end(end))

    def index(self, i: int) -> int:
        """Position in ``text`` of the source position ``i`` (the first normalised
        character that comes from ``i`` or later)."""
        if self._n is None:
            return i
        n, o = self._n, self._o
        assert o is not None and self._copy is not None
        if i >= len(self.source):
            return len(self.text)
        k = bisect_right(o, i) - 1
        if k < 0:
            return 0
        if self._copy[k]:
            return n[k] + (i - o[k])
        if i == o[k]:
            return n[k]
        return n[k + 1] if k + 1 < len(n) else len(self.text)


def is_normal(text: str) -> bool:
    """True when normalising leaves ``text`` as it is (the common case, tested fast)."""
    if text.isascii():
        return text.isprintable() or _ASCII_CONTROL.search(text) is None
    return _ANY.search(text) is None


def normalize(text: str) -> Normalized:
    """The text every filter matches on (see the module doc), with its position map."""
    if is_normal(text):
        return Normalized(text, text)
    parts: list[str] = []
    n: list[int] = []
    o: list[int] = []
    copy: list[bool] = []
    pos = 0  # normalised length so far
    last = 0
    for m in _PIECE.finditer(text):
        s, e = m.span()
        if s > last:
            n.append(pos)
            o.append(last)
            copy.append(True)
            parts.append(text[last:s])
            pos += s - last
        rep = "" if m.group("gone") is not None else _normal_piece(m.group())
        n.append(pos)
        o.append(s)
        copy.append(rep == m.group())
        parts.append(rep)
        pos += len(rep)
        last = e
    if last < len(text):
        n.append(pos)
        o.append(last)
        copy.append(True)
        parts.append(text[last:])
    return Normalized("".join(parts), text, n, o, copy)


def _shapes(c: str) -> bool:
    return not c.isascii() and unicodedata.category(c)[0] in "LMS"


def visible(text: str, prev: str = "") -> str:
    """``text`` without its invisible characters (NUL and other controls, zero-width and
    format characters), for what is said or shown. A joiner, direction mark or variation
    selector right after a non-ASCII letter, mark or symbol stays (it shapes that letter or
    emoji). ``prev`` is the text that came before (a stream's earlier output).

    ``visible("555\\u200b-0199")`` -> ``"555-0199"``.
    """
    if text.isascii():
        if text.isprintable() or _ASCII_CONTROL.search(text) is None:
            return text
        return _ASCII_CONTROL.sub("", text)
    if _INVISIBLE_RUN.search(text) is None:
        return text

    def keep(m: regex.Match[str]) -> str:
        i = m.start()
        before = text[i - 1] if i else prev[-1:]
        if before and _shapes(before):
            return "".join(c for c in m.group() if c in _SHAPING)
        return ""

    return _INVISIBLE_RUN.sub(keep, text)


def partial_start(candidates: regex.Pattern[str], text: str, pos: int = 0, *,
                  starts: regex.Pattern[str] | None = None, window: int = 256) -> int:
    """Earliest index >= ``pos`` from which ``text`` could still grow into a match of
    ``candidates``: ``text[i:]`` is a partial match, or a complete one that reaches the
    end (more text could extend it). ``len(text)`` when there is none.

    Each position is tried with ``fullmatch(partial=True)``, which answers exactly that.
    (A plain ``finditer(partial=True)`` is not enough: ``regex`` prefers a complete match
    found later in the string to a partial one found earlier, so "DE89 3" — an IBAN in
    progress — hides behind the complete number "3".) Only the last ``window``
    characters are tried: no pattern in progress is longer. ``starts``, a zero-width
    pattern, limits the tries to positions where a match can begin (word starts, "<").
    """
    n = len(text)
    lo = max(pos, n - window)
    if starts is None:
        positions: Iterable[int] = range(lo, n)
    else:
        positions = (m.start() for m in starts.finditer(text, lo))
    fullmatch = candidates.fullmatch
    for i in positions:
        if fullmatch(text, i, partial=True) is not None:
            return i
    return n
