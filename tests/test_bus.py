"""The bus: hooks pass, rewrite, drop and block items; failures are fail-closed and traced."""

import asyncio

import pytest

from omni_agent.bus import Bus, Middleware, RoundEnd, TurnContext, hook
from omni_agent.errors import Blocked
from omni_agent.events import TextDelta, Utterance


async def collect(bus, events, ctx=None):
    ctx = ctx or TurnContext("s", 1)

    async def src():
        for e in events:
            yield e

    return [e async for e in bus.process_stream(src(), ctx)], ctx


class Upper(Middleware):
    def on_event(self, ev, ctx):
        return TextDelta(ev.text.upper())


class AsyncSuffix(Middleware):
    async def on_event(self, ev, ctx):
        await asyncio.sleep(0)
        return TextDelta(ev.text + "!")


class DropX(Middleware):
    def on_event(self, ev, ctx):
        return None if ev.text == "x" else ev


async def test_event_hooks_run_in_order_sync_and_async():
    out, ctx = await collect(Bus([Upper(), AsyncSuffix()]), [TextDelta("a"), TextDelta("b")])
    assert [e.text for e in out] == ["A!", "B!"]
    assert [(i.middleware, i.action, i.before, i.after) for i in ctx.trace.interventions][:2] == [
        ("Upper", "rewrite", "a", "A"), ("AsyncSuffix", "rewrite", "A", "A!")]


async def test_returning_none_drops_the_event_and_is_traced():
    out, ctx = await collect(Bus([DropX()]), [TextDelta("a"), TextDelta("x"), TextDelta("b")])
    assert [e.text for e in out] == ["a", "b"]
    assert [(i.action, i.before) for i in ctx.trace.interventions] == [("drop", "x")]


async def test_a_raising_event_hook_blocks_only_that_event_and_reports_an_error():
    class Flaky(Middleware):
        def on_event(self, ev, ctx):
            if ev.text == "bad":
                raise RuntimeError("boom")
            return ev

    out, ctx = await collect(Bus([Flaky()]), [TextDelta("ok"), TextDelta("bad"), TextDelta("fine")])
    texts = [getattr(e, "text", None) for e in out]
    assert "bad" not in texts and texts[0] == "ok" and texts[-1] == "fine"
    assert any(e.type == "error" and "boom" in e.message for e in out)
    assert ctx.trace.interventions[0].action == "error"


async def test_pass_through_hooks_leave_no_trace():
    class Same(Middleware):
        def on_event(self, ev, ctx):
            return ev

    out, ctx = await collect(Bus([Same(), Same()]), [TextDelta("a")])
    assert [e.text for e in out] == ["a"] and ctx.trace.interventions == []


async def test_round_end_passes_hooks_untouched():
    seen = []

    class Spy(Middleware):
        def on_event(self, ev, ctx):
            seen.append(ev)
            return ev

    out, _ = await collect(Bus([Spy()]), [TextDelta("a"), RoundEnd(round=0)])
    assert [type(e) for e in out] == [TextDelta, RoundEnd] and len(seen) == 1


async def test_stream_middleware_can_hold_text_and_its_hold_is_measured():
    class HoldAll(Middleware):
        async def stream(self, events, ctx):
            buf = []
            async for ev in events:
                if isinstance(ev, TextDelta):
                    buf.append(ev.text)
                    await asyncio.sleep(0.01)
                else:
                    yield TextDelta("".join(buf))
                    yield ev

    out, ctx = await collect(Bus([HoldAll()]), [TextDelta("555-01"), TextDelta("99"), RoundEnd()])
    assert out[0].text == "555-0199"
    assert ctx.trace.holds["HoldAll"] >= 0.015


async def test_utterance_hook_block_and_timeout_are_fail_closed():
    @hook("utterance")
    def no_secret(utt, ctx):
        if "secret" in utt.text:
            raise Blocked("mentions a secret")
        return utt

    @hook("utterance", timeout=0.01)
    async def slow(utt, ctx):
        await asyncio.sleep(0.2)
        return utt

    ctx = TurnContext("s", 1)
    out, by = await Bus([no_secret]).process_utterance(Utterance(text="the secret is 42"), ctx)
    assert out is None and by.label == "no_secret"
    assert ctx.trace.interventions[-1].reason == "mentions a secret"
    out, by = await Bus([slow]).process_utterance(Utterance(text="hello"), ctx)
    assert out is None and ctx.trace.interventions[-1].action == "timeout"


async def test_sync_hook_over_budget_is_refused_after_the_fact():
    import time

    @hook("utterance", timeout=0.005)
    def slow(utt, ctx):
        time.sleep(0.02)
        return utt

    ctx = TurnContext("s", 1)
    out, by = await Bus([slow]).process_utterance(Utterance(text="hi"), ctx)
    assert out is None and ctx.trace.interventions[-1].action == "timeout"


async def test_in_place_change_is_traced_as_rewrite():
    @hook("utterance")
    def lower(utt, ctx):
        utt.text = utt.text.lower()
        return utt

    ctx = TurnContext("s", 1)
    out, _ = await Bus([lower]).process_utterance(Utterance(text="HELLO"), ctx)
    assert out.text == "hello"
    iv = ctx.trace.interventions[-1]
    assert (iv.action, iv.before, iv.after) == ("rewrite", "HELLO", "hello")


async def test_keep_originals_off_keeps_the_before_text_out_of_the_trace():
    from omni_agent.trace import Trace

    @hook("utterance")
    def redact(utt, ctx):
        utt.text = "[redacted]"
        return utt

    ctx = TurnContext("s", 1, trace=Trace(keep_originals=False))
    await Bus([redact]).process_utterance(Utterance(text="card 4111 1111 1111 1111"), ctx)
    iv = ctx.trace.interventions[-1]
    assert iv.before is None and iv.after == "[redacted]"


def test_unknown_hook_point_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown hook point"):
        hook("speech")


async def test_a_hook_can_say_why_it_changed_an_item():
    @hook("utterance")
    def redact(utt, ctx):
        ctx.note("phone number")
        return Utterance(text="call [phone]")

    ctx = TurnContext("s", 1)
    await Bus([redact]).process_utterance(Utterance(text="call 555-0199"), ctx)
    assert ctx.trace.interventions[-1].reason == "phone number"
