"""The shared Qwen3-Omni model: one loaded checkpoint that a Thinker and a Talker both use.

:class:`Qwen3OmniModel` holds the weights and processors (loaded lazily by
:mod:`.loading`), the one worker thread per service, and the Thinker-to-Talker hand-off:
the :class:`TalkerPrompt` of each ``(session_id, turn_id)``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...thinker import Message
from .loading import load_checkpoint, model_has_talker, patch_talker_config
from .prompt import FALLBACK_TEMPLATE, build_inputs

__all__ = ["Qwen3OmniModel", "TalkerPrompt"]


@dataclass
class TalkerPrompt:
    """What the Talker needs from one Thinker prompt (kept per session and turn).

    ``user_ids`` / ``user_states`` / ``user_media`` are the user-turn positions of the
    prompt: token ids, and per position the Thinker's input embedding (text) or its hidden
    state at ``accept_hidden_layer`` (audio / image / video). ``assistant_ids`` is the
    prompt's tail from the last ``<|im_start|>assistant``. ``rope`` holds the media grids
    the Talker's 3-D positions need.
    """

    user_ids: Any
    user_states: Any
    user_media: Any
    assistant_ids: Any
    rope: dict[str, Any] = field(default_factory=dict)


class Qwen3OmniModel:
    """One loaded Qwen3-Omni checkpoint, shared by :class:`Qwen3OmniThinker` and :class:`Qwen3OmniTalker`.

    ``model`` is a local directory (or a hub id already in the local cache: nothing is
    downloaded). ``talker=True`` loads the Talker and Code2Wav too; a Talker built on this
    object asks for them itself, as long as that happens before the first turn loads the
    weights. ``device`` is "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"; ``dtype``
    "auto" (bfloat16 on GPU, float32 on CPU), "bfloat16", "float16" or "float32".
    ``threads`` sets torch's intra-op threads on CPU (1 is fastest on small machines).
    ``device_map="auto"`` spreads the weights over several GPUs; ``attn_implementation``
    (e.g. "flash_attention_2") is passed to transformers.

    The Thinker and the Talker each run on one worker thread of their own, so a turn's
    speech is synthesized while the Thinker is still writing.
    """

    _shared: dict[tuple[str, str, str], "Qwen3OmniModel"] = {}
    _shared_lock = threading.Lock()

    def __init__(self, model: str | os.PathLike | None = None, *, talker: bool = False,
                 device: str = "auto", dtype: str = "auto", threads: int | None = 1,
                 attn_implementation: str | None = None, device_map: str | None = None,
                 video_fps: float = 2.0,
                 max_video_frames: int = 32, video_max_pixels: int | None = None,
                 max_prompts: int = 32):
        self.path = str(model) if model is not None else None
        self.want_talker = talker
        self.device_name = device
        self.dtype_name = dtype
        self.threads = threads
        self.attn_implementation = attn_implementation
        self.device_map = device_map
        self.video_fps = video_fps
        self.max_video_frames = max_video_frames
        self.video_max_pixels = video_max_pixels
        self.model: Any = None
        self.tokenizer: Any = None
        self.feature_extractor: Any = None
        self.image_processor: Any = None
        self.chat_template: str | None = None
        self._load_lock = threading.Lock()
        self._prompts: OrderedDict[tuple[str, int], TalkerPrompt] = OrderedDict()
        self._prompts_lock = threading.Lock()
        self._max_prompts = max_prompts
        self._executors: dict[str, concurrent.futures.ThreadPoolExecutor] = {}

    # ------------------------------------------------------------------ construction

    @classmethod
    def shared(cls, model: str | os.PathLike, *, device: str = "auto", dtype: str = "auto",
               **kwargs: Any) -> "Qwen3OmniModel":
        """The process-wide instance for this checkpoint, device and dtype.

        A Thinker and a Talker configured with the same ``model`` path (e.g. in TOML) get
        the same object, so the weights are loaded once.
        """
        key = (str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else str(model),
               device, dtype)
        with cls._shared_lock:
            inst = cls._shared.get(key)
            if inst is None:
                inst = cls._shared[key] = cls(model, device=device, dtype=dtype, **kwargs)
            return inst

    @classmethod
    def from_parts(cls, model: Any, tokenizer: Any, *, feature_extractor: Any = None,
                   image_processor: Any = None, chat_template: str | None = None,
                   threads: int | None = 1, **kwargs: Any) -> "Qwen3OmniModel":
        """Wrap an already built ``Qwen3OmniMoeForConditionalGeneration`` and its processors."""
        inst = cls(None, talker=bool(getattr(model, "has_talker", False)), threads=threads, **kwargs)
        inst.model = model
        inst.tokenizer = tokenizer
        inst.feature_extractor = feature_extractor
        inst.image_processor = image_processor
        inst.chat_template = chat_template or getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE
        patch_talker_config(inst.model)
        return inst

    @classmethod
    def tiny(cls, *, talker: bool = True, seed: int = 0) -> "Qwen3OmniModel":
        """A tiny random-weight model (see :mod:`omni_agent.thinkers.qwen3_omni_tiny`) for tests and benchmarks."""
        from ..qwen3_omni_tiny import tiny_qwen3_omni

        return tiny_qwen3_omni(talker=talker, seed=seed)

    def require_talker(self) -> None:
        """Ask for the Talker and Code2Wav; fails if the weights were loaded without them."""
        if self.model is not None and not self.has_talker:
            raise ConfigError(
                "this Qwen3-Omni model was loaded Thinker-only (no Talker): create the "
                "Qwen3OmniTalker before the first turn, or build Qwen3OmniModel(..., talker=True)")
        self.want_talker = True

    # ------------------------------------------------------------------ loading

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory."""
        return self.model is not None

    @property
    def has_talker(self) -> bool:
        """Whether the loaded weights include the Talker and Code2Wav."""
        return model_has_talker(self.model)

    @property
    def name(self) -> str:
        """A short name for traces: the checkpoint directory's name."""
        return Path(self.path).name if self.path else "qwen3-omni"

    def load(self) -> "Qwen3OmniModel":
        """Load weights, tokenizer and processors (idempotent, thread-safe)."""
        with self._load_lock:
            if self.model is None:
                self._load()
        return self

    async def ensure_loaded(self) -> None:
        """Load the weights on the Thinker's worker thread unless they already are."""
        if self.model is None:
            await asyncio.get_running_loop().run_in_executor(self.executor("thinker"), self.load)

    def _load(self) -> None:
        ck = load_checkpoint(self.path, talker=self.want_talker, device=self.device_name, dtype=self.dtype_name,
                             threads=self.threads, attn_implementation=self.attn_implementation,
                             device_map=self.device_map)
        self.tokenizer = ck.tokenizer
        self.feature_extractor = ck.feature_extractor
        self.image_processor = ck.image_processor
        self.chat_template = ck.chat_template
        self.model = ck.model  # last: `loaded` turns true only with everything in place

    # ------------------------------------------------------------------ services' plumbing

    def executor(self, role: str) -> concurrent.futures.ThreadPoolExecutor:
        """The single worker thread of ``role`` ("thinker" or "talker")."""
        ex = self._executors.get(role)
        if ex is None:
            ex = self._executors[role] = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"qwen3-omni-{role}")
        return ex

    def remember_prompt(self, session_id: str, turn_id: int, prompt: TalkerPrompt) -> None:
        """Keep the Talker's view of the prompt of ``(session_id, turn_id)`` (latest round wins)."""
        with self._prompts_lock:
            key = (session_id, turn_id)
            self._prompts.pop(key, None)
            self._prompts[key] = prompt
            while len(self._prompts) > self._max_prompts:
                self._prompts.popitem(last=False)

    def recall_prompt(self, session_id: str, turn_id: int) -> TalkerPrompt | None:
        """The prompt the Thinker last saw for this session and turn, if any."""
        with self._prompts_lock:
            return self._prompts.get((session_id, turn_id))

    def close(self) -> None:
        """Stop the worker threads (work not yet started is cancelled)."""
        for ex in self._executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()

    # ------------------------------------------------------------------ prompt building

    def build_inputs(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Render the conversation and turn its media into model inputs (torch tensors).

        Raises :class:`UnsupportedInputError` for media the loaded processors cannot read.
        """
        return build_inputs(self, messages, tools)
