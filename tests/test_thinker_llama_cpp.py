"""The llama.cpp Thinker backend on the embedded SmolLM2-135M GGUF (real model, real engine)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import threading
import time
from datetime import datetime
from typing import Iterator
from zoneinfo import ZoneInfo

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: ./setup.sh builds it")

from omni_agent import Agent  # noqa: E402
from omni_agent.errors import ConfigError, ModelNotFoundError, ThinkerError  # noqa: E402
from omni_agent.events import Finish, TextDelta, ToolCall  # noqa: E402
from omni_agent.middleware.tool_calling import ToolCalling  # noqa: E402
from omni_agent.thinker import GenerationSettings, Message, ThinkerRequest  # noqa: E402
from omni_agent.thinkers.embedded import embedded_thinker  # noqa: E402
from omni_agent.thinkers.llama_cpp import LlamaCppThinker  # noqa: E402
from omni_agent.thinkers.transformers import embedded_gguf_path  # noqa: E402
from omni_agent.tools import ToolRegistry, calculator, current_time  # noqa: E402
from omni_agent.tools.constrained import ToolCallConstraint  # noqa: E402


@pytest.fixture(scope="module")
def thinker() -> LlamaCppThinker:
    return LlamaCppThinker.default().load()


def ask(text: str, **kw: object) -> ThinkerRequest:
    settings = kw.pop("settings", None) or GenerationSettings(max_tokens=48)
    return ThinkerRequest(messages=[Message("system", "You are a helpful assistant."),
                                    Message("user", text)], settings=settings, **kw)  # type: ignore[arg-type]


async def collect(thinker: LlamaCppThinker, request: ThinkerRequest) -> list:
    return [ev async for ev in thinker.stream(request)]


@contextlib.contextmanager
def counting_evals(thinker: LlamaCppThinker) -> Iterator[list[int]]:
    """How many tokens each llama.cpp ``eval`` call evaluates while the block runs (the
    first of a generation is its prompt's part that was not reused)."""
    evaluated: list[int] = []
    real = thinker.llama.eval

    def spy(tokens):  # type: ignore[no-untyped-def]
        evaluated.append(len(tokens))
        return real(tokens)

    thinker.llama.eval = spy
    try:
        yield evaluated
    finally:
        del thinker.llama.eval


async def collect_counting(thinker: LlamaCppThinker, request: ThinkerRequest) -> tuple[list, list[int]]:
    """The events, and how many tokens each llama.cpp ``eval`` call evaluated."""
    with counting_evals(thinker) as evaluated:
        return await collect(thinker, request), evaluated


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_streams_text_and_ends_with_a_finish_event(thinker: LlamaCppThinker) -> None:
    events = await collect(thinker, ask("Say hello."))
    assert text_of(events).strip()
    assert sum(isinstance(e, TextDelta) for e in events) > 1  # token by token, not one blob
    fin = events[-1]
    assert isinstance(fin, Finish)
    assert fin.reason in ("stop", "length")
    # prompt_tokens counts the templated prompt, not just the message text
    assert fin.prompt_tokens == len(thinker._prompt_tokens(ask("Say hello.")))
    assert fin.prompt_tokens > thinker.count_tokens("Say hello.") + 5


async def test_a_reply_cut_by_max_tokens_says_length(thinker: LlamaCppThinker) -> None:
    events = await collect(thinker, ask("Tell me a long story about a dragon.",
                                        settings=GenerationSettings(max_tokens=5)))
    fin = events[-1]
    assert isinstance(fin, Finish) and fin.reason == "length" and fin.completion_tokens == 5


async def test_a_turn_cut_by_max_tokens_ends_with_reason_max_tokens(thinker: LlamaCppThinker) -> None:
    agent = Agent(thinker=thinker, settings=GenerationSettings(max_tokens=4))
    result = await agent.session().aask("Tell me a long story about a dragon.")
    assert result.reason == "max_tokens"
    assert result.trace.rounds[0]["finish_reason"] == "length"


async def test_stop_strings_end_generation_and_are_not_emitted(thinker: LlamaCppThinker) -> None:
    full = text_of(await collect(thinker, ask("Count from one to ten in words, separated by commas.")))
    words = re.findall(r"[A-Za-z]+", full)
    assert len(words) >= 3, full
    stop = words[2]
    events = await collect(thinker, ask("Count from one to ten in words, separated by commas.",
                                        settings=GenerationSettings(max_tokens=48, stop=[stop])))
    text = text_of(events)
    assert stop not in text and full.startswith(text)
    assert events[-1].reason == "stop"


async def test_closing_the_stream_stops_generation(thinker: LlamaCppThinker) -> None:
    stream = thinker.stream(ask("Tell me a long story about a dragon.",
                                settings=GenerationSettings(max_tokens=400)))
    seen = 0
    async for ev in stream:
        seen += 1
        if seen == 2:
            break
    t0 = time.monotonic()
    await stream.aclose()
    # The worker stops after the current token: the next request runs at once.
    events = await asyncio.wait_for(collect(thinker, ask("Say hi.", settings=GenerationSettings(max_tokens=3))), 30)
    assert isinstance(events[-1], Finish)
    assert time.monotonic() - t0 < 10


async def test_a_schema_constrained_tool_call(thinker: LlamaCppThinker) -> None:
    reg = ToolRegistry([current_time, calculator])
    req = ask("What time is it in Tokyo?", tools=reg.openai_schemas(), tool_choice="current_time",
              constraint=ToolCallConstraint(reg, ["current_time"]))
    events = await collect(thinker, req)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert len(calls) == 1 and calls[0].name == "current_time"
    args = json.loads(calls[0].arguments)
    assert set(args) == {"timezone"} and args["timezone"].strip()
    assert events[-1].reason == "tool_calls"


async def test_the_tokens_a_grammar_forces_are_evaluated_together_and_write_the_same_call(
        thinker: LlamaCppThinker) -> None:
    reg = ToolRegistry([current_time, calculator])

    def request(**kw: object) -> ThinkerRequest:
        return ask("What time is it in Tokyo?", tools=reg.openai_schemas(), tool_choice="current_time",
                   constraint=ToolCallConstraint(reg, ["current_time"]),
                   settings=GenerationSettings(max_tokens=48, temperature=0.0), **kw)

    def calls(events: list) -> list[tuple[str, str]]:
        return [(e.name, e.arguments) for e in events if isinstance(e, ToolCall)]

    events, evaluated = await collect_counting(thinker, request())
    # With logprobs every token is sampled and evaluated on its own.
    one_by_one, evaluated_each = await collect_counting(thinker, request(logprobs=0))
    assert calls(events) and calls(events) == calls(one_by_one)
    assert events[-1].completion_tokens == one_by_one[-1].completion_tokens
    assert len(evaluated) * 3 < len(evaluated_each)  # the tag, the name and the keys at once


async def test_tool_choice_required_without_a_constraint_is_still_a_call(thinker: LlamaCppThinker) -> None:
    reg = ToolRegistry([calculator])
    events = await collect(thinker, ask("What is 12 times 7?", tools=reg.openai_schemas(),
                                        tool_choice="required"))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.name for c in calls] == ["calculator"]
    assert "expression" in json.loads(calls[0].arguments)


