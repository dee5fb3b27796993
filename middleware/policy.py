"""Content policy: a blocklist of words and regular expressions, and a moderation hook
for any classifier or LLM judge.

::

    from omni_agent.middleware.policy import Blocklist, Moderation, allow, block, rewrite

    strict = Blocklist(words=["darn", "heck"], action="redact")

    def judge(text):                      # sync or async; a classifier, a rule, an LLM
        if "refund" in text.lower():
            return rewrite("Let me connect you with a colleague about that.")
        return allow()

    agent = Agent(thinker=..., middleware=[strict, Moderation(judge, timeout=0.2)])

Both check each clause before it is spoken (and shown), and can screen the user's turn
before the Thinker sees it (``input=True``, an input rail). The blocklist matches the
normalised text (:mod:`.normalize`: NFKC, invisible characters removed, look-alike dashes
and dots folded), so "sword\u200bfish" and "ｓｗｏｒｄｆｉｓｈ" are "swordfish"; the
moderation check is given the clause as it is.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, Literal, cast

import regex

from omni_agent.bus import Middleware, TurnContext
from omni_agent.errors import Blocked, ConfigError
from omni_agent.events import AudioPart, Event, TextDelta, TextPart, UserTurn, Utterance
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest

from ._scan import Finding, NormalizedScanner, StreamHold, apply_findings, held_stream, partial_start
from .normalize import normalize, visible

__all__ = ["Blocklist", "Moderation", "Verdict", "allow", "rewrite", "block", "ThinkerJudge"]


# ---------------------------------------------------------------------------- blocklist


class _RuleScanner(NormalizedScanner):
    """Finds blocklist matches; knows when streamed text could still become one."""

    def __init__(self, rx: regex.Pattern[str], names: list[str], starts: regex.Pattern[str] | None,
                 window: int):
        self.rx = rx
        self.names = names
        self.starts = starts
        self.window = window

    def find_normalized(self, text: str, pos: int = 0) -> list[Finding]:
        out = []
        for m in self.rx.finditer(text, pos):
            if m.end() == m.start():
                continue
            gd = m.groupdict()
            name = next((n for i, n in enumerate(self.names) if gd.get(f"_r{i}") is not None), "rule")
            out.append(Finding(name, m.start(), m.end()))
        return out

    def hold_from_normalized(self, text: str, pos: int = 0) -> int:
        return partial_start(self.rx, text, pos, starts=self.starts, window=self.window)


class Blocklist(Middleware):
    """Blocks (or redacts) clauses that contain listed words, phrases or patterns.

    * ``words`` — words or phrases, matched literally (both they and the text are
      normalised: invisible characters and fullwidth forms do not hide a word);
    * ``patterns`` — regular expressions (Python syntax), matched against the normalised
      text: write plain characters (ASCII "-" also matches a dash or a minus sign);
    * ``whole_word`` — words match only as whole words ("ass" not in "class"); patterns
      are taken as written. Use False for languages written without spaces (Chinese,
      Japanese);
    * ``case_insensitive`` — "Darn" matches "darn" (Unicode case folding);
    * ``action`` — ``block``: the clause is not spoken, the fallback line is;
      ``redact``: the match is replaced by ``replacement``;
    * ``display`` — also filter the streamed display text (holds a word in progress);
    * ``input`` — also screen the user's turn (``block`` refuses it before the Thinker).

    The trace names the rule that matched, not the matched text, when the agent keeps
    no originals.
    """

    name = "blocklist"

    def __init__(self, words: Iterable[str] = (), patterns: Iterable[str] = (), *,
                 whole_word: bool = True, case_insensitive: bool = True,
                 action: Literal["block", "redact"] = "block", replacement: str = "[removed]",
                 display: bool = False, input: bool = False, reason: str = "blocklisted content",
                 name: str | None = None, timeout: float | None = None, fallback: str | None = None):
        super().__init__(name=name, timeout=timeout, fallback=fallback)
        if action not in ("block", "redact"):
            raise ConfigError(f"blocklist: action must be 'block' or 'redact', not {action!r}")
        words = [n for n in (normalize(w).text for w in words if w) if n.strip()]
        patterns = list(patterns)
        if not words and not patterns:
            raise ConfigError("blocklist: give at least one entry in words=[...] or patterns=[...]")
        alts: list[str] = []
        names: list[str] = []
        # Longest words first so "bad word" wins over "bad".
        for w in sorted(set(words), key=len, reverse=True):
            body = regex.escape(w.strip())
            body = body.replace(r"\ ", r"\s+")  # "bad  word" and "bad\nword" too
            if whole_word:
                body = rf"(?<!\w){body}(?!\w)"
            alts.append(f"(?P<_r{len(alts)}>{body})")
            names.append(w.strip())
        for i, p in enumerate(patterns):
            try:
                re.compile(p)
            except re.error as e:
                raise ConfigError(f"blocklist: patterns[{i}] {p!r} is not a valid regular expression: {e}") from e
            alts.append(f"(?P<_r{len(alts)}>{p})")
            names.append(f"pattern {i}")
        flags = regex.VERSION0 | (regex.IGNORECASE | regex.FULLCASE if case_insensitive else 0)
        try:
            rx = regex.compile("|".join(alts), flags)
        except regex.error as e:
            raise ConfigError(f"blocklist: cannot compile the rules: {e}") from e
        # Whole words can only begin at a word start; free patterns anywhere.
        starts = None
        if whole_word and not patterns and all(w.strip()[:1].isalnum() for w in words):
            starts = regex.compile(r"(?<!\w)(?=\w)")
        window = 256 if patterns else max(64, 4 * max(len(w) for w in words))
        self.scanner = _RuleScanner(rx, names, starts, window)
        self.action = action
        self.replacement = replacement
        self.reason = reason
        self.input = input
        self.display = display
        if not display:
            self.stream = None  # type: ignore[assignment]  # the bus then skips the stage
        if not input:
            self.on_input = None  # type: ignore[assignment]

    def check(self, text: str, ctx: TurnContext | None = None, *, block: bool = True) -> str:
        """Return ``text`` filtered (without invisible characters), or raise Blocked
        (action ``block``)."""
        found = self.scanner.find(text)
        if not found:
            return visible(text)
        if self.action == "block" and block:
            keep = ctx is None or ctx.trace.keep_originals
            which = ", ".join(sorted({repr(f.kind) if keep else "a listed term" for f in found}))
            raise Blocked(f"{self.reason}: {which}")
        return visible(apply_findings(text, found, lambda f, s: self.replacement))

    def on_utterance(self, utt: Utterance, ctx: TurnContext) -> Utterance:
        utt.text = self.check(utt.text, ctx)
        if utt.display is not None:
            utt.display = self.check(utt.display, ctx, block=False)
        return utt

    def on_input(self, turn: UserTurn, ctx: TurnContext) -> UserTurn:
        """Input rail: refuse (``block``) or clean (``redact``) the user's turn."""
        for p in turn.parts:
            if isinstance(p, TextPart):
                p.text = self.check(p.text, ctx)
            elif isinstance(p, AudioPart) and p.transcript:
                p.transcript = self.check(p.transcript, ctx)
        return turn

    async def stream(self, events: AsyncIterator[Event], ctx: TurnContext) -> AsyncIterator[Event]:
        """Display filter: hold a word only while it could become a listed one."""
        def describe(found: list[Finding], kind: type) -> str:
            if ctx.trace.keep_originals:
                return ", ".join(sorted({f.kind for f in found}))
            return f"{len(found)} match(es)"

        async for ev in held_stream(events, ctx, {TextDelta: StreamHold(self.scanner)}, self.label,
                                    lambda f, s: self.replacement, describe):
            yield ev


