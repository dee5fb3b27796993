"""Conversation memory: per-session history on disk, trimmed to a token budget.

The agent calls two methods (its ``history`` interface)::

    memory = ConversationMemory(max_tokens=1500)              # ~/.cache/omni-agent/history.sqlite3
    agent = Agent(thinker=..., history=memory)

    memory.load(session_id)            # -> list[Message], oldest turns dropped to fit the budget
    memory.save_turn(session_id, messages, interrupted=False)

One SQLite file holds every session of a store (stdlib ``sqlite3``: durable, safe against a
crash mid-write, no server), so a session resumes after a restart. Each turn is stored
whole (the user message, any tool calls and results, the assistant's answer); the budget
drops whole turns, oldest first, so a tool call is never separated from its result. With a
``summarizer`` the dropped turns are folded into a running summary instead.

When a turn was interrupted, the agent passes the text that was actually spoken as the
assistant's message; it is stored as such and the turn is marked ``interrupted``.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from omni_agent.errors import ConfigError, OmniAgentError
from omni_agent.events import AudioPart, TextPart
from omni_agent.thinker import Message

from .paths import default_home

__all__ = ["ConversationMemory", "StoredTurn", "estimate_tokens", "tokenizer_counter", "HistoryError"]

TokenCounter = Callable[[str], int]
Summarizer = Callable[[str | None, list[Message]], str]
#: The summarizer a store takes (ConversationMemory's is sync; RedisHistory's may be async).
_S = TypeVar("_S", bound=Callable[..., Any])

PER_MESSAGE_TOKENS = 4  # role and separators, as chat templates add them


class HistoryError(OmniAgentError):
    """The history store cannot be used (unreadable or damaged file). The message says what to do."""


def estimate_tokens(text: str) -> int:
    """A cheap token estimate: about four characters per token for English (no tokenizer)."""
    return math.ceil(len(text) / 4) if text else 0


def tokenizer_counter(tokenizer: Any) -> TokenCounter:
    """An exact counter from a Hugging Face tokenizer: ``ConversationMemory(counter=tokenizer_counter(tok))``."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False)) if text else 0

    return count


@dataclass(slots=True)
class StoredTurn:
    """One stored turn: its messages, whether it was interrupted, and when it was saved."""

    index: int
    messages: list[Message]
    interrupted: bool
    created: float


# --------------------------------------------------------------------------- (de)serializing

def _part_to_json(p: Any) -> dict[str, Any]:
    if isinstance(p, TextPart):
        return {"kind": "text", "text": p.text}
    # Media bytes are not kept in history (they would bloat it without bound): a transcript
    # stands in for audio, a placeholder (with the file path when known) for the rest.
    if isinstance(p, AudioPart) and p.transcript:
        return {"kind": "text", "text": p.transcript}
    kind = getattr(p, "kind", "media")
    url = getattr(p, "url", None)
    ref = url if url and not str(url).startswith("data:") else None
    return {"kind": "text", "text": f"[{kind}{': ' + ref if ref else ''}]"}


