"""The PostgreSQL store's webhook outbox: deliveries claimed with FOR UPDATE SKIP LOCKED by any replica.

Two replicas claiming at once never wait on each other nor take the same row: each skips the rows the other has
locked, and the lease (by the database's clock) lets another replica take a delivery whose sender died.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from facilitair.server.store.base import AttemptResult, DeliveryRow
from facilitair.server.store.pg_sql import NOW

T = TypeVar("T")
OnPool = Callable[[Callable[[Any], Awaitable[T]]], Awaitable[T]]

COLUMNS = (
    "id, run_id, event_type, url, payload, state, attempts, next_attempt_at, owner, last_status, last_error, "
    "created_at, updated_at"
)
W_COLUMNS = ", ".join(f"w.{c.strip()}" for c in COLUMNS.split(","))

CLAIM = f"""
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= {NOW} AND (lease_expires_at IS NULL OR lease_expires_at < {NOW})
    ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries w SET owner = $1, lease_expires_at = {NOW} + $2::float8
FROM due WHERE w.id = due.id
RETURNING {W_COLUMNS}
"""
RECORD = f"""
UPDATE webhook_deliveries SET state = $3, attempts = $4, next_attempt_at = {NOW} + $5::float8, last_status = $6,
    last_error = $7,
    owner = '', lease_expires_at = NULL, updated_at = {NOW}
WHERE id = $1 AND owner = $2
RETURNING id
"""
REDELIVER = f"""
WITH reset AS (
    UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = {NOW}, owner = '',
        lease_expires_at = NULL, updated_at = {NOW}
    WHERE id = $1 OR run_id = $1
    RETURNING url
), enabled AS (
    DELETE FROM webhook_endpoints_disabled WHERE url IN (SELECT url FROM reset)
)
SELECT count(*) FROM reset
"""


def _row(record: asyncpg.Record) -> DeliveryRow:
    return DeliveryRow(*record)


class PgWebhooks:
    """WebhookStore on the PostgreSQL database (through the store's pool)."""

    def __init__(self, on_pool: OnPool[Any]) -> None:
        self._on_pool = on_pool

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[DeliveryRow]:
        """Lock and mark due deliveries that no live claim holds, skipping rows another replica is claiming."""
        rows = await self._on_pool(lambda conn: conn.fetch(CLAIM, owner, float(lease_seconds), limit))
        return sorted((_row(r) for r in rows), key=lambda r: r.next_attempt_at)

    async def record(self, delivery_id: str, owner: str, result: AttemptResult) -> bool:
        """Store the outcome where the claim is still `owner`'s."""
        found = await self._on_pool(
            lambda conn: conn.fetchval(
                RECORD,
                delivery_id,
                owner,
                result.state,
                result.attempts,
                result.wait,
                result.status,
                result.error,
            )
        )
        return found is not None

    async def release_all(self) -> None:
        """Nothing: other replicas may hold live claims; a dead replica's claims run out with their leases."""

    async def disable_endpoint(self, url: str, reason: str) -> None:
        """Mark the endpoint disabled (the first reason stays)."""
        await self._on_pool(
            lambda conn: conn.execute(
                f"INSERT INTO webhook_endpoints_disabled (url, disabled_at, reason) VALUES ($1, {NOW}, $2) "
                "ON CONFLICT (url) DO NOTHING",
                url,
                reason,
            )
        )

    async def disabled_endpoints(self) -> dict[str, str]:
        """url -> why it was disabled."""
        rows = await self._on_pool(lambda conn: conn.fetch("SELECT url, reason FROM webhook_endpoints_disabled"))
        return {r[0]: r[1] for r in rows}

    async def recent(self, limit: int, run_id: str | None = None) -> list[DeliveryRow]:
        """Newest first."""
        if run_id:
            sql = f"SELECT {COLUMNS} FROM webhook_deliveries WHERE run_id = $2 ORDER BY created_at DESC, id LIMIT $1"
            rows = await self._on_pool(lambda conn: conn.fetch(sql, limit, run_id))
        else:
            sql = f"SELECT {COLUMNS} FROM webhook_deliveries ORDER BY created_at DESC, id LIMIT $1"
            rows = await self._on_pool(lambda conn: conn.fetch(sql, limit))
        return [_row(r) for r in rows]

    async def redeliver(self, key: str) -> int:
        """Reset the delivery `key` (or every delivery of the run `key`) to a first attempt now."""
        return int(await self._on_pool(lambda conn: conn.fetchval(REDELIVER, key)))
