"""Qwen3-Omni on transformers: the real model classes on a tiny random-weight config.

No weights are downloaded: ``tiny_qwen3_omni()`` builds ``Qwen3OmniMoeForConditionalGeneration``
from a shrunken config inside the test. What the model says is random; how the Thinker, the
Talker and Code2Wav are driven is exactly what runs on the 30B checkpoint, and
``generate()`` (transformers' own welded-together path) is the reference.
"""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from omni_agent.agent import Agent  # noqa: E402
from omni_agent.audio import float_to_pcm16, pcm16_to_float, wav_bytes  # noqa: E402
from omni_agent.bus import Middleware  # noqa: E402
from omni_agent.errors import ConfigError, UnsupportedInputError  # noqa: E402
from omni_agent.events import (  # noqa: E402
    AudioChunk,
    AudioPart,
    ErrorEvent,
    ImagePart,
    TextDelta,
    TextPart,
    UserTurn,
    Utterance,
    VideoPart,
)
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest  # noqa: E402
from omni_agent.thinkers.qwen3_omni import (  # noqa: E402
    SAMPLE_RATE,
    Qwen3OmniModel,
    Qwen3OmniTalker,
    Qwen3OmniThinker,
    _TalkerRun,
)
from omni_agent.thinkers.qwen3_omni_tiny import ForceText, tiny_qwen3_omni  # noqa: E402

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def omni() -> Qwen3OmniModel:
    torch.set_num_threads(1)
    return tiny_qwen3_omni()


def greedy_talker(omni: Qwen3OmniModel, **kw) -> Qwen3OmniTalker:
    kw.setdefault("max_frames", 16)
    return Qwen3OmniTalker(omni, do_sample=False, **kw)


