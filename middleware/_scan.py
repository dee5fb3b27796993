"""Streaming-safe pattern holding, shared by the safety middleware (PII, blocklist).

A filter that must see a whole pattern (a phone number, an e-mail address, a blocked
word) cannot judge text that arrives a few characters at a time: "555-01" may become
"555-0199". :class:`StreamHold` keeps back only the tail of the text that could still be
the *start* of a pattern and releases everything before it at once, so display text lags
by at most the pattern in progress (in practice a word or a number, never more than a
clause).

"Could still be the start of a pattern" is decided by partial regular-expression
matching from the ``regex`` package (``partial=True``): it answers exactly that question
for any pattern, so each filter only states its patterns and a validator.
(:func:`partial_start` lives in the core, :mod:`omni_agent.text`, since the markup parser
uses it too; it is re-exported here.)

Filters match the normalised text (:mod:`.normalize`: NFKC, invisible characters
removed, look-alike punctuation folded) and replace the original: a
:class:`NormalizedScanner` does the mapping, so a scanner states its patterns for plain
text only and "555" + "\u200b-0199" is still one phone number across two chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, Mapping, Protocol

from omni_agent.bus import RoundEnd
from omni_agent.events import ToolCall, ToolResult, Utterance
from omni_agent.text import Normalized, is_normal, normalize, partial_start, visible

__all__ = ["Finding", "Scanner", "NormalizedScanner", "StreamHold", "partial_start", "apply_findings",
           "held_stream"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One match a filter found: its kind (``"phone"``, ``"email"``, a rule name) and span."""

    kind: str
    start: int
    end: int


class Scanner(Protocol):
    """What :class:`StreamHold` needs from a filter."""

    def find(self, text: str, pos: int = 0) -> list[Finding]:
        """Complete, validated findings starting at or after ``pos`` (the text before
        ``pos`` is context only), sorted and not overlapping."""

    def hold_from(self, text: str, pos: int = 0) -> int:
        """The earliest index >= ``pos`` from which ``text`` could still grow into a
        finding, or ``len(text)`` when nothing there can."""


class NormalizedScanner:
    """A :class:`Scanner` that matches the normalised text and reports original spans.

    Subclasses implement ``find_normalized`` and ``hold_from_normalized`` for text that is
    already normalised; ``find`` and ``hold_from`` take any text. A finding covers the
    whole original span it came from, invisible characters inside it included.
    """

    def find_normalized(self, text: str, pos: int = 0) -> list[Finding]:
        raise NotImplementedError

    def hold_from_normalized(self, text: str, pos: int = 0) -> int:
        raise NotImplementedError

    # The last text normalised: StreamHold asks hold_from and find about the same text.
    _seen: tuple[str, Normalized | None] | None = None

    def _normal(self, text: str) -> Normalized | None:
        """``text`` normalised, or None when it is its own normal form."""
        seen = self._seen
        if seen is not None and seen[0] is text:
            return seen[1]
        n = None if is_normal(text) else normalize(text)
        self._seen = (text, n)
        return n

    def find(self, text: str, pos: int = 0) -> list[Finding]:
        n = self._normal(text)
        if n is None:
            return self.find_normalized(text, pos)
        found = self.find_normalized(n.text, n.index(pos))
        return [Finding(f.kind, *n.span(f.start, f.end)) for f in found]

    def hold_from(self, text: str, pos: int = 0) -> int:
        n = self._normal(text)
        if n is None:
            return self.hold_from_normalized(text, pos)
        return max(pos, n.start(self.hold_from_normalized(n.text, n.index(pos))))


