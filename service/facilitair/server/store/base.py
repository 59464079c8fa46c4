"""The storage interface for runs, their event logs and their leases.

The event log (events/eventlog.py) batches writes from all runs and hands each batch to `write_batch`, which makes
it durable in one transaction. Nothing above this interface knows which store is used: SQLite (one process)
or PostgreSQL (any number of replicas on one database).

Several replicas share a PostgreSQL database, so every unfinished run has one owner holding a lease with an
epoch: a fencing token. `insert_run` and `claim_expired` hand out leases, `renew_leases` keeps them,
`release_leases` gives them up, and `write_batch` writes a run's parts only under the epoch the run is held
with now, so an owner whose run was taken over can never write to it again.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from facilitair.server.domain import UNFINISHED_STATES
from facilitair.server.errors import Reason, Unavailable

# domain.UNFINISHED_STATES as the SQL predicate both stores filter on ("state IN (1, 2, 6)"), its values in
# order so that the text never varies: the partial indexes are made on this very text, and the planners (SQLite's
# most of all) use such an index only for a query whose predicate is written the same way. The schemas' past
# migrations build their indexes from it too: a change to the set needs a new migration that remakes them.
UNFINISHED_SQL = f"state IN ({', '.join(str(int(s)) for s in sorted(UNFINISHED_STATES))})"
# The NOTIFY channels of the PostgreSQL store.
COMMITS_CHANNEL = "facilitair_commits"
CANCEL_CHANNEL = "facilitair_cancel"
LEASES_CHANNEL = "facilitair_leases"
# Retention deletes this many runs per transaction, so no transaction grows with the size of the store.
DELETE_BATCH = 500


# The characters of a run id (a UUID as str(uuid.uuid4()) writes it), in the order every collation puts them.
RUN_ID_DIGITS = "0123456789abcdef"


def id_prefix_bounds(prefix: str) -> tuple[str, str | None]:
    """The range [low, high) of the index that holds every run id starting with `prefix` (None: no upper end).

    `prefix` is lower-case hex and hyphens. High is the prefix with its last digit that is not "f" raised to
    the next digit ("abc9" -> "abca", "abcf" -> "abd"), so the range is right in every collation a database
    may sort text by: bytewise, and the linguistic ones too, which sort digits before letters and may ignore
    hyphens altogether (so "abc:" or "abc-." would not do). The stores still check the prefix on each row.
    """
    if not prefix or prefix.strip(RUN_ID_DIGITS + "-"):
        raise ValueError(f"not a prefix of a run id: {prefix[:40]!r}")
    head = prefix.rstrip("f-")
    if not head:
        return prefix, None
    return prefix, head[:-1] + RUN_ID_DIGITS[RUN_ID_DIGITS.index(head[-1]) + 1]


class StoreUnavailable(Unavailable):
    """The store cannot write (or cannot be reached) now; the message is the plain cause, safe to log and show.

    It says nothing of file paths or credentials. The condition may clear by itself (space freed, the database
    back): the stores reconnect on the next call. A caller that meets it gets UNAVAILABLE (STORE_UNAVAILABLE).
    """

    reason = Reason.STORE_UNAVAILABLE


class SchemaError(Exception):
    """The database's schema is not one this version can use (newer than it knows, or not ours)."""


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as stored: indexed columns, the serialized RunSummary, the run's spec and its lease."""

    run_id: str
    principal: str
    client_request_id: str
    state: int
    created_at: float
    updated_at: float
    finished_at: float | None
    summary: bytes
    spec: str
    # The replica holding the run's lease ("" when none ever did) and the lease's epoch (the fencing token).
    owner: str = ""
    epoch: int = 0
    # When the lease runs out, in seconds since the epoch by the store's clock; None when there is none.
    lease_expires_at: float | None = None
    # Why a cancel was requested (by any replica), or None when none was.
    cancel_reason: str | None = None
    # W3C traceparents (docs/telemetry.md): the call that created the run, and the last stretch a replica drove it.
    traceparent: str | None = None
    trace_stretch: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One serialized RunEvent."""

    run_id: str
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A completed stage's output, so a resumed run never asks the provider for it again."""

    run_id: str
    stage: int
    data: str


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One webhook message to one endpoint: an outbox row, written in the transaction of the event it tells of.

    `id` is the Standard Webhooks `webhook-id`, the same on every attempt; `payload` the exact JSON bytes signed
    and sent. The secret is not stored: it is read from the webhooks file when the message is sent.
    """

    id: str
    run_id: str
    event_type: str
    url: str
    payload: bytes
    created_at: float


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A stored delivery with its progress; `owner` is the claim token while one replica is sending it."""

    id: str
    run_id: str
    event_type: str
    url: str
    payload: bytes
    state: str  # DELIVERY_STATES
    attempts: int
    next_attempt_at: float
    owner: str
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float