def media_turn() -> list:
    """Text, one second of a 220 Hz tone (WAV) and a small PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    tone = (0.2 * np.sin(np.arange(16000) * 2 * np.pi * 220 / 16000)).astype(np.float32)
    png = io.BytesIO()
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype("uint8")).save(png, format="PNG")
    return [TextPart("What do you hear and see?"), AudioPart(data=wav_bytes(float_to_pcm16(tone), 16000)),
            ImagePart(data=png.getvalue())]


ANSWER = "Hi there, nice to meet you."


def forced(omni: Qwen3OmniModel, text: str):
    """A decoding constraint that makes the Thinker write ``text`` and then stop."""
    ids = omni.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ForceText(ids, omni.model.config.im_end_token_id)


async def think(thinker: Qwen3OmniThinker, content, session: str = "s", turn: int = 1,
                answer: str | None = None) -> str:
    req = ThinkerRequest(messages=[Message("user", content)], settings=GenerationSettings(max_tokens=MAX_TOKENS),
                         session_id=session, turn_id=turn)
    if answer is not None:
        req.settings = GenerationSettings(max_tokens=len(answer) + 2)
        req.constraint = lambda tok: forced(thinker.omni, answer)
    return "".join([ev.text async for ev in thinker.stream(req) if isinstance(ev, TextDelta)])


def reference_generate(omni: Qwen3OmniModel, thinker: Qwen3OmniThinker, content, frames: int,
                       answer: str | None = None, **kw):
    """transformers' own generate(): Thinker to the end, then Talker, then Code2Wav.

    With ``answer`` the Thinker is made to write it and end with <|im_end|>: generate()
    never speaks the last token of an answer cut by max_new_tokens (it is not embedded),
    so exact comparisons need an answer that ends."""
    from transformers import LogitsProcessorList

    m = omni.model
    inputs = omni.build_inputs([Message("user", content)])
    if answer is not None:
        kw["thinker_logits_processor"] = LogitsProcessorList([forced(omni, answer)])
    seq, wav = m.generate(**inputs, thinker_max_new_tokens=len(answer) + 2 if answer else MAX_TOKENS,
                          thinker_eos_token_id=m.config.im_end_token_id,
                          thinker_suppress_tokens=thinker._suppressed(), thinker_do_sample=False,
                          talker_do_sample=False, talker_max_new_tokens=frames + 1, **kw)
    text = omni.tokenizer.decode(seq[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return text, wav[0, 0].float().numpy()


async def spoken(talker: Qwen3OmniTalker, text: str, session: str = "s", turn: int = 1) -> list[AudioChunk]:
    return [c async for c in talker.speak(Utterance(text=text, session_id=session, turn_id=turn))]


def joined(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([pcm16_to_float(c.pcm) for c in chunks]) if chunks else np.zeros(0, np.float32)


# --------------------------------------------------------------------------- text in, text and audio out


async def test_an_agent_hears_text_and_answers_in_streamed_text_and_24khz_speech(omni):
    agent = Agent(thinker=Qwen3OmniThinker(omni), talker=greedy_talker(omni),
                  settings=GenerationSettings(max_tokens=MAX_TOKENS))
    result = await agent.session("a").aask("Hello there, who are you?")
    deltas = [e for e in result.events if isinstance(e, TextDelta)]
    assert len(deltas) > 1  # streamed token by token, not in one piece
    assert result.text and result.spoken == result.text
    assert result.sample_rate == SAMPLE_RATE == 24000
    audio = pcm16_to_float(result.audio)
    assert audio.size > 0 and np.abs(audio).max() > 0.01  # speech, not silence


async def test_the_thinker_streams_the_same_text_as_generate(omni):
    thinker = Qwen3OmniThinker(omni)
    text = await think(thinker, "hello there")
    ref_text, _ = reference_generate(omni, thinker, "hello there", frames=4)
    assert text == ref_text


async def test_leaving_the_thinkers_stream_stops_it_and_the_next_turn_runs(omni):
    thinker = Qwen3OmniThinker(omni)
    req = ThinkerRequest(messages=[Message("user", "hi")], settings=GenerationSettings(max_tokens=200))
    stream = thinker.stream(req)
    first = await stream.__anext__()
    await stream.aclose()  # barge-in
    assert isinstance(first, TextDelta)
    assert await asyncio.wait_for(think(thinker, "again"), timeout=30)


# --------------------------------------------------------------------------- audio + image prompt


async def test_an_audio_and_image_prompt_is_read_and_answered_in_speech(omni):
    agent = Agent(thinker=Qwen3OmniThinker(omni), talker=greedy_talker(omni),
                  settings=GenerationSettings(max_tokens=MAX_TOKENS))
    result = await agent.session("mm").aask(UserTurn.of(None, *media_turn()))
    assert result.reason == "completed" and result.text
    assert len(pcm16_to_float(result.audio)) > 0
    # The prompt really carried the media: placeholders expanded to one token per embedding.
    inputs = omni.build_inputs([Message("user", media_turn())])
    ids = inputs["input_ids"][0].tolist()
    tc = omni.model.config.thinker_config
    assert ids.count(tc.audio_token_id) > 1 and ids.count(tc.image_token_id) > 1


async def test_audio_input_with_audio_output_survives_the_transformers_5_24_talker_bug(omni):
    # 5.24's Talker reads config.audio_config (absent) for audio + image prompts.
    assert omni.model.config.talker_config.audio_config is omni.model.config.thinker_config.audio_config
    thinker, talker = Qwen3OmniThinker(omni), greedy_talker(omni)
    text = await think(thinker, media_turn(), session="bug")
    assert (await spoken(talker, text, session="bug"))


async def test_the_talker_input_for_an_audio_image_prompt_is_the_one_generate_builds(omni):
    thinker = Qwen3OmniThinker(omni)
    text = await think(thinker, media_turn(), session="in")
    prefills = []

    def grab(module, args, kwargs):
        e = kwargs.get("inputs_embeds")
        if e is not None and e.shape[1] > 1:  # the Talker's prefill, not a decode step
            prefills.append(e.detach().clone())

    hook = omni.model.talker.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        ref_text, _ = reference_generate(omni, thinker, media_turn(), frames=2)
        ids = omni.tokenizer(text, add_special_tokens=False)["input_ids"]
        speaker = omni.model.config.talker_config.speaker_id["ethan"]
        _TalkerRun(omni, omni.recall_prompt("in", 1), ids, speaker, greedy_talker(omni).opts)
    finally:
        hook.remove()
    assert text == ref_text
    theirs, ours = prefills
    torch.testing.assert_close(ours, theirs)


# --------------------------------------------------------------------------- the Talker speaks what leaves the bus


async def test_unchanged_text_is_spoken_exactly_as_generate_speaks_it(omni):
    thinker, talker = Qwen3OmniThinker(omni), greedy_talker(omni, max_frames=40)
    text = await think(thinker, "hello there", session="same", answer=ANSWER)
    ref_text, ref_wav = reference_generate(omni, thinker, "hello there", frames=40, answer=ANSWER)
    assert text == ref_text == ANSWER
    ours = await asyncio.to_thread(talker.synthesize, text, session_id="same", turn_id=1)
    assert ours.shape == ref_wav.shape
    np.testing.assert_allclose(ours, ref_wav, atol=1e-6)


async def test_in_bfloat16_an_audio_image_answer_is_still_spoken_exactly_as_generate_speaks_it():
    # What a GPU runs: bfloat16. Same kernels as generate() (no attention mask), same codes.
    omni16 = tiny_qwen3_omni()
    omni16.model.to(torch.bfloat16)
    thinker = Qwen3OmniThinker(omni16)
    text = await think(thinker, media_turn(), session="bf16", answer=ANSWER)
    ref_text, ref_wav = reference_generate(omni16, thinker, media_turn(), frames=30, answer=ANSWER)
    ours = await asyncio.to_thread(greedy_talker(omni16, max_frames=30).synthesize, text, session_id="bf16",
                                   turn_id=1)
    assert text == ref_text == ANSWER
    np.testing.assert_allclose(ours, ref_wav, atol=1e-6)


class Rewrite(Middleware):
    """Speaks a fixed line instead of whatever the Thinker wrote."""

    name = "rewrite"

    def __init__(self, line: str):
        self.line = line

    def on_utterance(self, utt, ctx):
        utt.text = self.line
        return utt


async def test_a_rewritten_clause_is_what_the_talker_speaks(omni):
    line = "Nothing to see here."
    talker = greedy_talker(omni, left_context_frames=64)
    settings = GenerationSettings(max_tokens=MAX_TOKENS)
    plain = await Agent(thinker=Qwen3OmniThinker(omni), talker=talker, settings=settings) \
        .session("p").aask("tell me a secret")
    rewritten = await Agent(thinker=Qwen3OmniThinker(omni), talker=talker, settings=settings,
                            middleware=[Rewrite(line)]).session("r").aask("tell me a secret")
    assert rewritten.spoken == line and plain.spoken != line
    assert rewritten.audio != plain.audio  # the waveform follows the text
    expected = await asyncio.to_thread(talker.synthesize, line, session_id="r", turn_id=1)
    np.testing.assert_allclose(pcm16_to_float(rewritten.audio), expected, atol=2 / 32768)


async def test_a_one_character_edit_changes_the_speech(omni):
    talker = greedy_talker(omni, max_frames=24)
    a = await asyncio.to_thread(talker.synthesize, "the code is 1234")
    b = await asyncio.to_thread(talker.synthesize, "the code is 1235")
    assert a.shape != b.shape or not np.allclose(a, b)


# --------------------------------------------------------------------------- streaming


async def test_streamed_chunks_join_into_the_one_shot_waveform(omni):
    # Code2Wav is causal: with a left context covering the utterance, chunks are exact.
    talker = greedy_talker(omni, max_frames=30, first_chunk_frames=2, chunk_frames=4, left_context_frames=64)
    text = "streaming speech, chunk by chunk"
    chunks = await spoken(talker, text, session="none")
    one_shot = await asyncio.to_thread(talker.synthesize, text, session_id="none", turn_id=1)
    assert len(chunks) >= 4 and chunks[-1].final and not any(c.final for c in chunks[:-1])
    assert all(c.sample_rate == SAMPLE_RATE for c in chunks)
    np.testing.assert_allclose(joined(chunks), one_shot, atol=2 / 32768)


async def test_a_short_left_context_keeps_length_and_stays_close_to_the_one_shot_waveform(omni):
    talker = greedy_talker(omni, max_frames=30, first_chunk_frames=2, chunk_frames=4, left_context_frames=8)
    text = "streaming speech, chunk by chunk"
    streamed = joined(await spoken(talker, text, session="none"))
    one_shot = await asyncio.to_thread(talker.synthesize, text, session_id="none", turn_id=1)
    assert streamed.shape == one_shot.shape
    err = np.sqrt(np.mean((streamed - one_shot) ** 2)) / np.sqrt(np.mean(one_shot ** 2))
    assert err < 0.35


async def test_first_audio_leaves_before_the_utterance_is_synthesized(omni):
    talker = greedy_talker(omni, max_frames=30, first_chunk_frames=2, chunk_frames=8)
    chunks = await spoken(talker, "a long sentence that takes a while to say", session="none")
    total = sum(len(c.pcm) for c in chunks)
    assert len(chunks) >= 3
    assert len(chunks[0].pcm) < total / 5  # two codec frames' worth, not the whole clause


async def test_in_an_agent_the_first_clause_is_heard_while_the_thinker_is_still_writing(omni):
    answer = "Hello there. " + "This second sentence is long, so the Thinker keeps writing for a while. " * 2
    talker = greedy_talker(omni, max_frames=6)
    agent = Agent(thinker=Qwen3OmniThinker(omni), talker=talker, settings=GenerationSettings(max_tokens=300))

    def build_request(ctx):
        req = Agent.build_request(agent, ctx)
        req.constraint = lambda tok: forced(omni, answer.strip())
        return req

    agent.build_request = build_request
    result = await agent.session("early").aask("say something long")
    first_audio = next(e.ts for e in result.events if isinstance(e, AudioChunk) and e.pcm)
    last_text = max(e.ts for e in result.events if isinstance(e, TextDelta))
    assert result.text == answer.strip()
    assert first_audio < last_text


async def test_non_streaming_mode_yields_the_whole_utterance_in_one_chunk(omni):
    talker = greedy_talker(omni, max_frames=12, stream=False)
    chunks = await spoken(talker, "all at once", session="none")
    assert len(chunks) == 1 and chunks[0].final
    one_shot = await asyncio.to_thread(talker.synthesize, "all at once")
    np.testing.assert_allclose(joined(chunks), one_shot, atol=2 / 32768)


async def test_stopping_mid_utterance_leaves_the_talker_ready_for_the_next_one(omni):
    talker = greedy_talker(omni, max_frames=40, first_chunk_frames=1, chunk_frames=1)
    gen = talker.speak(Utterance(text="interrupt me please"))
    first = await gen.__anext__()
    await gen.aclose()  # barge-in
    assert first.pcm
    assert await spoken(talker, "next clause", session="none")


# --------------------------------------------------------------------------- speakers


def talker_prefill(omni, talker: Qwen3OmniTalker, text: str):
    """The Talker's prefill input for ``text`` (no prompt context), captured at its forward."""
    seen = []
    hook = omni.model.talker.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].detach().clone()), with_kwargs=True)
    try:
        talker._start(text, "none", 0)
    finally:
        hook.remove()
    return seen[0]


