"""Finding a caller's runs by a prefix of their id, on both stores (a SQLite file and a real PostgreSQL).

The ids are made by hand so that every edge of the range the stores scan is met: a prefix whose upper bound
carries past "9" and past "f", one that ends in a hyphen, one of all "f"s (no upper bound), runs just past
the bound, and another principal's runs inside the range.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facilitair.server.store.base import EventStore, InsertOutcome, id_prefix_bounds
from tests.harness.stores import Stores, run_row

pytestmark = pytest.mark.both_stores

ALICE = {
    "a1": "abc90000-0000-4000-8000-000000000001",
    "a2": "abc9ffff-0000-4000-8000-000000000002",
    "a3": "abca0000-0000-4000-8000-000000000003",  # the upper bound of "abc9": outside its range
    "a4": "abcf1234-0000-4000-8000-000000000004",
    "a5": "abd00000-0000-4000-8000-000000000005",  # the upper bound of "abcf"
    "a6": "ffffffff-ffff-4fff-bfff-ffffffffffff",
    "a7": "12345678-0000-4000-8000-000000000007",
    "a8": "12345679-0000-4000-8000-000000000008",
}
BOB = {"b1": "abc90000-0000-4000-8000-0000000000b1", "b2": "12345678-0000-4000-8000-0000000000b2"}


async def insert(store: EventStore, principal: str, run_id: str) -> None:
    """Store a run with this id for this principal."""
    result = await store.insert_run(
        run_row(principal, run_id=run_id), owner="A", lease_seconds=60.0, max_active_per_principal=1_000
    )
    assert result.outcome is InsertOutcome.CREATED


async def test_runs_are_found_by_id_prefix_only_among_the_principals_own(stores: Stores) -> None:
    store = await stores.new()
    for run_id in ALICE.values():
        await insert(store, "alice", run_id)
    for run_id in BOB.values():
        await insert(store, "bob", run_id)

    async def found(principal: str, prefix: str, limit: int = 10) -> list[str]:
        return [r.run_id for r in await store.find_runs_by_prefix(principal, prefix, limit)]

    a = ALICE
    assert await found("alice", "abc9") == [a["a1"], a["a2"]]
    assert await found("alice", "abc9", 1) == [a["a1"]]
    assert await found("alice", "abca") == [a["a3"]]
    assert await found("alice", "abcf") == [a["a4"]]
    assert await found("alice", "abc") == [a["a1"], a["a2"], a["a3"], a["a4"]]
    assert await found("alice", "ffff") == [a["a6"]]
    assert await found("alice", a["a6"][:35]) == [a["a6"]]
    assert await found("alice", "12345678-") == [a["a7"]]
    assert await found("alice", "12345678") == [a["a7"]]
    assert await found("alice", "1234567") == [a["a7"], a["a8"]]
    assert await found("alice", a["a1"][:35]) == [a["a1"]]
    assert await found("alice", BOB["b1"][:35]) == []  # only bob's run starts with it
    assert await found("bob", "abc9") == [BOB["b1"]]
    assert await found("bob", "1234") == [BOB["b2"]]
    assert await found("carol", "abc9") == []
    assert await found("alice", "0000") == []
    full = await store.find_runs_by_prefix("alice", "abcf", 10)
    assert full == [await store.get_run(a["a4"])]  # whole rows, as get_run reads them


def bytewise(text: str) -> str:
    """The sort key of the C collation."""
    return text


def hyphens_ignored(text: str) -> str:
    """The first-level sort key of a collation that ignores punctuation."""
    return text.replace("-", "")


@given(
    run_id=st.uuids().map(str), cut=st.integers(1, 35), other=st.uuids().map(str), shared=st.integers(0, 36)
)
def test_prefix_bounds_hold_in_bytewise_and_hyphen_ignoring_orders(
    run_id: str, cut: int, other: str, shared: int
) -> None:
    """An id is inside [low, high) exactly when it starts with the prefix, in the orders databases sort text by.

    Bytewise (SQLite; PostgreSQL with the C collation) and with hyphens ignored, as glibc's and ICU's
    linguistic collations may compare (both put digits before letters). The candidate shares `shared`
    characters with the id the prefix is cut from, so the edges of the range are met often.
    """
    prefix = run_id[:cut]
    candidate = run_id[:shared] + other[shared:]
    low, high = id_prefix_bounds(prefix)
    for key in (bytewise, hyphens_ignored):
        inside = key(low) <= key(candidate) and (high is None or key(candidate) < key(high))
        assert inside == candidate.startswith(prefix), (prefix, candidate, low, high)


def test_prefix_bounds_carry_past_nine_and_f() -> None:
    assert id_prefix_bounds("abc9") == ("abc9", "abca")
    assert id_prefix_bounds("abcf") == ("abcf", "abd")
    assert id_prefix_bounds("12345678-") == ("12345678-", "12345679")
    assert id_prefix_bounds("9fff-ff") == ("9fff-ff", "a")
    assert id_prefix_bounds("ffff-f") == ("ffff-f", None)
