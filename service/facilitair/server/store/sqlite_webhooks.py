"""The SQLite store's webhook outbox: deliveries claimed by a conditional UPDATE on the writer thread.

One process uses a SQLite file, so a claim only has to be atomic with respect to this process's own statements,
which the single writer thread already serialises; the UPDATE still re-checks the claim's conditions so that the
same SQL would be right with several writers.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from facilitair.server.store.base import AttemptResult, DeliveryRow
from facilitair.server.store.sqlite_batch import immediate

T = TypeVar("T")


class Runner(Protocol):
    """Runs a function on one of the store's connections, on its thread."""

    def __call__(self, fn: Callable[[sqlite3.Connection], T], /) -> Awaitable[T]: ...

COLUMNS = (
    "id, run_id, event_type, url, payload, state, attempts, next_attempt_at, owner, last_status, last_error, "
    "created_at, updated_at"
)
_DUE = "state = 'pending' AND next_attempt_at <= ? AND (lease_expires_at IS NULL OR lease_expires_at < ?)"


def _row(values: Sequence[Any]) -> DeliveryRow:
    row = list(values)
    row[4] = bytes(row[4])  # a BLOB column
    return DeliveryRow(*row)


class SqliteWebhooks:
    """WebhookStore on the SQLite file (through the store's writer and reader connections)."""

    def __init__(self, write: Runner, read: Runner) -> None:
        self._write = write
        self._read = read

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[DeliveryRow]:
        """Mark up to `limit` due, unclaimed deliveries as `owner`'s until the lease runs out, oldest due first."""

        def claim(conn: sqlite3.Connection) -> list[DeliveryRow]:
            now = time.time()
            cur = conn.execute(
                f"UPDATE webhook_deliveries SET owner = ?, lease_expires_at = ? WHERE {_DUE} AND id IN "
                f"(SELECT id FROM webhook_deliveries WHERE {_DUE} ORDER BY next_attempt_at LIMIT ?) "
                f"RETURNING {COLUMNS}",
                (owner, now + lease_seconds, now, now, now, now, limit),
            )
            return [_row(r) for r in cur.fetchall()]

        return await self._write(claim)

    async def record(self, delivery_id: str, owner: str, result: AttemptResult) -> bool:
        """Store the outcome where the claim is still `owner`'s."""

        def record(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = ?, last_status = ?, "
                "last_error = ?, owner = '', lease_expires_at = NULL, updated_at = ? WHERE id = ? AND owner = ?",
                (
                    result.state,
                    result.attempts,
                    time.time() + result.wait,
                    result.status,
                    result.error,
                    time.time(),
                    delivery_id,
                    owner,
                ),
            )
            return cur.rowcount > 0

        return await self._write(record)

    async def release_all(self) -> None:
        """Drop every claim: the file is this process's alone, so any claim is a dead process's."""

        def release(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE webhook_deliveries SET owner = '', lease_expires_at = NULL WHERE owner != ''")

        await self._write(release)

    async def disable_endpoint(self, url: str, reason: str) -> None:
        """Mark the endpoint disabled (the first reason stays)."""

        def disable(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO webhook_endpoints_disabled (url, disabled_at, reason) VALUES (?, ?, ?) "
                "ON CONFLICT (url) DO NOTHING",
                (url, time.time(), reason),
            )

        await self._write(disable)

    async def disabled_endpoints(self) -> dict[str, str]:
        """url -> why it was disabled."""

        def read(conn: sqlite3.Connection) -> dict[str, str]:
            return {str(u): str(r) for u, r in conn.execute("SELECT url, reason FROM webhook_endpoints_disabled")}

        return await self._read(read)

    async def recent(self, limit: int, run_id: str | None = None) -> list[DeliveryRow]:
        """Newest first."""
        where, args = ("WHERE run_id = ?", (run_id, limit)) if run_id else ("", (limit,))

        def read(conn: sqlite3.Connection) -> list[DeliveryRow]:
            cur = conn.execute(
                f"SELECT {COLUMNS} FROM webhook_deliveries {where} ORDER BY created_at DESC, id LIMIT ?", args
            )
            return [_row(r) for r in cur]

        return await self._read(read)

    async def redeliver(self, key: str) -> int:
        """Reset the delivery `key` (or every delivery of the run `key`) to a first attempt now."""

        def reset(conn: sqlite3.Connection) -> int:
            now = time.time()
            with immediate(conn):
                urls = [
                    str(r[0])
                    for r in conn.execute(
                        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                        "owner = '', lease_expires_at = NULL, updated_at = ? WHERE id = ? OR run_id = ? RETURNING url",
                        (now, now, key, key),
                    ).fetchall()
                ]
                for url in set(urls):
                    conn.execute("DELETE FROM webhook_endpoints_disabled WHERE url = ?", (url,))
            return len(urls)

        return await self._write(reset)
