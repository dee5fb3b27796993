"""Qwen3-Omni's Talker: speaks the text that leaves the bus, in the model's own voice.

:class:`Qwen3OmniTalker` runs one :class:`_TalkerRun` per utterance on the shared model's
Talker thread — the Talker's codec frames, one per step, as ``generate()`` makes them — and
hands the frames to Code2Wav (:mod:`.codec`) chunk by chunk or all at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable

import numpy as np

from ...audio import float_to_pcm16
from ...bridge import iterate_in_thread
from ...errors import ConfigError, OmniAgentError, TalkerError
from ...events import AudioChunk, Utterance
from .codec import SAMPLE_RATE, StreamingDecoder, decode_all
from .model import Qwen3OmniModel, TalkerPrompt
from .thinker import Qwen3OmniThinker, shared_model_for

__all__ = ["Qwen3OmniTalker", "SPEAKERS"]

SPEAKERS = ("Ethan", "Chelsie", "Aiden")

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
            out = talker(inputs_embeds=e, attention_mask=None, position_ids=pos, cache=self.cache, use_cache=True,
                         output_hidden_states=True, generation_step=self.step)
        self.cache = out.cache
        self.logits = out.logits[:, -1, :].float()
        self.past_hidden = out.hidden_states[0][-1][:, -1:]
        self.length = past + 1
        self.step += 1
        return codes


class Qwen3OmniTalker:
    """Qwen3-Omni's own Talker: speaks each utterance that leaves the bus, at 24 kHz.

    ``model`` is a checkpoint path, the shared :class:`Qwen3OmniModel`, or the
    :class:`Qwen3OmniThinker` whose model it should share. ``speaker`` is Ethan, Chelsie or
    Aiden (any name the checkpoint's ``speaker_id`` table knows).

    Streaming (the default) yields a chunk after ``first_chunk_frames`` codec frames
    (80 ms each) and then every ``chunk_frames``; ``left_context_frames`` and
    ``crossfade_ms`` set how chunk edges are joined (see :class:`~.codec.StreamingDecoder`).
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
        self.omni = shared_model_for(model, True, device=device, dtype=dtype, threads=threads,
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
        codes = self.codes(text, session_id=session_id, turn_id=turn_id)
        if codes.shape[-1] == 0:
            return np.zeros(0, np.float32)
        return decode_all(self.omni.model.code2wav, codes)

    def _chunks(self, run: _TalkerRun) -> Any:
        """A generator of (samples, final) — one item per decoded chunk (runs on the worker)."""
        import torch

        dec = StreamingDecoder(self.omni.model.code2wav, left_context=self.left_context_frames,
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
        return decode_all(self.omni.model.code2wav, torch.stack(frames, -1)[None])

    async def aclose(self) -> None:
        """Nothing to release: the shared model outlives this Talker (see :meth:`Qwen3OmniModel.close`)."""
        return None
