"""Traces and GenAI metrics of runs: OpenTelemetry when the `otel` extra is installed and configured, else nothing.

The server sees only the classes below. Their methods do nothing, so a server without the extra, or with it but
unconfigured, pays one no-op call per RPC, stretch, stage and attempt, and none per token; `from_environment` is
the one place that imports the OpenTelemetry SDK (telemetry/otel.py), and only when an OTLP endpoint is set.

The shape of a run's trace (docs/telemetry.md):

    RPC span (SERVER, child of the caller's traceparent; its context is stored with the run)
      └─ stretch: one span per stretch a replica drives the run (child of the stored context, linked to the stretch
         before it after a takeover or restart)
           └─ invoke_agent {agent}: one per stage
                └─ chat {model}: one per provider attempt (CLIENT); retries and fallbacks are siblings
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# W3C Trace Context, version 00 (a later version is read by its first four fields, as the spec says).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# The standard variables that say where to export; with none of them set nothing is imported or exported.
ENDPOINT_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
)
# The GenAI instrumentations' standard switch for recording prompts and outputs (off: never recorded).
CAPTURE_CONTENT_VARIABLE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def valid_traceparent(value: str | bytes | None) -> str | None:
    """`value` if it is a W3C traceparent a trace can continue from (lower-case, ids not all zero), else None.

    What a caller sends is stored with its run, so anything else (too long, malformed, version ff) is dropped here.
    """
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if value is None or len(value) > 512:
        return None
    value = value.strip()
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return value[:55]


@dataclass(frozen=True, slots=True)
class AttemptUsage:
    """What a provider attempt consumed, as the attempt already totals it (recorded once, at its end)."""

    input_tokens: int
    output_tokens: int | None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True, slots=True)
class AttemptRequest:
    """What an attempt asks of a provider. `system` and `prompt` are recorded only with content capture on."""

    provider: str  # the provider's name in model references: openai, anthropic, local
    host: str  # host[:port] of its API
    model: str
    max_tokens: int
    temperature: float | None
    system: str
    prompt: str


class AttemptTrace:
    """One provider attempt: a `chat {model}` span and the GenAI client metrics. Does nothing here."""

    def first_chunk(self) -> None:
        """The provider's first text arrived (time to first chunk)."""

    def end(
        self,
        usage: AttemptUsage | None,
        *,
        response_model: str = "",
        finish_reason: str | None = None,
        error: str | None = None,
        output: str = "",
    ) -> None:
        """The attempt is over: cleanly (`finish_reason`) or not (`error`, the error.type)."""


class StageTrace:
    """One stage: an `invoke_agent {agent}` span. Does nothing here."""

    def attempt(self, request: AttemptRequest) -> AttemptTrace:
        """Begin one attempt of the stage (a retry or a fallback is a sibling of the attempts before it)."""
        return NO_ATTEMPT

    def end(self, error: str | None = None) -> None:
        """The stage is over: completed, or not (`error`)."""


class StretchTrace:
    """The stretch of a run one replica drives, from spawn to its ending. Does nothing here."""

    #: This stretch's traceparent, stored with the run so that the next stretch can link to it (None: nothing to store).
    traceparent: str | None = None

    def stage(self, agent: str, stage: int) -> StageTrace:
        """Begin one stage of the run."""
        return NO_STAGE

    def end(self, ending: str, error: str | None = None) -> None:
        """The stretch is over: how (completed, failed, cancelled, interrupted, lost) and the error.type if any."""


NO_ATTEMPT = AttemptTrace()
NO_STAGE = StageTrace()
NO_STRETCH = StretchTrace()


class Telemetry:
    """Where runs report their traces and metrics. This one records nothing; telemetry/otel.py's records them."""

    enabled = False

    @contextlib.contextmanager
    def server_span(self, name: str, traceparent: str | None, tracestate: str | None = None) -> Iterator[str | None]:
        """Cover one call made to this server (a gRPC method, or an HTTP route of a gateway) with a SERVER span.

        Gives the traceparent to store with a run the call creates: the span's own (so the run is in the caller's
        trace, under the call), or here, with tracing off, the caller's as it was sent when it is valid.
        """
        yield valid_traceparent(traceparent)

    def stretch(self, run_id: str, *, created: str | None, previous: str | None) -> StretchTrace:
        """Begin a stretch of a run: `created` is the traceparent stored at its creation, `previous` the last
        stretch's."""
        return NO_STRETCH

    def shutdown(self) -> None:
        """Export what is buffered and stop (at the server's stop)."""


def from_environment(environ: Mapping[str, str] | None = None) -> Telemetry:
    """The server's telemetry, configured the standard way (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME, ...).

    No endpoint set, or OTEL_SDK_DISABLED=true: nothing, and nothing imported. An endpoint set without the `otel`
    extra installed: a warning, and nothing (the server runs as it would without the variable).
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Telemetry()
    if not any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES):
        return Telemetry()
    if not _sdk_installed():
        log.warning(
            "otel_extra_missing",
            hint="OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed: "
            "pip install 'facilitair[server,otel]' to export traces and metrics",
        )
        return Telemetry()
    from facilitair.server.telemetry.otel import exporting  # noqa: PLC0415 - the SDK is imported only when configured

    capture = env.get(CAPTURE_CONTENT_VARIABLE, "").strip().lower() == "true"
    return exporting(capture_content=capture)


def _sdk_installed() -> bool:
    """Whether the SDK and the OTLP/HTTP exporter can be imported (without importing them)."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except (ImportError, ValueError):
        return False
