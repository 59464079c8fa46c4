"""The event log: numbered events, made durable by group commit, then fanned out to watchers.

Hot path: a provider chunk becomes a RunEvent that `append` puts on a list (no I/O, no await). One
writer task takes everything pending from every run and hands it to the store as one batch (one
transaction), then advances each run's `committed_seq` and wakes its watchers. A watcher never sees
an event that is not durable.

Watchers keep no queue of their own: each remembers the next seq it wants and reads from the run's
in-memory tail of recent events, or from the store when it has fallen further behind, so a slow
watcher costs a position, not memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter as Tally
from collections import deque
from collections.abc import AsyncIterator

import structlog

from facilitair.server import metrics
from facilitair.server.events.wire import TERMINAL_PAYLOADS
from facilitair.server.store.base import Batch, Checkpoint, EventStore, RunRow, StoredEvent
from facilitair.v1.orchestrator_pb2 import RunEvent

log = structlog.get_logger(__name__)

READ_PAGE = 1000
# Events of each live run kept in memory for watchers that are a little behind; further behind (a
# reconnecting client, a slow reader) they read from the store, an indexed range scan. A token event
# takes about 0.9 KB in memory, so this is about 29 KB per live run (128 events made the RSS per active
# run miss its 256 KB goal; README, Benchmarks). A commit larger than this is kept whole until the next one.
TAIL_SIZE = 32


class RunChannel:
    """The live side of one run: seq numbering, the committed tail, and the watchers' wake-up."""

    __slots__ = ("_changed", "_tail", "_tail_size", "committed_seq", "finished", "next_seq", "run_id")

    def __init__(self, run_id: str, last_seq: int, tail_size: int) -> None:
        self.run_id = run_id
        self.next_seq = last_seq + 1
        self.committed_seq = last_seq
        self.finished = False
        # The newest committed events, seqs contiguous and ending at committed_seq.
        self._tail: deque[RunEvent] = deque()
        self._tail_size = tail_size
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _commit(self, events: list[RunEvent], terminal: bool) -> None:
        tail = self._tail
        tail.extend(events)
        # Keep `tail_size` events, or the whole of this commit if it is larger: the watchers woken next want
        # all of it, and reading it back from the store would cost more than holding it until they have.
        for _ in range(len(tail) - max(self._tail_size, len(events))):
            tail.popleft()
        self.committed_seq = events[-1].seq
        self.finished = self.finished or terminal
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    def tail_from(self, seq: int) -> list[RunEvent] | None:
        """Committed events from `seq` on, if the tail still holds `seq`."""
        wanted = self.committed_seq - seq + 1
        tail = self._tail
        if wanted > len(tail):
            return None
        if wanted <= 0:
            return []
        # From the right end: a live watcher wants the few newest events of a tail that may be long.
        events = list(itertools.islice(reversed(tail), wanted))
        events.reverse()
        return events

    async def wait_changed(self) -> None:
        """Return once more events are committed (or the run finished)."""
        await asyncio.shield(self._changed)


