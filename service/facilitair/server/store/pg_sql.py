"""The PostgreSQL schema (ordered migrations) and the statements of the store.

Times are float seconds since the epoch, as in the SQLite store; leases are by the database's clock (now()),
so replicas on machines whose clocks differ agree on when a lease ran out. The unfinished states are written
out as literals (base.UNFINISHED_SQL, not a parameter) so the planner can use the partial indexes made on them.
"""

from __future__ import annotations

import asyncpg

from facilitair.server.store.base import CANCEL_CHANNEL, COMMITS_CHANNEL, LEASES_CHANNEL, UNFINISHED_SQL, SchemaError

V1 = f"""
CREATE TABLE runs (
    run_id text PRIMARY KEY,
    principal text NOT NULL,
    client_request_id text NOT NULL,
    state integer NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    finished_at double precision,
    summary bytea NOT NULL,
    spec text NOT NULL,
    owner text NOT NULL DEFAULT '',
    epoch bigint NOT NULL DEFAULT 0,
    lease_expires_at double precision,
    cancel_reason text
);
CREATE INDEX runs_by_principal ON runs (principal, created_at DESC, run_id DESC);
CREATE UNIQUE INDEX runs_by_request ON runs (principal, client_request_id) WHERE client_request_id <> '';
CREATE INDEX runs_unfinished ON runs (created_at) WHERE {UNFINISHED_SQL};
CREATE INDEX runs_active_by_principal ON runs (principal) WHERE {UNFINISHED_SQL};
CREATE INDEX runs_by_finish ON runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE events (
    run_id text NOT NULL,
    seq bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE checkpoints (
    run_id text NOT NULL,
    stage integer NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (run_id, stage)
);
"""

# The webhook outbox (webhooks/): one row per message and endpoint, written by WRITE_BATCH in the transaction of
# the terminal event it tells of; claimed with FOR UPDATE SKIP LOCKED. Endpoints that answered 410 are disabled here.
WEBHOOKS = """
CREATE TABLE webhook_deliveries (
    id text PRIMARY KEY,
    run_id text NOT NULL,
    event_type text NOT NULL,
    url text NOT NULL,
    payload bytea NOT NULL,
    state text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    owner text NOT NULL DEFAULT '',
    lease_expires_at double precision,
    last_status integer,
    last_error text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_run ON webhook_deliveries (run_id);
CREATE INDEX webhook_deliveries_by_time ON webhook_deliveries (created_at);
CREATE TABLE webhook_endpoints_disabled (
    url text PRIMARY KEY,
    disabled_at double precision NOT NULL,
    reason text NOT NULL
);
"""

# The response cache (pipeline/cache.py): one stored answer per key (a hash of the exact provider request and its
# caller), what it cost, and the run and stage that wrote it; retention expires entries by created_at.
RESPONSE_CACHE = """
CREATE TABLE response_cache (
    key text PRIMARY KEY,
    principal text NOT NULL,
    created_at double precision NOT NULL,
    text text NOT NULL,
    finish_reason text NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cost_usd double precision NOT NULL,
    run_id text NOT NULL,
    stage integer NOT NULL
);
CREATE INDEX response_cache_by_age ON response_cache (created_at);
"""

# Traces (docs/telemetry.md): the W3C traceparent of the call that created a run, and of the last stretch of it that
# a replica drove.
TRACE_CONTEXT = """
ALTER TABLE runs ADD COLUMN traceparent text;
ALTER TABLE runs ADD COLUMN trace_stretch text;
"""

MIGRATIONS: tuple[str, ...] = (V1, WEBHOOKS, RESPONSE_CACHE, TRACE_CONTEXT)
VERSION = len(MIGRATIONS)
# Advisory lock keys: (class, key) pairs, the class spelling "FAC1" so they do not meet other applications'.
LOCK_CLASS = 0x46414331
SCHEMA_LOCK = 1

NOW = "extract(epoch from now())::float8"
RUN_COLUMNS = (
    "run_id, principal, client_request_id, state, created_at, updated_at, finished_at, summary, spec, "
    "owner, epoch, lease_expires_at, cancel_reason, traceparent, trace_stretch"
)
R_RUN_COLUMNS = ", ".join(f"r.{c.strip()}" for c in RUN_COLUMNS.split(","))

