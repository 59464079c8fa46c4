"""`python -m bench.pg_driver`: asyncpg against psycopg 3 on the PostgreSQL store's per-token write path.

Group commits of 1, 10, 50 and 300 token events (about 200-byte payloads) spread over 200 runs, written back to
back by one writer connection for a few seconds per case, four ways:

- `cte`: the whole batch in ONE statement (lock the runs FOR SHARE, fence on their epochs, insert the events
  from unnest()ed arrays, NOTIFY): one round trip, its own transaction;
- `executemany`: BEGIN, the FOR SHARE lock, one INSERT per event sent by executemany (both drivers pipeline
  it), NOTIFY, COMMIT;
- `copy`: BEGIN, the lock, COPY of the events (binary), NOTIFY, COMMIT;
- `store`: PostgresStore.write_batch itself (asyncpg; the `cte` way plus the run-row and checkpoint parts).

For each: commits/s, events/s, and CPU per event of the client process plus the postgres backend serving the
writer connection (its /proc/<pid>/stat, found with pg_backend_pid(); so PostgreSQL must run on this machine).
Last, the latency of replaying a 1000-event run (the store's range read). Every case runs in a fresh database
created and dropped by the script on the server at FACILITAIR_BENCH_DATABASE_URL (default: the local server).

    python -m bench.pg_driver [--seconds 3] [--batches 1,10,50,300] [--out results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import asyncpg
import psycopg

from bench.procs import cpu_seconds
from facilitair.server.store.base import Batch, RunRow, StoredEvent
from facilitair.server.store.postgres import PostgresStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
RUNS = 200
PAYLOAD = 200

SCHEMA = """
CREATE TABLE runs (run_id text PRIMARY KEY, epoch bigint NOT NULL);
CREATE TABLE events (run_id text NOT NULL, seq bigint NOT NULL, data bytea NOT NULL, PRIMARY KEY (run_id, seq));
"""
# The store's statement, cut down to the events: lock + fence + insert + one NOTIFY, in one round trip.
CTE = """
WITH wanted AS (SELECT * FROM unnest($1::text[], $2::bigint[]) AS w(run_id, epoch)),
locked AS (SELECT r.run_id, r.epoch FROM runs r WHERE r.run_id = ANY($1::text[]) ORDER BY r.run_id FOR SHARE),
accepted AS (SELECT l.run_id FROM locked l JOIN wanted w ON w.run_id = l.run_id AND w.epoch = l.epoch),
ev AS (
    INSERT INTO events (run_id, seq, data)
    SELECT e.run_id, e.seq, e.data FROM unnest($3::text[], $4::bigint[], $5::bytea[]) AS e(run_id, seq, data)
    WHERE e.run_id IN (SELECT run_id FROM accepted)
    RETURNING run_id, seq
),
note AS (
    SELECT pg_notify('bench_commits', CASE WHEN length(p) > 7900 THEN '*' ELSE p END) FROM (
        SELECT string_agg(run_id || ':' || seq, ',') AS p
        FROM (SELECT run_id, max(seq) AS seq FROM ev GROUP BY run_id) n
    ) x WHERE p IS NOT NULL
)
SELECT array(SELECT run_id FROM accepted), (SELECT count(*) FROM note)
"""
LOCK = "SELECT run_id, epoch FROM runs WHERE run_id = ANY($1::text[]) ORDER BY run_id FOR SHARE"
INSERT_ONE = "INSERT INTO events (run_id, seq, data) VALUES ($1, $2, $3)"
NOTIFY = "SELECT pg_notify('bench_commits', $1)"
REPLAY = "SELECT data FROM events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"


def for_psycopg(sql: str) -> str:
    """$n placeholders as psycopg's named binary ones (%(pN)b), so one SQL text serves both drivers."""
    return re.sub(r"\$(\d+)", r"%(p\1)b", sql)


def named(args: Sequence[object]) -> dict[str, object]:
    """Positional arguments as psycopg's named ones."""
    return {f"p{i}": a for i, a in enumerate(args, start=1)}


Event = tuple[str, int, bytes]


