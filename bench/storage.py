"""Goal 5: the SQLite write path with durable commits (synchronous=FULL), and what group commits buy.

Runs in the harness process against the server's own SqliteStore and EventLog, on a file in the same folder
as the servers' databases.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from bench.fake import stamped
from facilitair.server.events.eventlog import EventLog
from facilitair.server.store.base import Batch, RunRow, StoredEvent
from facilitair.server.store.sqlite import SqliteStore
from facilitair.v1 import orchestrator_pb2 as pb


class _CountingStore(SqliteStore):
    """A SqliteStore that counts the batches (transactions) it is given."""

    batches = 0

    async def write_batch(self, batch: Batch) -> set[str]:
        self.batches += 1
        return await super().write_batch(batch)


async def _new_run(store: SqliteStore) -> str:
    """A run in the store, held by this process (epoch 1): the store writes events only for runs it holds."""
    run_id = str(uuid.uuid4())
    row = RunRow(run_id, "bench", "", pb.RUN_STATE_RUNNING, time.time(), time.time(), None, b"", "{}")
    await store.insert_run(row, owner="bench", lease_seconds=3600.0, max_active_per_principal=1_000_000)
    return run_id


def _token_bytes(run_id: str, seq: int, size: int) -> bytes:
    event = pb.RunEvent(run_id=run_id, seq=seq, token_delta=pb.TokenDelta(stage=2, text=stamped(size)))
    event.time.FromNanoseconds(time.time_ns())
    return event.SerializeToString()


async def _fixed_batches(path: Path, batch: int, seconds: float, size: int) -> dict[str, float]:
    """Commit batches of `batch` token events back to back for `seconds`."""
    store = SqliteStore(path)
    await store.open()
    run_id = await _new_run(store)
    data = _token_bytes(run_id, 1, size)
    seq = 0
    commits = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        events = [StoredEvent(run_id, seq + i + 1, data) for i in range(batch)]
        seq += batch
        assert not await store.write_batch(Batch(events, [], [], {run_id: 1}))
        commits += 1
    elapsed = time.monotonic() - start
    await store.close()
    return {"batch": batch, "events_per_s": seq / elapsed, "commits_per_s": commits / elapsed}


async def _event_log(path: Path, runs: int, per_run: int, size: int) -> dict[str, float]:
    """`runs` producers append tokens as fast as the loop lets them; the writer group-commits whatever waits."""
    store = _CountingStore(path)
    await store.open()
    log = EventLog(store)
    await log.start()
    run_ids = [await _new_run(store) for _ in range(runs)]

    async def produce(run_id: str) -> None:
        channel = log.open_channel(run_id, 0, epoch=1)
        for _ in range(per_run):
            event = pb.RunEvent(run_id=channel.run_id, token_delta=pb.TokenDelta(stage=2, text=stamped(size)))
            event.time.FromNanoseconds(time.time_ns())
            log.append(channel, event)
            await asyncio.sleep(0)  # a token arrives; other runs get their turn

    start = time.monotonic()
    await asyncio.gather(*(produce(run_id) for run_id in run_ids))
    await log.flush()
    elapsed = time.monotonic() - start
    await log.stop(wait=60.0)
    await store.close()
    total = runs * per_run
    return {
        "runs": runs,
        "events": total,
        "events_per_s": total / elapsed,
        "commits_per_s": store.batches / elapsed,
        "events_per_commit": total / max(1, store.batches),
    }


async def sqlite_write_path(workdir: Path, *, seconds: float, events: int, size: int) -> dict[str, Any]:
    """Events per second with one commit per event, per 10/100/1000, and through the EventLog's group commit."""
    fixed = [await _fixed_batches(workdir / f"fixed-{b}.sqlite3", b, seconds, size) for b in (1, 10, 100, 1000)]
    grouped = await _event_log(workdir / "eventlog.sqlite3", 100, max(1, events // 100), size)
    return {
        "fixed_batches": fixed,
        "event_log": grouped,
        "group_commit_gain": grouped["events_per_s"] / fixed[0]["events_per_s"],
    }
