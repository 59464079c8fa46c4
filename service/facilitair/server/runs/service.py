"""The run service: what the transport calls to start, watch, describe, list and cancel runs.

It wires the parts of a run's life together and holds none of their logic: admission (admission.py), starting
and resuming runs (starts.py), the driving of live runs (supervisor.py), who drives a run and why it stops
(lifecycle.py), leases, handover and takeover (leases.py), questions about runs (queries.py), retention
(retention.py), the event log (events/) and the store underneath. Every replica on a shared store runs one of
these.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from facilitair.server.domain import FINISHED_STATES, Decision
from facilitair.server.errors import Reason, Unavailable
from facilitair.server.events.channel import Committed
from facilitair.server.events.eventlog import EventLog
from facilitair.server.events.health import StoreHealth
from facilitair.server.events.wire import RunSummary
from facilitair.server.pipeline.plan import PlanEstimator
from facilitair.server.pipeline.plan_history import StageHistory
from facilitair.server.pipeline.spec import RunSpec
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.pricing import PriceTable
from facilitair.server.providers import ProviderRegistry
from facilitair.server.runs.admission import Admission
from facilitair.server.runs.approvals import ApprovalDesk, ApprovalRequest
from facilitair.server.runs.leases import LeaseKeeper
from facilitair.server.runs.lifecycle import RunLifecycle
from facilitair.server.runs.queries import RunQueries
from facilitair.server.runs.retention import Retention
from facilitair.server.runs.starts import RunStarter
from facilitair.server.runs.supervisor import StatusNumber, Supervisor
from facilitair.server.sandbox import Sandbox
from facilitair.server.settings import Settings
from facilitair.server.store.base import EventStore, StoreUnavailable
from facilitair.server.tasks import TaskSupervisor
from facilitair.server.telemetry import Telemetry
from facilitair.server.webhooks.config import WebhookConfig
from facilitair.server.webhooks.dispatcher import WebhookDispatcher
from facilitair.server.webhooks.outbox import Outbox

log = structlog.get_logger(__name__)

# How long CancelRun waits for the run to end (its provider stream closed, run_cancelled stored): a live run
# ends within a second; more means the store cannot write, or the owner is gone and the next one cancels it.
CANCEL_WAIT = 10.0
# How long a graceful stop waits for its runs to store their state and for the last writes.
STOP_WAIT = 10.0


class RunService:
    """Runs as things of their own: created, resumed, taken over, cancelled, watched, listed."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        providers: ProviderRegistry,
        config: PipelineConfig,
        status_number: StatusNumber,
        *,
        webhooks: WebhookConfig | None = None,
        sandbox: Sandbox | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        webhooks = webhooks if webhooks is not None else WebhookConfig.from_settings(settings)
        self.replica_id = settings.replica_id
        self._store = store
        health = StoreHealth()
        prices = PriceTable(config.price_overrides())
        history = StageHistory()  # the plan learns from stages driven here and from the store
        self._estimator = estimator = PlanEstimator(prices, config, history, store)
        # Built bottom-up, each part given the parts it asks; none calls back into one built after it. The run
        # lifecycle is the bottom: the others ask it who drives a run and why one stops, and tell it what they learn.
        self.lifecycle = RunLifecycle(health, grace_seconds=settings.store_grace_seconds)
        self.events = EventLog(store, health=health, on_refused=self.lifecycle.lose)
        # The webhook outbox: rows queued by the recorders with terminal events, sent by the dispatcher, which a
        # commit that stored some wakes at once.
        self.webhooks = WebhookDispatcher(store.webhooks, webhooks, settings.replica_id, shared=store.shared)
        self.events.on_deliveries = self.webhooks.wake
        self._admission = Admission(settings)
        supervisor = Supervisor(
            settings,
            lifecycle=self.lifecycle,
            admission=self._admission,
            providers=providers,
            prices=prices,
            config=config,
            status_number=status_number,
            history=history,
            sandbox=sandbox,
            telemetry=telemetry or Telemetry(),
            store=store,
        )
        self._starter = RunStarter(
            settings,
            store=store,
            providers=providers,
            estimator=estimator,
            events=self.events,
            admission=self._admission,
            supervisor=supervisor,
            outbox=Outbox(webhooks) if webhooks.enabled else None,
        )
        self._leases = LeaseKeeper(
            store,
            settings.replica_id,
            settings.lease_seconds,
            lifecycle=self.lifecycle,
            events=self.events,
            admission=self._admission,
            starter=self._starter,
        )
        self._queries = RunQueries(store, self.events, settings.approvers())
        self._approvals = ApprovalDesk(store, self._queries, wake=self._leases.claim_soon)
        self._retention = Retention(settings, store)
        self._background = TaskSupervisor("runs")  # cancels that notifications and lease renewals asked for
        self._stopping = False

    # -- life of the service --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the writer, listen to the other replicas, take over the runs nobody drives."""
        await self._store.open()
        await self.events.start()
        await self._store.listen(self.events.committed_elsewhere, self._cancel_noticed, self._leases.claim_soon)
        await self._leases.start()
        self._retention.start()
        await self.webhooks.start()

    async def stop(self) -> None:
        """Interrupt every live run, hand the runs over (their leases released) and close the store.

        Bounded in time: a store that cannot write does not hold the stop up; what could not be stored was never
        seen by a client, and the runs resume from what was.
        """
        self._stopping = True
        await self._starter.creations.close()
        await self._background.close()
        await self.webhooks.stop()  # attempts in flight are cut: their claims run out and they are sent again
        await self._retention.stop()
        await self._leases.stop()
        await self.lifecycle.interrupt_all(wait=STOP_WAIT)
        await self.lifecycle.stop()
        try:
            async with asyncio.timeout(STOP_WAIT):
                await self._leases.release_now()
        except (StoreUnavailable, TimeoutError):
            pass  # the leases run out by themselves, and another replica claims the runs then
        except Exception:  # a stop must end whatever the store answers (exit 0, `stopped`)
            log.exception("lease_release_failed")
        await self.events.stop(wait=STOP_WAIT if self.events.health.healthy else 0.0)
        await self._store.close()

    @property
    def store(self) -> EventStore:
        """The store the runs live in."""
        return self._store

    @property
    def stopping(self) -> bool:
        """True once the server is stopping: the streams it ends then are not clients going away."""
        return self._stopping

    def refuse_new_runs(self) -> None:
        """From now on new runs get UNAVAILABLE (the first step of a graceful stop)."""
        self._stopping = True

    @property
    def active_runs(self) -> int:
        """How many runs are live in this process."""
        return len(self.lifecycle)

    # -- starting runs --------------------------------------------------------------------------

    async def create_run(self, spec: RunSpec, principal: str, *, traceparent: str | None = None) -> str:
        """Start a run (or find the one this idempotency key started) and return its id.


        Two steps (docs/architecture.md): the pipeline makes the request's plan, once (PlannedRun: the spec and
        the plan); the starter admits and starts the run from that, asking the pipeline nothing more.

        `traceparent` (W3C) is stored with a new run: the trace of the call that created it, which its spans join.
        """
        if self._stopping:
            raise Unavailable("the server is shutting down; retry against another instance or later")
        health = self.events.health
        if not health.healthy:
            raise Unavailable(
                f"the server cannot store runs now ({health.cause}); retry later", reason=Reason.STORE_UNAVAILABLE
            )
        planned = await self._estimator.plan_run(spec)
        return await self._starter.create(planned, principal, traceparent=traceparent)

    # -- asking about runs ----------------------------------------------------------------------

    async def watch(self, run_id: str, after_seq: int, principal: str) -> AsyncIterator[Committed]:
        """Check the request, then return the run's events after `after_seq` until its end."""
        row = await self._queries.check_watch(run_id, after_seq, principal)
        return self.events.watch(row.run_id, after_seq)

    async def get_run(self, run_id: str, principal: str) -> RunSummary:
        """The run's summary with its live progress and (once finished) its result."""
        row = await self._queries.owned(run_id, principal)
        return await self._queries.summary(row, with_result=True)

    async def list_runs(
        self, principal: str, state: int, page_size: int, page_token: str
    ) -> tuple[list[RunSummary], str]:
        """One page of the principal's runs, newest first, and the next page's token."""
        return await self._queries.list_runs(principal, state, page_size, page_token)

    # -- approval gates -------------------------------------------------------------------------

    async def submit_approval(self, request: ApprovalRequest, principal: str) -> tuple[Decision, RunSummary]:
        """Record a decision at a run's approval gate (or find the one recorded); return it and the run now."""
        decision, row = await self._approvals.submit(request, principal)
        return decision, await self._queries.summary(row, with_result=True)

    # -- cancelling runs ------------------------------------------------------------------------

    async def cancel_run(
        self, run_id: str, principal: str, reason: str = "cancelled by a client request"
    ) -> RunSummary:
        """Cancel a run wherever it is driven and wait (bounded) for its end; a finished run is returned as it is."""
        row = await self._queries.owned(run_id, principal)
        run_id = row.run_id  # the full id, whatever the caller named the run by (a prefix, "last")
        if self.lifecycle.is_live(run_id):
            ended = await self.lifecycle.cancel_and_wait(run_id, reason, wait=CANCEL_WAIT)
        elif row.state in FINISHED_STATES:
            ended = True
        else:
            # Driven by another replica (or by none right now, as a run waiting at an approval gate): the request is
            # stored, and the owner (or whoever claims the run next, here at once if it can) cancels it.
            requested = await self._store.request_cancel(run_id, reason)
            if requested:
                self._leases.claim_soon()
            ended = not requested or await self._ended(run_id)
        if not ended and not self.events.health.healthy:
            raise Unavailable(
                f"the run is cancelled, but the server cannot store that now ({self.events.health.cause}); "
                "it is stored once it can",
                reason=Reason.STORE_UNAVAILABLE,
            )
        return await self.get_run(run_id, principal)

    async def _ended(self, run_id: str) -> bool:
        """Follow a run elsewhere until its end (True), or until CANCEL_WAIT passes (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CANCEL_WAIT):
                async for _ in self.events.watch(run_id, await self._store.last_seq(run_id)):
                    pass
                return True
        return False

    def _cancel_noticed(self, run_id: str) -> None:
        """A cancel was requested on some replica (the store's listener): cancel the run if it is driven here."""
        if self.lifecycle.is_live(run_id):
            log.info("cancel_noticed", run_id=run_id, via="notification")
            self._background.spawn(self._cancel_with_stored_reason(run_id), name=f"cancel-{run_id}")
        else:
            self._leases.claim_soon()  # a run nobody drives (one waiting at a gate) is claimed and cancelled now

    async def _cancel_with_stored_reason(self, run_id: str) -> None:
        row = await self._store.get_run(run_id)
        reason = row.cancel_reason if row is not None and row.cancel_reason else "cancelled by a client request"
        self.lifecycle.cancel(run_id, reason)
