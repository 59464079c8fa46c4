"""The run states that are final, defined once (issue 20, item 1): Python and both stores' SQL use it."""

from __future__ import annotations

import sqlite3

import pytest

from facilitair.server.domain import ACTIVE_STATES, FINISHED_STATES, UNFINISHED_STATES, RunState
from facilitair.server.store import sqlite_schema
from facilitair.server.store.base import AWAITING_SQL, UNFINISHED_SQL
from facilitair.v1 import orchestrator_pb2 as pb


def test_the_run_states_are_the_wire_enum_without_its_prefix() -> None:
    wire = {name.removeprefix("RUN_STATE_"): number for name, number in pb.RunState.items() if number}
    assert {s.name: s.value for s in RunState} == wire


def test_every_state_is_finished_unfinished_or_waiting_for_a_person_only_one() -> None:
    waiting = {RunState.AWAITING_APPROVAL}  # not finished, yet driven by no replica: not claimable as unfinished
    assert set(RunState) == FINISHED_STATES | UNFINISHED_STATES | waiting
    assert not FINISHED_STATES & UNFINISHED_STATES
    assert not waiting & (FINISHED_STATES | UNFINISHED_STATES)
    assert UNFINISHED_STATES | waiting == ACTIVE_STATES  # what counts against a caller's limit of runs in flight
    assert pb.RUN_STATE_INTERRUPTED in UNFINISHED_STATES  # plain ints (a row's state) are found too
    assert pb.RUN_STATE_CANCELLED in FINISHED_STATES


def test_the_sql_predicate_holds_exactly_the_unfinished_states() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE runs (state INTEGER)")
    conn.executemany("INSERT INTO runs VALUES (?)", [(int(s),) for s in RunState])
    found = {row[0] for row in conn.execute(f"SELECT state FROM runs WHERE {UNFINISHED_SQL}")}
    assert found == UNFINISHED_STATES


def test_sqlite_can_answer_the_unfinished_queries_from_the_partial_indexes() -> None:
    # The indexes are made on the same predicate as the queries. INDEXED BY makes SQLite use the index or fail
    # ("no query solution"), which it does when the query's WHERE does not imply the index's.
    conn = sqlite3.connect(":memory:", isolation_level=None)
    sqlite_schema.migrate(conn)
    queries = {
        "runs_unfinished": f"SELECT run_id FROM runs INDEXED BY runs_unfinished WHERE {UNFINISHED_SQL}",
        "runs_active_by_principal": (
            f"SELECT count(*) FROM runs INDEXED BY runs_active_by_principal WHERE principal='p' AND {UNFINISHED_SQL}"
        ),
        "runs_awaiting": f"SELECT count(*) FROM runs INDEXED BY runs_awaiting WHERE principal='p' AND {AWAITING_SQL}",
    }
    for index, query in queries.items():
        plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
        assert index in plan, plan
    with pytest.raises(sqlite3.OperationalError, match="no query solution"):  # the check can fail
        conn.execute("SELECT run_id FROM runs INDEXED BY runs_unfinished WHERE state IN (1, 2)").fetchall()