class Driver(Protocol):
    """One connection of one driver, doing each way of writing a batch."""

    name: str

    async def backend_pid(self) -> int: ...
    async def execute(self, sql: str, *args: object) -> None: ...
    async def cte(self, epochs: dict[str, int], events: list[Event]) -> None: ...
    async def executemany(self, epochs: dict[str, int], events: list[Event]) -> None: ...
    async def copy(self, epochs: dict[str, int], events: list[Event]) -> None: ...
    async def replay(self, run_id: str) -> int: ...
    async def close(self) -> None: ...


def _payload(events: list[Event]) -> str:
    newest: dict[str, int] = {}
    for run_id, seq, _ in events:
        newest[run_id] = seq
    text = ",".join(f"{r}:{s}" for r, s in newest.items())
    return "*" if len(text) > 7900 else text  # NOTIFY takes at most 8000 bytes


def _cte_args(epochs: dict[str, int], events: list[Event]) -> list[object]:
    return [list(epochs), list(epochs.values()), [e[0] for e in events], [e[1] for e in events], [e[2] for e in events]]


class Asyncpg:
    """asyncpg: its own binary protocol implementation in Cython, statements prepared and cached."""

    name = "asyncpg"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str) -> Asyncpg:
        return cls(await asyncpg.connect(url))

    async def backend_pid(self) -> int:
        return int(await self.conn.fetchval("SELECT pg_backend_pid()"))

    async def execute(self, sql: str, *args: object) -> None:
        await self.conn.execute(sql, *args)

    async def cte(self, epochs: dict[str, int], events: list[Event]) -> None:
        await self.conn.fetchrow(CTE, *_cte_args(epochs, events))

    async def executemany(self, epochs: dict[str, int], events: list[Event]) -> None:
        async with self.conn.transaction():
            await self.conn.fetch(LOCK, list(epochs))
            await self.conn.executemany(INSERT_ONE, events)
            await self.conn.execute(NOTIFY, _payload(events))

    async def copy(self, epochs: dict[str, int], events: list[Event]) -> None:
        async with self.conn.transaction():
            await self.conn.fetch(LOCK, list(epochs))
            await self.conn.copy_records_to_table("events", records=events, columns=["run_id", "seq", "data"])
            await self.conn.execute(NOTIFY, _payload(events))

    async def replay(self, run_id: str) -> int:
        return len(await self.conn.fetch(REPLAY, run_id, 0, 1000))

    async def close(self) -> None:
        await self.conn.close()


