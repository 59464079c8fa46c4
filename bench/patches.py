"""Other configurations of the server process, applied only when asked (`--try`), to measure a change.

A change to the server is measured here before it is made, and what an adopted change bought stays
measurable by trying its alternative. Measured this way and then made the server's own behaviour: multi-row
INSERTs (store/sqlite.py), raw SSE parsing (providers/openai_provider.py), a 1 ms switch interval and GC
freezing (server.tune_runtime), the SDKs' aiohttp transport (providers/transport.py) and uvloop's event loop
(server.loop_factory). The "first" column of docs/benchmarks.md predates them. The alternatives kept:

- `httpx`: the SDKs' default HTTP transport (httpx2 over anyio) instead of their aiohttp transport.
- `asyncio`: asyncio's own event loop instead of uvloop's (FACILITAIR_EVENT_LOOP=asyncio).
"""

from __future__ import annotations

PATCHES = ("httpx", "asyncio")


def apply(names: list[str]) -> str:
    """Apply the named patches to this process; return the event loop setting to serve with."""
    loop = "auto"
    for name in names:
        if name == "httpx":
            _sdk_default_transport()
        elif name == "asyncio":
            loop = "asyncio"
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
