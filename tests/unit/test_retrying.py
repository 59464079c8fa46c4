"""The retry policy (retrying.py) every loop that tries again follows: its waits, its limits, its jitter."""

from __future__ import annotations

import pytest

from facilitair.server.events.eventlog import STORE_RETRY
from facilitair.server.pipeline.attempts import AttemptPolicy
from facilitair.server.retrying import RetryPolicy
from facilitair.server.store.pg_listen import RECONNECT


def waits(policy: RetryPolicy, failures: int) -> list[float]:
    retry = policy.start()
    out = []
    for _ in range(failures):
        assert retry.failed()
        out.append(retry.delay)
    return out


def test_waits_double_from_the_base_up_to_the_cap() -> None:
    assert waits(RetryPolicy(base=0.05, cap=2.0), 9) == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]


def test_an_unbounded_policy_tries_for_as_long_as_it_takes_without_overflowing() -> None:
    retry = RetryPolicy(base=0.05, cap=2.0).start()
    for _ in range(5000):
        assert retry.failed()
    assert retry.delay == 2.0
    assert retry.failures == 5000


def test_attempts_count_the_first_one() -> None:
    retry = RetryPolicy(base=1.0, cap=8.0, attempts=3).start()
    assert retry.failed()  # after the first attempt: a second
    assert retry.failed()  # after the second: a third
    assert not retry.failed()  # the third was the last
    assert retry.failures == 3
    assert retry.waited == 3.0  # 1 + 2: the wait computed for the refused one is not counted


def test_the_deadline_bounds_the_waits_added_up() -> None:
    retry = RetryPolicy(base=1.0, cap=100.0, deadline=6.0).start()
    assert [retry.failed() for _ in range(3)] == [True, True, False]  # 1 + 2 = 3; + 4 = 7 > 6
    assert retry.waited == 3.0


def test_a_wait_the_other_side_asks_for_replaces_the_backoff_and_counts_against_the_deadline() -> None:
    retry = RetryPolicy(base=1.0, cap=100.0, deadline=10.0).start()
    assert retry.failed(asked=7.5)
    assert retry.delay == 7.5
    assert not retry.failed(asked=3.0)  # 7.5 + 3 > 10
    assert retry.delay == 3.0


def test_jitter_stays_in_its_range_and_spreads() -> None:
    policy = RetryPolicy(base=2.0, cap=32.0, jitter=0.5)
    assert [policy.delay_range(n) for n in (1, 2, 5, 6)] == [(1.0, 3.0), (2.0, 6.0), (16.0, 48.0), (16.0, 48.0)]
    seen = {policy.delay(1) for _ in range(200)}
    assert all(1.0 <= d <= 3.0 for d in seen)
    assert len(seen) > 100  # random, not one fixed wait: replicas retrying together spread out


@pytest.mark.parametrize(
    "fields",
    [
        {"base": 0.0, "cap": 1.0},
        {"base": 2.0, "cap": 1.0},
        {"base": 1.0, "cap": 1.0, "jitter": 1.0},
        {"base": 1.0, "cap": 1.0, "attempts": 0},
        {"base": 1.0, "cap": 1.0, "deadline": -1.0},
    ],
)
def test_a_policy_that_makes_no_sense_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid retry policy"):
        RetryPolicy(**fields)  # type: ignore[arg-type]


def test_the_loops_keep_their_limits() -> None:
    # The provider attempts: 5 per model, 2 s base doubling to 16 bases, x0.5-1.5, 60 s of waits at most.
    assert AttemptPolicy().retry == RetryPolicy(base=2.0, cap=32.0, attempts=5, jitter=0.5, deadline=60.0)
    # The store's writer and probe and the PostgreSQL listener: 50 ms doubling to 2 s, never giving up.
    assert STORE_RETRY == RECONNECT == RetryPolicy(base=0.05, cap=2.0)
