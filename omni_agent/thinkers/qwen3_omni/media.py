"""Media for Qwen3-Omni prompts: image and video bytes decoded, video frames cut into patches.

Audio needs nothing model-specific (:func:`omni_agent.audio.audio_part_samples`); images
are decoded with Pillow, videos with PyAV, and video frames are laid out as the vision
tower reads them without torchvision (:func:`patchify_video`).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import UnsupportedInputError
from ...events import ImagePart, VideoPart

__all__ = ["media_bytes", "load_image", "load_video", "patchify_video"]


def media_bytes(part: Any, what: str) -> bytes:
    """The bytes of an image / video part: its data, or a local file (remote URLs are not fetched)."""
    if part.data is not None:
        return part.data
    if part.url and not part.url.startswith(("http://", "https://", "data:")):
        p = Path(part.url)
        if not p.is_file():
            raise UnsupportedInputError(f"{what} file not found: {p}")
        return p.read_bytes()
    raise UnsupportedInputError(f"the {what} part has no bytes and no local path (remote URLs are not "
                                "fetched): pass ImagePart.from_file(path) / VideoPart.from_file(path)")


def load_image(part: ImagePart) -> Any:
    """Decode an image part with Pillow into an RGB image."""
    try:
        from PIL import Image
    except ImportError as e:
        raise UnsupportedInputError("image input needs Pillow: pip install pillow") from e
    data = media_bytes(part, "image")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:
        raise UnsupportedInputError(f"the image could not be decoded ({len(data)} bytes): use PNG, "
                                    f"JPEG, WebP or GIF ({e})") from e
    return img.convert("RGB")


def load_video(part: VideoPart, fps: float, max_frames: int) -> np.ndarray:
    """Decode a video with PyAV into uint8 RGB frames sampled at ``fps`` (at most ``max_frames``)."""
    try:
        import av
    except ImportError as e:
        raise UnsupportedInputError("video input needs PyAV: pip install av") from e
    data = media_bytes(part, "video")
    frames: list[np.ndarray] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
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


def patchify_video(frames: np.ndarray, vcfg: Any, image_processor: Any,
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
    resized = np.stack([np.asarray(Image.fromarray(f).resize((rw, rh), Image.Resampling.BICUBIC)) for f in frames])
    x = resized.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    x = (x - mean) / std
    if pad := -x.shape[0] % tp:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    t = x.shape[0] // tp
    gh, gw = rh // p, rw // p
    x = x.reshape(t, tp, 3, gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(t * gh * gw, 3 * tp * p * p)), [t, gh, gw]
