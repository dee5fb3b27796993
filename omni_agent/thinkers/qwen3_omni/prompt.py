"""Prompt building for Qwen3-Omni: a conversation rendered with the chat template, its media
turned into model inputs.

:func:`build_inputs` renders the messages, runs the audio feature extractor and the image
processor, patchifies video, and expands each media placeholder to one token per media
embedding — the layout the Thinker's ``forward`` expects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...audio import audio_part_samples
from ...errors import AudioInputError, ThinkerError, UnsupportedInputError
from ...events import AudioPart, ImagePart, TextPart, VideoPart
from ...thinker import Message
from ..transformers import template_tool_fields
from .media import load_image, load_video, patchify_video

if TYPE_CHECKING:
    from .model import Qwen3OmniModel

__all__ = ["FALLBACK_TEMPLATE", "build_inputs", "conversation", "read_chat_template"]

log = logging.getLogger(__name__)

# A ChatML template in Qwen3-Omni's layout, used only when the model directory ships none
# (the tiny test model). The real checkpoint's own template always wins.
FALLBACK_TEMPLATE = (
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



def build_inputs(omni: Qwen3OmniModel, messages: list[Message],
                 tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Render the conversation and turn its media into model inputs (torch tensors).

    Raises :class:`UnsupportedInputError` for media the loaded processors cannot read.
    """
    import torch

    conv, audios, images, videos = conversation(messages, video_fps=omni.video_fps,
                                                max_video_frames=omni.max_video_frames)
    tok = omni.tokenizer
    try:
        text = tok.apply_chat_template(conv, tools=tools or None, add_generation_prompt=True,
                                       tokenize=False, chat_template=omni.chat_template)
    except Exception as e:
        raise ThinkerError(f"the Qwen3-Omni chat template rejected the conversation: {e}") from e
    thinker_cfg = omni.model.config.thinker_config
    out: dict[str, Any] = {}
    if audios:
        if omni.feature_extractor is None:
            raise UnsupportedInputError("this Qwen3-Omni model has no audio feature extractor")
        feats = omni.feature_extractor(audios, sampling_rate=16000, padding=True, truncation=False,
                                       return_attention_mask=True, return_tensors="pt")
        mask = feats["attention_mask"]
        out["input_features"] = feats["input_features"]
        out["feature_attention_mask"] = mask
        counts = [int(n) for n in _audio_token_counts(mask.sum(-1), thinker_cfg.audio_config.n_window)]
        text = _expand(text, _special(tok, "audio_token", "<|audio_pad|>"), counts, "audio")
    if images:
        if omni.image_processor is None:
            raise UnsupportedInputError(
                "image input needs an image processor: install Pillow (pip install pillow)")
        px = omni.image_processor(images=images, return_tensors="pt")
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
            pv, grid = patchify_video(frames, vcfg, omni.image_processor, omni.video_max_pixels)
            pixels.append(pv)
            grids.append(grid)
            seconds.append(vcfg.temporal_patch_size / omni.video_fps)
        out["pixel_values_videos"] = torch.from_numpy(np.concatenate(pixels))
        out["video_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        out["video_second_per_grid"] = torch.tensor(seconds)
        text = _expand(text, _special(tok, "video_token", "<|video_pad|>"),
                       [int(np.prod(g)) // vcfg.spatial_merge_size ** 2 for g in grids], "video")
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    out["input_ids"] = enc["input_ids"]
    out["attention_mask"] = enc["attention_mask"]
    dev = omni.model.thinker.device
    dtype = omni.model.thinker.dtype
    for k, v in list(out.items()):
        if hasattr(v, "to"):
            out[k] = v.to(dev, dtype) if v.is_floating_point() and k != "video_second_per_grid" else v.to(dev)
    return out


def conversation(messages: list[Message], *, video_fps: float,
                 max_video_frames: int) -> tuple[list[dict[str, Any]], list, list, list]:
    """Messages as chat-template dicts, plus the decoded audio, images and videos in prompt order.

    Unreadable media in the latest user turn raises; in earlier turns it becomes a short
    text note, so one bad file does not fail every later turn of the session.
    """
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
                        image = load_image(p)
                    elif isinstance(p, VideoPart):
                        frames = load_video(p, video_fps, max_video_frames)
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


def read_chat_template(path: str, tokenizer: Any) -> str:
    """The checkpoint's chat template: the processor's, else the tokenizer's, else our fallback."""
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
    return FALLBACK_TEMPLATE


def _special(tok: Any, attr: str, default: str) -> str:
    value = getattr(tok, attr, None)
    return value if isinstance(value, str) and value else default


def _audio_token_counts(feature_lengths: Any, n_window: int) -> Any:
    # How many audio tokens the audio tower makes of N mel frames (its convolutions and
    # windowing); the processor and the Thinker's position ids use the same function.
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import (
        _get_feat_extract_output_lengths,
    )

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