# ---------------------------------------------------------------------------- moderation


VerdictAction = Literal["allow", "rewrite", "block"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A moderation answer for one clause: ``allow``, ``rewrite`` (to ``text``) or ``block``."""

    action: VerdictAction
    text: str | None = None
    reason: str = ""


def allow() -> Verdict:
    """The clause may be spoken as it is."""
    return Verdict("allow")


def rewrite(text: str, reason: str = "") -> Verdict:
    """Speak (and show) ``text`` instead of the clause."""
    return Verdict("rewrite", text, reason)


def block(reason: str = "blocked by moderation") -> Verdict:
    """Do not speak the clause; the fallback line is spoken instead."""
    return Verdict("block", None, reason)


def _as_verdict(answer: Any, text: str) -> Verdict:
    """Accept the shapes a user's function naturally returns."""
    if isinstance(answer, Verdict):
        if answer.action not in ("allow", "rewrite", "block"):
            raise ValueError(f"unknown verdict action {answer.action!r}")
        if answer.action == "rewrite" and not isinstance(answer.text, str):
            raise ValueError("a rewrite verdict needs the new text")
        return answer
    if answer is None or answer is True:
        return Verdict("allow")
    if answer is False:
        return Verdict("block", None, "blocked by moderation")
    if isinstance(answer, str):
        return Verdict("allow") if answer == text else Verdict("rewrite", answer)
    if isinstance(answer, dict):
        action = str(answer.get("action", "")).lower()
        if action in ("allow", "rewrite", "block"):
            return _as_verdict(Verdict(cast(VerdictAction, action), answer.get("text"), str(answer.get("reason", ""))), text)
    # Fail-closed: an answer we cannot read is not an approval.
    raise TypeError(f"moderation returned {answer!r}: return allow(), rewrite(text), block(reason), "
                    "a bool, a string or None")


class Moderation(Middleware):
    """Asks ``check`` about every clause before it is spoken: allow, rewrite or block.

    ``check`` is any sync or async callable taking the clause text (or ``(text, ctx)``)
    and returning :func:`allow`, :func:`rewrite`, :func:`block` — or simply ``True`` /
    ``None`` (allow), ``False`` (block), a string (rewrite) or a dict with ``action``.
    A check that raises, returns something else, or overruns ``timeout`` seconds blocks
    the clause (fail-closed). ``in_thread=True`` runs a sync check in a worker thread so
    a slow classifier does not stall the event loop (and its budget can be enforced while
    it runs). ``input=True`` also screens the user's turn.
    """

    name = "moderation"

    def __init__(self, check: Callable[..., Any], *, input: bool = False, in_thread: bool = False,
                 name: str | None = None, timeout: float | None = None, fallback: str | None = None):
        if isinstance(check, str):
            from omni_agent.registry import resolve

            check = resolve(check, None, "moderation check")
        if not callable(check):
            raise ConfigError(f"moderation: check must be callable, not {type(check).__name__}")
        super().__init__(name=name or getattr(check, "__name__", None) or None, timeout=timeout,
                         fallback=fallback)
        self.check = check
        self.in_thread = in_thread
        self._with_ctx = _takes_two(check)
        self.input = input
        if not input:
            self.on_input = None  # type: ignore[assignment]

    async def verdict(self, text: str, ctx: TurnContext) -> Verdict:
        """Ask the check about ``text``."""
        args = (text, ctx) if self._with_ctx else (text,)
        if self.in_thread and not inspect.iscoroutinefunction(self.check):
            answer = await asyncio.to_thread(self.check, *args)
        else:
            answer = self.check(*args)
        if inspect.isawaitable(answer):
            answer = await answer
        return _as_verdict(answer, text)

    async def on_utterance(self, utt: Utterance, ctx: TurnContext) -> Utterance:
        v = await self.verdict(utt.text, ctx)
        if v.action == "block":
            raise Blocked(v.reason or "blocked by moderation")
        if v.action == "rewrite":
            utt.text = v.text  # type: ignore[assignment]
            utt.display = v.text
        return utt

    async def on_input(self, turn: UserTurn, ctx: TurnContext) -> UserTurn:
        """Input rail: the user's text goes through the same check."""
        for p in turn.parts:
            if isinstance(p, TextPart) and p.text:
                v = await self.verdict(p.text, ctx)
                if v.action == "block":
                    raise Blocked(v.reason or "blocked by moderation")
                if v.action == "rewrite":
                    p.text = v.text  # type: ignore[assignment]
        return turn


def _takes_two(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    params = [p for p in sig.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(params) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())


# ---------------------------------------------------------------------------- LLM judge

_JUDGE_PROMPT = (
    "You are a content safety judge for a voice assistant. You will be shown one sentence "
    "the assistant is about to say aloud. {policy}\n"
    "Answer with exactly one word first: ALLOW if it may be said, BLOCK if it must not. "
    "After BLOCK you may add a short reason."
)


class ThinkerJudge:
    """An LLM judge for :class:`Moderation`: asks a Thinker whether a clause may be said.

    ::

        judge = ThinkerJudge(OpenAIThinker(model="gpt-4o-mini"), policy="No medical advice.")
        Moderation(judge, timeout=1.0)

    The reply must start with ALLOW or BLOCK; anything else blocks (fail-closed).
    Pair it with a ``timeout``: a remote judge that hangs then blocks the clause instead
    of stalling speech.
    """

    def __init__(self, thinker: Any, policy: str = "Block harmful, hateful, sexual or dangerous content.",
                 *, max_tokens: int = 16, prompt: str | None = None):
        self.thinker = thinker
        self.system = (prompt or _JUDGE_PROMPT).format(policy=policy)
        self.settings = GenerationSettings(max_tokens=max_tokens, temperature=0.0)
        self.__name__ = f"judge:{getattr(thinker, 'name', type(thinker).__name__)}"

    async def __call__(self, text: str) -> Verdict:
        req = ThinkerRequest(messages=[Message("system", self.system), Message("user", text)],
                             settings=self.settings)
        parts = []
        async for ev in self.thinker.stream(req):
            t = getattr(ev, "text", None)
            if type(ev) is TextDelta and t:
                parts.append(t)
        answer = "".join(parts).strip()
        head = answer.lstrip("*#:-> \"'").upper()
        if head.startswith("ALLOW"):
            return allow()
        if head.startswith("BLOCK"):
            reason = answer[answer.upper().find("BLOCK") + 5:].strip(" :.-\n") or "the judge said BLOCK"
            return block(f"judge: {reason}")
        return block(f"judge gave no clear verdict ({answer[:40]!r}): blocked (fail-closed)")
