"""Runs as things of their own: created, resumed after a restart, cancelled, watched, listed.

A run's task belongs to the manager, not to the stream that started it, so it outlives every
connection. On shutdown runs are interrupted (not cancelled) and resumed at the next start.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

import grpc
import structlog

from facilitair.server import metrics
from facilitair.server.attempts import AttemptPolicy, Budget, StageRunner
from facilitair.server.domain import chain_text
from facilitair.server.errors import (
    FacilitairError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceLimited,
    RunDeadlineExceeded,
    Unavailable,
    status_of,
)
from facilitair.server.eventlog import EventLog
from facilitair.server.orchestrator import Pipeline
from facilitair.server.pricing import PriceTable
from facilitair.server.providers import ProviderRegistry
from facilitair.server.recorder import RunRecorder
from facilitair.server.settings import PipelineConfig, Settings
from facilitair.server.spec import RunSpec, StageOutput, build_plan, estimated_tokens
from facilitair.server.store.base import EventStore, RunRow
from facilitair.v1 import orchestrator_pb2 as pb

log = structlog.get_logger(__name__)

FINISHED_STATES = frozenset({pb.RUN_STATE_COMPLETED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED})
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


class RunManager:
    """Owns the event log and every live run's task."""

    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        providers: ProviderRegistry,
        config: PipelineConfig,
    ) -> None:
        self.settings = settings
        self.store = store
        self.providers = providers
        self.config = config
        self.prices = PriceTable(config.price_overrides())
        self.log = EventLog(store)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_reasons: dict[str, str] = {}
        self._by_request: dict[tuple[str, str], str] = {}
        self._owners: dict[str, str] = {}  # live run id -> principal, for the per-principal limit
        self._buckets: dict[str, tuple[float, float]] = {}  # principal -> (tokens, monotonic time)
        self._stopping = False
        self._retention: asyncio.Task[None] | None = None

    # -- life of the manager ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the writer, resume the runs a previous server left unfinished."""
        await self.store.open()
        self.log.start()
        for row in await self.store.unfinished_runs():
            await self._resume(row)
        self._retention = asyncio.create_task(self._retention_loop(), name="retention")

    async def stop(self) -> None:
        """Interrupt every live run (checkpointed; resumed at the next start) and close the store."""
        self._stopping = True
        if self._retention is not None:
            self._retention.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            if not task.cancelling():  # a run already being cancelled is left to write its run_cancelled
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.log.stop()
        await self.store.close()

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
        return len(self._tasks)

    # -- starting and resuming runs ------------------------------------------------------------

    async def create_run(self, spec: RunSpec, principal: str) -> str:
        """Start a run (or find the one this idempotency key started) and return its id."""
        if self._stopping:
            raise Unavailable("the server is shutting down; retry against another instance or later")
        key = (principal, spec.client_request_id)
        if spec.client_request_id:
            existing = self._by_request.get(key)
            if existing is None:
                row = await self.store.find_run(principal, spec.client_request_id)
                existing = row.run_id if row is not None else self._by_request.get(key)
            if existing is not None:
                return existing
        for model in spec.all_models():
            self.providers.get(model.provider)  # FailedPrecondition now, not mid-run
        self._check_limits(principal)
        plan = build_plan(spec, self.prices)
        self._check_budget(spec, plan)
        run_id = str(uuid.uuid4())
        if spec.client_request_id:
            self._by_request[key] = run_id
        now = time.time()
        summary = pb.RunSummary(run_id=run_id, state=pb.RUN_STATE_QUEUED, task=spec.task)
        summary.created_at.FromNanoseconds(int(now * 1e9))
        row = RunRow(
            run_id,
            principal,
            spec.client_request_id,
            pb.RUN_STATE_QUEUED,
            now,
            now,
            None,
            summary.SerializeToString(),
            spec.to_json(),
        )
        self.log.update_run(row)
        recorder = self._recorder(row, last_seq=0)
        recorder.run_started(spec.task, plan)
        await self.log.flush()
        self._spawn(recorder, spec, {}, 0, principal)
        log.info(
            "run_created",
            run_id=run_id,
            principal=principal,
            models={r.label: chain_text(m) for r, m in spec.models.items()},
        )
        return run_id

    async def _resume(self, row: RunRow) -> None:
        """Continue a run a previous server left in flight, from its last completed stage."""
        last_seq = await self.store.last_seq(row.run_id)
        recorder = self._recorder(row, last_seq)
        try:
            spec = RunSpec.from_json(row.spec)
            for model in spec.all_models():
                self.providers.get(model.provider)
        except FacilitairError as exc:
            recorder.failed(
                grpc.StatusCode.FAILED_PRECONDITION.value[0],
                f"cannot resume the run: {exc.public_message}",
                retryable=False,
            )
            await self.log.flush()
            return
        checkpoints = {c.stage: StageOutput.from_json(c.data) for c in await self.store.checkpoints(row.run_id)}
        current = recorder.summary.current_stage
        interrupted = current if current and current not in checkpoints else 0
        if last_seq == 0:
            recorder.run_started(spec.task, build_plan(spec, self.prices))
        log.info("run_resumed", run_id=row.run_id, from_stage=max(checkpoints, default=0) + 1, last_seq=last_seq)
        self._spawn(recorder, spec, checkpoints, interrupted, row.principal)

    def _recorder(self, row: RunRow, last_seq: int) -> RunRecorder:
        channel = self.log.open_channel(row.run_id, last_seq)
        return RunRecorder(
            self.log,
            channel,
            row,
            thinking_interval=self.settings.thinking_interval,
            heartbeat_interval=self.settings.heartbeat_interval,
        )

    def _check_limits(self, principal: str) -> None:
        """Concurrent runs (server and principal) and the principal's rate of new runs."""
        s = self.settings
        if len(self._tasks) >= s.max_runs:
            raise ResourceLimited(f"the server is running its maximum of {s.max_runs} runs; retry later", 10.0)
        mine = sum(1 for owner in self._owners.values() if owner == principal)
        if mine >= s.max_runs_per_principal:
            raise ResourceLimited(
                f"you have {mine} runs in flight, the most allowed (FACILITAIR_MAX_RUNS_PER_PRINCIPAL); "
                "wait for one to finish or cancel one",
                10.0,
            )
        # A token bucket: runs_per_minute tokens, refilled continuously.
        now = time.monotonic()
        rate = s.runs_per_minute / 60.0
        tokens, then = self._buckets.get(principal, (s.runs_per_minute, now))
        tokens = min(s.runs_per_minute, tokens + (now - then) * rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / rate
            self._buckets[principal] = (tokens, now)
            raise ResourceLimited(
                f"you started more than {s.runs_per_minute:g} runs a minute; retry in {wait:.1f} s", wait
            )
        self._buckets[principal] = (tokens - 1.0, now)

    def _check_budget(self, spec: RunSpec, plan: pb.Plan) -> None:
        """Refuse a run whose plan is estimated over its budget, saying by how much."""
        if (
            spec.budget_usd is not None
            and plan.HasField("estimated_cost_usd")
            and plan.estimated_cost_usd > spec.budget_usd
        ):
            over = plan.estimated_cost_usd - spec.budget_usd
            raise FailedPrecondition(
                f"the plan's estimated cost ${plan.estimated_cost_usd:.4f} is over the budget ${spec.budget_usd:.4f} "
                f"by ${over:.4f}; raise max_cost_usd or choose cheaper models"
            )
        tokens = estimated_tokens(spec)
        if spec.budget_tokens is not None and tokens > spec.budget_tokens:
            raise FailedPrecondition(
                f"the plan's estimated {tokens} tokens are over the budget of {spec.budget_tokens} "
                f"by {tokens - spec.budget_tokens}; raise max_tokens"
            )

    def _spawn(
        self, rec: RunRecorder, spec: RunSpec, checkpoints: dict[int, StageOutput], interrupted: int, principal: str
    ) -> None:
        # The run's deadline counts from its creation, across restarts of the server.
        deadline = (
            time.monotonic() + rec.summary.created_at.ToNanoseconds() / 1e9 + self.settings.run_timeout - time.time()
        )
        policy = AttemptPolicy(
            attempts_per_model=self.settings.provider_attempts,
            retry_wait_max=self.settings.retry_wait_max,
            provider_timeout=self.settings.provider_timeout,
            backoff_base=self.settings.retry_backoff,
        )
        runner = StageRunner(
            rec, self.providers, policy, Budget(spec.budget_usd, spec.budget_tokens, self.prices), deadline
        )
        pipeline = Pipeline(
            spec, rec, self.prices, self.config, runner=runner, checkpoints=checkpoints, interrupted_stage=interrupted
        )
        # A fresh context: the run outlives the RPC that started it and must not log as that RPC.
        task = asyncio.create_task(
            self._drive(rec, pipeline, deadline), name=f"run-{rec.run_id}", context=contextvars.Context()
        )
        self._tasks[rec.run_id] = task
        self._owners[rec.run_id] = principal
        metrics.RUNS_ACTIVE.inc()

    async def _drive(self, rec: RunRecorder, pipeline: Pipeline, deadline: float) -> None:
        """Run the pipeline and end the run with exactly one terminal event (or interrupt it)."""
        structlog.contextvars.bind_contextvars(run_id=rec.run_id)
        started = time.monotonic()
        finish: Callable[[], None]
        rec.start_watchdog()
        try:
            try:
                try:
                    async with asyncio.timeout_at(deadline):
                        result = await pipeline.run()
                except TimeoutError:
                    limit = self.settings.run_timeout
                    raise RunDeadlineExceeded(
                        f"the run took longer than the server's limit of {limit:g} s (FACILITAIR_RUN_TIMEOUT)"
                    ) from None
                # The run's duration counts from its creation, across restarts of the server.
                created = rec.summary.created_at.ToNanoseconds() / 1e9
                finish = lambda: rec.completed(result, time.time() - created)  # noqa: E731
            except asyncio.CancelledError:
                reason = self._cancel_reasons.pop(rec.run_id, None)
                # No reason given means shutdown: the run is interrupted and resumes at the next start.
                finish = rec.interrupted if reason is None else lambda: rec.cancelled(reason)
            except Exception as exc:
                code, message = status_of(exc)
                if not isinstance(exc, FacilitairError):
                    log.exception("run_crashed")
                retryable = bool(getattr(exc, "retryable", False))
                finish = lambda: rec.failed(code.value[0], message, retryable=retryable)  # noqa: E731
            await rec.stop_watchdog()
            finish()
            await self.log.flush()
            if rec.summary.state == pb.RUN_STATE_INTERRUPTED:
                self.log.close_channel(rec.channel)
            u = rec.usage
            log.info(
                "run_finished",
                state=pb.RunState.Name(rec.summary.state),
                seconds=round(time.monotonic() - started, 3),
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cost_usd=round(u.cost_usd, 6),
                last_seq=rec.channel.next_seq - 1,
            )
        finally:
            await rec.stop_watchdog()
            self._tasks.pop(rec.run_id, None)
            self._owners.pop(rec.run_id, None)
            metrics.RUNS_ACTIVE.dec()
            metrics.RUNS_FINISHED.labels(pb.RunState.Name(rec.summary.state).removeprefix("RUN_STATE_").lower()).inc()
            self._cancel_reasons.pop(rec.run_id, None)

    # -- asking about runs ----------------------------------------------------------------------

    async def _owned(self, run_id: str, principal: str) -> RunRow:
        """The run, or NotFound, the same whether it does not exist or belongs to someone else."""
        row = await self.store.get_run(run_id) if _looks_like_id(run_id) else None
        if row is None or row.principal != principal:
            raise NotFound(f"run {run_id[:64]!r} not found")
        return row

    async def watch(self, run_id: str, after_seq: int, principal: str) -> AsyncIterator[list[pb.RunEvent]]:
        """Check the request, then return the run's events after `after_seq` until its end."""
        row = await self._owned(run_id, principal)
        channel = self.log.channel(run_id)
        last = channel.committed_seq if channel is not None else await self.store.last_seq(run_id)
        if after_seq > last:
            where = "finished " if row.state in FINISHED_STATES else ""
            raise OutOfRange(f"after_seq {after_seq} is past the last event ({last}) of this {where}run")
        return self.log.watch(run_id, after_seq)

    async def get_run(self, run_id: str, principal: str) -> pb.RunSummary:
        """The run's summary with its live progress."""
        row = await self._owned(run_id, principal)
        return await self._summary(row, with_result=True)

    async def _summary(self, row: RunRow, *, with_result: bool) -> pb.RunSummary:
        summary = pb.RunSummary.FromString(row.summary)
        channel = self.log.channel(row.run_id)
        summary.last_seq = channel.committed_seq if channel is not None else await self.store.last_seq(row.run_id)
        if not with_result:
            summary.ClearField("result")
        return summary

    async def list_runs(
        self, principal: str, state: int, page_size: int, page_token: str
    ) -> tuple[list[pb.RunSummary], str]:
        """One page of the principal's runs, newest first, and the next page's token."""
        if page_size > MAX_PAGE_SIZE:
            raise InvalidArgument("page_size", f"must be at most {MAX_PAGE_SIZE}")
        size = page_size or DEFAULT_PAGE_SIZE
        before = _decode_token(page_token) if page_token else None
        rows = await self.store.list_runs(principal, state or None, before, size + 1)
        page = [await self._summary(r, with_result=False) for r in rows[:size]]
        token = _encode_token(rows[size - 1]) if len(rows) > size else ""
        return page, token

    async def cancel_run(
        self, run_id: str, principal: str, reason: str = "cancelled by a client request"
    ) -> pb.RunSummary:
        """Cancel a live run and wait for its run_cancelled event; a finished run is returned as it is."""
        await self._owned(run_id, principal)
        task = self._tasks.get(run_id)
        if task is not None and not task.done():
            self._cancel_reasons.setdefault(run_id, reason)
            # Cancel once: a second cancel would land in the run's own ending and cut off its terminal event.
            if not task.cancelling():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        row = await self._owned(run_id, principal)
        return await self._summary(row, with_result=True)

    async def _retention_loop(self) -> None:
        while True:
            cutoff = time.time() - self.settings.retention_days * 86400
            try:
                removed = await self.store.delete_finished_before(cutoff)
                if removed:
                    log.info("runs_expired", removed=removed, retention_days=self.settings.retention_days)
            except Exception:
                log.exception("retention_failed")
            await asyncio.sleep(self.settings.retention_check_seconds)


def _looks_like_id(run_id: str) -> bool:
    try:
        uuid.UUID(run_id)
    except ValueError:
        return False
    return True


def _encode_token(row: RunRow) -> str:
    return base64.urlsafe_b64encode(json.dumps([row.created_at, row.run_id]).encode()).decode()


def _decode_token(token: str) -> tuple[float, str]:
    try:
        created_at, run_id = json.loads(base64.urlsafe_b64decode(token.encode()))
        if not isinstance(run_id, str) or not isinstance(created_at, int | float):
            raise TypeError
        when = float(created_at)  # OverflowError for an integer past the range of a float
    except (ValueError, TypeError, UnicodeError, OverflowError):
        raise InvalidArgument("page_token", "not a token returned by ListRuns") from None
    return when, run_id
