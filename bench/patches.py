"""Changes proposed for files outside the harness, applied to the server process only when asked (`--try`).

They let the harness measure a proposal before it is made. Measured this way and then made the server's
own behaviour: multi-row INSERTs (store/sqlite.py), raw SSE parsing (providers/openai_provider.py), a 1 ms
switch interval and GC freezing (server.tune_runtime); the README's "before" column predates them. Left here:

- `uvloop`: the server's event loop is uvloop's (libuv) instead of asyncio's default; grpc.aio and httpx both
  run on it. Needs `pip install uvloop` (the `bench` extra). Not adopted: a further dependency for a few
  percent in these measurements.
"""

from __future__ import annotations

import asyncio

PATCHES = ("uvloop",)


def apply(names: list[str]) -> None:
    """Apply the named patches to this process."""
    for name in names:
        if name == "uvloop":
            import uvloop  # noqa: PLC0415 - optional, only for this patch

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        else:
            raise ValueError(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
