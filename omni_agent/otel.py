"""OpenTelemetry spans for turns, and W3C ``traceparent`` in and out (docs/observability.md).

Each turn becomes one span tree::

    turn
    ├── asr                         (audio turns the agent transcribed)
    ├── thinker.round               (one per Thinker round; attribute omni_agent.round)
    │   ├── execute_tool <name>     (the tool calls that round asked for)
    │   └── middleware <label>      (a change made while the round streamed)
    ├── middleware <label>          (input hooks, holds)
    └── synthesis                   (one per utterance the Talker spoke)

Only the turn span is open while the turn runs: it is the current span of the turn's
tasks, so the requests the OpenAI-compatible Thinker and Talker make carry its
``traceparent``. The stage spans are written when the turn ends, with the start and end
times the turn measured for its :class:`~omni_agent.trace.Trace` — no OpenTelemetry call
runs per event. Texts follow the trace: with ``keep_originals=False`` no span holds the
text before an intervention (nor the user's words, nor tool arguments unredacted).

Cost when unused: the package is never imported by omni-agent unless you configure it.
A turn asks ``sys.modules`` whether ``opentelemetry.trace`` was imported at all (one dict
look-up) and, if it was, whether a real TracerProvider is set; if not, nothing else runs.

Configure::

    omni_agent.otel.configure()                 # an SDK provider, exporters from OTEL_* env
    omni_agent.otel.configure(tracer_provider=my_provider)   # or your own provider
    # or set a global one with opentelemetry.trace.set_tracer_provider(...): used as well

The CLI (``omni-agent ...``) calls :func:`configure_from_env` when
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
``OTEL_TRACES_EXPORTER`` is set, or ``omni-agent --otel`` is given.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from time import monotonic
from typing import Any

from .errors import ConfigError

__all__ = [
    "TurnSpan",
    "attach_incoming",
    "configure",
    "configure_from_env",
    "detach",
    "enabled",
    "end_turn",
    "inject",
    "reset",
    "start_soon_in",
    "start_turn",
]

log = logging.getLogger(__name__)

SCOPE = "omni_agent"
_INSTALL = "pip install 'omni-agent[otel]'"

#: The provider :func:`configure` chose (None: the global one, if any is set).
_provider: Any = None
_tracer: Any = None


# ---------------------------------------------------------------------- configuration


def configure(tracer_provider: Any = None, *, exporters: Iterable[Any] | None = None,
              set_global: bool = True) -> Any:
    """Send the agent's spans somewhere. Returns the TracerProvider in use.

    * ``tracer_provider`` — your own provider: the agent's spans go there (it is not
      made the global one; set that yourself if you want other libraries to use it).
    * otherwise an SDK ``TracerProvider`` is built: its resource from
      ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name`` defaults to
      ``omni-agent``), its exporters ``exporters`` or those ``OTEL_TRACES_EXPORTER`` names
      (``otlp`` — the default —, ``console``, ``none``; comma-separated). The OTLP exporter
      speaks ``http/protobuf`` (``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` needs
      ``opentelemetry-exporter-otlp-proto-grpc``) and reads its endpoint, headers and
      timeout from the standard ``OTEL_EXPORTER_OTLP_*`` variables itself. With
      ``set_global`` it also becomes the global provider (once per process: OpenTelemetry
      refuses to replace a global provider).

    Raises :class:`~omni_agent.errors.ConfigError` when OpenTelemetry is not installed or
    an exporter is unknown.
    """
    global _provider, _tracer
    if tracer_provider is not None:
        _require("opentelemetry.trace", "opentelemetry-api")
        _provider, _tracer = tracer_provider, None
        return tracer_provider
    _require("opentelemetry.sdk.trace", "opentelemetry-sdk")
    from opentelemetry import trace as api
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attrs: dict[str, Any] = {}
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""):
        attrs["service.name"] = "omni-agent"
    provider = TracerProvider(resource=Resource.create(attrs))
    for exporter in (list(exporters) if exporters is not None else _env_exporters()):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        current = api.get_tracer_provider()
        if isinstance(current, (api.ProxyTracerProvider, api.NoOpTracerProvider)):
            api.set_tracer_provider(provider)
    _provider, _tracer = provider, None
    return provider


def configure_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """:func:`configure` when the environment asks for traces: ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_TRACES_EXPORTER`` (not ``none``) is set
    and ``OTEL_SDK_DISABLED`` is not ``true``. Returns True when it configured. Checks the
    environment only (nothing is imported) when none of them is set. OpenTelemetry missing
    is a logged warning here (such variables are often inherited by every process)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    names = env.get("OTEL_TRACES_EXPORTER")
    if names is not None:
        if names.strip().lower() in ("", "none"):
            return False
    elif not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return False
    try:
        configure()
    except ConfigError as e:
        log.warning("OTEL_* variables are set but traces are off: %s", e)
        return False
    return True


def reset() -> None:
    """Forget the provider :func:`configure` chose (the global one, if any, stays in use)."""
    global _provider, _tracer
    _provider = _tracer = None


def _require(module: str, package: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f"OpenTelemetry is not installed ({package} is missing): {_INSTALL}") from None


def _env_exporters() -> list[Any]:
    out = []
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in (n.strip().lower() for n in names.split(",")):
        if name in ("", "none"):
            continue
        if name == "otlp":
            out.append(_otlp_exporter())
        elif name == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            out.append(ConsoleSpanExporter())
        else:
            raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (use otlp, console or none)")
    return out


def _otlp_exporter() -> Any:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
        except ImportError:
            raise ConfigError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs "
                              "opentelemetry-exporter-otlp-proto-grpc; or use http/protobuf "
                              f"(the default, in {_INSTALL})") from None
        return OTLPSpanExporter()
    if protocol not in ("http/protobuf", "http"):
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use "
                          "http/protobuf (or grpc)")
    try:
        # The grpc branch above binds the same name to grpc's class; both are SpanExporters.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    except ImportError:
        raise ConfigError(f"the OTLP exporter is not installed: {_INSTALL}") from None
    return OTLPSpanExporter()


# ---------------------------------------------------------------------- the cheap gate


def _active_provider() -> Any:
    """The provider to use, or None when tracing is off (not imported, not configured)."""
    if _provider is not None:
        return _provider
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None  # nobody imported OpenTelemetry: it cannot be configured
    p = api.get_tracer_provider()
    if isinstance(p, (api.ProxyTracerProvider, api.NoOpTracerProvider)):
        return None
    return p


def enabled() -> bool:
    """True when turns are traced (a provider is configured or set globally)."""
    return _active_provider() is not None


def _get_tracer() -> Any:
    global _tracer
    provider = _active_provider()
    if provider is None:
        return None
    if _provider is None or _tracer is None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ver = version("omni-agent")
        except PackageNotFoundError:
            ver = None
        tracer = provider.get_tracer(SCOPE, ver)
        if _provider is None:
            return tracer  # the global provider may change: ask it each turn
        _tracer = tracer
    return _tracer


# ---------------------------------------------------------------------- propagation


def inject(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``/``baggage``) of the current span to
    ``headers`` — a dict or ``httpx.Headers``. Does nothing when tracing is off."""
    if _active_provider() is None:
        return
    from opentelemetry import propagate

    propagate.inject(headers)


def attach_incoming(headers: Mapping[str, str]) -> Any:
    """Make the ``traceparent`` of an incoming request the parent of what runs next in
    this task (the turns it starts). Returns a token for :func:`detach`, or None when
    tracing is off or the request carries no ``traceparent``."""
    if "traceparent" not in headers or _active_provider() is None:
        return None
    from opentelemetry import context, propagate

    return context.attach(propagate.extract(headers))


def detach(token: Any) -> None:
    """Undo :func:`attach_incoming` (None: nothing to undo)."""
    if token is not None:
        from opentelemetry import context

        context.detach(token)


# ---------------------------------------------------------------------- the turn


class TurnSpan:
    """The open span of a running turn, and the clock to place its stages with."""

    __slots__ = ("base_ns", "span", "started", "tracer")

    def __init__(self, span: Any, tracer: Any, base_ns: int, started: float):
        self.span, self.tracer, self.base_ns, self.started = span, tracer, base_ns, started

    def ns(self, since_start: float) -> int:
        """Wall-clock ns of a moment given in seconds since the turn started."""
        return self.base_ns + int(since_start * 1e9)


def start_turn(trace: Any, agent: Any = None) -> TurnSpan | None:
    """Open the turn span (None, and no other work, when tracing is off). Its parent is
    the current context: an incoming ``traceparent`` the server attached, or your span."""
    tracer = _get_tracer()
    if tracer is None:
        return None
    # The trace measures in monotonic seconds; spans want wall-clock ns.
    base_ns = time.time_ns() - int((monotonic() - trace.started) * 1e9)
    attrs: dict[str, Any] = {"omni_agent.session.id": trace.session_id,
                             "omni_agent.turn.id": trace.turn_id,
                             "omni_agent.keep_originals": trace.keep_originals}
    if agent is not None:
        attrs["omni_agent.thinker"] = getattr(agent.thinker, "name", type(agent.thinker).__name__)
        if agent.talker is not None:
            attrs["omni_agent.talker"] = getattr(agent.talker, "name", type(agent.talker).__name__)
    span = tracer.start_span("turn", start_time=base_ns, attributes=attrs)
    return TurnSpan(span, tracer, base_ns, trace.started)


def start_soon_in(ts: TurnSpan, start_soon: Callable[..., Any], fn: Callable[..., Any], *args: Any) -> None:
    """``start_soon(fn, *args)`` with the turn span current in the new task (a task copies
    the context it was started in); the caller's own context is left as it was."""
    from opentelemetry import context, trace as api

    token = context.attach(api.set_span_in_context(ts.span))
    try:
        start_soon(fn, *args)
    finally:
        context.detach(token)


def end_turn(ts: TurnSpan, trace: Any, turn: Any = None, agent: Any = None,
             redact: list[Callable[[str], str]] | None = None) -> None:
    """Write the stage spans from what the trace measured and end the turn span. Never
    raises: a tracing problem must not fail a turn that worked."""
    try:
        _write(ts, trace, turn, agent, redact or [])
    except Exception:
        log.exception("omni_agent.otel: the spans of turn %s were not written", trace.turn_id)
        ts.span.end()


def _write(ts: TurnSpan, trace: Any, turn: Any, agent: Any, redact: list[Callable[[str], str]]) -> None:
    end_s = trace.timings.get("end", monotonic() - trace.started)
    if ts.span.is_recording():  # else sampled out: nothing to describe
        w = _TurnWriter(ts, trace, redact, end_s)
        w.turn_facts(turn)
        w.asr(turn, agent)
        w.thinker_rounds(agent)
        w.tool_calls()
        w.interventions(w.synthesis())
        w.holds()
    ts.span.end(end_time=ts.ns(end_s))


class _TurnWriter:
    """Writes the stage spans of one finished turn under its (recording) turn span, one
    method per stage, from what the trace measured."""

    def __init__(self, ts: TurnSpan, trace: Any, redact: list[Callable[[str], str]], end_s: float):
        from opentelemetry import trace as api
        from opentelemetry.trace import Status, StatusCode

        self._api, self._status, self._error = api, Status, StatusCode.ERROR
        self.ts, self.span, self.trace, self.redact, self.end_s = ts, ts.span, trace, redact, end_s
        self.keep = trace.keep_originals
        self.timings = trace.timings
        self.parent = api.set_span_in_context(ts.span)
        self.rounds: list[tuple[float, Any, float]] = []  # (start, context, end) of each round

    def child(self, name: str, ctx: Any, start: float, end: float, attrs: dict[str, Any],
              error: str | None = None) -> Any:
        """A finished span under ``ctx``; its context (to put spans under it)."""
        s = self.ts.tracer.start_span(name, context=ctx, start_time=self.ts.ns(start),
                                      attributes={k: v for k, v in attrs.items() if v is not None})
        if error is not None:
            s.set_status(self._status(self._error, error))
        s.end(end_time=self.ts.ns(max(start, end)))
        return self._api.set_span_in_context(s)

    def turn_facts(self, turn: Any) -> None:
        span, trace, timings = self.span, self.trace, self.timings
        for name, value in timings.items():
            span.set_attribute(f"omni_agent.timing.{name}_s", round(value, 6))
        for name, value in trace.holds.items():
            span.set_attribute(f"omni_agent.held.{name}_s", round(value, 6))
        span.set_attribute("omni_agent.turn.interrupted", "interrupted" in timings)
        span.set_attribute("omni_agent.turn.rounds", len(trace.rounds))
        span.set_attribute("omni_agent.turn.tool_calls", len(trace.tool_calls))
        span.set_attribute("omni_agent.turn.interventions", len(trace.interventions))
        spoken = trace.spoken_text
        if spoken:
            span.set_attribute("omni_agent.turn.spoken", spoken)
        if self.keep and turn is not None and turn.text:
            span.set_attribute("omni_agent.turn.input", turn.text)  # the user's words: originals
        for e in trace.errors:
            span.add_event("error", {"omni_agent.stage": e["stage"], "omni_agent.message": e["message"]})
        if trace.errors:
            span.set_status(self._status(self._error, trace.errors[0]["message"][:200]))

    def asr(self, turn: Any, agent: Any) -> None:
        timings = self.timings
        if "asr" not in timings:
            return
        start = timings.get("asr_start", 0.0)
        attrs: dict[str, Any] = {"omni_agent.ears": type(agent.ears).__name__ if agent is not None else None}
        if turn is not None:
            from .events import AudioPart

            audio = [p for p in turn.parts if isinstance(p, AudioPart)]
            secs = sum(len(p.pcm) / 2 / p.sample_rate for p in audio if p.pcm and p.sample_rate)
            attrs["omni_agent.asr.audio_s"] = round(secs, 3)
            if self.keep:
                attrs["omni_agent.asr.transcript"] = " ".join(p.transcript for p in audio if p.transcript)
        self.child("asr", self.parent, start, start + timings["asr"], attrs)

    def thinker_rounds(self, agent: Any) -> None:
        thinker = agent.thinker if agent is not None else None
        model = getattr(thinker, "model", None)
        for r in self.trace.rounds:
            start, end = r.get("start"), r.get("end")
            if start is None or end is None:
                continue
            attrs = {"omni_agent.round": r["round"], "gen_ai.operation.name": "chat",
                     "gen_ai.system": getattr(thinker, "name", None),
                     "gen_ai.request.model": model if isinstance(model, str) else None,
                     "gen_ai.response.finish_reasons": [r["finish_reason"]] if r.get("finish_reason") else None,
                     "gen_ai.usage.input_tokens": r.get("prompt_tokens"),
                     "gen_ai.usage.output_tokens": r.get("completion_tokens")}
            if r["round"] == 0 and "thinker_first_token" in self.timings:
                attrs["omni_agent.time_to_first_token_s"] = round(self.timings["thinker_first_token"] - start, 6)
            self.rounds.append((start, self.child("thinker.round", self.parent, start, end, attrs), end))

    def round_at(self, t: float) -> Any:
        """The context of the latest round started by ``t`` (the turn's before any)."""
        found = self.parent
        for start, ctx, _ in self.rounds:
            if start <= t:
                found = ctx
        return found

    def tool_calls(self) -> None:
        # Under the round that asked for them (tool round k follows Thinker round k-1);
        # they start when that round's stream ended and last what the tool took.
        for tc in self.trace.tool_calls:
            k = tc.get("round", 1) - 1
            ctx, start = self.parent, None
            if 0 <= k < len(self.rounds):
                _, ctx, start = self.rounds[k]  # the round's end
            if start is None:
                start = self.end_s - tc.get("seconds", 0.0)
            args, result = tc.get("arguments"), tc.get("result")
            if not self.keep or self.redact:
                args, result = _redact(self.redact, args), _redact(self.redact, result)
            attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tc.get("name"),
                     "gen_ai.tool.call.id": tc.get("id"), "omni_agent.tool.status": tc.get("status"),
                     "omni_agent.tool.arguments": args if isinstance(args, str) else None,
                     "omni_agent.tool.result": result if isinstance(result, str) else None}
            error = (result[:200] if isinstance(result, str) else "error") if tc.get("is_error") else None
            self.child(f"execute_tool {tc.get('name')}", ctx, start, start + tc.get("seconds", 0.0),
                       attrs, error=error)

    def synthesis(self) -> list[tuple[float, float, Any]]:
        """One span per utterance the Talker took; their (start, end, context)."""
        synth: list[tuple[float, float, Any]] = []
        for seg in self.trace.segments:
            if seg.started is None:
                continue
            ended = seg.ended if seg.ended is not None else self.end_s
            attrs = {"omni_agent.utterance.index": seg.index, "omni_agent.utterance.status": seg.status,
                     "omni_agent.utterance.fallback": seg.fallback,
                     "omni_agent.utterance.delivered": seg.delivered,
                     "omni_agent.utterance.spoken": seg.spoken,
                     "omni_agent.utterance.display": seg.display,
                     # None with keep_originals=False: the trace did not keep it
                     "omni_agent.utterance.original": seg.original if self.keep else None}
            ctx = self.child("synthesis", self.parent, seg.started, ended, attrs,
                             error="the Talker failed" if seg.status == "failed" else None)
            synth.append((seg.started, ended, ctx))
        return synth

    def interventions(self, synth: list[tuple[float, float, Any]]) -> None:
        """Middleware changes, under the stage where they happened."""
        for iv in self.trace.interventions:
            at = iv.ts - self.trace.started
            if iv.point == "input":
                ctx = self.parent
            elif iv.point == "audio":
                ctx = next((c for a, b, c in synth if a <= at <= b), self.parent)
            else:  # event, stream, utterance: while a Thinker round streamed
                ctx = self.round_at(at)
            attrs = {"omni_agent.middleware": iv.middleware, "omni_agent.middleware.point": iv.point,
                     "omni_agent.middleware.action": iv.action,
                     "omni_agent.middleware.reason": iv.reason or None,
                     # ``before`` is None already when keep_originals is off (Trace.record)
                     "omni_agent.middleware.before": iv.before if self.keep else None,
                     "omni_agent.middleware.after": iv.after}
            failed = iv.action in ("error", "timeout")
            self.child(f"middleware {iv.middleware}", ctx, at, at, attrs,
                       error=iv.reason[:200] if failed else None)

    def holds(self) -> None:
        """One span per middleware that held text back, as long as all its holds together."""
        first = self.rounds[0][0] if self.rounds else 0.0
        ctx = self.rounds[0][1] if self.rounds else self.parent
        for label, held in self.trace.holds.items():
            self.child(f"middleware {label}", ctx, first, first + held,
                       {"omni_agent.middleware": label, "omni_agent.middleware.action": "hold",
                        "omni_agent.middleware.held_s": round(held, 6)})


def _redact(fns: list[Callable[[str], str]], text: Any) -> Any:
    if isinstance(text, str):
        for fn in fns:
            text = fn(text)
    return text