# pending: to be sent (now or at next_attempt_at); delivered: a 2xx answer; failed: every attempt failed (or the
# target was refused); disabled: its endpoint answered 410 Gone, which disables the endpoint until `redeliver`.
DELIVERY_STATES = ("pending", "delivered", "failed", "disabled")


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one delivery attempt did, to store on its row (only under the claim that sent it)."""

    state: str
    attempts: int
    # Seconds from now until the next attempt (pending only), so each store adds it to its own clock: PostgreSQL
    # compares due times with the database's now(), whatever the replicas' clocks say.
    wait: float
    status: int | None
    error: str | None


class WebhookStore(Protocol):
    """The webhook outbox of a store: deliveries claimed under a lease by any replica, and disabled endpoints."""

    async def claim(self, owner: str, lease_seconds: float, limit: int) -> list[DeliveryRow]:
        """Take up to `limit` pending deliveries that are due and not held by a live claim, marked with `owner`."""
        ...

    async def record(self, delivery_id: str, owner: str, result: AttemptResult) -> bool:
        """Store an attempt's outcome and drop the claim; False when `owner` no longer holds the claim."""
        ...

    async def release_all(self) -> None:
        """Drop every claim (a one-process store at start: the claims of a process that died)."""
        ...

    async def disable_endpoint(self, url: str, reason: str) -> None:
        """Mark an endpoint disabled (it answered 410 Gone)."""
        ...

    async def disabled_endpoints(self) -> dict[str, str]:
        """Disabled endpoints: url -> why."""
        ...

    async def recent(self, limit: int, run_id: str | None = None) -> list[DeliveryRow]:
        """Deliveries, newest first (of one run when given)."""
        ...

    async def redeliver(self, key: str) -> int:
        """Send again from the first attempt: the delivery with this id, or every delivery of the run with this id;
        their endpoints are enabled again. The number of deliveries reset."""
        ...


@dataclass(slots=True)
class Batch:
    """Everything to make durable in one transaction.

    `runs` update rows that `insert_run` created (state, updated_at, finished_at, summary). `epochs` holds the
    epoch under which the writer holds each run of the batch: a run's parts are written only if the stored
    epoch is that one, and a run with no entry is refused.
    """

    events: list[StoredEvent]
    runs: list[RunRow]
    checkpoints: list[Checkpoint]
    epochs: dict[str, int] = field(default_factory=dict)
    # Webhook outbox rows, committed with the terminal events they tell of (under the same epochs).
    deliveries: list[WebhookDelivery] = field(default_factory=list)

    def run_ids(self) -> set[str]:
        """Every run the batch writes to."""
        ids = {e.run_id for e in self.events}
        ids.update(r.run_id for r in self.runs)
        ids.update(c.run_id for c in self.checkpoints)
        ids.update(d.run_id for d in self.deliveries)
        return ids


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A response cache entry (pipeline/cache.py): a provider's clean answer, what it cost, who wrote it."""

    key: str
    principal: str
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    run_id: str
    stage: int
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """What the response cache holds: entries, their text's characters, and what making them cost."""

    entries: int
    chars: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


