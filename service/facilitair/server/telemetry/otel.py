"""Telemetry through OpenTelemetry: spans and the GenAI client metrics (imported only when configured).

Spans are started with an explicit parent, never through the global context or global providers: the providers are
the server's own (tests inject theirs), and the vendors' SDKs, which look for a global one, keep recording nothing.
Attributes and metrics follow the OpenTelemetry GenAI semantic conventions; everything about an attempt is recorded
at its end, from the totals the attempt keeps anyway, so no token costs more with tracing on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Histogram, MeterProvider
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from facilitair.server.telemetry import (
    AttemptRequest,
    AttemptTrace,
    AttemptUsage,
    StageTrace,
    StretchTrace,
    Telemetry,
    valid_traceparent,
)

_PROPAGATOR = TraceContextTextMapPropagator()
# The conventions' advised buckets: seconds for the durations, powers of 4 for token counts.
_SECONDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
_TOKENS = tuple(float(4**n) for n in range(14))
# The GenAI conventions' provider names for ours; `local` is llama.cpp's server on this machine.
_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "local": "llama.cpp"}


def _context_of(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The context a W3C traceparent names, or None when there is no valid one."""
    valid = valid_traceparent(traceparent)
    if valid is None:
        return None
    carrier = {"traceparent": valid}
    if tracestate:
        carrier["tracestate"] = tracestate[:512]
    return _PROPAGATOR.extract(carrier)


