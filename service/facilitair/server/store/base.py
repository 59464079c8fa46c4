"""The storage interface for runs and their event logs.

The event log (eventlog.py) batches writes from all runs and hands each batch to `write_batch`,
which must make it durable in one step (one SQLite transaction; one Redis pipeline later). Nothing
above this interface knows which store is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as stored: indexed columns plus the serialized RunSummary and the run's spec."""

    run_id: str
    principal: str
    client_request_id: str
    state: int
    created_at: float
    updated_at: float
    finished_at: float | None
    summary: bytes
    spec: str


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


@dataclass(slots=True)
class Batch:
    """Everything to make durable in one step; rows are upserts."""

    events: list[StoredEvent]
    runs: list[RunRow]
    checkpoints: list[Checkpoint]


class EventStore(Protocol):
    """Durable storage of runs, events and checkpoints."""

    async def open(self) -> None:
        """Create or migrate the storage."""
        ...

    async def close(self) -> None:
        """Flush and release resources."""
        ...

    async def write_batch(self, batch: Batch) -> None:
        """Make a batch durable, all or nothing."""
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

    async def list_runs(
        self, principal: str, state: int | None, before: tuple[float, str] | None, limit: int
    ) -> list[RunRow]:
        """Runs of a principal, newest first, strictly before (created_at, run_id) when given."""
        ...

    async def unfinished_runs(self) -> list[RunRow]:
        """Runs that were queued, running or interrupted when the server last stopped."""
        ...

    async def checkpoints(self, run_id: str) -> Sequence[Checkpoint]:
        """The stored checkpoints of a run, by stage."""
        ...

    async def delete_finished_before(self, cutoff: float) -> int:
        """Remove runs that finished before `cutoff` (epoch seconds) with their events; return how many."""
        ...
