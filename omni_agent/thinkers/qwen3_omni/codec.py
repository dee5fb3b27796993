"""Code2Wav, Qwen3-Omni's codec decoder: codec frames in, 24 kHz waveform out.

:class:`StreamingDecoder` decodes a growing run of frames chunk by chunk (the Talker's
streaming path); :func:`decode_all` decodes a whole utterance at once, as ``generate()``
does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["SAMPLE_RATE", "StreamingDecoder", "decode_all"]

SAMPLE_RATE = 24000  # Code2Wav's output rate


def decode_all(code2wav: Any, codes: Any) -> np.ndarray:
    """The waveform (float32, 24 kHz) of all frames in ``codes`` ([1, G, n]), decoded like ``generate()``."""
    import torch

    with torch.inference_mode():
        wav = code2wav.chunked_decode(codes, chunk_size=300, left_context_size=25)
    return wav.float()[0, 0].cpu().numpy()


class StreamingDecoder:
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

