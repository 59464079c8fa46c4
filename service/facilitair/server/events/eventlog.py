"""The event log: numbered events, made durable by group commit, then fanned out to watchers.

Hot path: a provider chunk becomes a RunEvent that `append` puts on a list (no I/O, no await). One writer task
takes everything pending from every run and hands it to the store as one batch (one transaction), then advances
each run's `committed_seq` and wakes its watchers. A watcher never sees an event that is not durable.

Watchers keep no queue of their own: each remembers the next seq it wants and reads from the run's channel
(channel.py), from the store when it has fallen further behind. A run driven by another replica is followed
through a channel fed from the store (remote.py).

When the store cannot write, the writer keeps the batch and tries again with backoff, probing while idle; the
store's health (health.py) says so to whoever listens (the server's health service, the run service).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable, Mapping

import structlog
from google.protobuf.message import DecodeError

from facilitair.server import metrics
from facilitair.server.domain import FINISHED_STATES
from facilitair.server.errors import DataCorrupt, FacilitairError
from facilitair.server.events.channel import Committed, RunChannel
from facilitair.server.events.health import StoreHealth
from facilitair.server.events.remote import RemoteFeed, RemoteFeeds
from facilitair.server.events.wire import TERMINAL_PAYLOADS, RunEvent, response_frame, stored_event
from facilitair.server.retrying import RetryPolicy
from facilitair.server.store.base import (
    Batch,
    Checkpoint,
    EventStore,
    RunRow,
    StoredEvent,
    StoreUnavailable,
    WebhookDelivery,
)
from facilitair.server.tasks import cancel_and_wait, start_task

log = structlog.get_logger(__name__)

READ_PAGE = 1000
# Writes and probes while the store cannot write: soon after a blip, then every 2 s for as long as it takes.
STORE_RETRY = RetryPolicy(base=0.05, cap=2.0)


class EventLog:
    """Numbers, persists and fans out the events of all runs."""

    def __init__(
        self,
        store: EventStore,
        *,
        health: StoreHealth | None = None,
        on_refused: Callable[[set[str]], None] = lambda _runs: None,
    ) -> None:
        self.store = store
        self.health = health if health is not None else StoreHealth()  # whether the store takes writes now
        self.remote = RemoteFeeds(store, self._stored, _is_terminal)
        self._on_refused = on_refused  # told the runs whose writes the store refused: another replica holds them
        self._channels: dict[str, RunChannel] = {}
        # Each pending event with its payload kind, read once here for the terminal check and the metrics.
        self._events: list[tuple[RunChannel, RunEvent, str]] = []
        self._runs: dict[str, RunRow] = {}
        self._checkpoints: list[Checkpoint] = []
        self._deliveries: list[WebhookDelivery] = []
        # Told after a commit that stored webhook deliveries, so the delivery loop sends them at once.
        self.on_deliveries: Callable[[], None] = lambda: None
        self._epochs: dict[str, int] = {}  # the epoch of every run with something pending
        self._writing: dict[str, int] = {}  # the same for the batch being written
        self._wake: asyncio.Future[None] | None = None
        self._flushed: list[asyncio.Future[None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Find out whether the store takes writes (health), then start the writer task."""
        try:
            await self.store.probe()
        except StoreUnavailable as exc:
            self.health.failed(str(exc))  # the writer probes on until the store takes writes again
        self._writer = start_task(self._write_loop(), name="eventlog-writer")

    async def stop(self, *, wait: float) -> int:
        """Write what is pending (for at most `wait` seconds), stop the writer; return the events not written.

        Events not written were never seen by any watcher (fan-out follows the commit), and their runs resume
        from what is stored, so stopping with some unwritten loses nothing a client saw.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self.flush()
        unwritten = len(self._events)
        if unwritten:
            log.warning("events_not_written", events=unwritten, cause=self.health.cause)
        await cancel_and_wait(self._writer)
        await self.remote.stop()
        return unwritten

    # -- channels -------------------------------------------------------------------------------------------

    def open_channel(self, run_id: str, last_seq: int, *, epoch: int) -> RunChannel:
        """Register a run driven here, whose log holds `last_seq` events already, held under lease `epoch`."""
        channel = RunChannel(run_id, last_seq, epoch)
        self._channels[run_id] = channel
        self.remote.now_local(run_id)
        return channel

    def channel(self, run_id: str) -> RunChannel | None:
        """The channel of a run driven here, or None."""
        return self._channels.get(run_id)

    def close_channel(self, channel: RunChannel, *, error: FacilitairError | None = None) -> None:
        """The run stops being driven here without a terminal event: its watchers follow it elsewhere (or err)."""
        if self._channels.get(channel.run_id) is channel:
            del self._channels[channel.run_id]
        channel.close(moved=error is None, error=error)

    def committed_elsewhere(self, newest: Mapping[str, int]) -> None:
        """Another replica committed events of these runs (empty: of any run); the store's listener calls this."""
        self.remote.committed(newest)

    # -- writing ------------------------------------------------------------------------------------------

    def append(self, channel: RunChannel, event: RunEvent) -> None:
        """Number an event (run_id and payload already set) and queue it; the per-token path."""
        event.seq = channel.next_seq
        channel.next_seq += 1
        self._events.append((channel, event, event.WhichOneof("payload") or ""))
        self._epochs[channel.run_id] = channel.epoch
        self._poke()

    def update_run(self, row: RunRow) -> None:
        """Queue an update of a run row; it commits with the events queued before it."""
        self._runs[row.run_id] = row
        self._epochs[row.run_id] = row.epoch
        self._poke()

    def checkpoint(self, checkpoint: Checkpoint) -> None:
        """Queue a stage checkpoint; it commits with the events queued before it."""
        self._checkpoints.append(checkpoint)
        channel = self._channels.get(checkpoint.run_id)
        if channel is not None:
            self._epochs[checkpoint.run_id] = channel.epoch
        self._poke()

    def outbox(self, deliveries: list[WebhookDelivery]) -> None:
        """Queue webhook deliveries; they commit with the (terminal) event queued just before them."""
        self._deliveries.extend(deliveries)
        for d in deliveries:
            channel = self._channels.get(d.run_id)
            if channel is not None:
                self._epochs[d.run_id] = channel.epoch
        self._poke()

    async def flush(self) -> None:
        """Wait until everything queued so far is durable."""
        if not self._pending():
            return
        done = asyncio.get_running_loop().create_future()
        self._flushed.append(done)
        self._poke()
        await done

    def unwritten(self) -> dict[str, int]:
        """The runs with writes not stored yet (queued or being written), with the epoch they are written under.

        Their leases must be kept while that lasts, even after their tasks ended: a run taken back under a new
        epoch would have these writes refused and resume from the stage before, asking for it again.
        """
        return self._writing | self._epochs

    def _pending(self) -> bool:
        return bool(self._events or self._runs or self._checkpoints or self._deliveries)

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending():
                self._wake = loop.create_future()
                if self.health.healthy:
                    await self._wake
                else:
                    await self._probe_until_healthy()
                continue
            events, self._events = self._events, []
            runs, self._runs = self._runs, {}
            checkpoints, self._checkpoints = self._checkpoints, []
            deliveries, self._deliveries = self._deliveries, []
            flushed, self._flushed = self._flushed, []
            epochs, self._epochs = self._epochs, {}
            stored = [StoredEvent(e.run_id, e.seq, e.SerializeToString()) for _, e, _ in events]
            batch = Batch(
                stored,
                list(runs.values()),
                checkpoints,
                epochs,
                deliveries,
            )
            self._writing = epochs
            try:
                refused = await self._write(batch)
            finally:
                self._writing = {}
            # Only a refusal of the epoch a run is driven under now means another replica has it; an older
            # epoch's refusal is of writes from before this replica claimed the run back (RunStarter.resume).
            refused = {r for r in refused if (c := self._channels.get(r)) is None or c.epoch == epochs.get(r)}
            if refused:
                # Another replica holds these runs under a newer epoch: nothing of theirs was written, so
                # watchers must not see it either, and this replica must stop driving them.
                log.warning("event_write_refused", runs=sorted(refused))
                kept = [i for i, item in enumerate(events) if item[0].run_id not in refused]
                events, stored = [events[i] for i in kept], [stored[i] for i in kept]
                self._on_refused(refused)
            metrics.count_events(Tally(kind for _, _, kind in events))
            if any(d.run_id not in refused for d in deliveries):
                self.on_deliveries()
            self._fan_out(events, stored)
            for done in flushed:
                if not done.done():
                    done.set_result(None)

    async def _write(self, batch: Batch) -> set[str]:
        """Write a batch, trying again with backoff while the store cannot: events must not be dropped."""
        retry = None  # made at the first failure: a batch written at once (nearly all) costs nothing more
        while True:
            try:
                refused = await self.store.write_batch(batch)
            except StoreUnavailable as exc:
                self.health.failed(str(exc))
            except Exception as exc:
                if self.health.healthy:
                    log.exception("event_store_write_failed")
                self.health.failed(f"unexpected error ({type(exc).__name__}); the server log has the details")
            else:
                self.health.succeeded()
                return refused
            retry = retry or STORE_RETRY.start()
            retry.failed()
            await asyncio.sleep(retry.delay)

    async def _probe_until_healthy(self) -> None:
        """While the store cannot write and nothing is pending, try a small write now and then."""
        retry = STORE_RETRY.start()
        wake = self._wake
        while not self.health.healthy and not self._pending():
            try:
                await self.store.probe()
            except StoreUnavailable as exc:
                self.health.failed(str(exc))
            except Exception as exc:  # noqa: BLE001 - as in _write
                self.health.failed(f"unexpected error ({type(exc).__name__})")
            else:
                self.health.succeeded()
                return
            retry.failed()
            if wake is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry.delay):
                        await asyncio.shield(wake)

    def _fan_out(self, events: list[tuple[RunChannel, RunEvent, str]], stored: list[StoredEvent]) -> None:
        """Hand each channel its committed events, each with its response bytes made from the bytes just stored
        (once here, for every watcher of the run), and wake its watchers."""
        by_channel: dict[RunChannel, Committed] = {}
        ended: list[RunChannel] = []
        for (channel, event, kind), written in zip(events, stored, strict=True):
            evs = by_channel.get(channel)
            if evs is None:
                evs = by_channel[channel] = Committed([], [])
            evs.append(event)
            evs.frames.append(response_frame(written.data))
            if kind in TERMINAL_PAYLOADS:
                ended.append(channel)
        for channel, evs in by_channel.items():
            channel.commit(evs, channel in ended)
        for channel in ended:
            if self._channels.get(channel.run_id) is channel:
                del self._channels[channel.run_id]

    # -- watching -------------------------------------------------------------------------------------------

    async def watch(self, run_id: str, after_seq: int) -> AsyncIterator[Committed]:
        """Yield lists of committed events with seq > after_seq, in order, until the run ends.

        The run is followed through its channel here when this replica drives it, else from the store (a run
        that has ended is read to its end; one that goes on is followed through a remote feed); when it moves
        between replicas the watcher moves with it, gap-free.
        """
        next_seq = after_seq + 1
        over = False  # the run had ended when last looked at: what the store holds now is all there is
        while True:
            channel = self._channels.get(run_id)
            feed: RemoteFeed | None = None
            if channel is None:
                events, error = await self._stored(run_id, next_seq)
                if events:
                    next_seq = events[-1].seq + 1
                    yield events
                    if _is_terminal(events[-1]):
                        return
                if error is not None:
                    raise error
                if events or run_id in self._channels:
                    continue
                if over:
                    return
                # The run's end (its row's state) commits with its terminal event: once the row says it
                # ended, one more read gets every event up to the terminal one.
                over = await self._over(run_id)
                if over:
                    continue
                feed = await self.remote.attach(run_id)
                channel = feed.channel
            try:
                while True:
                    if next_seq <= channel.committed_seq:
                        tail = channel.tail_from(next_seq)
                        events, error = (tail, None) if tail is not None else await self._stored(run_id, next_seq)
                        if events:
                            next_seq = events[-1].seq + 1
                            yield events
                        if error is not None:
                            raise error
                        if events:
                            continue
                    if channel.finished:
                        return
                    if channel.error is not None:
                        raise channel.error
                    if channel.moved:
                        break
                    await channel.wait_changed()
            finally:
                if feed is not None:
                    await self.remote.detach(feed)

    async def _stored(self, run_id: str, first_seq: int) -> tuple[Committed, FacilitairError | None]:
        """Stored events from `first_seq` on (a page), up to the first that cannot be read (named by the error)."""
        blobs: list[bytes] = []
        events = Committed([], stored=blobs)  # framed only if a watcher sends them as they are
        for seq, blob in enumerate(await self.store.read_events(run_id, first_seq - 1, READ_PAGE), start=first_seq):
            try:
                events.append(stored_event(blob))
            except DecodeError:
                return events, DataCorrupt(f"event {seq} of run {run_id} cannot be read: the store holds corrupt data")
            blobs.append(blob)
        return events, None

    async def _over(self, run_id: str) -> bool:
        """True when the run has ended (or is gone): nothing more will be stored for it."""
        row = await self.store.get_run(run_id)
        return row is None or row.state in FINISHED_STATES


def _is_terminal(event: RunEvent) -> bool:
    return event.WhichOneof("payload") in TERMINAL_PAYLOADS
