"""Playback accounting: what a reply sent out, clause by clause, and what a listener heard.

When a user barges in, the agent's memory must hold only the part of its reply the user
actually heard. :class:`ReplyAudio` records each clause's text and seconds of audio as it
is sent; :func:`heard_text` cuts that record at the playback position the client reports.
"""

from __future__ import annotations

from .events import AudioChunk

__all__ = ["ReplyAudio", "heard_text"]


def heard_text(clauses: list[tuple[str, float]], played_seconds: float) -> str:
    """The part of a reply a listener heard, given the clauses in the order they were
    played as ``(text, audio seconds)`` and how many seconds were played.

    Whole clauses are kept while they fit; the clause playing when playback stopped is
    cut at the word reached, assuming words are spread evenly over its audio::

        heard_text([("Hello there.", 1.0), ("How are you?", 1.0)], 1.5)  # 'Hello there. How'
    """
    out: list[str] = []
    left = max(0.0, played_seconds)
    for text, seconds in clauses:
        if left <= 0:
            break
        if seconds <= left + 1e-3:
            out.append(text)
            left -= seconds
            continue
        words = text.split()
        n = int(len(words) * left / seconds) if seconds > 0 else 0
        if n:
            out.append(" ".join(words[:n]))
        break
    return " ".join(out).strip()



class ReplyAudio:
    """What one turn sent out, clause by clause: for cutting memory at playback position."""

    __slots__ = ("turn_id", "texts", "order", "seconds", "complete", "done", "remembered",
                 "barged", "pending_heard")

    def __init__(self, turn_id: int):
        self.turn_id = turn_id
        self.texts: dict[int, str] = {}
        self.order: list[int] = []
        self.seconds: dict[int, float] = {}
        self.complete: set[int] = set()
        self.done = False
        self.remembered: str | None = None  # what the agent saved for this reply
        self.barged = False
        self.pending_heard: str | None = None

    def add_audio(self, chunk: AudioChunk) -> None:
        i = chunk.utterance_index
        if i not in self.seconds:
            self.order.append(i)
            self.seconds[i] = 0.0
        self.seconds[i] += chunk.duration
        if chunk.final:
            self.complete.add(i)

    def clauses(self) -> list[tuple[str, float]]:
        """(text, seconds of audio) per clause in playing order. A clause cut off mid-way
        was never fully synthesized, so its full length is estimated from the speaking
        rate of the complete clauses (else ~14 characters a second)."""
        chars = sum(len(self.texts.get(i, "")) for i in self.complete)
        secs = sum(self.seconds[i] for i in self.complete)
        rate = chars / secs if chars and secs > 0 else 14.0
        out = []
        for i in self.order:
            text = self.texts.get(i, "")
            seconds = self.seconds[i]
            if i not in self.complete:
                seconds = max(seconds, len(text) / rate)
            out.append((text, seconds))
        return out
