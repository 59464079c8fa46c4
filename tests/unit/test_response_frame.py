"""wire.response_frame: the response bytes a watcher is sent, made once per committed event from its stored bytes."""

from __future__ import annotations

import pytest

from facilitair.server.events.channel import Committed
from facilitair.server.events.wire import response_frame
from facilitair.v1 import orchestrator_pb2 as pb


# Texts whose events' lengths fall on each side of the varint's one-, two- and three-byte boundaries.
@pytest.mark.parametrize("text_length", [0, 1, 60, 100, 127, 128, 200, 16_300, 16_400, 3_000_000])
def test_the_frame_is_the_bytes_of_both_responses_carrying_the_event(text_length: int) -> None:
    event = pb.RunEvent(run_id="run-1", seq=7, token_delta=pb.TokenDelta(stage=2, text="x" * text_length))
    event.time.FromNanoseconds(1_765_000_000_123_456_789)
    frame = response_frame(event.SerializeToString())
    assert frame == pb.CollaborateResponse(event=event).SerializeToString()
    assert frame == pb.WatchRunResponse(event=event).SerializeToString()
    assert pb.CollaborateResponse.FromString(frame).event == event


def test_an_empty_event_is_a_response_with_an_empty_event() -> None:
    frame = response_frame(b"")
    assert frame == b"\x0a\x00"
    assert pb.WatchRunResponse.FromString(frame).HasField("event")


def test_events_read_from_the_store_are_framed_only_when_asked() -> None:
    events = [pb.RunEvent(run_id="run-1", seq=s, heartbeat=pb.Heartbeat(stage=1)) for s in (1, 2)]
    blobs = [e.SerializeToString() for e in events]
    read = Committed(events, stored=blobs)
    assert read._frames is None  # a coalescing watcher never asks: nothing framed
    assert read.frames == [pb.WatchRunResponse(event=e).SerializeToString() for e in events]
    assert read.frames is read.frames  # framed once, then shared
