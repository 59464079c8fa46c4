"""The LISTEN side of the PostgreSQL store: other writers' commits and cancel requests, on a connection of its own.

A notification is sent at commit (one per batch, see pg_sql.WRITE_BATCH), so a listener learns of events no
sooner than they are durable. The connection is watched (its termination, and a ping every `ping_every`
seconds, bounded by `ping_timeout`, for a peer that vanished without closing it) and reopened with backoff,
for as long as it takes and whatever the error (a restart refuses connections for a while, then says "the
database system is starting up"): a listener that gave up would leave its replica deaf until it restarts.
An outage is logged once when it starts (`store_listener_lost`) and once when it ends
(`store_listener_restored`), with a reminder while it lasts. After every reconnection listeners get an empty
mapping, "re-check what you follow", and a "leases were released" (the lease keeper renews and claims at
once, which also finds the cancel requests), since notifications sent while no connection listened are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from facilitair.server.retrying import RetryPolicy
from facilitair.server.store.base import (
    CANCEL_CHANNEL,
    COMMITS_CHANNEL,
    LEASES_CHANNEL,
    OnCancel,
    OnCommit,
    OnReleased,
    StoreUnavailable,
)
from facilitair.server.tasks import cancel_and_wait, start_task

log = structlog.get_logger(__name__)

PING_EVERY = 5.0
PING_TIMEOUT = 5.0
# Reconnecting: soon after a blip, then every 2 s for as long as it takes.
RECONNECT = RetryPolicy(base=0.05, cap=2.0)
# While the listener cannot reconnect, the log says so again this often.
REMIND_EVERY = 30.0


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
        self._task = start_task(self._keep(), name="pg-listener")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        task, self._task = self._task, None
        # Only a cancel ends it (_keep retries every error), so a stop cannot fail with a stale outage's error.
        await cancel_and_wait(task)
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
            cause = await self._watch()
            await self._close()
            log.warning("store_listener_lost", cause=cause)
            lost_at = time.monotonic()
            attempts = await self._reopen()
            log.info("store_listener_restored", seconds=round(time.monotonic() - lost_at, 3), attempts=attempts)
            self._deliver_commits({})  # notifications sent meanwhile are lost: everyone re-checks
            self._released()  # and leases released (or cancels asked for) meanwhile are looked for

    async def _watch(self) -> str:
        """Return once the connection is gone (closed under us, or silent to a ping), with why."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._ping_every):
                    await self._lost.wait()
                return "the connection was closed"
            conn = self._conn
            if conn is None:
                return "no connection"
            try:
                await conn.fetchval("SELECT 1", timeout=self._ping_timeout)
            except TimeoutError:
                return f"no answer to a ping within {self._ping_timeout:g} s"
            except Exception as exc:  # noqa: BLE001 - whatever broke the connection, it is reopened
                return _cause(exc)

    async def _reopen(self) -> int:
        """Open a new listening connection, trying until it works (backoff as RECONNECT says); the attempts made."""
        retry = RECONNECT.start()
        reminded = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(self._ping_timeout * 2):
                    await self._open()
                return retry.failures + 1
            # Every error, the store's own StoreUnavailable included (connect wraps them all): giving up here
            # would end the listening for good.
            except Exception as exc:  # noqa: BLE001
                cause = _cause(exc)
                retry.failed()
                log.debug("store_listener_reconnect_failed", cause=cause, retry_in=retry.delay)
                if time.monotonic() - reminded >= REMIND_EVERY:
                    reminded = time.monotonic()
                    log.warning("store_listener_still_lost", cause=cause, attempts=retry.failures)
            await asyncio.sleep(retry.delay)

    def _notified(self, _conn: object, _pid: int, channel: str, data: object) -> None:
        payload = str(data)
        if channel == LEASES_CHANNEL:
            self._released()
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

    def _released(self) -> None:
        try:
            self._on_released()
        except Exception:
            log.exception("store_released_callback_failed")


def _cause(exc: BaseException) -> str:
    """Why a connection failed, in words safe to log: the store's own errors are masked already, others by type."""
    if isinstance(exc, StoreUnavailable):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time"
    return type(exc).__name__
