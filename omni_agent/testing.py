"""Honest test doubles for users' own tests: a scripted Thinker and a recording Talker.

They run the real bus, segmenter and agent code; only the model is replaced::

    thinker = ScriptedThinker(["Hello ", "world."])
    talker = RecordingTalker()
    agent = Agent(thinker=thinker, talker=talker, middleware=[MyFilter()])
    agent.session().ask("hi")
    assert talker.spoken == ["Hello world."]
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
from typing import Any, AsyncIterator, Callable, Iterable, Sequence, Union, cast

from .events import AudioChunk, Event, Finish, ReasoningDelta, TextDelta, ToolCall, Utterance
from .thinker import ThinkerRequest

__all__ = ["ScriptedThinker", "RecordingTalker", "Reply", "words", "word_match"]

def words(text: str) -> list[str]:
    """Lower-case words of ``text`` without punctuation, whole numbers spelled out ("4" ->
    "four", "81" -> "eighty one": whisper writes either), for comparing transcripts."""
    import re

    from num2words import num2words

    text = re.sub(r"\b\d{1,9}\b", lambda m: " " + num2words(int(m[0])) + " ", text.lower())
    return re.sub(r"[^\w' ]+", " ", text.replace("-", " ")).split()


def word_match(heard: str, said: str) -> float:
    """How much of ``said`` is in ``heard``, in order: 1.0 is every word (a transcript
    check that tolerates one misheard word, since neural voices are not deterministic)::

        assert word_match(asr_text, "What is the capital of France?") >= 0.8
    """
    from difflib import SequenceMatcher

    a, b = words(heard), words(said)
    if not b:
        return 1.0 if not a else 0.0
    matched = sum(m.size for m in SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks())
    return matched / len(b)


# One scripted reply: a string (streamed as one delta), a list of deltas, or a list of
# events / strings mixed; or a callable that builds the reply from the request.
Reply = Union[str, Sequence[Union[str, Event, dict]], Callable[[ThinkerRequest], Any]]


class ScriptedThinker:
    """A Thinker that streams scripted replies, one per generation round, in order.

    ``replies`` items may be a string, a list of string deltas, a list mixing strings and
    events (``ToolCall(...)``, ``ReasoningDelta(...)``) or dicts ``{"tool_call": {"name",
    "arguments"}}``, or a callable ``request -> reply``. When the script runs out, the last
    reply repeats (or ``default`` when given). ``delay`` seconds pass between deltas.
    ``requests`` keeps every request it got, so tests can check what the Thinker saw.

    It plays a model that says exactly what was scripted, and never bends the script to
    the request: with ``tool_choice="none"`` a scripted tool call is still made, and a
    ``response_format`` is not checked — so a test can show that the code around it (the
    agent, a server) keeps those promises itself. What it can say truthfully, it says:
    every reply ends with a :class:`~omni_agent.events.Finish` ("tool_calls" when the
    script called a tool, else "stop", or the reason a scripted ``Finish`` gives; no token
    counts: a script has no tokenizer), and with ``request.logprobs`` each text delta
    carries one entry of log-probability 0.0 (the script is certain of every word).
    ``supports`` is what a server may ask of it (default: ``response_format``,
    ``tool_choice`` and ``logprobs``, since the script is the answer); pass ``supports=()``
    to play a backend that can keep none of them.
    """

    name = "scripted"

    def __init__(self, replies: Iterable[Reply] | Reply = (), *, delay: float = 0.0,
                 accepts: Iterable[str] = ("text", "image", "audio", "video"),
                 default: Reply | None = None,
                 supports: Iterable[str] = ("response_format", "tool_choice", "logprobs")):
        # One string or callable is one reply; any other iterable is the list of replies (a
        # reply made of parts goes in a list of its own: [["Hi", ToolCall(...)]]).
        one = isinstance(replies, str) or callable(replies)
        self.replies: list[Reply] = [cast(Reply, replies)] if one else list(cast(Iterable[Reply], replies))
        self.delay = delay
        self.accepts = frozenset(accepts)
        self.supports = frozenset(supports)
        self.default = default
        self.requests: list[ThinkerRequest] = []
        self._i = 0

    def _next(self, request: ThinkerRequest) -> Any:
        if self._i < len(self.replies):
            reply = self.replies[self._i]
            self._i += 1
        elif self.default is not None:
            reply = self.default
        elif self.replies:
            reply = self.replies[-1]
        else:
            reply = ""
        return reply(request) if callable(reply) else reply

    async def stream(self, request: ThinkerRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        reply = self._next(request)
        items = [reply] if isinstance(reply, str) else list(reply)
        n = 0
        called = False
        for item in items:
            if self.delay and n:
                await asyncio.sleep(self.delay)
            n += 1
            if isinstance(item, str):
                if item.startswith("<think>") and item.endswith("</think>"):
                    yield ReasoningDelta(item[7:-8])
                else:
                    yield TextDelta(item, logprobs=_certain(item, request.logprobs))
            elif isinstance(item, dict) and "tool_call" in item:
                tc = item["tool_call"]
                args = tc.get("arguments", {})
                called = True
                yield ToolCall(id=tc.get("id", f"call_{n}"), name=tc["name"],
                               arguments=args if isinstance(args, str) else json.dumps(args))
            elif isinstance(item, Finish):
                yield item  # the script says how it ended
                return
            elif isinstance(item, Event):
                called = called or isinstance(item, ToolCall)
                yield item
            else:
                raise TypeError(f"cannot script {item!r}: use a string, an event or a tool_call dict")
        yield Finish(reason="tool_calls" if called else "stop")

    async def aclose(self) -> None:
        return None


def _certain(text: str, top: int | None) -> list[dict[str, Any]] | None:
    """The logprob entry of a scripted delta: probability 1 (the script is certain)."""
    if top is None or not text:
        return None
    entry = {"token": text, "logprob": 0.0, "bytes": list(text.encode("utf-8"))}
    return [{**entry, "top_logprobs": [dict(entry)] if top else []}]


class RecordingTalker:
    """A Talker that records what it was asked to say and returns a short tone per clause.

    ``spoken`` lists the utterance texts in order; ``utterances`` the Utterance events.
    ``seconds_per_char`` sets the length of the tone (so barge-in tests have audio to
    cut); ``realtime`` makes it take as long as the audio lasts (a slow Talker);
    ``chunk_ms`` sets the chunk size. The audio is a real sine tone, not silence.
    """

    name = "recording"

    def __init__(self, sample_rate: int = 16000, *, seconds_per_char: float = 0.01,
                 chunk_ms: int = 100, realtime: float = 0.0):
        self.sample_rate = sample_rate
        self.seconds_per_char = seconds_per_char
        self.chunk_ms = chunk_ms
        self.realtime = realtime  # 1.0: as slow as real time; 10.0: ten times slower
        self.spoken: list[str] = []
        self.utterances: list[Utterance] = []
        self.cancelled = 0

    async def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]:
        self.spoken.append(utterance.text)
        self.utterances.append(utterance)
        total = max(1, int(len(utterance.text) * self.seconds_per_char * self.sample_rate))
        step = max(1, self.sample_rate * self.chunk_ms // 1000)
        done = 0
        try:
            while done < total:
                n = min(step, total - done)
                pcm = struct.pack(
                    f"<{n}h",
                    *(int(8000 * math.sin(2 * math.pi * 440 * (done + i) / self.sample_rate))
                      for i in range(n)),
                )
                done += n
                if self.realtime:
                    await asyncio.sleep(n / self.sample_rate * self.realtime)
                yield AudioChunk(pcm=pcm, sample_rate=self.sample_rate,
                                 utterance_index=utterance.index, final=done >= total)
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def aclose(self) -> None:
        return None