class EventLog:
    """Numbers, persists and fans out the events of all runs."""

    def __init__(self, store: EventStore, *, tail_size: int = TAIL_SIZE) -> None:
        self.store = store
        self._tail_size = tail_size
        self._channels: dict[str, RunChannel] = {}
        # Each pending event with its payload kind, read once here for the terminal check and the metrics.
        self._events: list[tuple[RunChannel, RunEvent, str]] = []
        self._runs: dict[str, RunRow] = {}
        self._checkpoints: list[Checkpoint] = []
        self._wake: asyncio.Future[None] | None = None
        self._flushed: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the writer task."""
        self._writer = asyncio.create_task(self._write_loop(), name="eventlog-writer")

    async def stop(self) -> None:
        """Write what is pending, then stop the writer."""
        await self.flush()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    def open_channel(self, run_id: str, last_seq: int) -> RunChannel:
        """Register a live run whose log holds `last_seq` events already."""
        channel = RunChannel(run_id, last_seq, self._tail_size)
        self._channels[run_id] = channel
        return channel

    def channel(self, run_id: str) -> RunChannel | None:
        """The live channel of a run, or None when it is not running here."""
        return self._channels.get(run_id)

    def close_channel(self, channel: RunChannel) -> None:
        """Forget a run that stops without a terminal event (server shutdown); watchers are woken."""
        if self._channels.get(channel.run_id) is channel:
            del self._channels[channel.run_id]
        channel.finished = True
        changed, channel._changed = channel._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    def append(self, channel: RunChannel, event: RunEvent) -> None:
        """Number an event (run_id and payload already set) and queue it; the per-token path."""
        event.seq = channel.next_seq
        channel.next_seq += 1
        self._events.append((channel, event, event.WhichOneof("payload") or ""))
        self._poke()

    def update_run(self, row: RunRow) -> None:
        """Queue an upsert of a run row; it commits with the events queued before it."""
        self._runs[row.run_id] = row
        self._poke()

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Queue a stage checkpoint; it commits with the events queued before it."""
        self._checkpoints.append(checkpoint)
        self._poke()

    async def flush(self) -> None:
        """Wait until everything queued so far is durable."""
        if not (self._events or self._runs or self._checkpoints):
            return
        done = asyncio.get_running_loop().create_future()
        self._flushed.append(done)
        self._poke()
        await done

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not (self._events or self._runs or self._checkpoints):
                self._wake = loop.create_future()
                await self._wake
            events, self._events = self._events, []
            runs, self._runs = self._runs, {}
            checkpoints, self._checkpoints = self._checkpoints, []
            flushed, self._flushed = self._flushed, []
            batch = Batch(
                [StoredEvent(e.run_id, e.seq, e.SerializeToString()) for _, e, _ in events],
                list(runs.values()),
                checkpoints,
            )
            await self._write(batch)
            metrics.count_events(Tally(kind for _, _, kind in events))
            self._fan_out(events)
            for done in flushed:
                if not done.done():
                    done.set_result(None)

    async def _write(self, batch: Batch) -> None:
        """Write a batch, retrying with backoff: events must not be dropped while the disk is unhappy."""
        for attempt in itertools.count():
            try:
                await self.store.write_batch(batch)
                return
            except Exception:
                log.exception("event_store_write_failed", attempt=attempt, events=len(batch.events))
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0))

    def _fan_out(self, events: list[tuple[RunChannel, RunEvent, str]]) -> None:
        by_channel: dict[RunChannel, list[RunEvent]] = {}
        ended: list[RunChannel] = []
        for channel, event, kind in events:
            evs = by_channel.get(channel)
            if evs is None:
                evs = by_channel[channel] = []
            evs.append(event)
            if kind in TERMINAL_PAYLOADS:
                ended.append(channel)
        for channel, evs in by_channel.items():
            channel._commit(evs, channel in ended)
        for channel in ended:
            if self._channels.get(channel.run_id) is channel:
                del self._channels[channel.run_id]

    async def watch(self, run_id: str, after_seq: int) -> AsyncIterator[list[RunEvent]]:
        """Yield lists of committed events with seq > after_seq, in order, until the run ends."""
        next_seq = after_seq + 1
        channel = self._channels.get(run_id)
        while True:
            if channel is None or next_seq <= channel.committed_seq:
                events = channel.tail_from(next_seq) if channel is not None else None
                if events is None:
                    events = [
                        RunEvent.FromString(b) for b in await self.store.read_events(run_id, next_seq - 1, READ_PAGE)
                    ]
                if events:
                    next_seq = events[-1].seq + 1
                    yield events
                    continue
                if channel is None:
                    return  # not live and nothing more stored: the run has ended
            if channel.finished and next_seq > channel.committed_seq:
                return
            await channel.wait_changed()
