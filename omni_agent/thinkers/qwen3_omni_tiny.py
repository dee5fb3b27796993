"""A tiny random-weight Qwen3-Omni for tests and benchmarks: the real classes, no weights.

:func:`tiny_qwen3_omni` builds ``Qwen3OmniMoeForConditionalGeneration`` from a shrunken
config (hidden 32, two Thinker layers, four experts; about 0.25 M parameters) with a
character-level tokenizer, a 20-mel Whisper feature extractor and a 16-pixel-patch image
processor, so every path of :mod:`omni_agent.thinkers.qwen3_omni` — text, audio, image and
video in; text and 24 kHz speech out — runs in about a second on one CPU thread. What it
says is random; how it says it exercises the same code as the 30B checkpoint::

    omni = tiny_qwen3_omni()                       # a Qwen3OmniModel, talker included
    thinker, talker = Qwen3OmniThinker(omni), Qwen3OmniTalker(omni, speaker="Chelsie")

The special-token ids the modeling code reads are remapped into the small vocabularies
(facts in ``shared/reference/qwen3-omni-tiny-config.md``): the Talker's codec vocabulary is
the codebook size + 1024 because ``generate()`` suppresses its top 1024 ids.
"""

from __future__ import annotations

from typing import Any

__all__ = ["tiny_qwen3_omni", "tiny_config", "tiny_tokenizer", "TINY_SPEAKERS", "ForceText"]

# Special tokens of the real Qwen3-Omni vocabulary, in the order they get tiny ids.
_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
    "<tts_pad>", "<tts_text_bos>", "<tts_text_eod>",
]
# Role names are single tokens in the real vocabulary; the Talker finds user turns by them.
_ROLES = ["system", "user", "assistant"]
_CODEBOOK = 16
TINY_SPEAKERS = {"ethan": _CODEBOOK + 10, "chelsie": _CODEBOOK + 11, "aiden": _CODEBOOK + 12}


def tiny_tokenizer() -> Any:
    """A character-level fast tokenizer with Qwen3-Omni's special tokens.

    One token per printable ASCII character, so any sequence of character tokens decodes
    to text that encodes back to the same ids (tests compare against ``generate()``).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for t in [chr(c) for c in range(32, 127)] + ["\n"] + _ROLES + _SPECIAL:
        vocab[t] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_tokens([AddedToken(r, normalized=False) for r in _ROLES])
    tk.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in _SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>", "audio_token": "<|audio_pad|>", "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>", "vision_eos_token": "<|vision_end|>",
            "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>",
        },
    )


def tiny_config(tokenizer: Any, *, talker: bool = True) -> Any:
    """The shrunken ``Qwen3OmniMoeConfig`` matching :func:`tiny_tokenizer`'s ids."""
    from transformers import Qwen3OmniMoeConfig

    ids = tokenizer.get_vocab()
    h = 32
    mrope = {"rope_type": "default", "mrope_section": [1, 1, 2], "interleaved": True, "rope_theta": 10000.0}
    mm_ids = dict(
        audio_token_id=ids["<|audio_pad|>"], image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], audio_start_token_id=ids["<|audio_start|>"],
        vision_start_token_id=ids["<|vision_start|>"],
    )
    thinker = dict(
        audio_config=dict(num_mel_bins=20, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=32, output_dim=h, downsample_hidden_size=8, n_window=50, n_window_infer=100,
                          max_source_positions=200),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, patch_size=16,
                           spatial_merge_size=1, temporal_patch_size=2, out_hidden_size=h,
                           num_position_embeddings=64, deepstack_visual_indexes=[0]),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=h, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, moe_intermediate_size=32,
                         num_experts=4, num_experts_per_tok=2, rope_parameters=dict(mrope),
                         max_position_embeddings=4096),
        vision_end_token_id=ids["<|vision_end|>"], audio_end_token_id=ids["<|audio_end|>"],
        user_token_id=ids["user"], **mm_ids,
    )
    cb = _CODEBOOK
    talker_cfg = dict(
        text_config=dict(vocab_size=cb + 1024, hidden_size=h, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, moe_intermediate_size=32,
                         shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                         rope_parameters=dict(mrope)),
        code_predictor_config=dict(vocab_size=cb, hidden_size=h, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_code_groups=4),
        num_code_groups=4, thinker_hidden_size=h, accept_hidden_layer=1,
        codec_eos_token_id=cb + 1, codec_nothink_id=cb + 2, codec_think_bos_id=cb + 3, codec_think_eos_id=cb + 4,
        codec_pad_id=cb + 5, codec_bos_id=cb + 6, speaker_id=dict(TINY_SPEAKERS), spatial_merge_size=1, **mm_ids,
    )
    code2wav = dict(codebook_size=cb, hidden_size=h, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=32, num_hidden_layers=1, num_quantizers=4, upsample_rates=[2, 2],
                    upsampling_ratios=[2], decoder_dim=32, sliding_window=8, max_position_embeddings=4096)
    return Qwen3OmniMoeConfig(
        thinker_config=thinker, talker_config=talker_cfg, code2wav_config=code2wav,
        enable_audio_output=talker,
        im_start_token_id=ids["<|im_start|>"], im_end_token_id=ids["<|im_end|>"],
        tts_pad_token_id=ids["<tts_pad>"], tts_bos_token_id=ids["<tts_text_bos>"],
        tts_eos_token_id=ids["<tts_text_eod>"], system_token_id=ids["system"], user_token_id=ids["user"],
        assistant_token_id=ids["assistant"],
    )


