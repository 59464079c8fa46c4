"""A run's tenure on this replica: who drives it, and why it stops. The one place that decides either.

Every run driven here goes through these phases, and only this object moves it on:

    OWNED ──stop asked──> STOPPING ──its ending stored──> finished (a terminal event), or
      │                      │                           HANDED_OVER (no terminal event: its lease is given
      │                      │                             back, and whoever claims it resumes it)
      └──────────────────────┴──another replica holds it──> LOST (nothing more is written here)

Whoever wants a run to stop asks here, with a reason, and the first reason wins (a second cancel of the run's
task would land in its own ending and cut off its terminal event): a CancelRun or a client that left
(`cancel`), the server stopping (`interrupt_all`), the store unable to write for longer than its grace (this
object's own timer), or another replica taking the run over (`lose`, said by the lease renewal and by a write
the store refused). The supervisor, which drives the run, asks `why` once its task is cancelled, and says
`ended` once the run's ending is stored. The lease keeper asks `held` (what to renew) and `take_handed_over`
(what to give back), and wakes on `lease_work`.

Nothing here calls back into the objects that ask it: they hold it, it holds none of them.

A run that waits (approval gates, issue 22) is one more ending that hands its lease over: `Waiting`. Its gate is
stored with the stage that opened it (no terminal event); the supervisor releases the run's capacity as for any
ending; the lease keeper gives its lease back; the store makes it claimable again once its gate is decided,
expired or a cancel is asked; and the replica that claims it resumes it from its checkpoints, as after any
handover.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

import structlog

from facilitair.server.domain import Gate, RunOutcome
from facilitair.server.errors import FacilitairError, Reason, Unavailable
from facilitair.server.events.health import StoreHealth
from facilitair.server.tasks import cancel_and_wait, start_task

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Cancel:
    """The run is cancelled: it ends with run_cancelled and this reason."""

    reason: str


@dataclass(frozen=True, slots=True)
class Interrupt:
    """The run stops here without a terminal event and resumes later (here or elsewhere); `error` tells watchers."""

    error: FacilitairError | None = None


@dataclass(frozen=True, slots=True)
class Lost:
    """Another replica holds the run now: write nothing more, stop at once."""


@dataclass(frozen=True, slots=True)
class Completed:
    """The pipeline finished."""

    outcome: RunOutcome


@dataclass(frozen=True, slots=True)
class Failed:
    """The run failed with this error."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class Waiting:
    """The run waits at an approval gate for a person's decision: no replica holds it meanwhile."""

    gate: Gate


#: Why a run stops before its pipeline ends: what others ask for.
Stop = Cancel | Interrupt | Lost
#: How a run's time here ends: exactly one of these.
Ending = Cancel | Interrupt | Lost | Completed | Failed | Waiting
#: Endings without a terminal event whose lease is given back once they are stored, for another claim.
HANDS_OVER: tuple[type[Interrupt] | type[Waiting], ...] = (Interrupt, Waiting)


class Phase(enum.Enum):
    """Where a run is in its tenure on this replica."""

    OWNED = "owned"
    STOPPING = "stopping"
    HANDED_OVER = "handed_over"
    LOST = "lost"


@dataclass(slots=True)
class _Tenure:
    """A run driven here: its task, the lease epoch it is driven under, and the stop asked for (if any)."""

    task: asyncio.Task[None]
    epoch: int
    stop: Stop | None = None
    lost: bool = False  # said once: the renewal and a refused write may both tell
    decided: bool = False  # its ending is known and being recorded: a stop asked now no longer cancels the task


