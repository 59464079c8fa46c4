"""The HTTP transport under both SDKs: aiohttp, and how its errors are classified.

Both SDKs default to httpx2 over anyio (pure-Python HTTP parsing and a cancel scope per read). With 200
streams at 25 tokens/s that receive path was 48 % of the event loop's time and the server fell behind
(bench/README). Each SDK ships an aiohttp transport (`DefaultAioHttpClient`, C parser); the SDKs'
behaviour above the transport (auth, headers, status errors, timeouts) is unchanged.
"""

from __future__ import annotations

import asyncio

import aiohttp
import httpx2

from facilitair.server.errors import ProviderFailure

_CHAIN_DEPTH = 8  # an SDK error, httpx2's, aiohttp's, the OS's: a cycle or a deeper chain is not ours


def transport_failure(exc: BaseException) -> ProviderFailure | None:
    """TIMEOUT or CONNECTION for an error raised by the transport, None for anything else.

    The aiohttp transport re-raises aiohttp's errors as httpx2's, and not always as the same kind (a
    server that drops the connection becomes httpx2.ConnectTimeout), so the aiohttp error in the
    chain decides when there is one; then httpx2's, which the SDKs wrap in their own.
    """
    seen: BaseException | None = exc
    transport: ProviderFailure | None = None
    for _ in range(_CHAIN_DEPTH):
        if seen is None:
            break
        if isinstance(seen, aiohttp.ClientError):
            return ProviderFailure.TIMEOUT if isinstance(seen, asyncio.TimeoutError) else ProviderFailure.CONNECTION
        if transport is None and isinstance(seen, httpx2.TimeoutException):
            transport = ProviderFailure.TIMEOUT
        elif transport is None and isinstance(seen, httpx2.TransportError):
            transport = ProviderFailure.CONNECTION
        seen = seen.__cause__ or seen.__context__
    return transport
