"""Uploaded audio is decoded away from the server process.

Decoding an upload is the one heavy thing a client can ask the agent server to do with a
single small request: a compressed file may legitimately hold 40 minutes of audio (and a
hostile one claims more: it is stopped at the cap while it decodes). Done on the server's
own threads it takes CPU from every live session and leaves its memory to the allocator
of the server process. So uploads are decoded in two worker processes of their own, at the
lowest CPU priority (Linux ``SCHED_IDLE``, else ``nice`` 19): the live sessions keep the
cores, the decode's memory comes and goes with the worker, and a flood of uploads waits.

The workers start on the first upload (or at ``warm()``), stop with the server
(``shutdown()``) or as soon as their parent process is gone, and hand back 16-bit PCM
(half the bytes of float samples).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import threading
import time

__all__ = ["decode_upload", "warm", "shutdown"]

_WORKERS = 2
_pool: concurrent.futures.ProcessPoolExecutor | None = None
_lock = threading.Lock()


def _init_worker(parent: int) -> None:
    # Background work: on Linux SCHED_IDLE (it runs only on CPU time nobody else wants),
    # elsewhere the lowest nice level.
    try:
        # Linux only: the ignore is for the type check on other platforms.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined, unused-ignore]
    except (AttributeError, OSError):
        try:
            os.nice(19)
        except OSError:  # not allowed here: run at the normal priority
            pass

    def watch() -> None:
        # A worker outlives a server that was killed: it leaves as soon as its parent does.
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="omni-parent-watch", daemon=True).start()


def _decode(body: bytes, sample_rate: int, max_seconds: float, what: str) -> tuple[bytes, int]:
    from ..audio import decode_audio, float_to_pcm16

    samples, rate = decode_audio(body, sample_rate=sample_rate, max_seconds=max_seconds, what=what)
    return float_to_pcm16(samples), rate


def _ready() -> bool:
    import omni_agent.audio  # noqa: F401 - imports numpy, soundfile and soxr once, up front

    return True


def _get_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            # spawn: a fork of a process running an event loop and threads is not safe.
            _pool = concurrent.futures.ProcessPoolExecutor(
                _WORKERS, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(os.getpid(),))
        return _pool


def shutdown() -> None:
    """Stop the workers (the server is shutting down); a later upload starts new ones."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


async def warm() -> None:
    """Start the workers now (and import the decoders in them), not on the first upload."""
    loop = asyncio.get_running_loop()
    pool = _get_pool()
    await asyncio.gather(*(loop.run_in_executor(pool, _ready) for _ in range(_WORKERS)))


async def decode_upload(body: bytes, *, sample_rate: int, max_seconds: float,
                        what: str = "uploaded audio") -> tuple[bytes, int]:
    """Decode ``body`` (an audio file) to int16 mono PCM at ``sample_rate`` in a worker
    process, refusing it while decoding once it passes ``max_seconds``
    (:class:`~omni_agent.audio.AudioTooLongError`). Returns ``(pcm, rate)``."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_get_pool(), _decode, body, sample_rate, max_seconds, what)
