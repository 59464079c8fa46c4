"""The SQLite schema as an ordered list of migrations, and the code that applies them.

Version 1 is the schema every database had before versions were recorded (no schema_version table); its DDL
is kept exactly as it was, so that a fresh database goes through the same steps an old one went through.
"""

from __future__ import annotations

import sqlite3

from facilitair.server.store.base import UNFINISHED_SQL, SchemaError

V1 = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    client_request_id TEXT NOT NULL,
    state INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL,
    summary BLOB NOT NULL,
    spec TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_principal ON runs (principal, created_at DESC, run_id DESC);
CREATE UNIQUE INDEX IF NOT EXISTS runs_by_request ON runs (principal, client_request_id)
    WHERE client_request_id != '';
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, stage)
) WITHOUT ROWID;
"""

# Leases (owner, epoch, expiry) and cancel requests; indexes for claiming, per-principal limits and retention.
# Existing runs get owner '' and epoch 0 with no lease: the next claim takes them over.
V2 = f"""
ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_expires_at REAL;
ALTER TABLE runs ADD COLUMN cancel_reason TEXT;
CREATE INDEX runs_unfinished ON runs (created_at) WHERE {UNFINISHED_SQL};
CREATE INDEX runs_active_by_principal ON runs (principal) WHERE {UNFINISHED_SQL};
CREATE INDEX runs_by_finish ON runs (finished_at) WHERE finished_at IS NOT NULL;
"""

# The webhook outbox (webhooks/): one row per message and endpoint, written in the transaction of the terminal
# event it tells of; claimed by a conditional UPDATE. Endpoints that answered 410 Gone are disabled here.
WEBHOOKS = """
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    url TEXT NOT NULL,
    payload BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    lease_expires_at REAL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_run ON webhook_deliveries (run_id);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (created_at);
CREATE TABLE webhook_endpoints_disabled (
    url TEXT PRIMARY KEY,
    disabled_at REAL NOT NULL,
    reason TEXT NOT NULL
)
"""

# The response cache (pipeline/cache.py): one stored answer per key (a hash of the exact provider request and its
# caller), what it cost, and the run and stage that wrote it; retention expires entries by created_at.
RESPONSE_CACHE = """
CREATE TABLE response_cache (
    key TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    created_at REAL NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    run_id TEXT NOT NULL,
    stage INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX response_cache_by_age ON response_cache (created_at);
"""

# Traces (docs/telemetry.md): the W3C traceparent of the call that created a run, and of the last stretch of it that
# a replica drove.
TRACE_CONTEXT = """
ALTER TABLE runs ADD COLUMN traceparent TEXT;
ALTER TABLE runs ADD COLUMN trace_stretch TEXT;
"""

MIGRATIONS: tuple[str, ...] = (V1, V2, WEBHOOKS, RESPONSE_CACHE, TRACE_CONTEXT)
VERSION = len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    # The scripts hold no semicolon inside a literal, so splitting is exact.
    return [s.strip() for s in script.split(";") if s.strip()]


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
    return row is not None


def stored_version(conn: sqlite3.Connection) -> int:
    """The schema version of the open database: 0 when empty, 1 when it predates schema_version."""
    if _has_table(conn, "schema_version"):
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        if row is None:
            raise SchemaError("the database's schema_version table is empty: it was not made by facilitair")
        return int(row[0])
    return 1 if _has_table(conn, "runs") else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to VERSION in one transaction; return the version found. SchemaError if it is newer."""
    conn.execute("BEGIN IMMEDIATE")  # the write lock first: two processes opening one file do not both migrate
    try:
        found = stored_version(conn)
        if found > VERSION:
            raise SchemaError(
                f"the database's schema is version {found}, newer than this server knows ({VERSION}): "
                "upgrade facilitair, or point it at another database"
            )
        for script in MIGRATIONS[found:]:
            for statement in _statements(script):
                conn.execute(statement)
        if found < VERSION:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found
