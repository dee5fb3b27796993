"""Conversation history on Redis, shared by every agent server that points at it.

::

    history = RedisHistory("redis://127.0.0.1:6379/0", max_tokens=1500)
    agent = Agent(thinker=..., history=history)

or in a config file::

    [history]
    store = "redis://127.0.0.1:6379/0"
    max_tokens = 1500

The same interface and budget as :class:`~omni_agent.memory.ConversationMemory` (load,
save_turn, forget, revise_last_reply, ``max_tokens``/``max_turns``, ``summarizer``,
``interrupted_note``), but async (``redis.asyncio``: the agent awaits it, nothing blocks the
loop) and shared: two replicas behind a load balancer see one conversation.

How a session is stored (keys share the hash tag ``{session_id}``, so they sit on one
Redis Cluster slot)::

    <prefix>{sid}:turns   LIST   "<index> <json turn>" per turn, oldest first
    <prefix>{sid}:ids     LIST   the turn ids, parallel to :turns (a retried write is not doubled)
    <prefix>{sid}:meta    HASH   next (turn counter), summary, summary_upto

* **Atomic turns.** A turn is one list element, appended by one Lua script (counter,
  append, dedup, trim, expiry in one step): two replicas writing one session at the same
  moment each add a whole turn, in the order Redis received them — never half of one.
  There is no lock around the whole turn: two turns of one session that run at the same
  time on two replicas each see the history as it was when they started (as two browser
  tabs would); a live session is bound to one replica, so this only happens to HTTP turns
  sent concurrently by one client.
* **No duplicates.** Every turn carries a random id; the script skips an id it already
  has, so a write retried after a lost reply (or a buffered turn written twice) lands once.
* **Revising after a barge-in** is a compare-and-set on the last element: it changes the
  turn only if nobody appended another in between (else it reads again, a few times).
* **The store going down.** Reads and writes have a timeout (``timeout``, 2 s). A load
  that fails raises :class:`~omni_agent.history.HistoryUnavailable` with the turns this
  process still holds for the session (the agent goes on with them and reports the
  error). A save that fails keeps the turn in a bounded buffer in this process
  (``max_buffered_turns``) and raises ``HistoryUnavailable`` saying so; buffered turns are
  written, in order, by the next history call once the store answers again (or by
  :meth:`aflush`; :meth:`aclose` tries once more and logs what is lost). A full buffer
  refuses the turn loudly — it is never dropped in silence. After a failure the store is
  not tried again for ``retry_after`` seconds, so a dead store costs a turn nothing.
  What is lost if this process dies while the store is down: the buffered turns.
* **Bounded.** ``max_stored_turns`` (1000) per session are kept (older ones are trimmed;
  with a summarizer they should have been folded into the summary long before), and
  ``ttl`` (seconds, refreshed on every write) lets Redis expire idle sessions.

Needs Redis 6.2 or newer (``LPOS``) and ``pip install 'omni-agent[redis]'``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import time
import uuid
from dataclasses import dataclass
from time import monotonic
from typing import Any, Awaitable, Callable, Generator, Sequence

import anyio

from omni_agent.errors import ConfigError
from omni_agent.history import HistoryUnavailable
from omni_agent.thinker import Message

from .conversation import HistoryError, StoredTurn, TokenBudget, TokenCounter, _message_from_json, _message_to_json

__all__ = ["RedisHistory", "HistoryStoreDown", "REDIS_SCHEMES"]

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

#: A summarizer may be sync (it is then run in a worker thread: it may call a model) or async.
Summarizer = Callable[[str | None, list[Message]], "str | Awaitable[str]"]


class HistoryStoreDown(HistoryError, HistoryUnavailable):
    """The Redis history store cannot be reached; the message says what happened to the turn."""


class _LeftAlone(ConnectionError):
    """The store failed a moment ago and is not tried again yet (``retry_after``)."""


# KEYS: turns, ids, meta. ARGV: turn id, turn json, max stored turns, ttl seconds (0: none).
# Returns the turn's index, or -1 when that turn id is already stored.
_APPEND = """
if redis.call('LPOS', KEYS[2], ARGV[1]) then return -1 end
local idx = redis.call('HINCRBY', KEYS[3], 'next', 1) - 1
redis.call('RPUSH', KEYS[1], idx .. ' ' .. ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[1])
local keep = tonumber(ARGV[3])
if redis.call('LLEN', KEYS[1]) > keep then
  redis.call('LTRIM', KEYS[1], -keep, -1)
  redis.call('LTRIM', KEYS[2], -keep, -1)
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
end
return idx
"""

# KEYS: turns. ARGV: the last element as it was read, its replacement. 1 if replaced.
_REPLACE_LAST = """
if redis.call('LINDEX', KEYS[1], -1) ~= ARGV[1] then return 0 end
redis.call('LSET', KEYS[1], -1, ARGV[2])
return 1
"""

# KEYS: meta. ARGV: up to which turn index, summary text. A summary never goes back
# (two replicas folding the same turns at once: the one that covers more wins).
_STORE_SUMMARY = """
local cur = tonumber(redis.call('HGET', KEYS[1], 'summary_upto') or '-1')
if tonumber(ARGV[1]) <= cur then return 0 end
redis.call('HSET', KEYS[1], 'summary_upto', ARGV[1], 'summary', ARGV[2])
return 1
"""


@dataclass(slots=True)
class _Pending:
    """A turn accepted but not yet written (the store was down)."""

    session_id: str
    turn_id: str
    blob: str
    messages: list[Message]
    interrupted: bool


# The steps of a load, as data: the same plan runs on the sync and the async client.
@dataclass(slots=True)
class _ReadTail:
    count: int


@dataclass(slots=True)
class _Summarize:
    previous: str | None
    dropped: list[Message]


@dataclass(slots=True)
class _StoreSummary:
    upto: int
    text: str


_Step = _ReadTail | _Summarize | _StoreSummary


class RedisHistory(TokenBudget[Summarizer]):
    """Per-session history on a Redis server, with a token budget (the agent's ``history``).

    * ``url`` — ``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or
      ``unix:///path/redis.sock``.
    * ``max_tokens``, ``max_turns``, ``counter``, ``summarizer``, ``interrupted_note`` — as
      for :class:`~omni_agent.memory.ConversationMemory` (a summarizer may be async).
    * ``prefix`` — key prefix (one per agent or tenant sharing a Redis).
    * ``ttl`` — seconds an idle session's history lives (refreshed on each write);
      None keeps it until forgotten.
    * ``max_stored_turns`` — turns kept per session (the oldest are trimmed).
    * ``max_buffered_turns`` — turns this process holds while the store is down.
    * ``timeout`` — seconds one call to Redis may take (connecting included);
      ``retry_after`` — seconds a store that failed is left alone before it is tried again.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        max_tokens: int = 2048,
        max_turns: int | None = None,
        counter: TokenCounter | None = None,
        summarizer: Summarizer | None = None,
        interrupted_note: str = "",
        prefix: str = "omni-agent:history:",
        ttl: float | None = None,
        max_stored_turns: int = 1000,
        max_buffered_turns: int = 1000,
        timeout: float = 2.0,
        retry_after: float = 1.0,
    ):
        if not isinstance(url, str) or not url.startswith(REDIS_SCHEMES):
            raise ConfigError(f"history store {url!r} is not a Redis URL: give "
                              "redis://host:port/db, rediss://host:port/db or unix:///path/to/redis.sock")
        super().__init__(max_tokens=max_tokens, max_turns=max_turns, counter=counter,
                         summarizer=summarizer, interrupted_note=interrupted_note)
        if max_stored_turns < 1 or (max_turns is not None and max_stored_turns < max_turns):
            raise ConfigError(f"history max_stored_turns must be at least 1 and at least max_turns, "
                              f"got {max_stored_turns}")
        if max_buffered_turns < 0:
            raise ConfigError(f"history max_buffered_turns must be >= 0, got {max_buffered_turns}")
        if ttl is not None and ttl < 1:
            raise ConfigError(f"history ttl must be at least 1 second (or left out), got {ttl}")
        if timeout <= 0 or retry_after < 0:
            raise ConfigError("history timeout must be > 0 and retry_after >= 0 seconds")
        try:
            import redis  # noqa: F401 - fail at build time, not on the first turn
        except ImportError as e:
            raise ConfigError("a Redis history store needs redis-py: pip install 'omni-agent[redis]'") from e
        self.url = url
        self.prefix = prefix
        self.ttl = ttl
        self.max_stored_turns = max_stored_turns
        self.max_buffered_turns = max_buffered_turns
        self.timeout = timeout
        self.retry_after = retry_after
        self._pending: collections.deque[_Pending] = collections.deque()
        self._down_until = 0.0
        self._last_error = ""
        # The async client belongs to the loop that made it (its connections do).
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._aredis: Any = None
        self._ascripts: dict[str, Any] = {}
        self._flush_lock: anyio.Lock | None = None
        self._sredis: Any = None
        self._sscripts: dict[str, Any] = {}

    # ------------------------------------------------------------------ clients

    def _options(self) -> dict[str, Any]:
        return dict(decode_responses=True, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                    health_check_interval=30)

    def _async_client(self) -> tuple[Any, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        if self._aredis is None or self._aloop is not loop:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff

            # One immediate retry: a pooled connection may be stale after Redis restarted.
            # A retried write cannot double a turn (the turn id is checked by the script).
            client = aioredis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 1), **self._options())
            self._aredis, self._aloop = client, loop
            self._ascripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
            self._flush_lock = anyio.Lock()
        return self._aredis, self._ascripts

    def _sync_client(self) -> tuple[Any, dict[str, Any]]:
        if self._sredis is None:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            client = redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 1), **self._options())
            self._sredis = client
            self._sscripts = {name: client.register_script(src) for name, src in _SCRIPTS.items()}
        return self._sredis, self._sscripts

    def _keys(self, session_id: str) -> tuple[str, str, str]:
        base = f"{self.prefix}{{{session_id}}}"
        return f"{base}:turns", f"{base}:ids", f"{base}:meta"

    # ------------------------------------------------------------------ failures

    def _down(self, e: BaseException) -> None:
        if isinstance(e, _LeftAlone):
            return  # not a new failure: the store keeps its time to come back
        self._last_error = f"{type(e).__name__}: {e}"
        self._down_until = monotonic() + self.retry_after

    def _check_up(self) -> None:
        """Raise at once while a store that just failed is left alone."""
        if monotonic() < self._down_until:
            raise _LeftAlone(f"it failed less than {self.retry_after:g} s ago: {self._last_error}")

    def _unreachable(self, e: BaseException | str) -> str:
        return f"the history store {self._shown_url()} is unreachable ({e})"

    def _shown_url(self) -> str:
        # Never put a password into a message or a log.
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"

    @staticmethod
    def _is_store_error(e: BaseException) -> bool:
        from redis.exceptions import RedisError

        return isinstance(e, (RedisError, OSError, ConnectionError))

    # ------------------------------------------------------------------ the agent's interface (async)

    async def aload(self, session_id: str) -> list[Message]:
        """The session's history trimmed to the budget, oldest first (with the summary of
        older turns first, as a system message, when a summarizer is set)."""
        try:
            self._check_up()
            await self._flush()
            client, _ = self._async_client()
            plan = self._load_plan(session_id)
            reply: Any = None
            while True:
                try:
                    step = plan.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply = await self._arun(client, session_id, step)
        except Exception as e:  # noqa: BLE001 - sorted below
            if not self._is_store_error(e):
                raise
            self._down(e)
            partial = self._buffered_messages(session_id)
            raise HistoryStoreDown(
                f"{self._unreachable(e)}: this server still holds {len(partial)} message(s) of "
                f"session {session_id!r} that it could not write yet; the older history is out of "
                "reach until the store is back", partial=partial) from e

    async def asave_turn(self, session_id: str, messages: Sequence[Message], *, interrupted: bool = False) -> None:
        """Store one turn atomically: the user's message, tool calls and results, the
        answer (the spoken part of it when ``interrupted``). A store that is down keeps
        it in this process's buffer and raises :class:`HistoryStoreDown` saying so."""
        if not messages:
            return
        item = self._pending_turn(session_id, messages, interrupted)
        if not self._pending:
            # The usual case: nothing is waiting, so write at once (no lock: one turn runs
            # per session here, and turns of other sessions do not need an order).
            try:
                self._check_up()
                client, scripts = self._async_client()
                await self._aappend(scripts, item)
                return
            except Exception as e:  # noqa: BLE001 - sorted below
                if not self._is_store_error(e):
                    raise
                self._down(e)
        elif len(self._pending) >= self.max_buffered_turns:
            await self._flush(raise_on_error=False)  # the store may be back: make room
        if len(self._pending) >= self.max_buffered_turns:
            raise HistoryStoreDown(
                f"{self._unreachable(self._last_error or 'down')}: this turn of session {session_id!r} "
                f"is NOT saved — {len(self._pending)} earlier turns are already waiting for the store "
                "(max_buffered_turns); bring the store back or raise the limit")
        self._pending.append(item)
        log.warning("history store %s is down: %d turn(s) held in this process until it is back",
                    self._shown_url(), len(self._pending))
        # Behind earlier buffered turns, this one waits its turn (order within a session).
        if not await self._flush(raise_on_error=False):
            raise HistoryStoreDown(
                f"{self._unreachable(self._last_error)}: the turn is kept in this server's buffer "
                f"({len(self._pending)} of at most {self.max_buffered_turns} turns) and written when "
                "the store answers again; it is lost if this server stops before then")

    async def aforget(self, session_id: str) -> None:
        """Delete the session's history (its turns, summary and any buffered turns)."""
        self._pending = collections.deque(p for p in self._pending if p.session_id != session_id)
        try:
            self._check_up()
            client, _ = self._async_client()
            await client.delete(*self._keys(session_id))
        except Exception as e:  # noqa: BLE001 - sorted below
            if not self._is_store_error(e):
                raise
            self._down(e)
            raise HistoryStoreDown(f"{self._unreachable(e)}: session {session_id!r} was NOT forgotten "
                                   "on the store; forget it again when the store is back") from e

    async def arevise_last_reply(self, session_id: str, text: str) -> bool:
        """Replace the text of the last assistant reply with what the user actually heard.
        Returns False when the session has no reply to revise."""
        for p in reversed(self._pending):  # not written yet: revise it here
            if p.session_id == session_id:
                return self._revise_pending(p, text)
        try:
            self._check_up()
            client, scripts = self._async_client()
            turns_key = self._keys(session_id)[0]
            for _ in range(5):  # another replica appending in between: read again
                last = await client.lindex(turns_key, -1)
                new = self._revised(last, text)
                if new is None:
                    return False
                if await scripts["replace_last"](keys=[turns_key], args=[last, new]):
                    return True
            return False
        except Exception as e:  # noqa: BLE001 - sorted below
            if not self._is_store_error(e):
                raise
            self._down(e)
            raise HistoryStoreDown(f"{self._unreachable(e)}: the last reply of session {session_id!r} "
                                   "was not revised") from e

    async def aturns(self, session_id: str) -> list[StoredTurn]:
        """Every stored turn of the session (untrimmed by the budget), oldest first."""
        client, _ = self._async_client()
        return self._parse(await client.lrange(self._keys(session_id)[0], 0, -1))

    async def aflush(self) -> int:
        """Write the turns buffered while the store was down, now. Returns how many are
        still waiting (0: all written)."""
        self._down_until = 0.0
        await self._flush(raise_on_error=False)
        return len(self._pending)

    async def aclose(self) -> None:
        """Write what is buffered (one try) and close the connections; logs what is lost."""
        if self._pending:
            left = await self.aflush()
            if left:
                log.error("history store %s is still down: %d buffered turn(s) are lost (%s)",
                          self._shown_url(), left, self._last_error)
        if self._aredis is not None and self._aloop is asyncio.get_running_loop():
            await self._aredis.aclose()
        self._aredis = self._aloop = None

    @property
    def buffered(self) -> int:
        """Turns accepted by this process and not yet written to the store."""
        return len(self._pending)

    # ------------------------------------------------------------------ sync interface (scripts, tests)

    def load(self, session_id: str) -> list[Message]:
        """:meth:`aload` for scripts (blocks; the agent itself uses the async methods).
        A store that is down raises :class:`HistoryStoreDown`; nothing is buffered here."""
        client, _ = self._sync_client()
        plan = self._load_plan(session_id)
        reply: Any = None
        try:
            while True:
                try:
                    step = plan.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply = self._run(client, session_id, step)
        except Exception as e:  # noqa: BLE001 - sorted below
            if not self._is_store_error(e):
                raise
            raise HistoryStoreDown(self._unreachable(e)) from e

    def save_turn(self, session_id: str, messages: Sequence[Message], *, interrupted: bool = False) -> None:
        """:meth:`asave_turn` for scripts: written at once or :class:`HistoryStoreDown`."""
        if not messages:
            return
        item = self._pending_turn(session_id, messages, interrupted)
        _, scripts = self._sync_client()
        try:
            scripts["append"](keys=list(self._keys(session_id)), args=self._append_args(item))
        except Exception as e:  # noqa: BLE001 - sorted below
            if not self._is_store_error(e):
                raise
            raise HistoryStoreDown(f"{self._unreachable(e)}: the turn was not saved") from e

    def forget(self, session_id: str) -> None:
        """Delete the session's history (blocking form of :meth:`aforget`)."""
        self._pending = collections.deque(p for p in self._pending if p.session_id != session_id)
        client, _ = self._sync_client()
        try:
            client.delete(*self._keys(session_id))
        except Exception as e:  # noqa: BLE001 - sorted below
            if not self._is_store_error(e):
                raise
            raise HistoryStoreDown(f"{self._unreachable(e)}: session {session_id!r} was not forgotten") from e

    def revise_last_reply(self, session_id: str, text: str) -> bool:
        """Blocking form of :meth:`arevise_last_reply`."""
        client, scripts = self._sync_client()
        turns_key = self._keys(session_id)[0]
        try:
            for _ in range(5):
                last = client.lindex(turns_key, -1)
                new = self._revised(last, text)
                if new is None:
                    return False
                if scripts["replace_last"](keys=[turns_key], args=[last, new]):
                    return True
            return False
        except Exception as e:  # noqa: BLE001 - sorted below
            if not self._is_store_error(e):
                raise
            raise HistoryStoreDown(f"{self._unreachable(e)}: the last reply was not revised") from e

    def turns(self, session_id: str) -> list[StoredTurn]:
        """Every stored turn of the session, oldest first (blocking)."""
        client, _ = self._sync_client()
        return self._parse(client.lrange(self._keys(session_id)[0], 0, -1))

    # ------------------------------------------------------------------ writing

    def _pending_turn(self, session_id: str, messages: Sequence[Message], interrupted: bool) -> _Pending:
        msgs = list(messages)
        blob = self._turn_json(msgs, interrupted)
        return _Pending(session_id, uuid.uuid4().hex, blob, msgs, interrupted)

    @staticmethod
    def _turn_json(messages: list[Message], interrupted: bool) -> str:
        return json.dumps({"messages": [_message_to_json(m) for m in messages], "interrupted": interrupted,
                           "created": time.time()}, ensure_ascii=False)

    def _append_args(self, item: _Pending) -> list[Any]:
        return [item.turn_id, item.blob, self.max_stored_turns, int(self.ttl or 0)]

    async def _aappend(self, scripts: dict[str, Any], item: _Pending) -> None:
        await scripts["append"](keys=list(self._keys(item.session_id)), args=self._append_args(item))

    async def _flush(self, *, raise_on_error: bool = True) -> bool:
        """Write buffered turns, oldest first; True when none is left. One flush at a time
        (two would write the same turn: harmless, the id is checked, but wasted)."""
        if not self._pending:
            return True
        client, scripts = self._async_client()
        assert self._flush_lock is not None
        async with self._flush_lock:
            written = 0
            try:
                self._check_up()
                while self._pending:
                    await self._aappend(scripts, self._pending[0])
                    self._pending.popleft()
                    written += 1
            except Exception as e:  # noqa: BLE001 - sorted below
                if not self._is_store_error(e):
                    raise
                self._down(e)
                if raise_on_error:
                    raise
                return False
            finally:
                if written:
                    log.warning("history store %s is back: wrote %d buffered turn(s), %d still waiting",
                                self._shown_url(), written, len(self._pending))
        return True

    def _buffered_messages(self, session_id: str) -> list[Message]:
        turns = [StoredTurn(-1, p.messages, p.interrupted, 0.0) for p in self._pending if p.session_id == session_id]
        kept, _ = self._fit(turns, None)
        return self._render(kept, None)

    def _revise_pending(self, p: _Pending, text: str) -> bool:
        for i in range(len(p.messages) - 1, -1, -1):
            if p.messages[i].role == "assistant" and not p.messages[i].tool_calls:
                p.messages[i] = Message("assistant", text)
                p.interrupted = True
                p.blob = self._turn_json(p.messages, True)
                return True
        return False

    def _revised(self, element: str | None, text: str) -> str | None:
        """The stored element with its last assistant reply replaced; None when it has none."""
        if element is None:
            return None
        idx, _, blob = element.partition(" ")
        data = json.loads(blob)
        msgs = data.get("messages") or []
        for i in range(len(msgs) - 1, -1, -1):
            if msgs[i].get("role") == "assistant" and not msgs[i].get("tool_calls"):
                msgs[i] = _message_to_json(Message("assistant", text))
                data["interrupted"] = True
                return f"{idx} {json.dumps(data, ensure_ascii=False)}"
        return None

    # ------------------------------------------------------------------ reading

    def _load_plan(self, session_id: str) -> Generator[_Step, Any, list[Message]]:
        """What a load does, step by step; a driver runs each step on its client. The
        newest turns are read in pages (doubling) until the budget is full or every
        turn after the summary has been seen, so a long session costs one small read."""
        page = min(32, self.max_stored_turns)
        while True:
            upto, summary, total, raw = yield _ReadTail(page)
            seen = self._parse(raw)
            turns = [t for t in seen if t.index > upto]
            fixed = self._summary_message(summary)
            kept, dropped = self._fit(turns, fixed)
            everything = len(raw) >= total or (seen and seen[0].index <= upto + 1) or page >= self.max_stored_turns
            if everything or (dropped and self.summarizer is None):
                break
            page = min(page * 2, self.max_stored_turns)
        # The new summary takes room too, which may push more turns out: fold those in as well.
        while dropped and self.summarizer is not None:
            summary = yield _Summarize(summary, [m for t in dropped for m in t.messages])
            yield _StoreSummary(dropped[-1].index, summary)
            fixed = self._summary_message(summary)
            kept, dropped = self._fit(kept, fixed)
        return self._render(kept, fixed)

    async def _arun(self, client: Any, session_id: str, step: _Step) -> Any:
        turns_key, _, meta_key = self._keys(session_id)
        if isinstance(step, _ReadTail):
            async with client.pipeline(transaction=True) as pipe:  # one snapshot
                pipe.hmget(meta_key, "summary_upto", "summary")
                pipe.llen(turns_key)
                pipe.lrange(turns_key, -step.count, -1)
                (upto, summary), total, raw = await pipe.execute()
            return int(upto) if upto is not None else -1, summary, total, raw
        if isinstance(step, _Summarize):
            assert self.summarizer is not None
            if inspect.iscoroutinefunction(self.summarizer):
                return await self.summarizer(step.previous, step.dropped)
            # A sync summarizer may call a model: it runs in a worker thread.
            out = await anyio.to_thread.run_sync(self.summarizer, step.previous, step.dropped)
            return await out if inspect.isawaitable(out) else out
        await self._ascripts["store_summary"](keys=[meta_key], args=[step.upto, step.text])
        return None

    def _run(self, client: Any, session_id: str, step: _Step) -> Any:
        turns_key, _, meta_key = self._keys(session_id)
        if isinstance(step, _ReadTail):
            with client.pipeline(transaction=True) as pipe:
                pipe.hmget(meta_key, "summary_upto", "summary")
                pipe.llen(turns_key)
                pipe.lrange(turns_key, -step.count, -1)
                (upto, summary), total, raw = pipe.execute()
            return int(upto) if upto is not None else -1, summary, total, raw
        if isinstance(step, _Summarize):
            assert self.summarizer is not None  # a _Summarize step is made only with one
            out = self.summarizer(step.previous, step.dropped)
            if inspect.isawaitable(out):
                raise HistoryError("an async summarizer needs the async interface (aload)")
            return out
        self._sscripts["store_summary"](keys=[meta_key], args=[step.upto, step.text])
        return None

    @staticmethod
    def _parse(raw: list[str]) -> list[StoredTurn]:
        out = []
        for element in raw:
            idx, _, blob = element.partition(" ")
            try:
                data = json.loads(blob)
                msgs = [_message_from_json(d) for d in data["messages"]]
                out.append(StoredTurn(int(idx), msgs, bool(data.get("interrupted")), float(data.get("created", 0))))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged element costs that turn only, not the session
        return out

    def __repr__(self) -> str:
        return f"RedisHistory({self._shown_url()!r}, max_tokens={self.max_tokens})"


_SCRIPTS = {"append": _APPEND, "replace_last": _REPLACE_LAST, "store_summary": _STORE_SUMMARY}
