"""What a watcher is sent: committed events as they are, or with their token deltas coalesced."""

from __future__ import annotations

from facilitair.server.events.wire import RunEvent, joined_tokens


def coalesce_tokens(events: list[RunEvent]) -> list[RunEvent]:
    """Join each run of consecutive token_delta events of one stage into one event.

    The seq rule: a joined event has `seq` = the seq of the last event it joins and `first_seq` = the
    seq of the first; its text is their texts concatenated in order, its time the last one's and its
    run_id theirs. A token_delta that joins nothing, and every other event, is returned as it is
    (first_seq 0). So the ranges [first_seq or seq .. seq] of the result cover the seqs of `events`
    exactly, in order. Runs never cross another event or a change of stage. The input events are
    never modified (watchers share them); a joined event is a new one.
    """
    if len(events) < 2:
        return events
    out: list[RunEvent] = []
    texts: list[str] = []
    first: RunEvent | None = None  # the first token_delta of the pending run
    last: RunEvent | None = None  # the last one
    stage = -1
    for event in events:
        if event.WhichOneof("payload") == "token_delta":
            delta = event.token_delta
            if first is not None and delta.stage == stage:
                if not texts:  # a second delta: the run becomes a join (a lone one is sent as it is)
                    texts.append(first.token_delta.text)
                texts.append(delta.text)
                last = event
                continue
            if first is not None:
                out.append(_joined(first, last, texts) if texts else first)
            first, last, stage, texts = event, event, delta.stage, []
            continue
        if first is not None:
            out.append(_joined(first, last, texts) if texts else first)
            first = None
        out.append(event)
    if first is not None:
        out.append(_joined(first, last, texts) if texts else first)
    return out


def _joined(first: RunEvent, last: RunEvent | None, texts: list[str]) -> RunEvent:
    """One token_delta with the texts of the run from `first` to `last`."""
    assert last is not None
    return joined_tokens(first, last, "".join(texts))
