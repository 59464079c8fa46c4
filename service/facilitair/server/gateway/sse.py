"""`GET /v1/runs/{id}/events`: a run's events as a server-sent event stream, read from the same log as WatchRun.

One SSE message per event: `id:` its seq, `event:` its payload's kind, `data:` the RunEvent in canonical JSON
(one line: JSON escapes every newline). `retry:` comes first. A client resumes from max(?after_seq,
Last-Event-ID), so an EventSource that reconnects by itself gets exactly what it missed; `?coalesce=1` joins
token deltas by the rule of `coalesce_tokens` (a joined event's `id:` is the seq of the last delta it holds,
so resuming from it leaves no gap and repeats nothing). The stream ends after the terminal event; a reconnect
at or past the end of a finished run gets 204, which tells an EventSource to stop.

A comment line goes out when nothing was sent for KEEPALIVE_SECONDS (a proxy or a NAT drops a silent
connection). A peer that is gone is found on the next write, and aiohttp cancels the handler as soon as the
connection closes: either way the watcher is released at once (the `finally` below).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import structlog
from aiohttp import web
from google.protobuf import json_format

from facilitair.server import metrics
from facilitair.server.domain import FINISHED_STATES
from facilitair.server.errors import InvalidArgument
from facilitair.server.events.relay import coalesce_tokens
from facilitair.server.runs.service import RunService
from facilitair.server.transport import requests
from facilitair.server.transport.status import error_body
from facilitair.v1 import orchestrator_pb2 as pb

log = structlog.get_logger(__name__)

# The reconnection delay an EventSource uses after a dropped connection, in milliseconds.
RETRY_MS = 1000
# A comment line after this long without a message.
KEEPALIVE_SECONDS = 15.0
KEEPALIVE = b": keepalive\n\n"
HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    # nginx buffers responses by default, which would hold the stream back.
    "X-Accel-Buffering": "no",
}
# The largest seq a client can name (an int64's range, as in WatchRunRequest.after_seq).
MAX_SEQ = 2**63 - 1


def message(event: pb.RunEvent) -> bytes:
    """One SSE message for an event."""
    data = json.dumps(json_format.MessageToDict(event), separators=(",", ":"), ensure_ascii=False)
    return f"id: {event.seq}\nevent: {event.WhichOneof('payload')}\ndata: {data}\n\n".encode()


def resume_point(request: web.Request) -> int:
    """max(?after_seq, Last-Event-ID): the last seq the client has (0: none)."""
    after = _seq(request.query.get("after_seq"), "after_seq")
    last_id = _seq(request.headers.get("Last-Event-ID"), "Last-Event-ID")
    return max(after, last_id)


def _seq(text: str | None, field: str) -> int:
    if text is None or text == "":
        return 0
    # isascii too: str.isdigit also takes "²", which int() refuses, and "١٢", which it reads as 12.
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_SEQ:
        raise InvalidArgument(field, "must be an event's seq (a whole number, 0 or more)")
    return int(text)


def wants_coalescing(request: web.Request) -> bool:
    """?coalesce=1 (or true) asks for token deltas joined."""
    value = request.query.get("coalesce", "0").lower()
    if value not in ("0", "1", "true", "false", ""):
        raise InvalidArgument("coalesce", "must be 1 or 0")
    return value in ("1", "true")


async def stream_events(request: web.Request, runs: RunService, principal: str) -> web.StreamResponse:
    """Answer the events request: 204 past the end, else the stream from the resume point to the run's end."""
    after_seq = resume_point(request)
    coalesce = wants_coalescing(request)
    run = await runs.get_run(requests.run_id_of(request.match_info["run_id"]), principal)
    if run.state in FINISHED_STATES and after_seq >= run.last_seq:
        return web.Response(status=204, headers={"Cache-Control": "no-cache"})
    batches = await runs.watch(run.run_id, after_seq, principal)  # OutOfRange past the end of a live run
    response = web.StreamResponse(headers=HEADERS)
    await response.prepare(request)
    sent = metrics.MESSAGES_SENT.labels("http_events")
    metrics.WATCHERS_ACTIVE.inc()
    writer = _Writer(response)
    complete = False
    try:
        await writer.write(f"retry: {RETRY_MS}\n\n".encode())
        async for batch in batches:
            events = coalesce_tokens(batch) if coalesce else batch
            await writer.write(b"".join([message(event) for event in events]))
            sent.inc(len(events))
        complete = True
    except (ConnectionError, asyncio.CancelledError):
        raise  # the peer is gone (or the server stops): the finally releases the watcher
    except Exception as exc:  # noqa: BLE001 - the status line is sent: the error goes in the stream
        await writer.error(exc)
    finally:
        await writer.close()
        with contextlib.suppress(Exception):
            await batches.aclose()  # type: ignore[attr-defined]
        metrics.WATCHERS_ACTIVE.dec()
        log.info("stream_closed", complete=complete)
    return response


class _Writer:
    """Writes messages, and a comment when nothing was written for KEEPALIVE_SECONDS."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._last = loop.time()
        self._keepalive = loop.create_task(self._keep_alive())

    async def write(self, data: bytes) -> None:
        self._last = self._loop.time()  # one attribute store per batch: nothing per token
        await self._response.write(data)

    async def error(self, exc: BaseException) -> None:
        """A failure after the stream began: one `stream_error` message with the JSON error body, then the end."""
        data = json.dumps(error_body(exc), separators=(",", ":"))
        with contextlib.suppress(ConnectionError):
            await self.write(f"event: stream_error\ndata: {data}\n\n".encode())

    async def close(self) -> None:
        self._keepalive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._keepalive

    async def _keep_alive(self) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(self._last + KEEPALIVE_SECONDS - self._loop.time())
                if self._loop.time() - self._last >= KEEPALIVE_SECONDS:
                    await self.write(KEEPALIVE)
