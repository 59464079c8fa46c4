"""The HTTP transport under both SDKs: aiohttp, how its errors are classified, and stale pooled connections.

Both SDKs default to httpx2 over anyio (pure-Python HTTP parsing and a cancel scope per read). With 200
streams at 25 tokens/s that receive path was 48 % of the event loop's time and the server fell behind
(docs/benchmarks.md). Each SDK ships an aiohttp transport (`DefaultAioHttpClient`, C parser); the SDKs'
behaviour above the transport (auth, headers, status errors, timeouts) is unchanged.

Real OpenAI- and Anthropic-compatible servers answer a stream with `Connection: keep-alive` and then
close the connection after its last chunk. aiohttp pools the connection before the close is seen, and
the next request, taken from the pool, is refused by the closing socket before any byte of it is sent
("Cannot write to closing transport"). aiohttp re-sends such a request by itself only for idempotent
methods, and ours are POSTs, so `resend_if_stale` does it: the failed connection has been dropped, the
request goes out again on the next pooled connection or a new one, and no attempt of the stage is spent
on it, however many stale connections the pool holds: each one fails once and is closed, and the pool holds
at most POOL_CONNECTIONS, so that many re-sends plus one always reach a live or a new connection.
`force_close` on the connector would avoid the pool altogether, at the cost of a TCP and TLS handshake per
request even to servers that do keep connections alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import httpx2
import structlog

from facilitair.server.errors import ProviderFailure

log = structlog.get_logger(__name__)

T = TypeVar("T")

_CHAIN_DEPTH = 8  # an SDK error, httpx2's, aiohttp's, the OS's: a cycle or a deeper chain is not ours
# aiohttp's words when a write meets a transport already closing (aiohttp/http_writer.py): nothing was sent.
_CLOSING_TRANSPORT = "Cannot write to closing transport"
# The SDKs' own default pool limits, set explicitly on both clients because the first one bounds the re-sends:
# aiohttp holds at most max_connections connections (it ignores max_keepalive_connections).
POOL_CONNECTIONS = 1000
POOL_LIMITS = httpx2.Limits(max_connections=POOL_CONNECTIONS, max_keepalive_connections=100)


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first, at most _CHAIN_DEPTH of them."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < _CHAIN_DEPTH:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def transport_failure(exc: BaseException) -> ProviderFailure | None:
    """TIMEOUT or CONNECTION for an error raised by the transport, None for anything else.

    The aiohttp transport re-raises aiohttp's errors as httpx2's, and not always as the same kind (a
    server that drops the connection becomes httpx2.ConnectTimeout), so the aiohttp error in the
    chain decides when there is one; then httpx2's, which the SDKs wrap in their own.
    """
    transport: ProviderFailure | None = None
    for seen in _chain(exc):
        if isinstance(seen, aiohttp.ClientError):
            return ProviderFailure.TIMEOUT if isinstance(seen, asyncio.TimeoutError) else ProviderFailure.CONNECTION
        if transport is None and isinstance(seen, httpx2.TimeoutException):
            transport = ProviderFailure.TIMEOUT
        elif transport is None and isinstance(seen, httpx2.TransportError):
            transport = ProviderFailure.CONNECTION
    return transport


def never_sent(exc: BaseException) -> bool:
    """True when the request failed on a pooled connection that was already closing: not a byte of it left.

    aiohttp writes a request's headers and (small, in-memory) body in one write, and refuses that write
    when the socket is closing; a request refused there never reached the server, whatever it would have
    done with it. Any other failure may have reached it and is a real attempt.
    """
    return any(
        isinstance(seen, aiohttp.ClientConnectionResetError) and str(seen) == _CLOSING_TRANSPORT for seen in _chain(exc)
    )


async def resend_if_stale(send: Callable[[], Awaitable[T]], *, host: str) -> T:
    """Await `send()`, calling it again at once each time it failed before any byte reached the server.

    Such a failure is never an attempt, however many stale connections the pool holds: each is closed as it
    fails, so after as many re-sends as the pool can hold connections the request has met a live one or a new
    one. A failure past that is no stale pooled connection (a server closing new connections at once) and is
    raised like any other.
    """
    stale = 0
    while True:
        try:
            return await send()
        except Exception as exc:
            if stale >= POOL_CONNECTIONS or not never_sent(exc):
                raise
        stale += 1
        log.debug("provider_stale_connection", host=host, resends=stale)


def error_class(exc: BaseException) -> str:
    """The class name of the error at the bottom of the chain (e.g. ConnectionRefusedError), for logs."""
    return type(_chain(exc)[-1]).__name__


# A line longer than this is not an SSE event from a completions stream: the stream is broken.
MAX_LINE = 1 << 20


def split_lines(pending: bytes, received: bytes) -> tuple[list[bytes], bytes] | None:
    """The complete lines of an SSE body so far, and the unfinished rest; None when the rest is too long.

    A plain function on the per-chunk path (an async generator per layer was a measured cost). Events end
    with a blank line and fields with \n; a \r before it goes with the caller's strip().
    """
    *lines, rest = (pending + received).split(b"\n")
    return None if len(rest) > MAX_LINE else (lines, rest)