# The response_cache table's columns in CacheEntry's order, and its totals in CacheStats' order (both stores).
CACHE_COLUMNS = "key, principal, text, finish_reason, input_tokens, output_tokens, cost_usd, run_id, stage, created_at"
CACHE_STATS = (
    "SELECT count(*), coalesce(sum(length(text)), 0), coalesce(sum(input_tokens), 0), "
    "coalesce(sum(output_tokens), 0), coalesce(sum(cost_usd), 0.0) FROM response_cache"
)


class InsertOutcome(enum.Enum):
    """What `insert_run` did."""

    CREATED = "created"  # the run is stored, held by the caller with epoch 1
    EXISTING = "existing"  # the principal already started a run with this client_request_id: that one
    LIMITED = "limited"  # the principal has max_active_per_principal unfinished runs already; nothing stored
    RATE_LIMITED = "rate_limited"  # the principal started max_started_per_minute runs in the last minute


@dataclass(frozen=True, slots=True)
class InsertResult:
    """The outcome of `insert_run`, the run created or found (None when limited), and the active count."""

    outcome: InsertOutcome
    row: RunRow | None
    # The principal's unfinished runs before this insert (0 when an existing run was returned).
    active: int
    # RATE_LIMITED: seconds until a run of the last minute ages out of the window.
    retry_after: float = 0.0


# The window of the per-principal rate of new runs, across every replica.
RATE_WINDOW = 60.0


def rate_limited(
    limit: float | None, recent: int, oldest_recent: float | None, row: RunRow, active: int
) -> InsertResult | None:
    """RATE_LIMITED when `recent` runs in the window leave no room for one more, else None (both stores use this)."""
    if limit is None or recent + 1 <= limit:
        return None
    wait = (oldest_recent or row.created_at) + RATE_WINDOW - row.created_at
    return InsertResult(InsertOutcome.RATE_LIMITED, None, active, retry_after=max(wait, 0.1))


@dataclass(frozen=True, slots=True)
class RenewResult:
    """What `renew_leases` found."""

    # Runs whose lease the caller no longer holds (taken over, or gone): stop driving them, write nothing.
    lost: frozenset[str]
    # Runs still held for which a cancel was requested: run id -> reason.
    cancel_requested: dict[str, str]


@dataclass(frozen=True, slots=True)
class Claim:
    """A run taken over by `claim_expired`: its row (new owner and epoch) and its newest stored seq."""

    row: RunRow
    last_seq: int


# A commit by another writer: run id -> its newest committed seq. Empty means "re-check every run you follow"
# (too many runs for one notification, or notifications may have been missed while reconnecting).
OnCommit = Callable[[Mapping[str, int]], None]
# A cancel was requested for this run id (by any replica, this one included); the reason is on the run.
OnCancel = Callable[[str], None]
# A replica let its leases go (a graceful stop): their runs can be claimed now.
OnReleased = Callable[[], None]


