"""Leases: every unfinished run is driven by one replica, which holds the run's lease and renews it.

Every `lease_seconds / 3` this replica renews the leases of the runs it drives (learning which it lost to
another replica and which were asked to be cancelled elsewhere), then claims runs whose lease ran out — a
replica that died, or one that let its runs go when it stopped — and resumes them as a restart does. A claim
bumps the run's epoch, so the replica that held the run before can never write to it again.

On one process (SQLite) the same loop runs: at start it takes over every unfinished run (the previous process
is gone), and later it picks up runs that were interrupted while the store could not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from facilitair.server.store.base import Claim, EventStore, StoreUnavailable
from facilitair.server.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


class LeaseKeeper:
    """Renews this replica's leases and takes over runs nobody holds."""

    def __init__(
        self,
        store: EventStore,
        replica_id: str,
        lease_seconds: float,
        *,
        held: Callable[[], Mapping[str, int]],
        capacity: Callable[[], int],
        lost: Callable[[set[str]], None],
        cancel_requested: Callable[[str, str], None],
        resume: Callable[[Claim], Awaitable[None]],
    ) -> None:
        self._store = store
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self._held = held
        self._capacity = capacity
        self._lost = lost
        self._cancel_requested = cancel_requested
        self._resume = resume
        self._soon = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None  # the monotonic time renewals began to fail, while they do

    async def start(self) -> None:
        """Take over what no replica holds (on a one-process store: every unfinished run), then keep going."""
        with contextlib.suppress(StoreUnavailable):  # the loop tries again; the store's health says why
            await self._claim(ignore_leases=not self._store.shared)
        self._task = asyncio.create_task(self._loop(), name="leases")

    async def stop(self) -> None:
        """Stop renewing and claiming (the leases run out by themselves, or are released by the caller)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def claim_soon(self) -> None:
        """Leases were released (a replica stopping) or the store is back: claim now, not at the next tick."""
        self._soon.set()

    async def _loop(self) -> None:
        period = self.lease_seconds / 3
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._soon.wait()
            self._soon.clear()
            try:
                await self._renew()
                await self._claim(ignore_leases=False)
            except StoreUnavailable as exc:
                # The leases may run out meanwhile; then another replica takes the runs over and this one's
                # writes are refused, which stops them here. The event log's health reports the outage; here
                # it is said once when renewals start failing and once when they work again.
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("lease_renewal_failed", cause=str(exc))
                else:
                    log.debug("lease_renewal_failed", cause=str(exc))
            except Exception:
                log.exception("lease_renewal_failed")
            else:
                if self._failing_since is not None:
                    seconds = round(time.monotonic() - self._failing_since, 3)
                    self._failing_since = None
                    log.info("lease_renewal_recovered", seconds=seconds)

    async def _renew(self) -> None:
        held = dict(self._held())
        if not held:
            return
        result = await self._store.renew_leases(self.replica_id, held, self.lease_seconds)
        if result.lost:
            self._lost(set(result.lost))
        for run_id, reason in result.cancel_requested.items():
            self._cancel_requested(run_id, reason)

    async def _claim(self, *, ignore_leases: bool) -> None:
        room = self._capacity()
        if room <= 0:
            return
        for claim in await self._store.claim_expired(
            self.replica_id, self.lease_seconds, room, ignore_leases=ignore_leases
        ):
            log.info("run_claimed", run_id=claim.row.run_id, epoch=claim.row.epoch, previous_owner_gone=True)
            await self._resume(claim)
