"""A run's cost and token budgets: checked before each stage and while a stage streams.

Output in flight is counted in characters and estimated at CHARS_PER_TOKEN characters per token (tokens.py;
providers report usage only at the end of a stream), so a stage is stopped before it would cross a budget,
not after.
"""

from __future__ import annotations

import math

from facilitair.server.domain import ModelRef, UsageTotals
from facilitair.server.errors import BudgetExceeded
from facilitair.server.pipeline.tokens import CHARS_PER_TOKEN
from facilitair.server.pricing import PriceTable


class Budget:
    """A run's cost and token budgets, checked before each stage and while one streams."""

    def __init__(self, usd: float | None, tokens: int | None, prices: PriceTable) -> None:
        self.usd = usd
        self.tokens = tokens
        self._prices = prices

    def check_before_stage(self, used: UsageTotals, stage: int) -> None:
        """Refuse to start a stage once a budget is spent."""
        if self.tokens is not None and used.input_tokens + used.output_tokens >= self.tokens:
            raise BudgetExceeded(
                f"the run's token budget of {self.tokens} is spent ({used.input_tokens + used.output_tokens} used); "
                f"stage {stage} was not started. Raise max_tokens (--max-tokens for facilitair run) "
                "or FACILITAIR_BUDGET_TOKENS"
            )
        if self.usd is not None and used.cost_usd >= self.usd:
            raise BudgetExceeded(
                f"the run's cost budget of ${self.usd:.4f} is spent (${used.cost_usd:.4f} used); "
                f"stage {stage} was not started. Raise max_cost_usd (--max-cost for facilitair run) "
                "or FACILITAIR_BUDGET_USD"
            )

    def char_limit(self, used: UsageTotals, model: ModelRef, prompt_chars: int) -> float:
        """How many characters of output the stage may stream before it would cross a budget."""
        limit = math.inf
        input_tokens = prompt_chars // CHARS_PER_TOKEN
        if self.tokens is not None:
            left = self.tokens - used.input_tokens - used.output_tokens - input_tokens
            limit = min(limit, left * CHARS_PER_TOKEN)
        if self.usd is not None:
            per_million = self._prices.usage(model, 0, 1_000_000)
            if not per_million.cost_unknown and per_million.cost_usd > 0:
                left_usd = self.usd - used.cost_usd - self._prices.usage(model, input_tokens, 0).cost_usd
                limit = min(limit, left_usd / per_million.cost_usd * 1_000_000 * CHARS_PER_TOKEN)
        return limit

    def crossed(self, stage: int, used: UsageTotals) -> BudgetExceeded:
        """The error for a stage stopped because it would cross a budget."""
        which = []
        if self.usd is not None:
            which.append(f"cost budget of ${self.usd:.4f} (${used.cost_usd:.4f} used before the stage)")
        if self.tokens is not None:
            which.append(f"token budget of {self.tokens} ({used.input_tokens + used.output_tokens} used before it)")
        return BudgetExceeded(
            f"stage {stage} was stopped: it would take the run past its {' and '.join(which)}. "
            "Raise max_cost_usd / max_tokens (--max-cost / --max-tokens for facilitair run) "
            "or FACILITAIR_BUDGET_USD / FACILITAIR_BUDGET_TOKENS"
        )
