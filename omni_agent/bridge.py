"""One bridge from a worker thread to the event loop, for every backend that makes tokens or
audio on a thread (a model's generate loop, a C library's synthesis callback).

::

    def work(emit):                      # runs on a worker thread
        for token in model.generate(...):
            if emit(token):              # True: the consumer has gone, stop now
                return

    async for token in from_thread(work):
        ...

Why one helper: the thread must never block the loop, must stop soon after the consumer
leaves (barge-in), and must not run unboundedly ahead of a slow consumer. Each item costs
one ``call_soon_threadsafe`` (no round trip through the loop, measured fastest of the three
bridges this project had); ``max_ahead`` items may be in flight before the worker waits.
Closing the consumer sets the stop flag and returns at once: the worker ends after its
current item, on its own thread, and never touches the loop again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from typing import Any, AsyncGenerator, Callable, Iterable, TypeVar

__all__ = ["from_thread", "iterate_in_thread", "WorkerClosed"]


class WorkerClosed(RuntimeError):
    """The thread pool was shut down before the work could start (the backend was closed)."""

T = TypeVar("T")

_ITEM, _END, _ERROR = 0, 1, 2


async def from_thread(work: Callable[[Callable[[T], bool]], Any], *,
                      executor: concurrent.futures.Executor | None = None,
                      max_ahead: int | None = 8, join: bool = False) -> AsyncGenerator[T, None]:
    """Run ``work(emit)`` on a worker thread and yield what it emits, in order.

    ``emit(item)`` hands one item to the loop and returns True when the consumer has gone
    (the worker should return). It waits while ``max_ahead`` items are not yet consumed
    (``None``: never waits — for a library that must not be paused while it holds a lock).
    An exception raised by ``work`` is re-raised here. ``executor``: the thread pool to use
    (default: the loop's). ``join``: when closed early, wait for the worker to return
    (for work that holds a lock the next call needs and stops within milliseconds).
    """
    loop = asyncio.get_running_loop()
    # No maxsize: the semaphore bounds it (at most max_ahead items, plus the end marker);
    # with max_ahead=None the caller's work is bounded itself (one clause's audio).
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    slots = threading.Semaphore(max_ahead) if max_ahead else None
    stop = threading.Event()

    def send(kind: int, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody is listening any more
            stop.set()

    def emit(item: T) -> bool:
        if slots is not None:
            while not slots.acquire(timeout=0.05):
                if stop.is_set():
                    return True
        if stop.is_set():
            return True
        send(_ITEM, item)
        return stop.is_set()

    def run() -> None:
        try:
            if not stop.is_set():
                work(emit)
            send(_END, None)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, re-raised there
            send(_ERROR, e)

    job = loop.run_in_executor(executor, run)

    def done(f: asyncio.Future[None]) -> None:  # on the loop's thread
        if f.cancelled():  # never ran (the pool was shut down): nothing else will come
            queue.put_nowait((_ERROR, WorkerClosed("the worker was closed before it ran")))
        else:
            # The outcome travels through the queue; retrieving it here keeps an
            # abandoned job from logging "exception was never retrieved".
            f.exception()

    job.add_done_callback(done)
    try:
        while True:
            kind, value = await queue.get()
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            if slots is not None:
                slots.release()
            yield value
    finally:
        stop.set()
        if join and not job.done():
            await asyncio.shield(job)


async def iterate_in_thread(make_items: Callable[[], Iterable[T]], *,
                            executor: concurrent.futures.Executor | None = None,
                            max_ahead: int | None = 8) -> AsyncGenerator[T, None]:
    """Iterate ``make_items()`` (a blocking iterator: a model's token streamer) on a worker
    thread and yield its items here; see :func:`from_thread`."""

    def work(emit: Callable[[T], bool]) -> None:
        items = make_items()
        try:
            for item in items:
                if emit(item):
                    return
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    # Closed with this one (not left to the garbage collector): the worker is told to stop now.
    async with contextlib.aclosing(from_thread(work, executor=executor, max_ahead=max_ahead)) as items:
        async for item in items:
            yield item
