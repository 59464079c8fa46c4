"""The one reader of OpenAI-format streams (providers/chat_chunks.py), fed bytes as a network delivers them.

Both the OpenAI provider and the local engine's use it; their own tests (test_fake_providers.py,
test_local_chunks.py) cover it through real HTTP. Here: what no single HTTP test can pin down, the way a read's
bytes are cut (a chunk across reads, several chunks in one read) and what a broken chunk leaves of the text
before it.
"""

from __future__ import annotations

import json

import pytest

from facilitair.server.errors import ProviderError, ProviderFailure
from facilitair.server.providers.base import UsageReport
from facilitair.server.providers.chat_chunks import ChatChunks


def sse(*chunks: object) -> bytes:
    """A stream body: each chunk as a `data:` event (a string as it is), then [DONE]."""
    events = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n" for c in chunks]
    return ("".join(events) + ": keep-alive\n\ndata: [DONE]\n\n").encode()


def delta(text: str, finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


USAGE = {
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2}},
}
BODY = sse(delta("Hel"), delta("lo"), delta("!", "stop"), USAGE)


def read(body: bytes, size: int, reader: ChatChunks) -> list[object]:
    """Everything the reader hands on when `body` arrives `size` bytes at a time."""
    out: list[object] = []
    for start in range(0, len(body), size):
        out += reader.feed(body[start : start + size])
        if reader.done:
            break
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 1 << 20], ids=["byte by byte", "7 bytes", "64 bytes", "all at once"])
def test_the_same_items_however_the_bytes_are_cut(size: int) -> None:
    reader = ChatChunks("openai", "m")
    assert read(BODY, size, reader) == ["Hel", "lo", "!", UsageReport(7, 3, cache_read_tokens=2)]
    assert reader.end() == "stop"
    assert reader.usage == (7, 3, 2)


def test_a_reader_that_does_not_report_usage_keeps_it_for_the_end() -> None:
    reader = ChatChunks("local", "m", report_usage=False)
    assert read(BODY, 1 << 20, reader) == ["Hel", "lo", "!"]
    assert (reader.end(until_done=False), reader.usage) == ("stop", (7, 3, 2))


@pytest.mark.parametrize(
    "bad",
    ["[]", "not json", {"choices": ["x"]}, {"choices": [{"delta": {"content": 5}}]}, {"error": {"message": "x"}},
     {"choices": [], "usage": {"prompt_tokens": "3", "completion_tokens": 1}}],
    ids=["a list", "not JSON", "a string choice", "a number as text", "an error event", "usage of strings"],
)  # fmt: skip
def test_text_before_a_broken_chunk_in_the_same_read_is_handed_on_then_the_stream_is_broken(bad: object) -> None:
    # The text counts in the cut-off attempt's usage estimate (test_partial_usage.py), as when it came alone.
    reader = ChatChunks("openai", "m")
    assert reader.feed(sse(delta("Hel"), bad, delta("lo", "stop"))) == ["Hel"]
    assert reader.done
    with pytest.raises(ProviderError) as caught:
        reader.end()
    assert caught.value.kind is ProviderFailure.STREAM_BROKEN


def test_a_broken_chunk_with_no_text_before_it_raises_at_once() -> None:
    reader = ChatChunks("openai", "m")
    with pytest.raises(ProviderError):
        reader.feed(sse("null"))


@pytest.mark.parametrize("until_done", [True, False])
def test_a_stream_cut_short_is_broken(until_done: bool) -> None:
    reader = ChatChunks("openai", "m")
    reader.feed(sse(delta("Hel"), delta("lo")).split(b"data: [DONE]")[0])
    with pytest.raises(ProviderError):
        reader.end(until_done=until_done)  # no finish reason
    finished = ChatChunks("openai", "m")
    finished.feed(sse(delta("Hel", "stop")).split(b"data: [DONE]")[0])
    if until_done:
        with pytest.raises(ProviderError):
            finished.end()  # a finish reason but no [DONE]: OpenAI's rule
    else:
        assert finished.end(until_done=False) == "stop"  # the local engine's rule


def test_a_line_past_the_limit_is_a_broken_stream() -> None:
    reader = ChatChunks("openai", "m")
    with pytest.raises(ProviderError):
        reader.feed(b"data: " + b"x" * (1 << 21))
