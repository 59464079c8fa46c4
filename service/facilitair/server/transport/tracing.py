"""The interceptor that puts every call of our service in the caller's trace and remembers the context to store.

It reads the caller's W3C `traceparent` (and `tracestate`) from the call's metadata and covers the call with the
telemetry's SERVER span; the traceparent a run created by the call stores (telemetry.Telemetry.server_span) is
given to the servicer through a ContextVar, as the guard gives the principal. With tracing off the caller's own
traceparent is stored, so a run still names the trace of the call that created it.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import grpc

from facilitair.server.telemetry import Telemetry
from facilitair.server.transport.guard import Context, Handler

TRACEPARENT: ContextVar[str | None] = ContextVar("traceparent", default=None)
# Only our own service is traced: health checks and reflection would flood a trace store with nothing to see.
TRACED_PREFIX = "/facilitair.v1."


def current_traceparent() -> str | None:
    """The traceparent to store with a run the call being handled creates (None: none)."""
    return TRACEPARENT.get()


def _metadata_value(metadata: Any, key: str) -> str | None:
    for name, value in metadata or ():
        if name == key:
            return value.decode("ascii", errors="replace") if isinstance(value, bytes) else str(value)
    return None


class TraceInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Cover each call of our service with a span continuing the caller's trace. Placed before the guard, so the
    handlers it wraps are the guard's, which always take a request stream."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        """Wrap the handlers of our service's methods."""
        handler = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(TRACED_PREFIX) or not handler.request_streaming:
            return handler
        metadata = details.invocation_metadata
        name = method[1:]
        telemetry = self._telemetry
        parent = _metadata_value(metadata, "traceparent")
        state = _metadata_value(metadata, "tracestate")

        if handler.response_streaming:
            inner_stream: Any = handler.stream_stream

            async def stream_stream(requests: AsyncIterable[Any], context: Context) -> AsyncIterator[Any]:
                with telemetry.server_span(name, parent, state) as stored:
                    TRACEPARENT.set(stored)
                    async for response in inner_stream(requests, context):
                        yield response

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, response_serializer=handler.response_serializer
            )
        inner_unary: Any = handler.stream_unary

        async def stream_unary(requests: AsyncIterable[Any], context: Context) -> Any:
            with telemetry.server_span(name, parent, state) as stored:
                TRACEPARENT.set(stored)
                return await inner_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, response_serializer=handler.response_serializer)
