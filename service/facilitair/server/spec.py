"""A run's validated request (stored with the run), stage checkpoints, and the plan's estimates."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from facilitair.server.domain import AgentRole, ModelRef, chain_text, parse_chain
from facilitair.server.pricing import PriceTable
from facilitair.server.recorder import stage_agent
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
    models: dict[AgentRole, list[ModelRef]]  # per agent: the model, then its fallbacks in order
    max_refinements: int
    on_disconnect: int
    client_request_id: str = ""
    budget_usd: float | None = None
    budget_tokens: int | None = None

    def to_json(self) -> str:
        """Serialize for the run row."""
        return json.dumps(
            {
                "task": self.task,
                "context": self.context,
                "max_refinements": self.max_refinements,
                "models": {r.label: chain_text(m) for r, m in self.models.items()},
                "on_disconnect": self.on_disconnect,
                "client_request_id": self.client_request_id,
                "budget_usd": self.budget_usd,
                "budget_tokens": self.budget_tokens,
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
                AgentRole.from_label(k, field="models"): parse_chain(v, field="models")
                for k, v in data["models"].items()
            },
            on_disconnect=data["on_disconnect"],
            client_request_id=data["client_request_id"],
            budget_usd=data.get("budget_usd"),
            budget_tokens=data.get("budget_tokens"),
        )

    def all_models(self) -> set[ModelRef]:
        """Every model the run may ask, fallbacks included."""
        return {m for chain in self.models.values() for m in chain}


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
        model = spec.models[role][0]
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
            u = prices.usage(spec.models[role][0], _EXPECTED_INPUT[role], _EXPECTED_OUTPUT[role])
            if u.cost_unknown:
                return plan
            extra += u.cost_usd
        plan.max_estimated_cost_usd = total_cost + extra * spec.max_refinements
    return plan


def estimated_tokens(spec: RunSpec) -> int:
    """Input plus output tokens the plan expects (no refinement), for the token budget check."""
    return sum(_EXPECTED_INPUT[r] + _EXPECTED_OUTPUT[r] for r in PLANNED_ROLES)
