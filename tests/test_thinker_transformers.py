"""TransformersThinker: the embedded SmolLM2 model, loading, caching, streaming, errors."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from omni_agent.errors import ConfigError, ModelNotFoundError, UnsupportedInputError
from omni_agent.events import ImagePart, ReasoningDelta, TextDelta, TextPart, ToolCall
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest
from omni_agent.thinkers.transformers import TransformersThinker, _TextRouter


def ask(text: str, **settings) -> ThinkerRequest:
    return ThinkerRequest([Message("user", text)], settings=GenerationSettings(**settings))


async def collect(thinker, request) -> list:
    return [ev async for ev in thinker.stream(request)]


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# ------------------------------------------------------------------ real embedded model


@pytest.fixture(scope="module")
def smol():
    thinker = TransformersThinker.default()
    thinker.load()
    yield thinker
    asyncio.run(thinker.aclose())


@pytest.mark.slow
async def test_embedded_model_names_paris_as_capital_of_france(smol):
    events = await collect(smol, ask("What is the capital of France?", max_tokens=40))
    assert "Paris" in text_of(events)


@pytest.mark.slow
async def test_answer_streams_as_several_deltas_with_turn_ids(smol):
    req = ask("What is the capital of France?", max_tokens=40)
    req.session_id, req.turn_id = "s9", 4
    events = await collect(smol, req)
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 3  # token by token, not one block at the end
    assert {(e.session_id, e.turn_id) for e in deltas} == {("s9", 4)}


@pytest.mark.slow
async def test_event_loop_keeps_running_while_the_model_generates(smol):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    t0 = time.monotonic()
    await collect(smol, ask("Tell me about the sea.", max_tokens=20))
    elapsed = time.monotonic() - t0
    task.cancel()
    # A blocked loop would tick about once; a free one ticks ~every 10 ms.
    assert ticks > elapsed / 0.01 * 0.3


@pytest.mark.slow
async def test_second_load_comes_from_the_cache_in_under_five_seconds(smol):
    # The fixture's load filled the cache (or found it); a new instance must use it.
    again = TransformersThinker.default()
    again.load()
    assert again.loaded_from == "cache"
    assert again.load_seconds < 5.0
    events = await collect(again, ask("What is the capital of France?", max_tokens=30))
    assert "Paris" in text_of(events)
    await again.aclose()


@pytest.mark.slow
async def test_stop_string_ends_the_answer_before_it(smol):
    events = await collect(smol, ask("What is the capital of France?", max_tokens=40, stop=[" is"]))
    text = text_of(events)
    assert " is" not in text and "Paris" not in text
    assert text.strip()


@pytest.mark.slow
async def test_cancelling_the_stream_stops_generation_promptly(smol):
    agen = smol.stream(ask("Write a long story about a dragon and a knight.", max_tokens=250))
    got = 0
    async for _ in agen:
        got += 1
        if got == 3:
            break
    await agen.aclose()
    # The worker is free again at once: a one-token request does not wait for the
    # ~240 tokens (over 10 s) the cancelled story would still have taken.
    t0 = time.monotonic()
    await collect(smol, ask("Hi", max_tokens=1))
    assert time.monotonic() - t0 < 4.0


@pytest.mark.slow
async def test_aclose_ends_a_running_stream_and_the_thinker_can_be_used_again(smol):
    got = []

    async def consume():
        async for ev in smol.stream(ask("Write a long story about a dragon and a knight.", max_tokens=250)):
            got.append(ev)
            if len(got) == 2:
                await smol.aclose()

    t0 = time.monotonic()
    await asyncio.wait_for(consume(), timeout=8)
    assert time.monotonic() - t0 < 6  # far less than the ~250 tokens it was asked for
    assert len(got) < 20
    assert "Paris" in text_of(await collect(smol, ask("What is the capital of France?", max_tokens=30)))


@pytest.mark.slow
async def test_constraint_logits_processor_steers_decoding(smol):
    import torch
    from transformers import LogitsProcessor

    class ForceText(LogitsProcessor):
        """Allows only the tokens of a fixed text, then end of sequence."""

        def __init__(self, tokenizer, text, prompt_len):
            self.ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
            self.prompt_len = prompt_len

        def __call__(self, input_ids, scores):
            i = min(input_ids.shape[1] - self.prompt_len, len(self.ids) - 1)
            out = torch.full_like(scores, float("-inf"))
            out[:, self.ids[i]] = 0.0
            return out

    seen = {}

    def constraint(tokenizer):
        seen["tokenizer"] = tokenizer
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "capital?"}],
                                               add_generation_prompt=True)
        n = len(prompt["input_ids"] if isinstance(prompt, dict) or hasattr(prompt, "keys") else prompt)
        return ForceText(tokenizer, '{"city": "Lyon"}', n)

    req = ask("capital?", max_tokens=30)
    req.constraint = constraint
    events = await collect(smol, req)
    assert seen["tokenizer"] is smol.tokenizer
    assert json.loads(text_of(events)) == {"city": "Lyon"}


@pytest.mark.slow
def test_count_tokens_uses_the_model_tokenizer(smol):
    assert smol.count_tokens("") == 0
    assert 1 <= smol.count_tokens("Paris") <= 2
    assert smol.count_tokens("The capital of France is Paris.") >= 6


@pytest.mark.slow
async def test_image_input_raises_a_clear_unsupported_input_error(smol):
    req = ThinkerRequest([Message("user", [TextPart("What is this?"),
                                           ImagePart(data=b"\x89PNG fake", mime="image/png")])])
    with pytest.raises(UnsupportedInputError, match="cannot read image input"):
        await collect(smol, req)
    # The Thinker is not broken by the bad request.
    assert "Paris" in text_of(await collect(smol, ask("What is the capital of France?", max_tokens=30)))


def test_text_only_is_what_the_embedded_model_accepts():
    assert TransformersThinker.default().accepts == frozenset({"text"})


# ------------------------------------------------------------------ model paths


def test_missing_model_path_raises_model_not_found_with_advice(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist.*embedded SmolLM2"):
        TransformersThinker(str(tmp_path / "no-such-model"))


def test_directory_without_a_model_raises_model_not_found(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a model directory"):
        TransformersThinker(tmp_path)


def test_non_gguf_file_is_rejected_with_a_clear_error(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf file"):
        TransformersThinker(f)


def test_hub_id_without_network_fails_with_an_offline_message(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    thinker = TransformersThinker("someone/not-a-cached-model")
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache.*HF_HUB_OFFLINE"):
        thinker.load()


# ------------------------------------------------------------------ text routing (fast)


def route(pieces, **kw):
    r = _TextRouter(**kw)
    out = []
    for p in pieces:
        out.extend(r.feed(p))
    out.extend(r.finish())
    return out


def test_think_block_split_across_deltas_becomes_reasoning():
    out = route(["<th", "ink>plan", " it</thi", "nk>\nAnswer."])
    assert "".join(e.text for e in out if isinstance(e, ReasoningDelta)) == "plan it"
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == "Answer."


def test_stop_string_split_across_deltas_is_caught_and_not_emitted():
    out = route(["Hello wor", "ld END", "more"], stop_strings=["END"])
    assert "".join(e.text for e in out) == "Hello world "


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    out = route(["value E", "xact"], stop_strings=["END"])
    assert "".join(e.text for e in out) == "value Exact"


def test_hermes_tool_call_becomes_a_tool_call_event_when_tools_are_offered():
    body = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    out = route(["Sure. <tool_", "call>", body[:20], body[20:], "</tool_call>"], parse_tools=True)
    calls = [e for e in out if isinstance(e, ToolCall)]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == "Sure. "


def test_tool_call_tags_stay_text_when_no_tools_are_offered():
    out = route(["<tool_call>{}</tool_call>"])
    assert "".join(e.text for e in out) == "<tool_call>{}</tool_call>"


def test_malformed_tool_call_is_kept_as_text_not_lost():
    out = route(["<tool_call>not json</tool_call>"], parse_tools=True)
    assert "".join(e.text for e in out if isinstance(e, TextDelta)) == "<tool_call>not json</tool_call>"


def test_hub_id_on_a_machine_without_network_fails_fast_and_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    # An endpoint that cannot resolve stands for "no network" on any machine.
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "ENDPOINT", "https://hub.invalid")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    thinker = TransformersThinker("someone/not-a-cached-model")
    t0 = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="hub is not reachable.*cannot connect to hub.invalid"):
        thinker.load()
    assert time.monotonic() - t0 < 10


def test_bad_thread_count_or_dtype_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="thinker.threads"):
        TransformersThinker.default(threads=0)
    with pytest.raises(ConfigError, match="thinker.dtype"):
        TransformersThinker.default(dtype="float8")
