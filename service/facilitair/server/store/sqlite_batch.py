"""The SQLite store's writing of batches, and the SQL helpers its statements share.

A batch is one INSERT on the per-token path (its own durable transaction), or one BEGIN IMMEDIATE
transaction when it carries run rows, checkpoints or many events; either way fenced by the runs' epochs.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar

from facilitair.server.store.base import Batch
from facilitair.server.store.retry import Found, without_events, written_before

T = TypeVar("T")

ROWS_PER_INSERT = 300  # 1,200 parameters per statement at most; SQLite allows 32,766
IDS_PER_STATEMENT = 500


def marks(n: int) -> str:
    """n "?" placeholders, comma-separated."""
    return ",".join("?" * n)


def chunks(items: Sequence[T], size: int = IDS_PER_STATEMENT) -> Iterator[Sequence[T]]:
    """`items` in slices of at most `size` (SQLite bounds the parameters of one statement)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction; rolled back on error only while one is open (SQLite ends some failed ones itself)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # After SQLITE_FULL or a failed COMMIT SQLite may have rolled back already; a ROLLBACK then would raise
        # "cannot rollback - no transaction is active" and hide the cause.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def insert_rows(conn: sqlite3.Connection, head: str, rows: list[tuple[object, ...]], tail: str = "") -> None:
    """`head VALUES (..),(..) tail`, ROWS_PER_INSERT rows per statement at most."""
    if not rows:
        return
    one = "(" + marks(len(rows[0])) + ")"
    for chunk in chunks(rows, ROWS_PER_INSERT):
        conn.execute(f"{head} VALUES {','.join([one] * len(chunk))} {tail}", [v for row in chunk for v in row])


def write_once(conn: sqlite3.Connection, batch: Batch) -> set[str]:
    """Write a batch (see SqliteStore.write_batch); the same batch again changes nothing."""
    try:
        if not batch.runs and not batch.checkpoints and not batch.deliveries and len(batch.events) <= ROWS_PER_INSERT:
            return _write_events_only(conn, batch)
        return _write_transaction(conn, batch)
    except sqlite3.IntegrityError:
        again = _written_before(conn, batch)
        if again is None:
            raise
        return again


def _written_before(conn: sqlite3.Connection, batch: Batch) -> set[str] | None:
    """The refused runs if this very batch was committed before (see retry.py), else None."""
    counts: dict[str, list[int]] = {}
    for chunk in chunks(batch.events, ROWS_PER_INSERT):
        cur = conn.execute(
            "SELECT v.column1, count(*), count(s.seq), coalesce(sum(s.data = v.column3), 0) FROM (VALUES "
            + ",".join(["(?,?,?)"] * len(chunk))
            + ") AS v LEFT JOIN events s ON s.run_id = v.column1 AND s.seq = v.column2 GROUP BY v.column1",
            [v for e in chunk for v in (e.run_id, e.seq, e.data)],
        )
        for run_id, given, present, same in cur:
            total = counts.setdefault(run_id, [0, 0, 0])
            total[0], total[1], total[2] = total[0] + given, total[1] + present, total[2] + same
    found = {run_id: Found(*c) for run_id, c in counts.items()}
    refused = written_before(batch, found, _epochs(conn, sorted(found)))
    if refused is None:
        return None
    rest = without_events(batch)
    return refused | (_write_transaction(conn, rest) if rest.run_ids() else set())


def _write_events_only(conn: sqlite3.Connection, batch: Batch) -> set[str]:
    """The per-token path: one INSERT, its own durable transaction, fenced by a join on the runs' epochs.

    BEGIN and COMMIT (each a GIL release and re-take) are left out. A run's events go in together or not at all,
    since they share one epoch. When fewer rows went in than were given, the runs' epochs tell which were refused.
    (The join costs about 2 us per event, inside SQLite with the GIL released; RETURNING, to learn the refused
    runs on every batch, cost 1 us more with the GIL held.)
    """
    if not batch.events:
        return set()
    rows = [(e.run_id, e.seq, e.data, batch.epochs.get(e.run_id)) for e in batch.events]
    before = conn.total_changes
    conn.execute(
        "INSERT INTO events (run_id, seq, data) SELECT v.column1, v.column2, v.column3 FROM (VALUES "
        + ",".join(["(?,?,?,?)"] * len(rows))
        + ") AS v JOIN runs r ON r.run_id = v.column1 AND r.epoch = v.column4",
        [v for row in rows for v in row],
    )
    if conn.total_changes - before == len(rows):
        return set()
    return _stale(conn, sorted({e.run_id for e in batch.events}), batch.epochs)


def _epochs(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
    """The stored epoch of each of these runs that exists."""
    stored: dict[str, int] = {}
    for chunk in chunks(ids):
        stored.update(conn.execute(f"SELECT run_id, epoch FROM runs WHERE run_id IN ({marks(len(chunk))})", chunk))
    return stored


def _stale(conn: sqlite3.Connection, ids: Sequence[str], epochs: Mapping[str, int]) -> set[str]:
    """The runs among `ids` not stored under the epoch given for them (or not stored at all)."""
    stored = _epochs(conn, ids)
    return {r for r in ids if r not in epochs or stored.get(r) != epochs[r]}


def _write_transaction(conn: sqlite3.Connection, batch: Batch) -> set[str]:
    """Events, run rows and checkpoints in one transaction, for the runs held under the batch's epochs."""
    ids = sorted(batch.run_ids())
    with immediate(conn):
        refused = _stale(conn, ids, batch.epochs)
        insert_rows(
            conn,
            "INSERT INTO events (run_id, seq, data)",
            [(e.run_id, e.seq, e.data) for e in batch.events if e.run_id not in refused],
        )
        for r in batch.runs:
            if r.run_id not in refused:
                conn.execute(
                    "UPDATE runs SET state=?, updated_at=?, finished_at=?, summary=? WHERE run_id=?",
                    (r.state, r.updated_at, r.finished_at, r.summary, r.run_id),
                )
        insert_rows(
            conn,
            "INSERT OR REPLACE INTO checkpoints (run_id, stage, data)",
            [(c.run_id, c.stage, c.data) for c in batch.checkpoints if c.run_id not in refused],
        )
        # The webhook outbox rows commit with the terminal events they tell of; ids are stable, so the same
        # batch again inserts nothing twice.
        insert_rows(
            conn,
            "INSERT INTO webhook_deliveries (id, run_id, event_type, url, payload, next_attempt_at, created_at, "
            "updated_at)",
            [
                (d.id, d.run_id, d.event_type, d.url, d.payload, d.created_at, d.created_at, d.created_at)
                for d in batch.deliveries
                if d.run_id not in refused
            ],
            "ON CONFLICT (id) DO NOTHING",
        )
    return refused