class Psycopg:
    """psycopg 3 (async) on libpq, with its C speedups (psycopg[binary]); binary parameters and results."""

    name = "psycopg"

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str) -> Psycopg:
        return cls(await psycopg.AsyncConnection.connect(url, autocommit=True, prepare_threshold=0))

    async def backend_pid(self) -> int:
        return int(self.conn.info.backend_pid)

    async def execute(self, sql: str, *args: object) -> None:
        await self.conn.execute(for_psycopg(sql), named(args))

    async def cte(self, epochs: dict[str, int], events: list[Event]) -> None:
        async with self.conn.cursor(binary=True) as cur:
            await cur.execute(for_psycopg(CTE), named(_cte_args(epochs, events)))
            await cur.fetchone()

    async def executemany(self, epochs: dict[str, int], events: list[Event]) -> None:
        async with self.conn.transaction(), self.conn.cursor(binary=True) as cur:
            await cur.execute(for_psycopg(LOCK), named([list(epochs)]))
            await cur.executemany(for_psycopg(INSERT_ONE), [named(e) for e in events])
            await cur.execute(for_psycopg(NOTIFY), named([_payload(events)]))

    async def copy(self, epochs: dict[str, int], events: list[Event]) -> None:
        async with self.conn.transaction(), self.conn.cursor(binary=True) as cur:
            await cur.execute(for_psycopg(LOCK), named([list(epochs)]))
            async with cur.copy("COPY events (run_id, seq, data) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "int8", "bytea"])
                for e in events:
                    await copy.write_row(e)
            await cur.execute(for_psycopg(NOTIFY), named([_payload(events)]))

    async def replay(self, run_id: str) -> int:
        async with self.conn.cursor(binary=True) as cur:
            await cur.execute(for_psycopg(REPLAY), named([run_id, 0, 1000]))
            return len(await cur.fetchall())

    async def close(self) -> None:
        await self.conn.close()


CONNECT: dict[str, Callable[[str], Awaitable[Driver]]] = {"asyncpg": Asyncpg.connect, "psycopg": Psycopg.connect}
WAYS = ("cte", "executemany", "copy", "store")


def _with_database(url: str, name: str) -> str:
    """The URL with its database replaced."""
    head, sep, query = url.partition("?")
    return head.rsplit("/", 1)[0] + "/" + name + sep + query


@contextlib.asynccontextmanager
async def fresh_database(url: str) -> AsyncIterator[str]:
    """A new empty database on the server, dropped afterwards."""
    name = f"facilitair_bench_{uuid.uuid4().hex[:12]}"
    admin = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class _Batches:
    """Batches of `size` token events, round robin over the runs, each run's seqs counting up from 1."""

    def __init__(self, runs: list[str], size: int) -> None:
        self.runs = runs
        self.size = size
        self.seqs = dict.fromkeys(runs, 0)
        self.payload = os.urandom(PAYLOAD)
        self.turn = 0

    def next(self) -> tuple[dict[str, int], list[Event]]:
        events: list[Event] = []
        for _ in range(self.size):
            run_id = self.runs[self.turn % len(self.runs)]
            self.turn += 1
            self.seqs[run_id] += 1
            events.append((run_id, self.seqs[run_id], self.payload))
        return {e[0]: 1 for e in events}, events


async def _timed(
    write: Callable[[dict[str, int], list[Event]], Awaitable[object]], batches: _Batches, pid: int, seconds: float
) -> dict[str, Any]:
    """Commit batches back to back for `seconds`, after a warm-up; the rates and the CPU per event."""
    for _ in range(20):  # warm up: statements prepared, caches filled
        await write(*batches.next())
    client0, backend0 = time.process_time(), cpu_seconds(pid)
    commits = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        await write(*batches.next())
        commits += 1
    elapsed = time.perf_counter() - start
    client, backend = time.process_time() - client0, cpu_seconds(pid) - backend0
    events = commits * batches.size
    return {
        "batch": batches.size,
        "commits_per_s": commits / elapsed,
        "events_per_s": events / elapsed,
        "client_us_per_event": client / events * 1e6,
        "backend_us_per_event": backend / events * 1e6,
        "cpu_us_per_event": (client + backend) / events * 1e6,
    }


async def write_case(url: str, driver_name: str, way: str, batch: int, seconds: float) -> dict[str, Any]:
    """Commit batches of `batch` token events of 200 runs back to back for `seconds`."""
    async with fresh_database(url) as db:
        driver = await CONNECT[driver_name](db)
        try:
            for statement in SCHEMA.strip().split(";\n"):
                await driver.execute(statement)
            runs = [str(uuid.uuid4()) for _ in range(RUNS)]
            await driver.execute("INSERT INTO runs SELECT unnest($1::text[]), 1", runs)
            result = await _timed(getattr(driver, way), _Batches(runs, batch), await driver.backend_pid(), seconds)
        finally:
            await driver.close()
    return {"driver": driver_name, "way": way, **result}


async def store_case(url: str, batch: int, seconds: float) -> dict[str, Any]:
    """The same through PostgresStore.write_batch itself (asyncpg, the whole statement: rows and checkpoints too)."""
    async with fresh_database(url) as db:
        store = PostgresStore(db)
        await store.open()
        try:
            runs = []
            for _ in range(RUNS):
                row = RunRow(str(uuid.uuid4()), "bench", "", 2, time.time(), time.time(), None, b"", "{}")
                await store.insert_run(row, owner="bench", lease_seconds=3600.0, max_active_per_principal=RUNS)
                runs.append(row.run_id)
            side = await asyncpg.connect(db)
            pid = int(
                await side.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'facilitair-writer'"
                )
            )
            await side.close()

            async def write(epochs: dict[str, int], events: list[Event]) -> None:
                refused = await store.write_batch(Batch([StoredEvent(*e) for e in events], [], [], epochs))
                assert not refused

            result = await _timed(write, _Batches(runs, batch), pid, seconds)
        finally:
            await store.close()
    return {"driver": "asyncpg", "way": "store", **result}


