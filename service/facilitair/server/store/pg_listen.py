"""The LISTEN side of the PostgreSQL store: other writers' commits and cancel requests, on a connection of its own.

A notification is sent at commit (one per batch, see pg_sql.WRITE_BATCH), so a listener learns of events no
sooner than they are durable. The connection is watched (its termination, and a ping every `ping_every`
seconds, bounded by `ping_timeout`, for a peer that vanished without closing it) and reopened with backoff;
after every reconnection listeners get an empty mapping, "re-check what you follow", since notifications
sent while no connection listened are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from facilitair.server.store.base import CANCEL_CHANNEL, COMMITS_CHANNEL, LEASES_CHANNEL, OnCancel, OnCommit, OnReleased

log = structlog.get_logger(__name__)

PING_EVERY = 5.0
PING_TIMEOUT = 5.0
BACKOFF_MAX = 2.0


def parse_commits(payload: str, own_tag: str) -> dict[str, int] | None:
    """`tag|run:seq,run:seq` (or `tag|*`) as run -> seq; {} for "re-check all"; None for our own commit."""
    tag, _, runs = payload.partition("|")
    if tag == own_tag:
        return None
    if runs == "*":
        return {}
    newest: dict[str, int] = {}
    for item in runs.split(","):
        run_id, _, seq = item.rpartition(":")
        if run_id and seq.isdigit():
            newest[run_id] = max(int(seq), newest.get(run_id, 0))
    return newest


class Listener:
    """Keeps one LISTEN connection open and hands what arrives to the callbacks."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        own_tag: str,
        on_commit: OnCommit,
        on_cancel: OnCancel,
        on_released: OnReleased,
        *,
        ping_every: float = PING_EVERY,
        ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        self._connect = connect
        self._tag = own_tag
        self._on_commit = on_commit
        self._on_cancel = on_cancel
        self._on_released = on_released
        self._ping_every = ping_every
        self._ping_timeout = ping_timeout
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen now (errors go to the caller), then keep listening in the background until stop()."""
        await self._open()
        self._task = asyncio.create_task(self._keep(), name="pg-listener")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    async def _open(self) -> None:
        conn = await self._connect()
        try:
            self._lost = asyncio.Event()
            lost = self._lost
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(COMMITS_CHANNEL, self._notified)
            await conn.add_listener(CANCEL_CHANNEL, self._notified)
            await conn.add_listener(LEASES_CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # no goodbye round trip: the peer may be gone

    async def _keep(self) -> None:
        while True:
            await self._watch()
            await self._close()
            log.warning("store_listener_lost")
            await self._reopen()
            log.info("store_listener_reconnected")
            self._deliver_commits({})  # notifications sent meanwhile are lost: everyone re-checks
            self._on_released()  # and leases released meanwhile are claimed

    async def _watch(self) -> None:
        """Return once the connection is gone: closed under us, or silent to a ping."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ping_every):
                    await self._lost.wait()
                return
            conn = self._conn
            if conn is None:
                return
            try:
                await conn.fetchval("SELECT 1", timeout=self._ping_timeout)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                return

    async def _reopen(self) -> None:
        delay = 0.05
        while True:
            try:
                async with asyncio.timeout(self._ping_timeout * 2):
                    await self._open()
                return
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("store_listener_reconnect_failed", error=type(exc).__name__, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def _notified(self, _conn: object, _pid: int, channel: str, data: object) -> None:
        payload = str(data)
        if channel == LEASES_CHANNEL:
            try:
                self._on_released()
            except Exception:
                log.exception("store_released_callback_failed")
            return
        if channel == CANCEL_CHANNEL:
            try:
                self._on_cancel(payload)
            except Exception:
                log.exception("store_cancel_callback_failed", run_id=payload)
            return
        newest = parse_commits(payload, self._tag)
        if newest is not None:
            self._deliver_commits(newest)

    def _deliver_commits(self, newest: dict[str, int]) -> None:
        try:
            self._on_commit(newest)
        except Exception:
            log.exception("store_commit_callback_failed")
