"""What the local backends (transformers, llama.cpp) share: turning a request into the
message dicts a chat template renders, refusing input they cannot read, and the worker
thread that runs their generations."""

from __future__ import annotations

import concurrent.futures
import json
import threading
from typing import Any, AsyncGenerator, AsyncIterator, Callable, Iterable

from ..bridge import WorkerClosed, from_thread
from ..errors import ThinkerError, UnsupportedInputError
from ..events import AudioPart, TextPart
from ..thinker import Message, ThinkerRequest

__all__ = ["message_text", "chat_messages", "template_tool_fields", "check_input",
           "GenerationWorker"]


def message_text(m: Message) -> str:
    """The text of a message: its text parts, and the transcripts of its audio parts."""
    if isinstance(m.content, str):
        return m.content
    out = []
    for p in m.content:
        if isinstance(p, TextPart):
            out.append(p.text)
        elif isinstance(p, AudioPart) and p.transcript:
            out.append(p.transcript)
    return "\n".join(out)


def _json_or_text(s: Any) -> Any:
    if isinstance(s, str):
        try:
            return json.loads(s)
        except ValueError:
            return s
    return s


def template_tool_fields(m: Message) -> dict[str, Any]:
    """The tool-call fields of a message as chat templates expect them (an assistant's
    ``tool_calls`` with parsed arguments; a tool result's ``tool_call_id`` and ``name``)."""
    d: dict[str, Any] = {}
    if m.tool_calls:
        d["tool_calls"] = [{"id": c.get("id"), "type": "function", "function": {
            "name": c.get("name"), "arguments": _json_or_text(c.get("arguments", "{}"))}}
            for c in m.tool_calls]
    if m.role == "tool":
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.name:
            d["name"] = m.name
    return d


def chat_messages(request: ThinkerRequest) -> list[dict[str, Any]]:
    """The request's messages as chat-template dicts (role, text content, tool fields)."""
    chat: list[dict[str, Any]] = []
    for m in request.messages:
        d: dict[str, Any] = {"role": m.role, "content": message_text(m)}
        d.update(template_tool_fields(m))
        chat.append(d)
    return chat


def check_input(request: ThinkerRequest, accepts: Iterable[str], model_name: str, backend: str) -> None:
    """Raise :class:`UnsupportedInputError` for a part the model cannot read (audio the
    ears transcribed is read as its transcript)."""
    accepts = frozenset(accepts)
    for m in request.messages:
        if isinstance(m.content, str):
            continue
        for p in m.content:
            if p.kind in accepts or p.kind == "text":
                continue
            if isinstance(p, AudioPart) and p.transcript:
                continue
            raise UnsupportedInputError(
                f"{model_name} ({backend} backend) takes {', '.join(sorted(accepts))} "
                f"only and cannot read {p.kind} input. Use a Thinker that accepts {p.kind} "
                "(e.g. backend 'openai' against a multimodal server such as vLLM-Omni), "
                f"or send the turn without the {p.kind}.")


class GenerationWorker:
    """The worker thread of a local backend: one generation at a time (a small model would
    only compete with itself for the same cores, and a llama.cpp context is not
    thread-safe), its events handed to the loop through the shared bridge, a stop flag per
    generation that the consumer leaving (barge-in) or :meth:`close` sets.

    ``generate(send, stop)`` runs in the thread: it hands each event to ``send`` (which
    returns True once the consumer has gone) and checks ``stop`` between tokens."""

    def __init__(self, thread_name: str, initializer: Callable[[], None] | None = None,
                 max_ahead: int = 64):
        self.thread_name = thread_name
        self.initializer = initializer
        self.max_ahead = max_ahead  # events the thread may run ahead of a slow consumer
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._active: set[threading.Event] = set()

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread (started on first use; a new one after :meth:`close`)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=self.thread_name, initializer=self.initializer)
        return self._executor

    async def stream(self, generate: Callable[[Callable[[Any], bool], threading.Event], None],
                     request: ThinkerRequest, model_name: str) -> AsyncIterator[Any]:
        """Run ``generate`` in the thread; yield its events, stamped with the request's ids."""
        stop = threading.Event()
        self._active.add(stop)
        events: AsyncGenerator[Any, None] = from_thread(lambda send: generate(send, stop),
                                                       executor=self.executor(),
                                                       max_ahead=self.max_ahead)
        try:
            async for item in events:
                item.session_id = request.session_id
                item.turn_id = request.turn_id
                yield item
        except WorkerClosed:
            raise ThinkerError(f"{model_name} was closed before it could answer") from None
        finally:
            stop.set()
            self._active.discard(stop)
            await events.aclose()

    def close(self) -> None:
        """Stop the thread: running generations stop at their next token."""
        for stop in list(self._active):
            stop.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
