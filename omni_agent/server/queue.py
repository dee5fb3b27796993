"""A bounded wait for a backend that can run only so many requests at once.

A local model runs one generation at a time; requests beyond that wait their turn in
arrival order, up to ``max_waiting`` of them, each for at most ``timeout`` seconds. A
request past either bound is refused at once (:class:`QueueFull`, :class:`QueueTimeout`)
with an estimate of when to retry, instead of piling up without limit::

    queue = RequestQueue(max_running=1, max_waiting=16)
    waited = await queue.acquire(timeout=60)     # raises QueueFull / QueueTimeout
    try:
        ...                                        # run the request
    finally:
        queue.release()

Everything runs on one event loop (a server's), so plain counters are enough; the
waiters' events are made inside the loop that waits.
"""

from __future__ import annotations

import collections
import math
import time

import anyio

__all__ = ["RequestQueue", "QueueFull", "QueueTimeout"]


class QueueFull(Exception):
    """Every running slot and every waiting place is taken; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class QueueTimeout(QueueFull):
    """The request waited ``timeout`` seconds without getting a slot."""


class RequestQueue:
    """At most ``max_running`` requests at once (None: no bound), ``max_waiting`` more
    waiting in arrival order. ``running`` / ``waiting`` say how many are, now."""

    def __init__(self, max_running: int | None, max_waiting: int):
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.running = 0
        self._waiters: collections.deque[anyio.Event] = collections.deque()
        self._mean_seconds: float | None = None  # moving average of a request's duration

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def retry_after(self) -> int:
        """Whole seconds until a place is likely free: the mean request time times the
        requests ahead, shared over the running slots (1 before anything finished)."""
        if self._mean_seconds is None or not self.max_running:
            return 1
        ahead = self.waiting + 1
        return max(1, min(600, math.ceil(self._mean_seconds * ahead / self.max_running)))

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits for it; never waits."""
        if self.max_running is None or (self.running < self.max_running and not self._waiters):
            self.running += 1
            return True
        return False

    async def acquire(self, timeout: float) -> float:
        """Wait for a slot; returns the seconds waited. Raises :class:`QueueFull` when no
        place is left, :class:`QueueTimeout` after ``timeout`` seconds of waiting."""
        t0 = time.monotonic()
        if self.try_acquire():
            return 0.0
        if len(self._waiters) >= self.max_waiting:
            raise QueueFull(f"the model is busy: {self.running} request(s) running and "
                            f"{self.waiting} waiting, the most this server queues; retry "
                            f"in {self.retry_after()} s", self.retry_after())
        ev = anyio.Event()
        self._waiters.append(ev)
        try:
            with anyio.fail_after(timeout):
                await ev.wait()
        except BaseException as e:
            if ev in self._waiters:
                self._waiters.remove(ev)
            elif ev.is_set():
                self.release()  # a slot was handed over as we left: pass it on
            if isinstance(e, TimeoutError):
                raise QueueTimeout(f"the model stayed busy for {timeout:g} s while this request "
                                   f"waited; retry in {self.retry_after()} s",
                                   self.retry_after()) from None
            raise
        return time.monotonic() - t0

    def release(self, seconds: float | None = None) -> None:
        """Give the slot back (to the first waiter, if any). ``seconds``: how long the
        request ran, for the retry estimate."""
        if seconds is not None:
            m = self._mean_seconds
            self._mean_seconds = seconds if m is None else 0.8 * m + 0.2 * seconds
        if self._waiters:
            self._waiters.popleft().set()  # the slot passes straight on: running stays the same
            return
        self.running = max(0, self.running - 1)
