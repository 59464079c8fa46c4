"""The delivery loop: claims due webhook deliveries from the store's outbox and sends them, on any replica.

A delivery is claimed under a lease (an owner token and an expiry), so one replica sends it at a time; a replica
that dies mid-attempt leaves its claim to run out and another (or the same server restarted) sends it again
with the same webhook-id: at least once. Attempts run as tasks, CONCURRENCY at most; the loop sleeps until a
local terminal commit wakes it (EventLog), a retry falls due, or POLL_SECONDS pass (other replicas' work).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from urllib.parse import urlsplit

import structlog

from facilitair.server import metrics
from facilitair.server.store.base import AttemptResult, DeliveryRow, WebhookStore
from facilitair.server.tasks import cancel_and_wait, start_task
from facilitair.server.webhooks.config import WebhookConfig
from facilitair.server.webhooks.sender import Attempt, Outcome, Sender

log = structlog.get_logger(__name__)

CONCURRENCY = 8
POLL_SECONDS = 1.0
# A claim outlives the attempt it covers (bounded by the timeout) by this margin, so no live attempt is re-sent.
LEASE_MARGIN = 5.0
JITTER = 0.2  # each scheduled wait is spread by +-20%, so receivers that failed together are not retried together
MAX_RETRY_AFTER = 86400.0  # a receiver's Retry-After is honoured up to a day
STORE_BACKOFF = 2.0
RESTART_SECONDS = 2.0  # a loop that crashed starts again after this pause, so a persistent fault does not spin


def next_wait(schedule: tuple[float, ...], attempts: int, retry_after: float | None) -> float | None:
    """Seconds until the next attempt after `attempts` failed ones; None when the schedule is spent."""
    if attempts > len(schedule):
        return None
    wait = schedule[attempts - 1] * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 (jitter, not security)
    if retry_after is not None:
        wait = max(wait, min(retry_after, MAX_RETRY_AFTER))
    return wait


def _host(url: str) -> str:
    """What the logs say of a target: its host (a path or query may hold a token)."""
    return urlsplit(url).hostname or "?"


class WebhookDispatcher:
    """Owned by the run service: started and stopped with it."""

    def __init__(self, store: WebhookStore, config: WebhookConfig, replica_id: str, *, shared: bool) -> None:
        self._store = store
        self._config = config
        self._replica = replica_id
        self._shared = shared
        self._sender = Sender(config.allow, config.timeout, connections=CONCURRENCY)
        self._lease = config.timeout + LEASE_MARGIN
        self._inflight: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._due: float | None = None  # the earliest retry this replica scheduled
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # once stopping, a loop that crashed is not started again

    @property
    def enabled(self) -> bool:
        """Whether any webhook can be queued (otherwise nothing is, and the loop does not run)."""
        return self._config.enabled

    async def start(self) -> None:
        """Start the loop (when endpoints are configured); on a one-process store, drop a dead process's claims."""
        if not self.enabled:
            return
        if not self._shared:
            await self._store.release_all()
        self._start_loop(0.0)

    def _start_loop(self, pause: float) -> None:
        self._task = start_task(self._loop(pause), name="webhook-dispatcher")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        # start_task has logged the error (background_task_failed); the outbox is still to be sent, so the loop
        # starts again rather than leave every delivery of this replica waiting for a restart.
        if task.cancelled() or task.exception() is None or self._stopping:
            return
        log.warning("webhook_dispatcher_restarted", after_seconds=RESTART_SECONDS)
        self._start_loop(RESTART_SECONDS)

    async def stop(self) -> None:
        """Stop the loop and the attempts in flight; their claims run out and are sent again (same webhook-id)."""
        self._stopping = True
        try:
            await cancel_and_wait(self._task)
            for task in list(self._inflight):
                await cancel_and_wait(task)
        finally:
            await self._sender.aclose()

    def wake(self) -> None:
        """New deliveries were committed here: look now."""
        self._wake.set()

    async def _loop(self, pause: float) -> None:
        if pause:
            await asyncio.sleep(pause)
        while True:
            # Cleared on every turn, busy or not: a wake-up left set while every slot is busy would make _sleep return
            # at once without yielding, and the loop would spin and freeze the server. A slot freed or a commit made
            # from here on sets it again.
            self._wake.clear()
            free = CONCURRENCY - len(self._inflight)
            claimed: list[DeliveryRow] = []
            owner = f"{self._replica}/{uuid.uuid4().hex[:12]}"
            if free > 0:
                try:
                    claimed = await self._store.claim(owner, self._lease, free)
                    disabled = await self._store.disabled_endpoints() if claimed else {}
                except Exception as exc:  # noqa: BLE001  (the store is down or failing: try again later)
                    log.warning("webhook_claim_failed", cause=str(exc) or type(exc).__name__)
                    await asyncio.sleep(STORE_BACKOFF)
                    continue
                for row in claimed:
                    task = asyncio.create_task(self._deliver(row, owner, disabled.get(row.url)))
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue  # there may be more due
            await self._sleep()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free

    async def _sleep(self) -> None:
        wait = POLL_SECONDS
        if self._due is not None:
            wait = min(wait, max(0.0, self._due - time.time()))
            self._due = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._wake.wait()

    async def _deliver(self, row: DeliveryRow, owner: str, disabled: str | None) -> None:
        try:
            # A configured endpoint, else a run's own URL (CollaborateRequest.webhook_url), checked again now.
            endpoint = self._config.endpoint(row.url) or self._config.request_endpoint(row.url)
            if endpoint is None:
                attempt = Attempt(Outcome.REFUSED, error="the endpoint is no longer configured or allowed")
            elif disabled is not None:
                attempt = Attempt(Outcome.GONE, error=f"the endpoint is disabled ({disabled})")
            else:
                attempt = await self._sender.send(endpoint, row.id, row.payload, row.event_type)
            await self._record(row, owner, attempt)
        except Exception:  # a store error: the claim runs out and the delivery is tried again
            log.exception("webhook_record_failed", webhook_id=row.id)

    async def _record(self, row: DeliveryRow, owner: str, attempt: Attempt) -> None:
        attempts = row.attempts + 1
        now = time.time()
        fields = {"webhook_id": row.id, "run_id": row.run_id, "event_type": row.event_type, "host": _host(row.url)}
        metrics.WEBHOOK_ATTEMPTS.labels(attempt.outcome.value).inc()
        if attempt.outcome is Outcome.DELIVERED:
            result = AttemptResult("delivered", attempts, 0.0, attempt.status, None)
        elif attempt.outcome is Outcome.GONE:
            result = AttemptResult("disabled", attempts, 0.0, attempt.status, attempt.error)
            await self._store.disable_endpoint(row.url, attempt.error or "410 Gone")
        elif attempt.outcome is Outcome.REFUSED:
            result = AttemptResult("failed", attempts, 0.0, None, attempt.error)
        else:
            wait = next_wait(self._config.schedule, attempts, attempt.retry_after)
            if wait is None:
                result = AttemptResult("failed", attempts, 0.0, attempt.status, attempt.error)
            else:
                result = AttemptResult("pending", attempts, wait, attempt.status, attempt.error)
                due = now + wait
                self._due = min(self._due or due, due)
        if not await self._store.record(row.id, owner, result):
            log.warning("webhook_claim_lost", attempt=attempts, **fields)
            return
        if result.state == "pending":
            log.info("webhook_attempt_failed", attempt=attempts, error=attempt.error, retry_in=round(result.wait, 3),
                     **fields)  # fmt: skip
            self._wake.set()
            return
        metrics.WEBHOOK_DELIVERIES.labels(result.state).inc()
        if result.state == "delivered":
            log.info("webhook_delivered", attempt=attempts, status=attempt.status, **fields)
        elif result.state == "disabled":
            log.warning("webhook_endpoint_disabled", attempt=attempts, error=attempt.error, **fields)
        else:
            log.warning("webhook_failed", attempt=attempts, error=attempt.error, **fields)
