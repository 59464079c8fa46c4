"""Letting runs go: when the store cannot write, and when an interrupted run's lease can be given back.

A store that cannot write (disk full, read-only, database gone) stops every write of every run. For a few
seconds the runs go on in memory (a blip costs nothing); past `store_grace_seconds` they are interrupted: their
provider streams are closed (memory stays bounded, nothing more is paid for), their watchers are told
(UNAVAILABLE, they re-attach later), and their state waits for the store like every other write. An
interrupted run's lease is released once its state is stored, so that it is claimed again at once (by this
replica or another) and resumes from its last completed stage; on a graceful stop that is the handover.
"""

from __future__ import annotations

import asyncio

import structlog

from facilitair.server.errors import Reason, Unavailable
from facilitair.server.events.health import StoreHealth
from facilitair.server.runs.leases import LeaseKeeper
from facilitair.server.runs.supervisor import Supervisor
from facilitair.server.store.base import EventStore, StoreUnavailable
from facilitair.server.tasks import cancel_and_wait

log = structlog.get_logger(__name__)


class Handover:
    """Interrupts runs when the store fails for too long, and releases the leases of interrupted runs."""

    def __init__(
        self,
        store: EventStore,
        health: StoreHealth,
        supervisor: Supervisor,
        leases: LeaseKeeper,
        *,
        grace_seconds: float,
    ) -> None:
        self._store = store
        self._health = health
        self._supervisor = supervisor
        self._leases = leases
        self._grace = grace_seconds
        self._to_release: dict[str, int] = {}
        self._releasing: asyncio.Task[None] | None = None
        self._outage: asyncio.Task[None] | None = None
        health.subscribe(self._health_changed)

    def interrupted(self, run_id: str, epoch: int) -> None:
        """An interrupted run's state is stored: give its lease back (the supervisor calls this)."""
        self._to_release[run_id] = epoch
        if self._releasing is None or self._releasing.done():
            self._releasing = asyncio.create_task(self._release_in_background(), name="release-leases")

    async def release_now(self) -> None:
        """Release every lease waiting to be released, and have them claimed (StoreUnavailable if it cannot)."""
        while self._to_release:
            epochs, self._to_release = self._to_release, {}
            try:
                await self._store.release_leases(self._leases.replica_id, epochs)
            except BaseException:
                self._to_release = epochs | self._to_release
                raise
            log.info("leases_released", runs=len(epochs))
        self._leases.claim_soon()

    async def stop(self) -> None:
        """Stop the outage timer and the background releases (a final release_now is the caller's)."""
        await cancel_and_wait(self._outage)
        await cancel_and_wait(self._releasing)

    async def _release_in_background(self) -> None:
        try:
            await self.release_now()
        except StoreUnavailable as exc:  # tried again when the store is back (_health_changed)
            log.warning("lease_release_failed", cause=str(exc), runs=len(self._to_release))

    def _health_changed(self, healthy: bool) -> None:
        if healthy:
            if self._outage is not None:
                self._outage.cancel()
                self._outage = None
            if self._to_release:
                self._releasing = asyncio.create_task(self._release_in_background(), name="release-leases")
            self._leases.claim_soon()
        elif self._outage is None or self._outage.done():
            self._outage = asyncio.create_task(self._interrupt_after_grace(), name="store-outage")

    async def _interrupt_after_grace(self) -> None:
        await asyncio.sleep(self._grace)  # a timer: a short blip costs the runs nothing
        if self._health.healthy or not len(self._supervisor):
            return
        cause = self._health.cause
        log.warning("runs_interrupted", runs=len(self._supervisor), why="the store cannot write", cause=cause)
        error = Unavailable(
            f"the server cannot store events now ({cause}); the run goes on once it can: watch it again later",
            reason=Reason.STORE_UNAVAILABLE,
        )
        await self._supervisor.interrupt_all(error, wait=0)
