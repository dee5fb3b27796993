"""The segmenter: turns the Thinker's delta stream into utterances (clauses and sentences).

::

    seg = Segmenter()
    seg.feed("Sure, Dr. Smith arrives at 3.5")   # -> []  (nothing complete yet)
    seg.feed(" p.m. today. Then")                # -> ['Sure, Dr. Smith arrives at 3.5 p.m. today.']
    seg.flush()                                  # -> ['Then']

Rules, in the order they matter for speech:

* A sentence ends at ``. ! ? …`` (plus closing quotes/brackets) **followed by
  whitespace**, so "3.5", "example.com/a.html", "10:30" and "?x=1" never split: a
  boundary waits for the next character before it is decided. (A comma right after a
  plain word is decided at once: it cannot be part of "1,000" or a URL.)
* A period after an abbreviation or title ("Dr.", "Mr.", "e.g.", "i.e.", "vs."), an
  initial ("J. K. Rowling"), a dotted acronym ("U.S.", "Ph.D.") or a list marker at the
  start of a line ("1. ", "a. ") is not a sentence end. "etc.", "a.m.", "p.m.", "Inc."
  end a sentence only when the next word starts with a capital letter.
* A newline ends a clause (paragraphs and list items are spoken one by one).
* CJK sentence ends ``。！？`` need no space; ``，、；：`` are CJK clause marks.
* The **first** utterance of a turn may be a short first clause (cut at ``, ; : —`` once
  it has ``first_min_chars``), so the Talker starts early. A first sentence with no
  clause mark in its first ``first_words`` words is cut at a phrase boundary: before a
  joining word ("of", "the", "and", "which" ...) once it has three words, else after
  ``first_words`` words, never between the groups of a number ("+1 555 | 123"). Later clauses are whole
  sentences, unless a sentence grows past ``max_chars``: then it is cut at its last
  clause mark, or at the last space. No utterance is longer than ``max_chars``, however
  the text arrives (one huge delta or many small ones), and feeding is linear in it.

Lengths count CJK characters three times (one CJK character carries about a word).

The agent asks :meth:`Agent.make_segmenter <omni_agent.agent.Agent.make_segmenter>` for a
fresh one per turn; anything with ``feed`` and ``flush`` (:class:`SegmenterProtocol`) will do.
"""

from __future__ import annotations

import re
from typing import Callable, Protocol, runtime_checkable

__all__ = ["Segmenter", "SegmenterProtocol", "CutGuard"]


@runtime_checkable
class SegmenterProtocol(Protocol):
    """What the agent needs of a segmenter: text in, finished utterances out.

    ``feed(text)`` returns the utterances this text completed (often none); ``flush()``
    returns what is left, at the end of a Thinker round or of the turn. One instance
    serves one turn (:meth:`Agent.make_segmenter <omni_agent.agent.Agent.make_segmenter>`).
    """

    def feed(self, text: str) -> list[str]: ...

    def flush(self) -> list[str]: ...


@runtime_checkable
class CutGuard(Protocol):
    """A middleware that must see some stretches of text in one clause (PII: an email or
    a phone number cut in two is recognised in neither half). ``may_cut(text, at)``: may
    the first phrase of a reply end at ``text[:at]``, ``text`` being all the reply's text
    known so far? The segmenter asks before it cuts a first phrase short (clause marks and
    sentence ends are not asked: they are where the text itself breaks)."""

    def may_cut(self, text: str, at: int) -> bool: ...


# Characters at which a boundary may be (decided by _decide).
_CANDIDATE = re.compile(r"[.!?…,;:\n—–。！？，、；：]")
_SENT_PUNCT = ".!?…"
_CJK_SENT = "。！？"
_CJK_CLAUSE = "，、；："
_CLAUSE = ",;:"
# Words a phrase starts with: the first utterance may be cut just before one of them.
_JOINERS = frozenset("""
a an the of in on at for from with by about into over after before under between
and or but so because although though while when where which who whom whose than
if whether until unless
""".split())
# Never the last word of a cut phrase ("I'd like to | book" is worse than "I'd like | to").
_NO_END = _JOINERS | frozenset("to is are was were be been my your his her its our their this".split())
_WORD = re.compile(r"\S+")
# What may follow a sentence end and still belongs to it.
_CLOSERS = "\"')]}”’»」』）】〉》*_`"
_OPENERS = "\"'([{“‘«「『（【〈《*_`"
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")

