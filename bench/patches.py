"""Other configurations of the server process, applied only when asked (`--try`), to measure a change.

A change to the server is measured here before it is made, and what an adopted change bought stays
measurable by trying its alternative. Measured this way and then made the server's own behaviour: multi-row
INSERTs (store/sqlite.py), raw SSE parsing (providers/openai_provider.py), a 1 ms switch interval and GC
freezing (server.tune_runtime), the SDKs' aiohttp transport (providers/transport.py) and uvloop's event loop
(server.loop_factory), and each event's response serialised once for every watcher (events/wire.response_frame,
issue 26). The "first" column of docs/benchmarks.md predates them. The alternatives kept:

- `httpx`: the SDKs' default HTTP transport (httpx2 over anyio) instead of their aiohttp transport.
- `asyncio`: asyncio's own event loop instead of uvloop's (FACILITAIR_EVENT_LOOP=asyncio).
- `messages`: every watcher wraps each event in its response message and serialises it, as before issue 26,
  instead of sending the bytes made once as the event committed.
"""

from __future__ import annotations

PATCHES = ("httpx", "asyncio", "messages")


def apply(names: list[str]) -> str:
    """Apply the named patches to this process; return the event loop setting to serve with."""
    loop = "auto"
    for name in names:
        if name == "httpx":
            _sdk_default_transport()
        elif name == "asyncio":
            loop = "asyncio"
        elif name == "messages":
            _per_watcher_messages()
        else:
            raise ValueError(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
    return loop


def _sdk_default_transport() -> None:
    """OpenAIProvider's SDK client keeps its default httpx2 transport."""
    import openai  # noqa: PLC0415 - only for this patch

    from facilitair.server.providers import openai_provider  # noqa: PLC0415

    original = openai_provider.OpenAIProvider.__init__

    def init(self: openai_provider.OpenAIProvider, api_key: str, base_url: str | None, *, timeout: float) -> None:
        original(self, api_key, base_url, timeout=timeout)
        self._client = self._client.with_options(http_client=openai.DefaultAsyncHttpxClient(timeout=timeout))

    openai_provider.OpenAIProvider.__init__ = init  # type: ignore[method-assign]


def _per_watcher_messages() -> None:
    """The servicer sends each watcher a response message built from the event for it (then serialised by grpc)."""
    from collections.abc import AsyncIterator, Awaitable, Callable  # noqa: PLC0415
    from typing import Any  # noqa: PLC0415

    from facilitair.server.events.channel import Committed  # noqa: PLC0415
    from facilitair.server.transport import servicer  # noqa: PLC0415

    original = servicer.OrchestratorServicer._stream

    def stream(
        self: servicer.OrchestratorServicer,
        rpc: str,
        open_events: Callable[[], Awaitable[AsyncIterator[Committed]]],
        message: Callable[[Any], Any],
        **options: Any,
    ) -> Any:
        async def with_messages() -> AsyncIterator[Committed]:
            async def batches(events: AsyncIterator[Committed]) -> AsyncIterator[Committed]:
                async for batch in events:
                    yield Committed(batch, [message(e) for e in batch])  # the messages where the bytes were

            return batches(await open_events())

        return original(self, rpc, with_messages, message, **options)

    servicer.OrchestratorServicer._stream = stream  # type: ignore[method-assign]
