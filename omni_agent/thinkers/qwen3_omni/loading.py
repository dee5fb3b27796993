"""Finding and loading a Qwen3-Omni checkpoint with transformers.

:func:`load_checkpoint` turns a local directory (or a hub id already in the local cache:
nothing is downloaded) into the model, tokenizer and processors; :func:`patch_talker_config`
carries the workaround for the transformers 5.24 audio-in/audio-out bug.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError, ModelNotFoundError
from .prompt import read_chat_template

__all__ = ["HUB_ID", "LoadedCheckpoint", "load_checkpoint", "model_has_talker", "patch_talker_config",
           "resolve_checkpoint", "torch_device_dtype"]

log = logging.getLogger(__name__)

HUB_ID = "Qwen/Qwen3-Omni-30B-A3B-Instruct"


@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read: the model and the processors that go with it."""

    model: Any
    tokenizer: Any
    feature_extractor: Any
    image_processor: Any
    chat_template: str


def model_has_talker(model: Any) -> bool:
    """Whether ``model`` was built with its Talker and Code2Wav."""
    return bool(model is not None and getattr(model, "has_talker", False) and hasattr(model, "talker"))


def resolve_checkpoint(path: str | None) -> str:
    """The local checkpoint directory for ``path`` (a directory, or a hub id in the local cache)."""
    if path is None:
        raise ModelNotFoundError(
            "no Qwen3-Omni model given: pass model='/path/to/Qwen3-Omni-30B-A3B-Instruct' "
            "(a local checkpoint directory)")
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(f"{p} has no config.json: point model= at the checkpoint directory")
        return str(p)
    if p.exists():
        raise ModelNotFoundError(f"{p} is a file: point model= at the checkpoint directory")
    if "/" in path and not path.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download(path, local_files_only=True)
        except Exception:
            pass
    raise ModelNotFoundError(
        f"Qwen3-Omni model {path!r} not found locally, and nothing is downloaded here. On a "
        f"machine with internet run `huggingface-cli download {HUB_ID} --local-dir DIR` and pass "
        "model=DIR (or serve it with vLLM-Omni and use the vllm-omni backend)")


def torch_device_dtype(device_name: str, dtype_name: str) -> tuple[Any, Any]:
    """The torch device and dtype for ``device`` / ``dtype`` settings ("auto" picks for the machine)."""
    import torch

    dev = device_name
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device_name!r} but this torch has no CUDA: use device='cpu'")
    names = {"auto": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
    if dtype_name not in names:
        raise ConfigError(f"dtype {dtype_name!r}: use one of {', '.join(names)}")
    dtype = names[dtype_name]
    if dtype is None:
        dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    return torch.device(dev), dtype


def load_checkpoint(path: str | None, *, talker: bool, device: str = "auto", dtype: str = "auto",
                    threads: int | None = 1, attn_implementation: str | None = None,
                    device_map: str | None = None) -> LoadedCheckpoint:
    """Load weights, tokenizer and processors of a Qwen3-Omni checkpoint (Thinker-only unless ``talker``)."""
    path = resolve_checkpoint(path)
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
    torch_device, torch_dtype = torch_device_dtype(device, dtype)
    if torch_device.type == "cpu" and threads:
        import torch

        torch.set_num_threads(threads)
    t0 = time.monotonic()
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if getattr(config, "model_type", "") != "qwen3_omni_moe":
        raise ModelNotFoundError(f"{path} holds a {getattr(config, 'model_type', '?')!r} model, not "
                                 "qwen3_omni_moe: use the transformers backend for other models")
    # Thinker-only: the Talker and Code2Wav are never built, their weights never read.
    config.enable_audio_output = bool(talker)
    kw: dict[str, Any] = {"config": config, "dtype": torch_dtype, "local_files_only": True}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    if device_map:  # e.g. "auto": spread over several GPUs (accelerate)
        kw["device_map"] = device_map
    elif torch_device.type == "cuda":
        kw["device_map"] = str(torch_device)
    try:
        model = Qwen3OmniMoeForConditionalGeneration.from_pretrained(path, **kw).eval()
    except OSError as e:
        raise ModelNotFoundError(f"cannot load Qwen3-Omni weights from {path}: {e}") from e
    if torch_device.type != "cuda" and not device_map:
        model.to(torch_device)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)
    image_processor = None
    try:
        from transformers import AutoImageProcessor

        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except Exception as e:  # images then fail with a clear error, the rest works
        log.warning("no image processor for %s (%s): image input disabled", path, e)
    chat_template = read_chat_template(path, tokenizer)
    patch_talker_config(model)
    log.info("loaded %s (%s, %s, talker=%s) in %.1f s", path, torch_device, torch_dtype,
             model_has_talker(model), time.monotonic() - t0)
    return LoadedCheckpoint(model, tokenizer, feature_extractor, image_processor, chat_template)


def patch_talker_config(model: Any) -> None:
    """Give the Talker's config the Thinker's ``audio_config`` where transformers left it out."""
    cfg = model.config
    # transformers 5.24: the Talker's 3-D positions read `config.audio_config.n_window`,
    # which its config lacks -> audio + image/video prompts crash with audio output on.
    if getattr(cfg, "talker_config", None) is not None and not hasattr(cfg.talker_config, "audio_config"):
        try:
            cfg.talker_config.audio_config = cfg.thinker_config.audio_config
        except Exception:  # a frozen config: set it on the instance dict
            object.__setattr__(cfg.talker_config, "audio_config", cfg.thinker_config.audio_config)
    if model_has_talker(model):
        tcfg = model.talker.config
        if not hasattr(tcfg, "audio_config"):
            object.__setattr__(tcfg, "audio_config", cfg.thinker_config.audio_config)
