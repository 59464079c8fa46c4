"""Token coalescing (`coalesce_tokens`): the merge function, and what watchers receive end to end.

A coalesced message joins consecutive token deltas of one stage: its text is theirs concatenated, `seq` the last
one's and `first_seq` the first one's. The checks: the ranges [first_seq or seq .. seq] tile 1..N with no gap and
no overlap, each stage's text is the same as without coalescing, and every other event is unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from facilitair.client import RunEvent
from facilitair.server.events.relay import coalesce_tokens
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.events import RunStream, collect, kind, stage_text
from tests.harness.scripts import held, scripted
from tests.harness.servers import ServerFactory

RUN_ID = "00000000-0000-0000-0000-000000000001"
CODER_CHUNKS = [f"tok{i} " for i in range(400)]


def token(seq: int, stage: int, text: str) -> pb.RunEvent:
    event = pb.RunEvent(run_id=RUN_ID, seq=seq, token_delta=pb.TokenDelta(stage=stage, text=text))
    event.time.FromNanoseconds(1_000_000_000 + seq)
    return event


def other(seq: int, stage: int) -> pb.RunEvent:
    event = pb.RunEvent(run_id=RUN_ID, seq=seq, heartbeat=pb.Heartbeat(stage=stage))
    event.time.FromNanoseconds(1_000_000_000 + seq)
    return event


def ranges(events: Sequence[RunEvent]) -> list[tuple[int, int]]:
    """The seq range each message covers."""
    return [(e.first_seq or e.seq, e.seq) for e in events]


def assert_tiles(events: Sequence[RunEvent], first: int, last: int) -> None:
    """The messages' ranges cover first..last in order, each seq exactly once."""
    expected = first
    for low, high in ranges(events):
        assert low == expected, f"range {low}..{high} after {expected - 1}"
        assert high >= low
        expected = high + 1
    assert expected == last + 1


def texts_by_stage(events: Sequence[RunEvent]) -> dict[int, str]:
    out: dict[int, str] = {}
    for e in events:
        if kind(e) == "token_delta":
            out[e.token_delta.stage] = out.get(e.token_delta.stage, "") + e.token_delta.text
    return out


# ----- the merge function ------------------------------------------------------------------------------------------


def test_empty_and_single_are_returned_as_they_are() -> None:
    assert coalesce_tokens([]) == []
    one = [token(1, 1, "a")]
    assert coalesce_tokens(one) is one


def test_run_of_tokens_joins_with_first_and_last_seq() -> None:
    events = [token(5, 2, "a"), token(6, 2, "bc"), token(7, 2, "")]
    [joined] = coalesce_tokens(events)
    assert joined.token_delta == pb.TokenDelta(stage=2, text="abc")
    assert (joined.first_seq, joined.seq) == (5, 7)
    assert joined.time == events[-1].time
    assert joined.run_id == RUN_ID


def test_never_joins_across_other_events_or_stages() -> None:
    events = [
        token(1, 1, "a"),
        token(2, 1, "b"),
        other(3, 1),
        token(4, 1, "c"),
        token(5, 2, "d"),
        token(6, 2, "e"),
        token(7, 1, "f"),
    ]
    out = coalesce_tokens(events)
    assert ranges(out) == [(1, 2), (3, 3), (4, 4), (5, 6), (7, 7)]
    assert [e.token_delta.text for e in out if kind(e) == "token_delta"] == ["ab", "c", "de", "f"]
    # What joins nothing is the very same object, first_seq unset.
    assert out[1] is events[2]
    assert out[2] is events[3]
    assert out[2].first_seq == 0
    assert out[4] is events[6]


def test_inputs_are_not_modified() -> None:
    events = [token(1, 1, "a"), token(2, 1, "b")]
    before = [e.SerializeToString() for e in events]
    coalesce_tokens(events)
    assert [e.SerializeToString() for e in events] == before


_items = st.lists(
    st.tuples(st.booleans(), st.integers(1, 3), st.text(max_size=4)),
    max_size=40,
)


@given(_items)
def test_property_tiles_and_keeps_text_and_other_events(items: list[tuple[bool, int, str]]) -> None:
    events = [
        token(i, stage, text) if is_token else other(i, stage) for i, (is_token, stage, text) in enumerate(items, 1)
    ]
    out = coalesce_tokens(events)
    assert_tiles(out, 1, len(events))
    assert texts_by_stage(out) == texts_by_stage(events)
    assert [e for e in out if kind(e) != "token_delta"] == [e for e in events if kind(e) != "token_delta"]
    for e in out:
        assert e.first_seq == 0 or (kind(e) == "token_delta" and e.first_seq < e.seq)
    # Maximal: two neighbours in the output are never both token deltas of the same stage.
    for a, b in itertools.pairwise(out):
        assert not (kind(a) == kind(b) == "token_delta" and a.token_delta.stage == b.token_delta.stage)


# ----- end to end --------------------------------------------------------------------------------------------------


def first_coder_token(event: RunEvent) -> bool:
    return kind(event) == "token_delta" and event.token_delta.stage == 2


async def test_coalescing_watchers_get_fewer_messages_with_the_same_events(make_server: ServerFactory) -> None:
    reply, release = held(Reply(chunks=list(CODER_CHUNKS)), after=1)
    async with FakeOpenAI(scripted(coder=reply)) as fake:
        h = await make_server(openai=fake)
        async with RunStream(h.client.collaborate("count to 400", coalesce_tokens=True)) as starter:
            first = await starter.until(first_coder_token)
            # Both watchers replay up to the held point, so they are attached before the release.
            async with (
                RunStream(h.client.watch(first.run_id)) as plain,
                RunStream(h.client.watch(first.run_id, coalesce_tokens=True)) as joined,
            ):
                await plain.until(first_coder_token)
                await joined.until(first_coder_token)
                release.set()
                plain_events = await plain.to_end()
                joined_events = await joined.to_end()
            starter_events = await starter.to_end()

    last = plain_events[-1].seq
    assert kind(plain_events[-1]) == "run_completed"
    assert ranges(plain_events) == [(s, s) for s in range(1, last + 1)]
    assert stage_text(plain_events, 2) == "".join(CODER_CHUNKS)
    plain_others = [e for e in plain_events if kind(e) != "token_delta"]
    for events in (joined_events, starter_events):
        assert_tiles(events, 1, last)
        assert texts_by_stage(events) == texts_by_stage(plain_events)
        assert [e for e in events if kind(e) != "token_delta"] == plain_others
        tokens = [e for e in events if kind(e) == "token_delta"]
        assert len(tokens) < len(CODER_CHUNKS)
        assert all(e.first_seq < e.seq for e in tokens if e.first_seq)


async def test_replay_after_a_seq_coalesces_only_what_follows_it(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted(coder=Reply(chunks=list(CODER_CHUNKS)))) as fake:
        h = await make_server(openai=fake)
        everything = await h.run("count to 400")
        run_id = everything[0].run_id
        last = everything[-1].seq
        middle = next(e.seq for e in everything if first_coder_token(e)) + 10
        replayed = await collect(h.client.watch(run_id, after_seq=middle, coalesce_tokens=True))
        whole = await collect(h.client.watch(run_id, coalesce_tokens=True))

    assert_tiles(replayed, middle + 1, last)
    assert_tiles(whole, 1, last)
    # A finished run is read from the store a page at a time: the coder's 400 deltas join into one message.
    assert len([e for e in whole if first_coder_token(e)]) == 1
    assert texts_by_stage(whole) == texts_by_stage(everything)
    assert stage_text(replayed, 2) == "".join(CODER_CHUNKS[11:])
