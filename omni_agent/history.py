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
the agent reports it as a recoverable ``ErrorEvent`` with ``stage="history"``.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import anyio.to_thread

from .errors import OmniAgentError
from .thinker import Message

__all__ = ["History", "AsyncHistory", "HistoryUnavailable", "HistoryCalls"]


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
        self._aforget = getattr(store, "aforget", None) if self._async else None
        self._arevise = getattr(store, "arevise_last_reply", None) if self._async else None
        self._forget = getattr(store, "forget", None)
        self._revise = getattr(store, "revise_last_reply", None)

    async def load(self, session_id: str) -> list[Message]:
        if self._async:
            return await self.store.aload(session_id)  # type: ignore[union-attr]
        return await anyio.to_thread.run_sync(self.store.load, session_id)  # type: ignore[union-attr]

    async def save_turn(self, session_id: str, messages: list[Message], *, interrupted: bool = False) -> None:
        if self._async:
            await self.store.asave_turn(session_id, messages, interrupted=interrupted)  # type: ignore[union-attr]
            return
        save = self.store.save_turn  # type: ignore[union-attr]
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
