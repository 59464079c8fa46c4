"""The supervisor: drives every run that lives in this process, from spawn to its one ending.

A run's task belongs to the supervisor, not to the stream that started it, so it outlives every connection.
Its time here ends in exactly one way, decided in `_ending`: completed, failed, cancelled (a CancelRun or a
client that left with on_disconnect=CANCEL), interrupted (the server is stopping, or the store cannot write:
no terminal event; the run's lease is released and it resumes here or on another replica), or lost (another
replica took the run over: nothing more is written, the provider's stream is closed). Who stops a run says
why before cancelling its task (`LiveRun.stop`).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from facilitair.server import metrics
from facilitair.server.domain import RunOutcome
from facilitair.server.errors import FacilitairError, RunDeadlineExceeded
from facilitair.server.events import wire
from facilitair.server.events.recorder import RunRecorder
from facilitair.server.pipeline.attempts import AttemptPolicy, StageRunner
from facilitair.server.pipeline.budget import Budget
from facilitair.server.pipeline.orchestrator import Pipeline
from facilitair.server.pipeline.plan_history import StageHistory
from facilitair.server.pipeline.spec import RunSpec, StageOutput
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.pricing import PriceTable
from facilitair.server.providers import ProviderRegistry
from facilitair.server.sandbox import Sandbox
from facilitair.server.settings import Settings

log = structlog.get_logger(__name__)

#: Maps an error to the gRPC status number a run_failed event carries (the transport's one status table).
StatusNumber = Callable[[BaseException], int]


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


Ending = Cancel | Interrupt | Lost | Completed | Failed
Stop = Cancel | Interrupt | Lost


@dataclass(slots=True)
class LiveRun:
    """A run driven by this process."""

    recorder: RunRecorder
    principal: str
    task: asyncio.Task[None] | None = None
    stop: Stop | None = None  # set by whoever stops the run, before cancelling its task
    lost: bool = False  # another replica took it over (said once: the renewal and a refused write both tell)


class Supervisor:
    """Spawns, drives, cancels and interrupts the runs of this process."""

    def __init__(
        self,
        settings: Settings,
        *,
        providers: ProviderRegistry,
        prices: PriceTable,
        config: PipelineConfig,
        status_number: StatusNumber,
        on_finished: Callable[[str], None],
        on_interrupted: Callable[[str, int], None],
        history: StageHistory | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self._settings = settings
        self._sandbox = sandbox
        self._history = history
        self._providers = providers
        self._prices = prices
        self._config = config
        self._status_number = status_number
        self._on_finished = on_finished
        self._on_interrupted = on_interrupted
        self._live: dict[str, LiveRun] = {}

    def __len__(self) -> int:
        return len(self._live)

    def is_live(self, run_id: str) -> bool:
        """True while the run is driven by this process."""
        return run_id in self._live

    def spawn(
        self,
        rec: RunRecorder,
        spec: RunSpec,
        principal: str,
        checkpoints: dict[int, StageOutput] | None = None,
        interrupted_stage: int = 0,
    ) -> None:
        """Start driving a run: from its start, or from its checkpoints after a restart."""
        deadline = self._deadline(rec)
        policy = AttemptPolicy(
            attempts_per_model=self._settings.provider_attempts,
            retry_wait_max=self._settings.retry_wait_max,
            provider_timeout=self._settings.provider_timeout,
            backoff_base=self._settings.retry_backoff,
        )
        budget = Budget(spec.budget_usd, spec.budget_tokens, self._prices)
        runner = StageRunner(rec, self._providers, policy, budget, deadline)
        pipeline = Pipeline(
            spec,
            rec,
            self._prices,
            self._config,
            runner=runner,
            checkpoints=checkpoints,
            interrupted_stage=interrupted_stage,
            history=self._history,
            sandbox=self._sandbox,
        )
        live = LiveRun(rec, principal)
        # A fresh context: the run outlives the RPC that started it and must not log as that RPC.
        live.task = asyncio.create_task(
            self._drive(live, pipeline, deadline), name=f"run-{rec.run_id}", context=contextvars.Context()
        )
        self._live[rec.run_id] = live
        metrics.RUNS_ACTIVE.inc()

    def _deadline(self, rec: RunRecorder) -> float:
        """The run's deadline on the monotonic clock, counted from its creation across restarts."""
        return time.monotonic() + rec.created_at + self._settings.run_timeout - time.time()

    def held(self) -> dict[str, int]:
        """The runs driven here, with the lease epoch each is held under."""
        return {run_id: live.recorder.channel.epoch for run_id, live in self._live.items()}

    async def cancel(self, run_id: str, reason: str, *, wait: float) -> bool:
        """Cancel a live run and wait (at most `wait` seconds) until it has ended; False if it has not by then."""
        live = self._live.get(run_id)
        if live is None or live.task is None or live.task.done():
            return True
        self._stop(live, Cancel(reason))
        done, _ = await asyncio.wait({live.task}, timeout=wait)
        return bool(done)

    def lose(self, run_ids: set[str]) -> None:
        """Another replica took these runs over: stop driving them at once, writing nothing."""
        for run_id in run_ids:
            live = self._live.get(run_id)
            # The lease renewal and every refused write say so until the run's task has ended; a run stopped
            # for another reason before (interrupted, cancelled) ends as asked, but is lost all the same.
            if live is not None and not live.lost:
                live.lost = True
                log.warning("run_lost", run_id=run_id)
                self._stop(live, Lost())

    async def lose_and_wait(self, run_id: str) -> None:
        """Stop driving a run as lost (writing nothing) and wait until its task has ended."""
        live = self._live.get(run_id)
        if live is not None and live.task is not None:
            live.lost = True
            self._stop(live, Lost())
            await asyncio.wait({live.task})

    async def interrupt_all(self, error: FacilitairError | None = None, *, wait: float | None = None) -> None:
        """Stop every live run without a terminal event, waiting at most `wait` seconds (None: until they end).

        A run already being stopped ends as it was asked to. The runs' tasks are never cancelled twice here,
        whatever the wait: a run that has not ended yet is waiting to store its state.
        """
        for live in list(self._live.values()):
            self._stop(live, Interrupt(error))
        tasks = {live.task for live in self._live.values() if live.task is not None}
        if tasks and wait != 0:
            await asyncio.wait(tasks, timeout=wait)

    def _stop(self, live: LiveRun, stop: Stop) -> None:
        # Stop once: a second cancel would land in the run's own ending and cut off its terminal event.
        if live.stop is None and live.task is not None and not live.task.done():
            live.stop = stop
            live.task.cancel()

    async def _drive(self, live: LiveRun, pipeline: Pipeline, deadline: float) -> None:
        """Run the pipeline and record the run's one ending."""
        rec = live.recorder
        structlog.contextvars.bind_contextvars(run_id=rec.run_id)
        started = time.monotonic()
        rec.watchdog.start()
        try:
            ending = await self._ending(live, pipeline, deadline)
            await rec.watchdog.stop()
            if isinstance(ending, Lost):
                # Not ours to write any more: the new owner resumes the run from what is stored.
                rec.event_log.close_channel(rec.channel)
                return
            if isinstance(ending, Interrupt):
                # Watchers are told now; the row's state waits for the store like every other write.
                rec.event_log.close_channel(rec.channel, error=ending.error)
            self._record(rec, ending)
            await rec.event_log.flush()
            if isinstance(ending, Interrupt):
                self._on_interrupted(rec.run_id, rec.channel.epoch)
            u = rec.usage
            log.info(
                "run_finished",
                state=wire.state_name(rec.state),
                seconds=round(time.monotonic() - started, 3),
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                cost_usd=round(u.cost_usd, 6),
                usage_estimated=u.estimated,
                last_seq=rec.last_seq,
            )
        finally:
            await rec.watchdog.stop()
            self._live.pop(rec.run_id, None)
            self._on_finished(rec.run_id)
            metrics.RUNS_ACTIVE.dec()
            metrics.RUNS_FINISHED.labels(wire.state_name(rec.state).removeprefix("RUN_STATE_").lower()).inc()

    async def _ending(self, live: LiveRun, pipeline: Pipeline, deadline: float) -> Ending:
        """How the run ends: the pipeline's result, its error, its deadline, or the stop asked for."""
        try:
            async with asyncio.timeout_at(deadline) as timeout:
                return Completed(await pipeline.run())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled here: the run goes on to record its ending
            return live.stop or Interrupt()
        except TimeoutError as exc:
            if timeout.expired():
                limit = self._settings.run_timeout
                return Failed(
                    RunDeadlineExceeded(
                        f"the run took longer than the server's limit of {limit:g} s (FACILITAIR_RUN_TIMEOUT)"
                    )
                )
            return Failed(exc)
        except Exception as exc:  # noqa: BLE001 - whatever the pipeline raises, the run still ends exactly once
            return Failed(exc)

    def _record(self, rec: RunRecorder, ending: Ending) -> None:
        if isinstance(ending, Completed):
            rec.completed(ending.outcome, time.time() - rec.created_at)
        elif isinstance(ending, Cancel):
            rec.cancelled(ending.reason)
        elif isinstance(ending, Interrupt):
            rec.interrupted()
        elif isinstance(ending, Failed):
            self.fail(rec, ending.error)

    def fail(self, rec: RunRecorder, error: BaseException) -> None:
        """Record a run_failed for `error`; an unexpected error is logged with its traceback, never sent."""
        if isinstance(error, FacilitairError):
            message, reason, retryable = error.public_message, error.reason.value, error.retryable
        else:
            log.error("run_crashed", exc_info=error)
            message, reason, retryable = "internal error; the server log has the details", "INTERNAL", False
        rec.failed(self._status_number(error), reason, message, retryable=retryable)
