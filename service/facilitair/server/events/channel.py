"""A run's channel: its committed tail in memory and the wake-up of its watchers.

A live run's channel is fed by this process's writer as its batches commit (and also numbers the run's
events); a run driven by another replica is followed through a channel fed from the store (remote.py). Either
way watchers read the same way: from the tail when it still holds what they want, else from the store.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque

from facilitair.server.errors import FacilitairError, Reason, Unavailable
from facilitair.server.events.wire import RunEvent, response_frame

# Events of each followed run kept in memory for watchers that are a little behind; further behind (a
# reconnecting client, a slow reader) they read from the store, an indexed range scan. A token event takes
# about 0.9 KB in memory, so this is about 29 KB per run (128 events made the RSS per active run miss its
# 256 KB goal; docs/benchmarks.md). A commit larger than this is kept whole until the next one.
TAIL_SIZE = 32


class Committed(list[RunEvent]):
    """Committed events in seq order, with `frames`: each one's response bytes (wire.response_frame), index for
    index. Made once per commit (or store read) and shared by every watcher that reads it: watchers only read it.

    Events read from the store come with their `stored` bytes instead, framed only when `frames` is first asked
    for: a replay to a watcher that coalesces tokens (or a remote feed's read that no watcher wants) never pays it.
    """

    __slots__ = ("_frames", "_stored")

    def __init__(
        self, events: list[RunEvent], frames: list[bytes] | None = None, *, stored: list[bytes] | None = None
    ) -> None:
        super().__init__(events)
        self._frames = frames
        self._stored = stored

    @property
    def frames(self) -> list[bytes]:
        """Each event's response bytes."""
        if self._frames is None:
            self._frames = [response_frame(b) for b in self._stored or ()]
        return self._frames


class RunChannel:
    """One run's committed tail, its numbering when it runs here, and how its watchers learn of changes.

    A channel ends in one of three ways, each waking its watchers: the run's terminal event was committed
    (`finished`); the run is no longer followed through this channel (`moved`: it stopped being driven here,
    or started being driven here; watchers look it up again); or it cannot be followed now (`error`).
    """

    __slots__ = (
        "_changed",
        "_frames",
        "_tail",
        "_tail_size",
        "committed_seq",
        "epoch",
        "error",
        "finished",
        "moved",
        "next_seq",
        "run_id",
    )

    def __init__(self, run_id: str, last_seq: int, epoch: int = 0, tail_size: int = TAIL_SIZE) -> None:
        self.run_id = run_id
        self.epoch = epoch  # the lease epoch this process holds the run under: its writes are fenced by it
        self.next_seq = last_seq + 1
        self.committed_seq = last_seq
        self.finished = False
        self.moved = False
        self.error: FacilitairError | None = None
        # The newest committed events, seqs contiguous and ending at committed_seq.
        self._tail: deque[RunEvent] = deque()
        self._frames: deque[bytes] = deque()  # each tail event's response bytes, index for index
        self._tail_size = tail_size
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def commit(self, events: Committed, terminal: bool) -> None:
        """Events are durable: add them to the tail and wake the watchers."""
        tail, frames = self._tail, self._frames
        tail.extend(events)
        frames.extend(events.frames)
        # Keep `tail_size` events, or the whole of this commit if it is larger: the watchers woken next want
        # all of it, and reading it back from the store would cost more than holding it until they have.
        for _ in range(len(tail) - max(self._tail_size, len(events))):
            tail.popleft()
            frames.popleft()
        self.committed_seq = events[-1].seq
        self.finished = self.finished or terminal
        self._wake()

    def close(self, *, moved: bool = False, error: FacilitairError | None = None) -> None:
        """No more events come through this channel: the run moved, or it cannot be followed (`error`)."""
        self.moved = self.moved or moved
        self.error = self.error or error
        self._wake()

    @property
    def ended(self) -> bool:
        """True once nothing more will come through this channel."""
        return self.finished or self.moved or self.error is not None

    def tail_from(self, seq: int) -> Committed | None:
        """Committed events from `seq` on, if the tail still holds `seq`."""
        wanted = self.committed_seq - seq + 1
        tail = self._tail
        if wanted > len(tail):
            return None
        if wanted <= 0:
            return Committed([], [])
        # From the right end: a live watcher wants the few newest events of a tail that may be long.
        events = list(itertools.islice(reversed(tail), wanted))
        events.reverse()
        frames = list(itertools.islice(reversed(self._frames), wanted))
        frames.reverse()
        return Committed(events, frames)

    async def wait_changed(self) -> None:
        """Return once more events are committed or the channel ended."""
        await asyncio.shield(self._changed)

    async def until_committed(self, seq: int) -> None:
        """Return once the events up to `seq` are durable (at once when they are already).

        A channel that ends first will never commit them here: its error, or Unavailable when the run moved.
        """
        while self.committed_seq < seq:
            if self.error is not None:
                raise self.error
            if self.ended:
                raise Unavailable("the run is no longer driven here; watch it again", reason=Reason.RUN_NOT_DRIVEN)
            await self.wait_changed()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)
