"""Telling a batch that is written again from a real conflict.

A commit whose acknowledgement is lost (the connection drops after the server committed) makes the event log
write the same batch again, and the events' primary key refuses it. Left at that, the writer would retry
that batch forever and every run would stall. A batch is all or nothing, so it was written before exactly
when every run with events has them all stored with the same bytes, except runs the store refuses anyway
(their epoch moved on), and at least one run has them. Anything else is a real conflict, and stays an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from facilitair.server.store.base import Batch


@dataclass(frozen=True, slots=True)
class Found:
    """For one run of the batch: how many of its events are stored, and how many with the batch's bytes."""

    given: int
    present: int
    same: int


def written_before(batch: Batch, found: Mapping[str, Found], epochs: Mapping[str, int]) -> set[str] | None:
    """The runs with events to report refused if `batch` was written before; None if it was not (a conflict)."""
    landed = False
    refused: set[str] = set()
    for run_id, f in found.items():
        if f.same == f.given:
            landed = True
        elif f.present == 0 and (run_id not in batch.epochs or epochs.get(run_id) != batch.epochs[run_id]):
            refused.add(run_id)
        else:
            return None
    return refused if landed else None


def without_events(batch: Batch) -> Batch:
    """The batch's run rows, checkpoints and webhook deliveries alone (writing them again changes nothing)."""
    return Batch([], batch.runs, batch.checkpoints, batch.epochs, batch.deliveries)