async def test_a_named_tool_that_is_not_offered_is_an_error(thinker: LlamaCppThinker) -> None:
    reg = ToolRegistry([calculator])
    with pytest.raises(ThinkerError, match="not among the request's tools"):
        await collect(thinker, ask("hi", tools=reg.openai_schemas(), tool_choice="weather"))


async def test_response_format_json_schema_is_enforced(thinker: LlamaCppThinker) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                               "country": {"type": "string", "maxLength": 30}},
              "required": ["city", "country"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": True}}
    events = await collect(thinker, ask("Name a city in Italy and its country as JSON.",
                                        response_format=fmt, settings=GenerationSettings(max_tokens=60)))
    obj = json.loads(text_of(events))
    assert set(obj) == {"city", "country"}
    assert events[-1].reason == "stop"


async def test_response_format_json_object(thinker: LlamaCppThinker) -> None:
    # Unprompted, the model would answer in prose; under the grammar it writes an object.
    # (json_object has no schema to bound it: a small model may ramble until max_tokens,
    # and then the reply says "length", as OpenAI's does.)
    events = await collect(thinker, ask("Tell me about cats.", response_format={"type": "json_object"},
                                        settings=GenerationSettings(max_tokens=120)))
    text = text_of(events)
    assert text.startswith("{")
    if events[-1].reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert events[-1].reason == "length"


async def test_logprobs_come_on_the_text_deltas(thinker: LlamaCppThinker) -> None:
    events = await collect(thinker, ask("Say hello.", logprobs=3, settings=GenerationSettings(max_tokens=6)))
    entries = [lp for e in events if isinstance(e, TextDelta) and e.logprobs for lp in e.logprobs]
    assert entries
    for lp in entries:
        assert lp["logprob"] <= 0
        assert len(lp["top_logprobs"]) == 3
        # greedy: the chosen token is the most likely one
        assert lp["logprob"] >= max(t["logprob"] for t in lp["top_logprobs"]) - 1e-4
    assert "".join(lp["token"] for lp in entries) == text_of(events)


async def test_the_kv_cache_is_reused_across_turns(thinker: LlamaCppThinker) -> None:
    first = ask("What is the capital of France?")
    await collect(thinker, first)
    follow = ThinkerRequest(messages=first.messages + [Message("assistant", "Paris."),
                                                       Message("user", "And of Italy?")],
                            settings=GenerationSettings(max_tokens=8))
    events, evaluated = await collect_counting(thinker, follow)
    assert evaluated[0] < events[-1].prompt_tokens  # only the new part of the prompt


async def test_a_long_prompt_comes_back_from_its_saved_state_after_another_one(
        thinker: LlamaCppThinker) -> None:
    # A tool round's long system note and examples, a plain round in between, then the
    # tool round again with one more message: only the new part is evaluated, and the
    # answer is the one a fresh context gives.
    note = Message("system", "You call tools. current_time(timezone) tells the time. " * 12)
    examples = [m for _ in range(4) for m in (Message("user", "What time is it in Paris?"),
                                              Message("assistant", "It is noon in Paris."))]
    greedy = GenerationSettings(max_tokens=12, temperature=0.0)
    tool = ThinkerRequest(messages=[note, *examples, Message("user", "Time in Oslo?")], settings=greedy)
    again = ThinkerRequest(messages=[note, *examples, Message("user", "Time in Lima?")], settings=greedy)
    await collect(thinker, tool)
    await collect(thinker, ask("What is the capital of France?", settings=greedy))
    events, evaluated = await collect_counting(thinker, again)
    assert events[-1].prompt_tokens > 200
    assert evaluated[0] < 20  # "Time in Lima?" and the template around it, not the note
    fresh = LlamaCppThinker.default().load()
    try:
        assert text_of(events) == text_of(await collect(fresh, again))
    finally:
        await fresh.aclose()


GREEDY = GenerationSettings(max_tokens=12, temperature=0.0)
# A tool round's prompt: a long note every tool shares, then one tool's examples. The note
# is more than half of it, as in the embedded agent's rounds.
TOOL_NOTE = Message("system", "You call tools. current_time(timezone) tells the time; "
                    "calculator(expression) works out sums. Answer in one short sentence. " * 8)
TOOL_EXAMPLES = {
    "time": [("What time is it in Paris?", "It is noon in Paris."), ("Time in Rome?", "It is ten in Rome.")],
    "sum": [("What is 2 plus 2?", "2 plus 2 is 4."), ("What is 9 minus 3?", "9 minus 3 is 6.")],
}


def tool_round(kind: str, question: str, settings: GenerationSettings = GREEDY) -> ThinkerRequest:
    examples = [m for q, a in TOOL_EXAMPLES[kind] * 2 for m in (Message("user", q), Message("assistant", a))]
    return ThinkerRequest(messages=[TOOL_NOTE, *examples, Message("user", question)], settings=settings)


def topic_prompt(topic: str) -> ThinkerRequest:
    """A long prompt that shares nothing with the tool rounds but the template's first tokens."""
    return ThinkerRequest(messages=[Message("system", f"{topic} are the subject here. " * 20),
                                    Message("user", f"Tell me about {topic}.")],
                          settings=GenerationSettings(max_tokens=4, temperature=0.0))


async def answer_in_a_fresh_context(request: ThinkerRequest) -> str:
    fresh = LlamaCppThinker.default().load()
    try:
        return text_of(await collect(fresh, request))
    finally:
        await fresh.aclose()


async def test_one_tools_round_does_not_evict_another_tools_saved_state(thinker: LlamaCppThinker) -> None:
    await collect(thinker, tool_round("time", "Time in Oslo?"))
    await collect(thinker, tool_round("sum", "What is 3 plus 5?"))  # shares the long note
    events, evaluated = await collect_counting(thinker, tool_round("time", "Time in Lima?"))
    assert events[-1].prompt_tokens > 250
    assert evaluated[0] < 20  # the time round's examples came back with it


async def test_the_state_saved_after_an_answer_holds_the_reply(thinker: LlamaCppThinker) -> None:
    first = tool_round("time", "What time is it in Oslo?")
    events = await collect(thinker, first)
    reply, produced = text_of(events), events[-1].completion_tokens
    assert produced >= 4
    await collect(thinker, topic_prompt("volcanoes"))  # the context moves to another prompt
    follow = ThinkerRequest(messages=[*first.messages, Message("assistant", reply),
                                      Message("user", "And in Lima?")], settings=GREEDY)
    events, evaluated = await collect_counting(thinker, follow)
    new = events[-1].prompt_tokens - len(thinker._prompt_tokens(first)) - produced
    assert evaluated[0] <= new + 2  # the follow-up, not the reply again


async def test_a_stopped_generation_leaves_no_saved_state(thinker: LlamaCppThinker) -> None:
    story = ThinkerRequest(messages=[Message("system", "Glaciers are the subject here. " * 20),
                                     Message("user", "Tell me a long story about a glacier.")],
                           settings=GenerationSettings(max_tokens=200))
    stream = thinker.stream(story)
    async for _ in stream:
        break
    await stream.aclose()
    await collect(thinker, topic_prompt("comets"))  # the context moves to another prompt
    events, evaluated = await collect_counting(thinker, story)
    assert evaluated[0] > events[-1].prompt_tokens - 10  # evaluated again from the start


async def test_a_warmed_prompt_stays_pinned_while_other_prompts_come_and_go(thinker: LlamaCppThinker) -> None:
    n = await asyncio.to_thread(thinker.warm_prompt, tool_round("sum", "What is 7 plus 1?"))
    later = tool_round("sum", "How much is 6 times 4?")
    full = thinker._prompt_tokens(later)
    assert 250 < n < len(full)
    # The kept part is what any user text follows: the other request starts with it too.
    assert thinker._prompt_tokens(tool_round("sum", "Zebra"))[:n] == full[:n]
    for topic in ("rivers", "deserts", "forests", "oceans"):  # more than the recent states kept
        await collect(thinker, topic_prompt(topic))
    events, evaluated = await collect_counting(thinker, later)
    assert evaluated[0] == events[-1].prompt_tokens - n
    assert text_of(events) == await answer_in_a_fresh_context(later)


async def test_at_most_eight_prompts_stay_pinned_the_oldest_goes_first(thinker: LlamaCppThinker) -> None:
    words = ["Apples", "Bridges", "Castles", "Dolphins", "Engines", "Falcons", "Gardens", "Harbours", "Islands"]

    def about(word: str, question: str) -> ThinkerRequest:
        return ThinkerRequest(messages=[Message("system", f"{word} matter most. " * 10),
                                        Message("user", question)], settings=GREEDY)

    for w in words:
        assert await asyncio.to_thread(thinker.warm_prompt, about(w, "Hello.")) > 16
    _, oldest = await collect_counting(thinker, about(words[0], "Why?"))
    events, second = await collect_counting(thinker, about(words[1], "Why?"))
    assert oldest[0] > events[-1].prompt_tokens - 10  # dropped: evaluated in full
    assert second[0] < 10                             # still pinned


async def test_warming_a_prompt_waits_for_the_generation_in_progress(thinker: LlamaCppThinker) -> None:
    story = ask("Tell me a long story about a dragon.", settings=GenerationSettings(max_tokens=40, temperature=0.0))
    expected = await answer_in_a_fresh_context(story)
    stream = thinker.stream(story)
    events = [await stream.__anext__()]
    done = threading.Event()

    def warm() -> int:
        try:
            return thinker.warm_prompt(tool_round("time", "Time in Oslo?"))
        finally:
            done.set()

    warming = asyncio.create_task(asyncio.to_thread(warm))
    events += [ev async for ev in stream]
    # The context was never used by the warm-up while the story was being told.
    assert text_of(events) == expected
    assert await warming > 250 and done.is_set()


async def test_a_next_turn_warm_up_gives_way_to_a_generation(thinker: LlamaCppThinker) -> None:
    story = ask("Tell me a long story about a dragon.", settings=GenerationSettings(max_tokens=40, temperature=0.0))
    stream = thinker.stream(story)
    await stream.__anext__()
    next_turn = tool_round("time", "Time in Lima?")
    with counting_evals(thinker) as evaluated:
        assert await asyncio.to_thread(thinker.warm_prompt, next_turn, pin=False) == 0
        async for _ in stream:
            pass
    assert sum(evaluated) <= 41  # the story's tokens only: nothing of the warm-up
    assert await asyncio.to_thread(thinker.warm_prompt, next_turn, pin=False) > 250  # idle: it warms


async def test_embedded_agent_answers_the_time_in_tokyo_in_one_round(thinker: LlamaCppThinker) -> None:
    agent = Agent(thinker=thinker, tools=[current_time, calculator],
                  middleware=[ToolCalling(router=True, return_direct=["current_time"])])
    result = await agent.session().aask("What time is it in Tokyo?")
    assert len(result.trace.rounds) == 1
    assert result.tool_calls[0]["name"] == "current_time"
    now = datetime.now(ZoneInfo("Asia/Tokyo"))
    m = re.search(r"(\d{2}):(\d{2})", result.text)
    assert m, result.text
    minutes = int(m.group(1)) * 60 + int(m.group(2))
    assert abs(minutes - (now.hour * 60 + now.minute)) % (24 * 60) <= 2


# ---------------------------------------------------------------------------- bad input


def test_a_missing_gguf_path_says_what_to_give() -> None:
    with pytest.raises(ModelNotFoundError, match="GGUF file not found.*give the path"):
        LlamaCppThinker("/nonexistent/model.gguf")


def test_a_file_that_is_not_gguf_is_refused_clearly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(ModelNotFoundError, match="is not a GGUF file"):
        LlamaCppThinker(bad).load()


def test_a_truncated_gguf_is_refused_clearly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cut = tmp_path / "cut.gguf"
    with open(embedded_gguf_path(), "rb") as f:
        cut.write_bytes(f.read(2_000_000))
    with pytest.raises(ModelNotFoundError, match="truncated or corrupt"):
        LlamaCppThinker(cut).load()


def _without_template(src, dst) -> None:  # type: ignore[no-untyped-def]
    """A copy of a GGUF with its chat template removed (tensors copied as they are)."""
    import gguf

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch=str(bytes(r.fields["general.architecture"].parts[-1]), "utf-8"))
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "tokenizer.chat_template"):
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if sub == gguf.GGUFValueType.STRING:
                val = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            else:
                val = [f.parts[i].tolist()[0] for i in f.data]
            w.add_key_value(name, val, vt, sub_type=sub)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_key_value(name, bytes(f.parts[f.data[0]]).decode("utf-8"), vt)
        else:
            w.add_key_value(name, f.parts[f.data[0]].tolist()[0], vt)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_model_without_a_chat_template_says_what_to_do(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plain = tmp_path / "base.gguf"
    _without_template(embedded_gguf_path(), plain)
    with pytest.raises(ConfigError, match="no chat template.*chat_template"):
        LlamaCppThinker(plain).load()
    # ... and giving one makes it work
    t = LlamaCppThinker(plain, chat_template="{% for m in messages %}<|im_start|>{{ m.role }}\n"
                        "{{ m.content }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n").load()
    events = asyncio.run(collect(t, ask("Say hi.", settings=GenerationSettings(max_tokens=4))))
    assert isinstance(events[-1], Finish)


def test_bad_batch_threads_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="batch_threads"):
        LlamaCppThinker(batch_threads=0)
    assert LlamaCppThinker().batch_threads >= 1