def _message_to_json(m: Message) -> dict[str, Any]:
    d: dict[str, Any] = {"role": m.role}
    d["content"] = m.content if isinstance(m.content, str) else [_part_to_json(p) for p in m.content]
    if m.tool_calls:
        d["tool_calls"] = m.tool_calls
    if m.tool_call_id is not None:
        d["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        d["name"] = m.name
    return d


def _message_from_json(d: dict[str, Any]) -> Message:
    content = d.get("content", "")
    if isinstance(content, list):
        parts = [TextPart(p.get("text", "")) for p in content if isinstance(p, dict)]
        content = parts[0].text if len(parts) == 1 else parts
    return Message(d["role"], content, tool_calls=list(d.get("tool_calls") or []),
                   tool_call_id=d.get("tool_call_id"), name=d.get("name"))


def _message_text(m: Message) -> str:
    text = m.text if isinstance(m.content, str) else " ".join(
        getattr(p, "text", "") or "" for p in m.content)
    if m.tool_calls:
        text += " " + json.dumps(m.tool_calls, ensure_ascii=False)
    return text


_SCHEMA = """
CREATE TABLE IF NOT EXISTS turns (
    session_id  TEXT    NOT NULL,
    idx         INTEGER NOT NULL,
    messages    TEXT    NOT NULL,
    interrupted INTEGER NOT NULL DEFAULT 0,
    created     REAL    NOT NULL,
    PRIMARY KEY (session_id, idx)
);
CREATE TABLE IF NOT EXISTS summaries (
    session_id TEXT PRIMARY KEY,
    upto       INTEGER NOT NULL,
    text       TEXT    NOT NULL
);
"""


class TokenBudget(Generic[_S]):
    """What a history store with a token budget shares, whatever it stores in (SQLite,
    Redis): the budget's settings, counting tokens, keeping the newest turns that fit, the
    summary message and rendering turns as messages. See :class:`ConversationMemory` for
    the settings."""

    def __init__(self, *, max_tokens: int = 2048, max_turns: int | None = None,
                 counter: TokenCounter | None = None, summarizer: _S | None = None,
                 interrupted_note: str = ""):
        if max_tokens < 1:
            raise ConfigError(f"history max_tokens must be at least 1, got {max_tokens}")
        if max_turns is not None and max_turns < 1:
            raise ConfigError(f"history max_turns must be at least 1, got {max_turns}")
        self.max_tokens = max_tokens
        self.max_turns = max_turns
        self.counter: TokenCounter = counter or estimate_tokens
        self.summarizer: _S | None = summarizer
        self.interrupted_note = interrupted_note

    def count_tokens(self, messages: Sequence[Message]) -> int:
        """Tokens these messages take by this memory's counter (with per-message overhead)."""
        return sum(self.counter(_message_text(m)) + PER_MESSAGE_TOKENS for m in messages)

    def _fit(self, turns: list[StoredTurn], fixed: Message | None) -> tuple[list[StoredTurn], list[StoredTurn]]:
        """Keep the newest turns that fit the budget; returns (kept, dropped), both oldest first."""
        budget = self.max_tokens - (self.count_tokens([fixed]) if fixed is not None else 0)
        kept: list[StoredTurn] = []
        for t in reversed(turns):
            cost = self.count_tokens(t.messages)
            if cost > budget or (self.max_turns is not None and len(kept) >= self.max_turns):
                break
            budget -= cost
            kept.append(t)
        kept.reverse()
        return kept, turns[: len(turns) - len(kept)]

    def _render(self, kept: list[StoredTurn], fixed: Message | None) -> list[Message]:
        """The kept turns as messages, after the summary (an interrupted reply noted)."""
        out: list[Message] = [fixed] if fixed is not None else []
        for t in kept:
            msgs = t.messages
            if t.interrupted and self.interrupted_note and msgs and msgs[-1].role == "assistant":
                msgs = msgs[:-1] + [Message("assistant", msgs[-1].text + self.interrupted_note)]
            out.extend(msgs)
        return out

    @staticmethod
    def _summary_message(summary: str | None) -> Message | None:
        if not summary:
            return None
        return Message("system", f"Summary of the earlier conversation: {summary}")


class ConversationMemory(TokenBudget[Summarizer]):
    """Persistent per-session history with a token budget (the agent's ``history``).

    * ``path`` — the SQLite file, or a directory to put ``history.sqlite3`` in (default
      ``$OMNI_AGENT_HOME`` or ``~/.cache/omni-agent``); ``":memory:"`` keeps nothing on disk.
    * ``max_tokens`` — budget for what :meth:`load` returns (a summary included);
      ``max_turns`` — optional cap on the number of turns as well.
    * ``counter`` — ``str -> int`` token counter (default :func:`estimate_tokens`; use
      :func:`tokenizer_counter` for the Thinker's own tokenizer).
    * ``summarizer`` — ``(previous_summary, dropped_messages) -> summary``; when given,
      turns that fall out of the budget are summarized (the summary is stored and comes
      back as a system message) instead of dropped.
    * ``interrupted_note`` — appended to an interrupted assistant message when loading
      (e.g. ``" [interrupted]"``) so the Thinker knows it was cut off; default nothing.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        max_tokens: int = 2048,
        max_turns: int | None = None,
        counter: TokenCounter | None = None,
        summarizer: Summarizer | None = None,
        interrupted_note: str = "",
    ):
        super().__init__(max_tokens=max_tokens, max_turns=max_turns, counter=counter,
                         summarizer=summarizer, interrupted_note=interrupted_note)
        self.path = self._resolve(path)
        self._lock = threading.Lock()
        self._db = self._open()

    # ------------------------------------------------------------------ storage

    @staticmethod
    def _resolve(path: str | Path | None) -> str:
        if path == ":memory:":
            return ":memory:"
        p = Path(path).expanduser() if path else default_home()
        if p.is_dir() or (path is None) or (not p.suffix and not p.exists()):
            p = p / "history.sqlite3"
        return str(p)

    def _open(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise HistoryError(f"cannot create the history directory for {self.path}: {e}") from e
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL" if self.path != ":memory:" else "PRAGMA journal_mode=MEMORY")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise HistoryError(f"the history file {self.path} is damaged or not a history store ({e}): "
                               "move it aside (a new one is made) or pass another path") from e
        return db

    def close(self) -> None:
        """Close the file (the memory cannot be used afterwards)."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ the agent's interface

    def save_turn(self, session_id: str, messages: Sequence[Message], *, interrupted: bool = False) -> None:
        """Store one turn: the user's message, tool calls and results, the final answer
        (the spoken part of it when ``interrupted``)."""
        if not messages:
            return
        blob = json.dumps([_message_to_json(m) for m in messages], ensure_ascii=False)
        with self._lock:
            try:
                with self._tx():  # one transaction: a crash never leaves half a turn
                    row = self._db.execute("SELECT COALESCE(MAX(idx), -1) FROM turns WHERE session_id=?",
                                           (session_id,)).fetchone()
                    self._db.execute("INSERT INTO turns VALUES (?, ?, ?, ?, ?)",
                                     (session_id, row[0] + 1, blob, int(interrupted), time.time()))
            except sqlite3.Error as e:
                raise HistoryError(f"cannot save the turn to {self.path}: {e}") from e

    def load(self, session_id: str) -> list[Message]:
        """The session's history trimmed to the budget, oldest first (a summary of older
        turns first, as a system message, when a summarizer is set)."""
        turns = self.turns(session_id)
        summary_upto, summary = self._summary(session_id)
        turns = [t for t in turns if t.index > summary_upto]
        fixed = self._summary_message(summary)
        kept, dropped = self._fit(turns, fixed)
        # The new summary takes room too, which may push more turns out: fold those in as well.
        while dropped and self.summarizer is not None:
            summary = self.summarizer(summary, [m for t in dropped for m in t.messages])
            self._store_summary(session_id, dropped[-1].index, summary)
            fixed = self._summary_message(summary)
            kept, dropped = self._fit(kept, fixed)
        return self._render(kept, fixed)

    # ------------------------------------------------------------------ more

    def turns(self, session_id: str) -> list[StoredTurn]:
        """Every stored turn of the session (untrimmed), oldest first."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT idx, messages, interrupted, created FROM turns WHERE session_id=? ORDER BY idx",
                    (session_id,)).fetchall()
            except sqlite3.Error as e:
                raise HistoryError(f"cannot read the history in {self.path}: {e}") from e
        out = []
        for idx, blob, interrupted, created in rows:
            try:
                msgs = [_message_from_json(d) for d in json.loads(blob)]
            except (ValueError, KeyError, TypeError):
                continue  # a damaged row costs that turn only, not the session
            out.append(StoredTurn(idx, msgs, bool(interrupted), created))
        return out

    def sessions(self) -> list[str]:
        """Ids of the sessions with stored turns."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT session_id FROM turns ORDER BY session_id")]

    def clear(self, session_id: str) -> None:
        """Forget a session (its turns and summary)."""
        with self._lock, self._tx():
            self._db.execute("DELETE FROM turns WHERE session_id=?", (session_id,))
            self._db.execute("DELETE FROM summaries WHERE session_id=?", (session_id,))

    def forget(self, session_id: str) -> None:
        """The agent's name for :meth:`clear` (used when a live session closes)."""
        self.clear(session_id)

    def revise_last_reply(self, session_id: str, text: str) -> bool:
        """Replace the text of the last assistant reply with what the user actually heard
        (after a barge-in the client reports how much it played). Returns False when the
        session has no reply to revise."""
        with self._lock:
            try:
                row = self._db.execute(
                    "SELECT idx, messages FROM turns WHERE session_id=? ORDER BY idx DESC LIMIT 1",
                    (session_id,)).fetchone()
                if row is None:
                    return False
                msgs = [_message_from_json(d) for d in json.loads(row[1])]
                for i in range(len(msgs) - 1, -1, -1):
                    if msgs[i].role == "assistant" and not msgs[i].tool_calls:
                        msgs[i] = Message("assistant", text)
                        break
                else:
                    return False
                blob = json.dumps([_message_to_json(m) for m in msgs], ensure_ascii=False)
                with self._tx():
                    self._db.execute("UPDATE turns SET messages=?, interrupted=1 WHERE session_id=? AND idx=?",
                                     (blob, session_id, row[0]))
            except sqlite3.Error as e:
                raise HistoryError(f"cannot update the history in {self.path}: {e}") from e
        return True

    # ------------------------------------------------------------------ internals

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction (the connection is in autocommit mode otherwise)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _summary(self, session_id: str) -> tuple[int, str | None]:
        with self._lock:
            row = self._db.execute("SELECT upto, text FROM summaries WHERE session_id=?",
                                   (session_id,)).fetchone()
        return (row[0], row[1]) if row else (-1, None)

    def _store_summary(self, session_id: str, upto: int, text: str) -> None:
        with self._lock, self._tx():
            self._db.execute("INSERT OR REPLACE INTO summaries VALUES (?, ?, ?)", (session_id, upto, text))

    def __repr__(self) -> str:
        return f"ConversationMemory({self.path!r}, max_tokens={self.max_tokens})"
