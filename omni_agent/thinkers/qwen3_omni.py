"""Qwen3-Omni on transformers: the model's own Thinker and Talker, with our bus between them.

``Qwen3OmniMoeForConditionalGeneration.generate()`` runs the Thinker to the end, then the
Talker, then Code2Wav — nothing can step in, and it speaks exactly what the Thinker wrote.
Here the same weights serve two separate services:

* :class:`Qwen3OmniThinker` reads text, audio, images and video and streams its answer
  onto the bus token by token (its own generation loop on a worker thread that runs a few
  tokens ahead of the bus);
* :class:`Qwen3OmniTalker` speaks the text that *leaves* the bus — rewritten by
  middleware or not — in the model's own voice (speakers Ethan, Chelsie, Aiden), streaming
  24 kHz audio as codec frames are generated.

Both share one loaded model through :class:`Qwen3OmniModel`::

    omni = Qwen3OmniModel("/models/Qwen3-Omni-30B-A3B-Instruct", talker=True, device="cuda")
    agent = Agent(thinker=Qwen3OmniThinker(omni), talker=Qwen3OmniTalker(omni, speaker="Chelsie"),
                  middleware=[MySpeechRewriter()])

**How the Talker can speak rewritten text.** The Talker reads the answer only through the
Thinker's token *embeddings*; the Thinker's deeper hidden states enter only at the audio /
image / video positions of the prompt. A teacher-forced Thinker forward over prompt +
rewritten answer therefore reduces to (a) the prompt's prefill, which the Thinker already
ran for this turn, and (b) an embedding lookup of the rewritten answer. The Thinker keeps
what the Talker needs from its prefill (:class:`TalkerPrompt`), keyed by the request's
``(session_id, turn_id)``; the Talker finds it by the utterance's ids. Unchanged text gives
the same codes and waveform as ``generate()``; an utterance with no recorded prompt (a
fallback line before any Thinker round, or text from another Thinker) is spoken without the
user's context.

**Streaming.** Each utterance is one Talker sequence (user context + speaker + the clause,
then the end-of-text marker). Codec frames (80 ms each at 12.5 Hz) are decoded chunk by
chunk with Code2Wav, each window re-reading ``left_context_frames`` earlier frames; chunk
edges are crossfaded over a few milliseconds. The first chunk leaves after
``first_chunk_frames`` frames, so first audio waits for neither the whole answer nor the
whole clause.

**Thinker-only mode** (:class:`Qwen3OmniThinker` without a Talker) loads the checkpoint
with ``enable_audio_output=False``: the Talker and Code2Wav are never built.

The transformers 5.24 audio-in/audio-out bug (``Qwen3OmniMoeTalkerConfig`` has no
``audio_config``, so audio + image/video prompts fail in the Talker's position ids) is
worked around by copying the Thinker's ``audio_config`` onto the Talker config.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import numpy as np

from ..audio import audio_part_samples, float_to_pcm16
from ..bridge import iterate_in_thread
from ..errors import (
    AudioInputError,
    ConfigError,
    ModelNotFoundError,
    OmniAgentError,
    TalkerError,
    ThinkerError,
    UnsupportedInputError,
)
from ..events import AudioChunk, AudioPart, Event, ImagePart, TextPart, Utterance, VideoPart
from ..thinker import Message, ThinkerRequest
from .transformers import template_tool_fields

__all__ = [
    "Qwen3OmniModel",
    "Qwen3OmniThinker",
    "Qwen3OmniTalker",
    "TalkerPrompt",
    "SAMPLE_RATE",
    "SPEAKERS",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000  # Code2Wav's output rate
SPEAKERS = ("Ethan", "Chelsie", "Aiden")
HUB_ID = "Qwen/Qwen3-Omni-30B-A3B-Instruct"

# A ChatML template in Qwen3-Omni's layout, used only when the model directory ships none
# (the tiny test model). The real checkpoint's own template always wins.
_FALLBACK_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'system' and loop.first and tools %}"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}"
    "{% else %}{% for c in m.content %}"
    "{% if c.type == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c.type == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c.text }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% for tc in m.tool_calls or [] %}\n<tool_call>\n{\"name\": \"{{ tc.function.name }}\", "
    "\"arguments\": {{ tc.function.arguments | tojson }}}\n</tool_call>{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# =========================================================================== shared model


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
        inst.chat_template = chat_template or getattr(tokenizer, "chat_template", None) or _FALLBACK_TEMPLATE
        inst._after_load()
        return inst

    @classmethod
    def tiny(cls, *, talker: bool = True, seed: int = 0) -> "Qwen3OmniModel":
        """A tiny random-weight model (see :mod:`.qwen3_omni_tiny`) for tests and benchmarks."""
        from .qwen3_omni_tiny import tiny_qwen3_omni

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
        return self.model is not None

    @property
    def has_talker(self) -> bool:
        m = self.model
        return bool(m is not None and getattr(m, "has_talker", False) and hasattr(m, "talker"))

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else "qwen3-omni"

    def load(self) -> "Qwen3OmniModel":
        """Load weights, tokenizer and processors (idempotent, thread-safe)."""
        with self._load_lock:
            if self.model is None:
                self._load()
        return self

    async def ensure_loaded(self) -> None:
        if self.model is None:
            await asyncio.get_running_loop().run_in_executor(self.executor("thinker"), self.load)

    def _resolve_path(self) -> str:
        if self.path is None:
            raise ModelNotFoundError(
                "no Qwen3-Omni model given: pass model='/path/to/Qwen3-Omni-30B-A3B-Instruct' "
                "(a local checkpoint directory)")
        p = Path(self.path).expanduser()
        if p.is_dir():
            if not (p / "config.json").is_file():
                raise ModelNotFoundError(f"{p} has no config.json: point model= at the checkpoint directory")
            return str(p)
        if p.exists():
            raise ModelNotFoundError(f"{p} is a file: point model= at the checkpoint directory")
        if "/" in self.path and not self.path.startswith((".", "/", "~")):
            try:
                from huggingface_hub import snapshot_download

                return snapshot_download(self.path, local_files_only=True)
            except Exception:
                pass
        raise ModelNotFoundError(
            f"Qwen3-Omni model {self.path!r} not found locally, and nothing is downloaded here. On a "
            f"machine with internet run `huggingface-cli download {HUB_ID} --local-dir DIR` and pass "
            "model=DIR (or serve it with vLLM-Omni and use the vllm-omni backend)")

    def _torch_device_dtype(self) -> tuple[Any, Any]:
        import torch

        dev = self.device_name
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={self.device_name!r} but this torch has no CUDA: use device='cpu'")
        names = {"auto": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
                 "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
        if self.dtype_name not in names:
            raise ConfigError(f"dtype {self.dtype_name!r}: use one of {', '.join(names)}")
        dtype = names[self.dtype_name]
        if dtype is None:
            dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
        return torch.device(dev), dtype

    def _load(self) -> None:
        path = self._resolve_path()
        try:
            from transformers import (
                AutoConfig,
                AutoTokenizer,
                Qwen3OmniMoeForConditionalGeneration,
                WhisperFeatureExtractor,
            )
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ModelNotFoundError(f"the Qwen3-Omni backend needs transformers>=5 and torch "
                                     f"(pip install 'omni-agent[local]'): {e}") from e
        device, dtype = self._torch_device_dtype()
        if device.type == "cpu" and self.threads:
            import torch

            torch.set_num_threads(self.threads)
        t0 = time.monotonic()
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if getattr(config, "model_type", "") != "qwen3_omni_moe":
            raise ModelNotFoundError(f"{path} holds a {getattr(config, 'model_type', '?')!r} model, not "
                                     "qwen3_omni_moe: use the transformers backend for other models")
        # Thinker-only: the Talker and Code2Wav are never built, their weights never read.
        config.enable_audio_output = bool(self.want_talker)
        kw: dict[str, Any] = {"config": config, "dtype": dtype, "local_files_only": True}
        if self.attn_implementation:
            kw["attn_implementation"] = self.attn_implementation
        if self.device_map:  # e.g. "auto": spread over several GPUs (accelerate)
            kw["device_map"] = self.device_map
        elif device.type == "cuda":
            kw["device_map"] = str(device)
        try:
            model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(path, **kw).eval()
        except OSError as e:
            raise ModelNotFoundError(f"cannot load Qwen3-Omni weights from {path}: {e}") from e
        if device.type != "cuda" and not self.device_map:
            model.to(device)
        self.model = model
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.feature_extractor = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)
        try:
            from transformers import AutoImageProcessor

            self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        except Exception as e:  # images then fail with a clear error, the rest works
            log.warning("no image processor for %s (%s): image input disabled", path, e)
        self.chat_template = _read_chat_template(path, self.tokenizer)
        self._after_load()
        log.info("loaded %s (%s, %s, talker=%s) in %.1f s", path, device, dtype, self.has_talker,
                 time.monotonic() - t0)

    def _after_load(self) -> None:
        cfg = self.model.config
        # transformers 5.24: the Talker's 3-D positions read `config.audio_config.n_window`,
        # which its config lacks -> audio + image/video prompts crash with audio output on.
        if getattr(cfg, "talker_config", None) is not None and not hasattr(cfg.talker_config, "audio_config"):
            try:
                cfg.talker_config.audio_config = cfg.thinker_config.audio_config
            except Exception:  # a frozen config: set it on the instance dict
                object.__setattr__(cfg.talker_config, "audio_config", cfg.thinker_config.audio_config)
        if self.has_talker:
            tcfg = self.model.talker.config
            if not hasattr(tcfg, "audio_config"):
                object.__setattr__(tcfg, "audio_config", cfg.thinker_config.audio_config)

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
        for ex in self._executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()

    # ------------------------------------------------------------------ prompt building

    def build_inputs(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Render the conversation and turn its media into model inputs (torch tensors).

        Raises :class:`UnsupportedInputError` for media the loaded processors cannot read.
        """
        import torch

        conv, audios, images, videos = self._conversation(messages)
        tok = self.tokenizer
        try:
            text = tok.apply_chat_template(conv, tools=tools or None, add_generation_prompt=True,
                                           tokenize=False, chat_template=self.chat_template)
        except Exception as e:
            raise ThinkerError(f"the Qwen3-Omni chat template rejected the conversation: {e}") from e
        thinker_cfg = self.model.config.thinker_config
        out: dict[str, Any] = {}
        if audios:
            if self.feature_extractor is None:
                raise UnsupportedInputError("this Qwen3-Omni model has no audio feature extractor")
            feats = self.feature_extractor(audios, sampling_rate=16000, padding=True, truncation=False,
                                           return_attention_mask=True, return_tensors="pt")
            mask = feats["attention_mask"]
            out["input_features"] = feats["input_features"]
            out["feature_attention_mask"] = mask
            counts = [int(n) for n in _audio_token_counts(mask.sum(-1), thinker_cfg.audio_config.n_window)]
            text = _expand(text, _special(tok, "audio_token", "<|audio_pad|>"), counts, "audio")
        if images:
            if self.image_processor is None:
                raise UnsupportedInputError(
                    "image input needs an image processor: install Pillow (pip install pillow)")
            px = self.image_processor(images=images, return_tensors="pt")
            merge = thinker_cfg.vision_config.spatial_merge_size
            out["pixel_values"] = px["pixel_values"]
            out["image_grid_thw"] = px["image_grid_thw"]
            text = _expand(text, _special(tok, "image_token", "<|image_pad|>"),
                           [int(g.prod()) // merge ** 2 for g in px["image_grid_thw"]],
                           "image")
        if videos:
            vcfg = thinker_cfg.vision_config
            pixels, grids, seconds = [], [], []
            for frames in videos:
                pv, grid = _patchify_video(frames, vcfg, self.image_processor, self.video_max_pixels)
                pixels.append(pv)
                grids.append(grid)
                seconds.append(vcfg.temporal_patch_size / self.video_fps)
            out["pixel_values_videos"] = torch.from_numpy(np.concatenate(pixels))
            out["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
            out["video_second_per_grid"] = torch.tensor(seconds)
            text = _expand(text, _special(tok, "video_token", "<|video_pad|>"),
                           [int(np.prod(g)) // vcfg.spatial_merge_size ** 2 for g in grids], "video")
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        out["input_ids"] = enc["input_ids"]
        out["attention_mask"] = enc["attention_mask"]
        dev = self.model.thinker.device
        dtype = self.model.thinker.dtype
        for k, v in list(out.items()):
            if hasattr(v, "to"):
                out[k] = v.to(dev, dtype) if v.is_floating_point() and k != "video_second_per_grid" else v.to(dev)
        return out

    def _conversation(self, messages: list[Message]) -> tuple[list[dict[str, Any]], list, list, list]:
        conv: list[dict[str, Any]] = []
        audios: list[np.ndarray] = []
        images: list[Any] = []
        videos: list[np.ndarray] = []
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        for i, m in enumerate(messages):
            d: dict[str, Any] = {"role": m.role}
            if isinstance(m.content, str):
                d["content"] = m.content
            else:
                parts: list[dict[str, Any]] = []
                for p in m.content:
                    if isinstance(p, TextPart):
                        parts.append({"type": "text", "text": p.text})
                        continue
                    try:
                        if isinstance(p, AudioPart):
                            samples = audio_part_samples(p, 16000)
                        elif isinstance(p, ImagePart):
                            image = _load_image(p)
                        elif isinstance(p, VideoPart):
                            frames = _load_video(p, self.video_fps, self.max_video_frames)
                        else:  # pragma: no cover - Part is a closed union
                            raise UnsupportedInputError(f"cannot read a {type(p).__name__}")
                    except (UnsupportedInputError, AudioInputError) as e:
                        if i == last_user:
                            raise
                        # Media in the history that cannot be read (e.g. the turn that failed
                        # on it) must not fail every later turn of the session.
                        log.warning("skipping unreadable %s in the conversation history: %s", p.kind, e)
                        parts.append({"type": "text", "text": f"[{p.kind} that could not be read]"})
                        continue
                    if isinstance(p, AudioPart):
                        audios.append(samples)
                        parts.append({"type": "audio", "audio": p.url or "audio"})
                    elif isinstance(p, ImagePart):
                        images.append(image)
                        parts.append({"type": "image", "image": p.url or "image"})
                    else:
                        videos.append(frames)
                        parts.append({"type": "video", "video": p.url or "video"})
                d["content"] = parts
            d.update(template_tool_fields(m))
            conv.append(d)
        return conv, audios, images, videos


def _read_chat_template(path: str, tokenizer: Any) -> str:
    # The processor's template (chat_template.jinja / .json) is the one that knows audio,
    # image and video parts; the tokenizer's may be text-only.
    p = Path(path)
    if (p / "chat_template.jinja").is_file():
        return (p / "chat_template.jinja").read_text(encoding="utf-8")
    if (p / "chat_template.json").is_file():
        data = json.loads((p / "chat_template.json").read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("chat_template"):
            return data["chat_template"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    return _FALLBACK_TEMPLATE


def _special(tok: Any, attr: str, default: str) -> str:
    value = getattr(tok, attr, None)
    return value if isinstance(value, str) and value else default


def _audio_token_counts(feature_lengths: Any, n_window: int) -> Any:
    # How many audio tokens the audio tower makes of N mel frames (its convolutions and
    # windowing); the processor and the Thinker's position ids use the same function.
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    return _get_feat_extract_output_lengths(feature_lengths, n_window)


def _expand(text: str, token: str, counts: list[int], what: str) -> str:
    """Repeat the i-th ``token`` placeholder counts[i] times (one per media embedding)."""
    pieces = text.split(token)
    if len(pieces) - 1 != len(counts):
        raise ThinkerError(f"the chat template placed {len(pieces) - 1} {what} placeholder(s) for "
                           f"{len(counts)} {what} input(s)")
    out = [pieces[0]]
    for n, rest in zip(counts, pieces[1:]):
        out.append(token * n)
        out.append(rest)
    return "".join(out)


def _media_bytes(part: Any, what: str) -> bytes:
    if part.data is not None:
        return part.data
    if part.url and not part.url.startswith(("http://", "https://", "data:")):
        p = Path(part.url)
        if not p.is_file():
            raise UnsupportedInputError(f"{what} file not found: {p}")
        return p.read_bytes()
    raise UnsupportedInputError(f"the {what} part has no bytes and no local path (remote URLs are not "
                                "fetched): pass ImagePart.from_file(path) / VideoPart.from_file(path)")


def _load_image(part: ImagePart) -> Any:
    try:
        from PIL import Image
    except ImportError as e:
        raise UnsupportedInputError("image input needs Pillow: pip install pillow") from e
    data = _media_bytes(part, "image")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise UnsupportedInputError(f"the image could not be decoded ({len(data)} bytes): use PNG, "
                                    f"JPEG, WebP or GIF ({e})") from e
    return img.convert("RGB")


def _load_video(part: VideoPart, fps: float, max_frames: int) -> np.ndarray:
    """Decode a video with PyAV into uint8 RGB frames sampled at ``fps`` (at most ``max_frames``)."""
    try:
        import av
    except ImportError as e:
        raise UnsupportedInputError("video input needs PyAV: pip install av") from e
    data = _media_bytes(part, "video")
    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            next_t = 0.0
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else len(frames) / fps
                if t + 1e-6 < next_t:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                next_t += 1.0 / fps
                if len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise UnsupportedInputError(f"the video could not be decoded ({len(data)} bytes): use MP4, "
                                    f"WebM or another common format ({e})") from e
    if not frames:
        raise UnsupportedInputError("the video holds no frames")
    return np.stack(frames)


def _patchify_video(frames: np.ndarray, vcfg: Any, image_processor: Any,
                    max_pixels: int | None) -> tuple[np.ndarray, list[int]]:
    """Frames (T, H, W, 3) uint8 -> flat patches in the layout the vision tower reads.

    The layout of transformers' Qwen2-VL video processor (which needs torchvision, absent
    from CPU installs): frames resized to a multiple of patch * merge, normalized with the
    image processor's mean/std, padded to a multiple of the temporal patch, and cut into
    (t, h/m, w/m, m, m) cubes of C x temporal_patch x patch x patch values.
    """
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    p, m, tp = vcfg.patch_size, vcfg.spatial_merge_size, vcfg.temporal_patch_size
    factor = p * m
    h, w = frames.shape[1:3]
    cap = max_pixels or 128 * factor * factor
    rh, rw = smart_resize(h, w, factor=factor, min_pixels=4 * factor * factor, max_pixels=cap)
    mean = np.array(getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5], np.float32).reshape(1, 3, 1, 1)
    std = np.array(getattr(image_processor, "image_std", None) or [0.5, 0.5, 0.5], np.float32).reshape(1, 3, 1, 1)
    resized = np.stack([np.asarray(Image.fromarray(f).resize((rw, rh), Image.BICUBIC)) for f in frames])
    x = resized.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    x = (x - mean) / std
    if pad := -x.shape[0] % tp:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    t = x.shape[0] // tp
    gh, gw = rh // p, rw // p
    x = x.reshape(t, tp, 3, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(t * gh * gw, 3 * tp * p * p)), [t, gh, gw]


def _model_arg(model: Any, talker: bool, **options: Any) -> Qwen3OmniModel:
    """The shared model for a Thinker / Talker argument (a path, a model, or a Thinker)."""
    if isinstance(model, Qwen3OmniModel):
        omni = model
    elif isinstance(model, Qwen3OmniThinker):
        omni = model.omni
    elif model is None or isinstance(model, (str, os.PathLike)):
        omni = Qwen3OmniModel.shared(model if model is not None else HUB_ID, **options)
    else:
        raise ConfigError(f"model must be a path, a Qwen3OmniModel or a Qwen3OmniThinker, not "
                          f"{type(model).__name__}")
    if talker:
        omni.require_talker()
    return omni



# =========================================================================== Thinker


class _ThinkerRun:
    """One generation round on the Thinker's worker thread: prefill, then one token per step."""

    def __init__(self, omni: Qwen3OmniModel, request: ThinkerRequest, suppress: Iterable[int]):
        import torch

        self.omni = omni
        self.torch = torch
        model = omni.model
        cfg = model.config
        self.thinker = model.thinker
        s = request.settings
        tools = request.tools if request.tools and request.tool_choice != "none" else None
        self.inputs = omni.build_inputs(request.messages, tools)
        self.max_tokens = max(1, int(s.max_tokens))
        self.eos = {int(cfg.im_end_token_id)}
        eos_tok = getattr(omni.tokenizer, "eos_token_id", None)
        if eos_tok is not None:
            self.eos.add(int(eos_tok))
        for name in ("<|endoftext|>",):
            tid = omni.tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid >= 0 and tid != omni.tokenizer.unk_token_id:
                self.eos.add(tid)
        from transformers import LogitsProcessorList, SuppressTokensLogitsProcessor, TemperatureLogitsWarper
        from transformers import TopPLogitsWarper

        dev = self.thinker.device
        procs = LogitsProcessorList()
        sup = sorted(set(suppress) - self.eos)
        if sup:
            procs.append(SuppressTokensLogitsProcessor(sup, device=dev))
        if request.constraint is not None:  # e.g. schema-constrained tool calls
            made = request.constraint(omni.tokenizer)
            if made is not None:
                procs.extend(made if isinstance(made, (list, tuple)) else [made])
        self.sample = s.temperature > 0
        if self.sample:
            procs.append(TemperatureLogitsWarper(s.temperature))
            if s.top_p < 1.0:
                procs.append(TopPLogitsWarper(s.top_p))
        self.procs = procs
        self.gen = None
        if self.sample and s.seed is not None:
            self.gen = torch.Generator(device=dev).manual_seed(int(s.seed))
        self.ids: list[int] = []
        self.prompt_ids: list[int] = []
        self.text = ""
        self.cache: Any = None
        self.logits: Any = None
        self.delta: Any = None
        self.length = 0
        self.prompt: TalkerPrompt | None = None
        self.done = False

    def prefill(self, capture: bool) -> None:
        torch = self.torch
        inp = self.inputs
        ids = inp["input_ids"]
        mask = inp["attention_mask"]
        audio_lengths = inp["feature_attention_mask"].sum(-1) if "feature_attention_mask" in inp else None
        pos3, delta = self.thinker.model.get_rope_index(
            ids, inp.get("image_grid_thw"), inp.get("video_grid_thw"), mask, False, audio_lengths,
            inp.get("video_second_per_grid"))
        self.delta = delta.to(ids.device, torch.long)
        text_pos = torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1)
        kw = {k: v for k, v in inp.items() if k not in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            # No attention mask for one unpadded sequence, as generate() calls the Thinker
            # (a mask selects another attention path, which differs in bfloat16).
            out = self.thinker(input_ids=ids, attention_mask=None,
                               position_ids=torch.cat([text_pos, pos3.to(ids.device, torch.long)]),
                               use_cache=True, output_hidden_states=capture, **kw)
        self.cache = out.cache
        self.logits = out.logits[:, -1, :].float()
        self.length = ids.shape[1]
        self.prompt_ids = ids[0].tolist()
        if capture:
            self.prompt = _talker_prompt(self.omni, inp, out.hidden_states)

    def step(self) -> str | None:
        """Generate until some new text is decoded; None when the answer is over."""
        torch = self.torch
        tok = self.omni.tokenizer
        while not self.done:
            # Processors see prompt + answer, as they do under transformers' generate().
            ids_t = torch.tensor([self.prompt_ids + self.ids], dtype=torch.long, device=self.logits.device)
            scores = self.procs(ids_t, self.logits)
            if self.sample:
                probs = torch.softmax(scores, dim=-1)
                nxt = int(torch.multinomial(probs, 1, generator=self.gen)[0, 0])
            else:
                nxt = int(torch.argmax(scores, dim=-1)[0])
            if nxt in self.eos:
                self.done = True
                break
            self.ids.append(nxt)
            if len(self.ids) >= self.max_tokens:
                self.done = True
            else:
                self._forward(nxt)
            text = tok.decode(self.ids, skip_special_tokens=True)
            # Hold a torn multi-byte character until its last byte arrives.
            if text.endswith("\ufffd") and not self.done:
                continue
            new, self.text = text[len(self.text):], text
            if new:
                return new
        return None

    def _forward(self, token: int) -> None:
        torch = self.torch
        dev = self.logits.device
        past = self.length
        pos = torch.full((4, 1, 1), past, dtype=torch.long, device=dev)
        pos[1:] += self.delta.view(1, -1, 1)
        with torch.inference_mode():
            out = self.thinker(input_ids=torch.tensor([[token]], device=dev), attention_mask=None,
                               position_ids=pos, cache=self.cache, use_cache=True)
        self.cache = out.cache
        self.logits = out.logits[:, -1, :].float()
        self.length = past + 1


def _talker_prompt(omni: Qwen3OmniModel, inputs: dict[str, Any], hidden_states: Any) -> TalkerPrompt:
    """The user-turn view of the prompt, computed as ``generate()`` builds the Talker input."""
    import torch

    cfg = omni.model.config
    ids = inputs["input_ids"]
    embeds = hidden_states[0]
    accept = hidden_states[cfg.talker_config.accept_hidden_layer]
    tc = cfg.thinker_config
    media = (ids == tc.audio_token_id) | (ids == tc.image_token_id) | (ids == tc.video_token_id)
    n = ids.shape[1]
    positions = torch.arange(n, device=ids.device).unsqueeze(0)
    starts = torch.where(ids == cfg.im_start_token_id, positions, positions.new_full((), -1))
    prev_start = torch.cummax(starts, dim=-1).values.clamp_min(0)
    roles = ids.gather(1, (prev_start + 1).clamp_max(n - 1))
    user = (roles == cfg.user_token_id)[0]
    states = torch.where(media.unsqueeze(-1), accept, embeds)
    a_marks = ((ids[0, :-1] == cfg.im_start_token_id) & (ids[0, 1:] == cfg.assistant_token_id)).nonzero()
    a_start = int(a_marks[-1]) if len(a_marks) else n
    rope: dict[str, Any] = {}
    for k in ("image_grid_thw", "video_grid_thw", "video_second_per_grid"):
        if k in inputs:
            rope[k] = inputs[k]
    if "feature_attention_mask" in inputs:
        rope["audio_feature_lengths"] = inputs["feature_attention_mask"].sum(-1)
    return TalkerPrompt(
        user_ids=ids[:, user].clone(),
        user_states=states[:, user].clone(),
        user_media=media[:, user].clone(),
        assistant_ids=ids[:, a_start:].clone(),
        rope=rope,
    )


class Qwen3OmniThinker:
    """Qwen3-Omni's Thinker on transformers: text, audio, images and video in; text streamed out.

    ``model`` is a checkpoint directory, a :class:`Qwen3OmniModel` (shared with a
    :class:`Qwen3OmniTalker`), or None for ``Qwen/Qwen3-Omni-30B-A3B-Instruct`` from the
    local cache. Tool calls written as ``<tool_call>{...}</tool_call>`` become
    :class:`~omni_agent.events.ToolCall` events; ``<think>`` text becomes reasoning.

    When a Talker shares the model, each round also keeps the prompt's view the Talker
    needs (see :class:`TalkerPrompt`), keyed by ``request.session_id`` / ``turn_id``.
    """

    name = "qwen3-omni"
    accepts = frozenset({"text", "audio", "image", "video"})

    def __init__(self, model: str | os.PathLike | Qwen3OmniModel | None = None, *, device: str = "auto",
                 dtype: str = "auto", threads: int | None = 1, talker: bool = False,
                 device_map: str | None = None, attn_implementation: str | None = None):
        self.omni = _model_arg(model, talker, device=device, dtype=dtype, threads=threads,
                               device_map=device_map, attn_implementation=attn_implementation)

    def _suppressed(self) -> list[int]:
        # Tokens that never belong in an answer (media placeholders, Talker markers,
        # a new turn): a stray one would corrupt the prompt of the next round.
        cfg = self.omni.model.config
        tc = cfg.thinker_config
        ids = [tc.audio_token_id, tc.image_token_id, tc.video_token_id, tc.audio_start_token_id,
               tc.vision_start_token_id, cfg.im_start_token_id, cfg.tts_pad_token_id,
               cfg.tts_bos_token_id, cfg.tts_eos_token_id]
        for k in ("vision_end_token_id", "audio_end_token_id"):
            if getattr(tc, k, None) is not None:
                ids.append(getattr(tc, k))
        vocab = tc.text_config.vocab_size
        return [int(i) for i in ids if i is not None and 0 <= int(i) < vocab]

    async def stream(self, request: ThinkerRequest) -> AsyncIterator[Event]:
        """Answer ``request.messages``, yielding text deltas, reasoning and tool calls as they come."""
        from .transformers import _TextRouter

        omni = self.omni
        await omni.ensure_loaded()
        suppressed = self._suppressed()

        def pieces() -> Iterable[str]:
            # Runs on the Thinker's worker thread: prefill, then one piece of text per token.
            try:
                run = _ThinkerRun(omni, request, suppressed)
                run.prefill(capture=omni.has_talker)
            except OmniAgentError:
                raise
            except Exception as e:
                raise ThinkerError(f"Qwen3-Omni Thinker failed on the prompt: {type(e).__name__}: {e}") from e
            if run.prompt is not None:
                omni.remember_prompt(request.session_id, request.turn_id, run.prompt)
            while True:
                try:
                    piece = run.step()
                except Exception as e:
                    raise ThinkerError(f"Qwen3-Omni Thinker failed while generating: {type(e).__name__}: {e}") from e
                if piece is None:
                    return
                yield piece

        parse_tools = bool(request.tools) and request.tool_choice != "none"
        router = _TextRouter(stop_strings=list(request.settings.stop), parse_tools=parse_tools)
        stream = iterate_in_thread(pieces, executor=omni.executor("thinker"))
        try:
            async for piece in stream:
                for ev in router.feed(piece):
                    ev.session_id, ev.turn_id = request.session_id, request.turn_id
                    yield ev
                if router.done:
                    break
        finally:
            await stream.aclose()
        for ev in router.finish():
            ev.session_id, ev.turn_id = request.session_id, request.turn_id
            yield ev

    async def aclose(self) -> None:
        return None


# =========================================================================== Talker


@dataclass
class _TalkerOptions:
    max_frames: int | None
    do_sample: bool
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int | None


class _TalkerRun:
    """One utterance on the Talker's worker thread: prefill, then one codec frame per step.

    Mirrors ``Qwen3OmniMoeForConditionalGeneration.generate()`` (input layout, sampling,
    the code predictor's residual codebooks) so unchanged text gives the same codes.
    """

    def __init__(self, omni: Qwen3OmniModel, prompt: TalkerPrompt | None, text_ids: list[int],
                 speaker_id: int, opts: _TalkerOptions):
        import torch
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            SuppressTokensLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        self.torch = torch
        self.model = model = omni.model
        self.talker = model.talker
        cfg = model.config
        tcfg = cfg.talker_config
        self.eos = int(tcfg.codec_eos_token_id)
        self.groups = int(tcfg.num_code_groups)
        self.opts = opts
        dev = self.talker.device
        self.device = dev
        vocab = tcfg.text_config.vocab_size
        procs = LogitsProcessorList()
        if opts.repetition_penalty and opts.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(opts.repetition_penalty))
        procs.append(SuppressTokensLogitsProcessor(
            [i for i in range(vocab - 1024, vocab) if i != self.eos], device=dev))
        if opts.do_sample:
            if opts.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(opts.temperature))
            if opts.top_k:
                procs.append(TopKLogitsWarper(opts.top_k))
            if opts.top_p < 1.0:
                procs.append(TopPLogitsWarper(opts.top_p))
        self.procs = procs
        self.gen = torch.Generator(device=dev).manual_seed(opts.seed) if opts.seed is not None else None
        if opts.seed is not None:
            torch.manual_seed(opts.seed)  # the code predictor samples from the global stream
        self.max_frames = opts.max_frames if opts.max_frames is not None else 50 + 12 * len(text_ids)

        with torch.inference_mode():
            thinker_emb = model.thinker.get_input_embeddings()
            special = torch.tensor([[cfg.tts_bos_token_id, cfg.tts_eos_token_id, cfg.tts_pad_token_id]],
                                   device=model.thinker.device)
            tts_bos, tts_eos, tts_pad = self.talker.text_projection(thinker_emb(special)).to(dev).chunk(3, dim=1)
            if prompt is None:
                a_ids = omni.tokenizer("<|im_start|>assistant\n", add_special_tokens=False,
                                       return_tensors="pt")["input_ids"].to(model.thinker.device)
                hidden = model.config.talker_config.text_config.hidden_size
                user_embeds = torch.zeros((1, 0, hidden), device=dev, dtype=self.talker.dtype)
                user_ids = torch.zeros((1, 0), dtype=torch.long, device=dev)
                rope: dict[str, Any] = {}
            else:
                a_ids = prompt.assistant_ids
                u = prompt.user_ids.shape[1]
                user_embeds = model._get_talker_user_parts(0, u, prompt.user_media, prompt.user_states,
                                                           prompt.user_states).to(dev)
                user_ids = prompt.user_ids.to(dev)
                rope = prompt.rope
            answer = torch.tensor([text_ids], dtype=torch.long, device=a_ids.device)
            a_all = torch.cat([a_ids, answer], dim=1)
            a_embed = thinker_emb(a_all)  # = the Thinker's hidden_states[0] at these positions
            a_embeds, a_talker_ids, trailing = model._get_talker_assistant_parts(
                0, a_all.shape[1], speaker_id, a_embed, tts_pad, tts_bos, tts_eos)
            embeds = torch.cat([user_embeds, a_embeds.to(dev)], dim=1)
            talker_ids = torch.cat([user_ids, a_talker_ids.to(dev)], dim=1)
            n = embeds.shape[1]
            mask = torch.ones((1, n), dtype=torch.long, device=dev)
            has_media = rope.get("audio_feature_lengths") is not None or any(
                rope.get(k) is not None and rope[k].numel() > 0 for k in ("image_grid_thw", "video_grid_thw"))
            if has_media:
                pos3, delta = self.talker.get_rope_index(
                    talker_ids, rope.get("image_grid_thw"), rope.get("video_grid_thw"), mask, False,
                    rope.get("audio_feature_lengths"), rope.get("video_second_per_grid"))
                pos3 = pos3.to(dev, torch.long)
                self.delta = delta.to(dev, torch.long).view(1, -1, 1)
            else:
                pos3 = torch.arange(n, device=dev).view(1, 1, -1).expand(3, 1, n)
                self.delta = torch.zeros((1, 1, 1), dtype=torch.long, device=dev)
            text_pos = torch.arange(n, device=dev).view(1, 1, -1)
            # No attention mask (one unpadded sequence), as generate() calls it: an explicit
            # all-ones mask takes another attention kernel path, which differs in bfloat16.
            out = self.talker(inputs_embeds=embeds, attention_mask=None,
                              position_ids=torch.cat([text_pos, pos3]), use_cache=True,
                              output_hidden_states=True)
        self.trailing = trailing.to(dev)
        self.tts_pad = tts_pad
        self.cache = out.cache
        self.logits = out.logits[:, -1, :].float()
        self.past_hidden = out.hidden_states[0][-1][:, -1:]
        self.length = n
        self.step = 0
        self.tokens: list[int] = []
        self.done = False

    def next_frame(self) -> Any:
        """The next frame's codes (shape ``[num_code_groups]``), or None at the end."""
        torch = self.torch
        if self.done or len(self.tokens) >= self.max_frames:
            self.done = True
            return None
        talker, dev = self.talker, self.device
        with torch.inference_mode():
            ids = torch.tensor([self.tokens], dtype=torch.long, device=dev)
            scores = self.procs(ids, self.logits)
            if self.opts.do_sample:
                token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=self.gen)[0, 0])
            else:
                token = int(torch.argmax(scores, -1)[0])
            if token == self.eos:
                self.done = True
                return None
            self.tokens.append(token)
            token_t = torch.tensor([[token]], device=dev)
            last_id_hidden = talker.get_input_embeddings()(token_t)
            cp_kw: dict[str, Any] = {"do_sample": self.opts.do_sample}
            if self.opts.do_sample:
                cp_kw.update(top_k=50, top_p=0.8)
            pred = talker.code_predictor.generate(
                inputs_embeds=torch.cat((self.past_hidden, last_id_hidden), dim=1),
                max_new_tokens=self.groups - 1, output_hidden_states=True, return_dict_in_generate=True,
                **cp_kw)
            codes = torch.cat([token_t, pred.sequences.to(dev)], dim=-1)[0]
            if len(self.tokens) >= self.max_frames:
                self.done = True  # the frame is complete; no need to feed it back
                return codes
            mids = [h[0].to(dev) for h in pred.hidden_states[1:]]
            last = talker.code_predictor.get_input_embeddings()[-1](pred.sequences[..., -1:]).to(dev)
            e = torch.cat([last_id_hidden] + mids + [last], dim=1).sum(1, keepdim=True)
            if self.step < self.trailing.shape[1]:
                e = e + self.trailing[:, self.step].unsqueeze(1)
            else:
                e = e + self.tts_pad
            past = self.length
            pos = torch.full((4, 1, 1), past, dtype=torch.long, device=dev)
            pos[1:] += self.delta
            out = talker(inputs_embeds=e, attention_mask=None, position_ids=pos, cache=self.cache, use_cache=True, output_hidden_states=True,
                         generation_step=self.step)
        self.cache = out.cache
        self.logits = out.logits[:, -1, :].float()
        self.past_hidden = out.hidden_states[0][-1][:, -1:]
        self.length = past + 1
        self.step += 1
        return codes


class _StreamingDecoder:
    """Code2Wav chunk by chunk: each window re-reads ``left_context`` earlier frames, and the
    last ``crossfade`` samples of a chunk are held back and blended with their re-decoded
    version at the start of the next one.

    Code2Wav is causal (causal convolutions, sliding-window causal attention with relative
    positions), so with a left context as long as the frames so far the chunks join into
    exactly the one-shot waveform; a shorter context trades a small mismatch at chunk
    edges (which the crossfade smooths) for constant work per chunk.
    """

    def __init__(self, code2wav: Any, *, left_context: int, crossfade: int):
        self.c2w = code2wav
        self.upsample = int(code2wav.total_upsample)
        self.left_context = max(0, int(left_context))
        self.crossfade = max(0, min(int(crossfade), self.upsample))
        self.emitted = 0  # samples handed out so far
        self.tail = np.zeros(0, np.float32)  # held back, not yet handed out

    def decode(self, codes: Any, final: bool) -> np.ndarray:
        """New samples for all frames in ``codes`` ([G, n]); with ``final`` the held tail too."""
        import torch

        n = codes.shape[-1]
        if n == 0:
            out, self.tail = self.tail, np.zeros(0, np.float32)
            return out
        start = self.emitted
        w0 = max(0, start // self.upsample - self.left_context)
        with torch.inference_mode():
            wav = self.c2w(codes[None, :, w0:n]).float()[0, 0].cpu().numpy()
        new = wav[start - w0 * self.upsample:]
        k = min(len(self.tail), len(new))
        if k:
            ramp = (np.arange(1, k + 1, dtype=np.float32) / (k + 1))
            new = new.copy()
            new[:k] = self.tail[:k] * (1.0 - ramp) + new[:k] * ramp
        if final:
            self.tail = np.zeros(0, np.float32)
            out = new
        else:
            hold = min(self.crossfade, max(0, len(new) - k))
            out, self.tail = new[:len(new) - hold], new[len(new) - hold:].copy()
        self.emitted += len(out)
        return out


class Qwen3OmniTalker:
    """Qwen3-Omni's own Talker: speaks each utterance that leaves the bus, at 24 kHz.

    ``model`` is a checkpoint path, the shared :class:`Qwen3OmniModel`, or the
    :class:`Qwen3OmniThinker` whose model it should share. ``speaker`` is Ethan, Chelsie or
    Aiden (any name the checkpoint's ``speaker_id`` table knows).

    Streaming (the default) yields a chunk after ``first_chunk_frames`` codec frames
    (80 ms each) and then every ``chunk_frames``; ``left_context_frames`` and
    ``crossfade_ms`` set how chunk edges are joined (see :class:`_StreamingDecoder`).
    ``stream=False`` decodes the whole utterance at once, as ``generate()`` does.

    Sampling follows ``generate()``'s Talker defaults (temperature 0.9, top-k 50,
    repetition penalty 1.05); ``do_sample=False`` is greedy and deterministic.
    ``max_frames`` caps an utterance (default: 50 + 12 per text token).

    The Talker needs the turn's prompt: it looks up what :class:`Qwen3OmniThinker` kept for
    ``(utterance.session_id, utterance.turn_id)``; without one it speaks the text with no
    user context.
    """

    name = "qwen3-omni"
    sample_rate = SAMPLE_RATE

    def __init__(self, model: str | os.PathLike | Qwen3OmniModel | Qwen3OmniThinker | None = None, *,
                 speaker: str = "Ethan", stream: bool = True, first_chunk_frames: int = 2,
                 chunk_frames: int = 8, left_context_frames: int = 25, crossfade_ms: float = 5.0,
                 max_frames: int | None = None, do_sample: bool = True, temperature: float = 0.9,
                 top_k: int = 50, top_p: float = 1.0, repetition_penalty: float = 1.05,
                 seed: int | None = None, device: str = "auto", dtype: str = "auto", threads: int | None = 1,
                 device_map: str | None = None, attn_implementation: str | None = None):
        if first_chunk_frames < 1 or chunk_frames < 1:
            raise ConfigError("first_chunk_frames and chunk_frames must be at least 1")
        self.omni = _model_arg(model, True, device=device, dtype=dtype, threads=threads,
                               device_map=device_map, attn_implementation=attn_implementation)
        self.speaker = speaker
        self.stream_audio = stream
        self.first_chunk_frames = first_chunk_frames
        self.chunk_frames = chunk_frames
        self.left_context_frames = left_context_frames
        self.crossfade_ms = crossfade_ms
        self.opts = _TalkerOptions(max_frames, do_sample, temperature, top_k, top_p, repetition_penalty, seed)
        if self.omni.loaded:
            self._speaker_id(speaker)

    @property
    def speakers(self) -> list[str]:
        """The speaker names this checkpoint knows (capitalized)."""
        table = getattr(self.omni.model.config.talker_config, "speaker_id", None) or {}
        return [k.capitalize() for k in table]

    def _speaker_id(self, speaker: str) -> int:
        table = getattr(self.omni.model.config.talker_config, "speaker_id", None) or {}
        sid = table.get(speaker.lower())
        if sid is None:
            known = ", ".join(k.capitalize() for k in table) or "none"
            raise ConfigError(f"unknown Qwen3-Omni speaker {speaker!r}: use one of {known}")
        return int(sid)

    def _start(self, text: str, session_id: str, turn_id: int) -> _TalkerRun | None:
        omni = self.omni
        if not omni.has_talker:
            raise TalkerError("this Qwen3-Omni model was loaded without its Talker: build "
                              "Qwen3OmniModel(..., talker=True) or create the Talker before the first turn")
        ids = omni.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            return None
        prompt = omni.recall_prompt(session_id, turn_id)
        return _TalkerRun(omni, prompt, list(ids), self._speaker_id(self.speaker), self.opts)

    def _crossfade_samples(self) -> int:
        return int(self.crossfade_ms * SAMPLE_RATE / 1000)

    # ------------------------------------------------------------------ synchronous core

    def codes(self, text: str, *, session_id: str = "", turn_id: int = 0) -> Any:
        """All codec frames for ``text`` as a ``[1, num_code_groups, frames]`` tensor (blocking)."""
        import torch

        self.omni.load()
        run = self._start(text, session_id, turn_id)
        frames = []
        while run is not None:
            c = run.next_frame()
            if c is None:
                break
            frames.append(c)
        groups = int(self.omni.model.config.talker_config.num_code_groups)
        if not frames:
            return torch.zeros((1, groups, 0), dtype=torch.long)
        return torch.stack(frames, dim=-1)[None]

    def synthesize(self, text: str, *, session_id: str = "", turn_id: int = 0) -> np.ndarray:
        """The whole waveform for ``text`` (float32, 24 kHz), decoded at once like ``generate()``."""
        import torch

        codes = self.codes(text, session_id=session_id, turn_id=turn_id)
        if codes.shape[-1] == 0:
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            wav = self.omni.model.code2wav.chunked_decode(codes, chunk_size=300, left_context_size=25)
        return wav.float()[0, 0].cpu().numpy()

    def _chunks(self, run: _TalkerRun) -> Any:
        """A generator of (samples, final) — one item per decoded chunk (runs on the worker)."""
        import torch

        dec = _StreamingDecoder(self.omni.model.code2wav, left_context=self.left_context_frames,
                                crossfade=self._crossfade_samples())
        frames: list[Any] = []
        target = self.first_chunk_frames
        while True:
            c = run.next_frame()
            if c is not None:
                frames.append(c)
            if c is None or len(frames) >= target:
                final = c is None or run.done
                if frames:
                    out = dec.decode(torch.stack(frames, dim=-1), final)
                else:
                    out = np.zeros(0, np.float32)
                yield out, final
                if final:
                    return
                target = len(frames) + self.chunk_frames

    # ------------------------------------------------------------------ the Talker protocol

    async def speak(self, utterance: Utterance) -> AsyncIterator[AudioChunk]:
        """Speak one utterance; yields 24 kHz int16 chunks as they are decoded."""
        text = utterance.text.strip()
        if not text:
            return
        omni = self.omni
        await omni.ensure_loaded()
        sid, tid, idx = utterance.session_id, utterance.turn_id, utterance.index

        def chunks() -> Iterable[tuple[np.ndarray, bool]]:
            # Runs on the Talker's worker thread: prefill, then decoded chunks as frames come.
            try:
                run = self._start(text, sid, tid)
            except OmniAgentError:
                raise
            except Exception as e:
                raise TalkerError(f"Qwen3-Omni Talker failed to start: {type(e).__name__}: {e}") from e
            if run is None:
                return
            try:
                if self.stream_audio:
                    yield from self._chunks(run)
                else:
                    yield self._whole(run), True
            except OmniAgentError:
                raise
            except Exception as e:
                raise TalkerError(f"Qwen3-Omni Talker failed while speaking: {type(e).__name__}: {e}") from e

        stream = iterate_in_thread(chunks, executor=omni.executor("talker"), max_ahead=4)
        said = False
        try:
            async for samples, final in stream:
                # An empty chunk only matters as the end marker of audio already sent.
                if samples.size or (final and said):
                    said = True
                    yield AudioChunk(pcm=float_to_pcm16(samples), sample_rate=SAMPLE_RATE, utterance_index=idx,
                                     final=final)
        finally:
            await stream.aclose()

    def _whole(self, run: _TalkerRun) -> np.ndarray:
        import torch

        frames = []
        while (c := run.next_frame()) is not None:
            frames.append(c)
        if not frames:
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            wav = self.omni.model.code2wav.chunked_decode(torch.stack(frames, -1)[None], chunk_size=300,
                                                          left_context_size=25)
        return wav.float()[0, 0].cpu().numpy()

    async def aclose(self) -> None:
        return None
