"""Prices per model, in USD per million tokens, and cost arithmetic.

The built-in table holds the vendors' published list prices for the models we document (as of
November 2025). The pipeline config's `[prices]` table overrides or extends it. A model with no
price reports its usage with `cost_unknown` set instead of a made-up number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from facilitair.server.domain import ModelRef, UsageTotals


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float


BUILTIN_PRICES: Mapping[str, Price] = {
    "openai:gpt-4.1": Price(2.00, 8.00),
    "openai:gpt-4.1-mini": Price(0.40, 1.60),
    "openai:gpt-4.1-nano": Price(0.10, 0.40),
    "openai:gpt-4o": Price(2.50, 10.00),
    "openai:gpt-4o-mini": Price(0.15, 0.60),
    "anthropic:claude-sonnet-4-5": Price(3.00, 15.00),
    "anthropic:claude-haiku-4-5": Price(1.00, 5.00),
    "anthropic:claude-opus-4-5": Price(5.00, 25.00),
    "anthropic:claude-opus-4-1": Price(15.00, 75.00),
}


class PriceTable:
    """Looks prices up by "provider:model", overrides first."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._prices = {**BUILTIN_PRICES, **(overrides or {})}

    def get(self, model: ModelRef) -> Price | None:
        """The price of a model, or None when unknown."""
        return self._prices.get(str(model))

    def usage(self, model: ModelRef, input_tokens: int, output_tokens: int) -> UsageTotals:
        """Usage with its cost; cost_unknown when the model has no price."""
        price = self.get(model)
        if price is None:
            return UsageTotals(input_tokens, output_tokens, 0.0, cost_unknown=True)
        cost = (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1_000_000
        return UsageTotals(input_tokens, output_tokens, cost)