async def test_ethan_chelsie_and_aiden_each_reach_the_talker_as_their_own_speaker_token(omni):
    inputs = {name: talker_prefill(omni, greedy_talker(omni, speaker=name), "hello there")
              for name in ("Ethan", "Chelsie", "Aiden")}
    # The voices differ in exactly one input position: the speaker slot.
    for a, b in (("Ethan", "Chelsie"), ("Ethan", "Aiden"), ("Chelsie", "Aiden")):
        differs = (inputs[a] != inputs[b]).any(-1)[0].nonzero().flatten().tolist()
        assert len(differs) == 1
    # And a chosen speaker is spoken exactly as generate(speaker=...) speaks it.
    thinker = Qwen3OmniThinker(omni)
    text = await think(thinker, "hello there", session="chelsie", answer=ANSWER)
    _, ref = reference_generate(omni, thinker, "hello there", frames=30, answer=ANSWER, speaker="Chelsie")
    ours = await asyncio.to_thread(greedy_talker(omni, speaker="chelsie", max_frames=30).synthesize, text,
                                   session_id="chelsie", turn_id=1)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_an_unknown_speaker_is_a_config_error_naming_the_known_ones(omni):
    with pytest.raises(ConfigError, match="Ethan.*Chelsie.*Aiden"):
        Qwen3OmniTalker(omni, speaker="Zelda")


