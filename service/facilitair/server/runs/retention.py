"""Retention: finished runs older than `retention_days` are deleted with their events, now and then; so are
response cache entries made longer ago than that."""

from __future__ import annotations

import asyncio
import time

import structlog

from facilitair.server.settings import Settings
from facilitair.server.store.base import EventStore
from facilitair.server.tasks import cancel_and_wait, start_task

log = structlog.get_logger(__name__)


class Retention:
    """A background task that deletes expired runs every `retention_check_seconds`."""

    def __init__(self, settings: Settings, store: EventStore) -> None:
        self._settings = settings
        self._store = store
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop (the first pass runs at once)."""
        self._task = start_task(self._loop(), name="retention")

    async def stop(self) -> None:
        """Stop the loop."""
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def run_once(self) -> int:
        """Delete what has expired now; return how many runs."""
        days = self._settings.retention_days
        cutoff = time.time() - days * 86400
        removed = await self._store.delete_finished_before(cutoff)
        if removed:
            log.info("runs_expired", removed=removed, retention_days=days)
        entries = await self._store.cache_expire(cutoff)
        if entries:
            log.info("cache_entries_expired", removed=entries, retention_days=days)
        return removed

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 - the store may fail for a while; the next pass tries again
                log.warning("retention_failed", error=type(exc).__name__)
            await asyncio.sleep(self._settings.retention_check_seconds)
