"""Qwen3-Omni's Thinker: text, audio, images and video in; text, reasoning and tool calls out.

:class:`Qwen3OmniThinker` runs its own generation loop (:class:`_ThinkerRun`) on the shared
model's Thinker thread, a few tokens ahead of the bus. When a Talker shares the model,
each prefill also keeps the prompt's view the Talker needs (:func:`talker_prompt`).
The raw text is turned into events by :func:`markup_parser`, the one place this backend
reads ``<tool_call>`` / ``<think>`` markup.
"""

from __future__ import annotations

import os
from typing import Any, AsyncIterator, Iterable

from ...bridge import iterate_in_thread
from ...errors import ConfigError, OmniAgentError, ThinkerError
from ...events import Event
from ...markup_protocol import TextRouter
from ...thinker import ThinkerRequest
from .loading import HUB_ID
from .model import Qwen3OmniModel, TalkerPrompt

__all__ = ["Qwen3OmniThinker", "markup_parser", "shared_model_for", "talker_prompt"]


def shared_model_for(model: Any, talker: bool, **options: Any) -> Qwen3OmniModel:
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


def markup_parser(request: ThinkerRequest) -> TextRouter:
    """The parser that turns the Thinker's raw text into events, for one round of ``request``.

    ``<tool_call>{...}</tool_call>`` becomes :class:`~omni_agent.events.ToolCall` events
    (when the request offers tools), ``<think>`` text becomes reasoning, and a stop string
    ends the answer. Feed it text pieces (``feed``), check ``done``, then ``finish()``.
    """
    parse_tools = bool(request.tools) and request.tool_choice != "none"
    return TextRouter(stop_strings=list(request.settings.stop), parse_tools=parse_tools)


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
        from transformers import (
            LogitsProcessorList,
            SuppressTokensLogitsProcessor,
            TemperatureLogitsWarper,
            TopPLogitsWarper,
        )

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
            self.prompt = talker_prompt(self.omni, inp, out.hidden_states)

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


def talker_prompt(omni: Qwen3OmniModel, inputs: dict[str, Any], hidden_states: Any) -> TalkerPrompt:
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
        self.omni = shared_model_for(model, talker, device=device, dtype=dtype, threads=threads,
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

        router = markup_parser(request)
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
        """Nothing to release: the shared model outlives this Thinker (see :meth:`Qwen3OmniModel.close`)."""
        return None
