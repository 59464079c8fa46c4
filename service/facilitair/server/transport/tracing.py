"""The trace of each call of our service: the caller's W3C traceparent, the call's span, the context to store.

The guard (guard.py) covers each call of facilitair.v1 with the telemetry's SERVER span, inside the wrapper it
already puts around every handler, so that tracing adds no step per message sent. The traceparent a run created by
the call stores (telemetry.Telemetry.server_span) reaches the servicer through a ContextVar, as the principal does.
With tracing off the caller's own traceparent is stored, so a run still names the trace of the call that made it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from facilitair.server.telemetry import Telemetry

TRACEPARENT: ContextVar[str | None] = ContextVar("traceparent", default=None)
# Only our own service is traced: health checks and reflection would flood a trace store with nothing to see.
TRACED_PREFIX = "/facilitair.v1."
Metadata = Sequence[tuple[str, str | bytes]] | None


def current_traceparent() -> str | None:
    """The traceparent to store with a run the call being handled creates (None: none)."""
    return TRACEPARENT.get()


@dataclass(frozen=True, slots=True)
class CallTrace:
    """One call to cover with a span: its method and what its caller sent."""

    telemetry: Telemetry
    name: str  # "facilitair.v1.OrchestratorService/Collaborate"
    parent: str | None  # the caller's traceparent, as sent
    state: str | None  # the caller's tracestate, as sent

    @contextlib.contextmanager
    def covering(self) -> Iterator[None]:
        """The call's span around the handler, and the traceparent to store set for it."""
        with self.telemetry.server_span(self.name, self.parent, self.state) as stored:
            TRACEPARENT.set(stored)
            yield


def call_trace(telemetry: Telemetry, method: str, metadata: Metadata) -> CallTrace | None:
    """What to trace of a call to `method` (None for another service's methods)."""
    if not method.startswith(TRACED_PREFIX):
        return None
    return CallTrace(telemetry, method[1:], _value(metadata, "traceparent"), _value(metadata, "tracestate"))


def _value(metadata: Metadata, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value.decode("ascii", errors="replace") if isinstance(value, bytes) else value
    return None
