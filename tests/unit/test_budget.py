"""The run budget (pipeline/budget.py): when a stage may start, how much it may stream, what the errors say."""

from __future__ import annotations

import math

import pytest

from facilitair.server.domain import ModelRef, UsageTotals
from facilitair.server.errors import BudgetExceeded, Reason
from facilitair.server.pipeline.budget import Budget
from facilitair.server.pricing import Price, PriceTable

PRICED = ModelRef("openai", "priced")  # $1 per million input tokens, $4 per million output tokens
LOCAL = ModelRef("local", "default")  # free
UNPRICED = ModelRef("openai", "zz-not-a-model")  # no known price
PRICES = PriceTable({"openai:priced": Price(1.0, 4.0)})


def used(input_tokens: int = 0, output_tokens: int = 0, cost_usd: float = 0.0) -> UsageTotals:
    """What a run used before a stage."""
    return UsageTotals(input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=cost_usd)


START: list[tuple[str, float | None, int | None, UsageTotals, str | None]] = [
    ("no-budget", None, None, used(10**9, 10**9, 10**6), None),
    ("tokens-left", None, 1000, used(600, 399), None),
    (
        "tokens-spent",
        None,
        1000,
        used(600, 400),
        "the run's token budget of 1000 is spent (1000 used); stage 3 was not started. "
        "Raise max_tokens (--max-tokens for facilitair run) or FACILITAIR_BUDGET_TOKENS",
    ),
    ("cost-left", 0.05, None, used(cost_usd=0.0499), None),
    (
        "cost-spent",
        0.05,
        None,
        used(cost_usd=0.05),
        "the run's cost budget of $0.0500 is spent ($0.0500 used); stage 3 was not started. "
        "Raise max_cost_usd (--max-cost for facilitair run) or FACILITAIR_BUDGET_USD",
    ),
    (
        "both-spent-tokens-first",
        0.05,
        10,
        used(5, 6, 1.0),
        "the run's token budget of 10 is spent (11 used); stage 3 was not started. "
        "Raise max_tokens (--max-tokens for facilitair run) or FACILITAIR_BUDGET_TOKENS",
    ),
]


@pytest.mark.parametrize(("usd", "tokens", "spent", "refusal"), [r[1:] for r in START], ids=[r[0] for r in START])
def test_a_stage_starts_only_while_both_budgets_last(
    usd: float | None, tokens: int | None, spent: UsageTotals, refusal: str | None
) -> None:
    budget = Budget(usd, tokens, PRICES)
    if refusal is None:
        budget.check_before_stage(spent, 3)
        return
    with pytest.raises(BudgetExceeded) as caught:
        budget.check_before_stage(spent, 3)
    assert caught.value.public_message == refusal
    assert caught.value.reason is Reason.BUDGET_EXCEEDED


LIMITS: list[tuple[str, float | None, int | None, UsageTotals, ModelRef, int, float]] = [  # prompt chars, limit
    ("no-budget", None, None, used(), PRICED, 400, math.inf),
    # 1000 tokens - 200 used - 100 of prompt (400 characters) = 700 tokens of output, 4 characters each.
    ("tokens", None, 1000, used(100, 100), PRICED, 400, 2800),
    ("tokens-already-over", None, 100, used(100, 100), PRICED, 0, -400),
    # $1 - $0.2 used - $0.001 of prompt (1000 tokens at $1/M) = $0.799 of output at $4/M: 199,750 tokens.
    ("cost", 1.0, None, used(cost_usd=0.2), PRICED, 4000, 799_000),
    ("the-lower-of-both", 1.0, 1000, used(100, 100, 0.2), PRICED, 400, 2800),
    ("a-free-model-has-no-cost-limit", 1.0, None, used(cost_usd=0.2), LOCAL, 4000, math.inf),
    ("an-unpriced-model-has-no-cost-limit", 1.0, None, used(cost_usd=0.2), UNPRICED, 4000, math.inf),
]


@pytest.mark.parametrize("row", LIMITS, ids=[r[0] for r in LIMITS])
def test_a_stage_may_stream_up_to_what_the_budgets_leave(
    row: tuple[str, float | None, int | None, UsageTotals, ModelRef, int, float],
) -> None:
    _, usd, tokens, spent, model, prompt_chars, limit = row
    assert Budget(usd, tokens, PRICES).char_limit(spent, model, prompt_chars) == pytest.approx(limit)


CROSSED: list[tuple[str, float | None, int | None, str]] = [
    (
        "cost",
        0.5,
        None,
        "stage 4 was stopped: it would take the run past its cost budget of $0.5000 ($0.1234 used before the "
        "stage). Raise max_cost_usd / max_tokens (--max-cost / --max-tokens for facilitair run) "
        "or FACILITAIR_BUDGET_USD / FACILITAIR_BUDGET_TOKENS",
    ),
    (
        "tokens",
        None,
        100,
        "stage 4 was stopped: it would take the run past its token budget of 100 (30 used before it). "
        "Raise max_cost_usd / max_tokens (--max-cost / --max-tokens for facilitair run) "
        "or FACILITAIR_BUDGET_USD / FACILITAIR_BUDGET_TOKENS",
    ),
    (
        "both",
        0.5,
        100,
        "stage 4 was stopped: it would take the run past its cost budget of $0.5000 ($0.1234 used before the "
        "stage) and token budget of 100 (30 used before it). "
        "Raise max_cost_usd / max_tokens (--max-cost / --max-tokens for facilitair run) "
        "or FACILITAIR_BUDGET_USD / FACILITAIR_BUDGET_TOKENS",
    ),
]


@pytest.mark.parametrize(("usd", "tokens", "message"), [r[1:] for r in CROSSED], ids=[r[0] for r in CROSSED])
def test_a_stopped_stage_says_which_budget_it_would_cross(usd: float | None, tokens: int | None, message: str) -> None:
    error = Budget(usd, tokens, PRICES).crossed(4, used(10, 20, 0.1234))
    assert error.public_message == message
    assert error.reason is Reason.BUDGET_EXCEEDED
