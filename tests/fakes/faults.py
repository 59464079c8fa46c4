"""What a fake vendor answers: a scripted `Reply`, and the `Fault` that makes it fail as real servers fail."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["http_status", "hang_up", "error_event", "reset", "stall", "truncate", "wrong_shape", "no_terminal"]


@dataclass
class Fault:
    """What goes wrong in one reply; build it with the classmethods."""

    kind: FaultKind
    after_chunks: int = 0
    status: int = 500
    retry_after: float | None = None
    stall_seconds: float = 3600.0
    rst: bool = True
    payload: str = ""

    @classmethod
    def http_status(cls, status: int, retry_after: float | None = None) -> Fault:
        """Answer the request with this HTTP status and the vendor's error body instead of a stream."""
        return cls(kind="http_status", status=status, retry_after=retry_after)

    @classmethod
    def hang_up(cls) -> Fault:
        """Drop the connection (an RST) on the request, before any response: a crashed vendor edge."""
        return cls(kind="hang_up")

    @classmethod
    def error_event(cls, after_chunks: int) -> Fault:
        """Send the vendor's error event after `after_chunks` text chunks, then end the body and close."""
        return cls(kind="error_event", after_chunks=after_chunks)

    @classmethod
    def reset(cls, after_chunks: int, *, rst: bool = True) -> Fault:
        """Drop the TCP connection mid-body after `after_chunks` text chunks: an RST, or a bare FIN with `rst=False`."""
        return cls(kind="reset", after_chunks=after_chunks, rst=rst)

    @classmethod
    def stall(cls, after_chunks: int, seconds: float = 3600.0) -> Fault:
        """Say nothing for `seconds` after `after_chunks` text chunks, keeping the connection open, then go on."""
        return cls(kind="stall", after_chunks=after_chunks, stall_seconds=seconds)

    @classmethod
    def truncate(cls, after_chunks: int) -> Fault:
        """End the body cleanly after `after_chunks` text chunks, without the finish, usage or terminal event."""
        return cls(kind="truncate", after_chunks=after_chunks)

    @classmethod
    def wrong_shape(cls, after_chunks: int, payload: str) -> Fault:
        """Insert an event whose data is `payload` (valid JSON, not a chunk) after `after_chunks` text chunks.

        What a proxy or gateway in between may produce: `[]`, `7`, `null`, `{"choices": ["x"]}`. The stream
        goes on normally afterwards, so only a client that checks each chunk's shape notices.
        """
        return cls(kind="wrong_shape", after_chunks=after_chunks, payload=payload)

    @classmethod
    def no_terminal(cls) -> Fault:
        """Send every text chunk, the finish and the usage, then end the body without `[DONE]` / message_stop."""
        return cls(kind="no_terminal", after_chunks=1 << 30)


@dataclass
class Reply:
    """One scripted streamed response.

    `input_tokens` is what the vendor puts in its input field: OpenAI's `prompt_tokens` counts the cached part
    (`cache_read_tokens` becomes `prompt_tokens_details.cached_tokens`, at most `input_tokens`), Anthropic's
    `input_tokens` does not (the cache fields of `message_start` come beside it).
    """

    chunks: list[str]
    input_tokens: int = 11
    output_tokens: int | None = None
    finish_reason: str | None = None
    first_chunk_delay: float = 0.0
    chunk_delay: float = 0.0
    hold_after: int | None = None
    release: asyncio.Event | None = None
    # Further holds, each after its number of chunks until its event is set: a test that must see text grow
    # step by step lets it grow one step at a time, whatever the machine's load.
    steps: tuple[tuple[int, asyncio.Event], ...] = ()
    fault: Fault | None = None
    # Write each text event in two parts, split inside its JSON, so that a client reads partial lines.
    split_events: bool = False
    # Prompt caching, reported only when set: tokens read from the cache, and tokens written to it.
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    # False: an OpenAI-compatible endpoint that sends no usage chunk even when asked for one.
    report_usage: bool = True

    def __post_init__(self) -> None:
        """Give a holding reply its own `release` event when the test did not pass one."""
        # Without an event a held stream could only be ended by stop(); creating it here lets a test write
        # `reply.release.set()` without building the event first (asyncio.Event binds to a loop only when awaited).
        if self.hold_after is not None and self.release is None:
            self.release = asyncio.Event()


Responder = Callable[[dict[str, Any]], Reply | Awaitable[Reply]]