# One round trip, one transaction: lock the batch's runs (FOR SHARE, in run_id order so that concurrent
# lockers never deadlock), keep those whose epoch is the writer's, write their events, row updates and
# checkpoints, and send ONE notification with each run's newest seq ("*" when that would not fit in 8000 bytes).
# A takeover (UPDATE of the epoch) waits for this statement or makes it see the new epoch and refuse the run.
_WRITE_BATCH = f"""
WITH wanted AS (
    SELECT * FROM unnest($1::text[], $2::bigint[]) AS w(run_id, epoch)
), locked AS (
    SELECT r.run_id, r.epoch FROM runs r WHERE r.run_id = ANY($1::text[]) ORDER BY r.run_id FOR SHARE
), accepted AS (
    SELECT l.run_id FROM locked l JOIN wanted w ON w.run_id = l.run_id AND w.epoch = l.epoch
), ev AS (
    INSERT INTO events (run_id, seq, data)
    SELECT e.run_id, e.seq, e.data FROM unnest($3::text[], $4::bigint[], $5::bytea[]) AS e(run_id, seq, data)
    WHERE e.run_id IN (SELECT run_id FROM accepted)
    RETURNING run_id, seq
), upd AS (
    UPDATE runs r SET state = u.state, updated_at = u.updated_at, finished_at = u.finished_at, summary = u.summary
    FROM unnest($6::text[], $7::integer[], $8::float8[], $9::float8[], $10::bytea[])
        AS u(run_id, state, updated_at, finished_at, summary)
    WHERE r.run_id = u.run_id AND u.run_id IN (SELECT run_id FROM accepted)
    RETURNING r.run_id
), cp AS (
    INSERT INTO checkpoints (run_id, stage, data)
    SELECT c.run_id, c.stage, c.data FROM unnest($11::text[], $12::integer[], $13::text[]) AS c(run_id, stage, data)
    WHERE c.run_id IN (SELECT run_id FROM accepted)
    ON CONFLICT (run_id, stage) DO UPDATE SET data = excluded.data
    RETURNING run_id
){{deliveries}}, newest AS (
    SELECT string_agg(run_id || ':' || seq, ',') AS runs FROM (SELECT run_id, max(seq) AS seq FROM ev GROUP BY run_id) n
), note AS (
    SELECT pg_notify('{COMMITS_CHANNEL}', $14 || '|' || CASE WHEN length(runs) > 7900 THEN '*' ELSE runs END)
    FROM newest WHERE runs IS NOT NULL
)
SELECT array(SELECT run_id FROM accepted) AS accepted, (SELECT count(*) FROM note) AS notified,
       (SELECT count(*) FROM upd) AS updated, (SELECT count(*) FROM cp) AS checkpointed
"""
# The webhook outbox rows of accepted runs, in the same statement (and transaction) as their terminal events;
# the same batch again inserts nothing twice (the ids are stable).
_DELIVERIES = f""", wh AS (
    INSERT INTO webhook_deliveries (id, run_id, event_type, url, payload, next_attempt_at, created_at, updated_at)
    SELECT d.id, d.run_id, d.event_type, d.url, d.payload, {NOW}, d.created_at, d.created_at
    FROM unnest($15::text[], $16::text[], $17::text[], $18::text[], $19::bytea[], $20::float8[])
        AS d(id, run_id, event_type, url, payload, created_at)
    WHERE d.run_id IN (SELECT run_id FROM accepted)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
)"""
# The per-token path's statement has no outbox part (no parameters to send, nothing to plan); a batch with
# deliveries (a terminal event) uses the other one.
WRITE_BATCH = _WRITE_BATCH.replace("{deliveries}", "")
WRITE_BATCH_WITH_DELIVERIES = _WRITE_BATCH.replace("{deliveries}", _DELIVERIES)

# For a batch refused by the events' primary key: per run, its events given, stored, and stored with the same bytes.
FIND_WRITTEN = """
SELECT v.run_id, count(*) AS given, count(s.seq) AS present, count(*) FILTER (WHERE s.data = v.data) AS same
FROM unnest($1::text[], $2::bigint[], $3::bytea[]) AS v(run_id, seq, data)
LEFT JOIN events s ON s.run_id = v.run_id AND s.seq = v.seq
GROUP BY v.run_id
"""
EPOCHS = "SELECT run_id, epoch FROM runs WHERE run_id = ANY($1::text[])"

FIND_AND_COUNT = f"""
SELECT (SELECT count(*) FROM runs WHERE principal = $1 AND {UNFINISHED_SQL}) AS active,
       (SELECT run_id FROM runs WHERE principal = $1 AND client_request_id = $2 AND $2 <> '') AS existing,
       (SELECT count(*) FROM runs WHERE principal = $1 AND created_at > $3) AS recent,
       (SELECT min(created_at) FROM runs WHERE principal = $1 AND created_at > $3) AS oldest_recent
"""
INSERT_RUN = f"""
INSERT INTO runs ({RUN_COLUMNS})
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, {NOW} + $11::float8, NULL, $12, NULL)
ON CONFLICT DO NOTHING
RETURNING {RUN_COLUMNS}
"""

# A principal's runs by id prefix ($2): a range scan of runs_pkey from the prefix to the bound id_prefix_bounds
# gives ($3), in id order; starts_with keeps only the ids that really start with it, whatever the collation.
RUNS_BY_PREFIX = f"""
SELECT {RUN_COLUMNS} FROM runs
WHERE run_id >= $2 AND run_id < $3 AND starts_with(run_id, $2) AND principal = $1
ORDER BY run_id LIMIT $4
"""
# The same for a prefix with no upper bound (all "f"s).
RUNS_FROM_PREFIX = f"""
SELECT {RUN_COLUMNS} FROM runs
WHERE run_id >= $2 AND starts_with(run_id, $2) AND principal = $1
ORDER BY run_id LIMIT $3
"""

