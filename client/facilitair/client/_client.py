"""The async client: typed calls, keepalive for long streams, and resume built in.

The first call of a client waits (at most `connect_timeout`) for the connection: when nothing answers
at the target, it raises ServerUnreachable at once instead of retrying. After that, a stream that
breaks (UNAVAILABLE: the server restarted, the connection dropped, the server's grace period ended) is
re-attached with WatchRun after the last seq received, with jittered backoff, until the run's terminal
event arrives or `reconnect_timeout` passes. Callers see each event exactly once, in seq order.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc

from facilitair.client._errors import FacilitairError, ServerUnreachable, StatusCode
from facilitair.client._request import collaborate_request, count, invalid, submit_approval_request
from facilitair.client._target import parse_target
from facilitair.client._types import (
    TERMINAL_KINDS,
    Agent,
    Approval,
    ApprovalRequest,
    ApprovalResult,
    CompletedRun,
    Decision,
    EventKind,
    OnApprovalTimeout,
    RunState,
    approval_request,
    approval_result,
    event_kind,
    is_terminal,
    result_of,
)
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc

TERMINAL = TERMINAL_KINDS  # the kinds of event that end a run (each is its payload's name)
#: The reason of the error a stream raises when it stopped trying to re-attach (the run itself goes on).
RECONNECT_GAVE_UP = "RECONNECT_GAVE_UP"

# Client keepalive (docs/operations.md, "Long streams"): ping every 30 s, give up on a silent peer after
# 10 s. The server permits pings every 10 s, so these never trigger too_many_pings.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # A target naming several replicas (dns:///name, ipv4:a,b): spread calls over them, and when one goes
    # away the next call (a resumed watch) goes to another.
    ("grpc.lb_policy_name", "round_robin"),
    # gRPC waits up to 120 s (1 s, x1.6 each time) between connection attempts to a server that refused one, and
    # fails calls at once meanwhile: a restarted server was noticed 8-10 s after it was back. A refused connect
    # costs nothing, so try every 2 s at most (our own backoff has the same cap, _RECONNECT_CAP).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
# The longest wait between two attempts to re-attach a broken stream, in seconds.
_RECONNECT_CAP = 2.0

#: Called with each event as it arrives; may be a coroutine function.
EventCallback = Callable[[pb.RunEvent], Awaitable[None] | None]
#: Called when a run waits at an approval gate; returns the Approval to submit, or None to leave the gate to
#: someone else (`facilitair approve`, another client). May be a coroutine function.
ApprovalCallback = Callable[[ApprovalRequest], Awaitable[Approval | None] | Approval | None]
#: The reasons SubmitApproval gives when the gate was decided already (by someone else, or by its timeout): the
#: decision that won comes in the run's events, so a callback that lost the race is not an error of the run.
DECIDED_ALREADY = ("APPROVAL_ALREADY_DECIDED", "NOT_AWAITING_APPROVAL")


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
        connect_timeout: float = 5.0,
        channel: grpc.aio.Channel | None = None,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        """Connect to `target`: HOST[:PORT] (default port 50051), http://... or https://... (TLS).

        `tls` (implied by https:// and by any certificate) uses the system's or the given CA;
        `private_key` with `certificate_chain` present a client certificate (mutual TLS). `options`
        add to or override CHANNEL_OPTIONS. `connect_timeout` bounds the wait for the first connection.
        """
        parsed = parse_target(target)
        tls = tls or bool(parsed.tls) or bool(root_certificates or certificate_chain)
        if parsed.tls is False and tls:
            raise invalid("target", "http:// asks for a plaintext connection but TLS was asked for too")
        self.target = parsed.address
        self.tls = tls
        self.reconnect_timeout = reconnect_timeout
        self.connect_timeout = connect_timeout
        # Sent as call metadata: it works over TLS and over a plain loopback connection alike.
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        merged = dict(CHANNEL_OPTIONS) | dict(options or [])
        if channel is None:
            if tls:
                credentials = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
                channel = grpc.aio.secure_channel(self.target, credentials, options=list(merged.items()))
            else:
                channel = grpc.aio.insecure_channel(self.target, options=list(merged.items()))
        self._channel = channel
        self._stub = pb_grpc.OrchestratorServiceStub(self._channel)
        self._reached = False
        #: Called with (attempt, delay_seconds, error) before each reconnect; the CLI reports it.
        self.on_reconnect: Callable[[int, float, FacilitairError], None] | None = None

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _reach(self) -> None:
        """Wait for the first connection; ServerUnreachable when it fails or takes over `connect_timeout`."""
        if self._reached:
            return
        ready, failed = grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE
        try:
            async with asyncio.timeout(self.connect_timeout):
                state = self._channel.get_state(try_to_connect=True)
                while state not in (ready, failed, grpc.ChannelConnectivity.SHUTDOWN):
                    await self._channel.wait_for_state_change(state)
                    state = self._channel.get_state(try_to_connect=True)
        except TimeoutError:
            raise ServerUnreachable(self.target, tls=self.tls) from None
        if state != ready:
            raise ServerUnreachable(self.target, tls=self.tls)
        self._reached = True

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
        pause_after: Iterable[Agent | str] = (),
        approval_timeout: float | None = None,
        on_approval_timeout: OnApprovalTimeout | None = None,
        cache: str = "",
        webhook_url: str = "",
    ) -> AsyncGenerator[pb.RunEvent, None]:
        """Start a run and yield its events until the terminal one, resuming across disconnects.

        With `coalesce_tokens` the server may join consecutive token deltas of a stage into one event
        (`first_seq` set, `seq` the last joined one's); the text is the same. `pause_after` names the agents
        ("architect", "coder", "reviewer", "tester") after whose stage the run waits for a decision
        (approval_requested; answer with `submit_approval`); `approval_timeout` (seconds) and
        `on_approval_timeout` say how long a gate waits and what it decides then. `cache` is the run's response
        cache mode ("off", "read-write", "read-only", "refresh"; empty: the server's default). `webhook_url` is a
        URL the server posts the run's end to, signed (if the server accepts request URLs: docs/webhooks.md). Bad
        arguments raise FacilitairError (INVALID_ARGUMENT) before anything is sent.
        """
        request = collaborate_request(
            task,
            context=context,
            model=model,
            agent_models=agent_models,
            max_refinements=max_refinements,
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
            cancel_on_disconnect=cancel_on_disconnect,
            client_request_id=client_request_id,
            coalesce_tokens=coalesce_tokens,
            pause_after=pause_after,
            approval_timeout=approval_timeout,
            on_approval_timeout=on_approval_timeout,
            cache=cache,
            webhook_url=webhook_url,
        )

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
        count("after_seq", after_seq)

        def opener(after: int, rid: str) -> AsyncIterable[Any]:
            return self._stub.WatchRun(
                pb.WatchRunRequest(run_id=rid, after_seq=after, coalesce_tokens=coalesce_tokens),
                metadata=self._metadata,
            )

        async for event in self._follow(opener, run_id, after_seq, resume):
            yield event

    async def run(
        self,
        task: str,
        *,
        on_event: EventCallback | None = None,
        context: Mapping[str, Any] | None = None,
        model: str = "",
        agent_models: Mapping[str, str] | None = None,
        max_refinements: int | None = None,
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
        cancel_on_disconnect: bool = False,
        client_request_id: str | None = None,
        pause_after: Iterable[Agent | str] = (),
        approval_timeout: float | None = None,
        on_approval_timeout: OnApprovalTimeout | None = None,
        on_approval: ApprovalCallback | None = None,
        cache: str = "",
        webhook_url: str = "",
    ) -> CompletedRun:
        """Start a run and wait for its end: its CompletedRun, or RunFailed / RunCancelled raised.

        `on_event` sees every event first (tokens included), in order. `on_approval` is asked at each gate the
        run waits at (see `pause_after`) and may decide it: an Approval is submitted, None leaves the gate to
        someone else. Other arguments as for `collaborate`.
        """
        events = self.collaborate(
            task,
            context=context,
            model=model,
            agent_models=agent_models,
            max_refinements=max_refinements,
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
            cancel_on_disconnect=cancel_on_disconnect,
            client_request_id=client_request_id,
            coalesce_tokens=on_event is None,  # nobody looks at single tokens: fewer messages
            pause_after=pause_after,
            approval_timeout=approval_timeout,
            on_approval_timeout=on_approval_timeout,
            cache=cache,
            webhook_url=webhook_url,
        )
        return await self._outcome(events, on_event, on_approval)

    async def wait(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        on_event: EventCallback | None = None,
        on_approval: ApprovalCallback | None = None,
    ) -> CompletedRun:
        """Follow a run already started until its end: its CompletedRun, or RunFailed / RunCancelled raised.

        `on_approval` as for `run`; it is asked only about the gate the run waits at now, not the ones
        replayed.
        """
        events = self.watch(run_id, after_seq, coalesce_tokens=on_event is None)
        return await self._outcome(events, on_event, on_approval)

    async def _outcome(
        self,
        events: AsyncGenerator[pb.RunEvent, None],
        on_event: EventCallback | None,
        on_approval: ApprovalCallback | None,
    ) -> CompletedRun:
        """Read a run's events to its terminal one and turn that into a result or an exception."""
        try:
            async for event in events:
                if on_event is not None:
                    handled = on_event(event)
                    if inspect.isawaitable(handled):
                        await handled
                if on_approval is not None and event_kind(event) is EventKind.APPROVAL_REQUESTED:
                    await self._ask(event, on_approval)
                if is_terminal(event):
                    return result_of(event)
        finally:
            await events.aclose()
        raise FacilitairError(StatusCode.UNAVAILABLE, "the stream ended before the run did")

    async def _ask(self, event: pb.RunEvent, on_approval: ApprovalCallback) -> None:
        """Let the callback decide the gate `event` opened, if the run still waits at it."""
        gate = event.approval_requested.approval
        pending = await self.pending_approval(event.run_id)
        if pending is None or pending.approval_id != gate.approval_id:
            return  # decided already: a replayed event (wait from an earlier seq), or someone was quicker
        answer = on_approval(pending)
        if inspect.isawaitable(answer):
            answer = await answer
        if answer is None:
            return
        try:
            await self._submit(event.run_id, answer, approval_id=gate.approval_id)
        except FacilitairError as err:
            if err.reason not in DECIDED_ALREADY:
                raise

    async def pending_approval(self, run_id: str) -> ApprovalRequest | None:
        """The gate a run waits at now (GetRun's pending_approval), or None when it waits at none."""
        run = await self.get_run(run_id)
        if RunState(run.state) is not RunState.AWAITING_APPROVAL or not run.HasField("pending_approval"):
            return None
        return approval_request(run.run_id, run.pending_approval)

    async def submit_approval(
        self,
        run_id: str,
        decision: Decision | Approval,
        *,
        comment: str = "",
        edited_text: str = "",
        edited_files: Mapping[str, str] | None = None,
        approval_id: str = "",
        client_request_id: str | None = None,
    ) -> ApprovalResult:
        """Decide the gate a run waits at (or the gate `approval_id`): APPROVE, REVISE (with a `comment`),
        EDIT (with `edited_text` and/or `edited_files`, path to new content) or REJECT (the comment says why).

        The first decision recorded wins: a different one after it raises FacilitairError FAILED_PRECONDITION
        naming it; the same `client_request_id` again returns the recorded decision. `run_id` may be a prefix
        or "last".
        """
        if isinstance(decision, Approval):
            if comment or edited_text or edited_files:
                raise invalid("decision", "an Approval carries its own comment and edits")
            approval = decision
        else:
            approval = Approval(decision, comment, edited_text, dict(edited_files or {}))
        return await self._submit(run_id, approval, approval_id=approval_id, client_request_id=client_request_id)

    async def _submit(
        self, run_id: str, approval: Approval, *, approval_id: str, client_request_id: str | None = None
    ) -> ApprovalResult:
        request = submit_approval_request(
            run_id, approval, approval_id=approval_id, client_request_id=client_request_id
        )
        response: pb.SubmitApprovalResponse = await self._unary(self._stub.SubmitApproval, request)
        return approval_result(response)

    async def _follow(
        self, opener: Callable[[int, str], AsyncIterable[Any]], run_id: str, after_seq: int, resume: bool
    ) -> AsyncGenerator[pb.RunEvent, None]:
        await self._reach()
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
                    if is_terminal(event):
                        return
                # The stream ended without a terminal event: the server is going away.
                error = FacilitairError(StatusCode.UNAVAILABLE, "the stream ended before the run did")
            except grpc.RpcError as err:
                error = FacilitairError.from_rpc_error(err, self.target)
            finally:
                cancel = getattr(call, "cancel", None)
                if cancel is not None:
                    cancel()
            if not resume or error.code != StatusCode.UNAVAILABLE:
                raise error
            now = time.monotonic()
            broken_since = broken_since or now
            attempt += 1
            # Doubling from 0.2 s up to the cap (the exponent bounded, so a long outage cannot overflow it), then
            # jittered below the cap, so clients that lost one server do not all come back in the same instant.
            delay = min(0.2 * 2 ** min(attempt - 1, 8), _RECONNECT_CAP) * (0.5 + random.random() / 2)  # noqa: S311
            if now + delay - broken_since > self.reconnect_timeout:
                raise FacilitairError(
                    StatusCode.UNAVAILABLE,
                    f"gave up reconnecting after {self.reconnect_timeout:.0f}s: {error.message}",
                    reason=RECONNECT_GAVE_UP,
                )
            if self.on_reconnect is not None:
                self.on_reconnect(attempt, delay, error)
            await asyncio.sleep(delay)

    async def get_run(self, run_id: str) -> pb.RunSummary:
        """The state, progress and (when finished) result of a run."""
        response: pb.GetRunResponse = await self._unary(self._stub.GetRun, pb.GetRunRequest(run_id=run_id))
        return response.run

    async def list_runs(
        self, *, state: RunState | int | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[pb.RunSummary], str]:
        """One page of runs, newest first (at most 100), and the token of the next page ("" at the end)."""
        request = pb.ListRunsRequest(page_size=count("page_size", page_size, 2**32 - 1), page_token=page_token)
        if state is not None:
            if state not in RunState._value2member_map_:
                raise invalid("state", f"{state} is not a RunState")
            request.state = int(state)  # type: ignore[assignment]
        response = await self._unary(self._stub.ListRuns, request)
        return list(response.runs), response.next_page_token

    async def cancel_run(self, run_id: str) -> pb.RunSummary:
        """Cancel a run (idempotent) and return it as it is now."""
        response: pb.CancelRunResponse = await self._unary(self._stub.CancelRun, pb.CancelRunRequest(run_id=run_id))
        return response.run

    async def server_info(self) -> pb.GetServerInfoResponse:
        """What the server offers: version, providers, default and per-agent models, limits, store, replica."""
        response: pb.GetServerInfoResponse = await self._unary(self._stub.GetServerInfo, pb.GetServerInfoRequest())
        return response

    async def _unary(self, method: Any, request: Any) -> Any:
        await self._reach()
        try:
            return await method(request, timeout=30.0, metadata=self._metadata)
        except grpc.RpcError as err:
            raise FacilitairError.from_rpc_error(err, self.target) from None
