"""The plan announced when a run starts: its stages with rough time, token and cost estimates.

Estimates, not promises (the docs say so: docs/models.md). Each stage's output is its agent's typical length, capped by
the agent's `max_tokens` in the pipeline file; its input is its prompt plus the earlier outputs it reads;
its time is a first-token wait plus the output at the provider's usual speed. Where completed stages of the
same model are known (plan_history.py), they win over the table: the model and agent's usual time and
length, or the model's own speed; the plan says how many stages it learned from.

For a new run this is the first of a request's two steps (docs/architecture.md): `plan_run` turns its spec into a
PlannedRun, counted and priced once, which the run service then admits and starts without asking again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import structlog

from facilitair.server.domain import AgentRole, ModelRef, Plan, PlannedStage
from facilitair.server.pipeline import prompts
from facilitair.server.pipeline.plan_history import RUNS_READ, StageHistory
from facilitair.server.pipeline.spec import RunSpec
from facilitair.server.pipeline.tokens import estimate_tokens
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.pricing import PriceTable
from facilitair.server.store.base import EventStore, StoreUnavailable

log = structlog.get_logger(__name__)

PLANNED_ROLES = (AgentRole.ARCHITECT, AgentRole.CODER, AgentRole.REVIEWER, AgentRole.TESTER, AgentRole.DOCUMENTER)
# Typical output tokens per agent, from runs of the default prompts on vendor models.
TYPICAL_OUTPUT = {
    AgentRole.ARCHITECT: 900,
    AgentRole.CODER: 1800,
    AgentRole.REVIEWER: 500,
    AgentRole.REFINER: 1800,
    AgentRole.TESTER: 1500,
    AgentRole.DOCUMENTER: 900,
}
# What each agent's prompt carries of earlier stages' output.
READS = {
    AgentRole.ARCHITECT: (),
    AgentRole.CODER: (AgentRole.ARCHITECT,),
    AgentRole.REVIEWER: (AgentRole.ARCHITECT, AgentRole.CODER),
    AgentRole.REFINER: (AgentRole.ARCHITECT, AgentRole.CODER, AgentRole.REVIEWER),
    AgentRole.TESTER: (AgentRole.ARCHITECT, AgentRole.CODER),
    AgentRole.DOCUMENTER: (AgentRole.ARCHITECT, AgentRole.CODER, AgentRole.TESTER),
}
# Usual streaming speed (output tokens/s) and wait for the first token, by provider; a local model on a
# CPU is far slower than a vendor's.
SPEED = {"openai": (80.0, 1.5), "anthropic": (60.0, 2.0), "local": (15.0, 2.0)}
DEFAULT_SPEED = (50.0, 3.0)
# A Test run step: the sandbox's start (about 0.2 s here) and a small generated test suite.
TEST_RUN_SECONDS = 2.0
# How often the history is read again from the store, for the runs other replicas finished (this one's own
# stages are learnt as they complete).
HISTORY_RELOAD_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """A request as the run service admits and starts it: its validated spec and its plan, each made once."""

    spec: RunSpec
    plan: Plan
    # Input plus output tokens of the planned stages (no refinement): what the token budget is checked against.
    tokens: int


class PlanEstimator:
    """Estimates the stages of a run from its request and the pipeline file."""

    def __init__(
        self,
        prices: PriceTable,
        config: PipelineConfig,
        history: StageHistory | None = None,
        store: EventStore | None = None,
    ) -> None:
        self._prices = prices
        self._config = config
        self.history = history if history is not None else StageHistory()
        # Where the stages of runs finished by any replica are read from (None: only what `history` is told).
        self._store = store
        self._history_due = 0.0  # time.monotonic() when the history is next read from the store
        # Each agent's system prompt is fixed by the pipeline file: counted once, not once per run and stage.
        self._system_tokens = {
            role: estimate_tokens(prompts.system_prompt(role, config.agent(role).system_prompt)) for role in AgentRole
        }

    async def plan_run(self, spec: RunSpec) -> PlannedRun:
        """A new run's plan (the first of the two steps of a request; the run service admits and starts it)."""
        await self._learn()
        return self.estimate(spec)

    async def _learn(self) -> None:
        """Read the stages of recently finished runs into the history: at the first run, then now and then."""
        now = time.monotonic()
        if self._store is None or now < self._history_due:
            return
        self._history_due = now + HISTORY_RELOAD_SECONDS
        try:
            stored = await self._store.recent_checkpoints(RUNS_READ)
            self.history.load(c.data for c in stored)
        except StoreUnavailable:
            self._history_due = 0.0  # the plan uses what is known; storing the run meets the outage itself
        except Exception:
            # Estimates are not worth a refused run: the plan goes on with what it knows.
            log.warning("plan_history_unreadable", exc_info=True)

    def output_tokens(self, role: AgentRole, model: ModelRef | None = None) -> int:
        """The output a stage of `role` is expected to produce: the model's usual for it, else typical; at most
        its max_tokens."""
        learned = self.history.of(str(model), role) if model is not None else None
        usual = round(learned[1]) if learned is not None else TYPICAL_OUTPUT[role]
        return min(usual, self._config.agent(role).max_tokens)

    def asked_tokens(self, spec: RunSpec) -> int:
        """The task's and the context's tokens, which every stage's prompt carries (counted once per plan: a task
        and a context at their size limits take milliseconds to count, on the event loop)."""
        asked = estimate_tokens(spec.task)
        if spec.context:
            asked += estimate_tokens(json.dumps(spec.context))
        return asked

    def input_tokens(self, spec: RunSpec, role: AgentRole, asked: int | None = None) -> int:
        """The prompt of a stage of `role`: its system prompt, the task and context (`asked`, when already
        counted), earlier outputs."""
        asked = self.asked_tokens(spec) if asked is None else asked
        return self._system_tokens[role] + asked + sum(self.output_tokens(r, spec.models[r][0]) for r in READS[role])

    def tokens(self, spec: RunSpec) -> int:
        """Input plus output tokens of the planned stages (no refinement), for the token budget check."""
        return self.estimate(spec).tokens

    def plan(self, spec: RunSpec) -> Plan:
        """The planned stages with their estimates; costs None where a model has no known price."""
        return self.estimate(spec).plan

    def estimate(self, spec: RunSpec) -> PlannedRun:
        """The run's plan and planned tokens, in one pass: the task and context counted once, each agent's stage
        priced once (the Reviewer's stage serves the plan and the worst case of refinement alike)."""
        asked = self.asked_tokens(spec)
        stages: dict[AgentRole, PlannedStage] = {}
        tokens = 0
        for role in AgentRole:  # PLANNED_ROLES and the Refiner
            output = self.output_tokens(role, spec.models[role][0])
            input_ = self.input_tokens(spec, role, asked)
            stages[role] = self._stage(spec, role, input_, output)
            if role in PLANNED_ROLES:
                tokens += input_ + output
        planned = [stages[role] for role in PLANNED_ROLES]
        if spec.sandbox:
            # With tests run, the Tester writes them before the review and the Test run step runs them.
            tester = planned.pop(PLANNED_ROLES.index(AgentRole.TESTER))
            test_run = PlannedStage(tester.role, tester.model, TEST_RUN_SECONDS, 0.0, test_run_in=spec.sandbox)
            planned[2:2] = [tester, test_run]
        total: float | None = None
        if all(s.estimated_cost_usd is not None for s in planned):
            total = sum(s.estimated_cost_usd or 0.0 for s in planned)
        worst: float | None = None
        if total is not None:
            extra = [stages[r].estimated_cost_usd for r in (AgentRole.REFINER, AgentRole.REVIEWER)]
            if all(e is not None for e in extra):
                worst = total + sum(e or 0.0 for e in extra) * spec.max_refinements
        plan = Plan(
            stages=planned,
            max_refinements=spec.max_refinements,
            estimated_seconds=sum(s.estimated_seconds for s in planned),
            estimated_cost_usd=total,
            max_estimated_cost_usd=worst,
            history_stages=self.history.count({str(s.model) for s in planned}),
        )
        return PlannedRun(spec, plan, tokens)

    def _stage(self, spec: RunSpec, role: AgentRole, input_tokens: int, output: int) -> PlannedStage:
        model = spec.models[role][0]
        usage = self._prices.usage(model, input_tokens, output)
        return PlannedStage(
            role=role,
            model=model,
            estimated_seconds=self._seconds(model, role, output),
            estimated_cost_usd=None if usage.cost_unknown else usage.cost_usd,
        )

    def _seconds(self, model: ModelRef, role: AgentRole, output: int) -> float:
        """The model's usual time for the agent; else the output at the model's learned speed; else the table."""
        learned = self.history.of(str(model), role)
        if learned is not None:
            return learned[0]
        speed = self.history.speed(str(model))
        if speed is not None:
            return output / speed
        speed, first_token = SPEED.get(model.provider, DEFAULT_SPEED)
        return first_token + output / speed
