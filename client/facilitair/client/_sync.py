"""A blocking facade over the async Client, for code that is not async.

It runs the async client on its own event loop in a background thread, so every feature (resume,
keepalive, error types) is the same. A call interrupted in the caller's thread (Ctrl-C) cancels its
work on the loop and waits for it to finish, so the client stays usable and closes cleanly; closing
the client closes every event iterator still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from facilitair.client._client import Client
from facilitair.client._errors import FacilitairError, StatusCode
from facilitair.client._types import (
    Agent,
    Approval,
    ApprovalRequest,
    ApprovalResult,
    CompletedRun,
    Decision,
    OnApprovalTimeout,
    RunState,
)
from facilitair.v1 import orchestrator_pb2 as pb

T = TypeVar("T")
#: SyncClient's on_approval: a plain function (it runs on the client's thread).
SyncApprovalCallback = Callable[[ApprovalRequest], Approval | None]
# A bound on waiting for cancelled work after Ctrl-C: grpc cancels a call in well under a second.
_CANCEL_WAIT = 5.0


async def _drain() -> None:
    """Let the tasks grpc left behind (a cancelled call's status handling) finish before the loop closes."""
    current = asyncio.current_task()
    pending = [task for task in asyncio.all_tasks() if task is not current]
    if pending:
        _, late = await asyncio.wait(pending, timeout=_CANCEL_WAIT)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


class EventIterator(Iterator[pb.RunEvent]):
    """A run's events, one at a time; `close()` (or leaving a `with` block) stops following the run."""

    def __init__(self, owner: SyncClient, events: AsyncGenerator[pb.RunEvent, None]) -> None:
        self._owner = owner
        self._events = events
        self._closed = False

    def __next__(self) -> pb.RunEvent:
        if self._closed:
            raise StopIteration
        try:
            return self._owner._call(anext(self._events))
        except StopAsyncIteration:
            self._closed = True
            raise StopIteration from None
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop following the run (the run itself goes on unless it was started to cancel on disconnect)."""
        if self._closed:
            return
        self._closed = True
        if not self._owner.closed:
            # RuntimeError: still running after an interrupt that outlasted _CANCEL_WAIT; the loop's shutdown ends it.
            with contextlib.suppress(RuntimeError):
                self._owner._call(self._events.aclose())

    def __enter__(self) -> EventIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncClient:
    """Blocking calls to a facilitair server; use as a context manager or call close()."""

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
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        """Connect to `target`; the arguments are Client's."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="facilitair-client", daemon=True)
        self._thread.start()
        self._iterators: weakref.WeakSet[EventIterator] = weakref.WeakSet()
        self.closed = False

        async def make() -> Client:  # the channel belongs to the loop that creates it
            return Client(
                target,
                api_key=api_key,
                tls=tls,
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
                reconnect_timeout=reconnect_timeout,
                connect_timeout=connect_timeout,
                options=options,
            )

        try:
            self._client = self._call(make())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, awaitable: Awaitable[T]) -> T:
        """Run `awaitable` on the client's loop and wait; an interrupt here cancels it there first."""
        if self.closed and self._loop.is_closed():
            raise FacilitairError(StatusCode.FAILED_PRECONDITION, "the client is closed")
        finished = threading.Event()
        box: list[asyncio.Future[T]] = []

        def start() -> None:
            task = asyncio.ensure_future(awaitable, loop=self._loop)
            task.add_done_callback(lambda _: finished.set())
            box.append(task)

        self._loop.call_soon_threadsafe(start)
        try:
            finished.wait()
        except BaseException:
            # Callbacks run in order, so `start` has run before this one.
            self._loop.call_soon_threadsafe(lambda: box[0].cancel())  # noqa: PLW0108 - box[0] is set by then, not now
            finished.wait(_CANCEL_WAIT)
            raise
        return box[0].result()

    def _iterate(self, events: AsyncGenerator[pb.RunEvent, None]) -> EventIterator:
        iterator = EventIterator(self, events)
        self._iterators.add(iterator)
        return iterator

    def collaborate(
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
    ) -> EventIterator:
        """Start a run and iterate over its events (see Client.collaborate)."""
        return self._iterate(
            self._client.collaborate(
                task,
                context=context,
                model=model,
                agent_models=agent_models,
                max_refinements=max_refinements,
                max_cost_usd=max_cost_usd,
                max_tokens=max_tokens,
                cancel_on_disconnect=cancel_on_disconnect,
                client_request_id=client_request_id,
                resume=resume,
                coalesce_tokens=coalesce_tokens,
                pause_after=pause_after,
                approval_timeout=approval_timeout,
                on_approval_timeout=on_approval_timeout,
                cache=cache,
                webhook_url=webhook_url,
            )
        )

    def watch(
        self, run_id: str, after_seq: int = 0, *, resume: bool = True, coalesce_tokens: bool = False
    ) -> EventIterator:
        """Iterate over a run's events after `after_seq` until its end."""
        return self._iterate(self._client.watch(run_id, after_seq, resume=resume, coalesce_tokens=coalesce_tokens))

    def run(
        self,
        task: str,
        *,
        on_event: Callable[[pb.RunEvent], None] | None = None,
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
        on_approval: SyncApprovalCallback | None = None,
        cache: str = "",
        webhook_url: str = "",
    ) -> CompletedRun:
        """Start a run and wait for its end: its CompletedRun, or RunFailed / RunCancelled raised.

        `on_event` and `on_approval` (see Client.run) run on the client's thread, in order.
        """
        return self._call(
            self._client.run(
                task,
                on_event=on_event,
                context=context,
                model=model,
                agent_models=agent_models,
                max_refinements=max_refinements,
                max_cost_usd=max_cost_usd,
                max_tokens=max_tokens,
                cancel_on_disconnect=cancel_on_disconnect,
                client_request_id=client_request_id,
                pause_after=pause_after,
                approval_timeout=approval_timeout,
                on_approval_timeout=on_approval_timeout,
                on_approval=on_approval,
                cache=cache,
                webhook_url=webhook_url,
            )
        )

    def wait(
        self,
        run_id: str,
        *,
        after_seq: int = 0,
        on_event: Callable[[pb.RunEvent], None] | None = None,
        on_approval: SyncApprovalCallback | None = None,
    ) -> CompletedRun:
        """Follow a run already started until its end (see Client.wait)."""
        return self._call(self._client.wait(run_id, after_seq=after_seq, on_event=on_event, on_approval=on_approval))

    def submit_approval(
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
        """Decide the gate a run waits at (see Client.submit_approval)."""
        return self._call(
            self._client.submit_approval(
                run_id,
                decision,
                comment=comment,
                edited_text=edited_text,
                edited_files=edited_files,
                approval_id=approval_id,
                client_request_id=client_request_id,
            )
        )

    def pending_approval(self, run_id: str) -> ApprovalRequest | None:
        """The gate a run waits at now, or None."""
        return self._call(self._client.pending_approval(run_id))

    def get_run(self, run_id: str) -> pb.RunSummary:
        """The state, progress and result of a run."""
        return self._call(self._client.get_run(run_id))

    def list_runs(
        self, *, state: RunState | int | None = None, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[pb.RunSummary], str]:
        """One page of runs and the next page's token."""
        return self._call(self._client.list_runs(state=state, page_size=page_size, page_token=page_token))

    def cancel_run(self, run_id: str) -> pb.RunSummary:
        """Cancel a run (idempotent)."""
        return self._call(self._client.cancel_run(run_id))

    def server_info(self) -> pb.GetServerInfoResponse:
        """What the server offers (see Client.server_info)."""
        return self._call(self._client.server_info())

    def close(self) -> None:
        """Close open event iterators and the channel, then stop the background loop."""
        if self.closed:
            return
        for iterator in list(self._iterators):
            iterator.close()
        try:
            self._call(self._client.close())
            self._call(self._loop.shutdown_asyncgens())
            self._call(_drain())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
