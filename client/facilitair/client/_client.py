"""The async client: typed calls, keepalive for long streams, and resume built in.

A stream that breaks (UNAVAILABLE: the server restarted, the connection dropped, the server's
grace period ended) is re-attached with WatchRun after the last seq received, with jittered
backoff, until the run's terminal event arrives or `reconnect_timeout` passes. Callers see each
event exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import struct_pb2

from facilitair.client._errors import FacilitairError, StatusCode
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc

TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})

# Client keepalive (see README "Long streams"): ping every 30 s, give up on a silent peer after
# 10 s. The server permits pings every 10 s, so these never trigger too_many_pings.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class Client:
    """An async connection to a facilitair server."""

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        reconnect_timeout: float = 60.0,
        channel: grpc.aio.Channel | None = None,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        """Connect to `target` (HOST:PORT); `tls` (implied by any certificate) uses the system's or the given CA.

        `private_key` with `certificate_chain` present a client certificate (mutual TLS). `options`
        add to or override CHANNEL_OPTIONS.
        """
        self.target = target
        self.reconnect_timeout = reconnect_timeout
        # Sent as call metadata: it works over TLS and over a plain loopback connection alike.
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        merged = dict(CHANNEL_OPTIONS) | dict(options or [])
        if channel is None:
            if tls or root_certificates or certificate_chain:
                credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
                channel = grpc.aio.secure_channel(target, credentials, options=list(merged.items()))
            else:
                channel = grpc.aio.insecure_channel(target, options=list(merged.items()))
        self._channel = channel
        self._stub = pb_grpc.OrchestratorServiceStub(self._channel)
        #: Called with (attempt, delay_seconds, error) before each reconnect; the CLI reports it.
        self.on_reconnect: Callable[[int, float, FacilitairError], None] | None = None

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def collaborate(
        self,
        task: str,
        *,
        context: Mapping[str, Any] | None = None,
        model: str = "",
        agent_models: Mapping[str, str] | None = None,
        max_refinements: int | None = None,
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
        cancel_on_disconnect: bool = False,
        client_request_id: str | None = None,
        resume: bool = True,
        coalesce_tokens: bool = False,
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """Start a run and yield its events until the terminal one, resuming across disconnects.

        With `coalesce_tokens` the server may join consecutive token deltas of a stage into one event
        (`first_seq` set, `seq` the last joined one's); the text is the same.
        """
        request = pb.CollaborateRequest(
            task=task,
            model=model,
            agent_models=dict(agent_models or {}),
            on_disconnect=pb.ON_DISCONNECT_CANCEL if cancel_on_disconnect else pb.ON_DISCONNECT_CONTINUE,
            # An idempotency key makes retrying the start itself safe.
            client_request_id=client_request_id or str(uuid.uuid4()),
            coalesce_tokens=coalesce_tokens,
        )
        if context:
            request.context.CopyFrom(_struct(context))
        if max_refinements is not None:
            request.max_refinements = max_refinements
        if max_cost_usd is not None:
            request.max_cost_usd = max_cost_usd
        if max_tokens is not None:
            request.max_tokens = max_tokens

        def opener(after: int, run_id: str) -> AsyncIterable[Any]:
            if not run_id:
                return self._stub.Collaborate(request, metadata=self._metadata)
            return self._stub.WatchRun(
                pb.WatchRunRequest(run_id=run_id, after_seq=after, coalesce_tokens=coalesce_tokens),
                metadata=self._metadata,
            )

        async for event in self._follow(opener, "", 0, resume):
            yield event

    async def watch(
        self, run_id: str, after_seq: int = 0, *, resume: bool = True, coalesce_tokens: bool = False
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """Yield a run's events after `after_seq` until its terminal event, resuming across disconnects.

        `coalesce_tokens` as for `collaborate`.
        """

        def opener(after: int, rid: str) -> AsyncIterable[Any]:
            return self._stub.WatchRun(
                pb.WatchRunRequest(run_id=rid, after_seq=after, coalesce_tokens=coalesce_tokens),
                metadata=self._metadata,
            )

        async for event in self._follow(opener, run_id, after_seq, resume):
            yield event

    async def _follow(
        self, opener: Callable[[int, str], AsyncIterable[Any]], run_id: str, after_seq: int, resume: bool
    ) -> AsyncGenerator[pb.RunEvent, None]:
        last_seq = after_seq
        attempt = 0
        broken_since: float | None = None
        while True:
            call = opener(last_seq, run_id)
            error: FacilitairError | None = None
            try:
                async for response in call:
                    event: pb.RunEvent = response.event
                    if event.seq <= last_seq:
                        continue  # a re-attached Collaborate replays from the start
                    if event.first_seq and event.first_seq <= last_seq:
                        # A coalesced event straddling what we already have. It cannot happen: every
                        # re-attach asks for seq > last_seq (WatchRun), or starts over before any event
                        # was received (Collaborate), and the server joins only events it was asked for.
                        # Its text cannot be split by seq, so fail loudly rather than repeat text.
                        raise FacilitairError(
                            StatusCode.DATA_LOSS,
                            f"coalesced event {event.first_seq}..{event.seq} overlaps events already received",
                        )
                    run_id = event.run_id
                    last_seq = event.seq
                    attempt = 0
                    broken_since = None
                    yield event
                    if event.WhichOneof("payload") in TERMINAL:
                        return
                # The stream ended without a terminal event: the server is going away.
                error = FacilitairError(StatusCode.UNAVAILABLE, "the stream ended before the run did")
            except grpc.RpcError as err:
                error = FacilitairError.from_rpc_error(err)
            finally:
                cancel = getattr(call, "cancel", None)
                if cancel is not None:
                    cancel()
            if not resume or error.code != StatusCode.UNAVAILABLE:
                raise error
            now = time.monotonic()
            broken_since = broken_since or now
            attempt += 1
            delay = min(0.2 * 2 ** (attempt - 1), 5.0) * (0.5 + random.random())  # noqa: S311
            if now + delay - broken_since > self.reconnect_timeout:
                raise FacilitairError(
                    StatusCode.UNAVAILABLE,
                    f"gave up reconnecting after {self.reconnect_timeout:.0f}s: {error.message}",
                )
            if self.on_reconnect is not None:
                self.on_reconnect(attempt, delay, error)
            await asyncio.sleep(delay)

    async def get_run(self, run_id: str) -> pb.RunSummary:
        """The state, progress and (when finished) result of a run."""
        response: pb.GetRunResponse = await self._unary(self._stub.GetRun, pb.GetRunRequest(run_id=run_id))
        return response.run

    async def list_runs(
        self, *, state: int = 0, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[pb.RunSummary], str]:
        """One page of runs, newest first, and the token of the next page ("" at the end)."""
        response = await self._unary(
            self._stub.ListRuns,
            pb.ListRunsRequest(state=state, page_size=page_size, page_token=page_token),  # type: ignore[arg-type]
        )
        return list(response.runs), response.next_page_token

    async def cancel_run(self, run_id: str) -> pb.RunSummary:
        """Cancel a run (idempotent) and return it as it is now."""
        response: pb.CancelRunResponse = await self._unary(self._stub.CancelRun, pb.CancelRunRequest(run_id=run_id))
        return response.run

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=30.0, metadata=self._metadata)
        except grpc.RpcError as err:
            raise FacilitairError.from_rpc_error(err) from None


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    return struct
