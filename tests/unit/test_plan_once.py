"""A request's first step (pipeline/plan.py, issue 20 item 12): its plan and token count made in one pass.

The run service admits a run on the plan's cost and on its tokens; both come from one PlannedRun, so the task and
context (up to 20,000 characters and 64 KiB, milliseconds to count) are counted once and each agent's stage is
priced once, where the plan and the token check used to count them twice and price the Reviewer twice.
"""

from __future__ import annotations

import pytest

from facilitair.server.domain import AgentRole, ModelRef, UsageTotals
from facilitair.server.pipeline.plan import PLANNED_ROLES, PlanEstimator
from facilitair.server.pipeline.spec import RunSpec
from facilitair.server.pipeline_file import PipelineConfig
from facilitair.server.pricing import Price, PriceTable

PRICED = ModelRef("openai", "priced")


class CountingPrices(PriceTable):
    """A price table that counts the stages it prices."""

    def __init__(self) -> None:
        super().__init__({str(PRICED): Price(1.0, 4.0)})
        self.priced: list[ModelRef] = []

    def usage(self, model: ModelRef, input_tokens: int, output_tokens: int, **cache: int) -> UsageTotals:
        self.priced.append(model)
        return super().usage(model, input_tokens, output_tokens, **cache)


@pytest.fixture
def spec() -> RunSpec:
    context = {"files": {"a.py": "x = 1\n" * 400}}
    return RunSpec("reverse a string " * 500, context, {r: [PRICED] for r in AgentRole}, 2, 1)


async def test_a_run_is_planned_counted_and_priced_once(spec: RunSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    prices = CountingPrices()
    est = PlanEstimator(prices, PipelineConfig())
    counted: list[RunSpec] = []
    asked = est.asked_tokens

    def counting(s: RunSpec) -> int:
        counted.append(s)
        return asked(s)

    monkeypatch.setattr(est, "asked_tokens", counting)

    planned = await est.plan_run(spec)

    assert counted == [spec]  # the task and context: once
    assert len(prices.priced) == len(AgentRole)  # each agent's stage: once (the five planned, and the Refiner)
    assert planned.spec is spec
    assert [s.role for s in planned.plan.stages] == list(PLANNED_ROLES)
    # The same figures the separate questions give.
    fresh = PlanEstimator(PriceTable({str(PRICED): Price(1.0, 4.0)}), PipelineConfig())
    assert planned.tokens == sum(fresh.input_tokens(spec, r) + fresh.output_tokens(r) for r in PLANNED_ROLES)
    assert planned.plan.max_estimated_cost_usd is not None
    assert planned.plan.max_estimated_cost_usd > (planned.plan.estimated_cost_usd or 0.0)
