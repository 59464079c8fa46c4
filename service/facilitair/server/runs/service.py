"""The run service: what the transport calls to start, watch, describe, list and cancel runs.

It wires the parts of a run's life together and holds none of their logic: admission (admission.py), the
driving of live runs (supervisor.py), questions about runs (queries.py), retention (retention.py), the
event log (events/) and the store underneath.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator

import structlog
from google.protobuf.message import DecodeError

from facilitair.server.domain import Plan, chain_text
from facilitair.server.errors import (
    DataCorrupt,
    FacilitairError,
    FailedPrecondition,
    Reason,
    ResourceLimited,
    Unavailable,
)
from facilitair.server.events import wire
from facilitair.server.events.eventlog import EventLog
from facilitair.server.events.recorder import RunRecorder
from facilitair.server.pipeline.plan import PlanEstimator
from facilitair.server.pipeline.spec import RunSpec, StageOutput
from facilitair.server.pricing import PriceTable
from facilitair.server.providers import ProviderRegistry
from facilitair.server.runs.admission import CONCURRENCY_RETRY_SECONDS, Admission, check_budget
from facilitair.server.runs.idempotency import check_same_request
from facilitair.server.runs.queries import RunQueries
from facilitair.server.runs.retention import Retention
from facilitair.server.runs.supervisor import StatusNumber, Supervisor
from facilitair.server.settings import PipelineConfig, Settings
from facilitair.server.store.base import EventStore, InsertOutcome, RunRow
from facilitair.v1 import orchestrator_pb2 as pb

log = structlog.get_logger(__name__)

# Leases are not renewed yet: the store fences writes by epoch, not by the lease's expiry.
LEASE_SECONDS = 10.0
CLAIM_ALL = 1_000_000


class RunService:
    """Runs as things of their own: created, resumed after a restart, cancelled, watched, listed."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        providers: ProviderRegistry,
        config: PipelineConfig,
        status_number: StatusNumber,
    ) -> None:
        self.settings = settings
        self._store = store
        self._providers = providers
        prices = PriceTable(config.price_overrides())
        self._estimator = PlanEstimator(prices, config)
        self.events = EventLog(store)
        self._admission = Admission(settings)
        self._supervisor = Supervisor(
            settings,
            providers=providers,
            prices=prices,
            config=config,
            status_number=status_number,
            on_finished=self._admission.release,
        )
        self._queries = RunQueries(store, self.events)
        self._retention = Retention(settings, store)
        # Idempotency keys of runs being created right now: a second call with the same key waits for the
        # first one's run instead of starting another (the store answers once the run is committed).
        self._creating: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._background: set[asyncio.Future[str]] = set()
        self._stopping = False
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}"

    # -- life of the service --------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the writer, resume the runs a previous server left unfinished."""
        await self._store.open()
        self.events.start()
        # One process on its store: every unfinished run was left by an earlier life of this server.
        claims = await self._store.claim_expired(
            self.replica_id, LEASE_SECONDS, CLAIM_ALL, ignore_leases=not self._store.shared
        )
        for claim in claims:
            await self._resume(claim.row, claim.last_seq)
        self._retention.start()

    async def stop(self) -> None:
        """Interrupt every live run (checkpointed; resumed at the next start) and close the store."""
        self._stopping = True
        await self._retention.stop()
        await self._supervisor.interrupt_all()
        await self.events.stop()
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
        return len(self._supervisor)

    # -- starting and resuming runs ------------------------------------------------------------

    async def create_run(self, spec: RunSpec, principal: str) -> str:
        """Start a run (or find the one this idempotency key started) and return its id."""
        if self._stopping:
            raise Unavailable("the server is shutting down; retry against another instance or later")
        key = (principal, spec.client_request_id)
        if spec.client_request_id:
            existing = await self._existing(key)
            if existing is not None:
                check_same_request(existing, spec)
                return existing.run_id
        for model in spec.all_models():
            self._providers.get(model.provider)  # FailedPrecondition now, not mid-run
        plan = self._estimator.plan(spec)
        check_budget(plan, self._estimator.tokens(spec), spec.budget_usd, spec.budget_tokens)
        run_id = str(uuid.uuid4())
        self._admission.admit(run_id, principal)
        # Storing the run, starting to drive it and its first commit belong to the run, not to this caller: a
        # caller that leaves meanwhile (deadline, disconnect) must neither orphan the run nor hide it from a
        # retry with the same key, which waits for this creation instead of starting another run.
        creation = asyncio.ensure_future(self._create(run_id, spec, plan, principal))
        self._background.add(creation)
        creation.add_done_callback(self._background.discard)
        if spec.client_request_id:
            self._creating[key] = creation
            creation.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(creation)

    def _forget(self, key: tuple[str, str], creation: asyncio.Future[str]) -> None:
        """Once a creation is over (stored, or failed), its key is answered by the store alone."""
        if self._creating.get(key) is creation:
            del self._creating[key]

    async def _create(self, run_id: str, spec: RunSpec, plan: Plan, principal: str) -> str:
        """Store a new run (held by this replica), start driving it and wait for its first commit."""
        now = time.time()
        summary = wire.new_summary(run_id, spec.task, int(now * 1e9))
        row = RunRow(
            run_id, principal, spec.client_request_id, summary.state, now, now, None,
            summary.SerializeToString(), spec.to_json(),
        )  # fmt: skip
        try:
            inserted = await self._store.insert_run(
                row,
                owner=self.replica_id,
                lease_seconds=LEASE_SECONDS,
                max_active_per_principal=self.settings.max_runs_per_principal,
            )
        except BaseException:
            self._admission.release(run_id)
            raise
        if inserted.outcome is not InsertOutcome.CREATED or inserted.row is None:
            self._admission.release(run_id)
            if inserted.outcome is InsertOutcome.EXISTING and inserted.row is not None:
                check_same_request(inserted.row, spec)
                return inserted.row.run_id  # started at the same moment elsewhere: attach to that run
            raise ResourceLimited(
                f"you have {inserted.active} runs in flight, the most allowed (FACILITAIR_MAX_RUNS_PER_PRINCIPAL); "
                "wait for one to finish or cancel one",
                CONCURRENCY_RETRY_SECONDS,
            )
        rec = self._recorder(inserted.row, last_seq=0)
        rec.run_started(spec.task, plan)
        self._supervisor.spawn(rec, spec, principal)
        log.info(
            "run_created",
            run_id=run_id,
            principal=principal,
            models={r.label: chain_text(m) for r, m in spec.models.items()},
        )
        await self.events.flush()
        return run_id

    async def _existing(self, key: tuple[str, str]) -> RunRow | None:
        """The run an idempotency key already started (waiting for one being created), or None."""
        pending = self._creating.get(key)
        if pending is None:
            row = await self._store.find_run(*key)
            if row is not None:
                return row
            pending = self._creating.get(key)  # created while the store was read
            if pending is None:
                return None
        return await self._store.get_run(await asyncio.shield(pending))

    async def _resume(self, row: RunRow, last_seq: int) -> None:
        """Continue a run a previous server left in flight, from its last completed stage.

        Each run stands alone: one that cannot be read (corrupt, or written by an unknown version) ends with
        run_failed, and the server goes on with the others.
        """
        try:
            rec = self._recorder(row, last_seq)
        except DecodeError:
            # Even the summary is unreadable: start a new one so that the run can at least be failed.
            summary = wire.new_summary(row.run_id, "", int(row.created_at * 1e9))
            rec = self._recorder(dataclasses.replace(row, summary=summary.SerializeToString()), last_seq)
            self._fail_unresumable(rec, DataCorrupt("its stored summary cannot be read"))
            await self.events.flush()
            return
        try:
            spec = RunSpec.from_json(row.spec)
            for model in spec.all_models():
                self._providers.get(model.provider)
            checkpoints = {c.stage: StageOutput.from_json(c.data) for c in await self._store.checkpoints(row.run_id)}
        except FacilitairError as exc:
            self._fail_unresumable(rec, exc)
            await self.events.flush()
            return
        current = rec.current_stage
        interrupted = current if current and current not in checkpoints else 0
        if last_seq == 0:
            rec.run_started(spec.task, self._estimator.plan(spec))
        log.info("run_resumed", run_id=row.run_id, from_stage=max(checkpoints, default=0) + 1, last_seq=last_seq)
        self._admission.resumed(row.run_id, row.principal)
        self._supervisor.spawn(rec, spec, row.principal, checkpoints, interrupted)

    def _fail_unresumable(self, rec: RunRecorder, exc: FacilitairError) -> None:
        reason = exc.reason if exc.reason is not Reason.STORED_DATA_CORRUPT else Reason.RUN_NOT_RESUMABLE
        error = FailedPrecondition(f"cannot resume the run: {exc.public_message}", reason=reason)
        log.warning("run_not_resumable", run_id=rec.run_id, reason=reason.value, why=exc.public_message)
        self._supervisor.fail(rec, error)

    def _recorder(self, row: RunRow, last_seq: int) -> RunRecorder:
        channel = self.events.open_channel(row.run_id, last_seq, epoch=row.epoch)
        return RunRecorder(
            self.events,
            channel,
            row,
            thinking_interval=self.settings.thinking_interval,
            heartbeat_interval=self.settings.heartbeat_interval,
        )

    # -- asking about runs ----------------------------------------------------------------------

    async def watch(self, run_id: str, after_seq: int, principal: str) -> AsyncIterator[list[pb.RunEvent]]:
        """Check the request, then return the run's events after `after_seq` until its end."""
        row = await self._queries.check_watch(run_id, after_seq, principal)
        return self.events.watch(row.run_id, after_seq)

    async def get_run(self, run_id: str, principal: str) -> pb.RunSummary:
        """The run's summary with its live progress and (once finished) its result."""
        row = await self._queries.owned(run_id, principal)
        return await self._queries.summary(row, with_result=True)

    async def list_runs(
        self, principal: str, state: int, page_size: int, page_token: str
    ) -> tuple[list[pb.RunSummary], str]:
        """One page of the principal's runs, newest first, and the next page's token."""
        return await self._queries.list_runs(principal, state, page_size, page_token)

    async def cancel_run(
        self, run_id: str, principal: str, reason: str = "cancelled by a client request"
    ) -> pb.RunSummary:
        """Cancel a live run and wait for its run_cancelled event; a finished run is returned as it is."""
        row = await self._queries.owned(run_id, principal)
        await self._supervisor.cancel(row.run_id, reason)
        return await self.get_run(row.run_id, principal)