class EventStore(Protocol):
    """Durable storage of runs, events, checkpoints and run leases."""

    kind: str  # "sqlite" or "postgresql"
    shared: bool  # several processes may use the store at once
    webhooks: WebhookStore  # the webhook outbox

    async def open(self) -> None:
        """Connect, then create or migrate the schema (SchemaError when it is newer than this code knows)."""
        ...

    async def close(self) -> None:
        """Stop listening and release connections."""
        ...

    async def insert_run(
        self,
        row: RunRow,
        *,
        owner: str,
        lease_seconds: float,
        max_active_per_principal: int,
        max_started_per_minute: float | None = None,
    ) -> InsertResult:
        """Atomically: the principal's run with this client_request_id, or LIMITED, or RATE_LIMITED (more than
        `max_started_per_minute` runs created in the RATE_WINDOW before row.created_at), or the new run held by
        `owner`."""
        ...

    async def write_batch(self, batch: Batch) -> set[str]:
        """Commit the batch in one transaction, except the runs not held under batch.epochs: return those.

        Writing the same batch again (a retry after a commit whose acknowledgement was lost) changes nothing and
        returns the same runs; events that conflict with other stored ones raise the driver's integrity error.
        """
        ...

    async def listen(self, on_commit: OnCommit, on_cancel: OnCancel, on_released: OnReleased) -> None:
        """Deliver other writers' commits, every cancel request and released leases until close().

        A no-op on a one-process store.
        """
        ...

    async def probe(self) -> None:
        """Make one small durable write; StoreUnavailable when the store cannot write (full, read-only, gone)."""
        ...

    async def request_cancel(self, run_id: str, reason: str) -> bool:
        """Record a cancel request on an unfinished run and tell its owner; False if the run is finished or unknown."""
        ...

    async def renew_leases(self, owner: str, epochs: Mapping[str, int], lease_seconds: float) -> RenewResult:
        """Extend the leases `owner` holds under these epochs; report the lost ones and pending cancels."""
        ...

    async def claim_expired(
        self, owner: str, lease_seconds: float, limit: int, *, ignore_leases: bool = False
    ) -> list[Claim]:
        """Take over up to `limit` unfinished runs whose lease ran out (or every unfinished run: ignore_leases)."""
        ...

    async def release_leases(self, owner: str, epochs: Mapping[str, int]) -> None:
        """Let these leases run out now (where still held) and tell the other replicas, who claim the runs at once."""
        ...

    async def note_trace_stretch(self, run_id: str, epoch: int, traceparent: str) -> None:
        """Store the traceparent of the stretch that drives the run under `epoch` (nothing if another epoch holds it),
        so that the next stretch's span can link to it."""
        ...

    async def count_active(self, principal: str) -> int:
        """How many unfinished runs the principal has."""
        ...

    async def read_events(self, run_id: str, after_seq: int, limit: int) -> list[bytes]:
        """Serialized events with seq > after_seq, in seq order, at most `limit`."""
        ...

    async def last_seq(self, run_id: str) -> int:
        """The highest stored seq of a run (0 when it has none)."""
        ...

    async def get_run(self, run_id: str) -> RunRow | None:
        """A run, or None."""
        ...

    async def find_run(self, principal: str, client_request_id: str) -> RunRow | None:
        """The run a principal started with this idempotency key, or None."""
        ...

    async def find_runs_by_prefix(self, principal: str, prefix: str, limit: int) -> list[RunRow]:
        """The principal's runs whose id starts with `prefix` (see id_prefix_bounds), in id order, at most `limit`.

        A range scan of the run id index, so its cost is that of the ids in the range, not of the store.
        """
        ...

    async def list_runs(
        self, principal: str, state: int | None, before: tuple[float, str] | None, limit: int
    ) -> list[RunRow]:
        """Runs of a principal, newest first, strictly before (created_at, run_id) when given."""
        ...

    async def unfinished_runs(self) -> list[RunRow]:
        """Runs that are queued, running or interrupted, oldest first."""
        ...

    async def checkpoints(self, run_id: str) -> Sequence[Checkpoint]:
        """The stored checkpoints of a run, by stage."""
        ...

    async def recent_checkpoints(self, runs: int) -> Sequence[Checkpoint]:
        """The checkpoints (completed stages) of the `runs` most recently finished runs, any caller's: what plan
        estimates learn from."""
        ...

    async def delete_finished_before(self, cutoff: float, *, batch_size: int = DELETE_BATCH) -> int:
        """Remove runs that finished before `cutoff` with their events, `batch_size` runs per transaction."""
        ...

    async def cache_get(self, key: str) -> CacheEntry | None:
        """The response cache entry stored under `key`, if any."""
        ...

    async def cache_put(self, entry: CacheEntry) -> None:
        """Store a response cache entry, replacing the one under its key (its created_at is now)."""
        ...

    async def cache_stats(self, principal: str | None = None) -> CacheStats:
        """What the response cache holds: all of it, or one caller's entries."""
        ...

    async def cache_clear(self, principal: str | None = None) -> int:
        """Delete the response cache's entries (all, or one caller's); return how many."""
        ...

    async def cache_expire(self, cutoff: float) -> int:
        """Retention: delete response cache entries made before `cutoff`; return how many."""
        ...
