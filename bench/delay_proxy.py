"""A TCP proxy that puts a network hop between the server and PostgreSQL (issue 26: `--db-rtt MS`).

Each direction's bytes are held for half the round-trip time, then passed on in order; bytes that follow
each other closely stay close (a queue per direction, not one sleep per read in series), so the delay adds
latency, not a bandwidth limit. It also counts round trips: a turn is a client's send that follows an
answer from the server (or opens the connection), which is how many times the client waited for the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
from collections.abc import AsyncIterator

# Bytes read at once per direction (the kernel's socket buffer gives no more anyway).
CHUNK = 65536


class DelayProxy:
    """127.0.0.1:<port> -> `host:port`, each way delayed by rtt/2."""

    def __init__(self, host: str, port: int, rtt_ms: float) -> None:
        self._upstream = (host, port)
        self._half = rtt_ms / 2000
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0
        # Round trips the clients made through this proxy (see the module's docstring).
        self.turns = 0

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every proxied connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            server_r, server_w = await asyncio.open_connection(*self._upstream)
        except OSError:
            client_w.close()
            self._tasks.discard(task)
            return
        # Which side spoke last on this connection: a client send after the server's is a new round trip.
        last = ["server"]
        try:
            await asyncio.gather(
                self._pump(client_r, server_w, "client", last), self._pump(server_r, client_w, "server", last)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (client_w, server_w):
                w.close()
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, side: str, last: list[str]
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                if side == "client" and data and last[0] == "server":
                    self.turns += 1
                if data:
                    last[0] = side
                queue.put_nowait((time.monotonic() + self._half, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender


@contextlib.asynccontextmanager
async def delayed(url: str, rtt_ms: float) -> AsyncIterator[tuple[str, DelayProxy]]:
    """The PostgreSQL `url` rewritten to go through a new DelayProxy, and the proxy."""
    parts = urllib.parse.urlsplit(url)
    proxy = DelayProxy(parts.hostname or "127.0.0.1", parts.port or 5432, rtt_ms)
    await proxy.start()
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    try:
        yield urllib.parse.urlunsplit(parts._replace(netloc=new)), proxy
    finally:
        await proxy.stop()
