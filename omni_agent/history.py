"""The history interface: how the agent loads and saves a session's conversation.

A history store has one of two small shapes (both are :class:`typing.Protocol`, so any
object with these methods will do)::

    class History(Protocol):                     # sync: in-process, SQLite, your own
        def load(self, session_id) -> list[Message]: ...
        def save_turn(self, session_id, messages, *, interrupted=False) -> None: ...
        # optional: forget(session_id), revise_last_reply(session_id, text) -> bool

    class AsyncHistory(Protocol):                # async: a store reached over the network
        async def aload(self, session_id) -> list[Message]: ...
        async def asave_turn(self, session_id, messages, *, interrupted=False) -> None: ...
        # optional: aforget(session_id), arevise_last_reply(session_id, text) -> bool

The agent never calls a store on the event loop in a way that can block it: async methods
are awaited (``RedisHistory`` on ``redis.asyncio``; ``InMemoryHistory``'s run inline, a
dict needs no thread), and a store with only sync methods is called in a worker thread
(it may do file or database I/O, like ``ConversationMemory``'s SQLite), so a sync store
must be thread-safe. :class:`HistoryCalls` is that one rule, in one place.

A store that cannot be reached raises :class:`HistoryUnavailable`; the turn then goes on
(without the stored history, or with ``partial`` — what the store still has locally) and
the agent reports it as a recoverable ``ErrorEvent`` with ``stage="history"``
(:meth:`HistoryCalls.load_for_turn`, :meth:`HistoryCalls.save_for_turn`).

:class:`InMemoryHistory` is the default store: a dict in the process.
"""

from __future__ import annotations

import logging
from time import monotonic
from typing import Awaitable, Callable, Protocol, Sequence, cast, runtime_checkable

import anyio
import anyio.to_thread

from .errors import OmniAgentError
from .events import ErrorEvent
from .thinker import Message
from .trace import Trace

__all__ = ["History", "AsyncHistory", "Forgets", "Revises", "AsyncForgets", "AsyncRevises",
           "HistoryUnavailable", "HistoryCalls", "InMemoryHistory"]

log = logging.getLogger(__name__)


@runtime_checkable
class History(Protocol):
    """A sync history store (called in a worker thread by the agent)."""

    def load(self, session_id: str) -> list[Message]: ...

    def save_turn(self, session_id: str, messages: list[Message], *, interrupted: bool = False) -> None: ...


@runtime_checkable
class AsyncHistory(Protocol):
    """An async history store (awaited on the event loop by the agent)."""

    async def aload(self, session_id: str) -> list[Message]: ...

    async def asave_turn(self, session_id: str, messages: list[Message], *,
                         interrupted: bool = False) -> None: ...


@runtime_checkable
class Forgets(Protocol):
    """Optional: a sync store that can delete a session's history."""

    def forget(self, session_id: str) -> None: ...


@runtime_checkable
class Revises(Protocol):
    """Optional: a sync store that can cut the last reply to what the user heard (barge-in);
    False when there is no reply to revise."""

    def revise_last_reply(self, session_id: str, text: str) -> bool: ...


@runtime_checkable
class AsyncForgets(Protocol):
    """Optional: :class:`Forgets` for an async store."""

    async def aforget(self, session_id: str) -> None: ...


@runtime_checkable
class AsyncRevises(Protocol):
    """Optional: :class:`Revises` for an async store."""

    async def arevise_last_reply(self, session_id: str, text: str) -> bool: ...


class HistoryUnavailable(OmniAgentError):
    """The history store cannot be reached now. The message says what is lost and what
    happens next; ``partial`` holds the messages this process still has for the session
    (turns it has not been able to write yet), which a turn may go on with."""

    def __init__(self, message: str, *, partial: Sequence[Message] = ()):
        super().__init__(message)
        self.partial: list[Message] = list(partial)