# --------------------------------------------------------------------------- tools


async def test_a_tool_call_written_by_the_thinker_runs_and_the_answer_after_it_is_spoken(omni):
    from omni_agent.tools import tool

    calls = []

    @tool
    def clock(city: str) -> str:
        """The time in a city.

        Args:
            city: The city.
        """
        calls.append(city)
        return "12:00"

    script = ['<tool_call>\n{"name": "clock", "arguments": {"city": "Paris"}}\n</tool_call>', "It is noon."]
    eos = omni.model.config.im_end_token_id
    talker = greedy_talker(omni, max_frames=8)
    agent = Agent(thinker=Qwen3OmniThinker(omni), talker=talker, tools=[clock],
                  settings=GenerationSettings(max_tokens=80))

    def build_request(ctx):  # the agent's request, with a decoding constraint per round
        req = Agent.build_request(agent, ctx)
        ids = omni.tokenizer(script[ctx.round], add_special_tokens=False)["input_ids"]
        req.constraint = lambda tok: ForceText(ids, eos)
        return req

    agent.build_request = build_request
    result = await agent.session("tools").aask("What time is it in Paris?")
    assert calls == ["Paris"]
    assert result.spoken == "It is noon." and result.audio
    # The Talker spoke with the second round's prompt, which holds the tool result.
    prompt = omni.recall_prompt("tools", 1)
    assert "12:00" in omni.tokenizer.decode(prompt.user_ids[0])


