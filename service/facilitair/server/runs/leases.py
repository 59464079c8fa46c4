"""Leases: every unfinished run is driven by one replica, which holds the run's lease and renews it.

Every `lease_seconds / 3` this replica gives back the leases of runs it handed over (interrupted: their state
is stored), renews the leases of the runs it drives (learning which it lost to another replica and which were
asked to be cancelled elsewhere), then claims runs whose lease ran out — a replica that died, or one that let
its runs go when it stopped — and resumes them as a restart does. A claim bumps the run's epoch, so the replica
that held the run before can never write to it again. It does so at once, not at the next tick, when the run
lifecycle hands a run over, when another replica released leases, and when the store can write again.

The lease keeper asks the run lifecycle (lifecycle.py) what it holds and tells it what it learnt; the lifecycle
decides what becomes of the runs.

The same loop sweeps approval gates: runs waiting for a person are claimed (and resumed) once their gate is
decided, expired or a cancel was asked, so a gate's timeout fires within APPROVAL_SWEEP_SECONDS of its expiry, once
(the claim's compare-and-set picks one replica), from whichever replica looks first. A decision also wakes the loop
(on a shared store, every replica's, through the store's notification of released leases).

On one process (SQLite) the same loop runs: at start it takes over every unfinished run (the previous process
is gone), and later it picks up runs that were interrupted while the store could not write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from facilitair.server.events.eventlog import EventLog
from facilitair.server.runs.admission import Admission
from facilitair.server.runs.lifecycle import RunLifecycle
from facilitair.server.runs.starts import RunStarter
from facilitair.server.store.base import EventStore, StoreUnavailable
from facilitair.server.tasks import cancel_and_wait, start_task

log = structlog.get_logger(__name__)

# How often runs waiting at an approval gate are looked at for an expired gate (a claim query, no renewal).
APPROVAL_SWEEP_SECONDS = 2.0


class LeaseKeeper:
    """Renews this replica's leases, gives back those of runs handed over, and takes over runs nobody holds."""

    def __init__(
        self,
        store: EventStore,
        replica_id: str,
        lease_seconds: float,
        *,
        lifecycle: RunLifecycle,
        events: EventLog,
        admission: Admission,
        starter: RunStarter,
    ) -> None:
        self._store = store
        self.replica_id = replica_id
        self.lease_seconds = lease_seconds
        self._lifecycle = lifecycle
        self._events = events
        self._admission = admission
        self._starter = starter
        self._task: asyncio.Task[None] | None = None
        self._failing_since: float | None = None  # the monotonic time renewals began to fail, while they do
        self._release_failing = False  # said once while giving leases back fails
        events.health.subscribe(self._health_changed)

    async def start(self) -> None:
        """Take over what no replica holds (on a one-process store: every unfinished run), then keep going."""
        with contextlib.suppress(StoreUnavailable):  # the loop tries again; the store's health says why
            await self._claim(ignore_leases=not self._store.shared)
        self._task = start_task(self._loop(), name="leases")

    async def stop(self) -> None:
        """Stop renewing and claiming (the leases run out by themselves, or are released by the caller)."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    def claim_soon(self) -> None:
        """Leases were released (a replica stopping) or the store is back: claim now, not at the next tick."""
        self._lifecycle.lease_work.set()

    async def release_now(self) -> None:
        """Give back the leases of the runs handed over, so they are claimed at once (StoreUnavailable if it cannot)."""
        while epochs := self._lifecycle.take_handed_over():
            try:
                await self._store.release_leases(self.replica_id, epochs)
            except BaseException:
                self._lifecycle.give_back_failed(epochs)
                raise
            log.info("leases_released", runs=len(epochs))

    async def _loop(self) -> None:
        period = self.lease_seconds / 3
        work = self._lifecycle.lease_work
        renew_due = 0.0
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(period, APPROVAL_SWEEP_SECONDS)):
                    woken = await work.wait()
            work.clear()
            await self._release()
            try:
                if woken or time.monotonic() >= renew_due:
                    renew_due = time.monotonic() + period
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

    async def _release(self) -> None:
        """Give back the leases of runs handed over; if the store cannot, they are tried again at the next tick."""
        if not self._lifecycle.handing_over:
            return
        try:
            await self.release_now()
        except StoreUnavailable as exc:
            if not self._release_failing:
                self._release_failing = True
                log.warning("lease_release_failed", cause=str(exc), runs=self._lifecycle.handing_over)
        except Exception:
            log.exception("lease_release_failed")
        else:
            self._release_failing = False

    async def _renew(self) -> None:
        # Runs driven here, and runs whose writes are still to be stored (a run stopped while it waited to store
        # its end); the epoch a run is driven under wins over that of older writes.
        held = self._events.unwritten() | self._lifecycle.held()
        if not held:
            return
        result = await self._store.renew_leases(self.replica_id, held, self.lease_seconds)
        if result.lost:
            self._lifecycle.lose(set(result.lost))
        for run_id, reason in result.cancel_requested.items():
            # Its notification was missed, or is late: the owner cancels the run all the same.
            log.info("cancel_noticed", run_id=run_id, via="lease_renewal")
            self._lifecycle.cancel(run_id, reason)

    async def _claim(self, *, ignore_leases: bool) -> None:
        room = self._admission.room
        if room <= 0:
            return
        for claim in await self._store.claim_expired(
            self.replica_id, self.lease_seconds, room, ignore_leases=ignore_leases
        ):
            run_id = claim.row.run_id
            log.info("run_claimed", run_id=run_id, epoch=claim.row.epoch, previous_owner_gone=True)
            if self._lifecycle.is_live(run_id):
                # Its lease ran out under this very replica (a loop stalled past it) and was claimed back. What the
                # old driver numbered but did not commit is refused by the new epoch, so it stops, writing nothing
                # more, and the run resumes from what is stored, as after a takeover; never driven twice.
                log.warning("run_lease_retaken", run_id=run_id, epoch=claim.row.epoch)
                await self._lifecycle.lose_and_wait(run_id)
            try:
                await self._starter.resume(claim)
            except Exception:  # each claimed run stands alone: the rest of the batch is driven all the same
                log.exception("run_resume_failed", run_id=run_id)
                await self._give_back(run_id, claim.row.epoch)

    async def _give_back(self, run_id: str, epoch: int) -> None:
        """Expire the lease of a run claimed but not driven: it is claimed again at once, not when the lease ends."""
        try:
            await self._store.release_leases(self.replica_id, {run_id: epoch})
        except Exception as exc:  # noqa: BLE001  (the lease runs out by itself)
            log.warning("lease_release_failed", run_id=run_id, cause=str(exc) or type(exc).__name__)

    def _health_changed(self, healthy: bool) -> None:
        if healthy:  # leases handed over during the outage are given back now, and runs claimed
            self.claim_soon()
