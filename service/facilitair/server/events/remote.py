"""Following runs that another replica drives: one feed per such run on this replica, fed from the store.

The owner's commits arrive as notifications (the store's LISTEN: one per commit batch, not per event); a feed
reads what is new once and commits it to a channel that every watcher of the run on this replica shares, so
a hundred watchers of one run cost one read per commit. A notification can be lost (the listening connection
dropped): a feed also looks every CHECK_EVERY seconds, so a watcher may be late, never stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping

import structlog

from facilitair.server.domain import RunState
from facilitair.server.errors import FacilitairError, NotFound, Reason, Unavailable
from facilitair.server.events.channel import Committed, RunChannel
from facilitair.server.events.wire import RunEvent
from facilitair.server.store.base import EventStore, StoreUnavailable
from facilitair.server.tasks import TaskSupervisor, cancel_and_wait, start_task

log = structlog.get_logger(__name__)

CHECK_EVERY = 1.0
# A run with no new event for this long whose lease has run out is driven by no replica: its watchers are told
# (UNAVAILABLE) instead of waiting in silence; they re-attach, and the run goes on once a replica claims it.
ORPHANED_AFTER = 60.0

# Reads a run's stored events after a seq: (events, the error that stopped the read early or None).
ReadEvents = Callable[[str, int], Awaitable[tuple[Committed, FacilitairError | None]]]
IsTerminal = Callable[[RunEvent], bool]


class RemoteFeed:
    """Keeps one channel of a run driven elsewhere up to date from the store."""

    def __init__(self, store: EventStore, read: ReadEvents, is_terminal: IsTerminal, run_id: str, last_seq: int):
        self.channel = RunChannel(run_id, last_seq)
        self.watchers = 0
        self._store = store
        self._read = read
        self._is_terminal = is_terminal
        self._poked = asyncio.Event()
        self._task = start_task(self._follow(), name=f"remote-{run_id}")

    def poke(self) -> None:
        """Something may have been committed: look now."""
        self._poked.set()

    async def stop(self) -> None:
        """Stop reading."""
        await cancel_and_wait(self._task)

    async def _follow(self) -> None:
        channel = self.channel
        quiet_since = time.monotonic()
        try:
            while not channel.ended:
                self._poked.clear()  # before the read: a poke that comes during it is not lost
                events, error = await self._read(channel.run_id, channel.committed_seq + 1)
                if events:
                    channel.commit(events, self._is_terminal(events[-1]))
                    quiet_since = time.monotonic()
                if error is not None:
                    channel.close(error=error)
                elif not events and time.monotonic() - quiet_since >= ORPHANED_AFTER:
                    quiet_since = time.monotonic()
                    await self._check_driven()
                if events or channel.ended:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY):
                        await self._poked.wait()
        except StoreUnavailable as exc:
            channel.close(error=Unavailable(f"the run cannot be followed now: {exc}", reason=Reason.STORE_UNAVAILABLE))
        except Exception:
            log.exception("remote_follow_failed", run_id=channel.run_id)
            channel.close(error=FacilitairError("internal error; the server log has the details"))

    async def _check_driven(self) -> None:
        """After a long silence: the run may be gone, or no replica may be driving it."""
        row = await self._store.get_run(self.channel.run_id)
        if row is None:
            self.channel.close(error=NotFound(f"run {self.channel.run_id!r} not found"))
        elif row.state == RunState.AWAITING_APPROVAL:
            return  # waits for a person, held by no replica on purpose: its watchers wait with it
        elif row.lease_expires_at is not None and row.lease_expires_at < time.time():
            self.channel.close(
                error=Unavailable(
                    "no replica is driving this run right now; it goes on when one takes it over: watch it again later",
                    reason=Reason.RUN_NOT_DRIVEN,
                )
            )


class RemoteFeeds:
    """The feeds of this replica, one per run followed here that another replica drives."""

    def __init__(self, store: EventStore, read: ReadEvents, is_terminal: IsTerminal) -> None:
        self._store = store
        self._read = read
        self._is_terminal = is_terminal
        self._feeds: dict[str, RemoteFeed] = {}
        self._stopping = TaskSupervisor("remote-feeds")  # feeds of runs now driven here, being stopped

    async def attach(self, run_id: str) -> RemoteFeed:
        """The run's feed (started now if there was none), counted as watched once more."""
        if run_id not in self._feeds:
            last_seq = await self._store.last_seq(run_id)
            if run_id not in self._feeds:  # another watcher may have started one meanwhile
                self._feeds[run_id] = RemoteFeed(self._store, self._read, self._is_terminal, run_id, last_seq)
        feed = self._feeds[run_id]
        feed.watchers += 1
        return feed

    async def detach(self, feed: RemoteFeed) -> None:
        """One watcher less; the last one stops the feed."""
        feed.watchers -= 1
        if feed.watchers <= 0 and self._feeds.get(feed.channel.run_id) is feed:
            del self._feeds[feed.channel.run_id]
            await feed.stop()

    def committed(self, newest: Mapping[str, int]) -> None:
        """Other replicas committed events of these runs (an empty mapping: of any run)."""
        if not newest:
            for feed in self._feeds.values():
                feed.poke()
            return
        for run_id in newest:
            found = self._feeds.get(run_id)
            if found is not None:
                found.poke()

    def now_local(self, run_id: str) -> None:
        """The run is driven here from now on: its watchers move to the local channel."""
        feed = self._feeds.pop(run_id, None)
        if feed is not None:
            feed.channel.close(moved=True)
            self._stopping.spawn(feed.stop(), name=f"stop-remote-{run_id}")

    async def stop(self) -> None:
        """Stop every feed."""
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            await feed.stop()
        await self._stopping.close()
