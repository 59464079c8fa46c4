"""Admission: whether a new run may start, decided before anything is stored.

Limits on runs in flight (this server's, and each principal's), then the plan against the run's budgets. A
run counts against the limits from the moment it is admitted (checked and counted with no await in between),
so calls arriving together cannot all slip under a limit before any of them is counted.

The rate of new runs (`runs_per_minute`) is not counted here but by the store, in the same transaction that
creates the run (`insert_run`, RATE_WINDOW): the store is shared, so the limit holds across every replica, and
only runs really created count. A count per process held a replica's share only, and counted refused runs too.
"""

from __future__ import annotations

from facilitair.server.errors import FailedPrecondition, Reason, ResourceLimited
from facilitair.server.pipeline.plan import PlannedRun
from facilitair.server.settings import Settings

# How long a client is told to wait when a concurrency limit is full: a run takes minutes, so soon
# enough to notice a freed slot without hammering the server.
CONCURRENCY_RETRY_SECONDS = 10.0


class Admission:
    """Counts admitted runs and refuses the ones over a limit or a budget."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._in_flight: dict[str, str] = {}  # admitted, unfinished run id -> principal

    @property
    def in_flight(self) -> int:
        """Runs admitted here and not yet finished."""
        return len(self._in_flight)

    @property
    def room(self) -> int:
        """How many more runs this server may drive (its maximum less the runs admitted here)."""
        return self._settings.max_runs - len(self._in_flight)

    def admit(self, run_id: str, principal: str) -> None:
        """Count a run against the limits, or raise ResourceLimited; no await between check and count."""
        s = self._settings
        if len(self._in_flight) >= s.max_runs:
            raise ResourceLimited(
                f"the server is running its maximum of {s.max_runs} runs; retry later", CONCURRENCY_RETRY_SECONDS
            )
        mine = sum(1 for owner in self._in_flight.values() if owner == principal)
        if mine >= s.max_runs_per_principal:
            raise ResourceLimited(
                f"you have {mine} runs in flight, the most allowed (FACILITAIR_MAX_RUNS_PER_PRINCIPAL); "
                "wait for one to finish or cancel one",
                CONCURRENCY_RETRY_SECONDS,
            )
        self._in_flight[run_id] = principal

    def resumed(self, run_id: str, principal: str) -> None:
        """Count a run resumed or taken over: it was admitted once, so no limit refuses it now."""
        self._in_flight[run_id] = principal

    def release(self, run_id: str) -> None:
        """The run finished (or stopped being driven here)."""
        self._in_flight.pop(run_id, None)


def check_budget(planned: PlannedRun) -> None:
    """Refuse a run whose plan is estimated over its budget, saying by how much."""
    cost, planned_tokens = planned.plan.estimated_cost_usd, planned.tokens
    budget_usd, budget_tokens = planned.spec.budget_usd, planned.spec.budget_tokens
    if budget_usd is not None and cost is not None and cost > budget_usd:
        raise FailedPrecondition(
            f"the plan's estimated cost ${cost:.4f} is over the budget ${budget_usd:.4f} "
            f"by ${cost - budget_usd:.4f}; raise max_cost_usd (--max-cost for facilitair run) or choose cheaper models",
            reason=Reason.PLAN_OVER_BUDGET,
        )
    if budget_tokens is not None and planned_tokens > budget_tokens:
        raise FailedPrecondition(
            f"the plan's estimated {planned_tokens} tokens are over the budget of {budget_tokens} "
            f"by {planned_tokens - budget_tokens}; raise max_tokens (--max-tokens for facilitair run)",
            reason=Reason.PLAN_OVER_BUDGET,
        )
