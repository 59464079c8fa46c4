"""Cost of tokens per model.

Prices come from the `genai-prices` package (an offline snapshot of the vendors' price lists,
including tiered long-context prices); the pipeline config's `[prices]` table adds models it does
not know, or overrides it, at flat per-million-token prices. A model priced by neither reports its
usage with `cost_unknown` set instead of a made-up number. `local:` models cost 0.

Prompt caching: `input_tokens` is the whole prompt, and the parts of it read from or written to the
provider's cache are priced at genai-prices' cache rates (its `input_tokens` is that same total). A
flat override has no cache rates: it prices the whole prompt at its input rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import genai_prices

from facilitair.server.domain import ModelRef, UsageTotals


@dataclass(frozen=True, slots=True)
class Price:
    """A flat price: USD per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float


class TokenCounts(Protocol):
    """What a provider reported (or was estimated) for one attempt: a stream's end, a cut-off attempt."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cache_read_tokens(self) -> int: ...
    @property
    def cache_write_tokens(self) -> int: ...


class PriceTable:
    """Prices by "provider:model": overrides first, then genai-prices."""

    def __init__(self, overrides: Mapping[str, Price] | None = None) -> None:
        self._overrides = dict(overrides or {})

    def usage_of(self, model: ModelRef, counts: TokenCounts) -> UsageTotals:
        """`usage` of an attempt's counts, its cache reads and writes included."""
        return self.usage(
            model,
            counts.input_tokens,
            counts.output_tokens,
            cache_read_tokens=counts.cache_read_tokens,
            cache_write_tokens=counts.cache_write_tokens,
        )

    def usage(
        self,
        model: ModelRef,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> UsageTotals:
        """Usage with its cost; `cost_unknown` when no price is known for the model.

        `input_tokens` includes `cache_read_tokens` and `cache_write_tokens` (a total below their sum is
        raised to it: the provider's counts are the facts, not our total).
        """
        input_tokens = max(input_tokens, cache_read_tokens + cache_write_tokens)
        totals = UsageTotals(
            input_tokens, output_tokens, cache_read_tokens=cache_read_tokens, cache_write_tokens=cache_write_tokens
        )
        if model.provider == "local":
            return totals  # this machine's own CPU: nothing to pay
        price = self._overrides.get(str(model))
        if price is not None:
            totals.cost_usd = (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1_000_000
            return totals
        try:
            calc = genai_prices.calc_price(
                genai_prices.Usage(
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cache_read_tokens=cache_read_tokens or None,
                    cache_write_tokens=cache_write_tokens or None,
                ),
                model_ref=model.model,
                provider_id=model.provider,
            )
        except LookupError:
            totals.cost_unknown = True
            return totals
        totals.cost_usd = float(calc.total_price)
        return totals