# --------------------------------------------------------------------------- more inputs, errors


async def test_a_video_prompt_is_read_frame_by_frame(omni):
    av = pytest.importorskip("av")
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=4)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(8):
            frame = av.VideoFrame.from_ndarray((rng.random((48, 64, 3)) * 255).astype("uint8"), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    content = [VideoPart(data=buf.getvalue()), TextPart("what happens?")]
    inputs = omni.build_inputs([Message("user", content)])
    grid = inputs["video_grid_thw"][0].tolist()
    assert grid[0] >= 2  # several temporal patches: the frames were sampled over time
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(omni.model.config.thinker_config.video_token_id) == int(np.prod(grid))
    assert await think(Qwen3OmniThinker(omni), content, session="video")


async def test_an_undecodable_image_is_a_clear_error_and_the_session_goes_on(omni):
    agent = Agent(thinker=Qwen3OmniThinker(omni), settings=GenerationSettings(max_tokens=4))
    session = agent.session("bad")
    bad = await session.aask(UserTurn.of("look", ImagePart(data=b"not an image")))
    assert bad.reason == "error"
    assert any("could not be decoded" in e.message for e in bad.events if isinstance(e, ErrorEvent))
    with pytest.raises(UnsupportedInputError, match="could not be decoded"):
        omni.build_inputs([Message("user", [TextPart("x"), ImagePart(data=b"nope")])])
    assert (await session.aask("and now?")).reason == "completed"


# --------------------------------------------------------------------------- loading from a directory


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny model saved as a checkpoint directory (about 1.5 MB), and the model itself."""
    path = tmp_path_factory.mktemp("qwen3-omni-tiny")
    full = tiny_qwen3_omni(talker=True)
    full.model.save_pretrained(path)
    full.tokenizer.save_pretrained(path)
    full.feature_extractor.save_pretrained(path)
    return path, full


def test_thinker_only_mode_never_builds_the_talker(saved):
    path, _ = saved
    omni = Qwen3OmniModel(path, device="cpu")
    text = asyncio.run(think(Qwen3OmniThinker(omni), "hello"))
    assert isinstance(text, str)
    assert not omni.has_talker
    assert not hasattr(omni.model, "talker") and not hasattr(omni.model, "code2wav")
    assert not any(n.startswith(("talker.", "code2wav.")) for n, _ in omni.model.named_parameters())
    with pytest.raises(ConfigError, match="Thinker-only"):
        Qwen3OmniTalker(omni)


def test_a_config_with_thinker_and_talker_on_one_path_loads_one_model_with_its_talker(saved):
    path, full = saved
    agent = Agent.from_config({
        "generation": {"max_tokens": 4},
        "thinker": {"backend": "qwen3-omni", "model": str(path), "device": "cpu"},
        "talker": {"backend": "qwen3-omni", "model": str(path), "device": "cpu", "speaker": "Aiden",
                   "do_sample": False, "max_frames": 6},
    })
    assert agent.talker.omni is agent.thinker.omni  # one model for both
    result = agent.ask("hi")
    assert result.reason == "completed" and result.audio and result.sample_rate == SAMPLE_RATE
    ref = full.model.talker.state_dict()
    got = agent.thinker.omni.model.talker.state_dict()
    assert [k for k in ref if not torch.equal(ref[k], got[k])] == []  # the saved weights, not fresh ones
    agent.close()


def test_a_missing_model_directory_says_how_to_get_one(tmp_path):
    thinker = Qwen3OmniThinker(str(tmp_path / "nowhere"))
    with pytest.raises(Exception, match="huggingface-cli download"):
        thinker.omni.load()


@pytest.mark.slow
def test_the_example_runs_on_the_tiny_model(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "qwen3_omni.py"
    out = tmp_path / "reply.wav"
    proc = subprocess.run([sys.executable, str(example), "--tiny", "--out", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "spoken:" in proc.stdout and out.is_file() and out.stat().st_size > 44
