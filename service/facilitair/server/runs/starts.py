"""Starting runs driven here: new ones (admitted, stored, spawned) and claimed ones (resumed from the store).

A new run is stored through the store's insert_run, whose unique index decides idempotency across replicas and
whose count the per-principal limit across replicas; storing it, starting to drive it and its first commit run
as one task the caller only waits for, so a caller that leaves meanwhile cannot orphan the run. A claimed run
(left by a restart, a replica that died or let it go) resumes from its last completed stage; one that cannot be
read ends with run_failed, and one asked to be cancelled while nobody drove it ends with run_cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import structlog
from google.protobuf.message import DecodeError

from facilitair.server.domain import Plan, chain_text
from facilitair.server.errors import DataCorrupt, FacilitairError, FailedPrecondition, Reason, ResourceLimited
from facilitair.server.events import wire
from facilitair.server.events.eventlog import EventLog
from facilitair.server.events.recorder import RunRecorder
from facilitair.server.pipeline.plan import PlanEstimator
from facilitair.server.pipeline.plan_history import RUNS_READ
from facilitair.server.pipeline.spec import RunSpec, StageOutput, UnreadableRecord
from facilitair.server.providers import ProviderRegistry
from facilitair.server.runs.admission import CONCURRENCY_RETRY_SECONDS, Admission, check_budget
from facilitair.server.runs.idempotency import check_same_request
from facilitair.server.runs.supervisor import Supervisor
from facilitair.server.settings import Settings
from facilitair.server.store.base import Claim, EventStore, InsertOutcome, RunRow, StoreUnavailable

log = structlog.get_logger(__name__)

# How often the plan's history is read again from the store, for the runs other replicas finished (this one's
# own stages are learnt as they complete).
HISTORY_RELOAD_SECONDS = 300.0


class RunStarter:
    """Creates and resumes the runs this replica drives."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: EventStore,
        providers: ProviderRegistry,
        estimator: PlanEstimator,
        events: EventLog,
        admission: Admission,
        supervisor: Supervisor,
    ) -> None:
        self._settings = settings
        self._store = store
        self._providers = providers
        self._estimator = estimator
        self._events = events
        self._admission = admission
        self._supervisor = supervisor
        # Idempotency keys of runs being created right now: a second call with the same key waits for the
        # first one's run instead of starting another (the store answers once the run is committed).
        self._creating: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._background: set[asyncio.Future[str]] = set()
        self._history_due = 0.0  # time.monotonic() when the plan's history is next read from the store

    # -- new runs -------------------------------------------------------------------------------------------

    async def create(self, spec: RunSpec, principal: str, *, traceparent: str | None = None) -> str:
        """Start a run (or find the one this idempotency key started) and return its id."""
        # Before the idempotency check: from there to registering the creation there must be no await, or two
        # calls with one key could both find nothing and both start a run.
        await self._learn()
        key = (principal, spec.client_request_id)
        if spec.client_request_id:
            existing = await self._existing(key)
            if existing is not None:
                check_same_request(existing, spec)
                return existing.run_id
        for model in spec.all_models():
            self._providers.check(model)  # FailedPrecondition now, not mid-run
        plan = self._estimator.plan(spec)
        check_budget(plan, self._estimator.tokens(spec), spec.budget_usd, spec.budget_tokens)
        run_id = str(uuid.uuid4())
        self._admission.admit(run_id, principal)
        # Storing the run, starting to drive it and its first commit belong to the run, not to this caller: a
        # caller that leaves meanwhile (deadline, disconnect) must neither orphan the run nor hide it from a
        # retry with the same key, which waits for this creation instead of starting another run.
        creation = asyncio.ensure_future(self._create(run_id, spec, plan, principal, traceparent))
        self._background.add(creation)
        creation.add_done_callback(self._background.discard)
        if spec.client_request_id:
            self._creating[key] = creation
            creation.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(creation)

    async def _learn(self) -> None:
        """Read the stages of recently finished runs into the plan's history: at the first run, then now and then."""
        now = time.monotonic()
        if now < self._history_due:
            return
        self._history_due = now + HISTORY_RELOAD_SECONDS
        try:
            stored = await self._store.recent_checkpoints(RUNS_READ)
            self._estimator.history.load(c.data for c in stored)
        except StoreUnavailable:
            self._history_due = 0.0  # the plan uses what is known; storing the run meets the outage itself
        except Exception:
            # Estimates are not worth a refused run: the plan goes on with what it knows.
            log.warning("plan_history_unreadable", exc_info=True)

    def _forget(self, key: tuple[str, str], creation: asyncio.Future[str]) -> None:
        """Once a creation is over (stored, or failed), its key is answered by the store alone."""
        if self._creating.get(key) is creation:
            del self._creating[key]

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

    async def _create(self, run_id: str, spec: RunSpec, plan: Plan, principal: str, traceparent: str | None) -> str:
        """Store a new run (held by this replica), start driving it and wait for its first commit."""
        now = time.time()
        summary = wire.new_summary(run_id, spec.task, int(now * 1e9))
        row = RunRow(
            run_id, principal, spec.client_request_id, summary.state, now, now, None,
            summary.SerializeToString(), spec.to_json(), traceparent=traceparent,
        )  # fmt: skip
        try:
            inserted = await self._store.insert_run(
                row,
                owner=self._settings.replica_id,
                lease_seconds=self._settings.lease_seconds,
                max_active_per_principal=self._settings.max_runs_per_principal,
                max_started_per_minute=self._settings.runs_per_minute,
            )
        except BaseException:
            self._admission.release(run_id)
            raise
        if inserted.outcome is not InsertOutcome.CREATED or inserted.row is None:
            self._admission.release(run_id)
            if inserted.outcome is InsertOutcome.EXISTING and inserted.row is not None:
                check_same_request(inserted.row, spec)
                return inserted.row.run_id  # started at the same moment elsewhere: attach to that run
            if inserted.outcome is InsertOutcome.RATE_LIMITED:
                raise ResourceLimited(
                    f"you started more than {self._settings.runs_per_minute:g} runs a minute (across all servers); "
                    f"retry in {inserted.retry_after:.1f} s",
                    inserted.retry_after,
                    reason=Reason.RATE_LIMITED,
                )
            raise ResourceLimited(
                f"you have {inserted.active} runs in flight, the most allowed (FACILITAIR_MAX_RUNS_PER_PRINCIPAL); "
                "wait for one to finish or cancel one",
                CONCURRENCY_RETRY_SECONDS,
            )
        rec = self.recorder(inserted.row, last_seq=0)
        rec.run_started(spec.task, plan)
        self._supervisor.spawn(rec, spec, principal, trace=(inserted.row.traceparent, None))
        log.info(
            "run_created",
            run_id=run_id,
            principal=principal,
            models={r.label: chain_text(m) for r, m in spec.models.items()},
        )
        await self._events.flush()
        return run_id

    # -- claimed runs ----------------------------------------------------------------------------------------

    async def resume(self, claim: Claim) -> None:
        """Drive a run this replica just claimed, from its last completed stage (no older driver of it is left here).

        Each run stands alone: one that cannot be read (corrupt, or written by an unknown version) ends with
        run_failed, and the server goes on with the others.
        """
        row, last_seq = claim.row, claim.last_seq
        try:
            rec = self.recorder(row, last_seq)
        except DecodeError:
            # Even the summary is unreadable: start a new one so that the run can at least be failed.
            summary = wire.new_summary(row.run_id, "", int(row.created_at * 1e9))
            rec = self.recorder(dataclasses.replace(row, summary=summary.SerializeToString()), last_seq)
            self._fail_unresumable(rec, DataCorrupt("its stored summary cannot be read"))
            return await self._events.flush()
        if row.cancel_reason is not None:
            # Asked to be cancelled while no replica drove it: it ends so, without another stage.
            rec.cancelled(row.cancel_reason)
            return await self._events.flush()
        try:
            spec = RunSpec.from_json(row.spec)
            for model in spec.all_models():
                self._providers.check(model)
            checkpoints = {c.stage: StageOutput.from_json(c.data) for c in await self._store.checkpoints(row.run_id)}
        except (UnreadableRecord, FailedPrecondition) as exc:
            self._fail_unresumable(rec, exc)
            return await self._events.flush()
        current = rec.current_stage
        interrupted = current if current and current not in checkpoints else 0
        if last_seq == 0:
            rec.run_started(spec.task, self._estimator.plan(spec))
        else:
            # The stored state still says how the run last stopped (interrupted, when a server stopped
            # gracefully); from now on it is running, for GetRun and for ListRuns' state filter alike.
            rec.resumed()
        log.info("run_resumed", run_id=row.run_id, from_stage=max(checkpoints, default=0) + 1, last_seq=last_seq)
        self._admission.resumed(row.run_id, row.principal)
        self._supervisor.spawn(
            rec, spec, row.principal, checkpoints, interrupted, trace=(row.traceparent, row.trace_stretch)
        )

    def _fail_unresumable(self, rec: RunRecorder, exc: FacilitairError) -> None:
        reason = exc.reason if exc.reason is not Reason.STORED_DATA_CORRUPT else Reason.RUN_NOT_RESUMABLE
        error = FailedPrecondition(f"cannot resume the run: {exc.public_message}", reason=reason)
        log.warning("run_not_resumable", run_id=rec.run_id, reason=reason.value, why=exc.public_message)
        self._supervisor.fail(rec, error)

    def recorder(self, row: RunRow, last_seq: int) -> RunRecorder:
        """The recorder of a run driven here from now on (its channel opened under the run's lease epoch)."""
        channel = self._events.open_channel(row.run_id, last_seq, epoch=row.epoch)
        return RunRecorder(
            self._events,
            channel,
            row,
            thinking_interval=self._settings.thinking_interval,
            heartbeat_interval=self._settings.heartbeat_interval,
        )