async def replay_case(url: str, driver_name: str, reads: int) -> dict[str, Any]:
    """Latency of reading back a 1000-event run, `reads` times."""
    async with fresh_database(url) as db:
        driver = await CONNECT[driver_name](db)
        try:
            for statement in SCHEMA.strip().split(";\n"):
                await driver.execute(statement)
            run_id = str(uuid.uuid4())
            await driver.execute(
                "INSERT INTO events SELECT $1, s, $2 FROM generate_series(1, 1000) s", run_id, os.urandom(PAYLOAD)
            )
            await driver.execute("VACUUM ANALYZE events")
            for _ in range(20):
                assert await driver.replay(run_id) == 1000
            times = []
            for _ in range(reads):
                start = time.perf_counter()
                await driver.replay(run_id)
                times.append(time.perf_counter() - start)
        finally:
            await driver.close()
    times.sort()
    return {
        "driver": driver_name,
        "replay_p50_ms": statistics.median(times) * 1e3,
        "replay_p99_ms": times[int(len(times) * 0.99) - 1] * 1e3,
    }


async def store_replay_case(url: str, reads: int) -> dict[str, Any]:
    """Latency of PostgresStore.read_events over a 1000-event run (the replay a watcher does)."""
    async with fresh_database(url) as db:
        store = PostgresStore(db)
        await store.open()
        try:
            row = RunRow(str(uuid.uuid4()), "bench", "", 2, time.time(), time.time(), None, b"", "{}")
            await store.insert_run(row, owner="bench", lease_seconds=3600.0, max_active_per_principal=1)
            data = os.urandom(PAYLOAD)
            for first in range(1, 1001, 250):
                evs = [StoredEvent(row.run_id, s, data) for s in range(first, first + 250)]
                assert not await store.write_batch(Batch(evs, [], [], {row.run_id: 1}))
            times = []
            for i in range(reads + 20):
                start = time.perf_counter()
                assert len(await store.read_events(row.run_id, 0, 1000)) == 1000
                if i >= 20:
                    times.append(time.perf_counter() - start)
        finally:
            await store.close()
    times.sort()
    return {
        "driver": "store",
        "replay_p50_ms": statistics.median(times) * 1e3,
        "replay_p99_ms": times[int(len(times) * 0.99) - 1] * 1e3,
    }


def _print_table(writes: list[dict[str, Any]], replays: list[dict[str, Any]]) -> None:
    print(
        f"{'driver':8} {'way':11} {'batch':>5} {'commits/s':>10} {'events/s':>9} "
        f"{'client':>7} {'backend':>7} {'cpu us/ev':>9}"
    )
    for r in writes:
        print(
            f"{r['driver']:8} {r['way']:11} {r['batch']:5d} {r['commits_per_s']:10.0f} {r['events_per_s']:9.0f} "
            f"{r['client_us_per_event']:7.1f} {r['backend_us_per_event']:7.1f} {r['cpu_us_per_event']:9.1f}"
        )
    for r in replays:
        print(
            f"{r['driver']:8} replay of 1000 events: p50 {r['replay_p50_ms']:.2f} ms, p99 {r['replay_p99_ms']:.2f} ms"
        )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every case, one after the other (never two at once: they would share the two cores)."""
    url = os.environ.get("FACILITAIR_BENCH_DATABASE_URL", DEFAULT_URL)
    batches = [int(b) for b in args.batches.split(",")]
    drivers = args.drivers.split(",")
    ways = args.ways.split(",")
    writes = []
    for b in batches:
        for w in ways:
            if w == "store":
                writes.append(await store_case(url, b, args.seconds))
                continue
            writes += [await write_case(url, d, w, b, args.seconds) for d in drivers]
    replays = [await replay_case(url, d, args.reads) for d in drivers]
    if "store" in ways:
        replays.append(await store_replay_case(url, args.reads))
    return {"writes": writes, "replays": replays, "seconds": args.seconds, "runs": RUNS, "payload": PAYLOAD}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run, print the table, and write the JSON when asked."""
    p = argparse.ArgumentParser(prog="python -m bench.pg_driver", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="how long each write case commits")
    p.add_argument("--batches", default="1,10,50,300", help="events per commit, comma-separated")
    p.add_argument("--drivers", default="asyncpg,psycopg")
    p.add_argument("--ways", default=",".join(WAYS))
    p.add_argument("--reads", type=int, default=300, help="replays timed per driver")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the server's default is uvloop")
    p.add_argument("--out", help="write the results as JSON here too")
    args = p.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop  # noqa: PLC0415

        result = uvloop.run(run(args))
    else:
        result = asyncio.run(run(args))
    _print_table(result["writes"], result["replays"])
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