# Never a sentence end after these (case-sensitive, as written before the period).
_TITLES = frozenset("""
Mr Mrs Ms Mx Dr Prof Sr Jr St Mt Ft Gen Col Capt Lt Sgt Rev Hon Pres Gov Sen Rep Fr
Messrs Mme Mlle vs Vs cf Fig Figs Eq No Nos Vol pp Ch Sec Art approx Approx Dept Est ca
Ave Blvd Rd Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec
""".split())
# A sentence end only when a capitalized word follows.
_MAYBE_END = frozenset("etc Inc Ltd Co Corp Bros al".split())
_DOTTED = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")  # U.S / e.g / a.m / Ph.D (last dot stripped)
_LOWER_DOTTED_NEVER = frozenset({"e.g", "i.e", "E.g", "I.e", "viz", "c.f"})


def _inside_number(buf: str, i: int, lo: int = 0) -> bool:
    """Whether the space at ``buf[i]`` separates two groups of one number (a phone, card
    or IBAN: "+44 20 7946", "DE89 3704", "GB29 NWBK 6016"): alphanumeric on both sides,
    and digits in the group before or after it. ``lo``: where the utterance starts."""
    if i + 1 >= len(buf):
        return False
    a, b = buf[i - 1], buf[i + 1]
    if not ((a.isalnum() or a == ")") and (b.isalnum() or b in "(+")):
        return False
    j = buf.rfind(" ", max(lo, i - 40), i)
    k = buf.find(" ", i + 1, i + 41)
    before, after = buf[max(lo, j + 1):i], buf[i + 1:k if k >= 0 else len(buf)]
    return any(c.isdigit() for c in before) or any(c.isdigit() for c in after)


_NON_SPACE = re.compile(r"\S")


def _skip_space(buf: str, i: int) -> int:
    """The first non-space index at or after ``i`` (an utterance starts there)."""
    m = _NON_SPACE.search(buf, i)
    return m.start() if m else len(buf)


def _weight(s: str) -> int:
    """Length for the min/max rules: CJK characters count three."""
    if s.isascii():  # the common case, without a regex pass
        return len(s)
    return len(s) + 2 * len(_CJK.findall(s))


