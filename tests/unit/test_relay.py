"""Coalescing (events/relay.py): runs of one stage's token deltas joined, everything else passed as it is."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from facilitair.server.events.relay import coalesce_tokens
from facilitair.v1 import orchestrator_pb2 as pb


def log(spec: str) -> list[pb.RunEvent]:
    """Events from a compact spec: "1a 1b H 2c" is stage 1 tokens "a", "b", a heartbeat, stage 2 token "c"."""
    out = []
    for seq, item in enumerate(spec.split(), start=1):
        when = Timestamp(seconds=1000 + seq)
        if item == "H":
            out.append(pb.RunEvent(run_id="r", seq=seq, time=when, heartbeat=pb.Heartbeat()))
        else:
            delta = pb.TokenDelta(stage=int(item[0]), text=item[1:])
            out.append(pb.RunEvent(run_id="r", seq=seq, time=when, token_delta=delta))
    return out


def shown(events: list[pb.RunEvent]) -> list[str]:
    """Each event as "first_seq-seq:stage:text" (a token) or "seq:H"."""
    out = []
    for e in events:
        if e.WhichOneof("payload") == "heartbeat":
            out.append(f"{e.seq}:H")
        else:
            out.append(f"{e.first_seq}-{e.seq}:{e.token_delta.stage}:{e.token_delta.text}")
    return out


COALESCE = [
    ("empty", "", []),
    ("one-token", "1a", ["0-1:1:a"]),
    ("one-other", "H", ["1:H"]),
    ("two-tokens-join", "1a 1b", ["1-2:1:ab"]),
    ("a-run-of-three", "1a 1b 1c", ["1-3:1:abc"]),
    ("a-lone-token-stays-as-it-is", "1a H 1b", ["0-1:1:a", "2:H", "0-3:1:b"]),
    ("an-event-splits-runs", "1a 1b H 1c 1d", ["1-2:1:ab", "3:H", "4-5:1:cd"]),
    ("a-new-stage-splits-runs", "1a 1b 2c 2d", ["1-2:1:ab", "3-4:2:cd"]),
    ("a-stage-of-one-between", "1a 2b 1c", ["0-1:1:a", "0-2:2:b", "0-3:1:c"]),
    ("others-only", "H H", ["1:H", "2:H"]),
    ("tokens-last", "H 1a 1b", ["1:H", "2-3:1:ab"]),
    ("empty-texts-count", "1 1b", ["1-2:1:b"]),
]


@pytest.mark.parametrize(("spec", "expected"), [r[1:] for r in COALESCE], ids=[r[0] for r in COALESCE])
def test_runs_of_one_stages_tokens_are_joined_and_cover_every_seq(spec: str, expected: list[str]) -> None:
    events = log(spec)
    before = [e.SerializeToString() for e in events]
    joined = coalesce_tokens(events)
    assert shown(joined) == expected
    assert [e.SerializeToString() for e in events] == before, "the watchers' shared events are never changed"
    covered = [s for e in joined for s in range(e.first_seq or e.seq, e.seq + 1)]
    assert covered == [e.seq for e in events]
    for e in joined:  # a joined event takes the time of the last event it joins, and the run's id
        assert e.time.seconds == 1000 + e.seq
        assert e.run_id == "r"


def test_events_that_join_nothing_are_passed_as_the_same_objects() -> None:
    events = log("1a H 2b")
    assert all(a is b for a, b in zip(coalesce_tokens(events), events, strict=True))
