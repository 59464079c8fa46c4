"""A blocking facade over the async Client, for code that is not async.

It runs the async client on its own event loop in a background thread, so every feature (resume,
keepalive, error type) is the same; iterators hand events over one at a time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from typing import Any, TypeVar

from facilitair.client._client import Client
from facilitair.v1 import orchestrator_pb2 as pb

T = TypeVar("T")


class SyncClient:
    """Blocking calls to a facilitair server; use as a context manager or call close()."""

    def __init__(self, target: str, **options: Any) -> None:
        """Connect to `target`; `options` are Client's keyword arguments (api_key, tls, ...)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="facilitair-client", daemon=True)
        self._thread.start()

        async def make() -> Client:  # the channel belongs to the loop that creates it
            return Client(target, **options)

        self._client = self._call(make())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iterate(self, events: AsyncGenerator[pb.RunEvent, None]) -> Iterator[pb.RunEvent]:
        try:
            while True:
                try:
                    yield self._call(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            self._call(events.aclose())

    def collaborate(self, task: str, **options: Any) -> Iterator[pb.RunEvent]:
        """Start a run and yield its events (Client.collaborate's keyword arguments)."""
        return self._iterate(self._client.collaborate(task, **options))

    def watch(self, run_id: str, after_seq: int = 0, **options: Any) -> Iterator[pb.RunEvent]:
        """Yield a run's events after `after_seq` until its end."""
        return self._iterate(self._client.watch(run_id, after_seq, **options))

    def get_run(self, run_id: str) -> pb.RunSummary:
        """The state, progress and result of a run."""
        return self._call(self._client.get_run(run_id))

    def list_runs(self, **options: Any) -> tuple[list[pb.RunSummary], str]:
        """One page of runs and the next page's token."""
        return self._call(self._client.list_runs(**options))

    def cancel_run(self, run_id: str) -> pb.RunSummary:
        """Cancel a run (idempotent)."""
        return self._call(self._client.cancel_run(run_id))

    def close(self) -> None:
        """Close the channel and stop the background loop."""
        if not self._loop.is_closed():
            self._call(self._client.close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
