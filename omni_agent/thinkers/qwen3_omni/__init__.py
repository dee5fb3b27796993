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

Modules, one job each: :mod:`.loading` (finding and loading the checkpoint),
:mod:`.model` (the shared :class:`Qwen3OmniModel`, its worker threads and the
Thinker-to-Talker hand-off), :mod:`.prompt` (chat template and model inputs),
:mod:`.media` (image / video decoding and video patches), :mod:`.thinker`,
:mod:`.talker`, and :mod:`.codec` (Code2Wav, streaming and whole).
"""

# _TalkerRun / _ThinkerRun (one utterance / one round on a worker thread) are not public
# API: tests/test_qwen3_omni.py and bench/qwen3_omni_first_audio.py drive them directly.
from .codec import SAMPLE_RATE
from .loading import HUB_ID
from .model import Qwen3OmniModel, TalkerPrompt
from .talker import SPEAKERS, Qwen3OmniTalker, _TalkerRun as _TalkerRun
from .thinker import Qwen3OmniThinker, _ThinkerRun as _ThinkerRun

__all__ = [
    "Qwen3OmniModel",
    "Qwen3OmniThinker",
    "Qwen3OmniTalker",
    "TalkerPrompt",
    "SAMPLE_RATE",
    "SPEAKERS",
    "HUB_ID",
]
