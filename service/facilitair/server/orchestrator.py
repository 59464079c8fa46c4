"""The agent team: Architect -> Coder -> Reviewer -> (Refiner -> Reviewer)* -> Tester -> Documenter.

The pipeline speaks to providers only through the Provider interface and reports only through the
RunRecorder. Every completed stage is checkpointed; given the same checkpoints the control flow is
the same, so a resumed run replays completed stages from them and never asks a provider twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from facilitair.server import prompts
from facilitair.server.domain import AgentRole, ModelRef
from facilitair.server.errors import ProviderError
from facilitair.server.parsing import ParsedFile, Verdict, parse_files, parse_verdict, verdict_as_text
from facilitair.server.pricing import PriceTable
from facilitair.server.providers import CompletionRequest, ProviderRegistry, StreamEnd
from facilitair.server.recorder import RunRecorder, stage_agent, usage_pb
from facilitair.server.settings import PipelineConfig
from facilitair.v1 import orchestrator_pb2 as pb

PLANNED_ROLES = (AgentRole.ARCHITECT, AgentRole.CODER, AgentRole.REVIEWER, AgentRole.TESTER, AgentRole.DOCUMENTER)
# Rough sizes for the plan's estimate: typical output tokens per agent and a typical stream rate.
_EXPECTED_OUTPUT = {
    AgentRole.ARCHITECT: 900,
    AgentRole.CODER: 1800,
    AgentRole.REVIEWER: 500,
    AgentRole.REFINER: 1800,
    AgentRole.TESTER: 1500,
    AgentRole.DOCUMENTER: 900,
}
_EXPECTED_INPUT = {
    AgentRole.ARCHITECT: 500,
    AgentRole.CODER: 1500,
    AgentRole.REVIEWER: 3000,
    AgentRole.REFINER: 3500,
    AgentRole.TESTER: 3000,
    AgentRole.DOCUMENTER: 4500,
}
_FIRST_TOKEN_SECONDS = 3.0
_TOKENS_PER_SECOND = 50.0


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A validated request, as stored with the run so that it can be resumed."""

    task: str
    context: dict[str, Any]
    models: dict[AgentRole, ModelRef]
    max_refinements: int
    on_disconnect: int
    client_request_id: str = ""

    def to_json(self) -> str:
        """Serialize for the run row."""
        return json.dumps(
            {
                "task": self.task,
                "context": self.context,
                "max_refinements": self.max_refinements,
                "models": {r.label: str(m) for r, m in self.models.items()},
                "on_disconnect": self.on_disconnect,
                "client_request_id": self.client_request_id,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        """Read back what to_json wrote."""
        data = json.loads(text)
        return cls(
            task=data["task"],
            context=data["context"],
            max_refinements=data["max_refinements"],
            models={
                AgentRole.from_label(k, field="models"): ModelRef.parse(v, field="models")
                for k, v in data["models"].items()
            },
            on_disconnect=data["on_disconnect"],
            client_request_id=data["client_request_id"],
        )


@dataclass(slots=True)
class StageOutput:
    """What a completed stage produced; this is its checkpoint."""

    stage: int
    role: AgentRole
    round: int
    model: str
    text: str

    def to_json(self) -> str:
        """Serialize for the checkpoint table."""
        return json.dumps(
            {"stage": self.stage, "agent": self.role.label, "round": self.round, "model": self.model, "text": self.text}
        )

    @classmethod
    def from_json(cls, text: str) -> StageOutput:
        """Read back what to_json wrote."""
        d = json.loads(text)
        return cls(d["stage"], AgentRole.from_label(d["agent"], field="agent"), d["round"], d["model"], d["text"])


def build_plan(spec: RunSpec, prices: PriceTable) -> pb.Plan:
    """The expected stages with rough time and cost estimates (documented as such in the README)."""
    plan = pb.Plan(max_refinements=spec.max_refinements)
    total_cost: float | None = 0.0
    for role in PLANNED_ROLES:
        model = spec.models[role]
        usage = prices.usage(model, _EXPECTED_INPUT[role], _EXPECTED_OUTPUT[role])
        stage = plan.stages.add(
            agent=stage_agent(role),
            model=str(model),
            estimated_seconds=_FIRST_TOKEN_SECONDS + _EXPECTED_OUTPUT[role] / _TOKENS_PER_SECOND,
        )
        if not usage.cost_unknown:
            stage.estimated_cost_usd = usage.cost_usd
        total_cost = None if total_cost is None or usage.cost_unknown else total_cost + usage.cost_usd
        plan.estimated_seconds += stage.estimated_seconds
    if total_cost is not None:
        plan.estimated_cost_usd = total_cost
        extra = 0.0
        for role in (AgentRole.REFINER, AgentRole.REVIEWER):
            u = prices.usage(spec.models[role], _EXPECTED_INPUT[role], _EXPECTED_OUTPUT[role])
            if u.cost_unknown:
                return plan
            extra += u.cost_usd
        plan.max_estimated_cost_usd = total_cost + extra * spec.max_refinements
    return plan


_Derive = Callable[[str, int], list[pb.RunEvent]]


@dataclass(slots=True)
class _Files:
    """The current files by path, last writer wins."""

    by_path: dict[str, pb.Artifact] = field(default_factory=dict)

    def add(self, files: list[ParsedFile], kind: pb.ArtifactKind.ValueType, stage: int) -> list[pb.Artifact]:
        added = []
        for f in files:
            artifact = pb.Artifact(path=f.path, kind=kind, content=f.content, stage=stage)
            self.by_path[f.path] = artifact
            added.append(artifact)
        return added

    def render(self, kind: pb.ArtifactKind.ValueType) -> str:
        blocks = []
        for a in self.by_path.values():
            if a.kind == kind:
                body = a.content if a.content.endswith("\n") else a.content + "\n"
                blocks.append(f"File: {a.path}\n````\n{body}````")
        return "\n\n".join(blocks)


class Pipeline:
    """Runs the team for one run."""

    def __init__(
        self,
        spec: RunSpec,
        recorder: RunRecorder,
        providers: ProviderRegistry,
        prices: PriceTable,
        config: PipelineConfig,
        *,
        checkpoints: dict[int, StageOutput] | None = None,
        interrupted_stage: int = 0,
        stage_attempts: int = 3,
    ) -> None:
        self.spec = spec
        self.rec = recorder
        self.providers = providers
        self.prices = prices
        self.config = config
        self.checkpoints = checkpoints or {}
        self.interrupted_stage = interrupted_stage
        self.stage_attempts = stage_attempts
        self.files = _Files()
        self.verdict = Verdict(approved=False, summary="")
        self._stage_count = 0

    def _inputs(self, design: str = "", review: str = "", tests: bool = False) -> prompts.StageInputs:
        return prompts.StageInputs(
            task=self.spec.task,
            context=self.spec.context,
            design=design,
            code=self.files.render(pb.ARTIFACT_KIND_CODE),
            review=review,
            tests=self.files.render(pb.ARTIFACT_KIND_TEST) if tests else "",
        )

    async def run(self) -> pb.RunResult:
        """Run every stage and return the final result (the caller emits the terminal event)."""
        design = await self._stage(AgentRole.ARCHITECT, 0, self._inputs(), self._files_of(pb.ARTIFACT_KIND_DESIGN))
        await self._stage(AgentRole.CODER, 0, self._inputs(design), self._files_of(pb.ARTIFACT_KIND_CODE))
        rounds = 0
        await self._stage(AgentRole.REVIEWER, rounds, self._inputs(design), self._verdict_of(rounds))
        while not self.verdict.approved and rounds < self.spec.max_refinements:
            rounds += 1
            review = verdict_as_text(self.verdict)
            await self._stage(
                AgentRole.REFINER, rounds, self._inputs(design, review), self._files_of(pb.ARTIFACT_KIND_CODE)
            )
            await self._stage(AgentRole.REVIEWER, rounds, self._inputs(design), self._verdict_of(rounds))
        await self._stage(AgentRole.TESTER, rounds, self._inputs(design), self._files_of(pb.ARTIFACT_KIND_TEST))
        await self._stage(
            AgentRole.DOCUMENTER, rounds, self._inputs(design, tests=True), self._files_of(pb.ARTIFACT_KIND_DOC)
        )
        return pb.RunResult(
            artifacts=list(self.files.by_path.values()), approved=self.verdict.approved, refinements=rounds
        )

    def _files_of(self, kind: pb.ArtifactKind.ValueType) -> _Derive:
        """Record the files in a stage's output; events announce each one."""

        def derive(text: str, stage: int) -> list[pb.RunEvent]:
            if kind == pb.ARTIFACT_KIND_DESIGN:
                files = [ParsedFile("DESIGN.md", text)]
            elif kind == pb.ARTIFACT_KIND_DOC:
                files = [ParsedFile("README.md", text)]
            else:
                files = parse_files(
                    text, fallback_stem="test_solution" if kind == pb.ARTIFACT_KIND_TEST else "solution"
                )
            return [
                pb.RunEvent(artifact_produced=pb.ArtifactProduced(artifact=a))
                for a in self.files.add(files, kind, stage)
            ]

        return derive

    def _verdict_of(self, rounds: int) -> _Derive:
        """Read the reviewer's verdict; a malformed one is a non-approval, never a crash."""

        def derive(text: str, stage: int) -> list[pb.RunEvent]:
            v = self.verdict = parse_verdict(text)
            return [
                pb.RunEvent(
                    review_verdict=pb.ReviewVerdict(
                        stage=stage,
                        approved=v.approved,
                        summary=v.summary,
                        well_formed=v.well_formed,
                        round=rounds,
                        issues=[
                            pb.ReviewIssue(severity=i.severity, file=i.file, description=i.description)
                            for i in v.issues
                        ],
                    )
                )
            ]

        return derive

    async def _stage(self, role: AgentRole, rounds: int, inputs: prompts.StageInputs, derive: _Derive) -> str:
        """Run one stage, or replay it from its checkpoint, and return its output text.

        The stage's own events (verdict, files) go out before stage_completed, which commits together
        with the checkpoint: a checkpointed stage has said everything, so a replay says nothing.
        """
        self._stage_count += 1
        stage = self._stage_count
        saved = self.checkpoints.get(stage)
        if saved is not None:
            derive(saved.text, stage)
            return saved.text
        model = self.spec.models[role]
        provider = self.providers.get(model.provider)
        agent_cfg = self.config.agent(role)
        request = CompletionRequest(
            model=model.model,
            system=prompts.SYSTEM[role],
            prompt=prompts.user_prompt(role, inputs),
            max_tokens=agent_cfg.max_tokens,
            temperature=agent_cfg.temperature,
        )
        started = time.monotonic()
        attempt = 1
        if stage == self.interrupted_stage:
            # The server stopped during this stage: its partial tokens stay in the log, voided here.
            attempt = 2
            self.rec.emit(
                pb.RunEvent(
                    attempt_reset=pb.AttemptReset(
                        stage=stage, attempt=attempt, reason="server restarted during the stage"
                    )
                )
            )
        else:
            self.rec.stage_started(
                pb.StageStarted(stage=stage, agent=stage_agent(role), model=str(model), round=rounds, attempt=attempt)
            )
        while True:
            try:
                text, end = await self._stream(provider, request, stage)
                break
            except ProviderError as exc:
                if not exc.retryable or attempt >= self.stage_attempts:
                    raise
                attempt += 1
                self.rec.emit(
                    pb.RunEvent(attempt_reset=pb.AttemptReset(stage=stage, attempt=attempt, reason=exc.public_message))
                )
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 2), 8.0) * (0.5 + random.random()))  # noqa: S311
        for event in derive(text, stage):
            self.rec.emit(event)
        usage = self.prices.usage(model, end.input_tokens, end.output_tokens)
        if not end.usage_reported:
            usage.cost_unknown = True
        done = pb.StageCompleted(
            stage=stage,
            agent=stage_agent(role),
            model=str(model),
            usage=usage_pb(usage),
            finish_reason=end.finish_reason,
        )
        done.duration.FromNanoseconds(int((time.monotonic() - started) * 1e9))
        self.rec.stage_completed(done, usage, StageOutput(stage, role, rounds, str(model), text).to_json())
        return text

    async def _stream(self, provider: Any, request: CompletionRequest, stage: int) -> tuple[str, StreamEnd]:
        """Relay one attempt's tokens as they arrive; return the whole text and the end marker."""
        parts: list[str] = []
        end: StreamEnd | None = None
        token = self.rec.token
        self.rec.waiting(stage)
        try:
            async with contextlib.aclosing(provider.stream(request)) as stream:
                async for item in stream:
                    if type(item) is str:
                        parts.append(item)
                        token(stage, item)
                    else:
                        end = item
        finally:
            self.rec.answered()
        assert end is not None, "providers end every successful stream with StreamEnd"
        return "".join(parts), end
