"""omni_agent.bridge: a worker thread's items on the event loop, stopped when the consumer leaves."""

import threading

import pytest

from omni_agent.bridge import iterate_in_thread


async def test_closing_the_stream_early_stops_the_worker_and_closes_its_iterator():
    closed = threading.Event()
    made = []

    def tokens():
        try:
            for i in range(10_000):
                made.append(i)
                yield i
        finally:
            closed.set()

    stream = iterate_in_thread(tokens, max_ahead=2)
    got = [await stream.__anext__(), await stream.__anext__()]
    await stream.aclose()
    assert got == [0, 1]
    assert closed.wait(2.0), "the worker's iterator was not closed after the consumer left"
    assert len(made) < 10, f"the worker ran on after the consumer left ({len(made)} items made)"


async def test_an_error_on_the_worker_is_raised_to_the_consumer():
    def tokens():
        yield "a"
        raise ValueError("model failed")

    got = []
    with pytest.raises(ValueError, match="model failed"):
        async for t in iterate_in_thread(tokens):
            got.append(t)
    assert got == ["a"]