class Segmenter:
    """Accumulates streamed text and returns complete utterances.

    ``feed(text)`` returns the utterances this text completed; ``flush()`` returns the
    rest (at the end of a Thinker round or turn); ``reset()`` forgets everything.

    ``first_clause``: let the first utterance end at a clause mark (faster first audio).
    ``first_min_chars``: the shortest first clause cut that way. ``first_words``: a first
    sentence with no clause mark by then is cut at a phrase boundary within this many
    words (0: only at clause marks). ``cut_guard``: asked before such a cut (see
    :class:`CutGuard`; the agent passes its middleware's). ``max_chars``: a
    sentence longer than this is cut at a clause mark or space. ``min_chars``: shorter
    pieces are joined to the next one (except at the end).
    """

    __slots__ = ("first_clause", "first_min_chars", "first_words", "cut_guard", "max_chars",
                 "min_chars", "_buf", "_scan",
                 "_count", "_last_clause", "_fit_from", "_fit_end", "_fit_weight", "_full")

    def __init__(self, first_clause: bool = True, min_chars: int = 1, *, first_min_chars: int = 10,
                 max_chars: int = 250, first_words: int = 6,
                 cut_guard: Callable[[str, int], bool] | None = None):
        self.first_clause = first_clause
        self.first_min_chars = first_min_chars
        self.first_words = max(0, int(first_words))
        self.cut_guard = cut_guard
        self.max_chars = max_chars
        self.min_chars = max(1, min_chars)
        self.reset()

    def reset(self) -> None:
        """Forget buffered text; the next utterance counts as the first again."""
        self._buf = ""  # the utterance being built: starts at a non-space (or is empty)
        self._scan = 0  # candidates before this index were already decided "no boundary"
        self._count = 0  # utterances given out so far
        self._last_clause = 0  # end of the last clause mark seen in the buffer (0: none)
        self._forget_fit(0)

    def _forget_fit(self, start: int) -> None:
        # buf[_fit_from:_fit_end] is known to weigh _fit_weight <= max_chars; _full: the
        # character at _fit_end does not fit any more.
        self._fit_from = self._fit_end = start
        self._fit_weight = 0
        self._full = False

    # ------------------------------------------------------------------ streaming

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the utterances it completed (often none).

        The work is linear in the text: the utterance's start is an index into the buffer
        (the rest is not copied per piece), its length is measured once, and every look
        back or ahead stops within ``max_chars`` of it.
        """
        if not text:
            return []
        buf = self._buf + text
        out: list[str] = []
        lo = _skip_space(buf, 0)  # only when the buffer was empty: it starts at a non-space
        i = max(self._scan, lo)
        search = _CANDIDATE.search
        limit = self._fit(buf, lo)
        while True:
            over = self._full  # the utterance already holds more than max_chars
            m = search(buf, i, limit)  # only boundaries that keep the piece within max_chars
            if m is None:
                if not over:
                    i = len(buf)
                    break
                kind, end = "max", limit
            else:
                p = m.start()
                # Deciding may look ahead, but not past what could still fit.
                kind, end = self._decide(buf, p, lo, min(len(buf), limit + 2))
                if kind == "more":
                    if not over:
                        i = p  # decide again when more text has come
                        break
                    kind = "max"
                elif kind == "sentence" and end > limit:
                    kind = "max"  # closers after the end would take it past max_chars
            if kind == "no":
                i = end
                continue
            if kind == "max":
                # A sentence that grows too long without an end is cut anyway.
                end = self._last_clause if self._last_clause > lo else self._space_cut(buf, lo, limit)
            elif kind == "clause":
                self._last_clause = end
                if not (self.first_clause and self._count == 0 and not out
                        and _weight(buf[lo:end].strip()) >= self.first_min_chars):
                    i = end
                    continue
            if self._count == 0 and not out and self.first_clause and self.first_words:
                end = self._phrase_cut(buf, lo, end) or end
            piece = buf[lo:end].strip()
            if kind in ("clause", "line") and len(piece) < self.min_chars and \
                    _weight(piece) < self.min_chars:
                i = end
                continue
            if piece:
                out.append(piece)
            lo = i = _skip_space(buf, end)
            self._last_clause = 0
            limit = self._fit(buf, lo)
        if self._count == 0 and not out and self.first_clause and self.first_words:
            # No boundary yet: a long first phrase may still be cut (text before i has no
            # boundary; what follows the cut is scanned from there next time).
            cut = self._phrase_cut(buf, lo, i)
            if cut:
                out.append(buf[lo:cut].strip())
                lo = _skip_space(buf, cut)
                i = max(i, lo)
        # Keep only the utterance being built; indexes become relative to it.
        self._buf = buf[lo:]
        self._scan = i - lo
        self._last_clause = max(0, self._last_clause - lo)
        if self._fit_from == lo:
            self._fit_from, self._fit_end = 0, self._fit_end - lo
        else:
            self._forget_fit(0)
        self._count += len(out)
        return out

    def flush(self) -> list[str]:
        """Return whatever is left as a last utterance (end of a round or turn)."""
        rest = self._buf.strip()
        self._buf = ""
        self._scan = 0
        self._last_clause = 0
        self._forget_fit(0)
        if not rest:
            return []
        self._count += 1
        return [rest]

    # ------------------------------------------------------------------ rules

    def _fit(self, buf: str, lo: int) -> int:
        """The end of the longest stretch ``buf[lo:end]`` within ``max_chars``. Measured
        once per utterance: a call weighs only text not weighed before."""
        if lo != self._fit_from:
            self._forget_fit(lo)
        if self._full:
            return self._fit_end
        end, room, n = self._fit_end, self.max_chars - self._fit_weight, len(buf)
        while end < n and room > 0:
            chunk = buf[end:end + room]  # a character weighs at least 1: all of it may fit
            w = _weight(chunk)
            if w <= room:
                end, room = end + len(chunk), room - w
                continue
            for ch in chunk:  # CJK near the limit: character by character
                w = 3 if _CJK.match(ch) else 1
                if w > room:
                    break
                end, room = end + 1, room - w
            break
        self._fit_end, self._fit_weight = end, self.max_chars - room
        self._full = end < n
        return end

    def _phrase_cut(self, buf: str, lo: int, stop: int) -> int:
        """Where to cut a long first phrase ``buf[lo:stop]`` (no boundary in it), or 0.

        Only whole words count (a word followed by a space: " the" may still become
        " theory"). The cut goes before the first joining word after at least three
        words, else after ``first_words`` words once another word has begun; never
        between the groups of one number."""
        n = self.first_words
        if stop - lo < 8 or " " not in buf[lo:stop]:
            return 0
        words = []
        for m in _WORD.finditer(buf, lo, stop):
            if m.end() >= len(buf) or not buf[m.end()].isspace():
                break  # the last word may go on
            words.append(m)
            if len(words) > n:
                break
        guard = self.cut_guard

        def ok(cut: int) -> bool:
            return guard is None or guard(buf[lo:], cut - lo)

        for k in range(3, min(len(words), n)):
            w = words[k].group().lower().strip("\"'(“‘")
            if (w in _JOINERS and not _inside_number(buf, words[k].start() - 1, lo)
                    and ok(words[k - 1].end())):
                return words[k - 1].end()
        if len(words) > n and (n > 0):
            for k in range(n, 2, -1):  # after word k: not a joining word, not inside a number
                if (words[k - 1].group().lower() not in _NO_END
                        and not _inside_number(buf, words[k - 1].end(), lo) and ok(words[k - 1].end())):
                    return words[k - 1].end()
        return 0

    def _space_cut(self, buf: str, lo: int, limit: int) -> int:
        # The longest stretch within max_chars (buf[lo:limit]), ending at a space when
        # there is one.
        space = buf.rfind(" ", lo, limit)
        # Not between the groups of one number ("+44 20 | 7946 0958", "4111 | 1111 ..."):
        # safety middleware judge clause by clause, and half a phone number in each of
        # two clauses is recognised in neither until the first half was spoken.
        s = space
        while s > lo and _inside_number(buf, s, lo):
            s = buf.rfind(" ", lo, s)
        if s > lo:
            space = s
        return space + 1 if space > lo else max(lo + 1, limit)

    def _decide(self, buf: str, p: int, lo: int, n: int) -> tuple[str, int]:
        """Is there a boundary at ``buf[p]``? -> (kind, end) where kind is "sentence",
        "clause", "line", "no" or "more" (cannot tell until more text arrives). The
        utterance starts at ``lo``; ``n`` is how far the decision may look ahead."""
        ch = buf[p]
        if ch == "\n":
            # lo is the utterance's first non-space: text before the newline iff p > lo
            return ("line", p + 1) if p > lo else ("no", p + 1)
        if ch in _CJK_CLAUSE:
            return "clause", p + 1
        if ch in _CJK_SENT:
            j = p + 1
            while j < n and (buf[j] in _CJK_SENT or buf[j] in _SENT_PUNCT or buf[j] in _CLOSERS):
                j += 1
            return "sentence", j  # decided now: CJK text rarely closes a quote after 。
        if ch in _CLAUSE or ch in "—–":
            if p + 1 >= n:
                if ch in ",;" and p > lo and buf[p - 1].isalpha() and not self._url_like(buf, p, lo):
                    # "France," can't be "1,000" or a URL: decide now, not one token later.
                    return "clause", p + 1
                return "more", p
            nxt = buf[p + 1]
            if ch == "—":
                return "clause", p + 1  # an em dash is a pause with or without spaces
            if ch == "–" and not (p > lo and buf[p - 1] == " "):
                return "no", p + 1  # an en dash in a range: 1–3
            if nxt.isspace():
                return "clause", p + 1
            return "no", p + 1  # 1,000 / 10:30 / https://
        # . ! ? …
        r = p
        while r < n and buf[r] in _SENT_PUNCT:
            r += 1
        j = r
        while j < n and buf[j] in _CLOSERS:
            j += 1
        if j == n:
            return "more", p
        if not buf[j].isspace():
            if buf[j] in _CJK_SENT or _CJK.match(buf[j]):
                return "sentence", j  # "OK.然后" — CJK needs no space
            return "no", j  # 3.5, example.com, U.S (inner dot), ?x=1
        if buf[p:r] != ".":
            return "sentence", j  # ! ? … ?! or an ellipsis "..."
        return self._after_period(buf, p, j, lo, n)

    def _after_period(self, buf: str, p: int, j: int, lo: int, n: int) -> tuple[str, int]:
        """A single period followed by whitespace: abbreviation, marker or sentence end?"""
        start = p
        while start > lo and not buf[start - 1].isspace():
            start -= 1
        token = buf[start:p].lstrip(_OPENERS)
        if not token:
            return "sentence", j
        if token in _TITLES or token in _LOWER_DOTTED_NEVER:
            return "no", j
        if len(token) == 1 and token.isalpha():
            return "no", j  # an initial (J. K. Rowling) or a lettered list marker (a. )
        if token.isdigit() and len(token) <= 3 and self._marker_position(buf, start, lo):
            return "no", j  # "1. " at the start of a line is a list marker
        dotted = _DOTTED.match(token) is not None
        if dotted and token[0].isupper() and not token.islower():
            return "no", j  # U.S. / U.K. / Ph.D.: keep with what follows
        if dotted or token in _MAYBE_END:
            # a.m. / p.m. / etc. / Inc. end a sentence only before a capitalized word.
            k = j
            while k < n and buf[k].isspace():
                k += 1
            if k == n:
                return "more", p
            return ("sentence", j) if buf[k].isupper() else ("no", j)
        return "sentence", j

    @staticmethod
    def _url_like(buf: str, p: int, lo: int) -> bool:
        """Whether the word ending at ``p`` looks like a URL, path or e-mail address."""
        start = max(lo, buf.rfind(" ", lo, p) + 1)
        word = buf[start:p]
        return "/" in word or "@" in word or "." in word or word.startswith("www")

    def _marker_position(self, buf: str, start: int, lo: int) -> bool:
        """Whether a number at ``start`` sits where list markers sit: at the start of a
        line or of an utterance ("2. close it" right after "1. open it."), or after a colon.
        A bare number ending an utterance on its own is rarer than a marker there."""
        k = start - 1
        while k >= lo and buf[k] in " \t":
            k -= 1
        return k < lo or buf[k] in "\n:"