def tiny_qwen3_omni(*, talker: bool = True, seed: int = 0, threads: int | None = 1) -> Any:
    """A ready :class:`~omni_agent.thinkers.qwen3_omni.Qwen3OmniModel` with random weights.

    ``talker=False`` builds the Thinker alone (no Talker, no Code2Wav). ``seed`` fixes the
    weights, so two calls give the same model.
    """
    import torch
    from transformers import Qwen3OmniMoeForConditionalGeneration, WhisperFeatureExtractor

    from .qwen3_omni import Qwen3OmniModel

    tok = tiny_tokenizer()
    cfg = tiny_config(tok, talker=talker)
    fork = torch.random.fork_rng()  # building must not disturb the caller's random stream
    with fork:
        torch.manual_seed(seed)
        model = Qwen3OmniMoeForConditionalGeneration(cfg).eval()
        if talker:
            _init_talker_experts(model.talker)
            _audible(model.code2wav)
            _attentive(model.talker)
    features = WhisperFeatureExtractor(feature_size=20, sampling_rate=16000)
    return Qwen3OmniModel.from_parts(model, tok, feature_extractor=features,
                                     image_processor=_tiny_image_processor(), threads=threads)


def _init_talker_experts(talker: Any) -> None:
    # transformers 5.24's _init_weights skips the Talker's MoE experts (torch.empty: whatever
    # memory held, NaN included) and leaves its router at zero. Trained checkpoints load
    # over them; a random model must initialize them itself or it is not reproducible.
    import torch

    with torch.no_grad():
        for layer in talker.model.layers:
            mlp = layer.mlp
            experts = getattr(mlp, "experts", None)
            if experts is not None and hasattr(experts, "gate_up_proj"):
                experts.gate_up_proj.normal_(0.0, 0.02)
                experts.down_proj.normal_(0.0, 0.02)
            gate = getattr(mlp, "gate", None)
            if gate is not None and getattr(gate, "weight", None) is not None:
                gate.weight.normal_(0.0, 0.02)


def _audible(code2wav: Any) -> None:
    # The default init (std 0.02) shrinks the signal at every convolution: the random
    # speech would be ~1e-4, a few LSB in int16. Fan-in scaled convolutions keep it at
    # speech-like levels (std ~0.2) so tests can compare PCM meaningfully.
    import math

    import torch

    with torch.no_grad():
        for mod in code2wav.modules():
            if isinstance(mod, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                w = mod.weight
                fan_in = w.shape[1] * w.shape[2] if isinstance(mod, torch.nn.Conv1d) else w.shape[0] * w.shape[2]
                w.normal_(0.0, 1.0 / math.sqrt(fan_in))
        code2wav.decoder[-1].conv.weight.mul_(0.05)


def _attentive(talker: Any) -> None:
    # With the default init the Thinker's embeddings (std 0.02) reach the random Talker
    # ~1000x weaker than its codec embeddings, so it ignores what it is told to say. A
    # trained Talker follows its text; scaled projections make the tiny one do so too.
    import torch

    with torch.no_grad():
        for proj in (talker.text_projection, talker.hidden_projection):
            for p in proj.parameters():
                if p.dim() > 1:
                    p.mul_(30.0)


def _tiny_image_processor() -> Any:
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except ImportError:  # Pillow missing: the model still takes text, audio and video
        return None
    return Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=1,
                                    min_pixels=16 * 16, max_pixels=64 * 64)


class ForceText:
    """A logits processor that makes the (random) Thinker write ``ids``, then ``eos``: the
    tiny model's answers are noise, so tests and the bench decide what it says."""

    def __init__(self, ids: list[int], eos: int):
        self.ids = list(ids) + [eos]
        self.start: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.start is None:
            self.start = input_ids.shape[1]
        k = min(input_ids.shape[1] - self.start, len(self.ids) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[k]] = 0.0
        return forced
