"""The plan a run announces (pipeline/plan.py): stages, their output and input estimates, time and cost."""

from __future__ import annotations

import pytest

from facilitair.server.domain import AgentRole, ModelRef
from facilitair.server.pipeline.plan import PLANNED_ROLES, READS, PlanEstimator
from facilitair.server.pipeline.spec import RunSpec, StageOutput
from facilitair.server.pipeline.tokens import estimate_tokens
from facilitair.server.pipeline_file import AgentConfig, PipelineConfig
from facilitair.server.pricing import Price, PriceTable

PRICED = ModelRef("openai", "priced")  # $1 per million input tokens, $4 per million output tokens
PRICES = PriceTable({"openai:priced": Price(1.0, 4.0)})
A = AgentRole


def spec(task: str = "reverse a string", model: ModelRef = PRICED, max_refinements: int = 2) -> RunSpec:
    """A run whose agents all use `model`."""
    return RunSpec(task, {}, {key: [model] for key in AgentRole}, max_refinements, 1)


def estimator(max_tokens: int | None = None) -> PlanEstimator:
    """An estimator whose agents all have `max_tokens` (the default 4096 when None)."""
    agents = {} if max_tokens is None else {r.label: AgentConfig(max_tokens=max_tokens) for r in AgentRole}
    return PlanEstimator(PRICES, PipelineConfig(agents=agents))


@pytest.mark.parametrize(
    ("role", "typical", "capped"),
    [(A.ARCHITECT, 900, 500), (A.CODER, 1800, 500), (A.REVIEWER, 500, 500), (A.REFINER, 1800, 500),
     (A.TESTER, 1500, 500), (A.DOCUMENTER, 900, 500)],
    ids=[r.label for r in AgentRole],
)  # fmt: skip
def test_a_stage_outputs_its_agents_typical_length_at_most_its_max_tokens(
    role: AgentRole, typical: int, capped: int
) -> None:
    assert estimator().output_tokens(role) == typical
    assert estimator(max_tokens=500).output_tokens(role) == capped


@pytest.mark.parametrize(
    ("role", "earlier"),
    [(A.ARCHITECT, 0), (A.CODER, 900), (A.REVIEWER, 2700), (A.REFINER, 3200), (A.TESTER, 2700), (A.DOCUMENTER, 4200)],
    ids=[r.label for r in AgentRole],
)
def test_a_stages_input_is_its_prompt_the_task_and_the_earlier_outputs_it_reads(role: AgentRole, earlier: int) -> None:
    # With every output capped at 16 tokens, the earlier outputs weigh 16 each: the difference is theirs.
    full, capped = estimator().input_tokens(spec(), role), estimator(max_tokens=16).input_tokens(spec(), role)
    assert full - capped == earlier - 16 * len(READS[role])
    # 400 more characters of task are 100 more tokens; a context counts as its JSON.
    assert estimator().input_tokens(spec(task="reverse a string" + "x" * 400), role) == full + 100
    with_context = RunSpec("reverse a string", {"k": "v" * 391}, spec().models, 2, 1)  # {"k": "vv..."}: 400 chars
    assert estimator().input_tokens(with_context, role) == full + 100



def test_the_plan_estimates_a_prompt_as_the_context_fitting_and_the_usage_do() -> None:
    # One estimator (pipeline/tokens.py, issue 20 item 8): code takes more tokens than prose of the same length,
    # in the plan as in the window fitting and in the usage of a cut-off attempt.
    code = "".join(f"def f{n}(x: int) -> int:\n    return x + {n}\n" for n in range(40))
    prose = ("The parser reads the input and hands each part to the checker. " * 40)[: len(code)]
    est = estimator()
    grown = est.input_tokens(spec(task=code), A.ARCHITECT) - est.input_tokens(spec(task=prose), A.ARCHITECT)
    assert grown == estimate_tokens(code) - estimate_tokens(prose) > len(code) // 10

