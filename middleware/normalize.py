"""One text normalisation for every safety filter (DESIGN.md, "Secure by default").

The code lives in the core, :mod:`omni_agent.text` (the markup parser needs it too); this
module re-exports it, so ``from omni_agent.middleware.normalize import normalize`` keeps working.

A filter must match what a reader, a speech engine or a model takes the text to say, not
its code points: ``"555\\u200b-0199"`` is a phone number, ``"jo＠example．com"`` an e-mail
address, ``"<THI\\u200bNK>"`` a reasoning tag. :func:`normalize` gives the text that the
PII redactor, the blocklist, the markup guard and the RAG injection check match on:

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
streaming holds in :mod:`._scan` rely on that. Written-out obfuscations ("jane (at)
example (dot) com") are words, not characters: the filters that know them (PII) match
them in their patterns.

The normalised text is for matching only. :class:`Normalized` maps its positions back to
the original, so a filter replaces the *original* span and everything else that is said
or shown keeps its own characters; :func:`visible` removes the invisible characters from
text that goes out (they must never reach a Talker inside a number).

::

    n = normalize("Call 555\\u200b-0199")
    n.text                      # 'Call 555-0199'
    n.span(5, 13)               # (5, 14): the number in the original, zero-width space included
    visible("555\\u200b-0199")   # '555-0199'
"""

from __future__ import annotations

from omni_agent.text import INVISIBLE, Normalized, is_normal, normalize, visible

__all__ = ["Normalized", "normalize", "is_normal", "visible", "INVISIBLE"]
