"""A run's channel (events/channel.py): the committed tail it keeps, what tail_from answers, how it ends."""

from __future__ import annotations

import asyncio

import pytest

from facilitair.server.errors import DataCorrupt
from facilitair.server.events.channel import Committed, RunChannel
from facilitair.server.events.wire import response_frame
from facilitair.v1 import orchestrator_pb2 as pb


def events(first: int, last: int) -> Committed:
    """Events first..last of one run, each with its response bytes, as the event log commits them."""
    made = [pb.RunEvent(run_id="r", seq=s, heartbeat=pb.Heartbeat()) for s in range(first, last + 1)]
    return Committed(made, [response_frame(e.SerializeToString()) for e in made])


def seqs(found: list[pb.RunEvent] | None) -> list[int] | None:
    """The seqs of what tail_from returned (None: not in the tail)."""
    return None if found is None else [e.seq for e in found]


# A channel of a run whose last stored seq was 10, keeping 4 events, after commits of these seq ranges:
# (commits, seq asked for, what tail_from answers).
TAIL: list[tuple[str, list[tuple[int, int]], int, list[int] | None]] = [
    ("nothing-committed-yet", [], 11, []),
    ("nothing-committed-before-the-start", [], 10, None),
    ("the-whole-small-tail", [(11, 13)], 11, [11, 12, 13]),
    ("the-newest-only", [(11, 13)], 13, [13]),
    ("past-the-end", [(11, 13)], 14, []),
    ("far-past-the-end", [(11, 13)], 99, []),
    ("trimmed-to-four", [(11, 13), (14, 16)], 13, [13, 14, 15, 16]),
    ("older-than-the-tail", [(11, 13), (14, 16)], 12, None),
    ("a-large-commit-is-kept-whole", [(11, 12), (13, 20)], 13, list(range(13, 21))),
    ("until-the-next-commit", [(11, 12), (13, 20), (21, 21)], 17, None),
    ("which-trims-it", [(11, 12), (13, 20), (21, 21)], 18, [18, 19, 20, 21]),
]


@pytest.mark.parametrize(("commits", "seq", "answer"), [r[1:] for r in TAIL], ids=[r[0] for r in TAIL])
async def test_tail_from_answers_from_memory_only_what_it_still_holds(
    commits: list[tuple[int, int]], seq: int, answer: list[int] | None
) -> None:
    channel = RunChannel("r", last_seq=10, tail_size=4)
    for first, last in commits:
        channel.commit(events(first, last), terminal=False)
    found = channel.tail_from(seq)
    assert seqs(found) == answer
    if found is not None:  # each event with its own response bytes, whatever was trimmed
        assert found.frames == [pb.WatchRunResponse(event=e).SerializeToString() for e in found]
    assert channel.committed_seq == (commits[-1][1] if commits else 10)
    assert channel.next_seq == 11  # numbering is the writer's: commits do not move it


async def test_a_commit_wakes_the_watchers_and_a_terminal_one_ends_the_channel() -> None:
    channel = RunChannel("r", last_seq=0, epoch=3)
    assert (channel.epoch, channel.ended) == (3, False)
    waiting = asyncio.ensure_future(channel.wait_changed())
    await asyncio.sleep(0)
    assert not waiting.done()
    channel.commit(events(1, 2), terminal=False)
    await asyncio.wait_for(waiting, 1)
    assert not channel.ended
    channel.commit(events(3, 3), terminal=True)
    assert (channel.finished, channel.ended, channel.committed_seq) == (True, True, 3)


@pytest.mark.parametrize(
    ("moved", "error", "ended_as"),
    [(True, None, (True, None)), (False, DataCorrupt("event 3 of run r is unreadable"), (False, "event 3"))],
    ids=["moved", "error"],
)
async def test_a_closed_channel_wakes_its_watchers_and_says_why(
    moved: bool, error: DataCorrupt | None, ended_as: tuple[bool, str | None]
) -> None:
    channel = RunChannel("r", last_seq=5)
    waiting = asyncio.ensure_future(channel.wait_changed())
    await asyncio.sleep(0)
    channel.close(moved=moved, error=error)
    await asyncio.wait_for(waiting, 1)
    assert channel.ended
    assert not channel.finished
    said = None if channel.error is None else channel.error.public_message[:7]
    assert (channel.moved, said) == ended_as
    # A later close adds nothing it already has: a move stays a move, the first error stays the error.
    later = DataCorrupt("another")
    channel.close(error=later)
    assert channel.moved == moved
    assert channel.error is (error or later)