def test_the_plan_lists_the_five_stages_with_time_and_cost() -> None:
    est = estimator()
    plan = est.plan(spec(max_refinements=2))
    assert [s.role for s in plan.stages] == list(PLANNED_ROLES)
    assert [s.model for s in plan.stages] == [PRICED] * 5
    # openai's usual speed: 1.5 s to the first token, then 80 tokens/s.
    assert [s.estimated_seconds for s in plan.stages] == [12.75, 24.0, 7.75, 20.25, 12.75]
    assert plan.estimated_seconds == 77.5

    def cost(role: AgentRole) -> float:
        return (est.input_tokens(spec(), role) * 1.0 + est.output_tokens(role) * 4.0) / 1e6

    assert [s.estimated_cost_usd for s in plan.stages] == pytest.approx([cost(r) for r in PLANNED_ROLES])
    assert plan.estimated_cost_usd == pytest.approx(sum(cost(r) for r in PLANNED_ROLES))
    # The worst case adds a Refiner and a Reviewer for each round.
    assert plan.max_estimated_cost_usd == pytest.approx(
        sum(cost(r) for r in PLANNED_ROLES) + 2 * (cost(A.REFINER) + cost(A.REVIEWER))
    )
    assert est.tokens(spec()) == sum(est.input_tokens(spec(), r) + est.output_tokens(r) for r in PLANNED_ROLES)
    assert est.tokens(spec(task="reverse a string" + "x" * 400)) == est.tokens(spec()) + 5 * 100


@pytest.mark.parametrize(
    ("model", "seconds", "total", "worst"),
    [
        (ModelRef("local", "default"), 2.0 * 5 + (900 + 1800 + 500 + 1500 + 900) / 15.0, 0.0, 0.0),
        (ModelRef("openai", "zz-not-a-model"), 77.5, None, None),
    ],
    ids=["local-is-free-and-slow", "unknown-price"],
)
def test_a_free_or_unpriced_model_plans_its_cost_as_such(
    model: ModelRef, seconds: float, total: float | None, worst: float | None
) -> None:
    plan = estimator().plan(spec(model=model))
    assert plan.estimated_seconds == pytest.approx(seconds)
    assert (plan.estimated_cost_usd, plan.max_estimated_cost_usd) == (total, worst)
    assert {s.estimated_cost_usd for s in plan.stages} == {total}


def test_learned_stages_replace_the_table_for_their_model_only() -> None:
    est = estimator(max_tokens=500)
    local = ModelRef("local", "default")
    est.history.add(str(local), A.CODER, 30.0, 300)
    est.history.add(str(local), A.CODER, 50.0, 700)  # capped at max_tokens 500 below
    est.history.add(str(local), A.ARCHITECT, 20.0, 200)
    # The Coder: its own mean time; the Reviewer: the model's speed (1200 tokens in 100 s) on the table's length.
    assert est.output_tokens(A.CODER, local) == 500
    plan = est.plan(spec(model=local))
    seconds = {s.role: s.estimated_seconds for s in plan.stages}
    assert seconds[A.CODER] == pytest.approx(40.0)
    assert seconds[A.ARCHITECT] == pytest.approx(20.0)
    assert seconds[A.REVIEWER] == pytest.approx(500 / 12.0)
    assert plan.history_stages == 3
    # Another model still plans from the table, and says so.
    table = est.plan(spec())
    assert table.history_stages == 0
    assert table.estimated_seconds == estimator(max_tokens=500).plan(spec()).estimated_seconds


def test_the_history_reads_only_checkpoints_that_kept_their_time() -> None:
    kept = StageOutput(1, A.ARCHITECT, 0, "local:default", "# Design", seconds=12.5, output_tokens=250).to_json()
    old = StageOutput(2, A.CODER, 0, "local:default", "code").to_json()
    est = estimator()
    est.history.load([kept, old, "not json", '{"version": 99}'])
    assert est.history.of("local:default", A.ARCHITECT) == (12.5, 250.0)
    assert est.history.of("local:default", A.CODER) is None
    assert est.history.count(["local:default"]) == 1
