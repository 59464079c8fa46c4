"""The HTTP server, request log and fault machinery shared by the two vendor fakes.

Besides the scripted faults (`tests.fakes.faults`), a fake does by default what real servers do and the wire
formats do not say (seen against a real inference server): it answers a streamed request with
`Connection: keep-alive` and `Keep-Alive: timeout=5, max=100`, then closes the connection right after the
stream's last chunk. It can also stop listening for a while (a provider restarting) and refuse a request that
does not fit its context window, as a small local model does.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from aiohttp import web

from tests.fakes.faults import Fault, Reply, Responder

# Handlers still running when stop() is called are cut off by stop() itself; this only bounds the wait for
# whatever aiohttp is still finishing, so that a fake never holds a test up for aiohttp's default of 60 s.
_SHUTDOWN_TIMEOUT = 1.0
# What a local inference server answered with each stream it then closed (seen against a real one).
_KEEP_ALIVE_HEADERS = {"Connection": "keep-alive", "Keep-Alive": "timeout=5, max=100"}
# The fakes' tokenizer: a token is four characters, as the server's own estimates assume.
CHARS_PER_TOKEN = 4


@dataclass(eq=False)
class _Stream:
    """The state of one streamed response while its handler runs."""

    request: web.Request
    task: asyncio.Task[Any] | None
    id: str
    model: str
    # True once the last byte of the body was written: a client closing after that did not cut the stream short.
    finished: bool = False
    # True when the fake cut the connection itself (a reset fault or stop()): that is not a client disconnect.
    server_closed: bool = False


class _NoReplyError(Exception):
    """The script ran out, or the responder failed: answered as a 500 that the SDKs must not retry."""


def json_text(payload: Any) -> str:
    """Encode compactly, as the vendors do, keeping non-ASCII text as UTF-8 so clients must decode it."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _format_seconds(seconds: float) -> str:
    """Format a retry-after value: an integer when it is one, else the shortest float text."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


class FakeProvider:
    """The HTTP server, request log and fault machinery shared by the two vendor fakes."""

    # Set by each vendor subclass.
    vendor: ClassVar[str] = "provider"
    endpoint: ClassVar[str] = ""
    base_path: ClassVar[str] = ""
    request_id_header: ClassVar[str] = "x-request-id"
    default_finish_reason: ClassVar[str] = ""

    requests: list[dict[str, Any]]
    headers: list[dict[str, str]]
    peers: list[tuple[str, int]]
    disconnects: int
    chunks_sent: int
    api_key: str

    def __init__(
        self,
        responder: Responder | Sequence[Reply],
        *,
        api_key: str = "test-key",
        close_after_stream: bool = True,
        context_window: int | None = None,
    ) -> None:
        """Serve each request from `responder`, or from the sequence of replies in order.

        `close_after_stream` (the default, as real servers do) closes the connection after each streamed
        response although its headers say keep-alive. With `context_window` (tokens), a request whose prompt
        (at four characters a token) plus its `max_tokens` does not fit is refused with HTTP 400.
        """
        self._script: list[Reply] | None
        self._responder: Responder | None
        if isinstance(responder, Sequence):
            self._script = list(responder)
            self._responder = None
        else:
            self._script = None
            self._responder = responder
        self.api_key = api_key
        self.close_after_stream = close_after_stream
        self.context_window = context_window
        self.requests = []
        self.headers = []
        self.peers = []
        self.disconnects = 0
        self.chunks_sent = 0
        self._served = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port: int | None = None
        self._base_url: str | None = None
        self._live: set[_Stream] = set()
        self._stopping = False
        # Set on every disconnect; waiters clear it and re-check, so no one polls.
        self._disconnected = asyncio.Event()

    @property
    def base_url(self) -> str:
        """The URL to hand to the SDK as ``base_url``; valid after start()."""
        if self._base_url is None:
            raise RuntimeError(f"{type(self).__name__} is not started: call start() or use `async with`")
        return self._base_url

    @property
    def connections(self) -> int:
        """How many TCP connections the requests came on (a client port per connection)."""
        return len(set(self.peers))

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1 in the running event loop."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        app = web.Application()
        app.router.add_post(self.endpoint, self._handle)
        # handler_cancellation: aiohttp cancels a handler when its client goes away, which is the only way a
        # handler that is stalled or held (not writing) can learn that the client closed the stream.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT, access_log=None)
        await runner.setup()
        self._runner = runner
        self._stopping = False
        await self._listen(0)
        self._base_url = f"http://127.0.0.1:{self._port}{self.base_path}"

    async def _listen(self, port: int) -> None:
        """Accept connections on `port` of 127.0.0.1 (0: any free port)."""
        assert self._runner is not None
        # SO_REUSEADDR (asyncio's default on Unix) lets listen_again() bind the port its closed connections
        # still hold in TIME_WAIT, as a restarted server does.
        site = web.TCPSite(self._runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self._site = site
        self._port = self._runner.addresses[-1][1]

    async def stop_listening(self) -> None:
        """Go down as a killed server does: refuse new connections (the port is closed) and drop open ones."""
        site, self._site = self._site, None
        if site is None or self._runner is None:
            raise RuntimeError(f"{type(self).__name__} is not listening")
        await site.stop()
        self._cut_streams()
        server = self._runner.server
        if server is not None:
            for handler in server.connections:  # idle keep-alive connections die with the process too
                if handler.transport is not None:
                    handler.transport.abort()

    async def listen_again(self) -> None:
        """Come back up on the same port, after stop_listening()."""
        if self._site is not None or self._port is None:
            raise RuntimeError(f"{type(self).__name__} is listening already")
        await self._listen(self._port)

    def close_idle_connections(self, *, at_once: bool = True) -> int:
        """Close every kept-alive connection that serves no stream now, as a server's keep-alive timeout does.

        With `at_once` the FIN leaves in this call (a shutdown of the socket's sending side); otherwise it leaves
        when asyncio closes the socket, one turn of the event loop later. Either way the client learns of it only
        when its event loop next reads the socket, so a request it starts before that takes a pooled connection
        that is already closed. Returns how many were closed.
        """
        server = self._runner.server if self._runner is not None else None
        if server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        busy = {stream.request.transport for stream in self._live}
        idle = [
            handler.transport
            for handler in server.connections
            if handler.transport is not None and handler.transport not in busy and not handler.transport.is_closing()
        ]
        for transport in idle:
            sock = transport.get_extra_info("socket")
            if at_once and sock is not None:
                sock.shutdown(socket.SHUT_WR)
            transport.close()
        return len(idle)

    async def stop(self) -> None:
        """Cut every open stream and stop listening, without waiting for stalled or held replies."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._site = None
        self._stopping = True
        self._cut_streams()
        await runner.cleanup()

    def _cut_streams(self) -> None:
        """Abort every open stream and its handler: the fake, not the client, ended them."""
        for stream in list(self._live):
            stream.server_closed = True
            transport = stream.request.transport
            if transport is not None:
                transport.abort()
            # aiohttp would cancel the handler once it processes the lost connection; cancelling it here as well
            # means a handler asleep in a stall or a hold never has to wait for aiohttp's shutdown timeout.
            if stream.task is not None:
                stream.task.cancel()

    async def __aenter__(self) -> Self:
        """Start the server."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the server."""
        await self.stop()

    async def wait_disconnect(self, count: int = 1) -> None:
        """Return once the clients have closed at least `count` streams early."""
        while self.disconnects < count:
            self._disconnected.clear()
            await self._disconnected.wait()

    # ----- request handling -----

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one POST: check it, pick its reply, then stream it or fail it."""
        body = await self._checked_body(request)
        if isinstance(body, web.Response):
            return body
        refusal = self._context_refusal(body)
        if refusal is not None:
            return refusal
        try:
            reply = await self._next_reply(body)
        except _NoReplyError as exc:
            # x-should-retry: false makes both SDKs surface this at once instead of retrying into the same wall.
            return self._error_response(500, str(exc), extra_headers={"x-should-retry": "false"})
        fault = reply.fault
        if fault is not None and fault.kind == "http_status":
            extra = {} if fault.retry_after is None else {"retry-after": _format_seconds(fault.retry_after)}
            return self._error_response(fault.status, self._status_message(fault.status), extra_headers=extra)
        if fault is not None and fault.kind == "hang_up":
            self._reset_connection(request, rst=True)
            return web.Response(status=500)  # never sent: the connection is gone
        return await self._stream(request, body, reply)

    async def _checked_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """Record the request and return its JSON body, or the error response that rejects it."""
        try:
            body = await request.json()
        except ValueError:
            return self._error_response(400, "The request body is not valid JSON.")
        if not isinstance(body, dict):
            return self._error_response(400, "The request body must be a JSON object.")
        self.requests.append(body)
        self.headers.append({name.lower(): value for name, value in request.headers.items()})
        peer = request.transport.get_extra_info("peername") if request.transport is not None else None
        self.peers.append(tuple(peer) if peer else ("", 0))
        if not self._authorized(request):
            return self._error_response(401, "Invalid API key.")
        if body.get("stream") is not True:
            return self._error_response(400, f"{type(self).__name__} only serves streaming requests (stream: true).")
        return body

    def _context_refusal(self, body: dict[str, Any]) -> web.Response | None:
        """The 400 of a server whose context window the request does not fit, or None when it fits."""
        if self.context_window is None:
            return None
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 0))
        needed = self._prompt_chars(body) // CHARS_PER_TOKEN + (max_tokens if isinstance(max_tokens, int) else 0)
        if needed <= self.context_window:
            return None
        # llama.cpp's words, which small local servers send for both vendors' endpoints.
        message = (
            f"request ({needed} tokens) exceeds the available context size ({self.context_window} tokens), "
            "try increasing it"
        )
        return self._error_response(400, message)

    async def _next_reply(self, body: dict[str, Any]) -> Reply:
        """The next scripted reply, or the responder's answer for this body."""
        number = self._served + 1
        self._served = number
        if self._script is not None:
            if number > len(self._script):
                raise _NoReplyError(
                    f"IndexError: {type(self).__name__} has no scripted reply for request #{number}: "
                    f"it was given {len(self._script)}"
                )
            return self._script[number - 1]
        assert self._responder is not None
        try:
            answer = self._responder(body)
            reply = await answer if inspect.isawaitable(answer) else answer
        except Exception as exc:
            raise _NoReplyError(f"{type(self).__name__} responder failed on request #{number}: {exc!r}") from exc
        if not isinstance(reply, Reply):
            raise _NoReplyError(f"{type(self).__name__} responder returned {reply!r}, not a Reply")
        return reply

    def _error_response(
        self, status: int, message: str, *, extra_headers: dict[str, str] | None = None
    ) -> web.Response:
        """An error answered before any stream, in the vendor's JSON shape (the connection stays open)."""
        headers = {self.request_id_header: f"req_fake{next(self._ids)}", **(extra_headers or {})}
        return web.Response(
            status=status,
            text=json_text(self._error_body(status, message)),
            content_type="application/json",
            headers=headers,
        )

    async def _stream(self, request: web.Request, body: dict[str, Any], reply: Reply) -> web.StreamResponse:
        """Stream one reply, counting a client that closes before the end as a disconnect."""
        model = body.get("model")
        stream = _Stream(
            request=request,
            task=asyncio.current_task(),
            id=self._stream_id(next(self._ids)),
            model=model if isinstance(model, str) else "unknown",
        )
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                self.request_id_header: f"req_{stream.id}",
            },
        )
        if reply.fault is not None and reply.fault.kind == "error_event":
            # The vendors drop the connection after an error event; Connection: close makes aiohttp do the same.
            response.force_close()
        elif self.close_after_stream:
            response.headers.update(_KEEP_ALIVE_HEADERS)  # what it says, not what it does
        self._live.add(stream)
        try:
            await response.prepare(request)
            await self._write_reply(stream, response, body, reply)
            if not stream.server_closed:
                await response.write_eof()
                if self.close_after_stream and request.transport is not None:
                    # A FIN right after the last chunk (close() flushes first), whatever the headers promised.
                    request.transport.close()
        except ConnectionError:
            # Writing to a connection that the client already closed.
            self._note_cut_short(stream)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the client goes away (handler_cancellation), and stop() cancels it.
            self._note_cut_short(stream)
            raise
        finally:
            self._live.discard(stream)
        return response

    def _note_cut_short(self, stream: _Stream) -> None:
        """Count a stream that ended early because of the client, not because of the fake."""
        if stream.finished or stream.server_closed or self._stopping:
            return
        self.disconnects += 1
        self._disconnected.set()

    async def _write_reply(
        self, stream: _Stream, response: web.StreamResponse, body: dict[str, Any], reply: Reply
    ) -> None:
        """Write the preamble, the text chunks with their pauses, holds and fault, then the epilogue."""
        # Each `await response.write` hands its bytes straight to the socket (aiohttp holds back only the headers,
        # which leave with the preamble), so a client sees every event when it is written: timing tests measure
        # real delivery, and SDK calls return as soon as the preamble is out.
        for event in self._preamble(stream, reply):
            await response.write(event)
        count = len(reply.chunks)
        fault = reply.fault
        for index in range(count + 1):
            # A hold or fault placed past the last chunk happens after all of them, before the epilogue.
            if reply.hold_after is not None and min(reply.hold_after, count) == index:
                assert reply.release is not None  # __post_init__ guarantees it
                await reply.release.wait()
            for after, step in reply.steps:
                if min(after, count) == index:
                    await step.wait()
            if fault is not None and min(fault.after_chunks, count) == index:
                ended = await self._inject(stream, response, fault)
                if ended:
                    return
            if index == count:
                break
            delay = reply.first_chunk_delay if index == 0 else reply.chunk_delay
            if delay > 0:
                await asyncio.sleep(delay)
            event = self._text_event(stream, index, reply.chunks[index])
            if reply.split_events:
                middle = len(event) // 2
                await response.write(event[:middle])
                await asyncio.sleep(0.002)  # wire behaviour, not synchronisation: the halves leave apart
                event = event[middle:]
            await response.write(event)
            self.chunks_sent += 1
        epilogue = self._epilogue(stream, body, reply)
        if fault is not None and fault.kind == "no_terminal":
            epilogue = epilogue[:-1]
        for event in epilogue:
            await response.write(event)
        # From here on a client may close as soon as it has seen the terminal event: that cut nothing short.
        stream.finished = True

    async def _inject(self, stream: _Stream, response: web.StreamResponse, fault: Fault) -> bool:
        """Apply a mid-stream fault; True when it ended the stream."""
        if fault.kind == "stall":
            # Silence, with the connection open; a client read timeout shorter than this cuts it (a disconnect).
            await asyncio.sleep(fault.stall_seconds)
            return False
        if fault.kind == "wrong_shape":
            await response.write(self._raw_event(fault.payload))
            return False
        if fault.kind == "no_terminal":
            return False  # _write_reply leaves the terminal event out of the epilogue
        if fault.kind == "error_event":
            await response.write(self._error_event())
            stream.finished = True
            return True
        if fault.kind == "truncate":
            # The handler's write_eof() then ends the chunked body cleanly, with no terminal event before it.
            stream.finished = True
            return True
        if fault.kind == "reset":
            stream.server_closed = True
            self._reset_connection(stream.request, rst=fault.rst)
            return True
        raise ValueError(f"fault {fault.kind!r} cannot happen inside a stream")

    @staticmethod
    def _reset_connection(request: web.Request, *, rst: bool) -> None:
        """Drop the connection mid-body, as a crashed proxy or vendor edge does."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if rst and sock is not None:
            # SO_LINGER with a zero timeout turns close() into an RST (httpx: ReadError). A plain abort() sends a
            # FIN, which clients see as an incomplete chunked body instead (httpx: RemoteProtocolError).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    # ----- vendor specifics, overridden by the subclasses -----

    def _authorized(self, request: web.Request) -> bool:
        """Whether the request carries the accepted key."""
        raise NotImplementedError

    def _stream_id(self, number: int) -> str:
        """The vendor-style id of a streamed message."""
        raise NotImplementedError

    def _prompt_chars(self, body: dict[str, Any]) -> int:
        """The characters of the request's system prompt and messages."""
        raise NotImplementedError

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        """The vendor's JSON error body for an HTTP error."""
        raise NotImplementedError

    def _status_message(self, status: int) -> str:
        """A vendor-like message for a scripted HTTP error status."""
        messages = {
            429: "Rate limit reached. Please try again later.",
            500: "The server had an error while processing your request.",
            503: "The service is temporarily unavailable.",
            529: "Overloaded",
        }
        return messages.get(status, f"Scripted HTTP {status} from the fake {self.vendor} server.")

    def _preamble(self, stream: _Stream, reply: Reply) -> list[bytes]:
        """The events sent before the first text chunk."""
        raise NotImplementedError

    def _text_event(self, stream: _Stream, index: int, text: str) -> bytes:
        """The event carrying one text chunk."""
        raise NotImplementedError

    def _raw_event(self, payload: str) -> bytes:
        """An event in the vendor's framing whose data is `payload` as given."""
        raise NotImplementedError

    def _epilogue(self, stream: _Stream, body: dict[str, Any], reply: Reply) -> list[bytes]:
        """The events after the last text chunk, ending with the terminal one."""
        raise NotImplementedError

    def _error_event(self) -> bytes:
        """The vendor's error event inside a stream."""
        raise NotImplementedError


def text_chars(content: Any) -> int:
    """Characters of a message's content: a string, or a list of text blocks."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(block.get("text", "")) for block in content if isinstance(block, dict))
    return 0
