"""Starting runs driven here: new ones (admitted, stored, spawned) and claimed ones (resumed from the store).

A new run comes planned (pipeline/plan.py's PlannedRun: the spec and its plan, made once by the pipeline); here it
is admitted (its idempotency key, idempotency.py; its models, budget and limits, admission.py) and started.
A new run is stored through the store's insert_run, whose unique index decides idempotency across replicas and
whose count the per-principal limit across replicas; storing it, starting to drive it and its first commit run
as one task the caller only waits for, so a caller that leaves meanwhile cannot orphan the run. A claimed run
(left by a restart, a replica that died or let it go) resumes from its last completed stage; one that cannot be
read ends with run_failed, and one asked to be cancelled while nobody drove it ends with run_cancelled.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import structlog
from google.protobuf.message import DecodeError

from facilitair.server.domain import ApprovalDecision, Decision, Gate, Plan, RunState, chain_text
from facilitair.server.errors import DataCorrupt, FacilitairError, FailedPrecondition, Reason, ResourceLimited
from facilitair.server.events import wire
from facilitair.server.events.eventlog import EventLog
from facilitair.server.events.recorder import RunRecorder
from facilitair.server.pipeline.plan import PlanEstimator, PlannedRun
from facilitair.server.pipeline.spec import RunSpec, StageOutput, UnreadableRecord, webhook_url_of
from facilitair.server.providers import ProviderRegistry
from facilitair.server.runs.admission import CONCURRENCY_RETRY_SECONDS, Admission, check_budget
from facilitair.server.runs.idempotency import IdempotencyKeys, check_same_request
from facilitair.server.runs.supervisor import Supervisor
from facilitair.server.settings import Settings
from facilitair.server.store.base import Claim, DecideOutcome, EventStore, InsertOutcome, RunRow
from facilitair.server.tasks import TaskSupervisor
from facilitair.server.webhooks.outbox import Outbox

log = structlog.get_logger(__name__)


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
        outbox: Outbox | None = None,
    ) -> None:
        self._settings = settings
        self._outbox = outbox  # the webhooks of runs' ends (None: no endpoint is configured)
        self._store = store
        self._providers = providers
        self._estimator = estimator
        self._events = events
        self._admission = admission
        self._supervisor = supervisor
        self._keys = IdempotencyKeys(store)
        # Creations a caller waits for (its errors are the caller's): a caller that leaves does not end them.
        self.creations = TaskSupervisor("run-creations")

    # -- new runs -------------------------------------------------------------------------------------------

    async def create(self, planned: PlannedRun, principal: str, *, traceparent: str | None = None) -> str:
        """Admit and start a planned run (or find the one its idempotency key started) and return its id.

        In order: the idempotency key (a retry attaches to its run), admission (the models can run here, the plan
        is within its budgets, the limits let it in), then the run is stored, driven, and its first commit made.
        """
        spec = planned.spec
        key = (principal, spec.client_request_id)
        if spec.client_request_id:
            existing = await self._keys.existing(key, spec)
            if existing is not None:
                return existing
        # From here to registering the creation there is no await, so two calls with one key cannot both start.
        for model in spec.all_models():
            self._providers.check(model)  # FailedPrecondition now, not mid-run
        if spec.webhook_url:
            if self._outbox is None:
                raise FailedPrecondition("webhook_url: this server accepts no request-supplied webhook URLs")
            self._outbox.check_request_url(spec.webhook_url)
        check_budget(planned)
        run_id = str(uuid.uuid4())
        self._admission.admit(run_id, principal)
        # Storing the run, starting to drive it and its first commit belong to the run, not to this caller: a
        # caller that leaves meanwhile (deadline, disconnect) must neither orphan the run nor hide it from a
        # retry with the same key, which waits for this creation instead of starting another run.
        creation = self.creations.spawn(
            self._create(run_id, spec, planned.plan, principal, traceparent), name=f"create-{run_id}", awaited=True
        )
        if spec.client_request_id:
            self._keys.creating(key, creation)
        return await self.creations.join(creation)

    async def _create(self, run_id: str, spec: RunSpec, plan: Plan, principal: str, traceparent: str | None) -> str:
        """Store a new run (held by this replica), start driving it and wait for its first commit."""
        now = time.time()
        summary = wire.new_summary(run_id, spec.task, int(now * 1e9))
        row = RunRow(
            run_id, principal, spec.client_request_id, int(RunState.QUEUED), now, now, None, summary, spec.to_json(),
            traceparent=traceparent,
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
            rec = self.recorder(dataclasses.replace(row, summary=summary), last_seq)
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
            decisions = {d.stage: d for d in await self._store.decisions(row.run_id)}
        except (UnreadableRecord, FailedPrecondition) as exc:
            self._fail_unresumable(rec, exc)
            return await self._events.flush()
        pending = rec.pending_gate
        if pending is not None and pending.stage not in decisions:
            decided = await self._timed_out(row, pending)
            if decided is None:
                # Claimed with nothing to do (its row no longer names this gate): held by none, it is left as it is.
                log.warning("run_claimed_while_waiting", run_id=row.run_id, approval_id=pending.approval_id)
                self._events.close_channel(rec.channel)
                return await self._store.release_leases(self._settings.replica_id, {row.run_id: row.epoch})
            decisions[decided.stage] = decided
        current = rec.current_stage
        interrupted = current if current and current not in checkpoints else 0
        if last_seq == 0:
            rec.run_started(spec.task, self._estimator.estimate(spec).plan)
        else:
            # The stored state still says how the run last stopped (interrupted, when a server stopped
            # gracefully); from now on it is running, for GetRun and for ListRuns' state filter alike.
            rec.resumed()
        log.info("run_resumed", run_id=row.run_id, from_stage=max(checkpoints, default=0) + 1, last_seq=last_seq)
        self._admission.resumed(row.run_id, row.principal)
        self._supervisor.spawn(
            rec, spec, row.principal, checkpoints, interrupted, decisions=decisions, pending=pending,
            trace=(row.traceparent, row.trace_stretch),
        )

    async def _timed_out(self, row: RunRow, gate: Gate) -> Decision | None:
        """The decision of a gate claimed undecided: the store found it expired (by its own clock, which every replica
        shares), so its policy decides, recorded as the first decision. A person who decided at the same moment wins
        if theirs was stored first; None if the run does not wait at the gate after all."""
        now = time.time()
        policy = ApprovalDecision.APPROVE if gate.approve_on_timeout else ApprovalDecision.REJECT
        decision = Decision(
            gate.approval_id, gate.stage, gate.role, policy, principal="",
            comment="no decision before the approval expired", timed_out=True, requested_at=gate.requested_at,
            decided_at=now,
        )  # fmt: skip
        result = await self._store.decide(row.run_id, decision)
        if result.outcome is DecideOutcome.NOT_PENDING or result.recorded is None:
            return None
        log.info("approval_timed_out", run_id=row.run_id, approval_id=gate.approval_id, decision=policy.name)
        return result.recorded

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
            outbox=self._outbox,
            # Read from the stored spec, not the request: a run resumed or cancelled on another replica keeps it.
            webhook_url=webhook_url_of(row.spec) if self._outbox is not None else "",
        )