def _traceparent(span: Span) -> str:
    """A span's W3C traceparent, to store."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _fail(span: Span, error: str) -> None:
    span.set_attribute("error.type", error)
    span.set_status(Status(StatusCode.ERROR))


class _Instruments:
    """The GenAI client metrics."""

    def __init__(self, meters: MeterProvider) -> None:
        meter = meters.get_meter("facilitair")
        self.duration: Histogram = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(_SECONDS),
        )
        self.tokens: Histogram = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(_TOKENS),
        )
        self.first_chunk: Histogram = meter.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time to receive the first chunk of a streaming response",
            explicit_bucket_boundaries_advisory=list(_SECONDS),
        )


class _Attempt(AttemptTrace):
    def __init__(self, span: Span, request: AttemptRequest, instruments: _Instruments, capture: bool) -> None:
        self._span = span
        self._request = request
        self._instruments = instruments
        self._capture = capture
        self._started = time.monotonic()
        self._first: float | None = None

    def first_chunk(self) -> None:
        self._first = time.monotonic()

    def end(
        self,
        usage: AttemptUsage | None,
        *,
        response_model: str = "",
        finish_reason: str | None = None,
        error: str | None = None,
        output: str = "",
    ) -> None:
        span, request = self._span, self._request
        elapsed = time.monotonic() - self._started
        provider = _PROVIDER_NAMES.get(request.provider, request.provider)
        metric: dict[str, str] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.request.model": request.model,
            "server.address": request.host.rpartition(":")[0] or request.host,
        }
        if response_model:
            span.set_attribute("gen_ai.response.model", response_model)
            metric["gen_ai.response.model"] = response_model
        if finish_reason is not None:
            span.set_attribute("gen_ai.response.finish_reasons", (finish_reason,))
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cache_read_tokens)
            span.set_attribute("gen_ai.usage.cache_creation.input_tokens", usage.cache_write_tokens)
            if usage.output_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if self._first is not None:
            first = self._first - self._started
            span.set_attribute("gen_ai.response.time_to_first_chunk", first)
            self._instruments.first_chunk.record(first, metric)
        if self._capture and output:
            message = {"role": "assistant", "parts": [{"type": "text", "content": output}]}
            if finish_reason is not None:
                message["finish_reason"] = finish_reason
            span.set_attribute("gen_ai.output.messages", json.dumps([message]))
        if error is not None:
            _fail(span, error)
            metric["error.type"] = error
        self._instruments.duration.record(elapsed, metric)
        if usage is not None:
            self._instruments.tokens.record(usage.input_tokens, {**metric, "gen_ai.token.type": "input"})
            if usage.output_tokens is not None:
                self._instruments.tokens.record(usage.output_tokens, {**metric, "gen_ai.token.type": "output"})
        span.end()


class _Stage(StageTrace):
    def __init__(self, owner: OtelTelemetry, span: Span) -> None:
        self._owner = owner
        self._span = span
        self._context = trace.set_span_in_context(span, Context())

    def attempt(self, request: AttemptRequest) -> AttemptTrace:
        host, _, port = request.host.rpartition(":")
        attributes: dict[str, str | int | float] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": _PROVIDER_NAMES.get(request.provider, request.provider),
            "gen_ai.request.model": request.model,
            "gen_ai.request.max_tokens": request.max_tokens,
            "server.address": host or request.host,
        }
        if host and port.isdigit():
            attributes["server.port"] = int(port)
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        capture = self._owner.capture_content
        if capture:
            attributes["gen_ai.system_instructions"] = json.dumps([{"type": "text", "content": request.system}])
            user = {"role": "user", "parts": [{"type": "text", "content": request.prompt}]}
            attributes["gen_ai.input.messages"] = json.dumps([user])
        span = self._owner.tracer.start_span(
            f"chat {request.model}", context=self._context, kind=SpanKind.CLIENT, attributes=attributes
        )
        return _Attempt(span, request, self._owner.instruments, capture)

    def end(self, error: str | None = None) -> None:
        if error is not None:
            _fail(self._span, error)
        self._span.end()


class _Stretch(StretchTrace):
    def __init__(self, owner: OtelTelemetry, span: Span) -> None:
        self._owner = owner
        self._span = span
        self._context = trace.set_span_in_context(span, Context())
        self.traceparent = _traceparent(span)

    def stage(self, agent: str, stage: int) -> StageTrace:
        span = self._owner.tracer.start_span(
            f"invoke_agent {agent}",
            context=self._context,
            kind=SpanKind.INTERNAL,
            attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, "facilitair.stage": stage},
        )
        return _Stage(self._owner, span)

    def end(self, ending: str, error: str | None = None) -> None:
        self._span.set_attribute("facilitair.run.ending", ending)
        if error is not None:
            _fail(self._span, error)
        self._span.end()


class OtelTelemetry(Telemetry):
    """Telemetry recorded through the given providers (the server's own, or a test's in-memory ones)."""

    enabled = True

    def __init__(
        self, tracers: TracerProvider, meters: MeterProvider, *, capture_content: bool = False
    ) -> None:
        self._providers = (tracers, meters)
        self.tracer = tracers.get_tracer("facilitair")
        self.instruments = _Instruments(meters)
        self.capture_content = capture_content

    @contextlib.contextmanager
    def server_span(
        self, name: str, traceparent: str | None, tracestate: str | None = None
    ) -> Iterator[str | None]:
        parent = _context_of(traceparent, tracestate) or Context()
        if " " in name:  # an HTTP route: "POST /v1/runs"
            verb, _, route = name.partition(" ")
            attributes = {"http.request.method": verb, "http.route": route}
        else:  # a gRPC method: "facilitair.v1.OrchestratorService/Collaborate"
            service, _, method = name.partition("/")
            attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        try:
            yield _traceparent(span)
        except BaseException as exc:
            _fail(span, type(exc).__qualname__)
            raise
        finally:
            span.end()

    def stretch(self, run_id: str, *, created: str | None, previous: str | None) -> StretchTrace:
        links = []
        before = _context_of(previous)
        if before is not None:
            previous_span = trace.get_current_span(before).get_span_context()
            links.append(Link(previous_span, {"facilitair.link": "previous_stretch"}))
        span = self.tracer.start_span(
            "facilitair.run",
            context=_context_of(created) or Context(),
            kind=SpanKind.INTERNAL,
            links=links,
            attributes={"facilitair.run.id": run_id, "facilitair.run.resumed": previous is not None},
        )
        return _Stretch(self, span)

    def shutdown(self) -> None:
        for provider in self._providers:
            stop = getattr(provider, "shutdown", None)
            if stop is not None:
                stop()


def exporting(*, capture_content: bool) -> OtelTelemetry:
    """Telemetry exported over OTLP/HTTP, configured by the standard OTEL_* variables (endpoint, headers, service
    name and resource attributes, export intervals)."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    resource = Resource.create({"service.name": "facilitair", **_service_name()})
    tracers = SdkTracerProvider(resource=resource)
    tracers.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meters = SdkMeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
    return OtelTelemetry(tracers, meters, capture_content=capture_content)


def _service_name() -> Mapping[str, str]:
    """OTEL_SERVICE_NAME when set (Resource.create reads it too, but our default must not override it)."""
    name = os.environ.get("OTEL_SERVICE_NAME", "").strip()
    return {"service.name": name} if name else {}
