"""Cost of tokens per model.

Prices come from the `genai-prices` package (an offline snapshot of the vendors' price lists,
including tiered long-context prices); the pipeline config's `[prices]` table adds models it does
not know, or overrides it, at flat per-million-token prices. A model priced by neither reports its
usage with `cost_unknown` set instead of a made-up number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import genai_prices

from facilitair.server.domain import ModelRef, UsageTotals


@dataclass(frozen=True, slots=True)
class Price:
    """A flat price: USD per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float


class PriceTable:
    """Prices by "provider:model": overrides first, then genai-prices."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._overrides = dict(overrides or {})

    def usage(self, model: ModelRef, input_tokens: int, output_tokens: int) -> UsageTotals:
        """Usage with its cost; `cost_unknown` when no price is known for the model."""
        price = self._overrides.get(str(model))
        if price is not None:
            cost = (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1_000_000
            return UsageTotals(input_tokens, output_tokens, cost)
        try:
            calc = genai_prices.calc_price(
                genai_prices.Usage(input_tokens=input_tokens, output_tokens=output_tokens),
                model_ref=model.model,
                provider_id=model.provider,
            )
        except LookupError:
            return UsageTotals(input_tokens, output_tokens, 0.0, cost_unknown=True)
        return UsageTotals(input_tokens, output_tokens, float(calc.total_price))
