"""Waiting between attempts: the one policy every loop that tries again follows.

A `RetryPolicy` says how long to wait after each failure (exponential from `base`, at most `cap`, each wait
scaled by a random factor in 1 +- `jitter`) and when to give up (after `attempts`, or once the waits would
add up past `deadline`); with neither, the loop tries for as long as it takes. A `Retry` is one sequence of
attempts under a policy. The loops keep what is theirs: what they try, what they log, and what else ends them
(a run's own deadline, a wake-up that cuts a wait short).

Not tenacity's AsyncRetrying: the provider loop waits what a 429 asks (`retry-after`) and counts it against
its total, the store's probe waits on "something to write" as well as on time, and every loop logs its own
events; tenacity's callbacks would carry the same logic with a dependency on top.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# 2**60 base waits is past any cap: an unbounded loop that fails for days must not overflow the float.
_MAX_DOUBLINGS = 60


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait after each failed attempt, and when to stop trying."""

    base: float  # the wait after the first failure, seconds; it doubles after each further one
    cap: float  # the longest wait before jitter
    attempts: int | None = None  # the most attempts, the first included; None: no limit
    jitter: float = 0.0  # each wait is scaled by a random factor in [1 - jitter, 1 + jitter]
    deadline: float | None = None  # the most seconds waited in all; None: no limit

    def __post_init__(self) -> None:
        if not (0 < self.base <= self.cap) or not (0 <= self.jitter < 1):
            raise ValueError(f"invalid retry policy: {self}")
        if (self.attempts is not None and self.attempts < 1) or (self.deadline is not None and self.deadline < 0):
            raise ValueError(f"invalid retry policy: {self}")

    def delay_range(self, failures: int) -> tuple[float, float]:
        """The least and the most the wait after failure number `failures` (1-based) may be."""
        step = min(self.base * 2.0 ** min(failures - 1, _MAX_DOUBLINGS), self.cap)
        return step * (1 - self.jitter), step * (1 + self.jitter)

    def delay(self, failures: int) -> float:
        """The wait after failure number `failures` (1-based), jittered."""
        low, high = self.delay_range(failures)
        return low if low == high else random.uniform(low, high)  # noqa: S311 - spreading retries, not secrets

    def start(self) -> Retry:
        """A new sequence of attempts under this policy."""
        return Retry(self)


class Retry:
    """One sequence of attempts: counts the failures and the time waited, and says whether to try again."""

    __slots__ = ("delay", "failures", "policy", "waited")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.waited = 0.0  # the waits allowed so far
        self.delay = 0.0  # the wait before the next attempt, set by failed()

    def failed(self, asked: float | None = None) -> bool:
        """Count a failed attempt and set `delay`; False when the policy allows no further attempt.

        `asked` is a wait the other side named (a 429's retry-after): it replaces the backoff's and counts
        against the deadline the same way.
        """
        self.failures += 1
        self.delay = asked if asked is not None else self.policy.delay(self.failures)
        p = self.policy
        if p.attempts is not None and self.failures >= p.attempts:
            return False
        if p.deadline is not None and self.waited + self.delay > p.deadline:
            return False
        self.waited += self.delay
        return True