class StreamHold:
    """Holds streamed text while it could be the start of a pattern.

    ``feed(text)`` returns ``(released, findings)``: the text that is now safe to judge
    and the findings in it (offsets relative to ``released``). ``flush()`` releases the
    rest (end of a round). A few characters of already released text are kept as
    context for look-behind rules ("SSN 123456789"), never released twice.

    ``max_hold`` bounds the held text: every pattern the built-in filters know is far
    shorter, so text held that long cannot be one and is released.
    """

    __slots__ = ("scanner", "context", "max_hold", "_ctx", "_buf")

    def __init__(self, scanner: Scanner, *, context: int = 48, max_hold: int = 512):
        self.scanner = scanner
        self.context = context
        self.max_hold = max_hold
        self._ctx = ""
        self._buf = ""

    @property
    def held(self) -> str:
        """The text held back right now."""
        return self._buf

    def feed(self, text: str) -> tuple[str, list[Finding]]:
        self._buf += text
        full = self._ctx + self._buf
        base = len(self._ctx)
        cut = self.scanner.hold_from(full, base)
        if cut <= base:
            if len(self._buf) <= self.max_hold:
                return "", []
            cut = len(full)  # held too long to be a pattern: judge it all now
        findings = self.scanner.find(full, base)
        # A complete finding that straddles the cut is released whole or not at all.
        changed = True
        while changed:
            changed = False
            for f in findings:
                if f.start < cut < f.end:
                    cut = f.start
                    changed = True
        if cut <= base:
            return "", []
        return self._release(full, base, cut, findings)

    def flush(self) -> tuple[str, list[Finding]]:
        full = self._ctx + self._buf
        base = len(self._ctx)
        if not self._buf:
            return "", []
        return self._release(full, base, len(full), self.scanner.find(full, base))

    def reset(self) -> None:
        self._ctx = ""
        self._buf = ""

    def _release(self, full: str, base: int, cut: int, findings: Iterable[Finding]
                 ) -> tuple[str, list[Finding]]:
        out = full[base:cut]
        rel = [Finding(f.kind, f.start - base, f.end - base) for f in findings if f.end <= cut]
        self._buf = full[cut:]
        self._ctx = full[max(0, cut - self.context):cut]
        return out, rel


def apply_findings(text: str, findings: Iterable[Finding], replace: Callable[[Finding, str], str]) -> str:
    """Rebuild ``text`` with each finding replaced by ``replace(finding, matched_text)``."""
    out = []
    last = 0
    for f in findings:
        out.append(text[last:f.start])
        out.append(replace(f, text[f.start:f.end]))
        last = f.end
    out.append(text[last:])
    return "".join(out)


async def held_stream(events: AsyncIterator[Any], ctx: Any, holds: Mapping[type, StreamHold], label: str,
                      replace: Callable[[Finding, str], str],
                      describe: Callable[[list[Finding], type], str]) -> AsyncIterator[Any]:
    """Run the text events of each type in ``holds`` (e.g. TextDelta, ReasoningDelta)
    through their own hold, replacing findings and recording each change in the trace
    (``describe(findings, event_type)`` is its reason). Invisible characters do not pass
    (:func:`~.normalize.visible`). Other events pass; text held before a tool call, a
    clause said by a middleware, or the round's end is released first, so the order of
    the stream is kept."""
    sid, tid = ctx.session_id, ctx.turn_id
    flush_on = (RoundEnd, ToolCall, ToolResult, Utterance)
    last: dict[type, str] = {}

    def out(released: str, found: list[Finding], kind: type) -> Any:
        if not released:
            return None
        if found:
            new = apply_findings(released, found, replace)
            ctx.trace.record(label, "stream", "redact", released, new, describe(found, kind))
            released = new
        released = visible(released, last.get(kind, ""))
        if not released:
            return None
        last[kind] = released[-1:]
        return kind(released, session_id=sid, turn_id=tid)

    async for ev in events:
        t = type(ev)
        hold = holds.get(t)
        if hold is not None:
            d = out(*hold.feed(ev.text), t)
            if d is not None:
                yield d
            continue
        if t in flush_on:
            for k, h in holds.items():
                d = out(*h.flush(), k)
                if d is not None:
                    yield d
        yield ev
    for k, h in holds.items():
        d = out(*h.flush(), k)
        if d is not None:
            yield d
