"""Fake OpenAI and Anthropic HTTP servers that speak each vendor's streaming wire format.

The fakes run on 127.0.0.1 inside the caller's event loop, so the official SDKs can be pointed at them with
``base_url`` and exercised unchanged: their SSE parsers, retries, timeouts and connection handling all run for
real. Each request is answered from a script of `Reply` objects (or a responder function), and a `Fault` on a
reply makes it fail the way the real vendors fail: an HTTP error status, an error event inside the stream, a TCP
reset, a stall, or a clean end without the terminal event.

The bytes on the wire follow the team's reference, ``provider-wire-formats.md`` (checked against openai 3.54 and
anthropic 2.12).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from aiohttp import web

__all__ = ["FakeAnthropic", "FakeOpenAI", "FakeProvider", "Fault", "FaultKind", "Reply", "Responder"]

FaultKind = Literal["http_status", "hang_up", "error_event", "reset", "stall", "truncate"]

# Handlers still running when stop() is called are cut off by stop() itself; this only bounds the wait for
# whatever aiohttp is still finishing, so that a fake never holds a test up for aiohttp's default of 60 s.
_SHUTDOWN_TIMEOUT = 1.0

# A fixed creation time keeps the OpenAI chunks byte-for-byte reproducible across runs.
_CREATED = 1_700_000_000


@dataclass
class Fault:
    """What goes wrong in one reply; build it with the classmethods."""

    kind: FaultKind
    after_chunks: int = 0
    status: int = 500
    retry_after: float | None = None
    stall_seconds: float = 3600.0
    rst: bool = True

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


@dataclass
class Reply:
    """One scripted streamed response."""

    chunks: list[str]
    input_tokens: int = 11
    output_tokens: int | None = None
    finish_reason: str | None = None
    first_chunk_delay: float = 0.0
    chunk_delay: float = 0.0
    hold_after: int | None = None
    release: asyncio.Event | None = None
    fault: Fault | None = None
    # Write each text event in two parts, split inside its JSON, so that a client reads partial lines.
    split_events: bool = False

    def __post_init__(self) -> None:
        """Give a holding reply its own `release` event when the test did not pass one."""
        # Without an event a held stream could only be ended by stop(); creating it here lets a test write
        # `reply.release.set()` without building the event first (asyncio.Event binds to a loop only when awaited).
        if self.hold_after is not None and self.release is None:
            self.release = asyncio.Event()


Responder = Callable[[dict[str, Any]], Reply | Awaitable[Reply]]


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


def _json(payload: dict[str, Any]) -> str:
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
    disconnects: int
    chunks_sent: int
    api_key: str

    def __init__(self, responder: Responder | Sequence[Reply], *, api_key: str = "test-key") -> None:
        """Serve each request from `responder`, or from the sequence of replies in order."""
        self._script: list[Reply] | None
        self._responder: Responder | None
        if isinstance(responder, Sequence):
            self._script = list(responder)
            self._responder = None
        else:
            self._script = None
            self._responder = responder
        self.api_key = api_key
        self.requests = []
        self.headers = []
        self.disconnects = 0
        self.chunks_sent = 0
        self._served = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
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
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self._runner = runner
        self._stopping = False
        self._base_url = f"http://127.0.0.1:{port}{self.base_path}"

    async def stop(self) -> None:
        """Cut every open stream and stop listening, without waiting for stalled or held replies."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        for stream in list(self._live):
            stream.server_closed = True
            transport = stream.request.transport
            if transport is not None:
                transport.abort()
            # aiohttp would cancel the handler once it processes the lost connection; cancelling it here as well
            # means a handler asleep in a stall or a hold never has to wait for aiohttp's shutdown timeout.
            if stream.task is not None:
                stream.task.cancel()
        await runner.cleanup()

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
        if not self._authorized(request):
            return self._error_response(401, "Invalid API key.")
        if body.get("stream") is not True:
            return self._error_response(400, f"{type(self).__name__} only serves streaming requests (stream: true).")
        return body

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
        """An error answered before any stream, in the vendor's JSON shape."""
        headers = {self.request_id_header: f"req_fake{next(self._ids)}", **(extra_headers or {})}
        return web.Response(
            status=status,
            text=_json(self._error_body(status, message)),
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
        self._live.add(stream)
        try:
            await response.prepare(request)
            await self._write_reply(stream, response, body, reply)
            if not stream.server_closed:
                await response.write_eof()
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
        for event in self._epilogue(stream, body, reply):
            await response.write(event)
        # From here on a client may close as soon as it has seen the terminal event: that cut nothing short.
        stream.finished = True

    async def _inject(self, stream: _Stream, response: web.StreamResponse, fault: Fault) -> bool:
        """Apply a mid-stream fault; True when it ended the stream."""
        if fault.kind == "stall":
            # Silence, with the connection open; a client read timeout shorter than this cuts it (a disconnect).
            await asyncio.sleep(fault.stall_seconds)
            return False
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

    def _epilogue(self, stream: _Stream, body: dict[str, Any], reply: Reply) -> list[bytes]:
        """The events after the last text chunk, ending with the terminal one."""
        raise NotImplementedError

    def _error_event(self) -> bytes:
        """The vendor's error event inside a stream."""
        raise NotImplementedError


class FakeOpenAI(FakeProvider):
    """A fake OpenAI: ``POST /v1/chat/completions`` streaming chat completion chunks."""

    vendor = "openai"
    endpoint = "/v1/chat/completions"
    base_path = "/v1"
    request_id_header = "x-request-id"
    default_finish_reason = "stop"

    def _authorized(self, request: web.Request) -> bool:
        """OpenAI takes ``Authorization: Bearer KEY``."""
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _stream_id(self, number: int) -> str:
        """Chat completion ids look like ``chatcmpl-...``."""
        return f"chatcmpl-fake{number}"

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        kind = {401: "invalid_request_error", 429: "requests"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def _chunk(self, stream: _Stream, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        """One ``chat.completion.chunk`` with a single choice."""
        return self._data(
            {
                "id": stream.id,
                "object": "chat.completion.chunk",
                "created": _CREATED,
                "model": stream.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                "usage": None,
            }
        )

    @staticmethod
    def _data(payload: dict[str, Any]) -> bytes:
        """``data: <compact JSON>`` and the blank line; OpenAI sends no ``event:`` lines."""
        return f"data: {_json(payload)}\n\n".encode()

    def _preamble(self, stream: _Stream, reply: Reply) -> list[bytes]:
        """The role delta, with empty content."""
        return [self._chunk(stream, {"role": "assistant", "content": ""})]

    def _text_event(self, stream: _Stream, index: int, text: str) -> bytes:
        """A content delta."""
        return self._chunk(stream, {"content": text})

    def _epilogue(self, stream: _Stream, body: dict[str, Any], reply: Reply) -> list[bytes]:
        """The finish chunk, the usage chunk when asked for, and ``[DONE]``."""
        events = [self._chunk(stream, {}, reply.finish_reason or self.default_finish_reason)]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            completion = len(reply.chunks) if reply.output_tokens is None else reply.output_tokens
            events.append(
                self._data(
                    {
                        "id": stream.id,
                        "object": "chat.completion.chunk",
                        "created": _CREATED,
                        "model": stream.model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": reply.input_tokens,
                            "completion_tokens": completion,
                            "total_tokens": reply.input_tokens + completion,
                        },
                    }
                )
            )
        events.append(b"data: [DONE]\n\n")
        return events

    def _error_event(self) -> bytes:
        """``data: {"error": {...}}``, as OpenAI sends when generation fails mid-stream."""
        return self._data(
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )


class FakeAnthropic(FakeProvider):
    """A fake Anthropic: ``POST /v1/messages`` streaming message events."""

    vendor = "anthropic"
    endpoint = "/v1/messages"
    base_path = ""
    request_id_header = "request-id"
    default_finish_reason = "end_turn"

    def _authorized(self, request: web.Request) -> bool:
        """Anthropic takes ``x-api-key: KEY`` or ``Authorization: Bearer KEY``."""
        # The API documents x-api-key, but anthropic 2.12 sends an `api_key=` as `Authorization: Bearer`, so a
        # fake that only took x-api-key would turn the official SDK away.
        return (
            request.headers.get("x-api-key") == self.api_key
            or request.headers.get("Authorization") == f"Bearer {self.api_key}"
        )

    def _stream_id(self, number: int) -> str:
        """Message ids look like ``msg_...``."""
        return f"msg_fake{number}"

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        """``{"type": "error", "error": {"type", "message"}}``."""
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}

    @staticmethod
    def _event(payload: dict[str, Any]) -> bytes:
        """``event: <type>`` then ``data: <JSON>``: the event name always equals the JSON ``type``."""
        return f"event: {payload['type']}\ndata: {_json(payload)}\n\n".encode()

    def _preamble(self, stream: _Stream, reply: Reply) -> list[bytes]:
        """message_start, the text block's start, and a ping, as the real API opens a stream."""
        return [
            self._event(
                {
                    "type": "message_start",
                    "message": {
                        "id": stream.id,
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": stream.model,
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1},
                    },
                }
            ),
            self._event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            # The real API sends a ping here; clients must skip it.
            self._event({"type": "ping"}),
        ]

    def _text_event(self, stream: _Stream, index: int, text: str) -> bytes:
        """A text_delta of block 0."""
        return self._event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})

    def _epilogue(self, stream: _Stream, body: dict[str, Any], reply: Reply) -> list[bytes]:
        """content_block_stop, message_delta with the cumulative output tokens, message_stop."""
        output = len(reply.chunks) if reply.output_tokens is None else reply.output_tokens
        return [
            self._event({"type": "content_block_stop", "index": 0}),
            self._event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply.finish_reason or self.default_finish_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output},
                }
            ),
            self._event({"type": "message_stop"}),
        ]

    def _error_event(self) -> bytes:
        """``event: error`` with an overloaded_error, as Anthropic sends when it sheds load mid-stream."""
        return self._event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