NOTE_TRACE_STRETCH = "UPDATE runs SET trace_stretch = $3 WHERE run_id = $1 AND epoch = $2"
REQUEST_CANCEL = f"""
WITH c AS (
    UPDATE runs SET cancel_reason = COALESCE(cancel_reason, $2) WHERE run_id = $1 AND {UNFINISHED_SQL} RETURNING run_id
)
SELECT pg_notify('{CANCEL_CHANNEL}', run_id) FROM c
"""

# Lock the held rows in run_id order (as WRITE_BATCH does), then extend them: one statement for all runs.
RENEW = f"""
WITH held AS (
    SELECT r.run_id FROM runs r JOIN unnest($2::text[], $3::bigint[]) AS w(run_id, epoch)
        ON w.run_id = r.run_id AND w.epoch = r.epoch
    WHERE r.owner = $1 ORDER BY r.run_id FOR NO KEY UPDATE OF r
)
UPDATE runs r SET lease_expires_at = {NOW} + $4::float8 FROM held WHERE r.run_id = held.run_id
RETURNING r.run_id, r.cancel_reason
"""
RELEASE = f"""
WITH held AS (
    SELECT r.run_id FROM runs r JOIN unnest($2::text[], $3::bigint[]) AS w(run_id, epoch)
        ON w.run_id = r.run_id AND w.epoch = r.epoch
    WHERE r.owner = $1 ORDER BY r.run_id FOR NO KEY UPDATE OF r
), released AS (
    UPDATE runs r SET lease_expires_at = 0 FROM held WHERE r.run_id = held.run_id RETURNING r.run_id
)
SELECT pg_notify('{LEASES_CHANNEL}', count(*)::text) FROM released HAVING count(*) > 0
"""
# A durable write that changes nothing: whether the database takes writes now.
PROBE = "UPDATE schema_version SET version = version"


def claim_sql(ignore_leases: bool) -> str:
    """Take over runs: pick unlocked candidates (SKIP LOCKED: two claimers never wait on or share one), then
    bump each one's epoch in a compare-and-set on the epoch read."""
    expired = "" if ignore_leases else f" AND (lease_expires_at IS NULL OR lease_expires_at < {NOW})"
    return f"""
WITH c AS (
    SELECT run_id, epoch FROM runs WHERE {UNFINISHED_SQL}{expired}
    ORDER BY created_at, run_id LIMIT $3 FOR UPDATE SKIP LOCKED
)
UPDATE runs r SET owner = $1, epoch = r.epoch + 1, lease_expires_at = {NOW} + $2::float8
FROM c WHERE r.run_id = c.run_id AND r.epoch = c.epoch
RETURNING {R_RUN_COLUMNS}
"""


LAST_SEQS = "SELECT r.id, (SELECT max(seq) FROM events WHERE run_id = r.id) FROM unnest($1::text[]) AS r(id)"

# One bounded transaction of retention: up to $2 finished runs, oldest first, with their events and checkpoints.
DELETE_FINISHED = f"""
WITH doomed AS (
    SELECT run_id FROM runs WHERE finished_at < $1 AND NOT {UNFINISHED_SQL}
    ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED
), ev AS (
    DELETE FROM events e USING doomed d WHERE e.run_id = d.run_id
), cp AS (
    DELETE FROM checkpoints c USING doomed d WHERE c.run_id = d.run_id
), wh AS (
    DELETE FROM webhook_deliveries w USING doomed d WHERE w.run_id = d.run_id
)
DELETE FROM runs r USING doomed d WHERE r.run_id = d.run_id RETURNING r.run_id
"""


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the schema to VERSION in one transaction under an advisory lock; return the version found.

    Replicas starting at once queue on the lock: the first migrates, the others find the new version.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_CLASS, SCHEMA_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        found = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if found > VERSION:
            raise SchemaError(
                f"the database's schema is version {found}, newer than this server knows ({VERSION}): "
                "upgrade facilitair, or point it at another database"
            )
        if found == 0 and await conn.fetchval("SELECT to_regclass('runs') IS NOT NULL"):
            raise SchemaError("the database has a table named runs that facilitair did not make: use another database")
        for script in MIGRATIONS[found:]:
            await conn.execute(script)
        if found < VERSION:
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", VERSION)
    return found


# The response cache: an entry replaces the one under its key (refresh), made now by the database's clock.
CACHE_PUT = f"""
INSERT INTO response_cache (key, principal, text, finish_reason, input_tokens, output_tokens, cost_usd, run_id, stage,
    created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {NOW})
ON CONFLICT (key) DO UPDATE SET principal = EXCLUDED.principal, text = EXCLUDED.text,
    finish_reason = EXCLUDED.finish_reason, input_tokens = EXCLUDED.input_tokens,
    output_tokens = EXCLUDED.output_tokens, cost_usd = EXCLUDED.cost_usd, run_id = EXCLUDED.run_id,
    stage = EXCLUDED.stage, created_at = EXCLUDED.created_at
"""
CACHE_CLEAR_PRINCIPAL = "DELETE FROM response_cache WHERE principal = $1"
CACHE_EXPIRE = "DELETE FROM response_cache WHERE created_at < $1"
