"""The segmenter: turns the Thinker's delta stream into utterances (clauses/sentences).

A first simple version: splits after sentence punctuation followed by whitespace.
"""

from __future__ import annotations

import re

__all__ = ["Segmenter"]

_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


class Segmenter:
    """Accumulates text and returns complete clauses.

    ``feed(text)`` returns the clauses completed by this text; ``flush()`` returns what
    is left (at the end of a round or turn).
    """

    def __init__(self, first_clause: bool = True, min_chars: int = 1):
        self.first_clause = first_clause
        self.min_chars = min_chars
        self._buf = ""

    def feed(self, text: str) -> list[str]:
        self._buf += text
        out = []
        while True:
            m = _END.search(self._buf)
            if not m:
                break
            clause, self._buf = self._buf[: m.start()].strip(), self._buf[m.end():]
            if clause:
                out.append(clause)
        return out

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []

    def reset(self) -> None:
        self._buf = ""