class HistoryCalls:
    """The agent's way to call a store: awaited when it is async, else in a worker thread.

    ::

        calls = HistoryCalls(ConversationMemory())
        messages = await calls.load("alice")      # SQLite, off the loop
    """

    __slots__ = ("store", "_async", "_aforget", "_arevise", "_forget", "_revise")

    def __init__(self, store: History | AsyncHistory):
        if not isinstance(store, (AsyncHistory, History)):
            raise OmniAgentError(
                f"history {type(store).__name__} has neither load/save_turn nor aload/asave_turn: "
                "give an object with those methods (see omni_agent.history), e.g. "
                "omni_agent.memory.ConversationMemory()")
        self.store = store
        self._async = isinstance(store, AsyncHistory)
        # The optional methods, looked up once: a turn does not pay for the lookup.
        self._aforget: Callable[[str], Awaitable[None]] | None = (
            store.aforget if self._async and isinstance(store, AsyncForgets) else None)
        self._arevise: Callable[[str, str], Awaitable[bool]] | None = (
            store.arevise_last_reply if self._async and isinstance(store, AsyncRevises) else None)
        self._forget: Callable[[str], None] | None = store.forget if isinstance(store, Forgets) else None
        self._revise: Callable[[str, str], bool] | None = (
            store.revise_last_reply if isinstance(store, Revises) else None)

    # ``_async`` was decided once (a Protocol isinstance check costs microseconds a call).
    async def load(self, session_id: str) -> list[Message]:
        if self._async:
            return await cast(AsyncHistory, self.store).aload(session_id)
        return await anyio.to_thread.run_sync(cast(History, self.store).load, session_id)

    async def save_turn(self, session_id: str, messages: list[Message], *, interrupted: bool = False) -> None:
        if self._async:
            await cast(AsyncHistory, self.store).asave_turn(session_id, messages, interrupted=interrupted)
            return
        save = cast(History, self.store).save_turn
        await anyio.to_thread.run_sync(lambda: save(session_id, messages, interrupted=interrupted))

    @property
    def can_forget(self) -> bool:
        return self._aforget is not None or self._forget is not None

    @property
    def can_revise(self) -> bool:
        return self._arevise is not None or self._revise is not None

    async def forget(self, session_id: str) -> bool:
        """Delete the session's history; False when the store cannot forget."""
        if self._aforget is not None:
            await self._aforget(session_id)
        elif self._forget is not None:
            await anyio.to_thread.run_sync(self._forget, session_id)
        else:
            return False
        return True

    async def revise_last_reply(self, session_id: str, text: str) -> bool:
        """Cut the last reply to ``text``; False when there is none or the store cannot."""
        if self._arevise is not None:
            return bool(await self._arevise(session_id, text))
        if self._revise is not None:
            return bool(await anyio.to_thread.run_sync(self._revise, session_id, text))
        return False

    # ------------------------------------------------------------------ sync, for scripts

    def forget_now(self, session_id: str) -> bool:
        """:meth:`forget` on the caller's thread, for sync code; False when the store has
        no sync ``forget`` (an async-only store is forgotten with ``await forget(...)``)."""
        if self._forget is None:
            return False
        self._forget(session_id)
        return True

    def revise_now(self, session_id: str, text: str) -> bool:
        """:meth:`revise_last_reply` on the caller's thread, for sync code; False when the
        store has no sync ``revise_last_reply`` or there is no reply to revise."""
        return self._revise is not None and bool(self._revise(session_id, text))

    # ------------------------------------------------------------------ for a turn

    async def load_for_turn(self, session_id: str, turn_id: int,
                            trace: Trace) -> tuple[list[Message], ErrorEvent | None]:
        """The session's history for a turn. A store that fails does not fail the turn: it
        goes on with what the store could still give (``HistoryUnavailable.partial``) or
        none, and the returned error (for the turn's stream) and the trace say so."""
        t0 = monotonic()
        try:
            return await self.load(session_id), None
        except Exception as e:  # noqa: BLE001 - the turn goes on; the error is reported
            partial = e.partial if isinstance(e, HistoryUnavailable) else []
            msg = (f"the conversation history could not be loaded ({e}); this turn goes on "
                   + (f"with the {len(partial)} message(s) this server still holds" if partial
                      else "without it"))
            trace.error("history", msg)
            log.warning("session %s: %s", session_id, msg)
            return partial, ErrorEvent(message=msg, stage="history", recoverable=True,
                                       session_id=session_id, turn_id=turn_id)
        finally:
            trace.add_time("history_load", monotonic() - t0)

    async def save_for_turn(self, session_id: str, turn_id: int, trace: Trace, messages: list[Message],
                            interrupted: bool) -> ErrorEvent | None:
        """Save a finished turn; the error for the turn's stream when the store failed.
        Shielded: a reader that left early (or a barge-in landing now) must not cut a save
        in half; the store's own timeouts bound it."""
        t0 = monotonic()
        try:
            with anyio.CancelScope(shield=True):
                await self.save_turn(session_id, messages, interrupted=interrupted)
            return None
        except Exception as e:  # noqa: BLE001 - the answer was given; the error says what is lost
            msg = f"the turn was not written to the conversation history: {e}"
            trace.error("history", msg)
            log.warning("session %s: %s", session_id, msg)
            return ErrorEvent(message=msg, stage="history", recoverable=True,
                              session_id=session_id, turn_id=turn_id)
        finally:
            trace.add_time("history_save", monotonic() - t0)


class InMemoryHistory:
    """Conversation history kept in process (the default). See ``omni_agent.memory`` for
    a persistent history with a token budget, and ``RedisHistory`` for one shared by
    several agent servers.

    It has both shapes of this module: the sync methods for scripts, and async ones the
    agent awaits inline — a dict needs no worker thread (the bus is measured in
    microseconds; a thread hop costs tens of them)."""

    def __init__(self, max_messages: int = 200):
        self.max_messages = max_messages
        self._by_session: dict[str, list[Message]] = {}

    def load(self, session_id: str) -> list[Message]:
        return list(self._by_session.get(session_id, ()))

    def save_turn(self, session_id: str, messages: list[Message], *, interrupted: bool = False) -> None:
        msgs = self._by_session.setdefault(session_id, [])
        msgs.extend(messages)
        del msgs[: max(0, len(msgs) - self.max_messages)]

    def forget(self, session_id: str) -> None:
        """Delete the session's history."""
        self._by_session.pop(session_id, None)

    def revise_last_reply(self, session_id: str, text: str) -> bool:
        """Replace the text of the session's last assistant reply (barge-in: keep only
        what the user heard). Returns False when there is no reply to revise."""
        msgs = self._by_session.get(session_id) or []
        for i in range(len(msgs) - 1, -1, -1):
            m = msgs[i]
            if m.role == "assistant" and not m.tool_calls:
                msgs[i] = Message("assistant", text)
                return True
        return False

    async def aload(self, session_id: str) -> list[Message]:
        return self.load(session_id)

    async def asave_turn(self, session_id: str, messages: list[Message], *, interrupted: bool = False) -> None:
        self.save_turn(session_id, messages, interrupted=interrupted)

    async def aforget(self, session_id: str) -> None:
        self.forget(session_id)

    async def arevise_last_reply(self, session_id: str, text: str) -> bool:
        return self.revise_last_reply(session_id, text)