class RunLifecycle:
    """Which runs this replica drives, under which lease, and why each stops."""

    def __init__(self, health: StoreHealth, *, grace_seconds: float) -> None:
        self._health = health
        self._grace = grace_seconds
        self._tenures: dict[str, _Tenure] = {}
        self._handed_over: dict[str, int] = {}  # run id -> the epoch of its lease, to be given back
        self._outage: asyncio.Task[None] | None = None
        #: Set when the lease keeper has work before its next renewal: a lease to give back, runs to claim now.
        self.lease_work = asyncio.Event()
        health.subscribe(self._health_changed)

    # -- who drives what -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._tenures)

    def is_live(self, run_id: str) -> bool:
        """True while the run is driven by this process."""
        return run_id in self._tenures

    def phase(self, run_id: str) -> Phase | None:
        """Where the run is in its tenure here; None when it is not (or no longer) this replica's."""
        tenure = self._tenures.get(run_id)
        if tenure is None:
            return Phase.HANDED_OVER if run_id in self._handed_over else None
        if tenure.lost:
            return Phase.LOST
        return Phase.OWNED if tenure.stop is None else Phase.STOPPING

    def held(self) -> dict[str, int]:
        """The runs driven here, with the lease epoch each is held under (the leases to renew)."""
        return {run_id: tenure.epoch for run_id, tenure in self._tenures.items()}

    def own(self, run_id: str, epoch: int, task: asyncio.Task[None]) -> None:
        """The supervisor drives the run in `task` from now on, under lease `epoch`."""
        self._tenures[run_id] = _Tenure(task, epoch)
        self._handed_over.pop(run_id, None)  # claimed back before its lease was given back: ours again

    def why(self, run_id: str) -> Stop:
        """Why the run's task was cancelled: the stop asked for, or an interruption if nobody said."""
        tenure = self._tenures.get(run_id)
        stop = tenure.stop if tenure is not None else None
        return stop or Interrupt()

    def ended(self, run_id: str, stored: Ending | None) -> None:
        """The run's task has ended; `stored` is its ending once stored (None: not stored, or nothing to store)."""
        tenure = self._tenures.pop(run_id, None)
        if tenure is not None and isinstance(stored, HANDS_OVER) and not tenure.lost:
            self._handed_over[run_id] = tenure.epoch
            self.lease_work.set()

    def decided(self, run_id: str) -> None:
        """The run's ending is decided (the pipeline returned, or a stop was taken): from now on it is recorded
        whatever is asked, since a cancel in its task's last awaits would cut off its one terminal event."""
        tenure = self._tenures.get(run_id)
        if tenure is not None:
            tenure.decided = True

    # -- stopping runs ---------------------------------------------------------------------------------------

    def cancel(self, run_id: str, reason: str) -> None:
        """Ask a run driven here to end with run_cancelled (nothing to do if it is not driven here)."""
        tenure = self._tenures.get(run_id)
        if tenure is not None:
            self._stop(tenure, Cancel(reason))

    async def cancel_and_wait(self, run_id: str, reason: str, *, wait: float) -> bool:
        """Cancel a run driven here and wait (at most `wait` seconds) until it has ended; False if it has not."""
        tenure = self._tenures.get(run_id)
        if tenure is None or tenure.task.done():
            return True
        self._stop(tenure, Cancel(reason))
        done, _ = await asyncio.wait({tenure.task}, timeout=wait)
        return bool(done)

    def lose(self, run_ids: set[str]) -> None:
        """Another replica took these runs over: stop driving them at once, writing nothing."""
        for run_id in run_ids:
            tenure = self._tenures.get(run_id)
            # The lease renewal and every refused write say so until the run's task has ended; a run stopped
            # for another reason before (interrupted, cancelled) ends as asked, but is lost all the same.
            if tenure is not None and not tenure.lost:
                tenure.lost = True
                log.warning("run_lost", run_id=run_id)
                self._stop(tenure, Lost())

    async def lose_and_wait(self, run_id: str) -> None:
        """Stop driving a run as lost (writing nothing) and wait until its task has ended."""
        tenure = self._tenures.get(run_id)
        if tenure is not None:
            tenure.lost = True
            self._stop(tenure, Lost())
            await asyncio.wait({tenure.task})

    async def interrupt_all(self, error: FacilitairError | None = None, *, wait: float | None = None) -> None:
        """Stop every live run without a terminal event, waiting at most `wait` seconds (None: until they end).

        A run already being stopped ends as it was asked to. The runs' tasks are never cancelled twice here,
        whatever the wait: a run that has not ended yet is waiting to store its state.
        """
        for tenure in list(self._tenures.values()):
            self._stop(tenure, Interrupt(error))
        tasks = {tenure.task for tenure in self._tenures.values()}
        if tasks and wait != 0:
            await asyncio.wait(tasks, timeout=wait)

    def _stop(self, tenure: _Tenure, stop: Stop) -> None:
        # Stop once: a second cancel would land in the run's own ending and cut off its terminal event.
        if tenure.stop is None and not tenure.task.done() and not tenure.decided:
            tenure.stop = stop
            tenure.task.cancel()

    # -- leases to give back ---------------------------------------------------------------------------------

    def take_handed_over(self) -> dict[str, int]:
        """The leases of runs handed over since the last call, with their epochs (the caller gives them back)."""
        epochs, self._handed_over = self._handed_over, {}
        return epochs

    def give_back_failed(self, epochs: dict[str, int]) -> None:
        """These leases could not be given back: keep them for the next try (runs claimed since stay claimed)."""
        self._handed_over = {r: e for r, e in epochs.items() if r not in self._tenures} | self._handed_over

    @property
    def handing_over(self) -> int:
        """How many leases are waiting to be given back."""
        return len(self._handed_over)

    # -- the store's outages ---------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop the outage timer (the runs are interrupted by the caller)."""
        await cancel_and_wait(self._outage)

    def _health_changed(self, healthy: bool) -> None:
        if healthy:
            if self._outage is not None:
                self._outage.cancel()
                self._outage = None
        elif self._outage is None or self._outage.done():
            self._outage = start_task(self._interrupt_after_grace(), name="store-outage")

    async def _interrupt_after_grace(self) -> None:
        """A store that cannot write for longer than the grace interrupts every run (see runs.md, durable runs).

        Their provider streams are closed (memory stays bounded, nothing more is paid for), their watchers are told
        UNAVAILABLE (they re-attach later), their state waits for the store like every other write, and their
        leases are handed over once it is stored: they resume from their last completed stage here or elsewhere.
        """
        await asyncio.sleep(self._grace)  # a timer: a short blip costs the runs nothing
        if self._health.healthy or not self._tenures:
            return
        cause = self._health.cause
        log.warning("runs_interrupted", runs=len(self._tenures), why="the store cannot write", cause=cause)
        error = Unavailable(
            f"the server cannot store events now ({cause}); the run goes on once it can: watch it again later",
            reason=Reason.STORE_UNAVAILABLE,
        )
        await self.interrupt_all(error, wait=0)