def test_bad_threads_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="threads"):
        LlamaCppThinker(threads=0)


def test_without_llama_cpp_python_the_backend_says_how_to_get_it(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if it could not be built
    with pytest.raises(ModelNotFoundError, match="pip install llama-cpp-python.*transformers"):
        LlamaCppThinker().load()


def test_the_embedded_default_falls_back_to_transformers_without_llama_cpp(monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    import omni_agent.thinkers.embedded as embedded

    monkeypatch.setattr(embedded, "llama_cpp_available", lambda: False)
    monkeypatch.setattr(embedded, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="omni_agent.thinkers.embedded"):
        t = embedded_thinker()
    assert t.name == "transformers"
    assert "pip install llama-cpp-python" in caplog.text and "5x slower" in caplog.text


def test_the_embedded_default_uses_llama_cpp_when_installed() -> None:
    assert embedded_thinker().name == "llama-cpp"
    assert embedded_thinker(engine="transformers").name == "transformers"
    with pytest.raises(ConfigError, match="engine"):
        embedded_thinker(engine="vllm")


def test_requantize_runs_a_q4_0_copy_made_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = LlamaCppThinker.default(requantize="q4_0", cache_dir=tmp_path).load()
    assert first.loaded_from is not None and first.loaded_from.parent == tmp_path
    assert first.loaded_from.name.endswith(".q4_0.gguf")
    made = first.loaded_from.stat().st_mtime_ns
    again = LlamaCppThinker.default(requantize="q4_0", cache_dir=tmp_path).load()
    assert again.loaded_from == first.loaded_from and again.loaded_from.stat().st_mtime_ns == made
    events = asyncio.run(collect(again, ask("Say hi.", settings=GenerationSettings(max_tokens=4))))
    assert isinstance(events[-1], Finish)


def test_an_unwritable_cache_runs_the_file_as_it_is(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="omni_agent.thinkers.llama_cpp"):
        t = LlamaCppThinker.default(requantize="q4_0", cache_dir=blocked).load()
    assert t.loaded_from == embedded_gguf_path()
    assert "could not requantize" in caplog.text and "cache_dir" in caplog.text


def test_an_unknown_requantize_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="requantize"):
        LlamaCppThinker(requantize="q2_k")
