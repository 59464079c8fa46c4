"""The agent team: Architect -> Coder -> Reviewer -> (Refiner -> Reviewer)* -> Tester -> Documenter.

When the server runs tests (--sandbox, recorded in the run's spec so a resumed run keeps its order), the
Tester writes its tests first and a Test run step (testrun.py) runs them before each review:
Architect -> Coder -> Tester -> Test run -> Reviewer -> (Refiner -> Test run -> Reviewer)* -> Documenter,
where a round runs while the review rejects or the tests fail, within the refinement rounds.

The pipeline speaks to providers only through the Provider interface and reports only through the
RunRecorder. Every completed stage is checkpointed, and the checkpoint is committed before the next
stage begins; given the same checkpoints the control flow is the same, so a resumed run replays
completed stages from them and never asks a provider twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from facilitair.server import metrics
from facilitair.server.domain import (
    AgentRole,
    ArtifactKind,
    ModelRef,
    RunOutcome,
    TestReport,
    TestRun,
    UsageTotals,
    Verdict,
)
from facilitair.server.events.recorder import RunRecorder
from facilitair.server.pipeline import prompts, testrun
from facilitair.server.pipeline.attempts import StageRunner, error_type
from facilitair.server.pipeline.context import StageRequests
from facilitair.server.pipeline.files import FileSet
from facilitair.server.pipeline.parsing import ParsedFile, parse_files, parse_verdict, verdict_as_text
from facilitair.server.pipeline.plan_history import StageHistory
from facilitair.server.pipeline.spec import RunSpec, StageOutput, UnreadableRecord
from facilitair.server.pipeline.tokens import estimate_tokens
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.pricing import PriceTable
from facilitair.server.providers import KnowsContextWindows
from facilitair.server.sandbox import Sandbox

# Reads a stage's output text and reports what it found (files, a verdict) through the recorder, or not
# when the stage is replayed from its checkpoint (its events are in the log already).
_Derive = Callable[[str, int, bool], None]


class Pipeline:
    """Runs the team for one run."""

    def __init__(
        self,
        spec: RunSpec,
        recorder: RunRecorder,
        prices: PriceTable,
        config: PipelineConfig,
        *,
        runner: StageRunner,
        checkpoints: dict[int, StageOutput] | None = None,
        interrupted_stage: int = 0,
        history: StageHistory | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.spec = spec
        self.rec = recorder
        self.prices = prices
        self.config = config
        self.checkpoints = checkpoints or {}
        self.interrupted_stage = interrupted_stage
        self.runner = runner
        self.history = history  # learns each completed stage's time and length, for the plans of later runs
        self.sandbox = sandbox
        self.files = FileSet()
        self.verdict = Verdict(approved=False, summary="")
        self._stage_count = 0

    def _inputs(
        self, design: str = "", review: str = "", tests: bool = False, results: TestRun | None = None
    ) -> prompts.StageInputs:
        return prompts.StageInputs(
            task=self.spec.task,
            context=self.spec.context,
            design=design,
            code=self.files.render(ArtifactKind.CODE),
            review=review,
            tests=self.files.render(ArtifactKind.TEST) if tests else "",
            test_results=testrun.as_prompt(results.report) if results is not None else "",
        )

    async def run(self) -> RunOutcome:
        """Run every stage and return the final result (the caller emits the terminal event)."""
        if self.spec.sandbox:
            return await self._run_with_tests()
        design = await self._stage(AgentRole.ARCHITECT, 0, self._inputs(), self._files_of(ArtifactKind.DESIGN))
        await self._stage(AgentRole.CODER, 0, self._inputs(design), self._files_of(ArtifactKind.CODE))
        rounds = 0
        await self._stage(AgentRole.REVIEWER, rounds, self._inputs(design), self._verdict_of(rounds))
        while not self.verdict.approved and rounds < self.spec.max_refinements:
            rounds += 1
            review = verdict_as_text(self.verdict)
            await self._stage(
                AgentRole.REFINER, rounds, self._inputs(design, review), self._files_of(ArtifactKind.CODE)
            )
            await self._stage(AgentRole.REVIEWER, rounds, self._inputs(design), self._verdict_of(rounds))
        await self._stage(AgentRole.TESTER, rounds, self._inputs(design), self._files_of(ArtifactKind.TEST))
        await self._stage(
            AgentRole.DOCUMENTER, rounds, self._inputs(design, tests=True), self._files_of(ArtifactKind.DOC)
        )
        return RunOutcome(self.files.final(), self.verdict.approved, rounds)

    async def _run_with_tests(self) -> RunOutcome:
        """The team with a Test run before each review; failing tests make a refinement round as a rejection does."""
        design = await self._stage(AgentRole.ARCHITECT, 0, self._inputs(), self._files_of(ArtifactKind.DESIGN))
        await self._stage(AgentRole.CODER, 0, self._inputs(design), self._files_of(ArtifactKind.CODE))
        await self._stage(AgentRole.TESTER, 0, self._inputs(design), self._files_of(ArtifactKind.TEST))
        rounds = 0
        tests = await self._test_run(rounds)
        await self._stage(AgentRole.REVIEWER, rounds, self._inputs(design, results=tests), self._verdict_of(rounds))
        while (not self.verdict.approved or _failing(tests.report)) and rounds < self.spec.max_refinements:
            rounds += 1
            review = verdict_as_text(self.verdict)
            inputs = self._inputs(design, review, results=tests)
            await self._stage(AgentRole.REFINER, rounds, inputs, self._files_of(ArtifactKind.CODE))
            tests = await self._test_run(rounds)
            inputs = self._inputs(design, results=tests)
            await self._stage(AgentRole.REVIEWER, rounds, inputs, self._verdict_of(rounds))
        await self._stage(
            AgentRole.DOCUMENTER, rounds, self._inputs(design, tests=True), self._files_of(ArtifactKind.DOC)
        )
        return RunOutcome(self.files.final(), self.verdict.approved, rounds, tests)

    async def _test_run(self, rounds: int) -> TestRun:
        """The Test run step: run the tests against the latest files, or replay its results from its checkpoint."""
        self._stage_count += 1
        stage = self._stage_count
        saved = self.checkpoints.get(stage)
        if saved is not None:
            try:
                return TestRun(stage, rounds, testrun.from_json(saved.text))
            except ValueError as exc:
                raise UnreadableRecord(f"a stored test run checkpoint cannot be read ({exc})") from None
        await self.rec.durable()  # as for a stage: nothing runs before what came before it is committed
        structlog.contextvars.bind_contextvars(stage=stage, agent="test_run")
        files = self.files.final()
        where = self.sandbox.availability.detail if self.sandbox is not None else "none"
        self.rec.tests_started(stage, rounds, testrun.test_files(files), where)
        if self.sandbox is None:
            report = TestReport(executed=False, not_run_reason="this server runs no tests (--sandbox off)")
        else:
            report = await testrun.run_tests(self.sandbox, files, lambda line: self.rec.tests_output(stage, line))
        run = TestRun(stage, rounds, report)
        checkpoint = StageOutput(stage, AgentRole.TESTER, rounds, "", testrun.to_json(report)).to_json()
        self.rec.tests_finished(run, checkpoint)
        return run

    def _files_of(self, kind: ArtifactKind) -> _Derive:
        """Record the files in a stage's output; events announce each one."""

        def derive(text: str, stage: int, announce: bool) -> None:
            if kind == ArtifactKind.DESIGN:
                files = [ParsedFile("DESIGN.md", text)]
            elif kind == ArtifactKind.DOC:
                files = [ParsedFile("README.md", text)]
            else:
                files = parse_files(text, fallback_stem="test_solution" if kind == ArtifactKind.TEST else "solution")
            added = self.files.add(files, kind, stage)
            if announce:
                self.rec.artifacts(added)

        return derive

    def _verdict_of(self, rounds: int) -> _Derive:
        """Read the reviewer's verdict; a malformed one is a non-approval, never a crash."""

        def derive(text: str, stage: int, announce: bool) -> None:
            self.verdict = parse_verdict(text)
            if announce:
                self.rec.verdict(stage, rounds, self.verdict)

        return derive

    def _provider_window(self, model: ModelRef) -> int | None:
        """The model's context window as its provider knows it (None: it does not say)."""
        provider = self.runner.providers.get(model.provider)
        return provider.context_window(model.model) if isinstance(provider, KnowsContextWindows) else None

    def _cut_off_usage(self) -> UsageTotals:
        """The priced usage of the current stage's attempts that were cut off."""
        total = UsageTotals()
        for spent in self.runner.cut_offs:
            usage = self.prices.usage_of(spent.model, spent)
            usage.estimated = spent.estimated
            total.add(usage)
        return total

    async def _stage(self, role: AgentRole, rounds: int, inputs: prompts.StageInputs, derive: _Derive) -> str:
        """Run one stage, or replay it from its checkpoint, and return its output text.

        The stage's own events (verdict, files) go out before stage_completed, which commits together
        with the checkpoint: a checkpointed stage has said everything, so a replay says nothing.
        """
        self._stage_count += 1
        stage = self._stage_count
        saved = self.checkpoints.get(stage)
        if saved is not None:
            derive(saved.text, stage, False)
            return saved.text
        # Nothing of this stage happens before what came before it (the stage before's completion and
        # checkpoint, or the run's start) is committed: a run whose store cannot write waits here, asking no
        # provider, and a server killed after this point has its takeover replay the stage before, not
        # ask for it again. One commit wait per stage, none per token.
        await self.rec.durable()
        structlog.contextvars.bind_contextvars(stage=stage, agent=role.label)
        self.runner.budget.check_before_stage(self.rec.usage, stage)
        chain = self.spec.models[role]
        request = StageRequests(role, inputs, self.config.agent(role), self._provider_window)
        started = time.monotonic()
        if stage == self.interrupted_stage:
            # The server stopped during this stage: its partial tokens stay in the log, voided here.
            attempt = 2
            self.rec.attempt_reset(stage, attempt, "server restarted during the stage", chain[0], 0.0)
        else:
            attempt = 1
            self.rec.stage_started(stage, role, chain[0], rounds)
        span = self.runner.trace.stage(role.label, stage)
        try:
            result = await self.runner.run(stage, chain, request, attempt, agent=role.label, span=span)
        except BaseException as exc:
            # Cancelled, failed or stopped mid-stage: what its attempts consumed still counts in the run's usage.
            self.rec.cut_off(self._cut_off_usage())
            span.end(error_type(exc))
            raise
        span.end()
        derive(result.text, stage, True)
        end = result.end
        usage = self.prices.usage_of(result.model, end)
        if not end.usage_reported:
            usage.cost_unknown = True
        usage.add(self._cut_off_usage())  # attempts that broke and were retried were paid for too
        elapsed = time.monotonic() - started
        provider = result.model.provider
        metrics.STAGE_SECONDS.labels(role.label).observe(elapsed)
        metrics.PROVIDER_TOKENS.labels(provider, "input").inc(end.input_tokens)
        metrics.PROVIDER_TOKENS.labels(provider, "output").inc(end.output_tokens)
        metrics.COST.labels(provider).inc(usage.cost_usd)
        # An endpoint that reported no usage said 0 tokens: the plan learns the text's estimate instead.
        written = end.output_tokens if end.usage_reported else estimate_tokens(result.text)
        if self.history is not None and not result.cached:  # a cache hit's time says nothing of the model's
            self.history.add(str(result.model), role, elapsed, written)
        checkpoint = StageOutput(
            stage, role, rounds, str(result.model), result.text, seconds=elapsed, output_tokens=written
        ).to_json()
        self.rec.stage_completed(
            stage,
            role=role,
            model=result.model,
            stage_usage=usage,
            finish_reason=end.finish_reason,
            truncated=end.truncated,
            seconds=elapsed,
            checkpoint=checkpoint,
        )
        return result.text


def _failing(report: TestReport) -> bool:
    """Tests that failed, errored or were stopped: a reason for a refinement round, which changes the code.

    Tests that did not run, or ran and found nothing to test (none collected, all skipped), are none: the
    Refiner cannot make them pass, and a round would be spent for nothing.
    """
    return report.executed and bool(report.failed or report.errors or report.timed_out or report.stopped)
