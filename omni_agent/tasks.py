"""Task groups the way this project uses them (anyio, structured concurrency).

Every task here has an owner: a turn, a live session or a server connection opens a
:func:`task_group`, starts its tasks in it, and leaving the block cancels what is left and
waits for it. The tasks themselves report their failures as events, so when a group fails
it is almost always because of the one exception raised in the owner's own block —
:func:`task_group` gives that exception back as it was raised instead of wrapped in an
``ExceptionGroup``, so callers can keep catching the errors they know.
"""

from __future__ import annotations

import contextlib
import sys
from typing import AsyncIterator

import anyio
from anyio.abc import TaskGroup

if sys.version_info < (3, 11):  # pragma: no cover - anyio brings the backport
    from exceptiongroup import BaseExceptionGroup

__all__ = ["task_group", "single_exception"]


def single_exception(group: BaseException) -> BaseException:
    """The one exception inside (nested) one-member exception groups; else the group."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """``anyio.create_task_group()``, re-raising a lone exception unwrapped."""
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        raise single_exception(group) from None
