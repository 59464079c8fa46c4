"""The fake vendor servers are faithful: the official SDKs, unchanged, stream from them and fail as documented.

Each test drives `openai.AsyncOpenAI` or `anthropic.AsyncAnthropic` against a fake from `tests.fakes.providers`
and checks what the SDK yields or raises, so the provider layer's tests can trust what the fakes do. The exact
exception types asserted here are the ones the provider layer has to catch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import (
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStreamEvent,
    TextDelta,
)
from openai.types.chat import ChatCompletionChunk

from facilitair.server.errors import ProviderFailure
from facilitair.server.providers.transport import transport_failure
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Fault, Reply

T = TypeVar("T")

OPENAI_MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
ANTHROPIC_MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
# Long enough for a loaded CI machine, short enough to keep the stall tests quick.
READ_TIMEOUT = 0.5


def openai_client(fake: FakeOpenAI, *, api_key: str | None = None, **options: Any) -> openai.AsyncOpenAI:
    """An OpenAI client aimed at `fake`, without retries unless asked."""
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=api_key or fake.api_key, **options)


def anthropic_client(fake: FakeAnthropic, *, api_key: str | None = None, **options: Any) -> anthropic.AsyncAnthropic:
    """An Anthropic client aimed at `fake`, without retries unless asked."""
    options.setdefault("max_retries", 0)
    return anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=api_key or fake.api_key, **options)


async def openai_stream(client: openai.AsyncOpenAI) -> openai.AsyncStream[ChatCompletionChunk]:
    """Open a streamed chat completion that asks for usage."""
    return await client.chat.completions.create(
        model="gpt-test",
        messages=OPENAI_MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )


async def anthropic_stream(client: anthropic.AsyncAnthropic) -> anthropic.AsyncStream[RawMessageStreamEvent]:
    """Open a streamed message, raw events."""
    return await client.messages.create(model="claude-test", max_tokens=64, messages=ANTHROPIC_MESSAGES, stream=True)


async def collect(stream: AsyncIterator[T], into: list[T]) -> None:
    """Append everything `stream` yields to `into`, so what came before an error is kept."""
    async for item in stream:
        into.append(item)


def content(chunks: list[ChatCompletionChunk]) -> list[str]:
    """The non-empty content deltas, in order."""
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


def texts(events: list[RawMessageStreamEvent]) -> list[str]:
    """The text deltas, in order."""
    return [e.delta.text for e in events if isinstance(e, RawContentBlockDeltaEvent) and isinstance(e.delta, TextDelta)]


# ----- OpenAI -----


async def test_openai_stream_yields_chunks_in_order_then_usage() -> None:
    reply = Reply(["Hel", "lo", ", wörld"], input_tokens=7, output_tokens=5)
    async with FakeOpenAI([reply]) as fake, openai_client(fake) as client:
        chunks = [chunk async for chunk in await openai_stream(client)]

        assert content(chunks) == ["Hel", "lo", ", wörld"]
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[0].choices[0].delta.content == ""
        assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, None, None, "stop"]
        assert {c.model for c in chunks} == {"gpt-test"}
        usage_chunk = chunks[-1]
        assert usage_chunk.choices == []
        assert usage_chunk.usage is not None
        assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens) == (7, 5)
        assert usage_chunk.usage.total_tokens == 12
        assert fake.requests[0]["stream_options"] == {"include_usage": True}
        assert fake.headers[0]["authorization"] == "Bearer test-key"
        assert (fake.chunks_sent, fake.disconnects) == (3, 0)


async def test_openai_without_include_usage_sends_no_usage_chunk() -> None:
    async with FakeOpenAI([Reply(["a"], finish_reason="length")]) as fake, openai_client(fake) as client:
        stream = await client.chat.completions.create(model="m", messages=OPENAI_MESSAGES, stream=True)
        chunks = [chunk async for chunk in stream]

    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_openai_retries_a_429_honouring_retry_after() -> None:
    replies = [Reply([], fault=Fault.http_status(429, retry_after=0.01)), Reply(["ok"])]
    async with FakeOpenAI(replies) as fake, openai_client(fake, max_retries=1) as client:
        chunks = [chunk async for chunk in await openai_stream(client)]

    assert content(chunks) == ["ok"]
    assert len(fake.requests) == 2
    assert [h["x-stainless-retry-count"] for h in fake.headers] == ["0", "1"]


async def test_openai_error_event_raises_api_error_after_the_text() -> None:
    got: list[ChatCompletionChunk] = []
    reply = Reply(["a", "b", "c"], fault=Fault.error_event(2))
    async with FakeOpenAI([reply]) as fake, openai_client(fake) as client:
        with pytest.raises(openai.APIError) as caught:
            await collect(await openai_stream(client), got)

    assert type(caught.value) is openai.APIError
    assert caught.value.body == {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    assert content(got) == ["a", "b"]


@pytest.mark.parametrize(
    ("rst", "cause"), [(True, httpx2.ReadError), (False, httpx2.RemoteProtocolError)], ids=["rst", "fin"]
)
async def test_openai_reset_raises_api_connection_error(rst: bool, cause: type[Exception]) -> None:
    got: list[ChatCompletionChunk] = []
    reply = Reply(["a", "b", "c"], fault=Fault.reset(2, rst=rst))
    async with FakeOpenAI([reply]) as fake, openai_client(fake) as client:
        with pytest.raises(openai.APIConnectionError) as caught:
            await collect(await openai_stream(client), got)

        assert type(caught.value) is openai.APIConnectionError
        assert type(caught.value.__cause__) is cause
        assert content(got) == ["a", "b"]
        # The fake cut the connection itself: that is not a client disconnect.
        assert fake.disconnects == 0


async def test_openai_stall_raises_api_timeout_error_and_the_fake_sees_the_client_leave() -> None:
    got: list[ChatCompletionChunk] = []
    reply = Reply(["a", "b"], fault=Fault.stall(1))
    async with FakeOpenAI([reply]) as fake, openai_client(fake, timeout=READ_TIMEOUT) as client:
        with pytest.raises(openai.APITimeoutError) as caught:
            await collect(await openai_stream(client), got)

        assert type(caught.value) is openai.APITimeoutError
        assert type(caught.value.__cause__) is httpx2.ReadTimeout
        assert content(got) == ["a"]
        # The SDK closes the connection on the timeout, and the stalled fake notices.
        await asyncio.wait_for(fake.wait_disconnect(), 5)


async def test_openai_truncated_stream_looks_like_success_without_finish_or_usage() -> None:
    async with FakeOpenAI([Reply(["a", "b", "c"], fault=Fault.truncate(2))]) as fake, openai_client(fake) as client:
        chunks = [chunk async for chunk in await openai_stream(client)]

    assert content(chunks) == ["a", "b"]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices and c.choices[0].finish_reason is None for c in chunks)


async def test_openai_wrong_key_raises_authentication_error() -> None:
    async with FakeOpenAI([Reply(["never"])]) as fake, openai_client(fake, api_key="wrong") as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await openai_stream(client)

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert len(fake.requests) == 1
    assert fake.chunks_sent == 0


async def test_openai_held_reply_delivers_the_first_chunk_before_the_fake_finishes() -> None:
    reply = Reply(["a", "b", "c"], hold_after=1)
    assert reply.release is not None
    async with FakeOpenAI([reply]) as fake, openai_client(fake) as client:
        stream = await openai_stream(client)
        assert (await anext(stream)).choices[0].delta.role == "assistant"
        assert (await anext(stream)).choices[0].delta.content == "a"
        assert fake.chunks_sent == 1

        reply.release.set()
        rest = [chunk async for chunk in stream]

    assert content(rest) == ["b", "c"]
    assert rest[-1].usage is not None


async def test_openai_closing_the_stream_early_is_a_disconnect() -> None:
    reply = Reply(["a", "b"], hold_after=1)
    async with FakeOpenAI([reply]) as fake, openai_client(fake) as client:
        stream = await openai_stream(client)
        await anext(stream)
        assert (await anext(stream)).choices[0].delta.content == "a"
        await stream.close()

        await asyncio.wait_for(fake.wait_disconnect(), 5)
        assert (fake.disconnects, fake.chunks_sent) == (1, 1)


# ----- Anthropic -----


async def test_anthropic_stream_yields_chunks_in_order_then_usage() -> None:
    reply = Reply(["Hel", "lo", ", wörld"], input_tokens=7, output_tokens=5)
    async with FakeAnthropic([reply]) as fake, anthropic_client(fake) as client:
        events = [event async for event in await anthropic_stream(client)]

        assert [e.type for e in events] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert texts(events) == ["Hel", "lo", ", wörld"]
        start, delta = events[0], events[-2]
        assert isinstance(start, RawMessageStartEvent)
        assert start.message.model == "claude-test"
        assert start.message.usage.input_tokens == 7
        assert isinstance(delta, RawMessageDeltaEvent)
        assert delta.usage.output_tokens == 5
        assert delta.delta.stop_reason == "end_turn"
        assert (fake.chunks_sent, fake.disconnects) == (3, 0)


async def test_anthropic_retries_a_429_honouring_retry_after() -> None:
    replies = [Reply([], fault=Fault.http_status(429, retry_after=0.01)), Reply(["ok"])]
    async with FakeAnthropic(replies) as fake, anthropic_client(fake, max_retries=1) as client:
        events = [event async for event in await anthropic_stream(client)]

    assert texts(events) == ["ok"]
    assert len(fake.requests) == 2
    assert [h["x-stainless-retry-count"] for h in fake.headers] == ["0", "1"]


async def test_anthropic_error_event_raises_api_status_error_after_the_text() -> None:
    got: list[RawMessageStreamEvent] = []
    reply = Reply(["a", "b", "c"], fault=Fault.error_event(2))
    async with FakeAnthropic([reply]) as fake, anthropic_client(fake) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await collect(await anthropic_stream(client), got)

    assert type(caught.value) is anthropic.APIStatusError
    # The error arrives inside a 200 response: the status code says nothing, the body says what went wrong.
    assert caught.value.status_code == 200
    assert caught.value.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert texts(got) == ["a", "b"]


# anthropic before 2.17 let a transport error reading the streamed body through unwrapped; 2.17 wraps it in
# APIConnectionError / APITimeoutError (the package allows both). Either way the transport error is in the
# chain, and that is what the server classifies by (providers/transport.py); the server's own provider
# reads the body bytes itself, below the SDK's wrapping (test_faults covers what it does with them).
SDK_WRAPS_BODY_ERRORS = tuple(int(part) for part in anthropic.__version__.split(".")[:2]) >= (2, 17)


def assert_transport_error(caught: BaseException, error: type[Exception], wrapper: type[Exception]) -> None:
    """The SDK's error is `error` itself, or (anthropic 2.17+) `wrapper` caused by it."""
    if SDK_WRAPS_BODY_ERRORS:
        assert type(caught) is wrapper
        assert type(caught.__cause__) is error
    else:
        assert type(caught) is error


@pytest.mark.parametrize(
    ("rst", "error"), [(True, httpx2.ReadError), (False, httpx2.RemoteProtocolError)], ids=["rst", "fin"]
)
async def test_anthropic_reset_raises_the_transport_error_or_a_connection_error_caused_by_it(
    rst: bool, error: type[Exception]
) -> None:
    got: list[RawMessageStreamEvent] = []
    reply = Reply(["a", "b", "c"], fault=Fault.reset(2, rst=rst))
    async with FakeAnthropic([reply]) as fake, anthropic_client(fake) as client:
        with pytest.raises((error, anthropic.APIConnectionError)) as caught:
            await collect(await anthropic_stream(client), got)

        assert_transport_error(caught.value, error, anthropic.APIConnectionError)
        assert transport_failure(caught.value) is ProviderFailure.CONNECTION
        assert texts(got) == ["a", "b"]
        assert fake.disconnects == 0


async def test_anthropic_stall_raises_a_read_timeout_maybe_wrapped_and_the_fake_sees_the_client_leave() -> None:
    got: list[RawMessageStreamEvent] = []
    reply = Reply(["a", "b"], fault=Fault.stall(1))
    async with FakeAnthropic([reply]) as fake, anthropic_client(fake, timeout=READ_TIMEOUT) as client:
        with pytest.raises((httpx2.ReadTimeout, anthropic.APITimeoutError)) as caught:
            await collect(await anthropic_stream(client), got)

        assert_transport_error(caught.value, httpx2.ReadTimeout, anthropic.APITimeoutError)
        assert transport_failure(caught.value) is ProviderFailure.TIMEOUT
        assert texts(got) == ["a"]
        await asyncio.wait_for(fake.wait_disconnect(), 5)


async def test_anthropic_truncated_stream_looks_like_success_without_message_stop() -> None:
    reply = Reply(["a", "b", "c"], fault=Fault.truncate(2))
    async with FakeAnthropic([reply]) as fake, anthropic_client(fake) as client:
        events = [event async for event in await anthropic_stream(client)]

    assert texts(events) == ["a", "b"]
    types = {e.type for e in events}
    assert "message_stop" not in types
    assert "message_delta" not in types


async def test_anthropic_wrong_key_raises_authentication_error() -> None:
    async with FakeAnthropic([Reply(["never"])]) as fake, anthropic_client(fake, api_key="wrong") as client:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await anthropic_stream(client)

    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid API key."},
    }


async def test_anthropic_sdk_sends_the_api_key_as_a_bearer_token() -> None:
    # Documented here because it surprised us: anthropic 2.12 sends `api_key=` as `Authorization: Bearer`,
    # not `x-api-key`, so the fake accepts both.
    async with FakeAnthropic([Reply(["a"])]) as fake, anthropic_client(fake) as client:
        await (await anthropic_stream(client)).close()

    assert fake.headers[0]["authorization"] == "Bearer test-key"
    assert "x-api-key" not in fake.headers[0]


async def test_anthropic_held_reply_delivers_the_first_chunk_before_the_fake_finishes() -> None:
    reply = Reply(["a", "b", "c"], hold_after=1)
    assert reply.release is not None
    async with FakeAnthropic([reply]) as fake, anthropic_client(fake) as client:
        stream = await anthropic_stream(client)
        first: list[RawMessageStreamEvent] = []
        while not texts(first):
            first.append(await anext(stream))
        assert texts(first) == ["a"]
        assert fake.chunks_sent == 1

        reply.release.set()
        rest = [event async for event in stream]

    assert texts(rest) == ["b", "c"]
    assert rest[-1].type == "message_stop"


async def test_anthropic_closing_the_stream_early_is_a_disconnect() -> None:
    reply = Reply(["a", "b"], hold_after=1)
    async with FakeAnthropic([reply]) as fake, anthropic_client(fake) as client:
        stream = await anthropic_stream(client)
        seen: list[RawMessageStreamEvent] = []
        while not texts(seen):
            seen.append(await anext(stream))
        await stream.close()

        await asyncio.wait_for(fake.wait_disconnect(), 5)
        assert (fake.disconnects, fake.chunks_sent) == (1, 1)


# ----- Both -----


@pytest.mark.parametrize(
    ("status", "openai_error", "anthropic_error"),
    [
        (500, openai.InternalServerError, anthropic.InternalServerError),
        (503, openai.InternalServerError, anthropic.ServiceUnavailableError),
        (529, openai.InternalServerError, anthropic.OverloadedError),
    ],
)
async def test_server_errors_before_the_stream_map_to_the_sdk_status_errors(
    status: int, openai_error: type[openai.APIStatusError], anthropic_error: type[anthropic.APIStatusError]
) -> None:
    async with FakeOpenAI([Reply([], fault=Fault.http_status(status))]) as fake, openai_client(fake) as client:
        with pytest.raises(openai_error) as caught_openai:
            await openai_stream(client)
    async with FakeAnthropic([Reply([], fault=Fault.http_status(status))]) as fake_a, anthropic_client(fake_a) as a:
        with pytest.raises(anthropic_error) as caught_anthropic:
            await anthropic_stream(a)

    assert type(caught_openai.value) is openai_error
    assert caught_openai.value.status_code == status
    assert type(caught_anthropic.value) is anthropic_error
    assert caught_anthropic.value.status_code == status


async def test_an_exhausted_script_fails_at_once_with_a_clear_message() -> None:
    async with FakeOpenAI([Reply(["a"])]) as fake, openai_client(fake, max_retries=2) as client:
        [chunk async for chunk in await openai_stream(client)]
        with pytest.raises(openai.InternalServerError, match="no scripted reply for request #2"):
            await openai_stream(client)

    # x-should-retry: false stops the SDK from retrying into the same empty script.
    assert len(fake.requests) == 2


async def test_a_responder_picks_the_reply_from_the_request() -> None:
    async def echo(body: dict[str, Any]) -> Reply:
        return Reply([body["messages"][0]["content"].upper()])

    async with FakeAnthropic(echo) as fake, anthropic_client(fake) as client:
        events = [event async for event in await anthropic_stream(client)]

    assert texts(events) == ["HI"]


async def test_non_streaming_requests_are_refused() -> None:
    async with FakeOpenAI([Reply(["a"])]) as fake, openai_client(fake) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="m", messages=OPENAI_MESSAGES)


async def test_stop_does_not_hang_on_stalled_or_held_streams() -> None:
    stalled = FakeOpenAI([Reply(["a", "b"], fault=Fault.stall(0))])
    held = FakeAnthropic([Reply(["a", "b"], hold_after=0)])
    await stalled.start()
    await held.start()
    async with openai_client(stalled) as openai_sdk, anthropic_client(held) as anthropic_sdk:
        openai_stream_ = await openai_stream(openai_sdk)
        anthropic_stream_ = await anthropic_stream(anthropic_sdk)
        await asyncio.wait_for(asyncio.gather(stalled.stop(), held.stop()), 3)

        # The streams were cut by the server, which is not a client disconnect, and the clients see an error.
        assert (stalled.disconnects, held.disconnects) == (0, 0)
        with pytest.raises(openai.APIConnectionError):
            [chunk async for chunk in openai_stream_]
        with pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)) as caught:
            [event async for event in anthropic_stream_]
        assert transport_failure(caught.value) is ProviderFailure.CONNECTION


# ----- What real servers do beyond the wire formats (seen against a real inference server) -----


async def raw_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """Send one POST on a new TCP connection and read until the server closes it (a hang guard bounds it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": str(len(body))}.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode() + body)
    try:
        return await asyncio.wait_for(reader.read(-1), 5)  # -1: until EOF, which only the server's close gives
    finally:
        writer.close()


def port_of(base_url: str) -> int:
    """The port of a fake's base URL."""
    return int(base_url.rsplit(":", 1)[1].split("/", 1)[0])


async def test_a_stream_is_answered_keep_alive_and_then_closed_after_its_last_chunk() -> None:
    async with FakeOpenAI([Reply(["a"])]) as fake:
        body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
        raw = await raw_post(port_of(fake.base_url), "/v1/chat/completions", body, {"Authorization": "Bearer test-key"})

    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nConnection: keep-alive" in head
    assert b"\r\nKeep-Alive: timeout=5, max=100" in head
    # The whole body came, then the server closed the connection (read(-1) returned at EOF).
    assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


async def test_an_error_answer_keeps_the_connection_open_and_a_stream_closes_it() -> None:
    # Two requests on one connection: the 401 leaves it open, the stream that follows ends it.
    async with FakeAnthropic([Reply(["a"])]) as fake:
        body = b'{"model":"m","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"hi"}]}'
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(fake.base_url))
        for key in ("wrong", "test-key"):
            writer.write(
                b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: " + key.encode()
                + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )  # fmt: skip
        raw = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()

    assert raw.count(b"HTTP/1.1 ") == 2
    assert raw.startswith(b"HTTP/1.1 401")
    assert b"event: message_stop" in raw
    assert fake.connections == 1


async def test_with_close_after_stream_off_the_sdk_reuses_one_connection() -> None:
    fake = FakeOpenAI([Reply(["a"]), Reply(["b"])], close_after_stream=False)
    async with fake, openai_client(fake, http_client=openai.DefaultAioHttpClient()) as client:
        for _ in range(2):
            [chunk async for chunk in await openai_stream(client)]

    assert len(fake.requests) == 2
    assert fake.connections == 1


async def test_a_fake_that_stops_listening_refuses_connections_then_comes_back_on_the_same_port() -> None:
    async with FakeOpenAI([Reply(["a"]), Reply(["b"])]) as fake, openai_client(fake) as client:
        base_url = fake.base_url
        assert content([c async for c in await openai_stream(client)]) == ["a"]
        await fake.stop_listening()
        with pytest.raises(openai.APIConnectionError) as refused:
            await openai_stream(client)
        await fake.listen_again()
        assert content([c async for c in await openai_stream(client)]) == ["b"]

    assert isinstance(refused.value.__cause__, httpx2.ConnectError)
    assert fake.base_url == base_url
    assert len(fake.requests) == 2  # the refused one never arrived


async def test_stop_listening_drops_an_open_stream_as_a_killed_server_does() -> None:
    reply = Reply(["a", "b"], hold_after=1)
    async with FakeOpenAI([reply]) as fake, openai_client(fake) as client:
        stream = await openai_stream(client)
        got: list[ChatCompletionChunk] = []
        while not content(got):
            got.append(await anext(stream))
        await fake.stop_listening()
        with pytest.raises(openai.APIConnectionError):
            await collect(stream, got)

        assert content(got) == ["a"]
        assert fake.disconnects == 0  # the fake ended it, not the client


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_a_request_past_the_context_window_is_refused_with_400(vendor: str) -> None:
    # 4 characters a token: "hi" is 0 tokens, so max_tokens alone decides.
    if vendor == "openai":
        async with FakeOpenAI([Reply(["ok"])], context_window=100) as fake, openai_client(fake) as client:
            create = client.chat.completions.create
            with pytest.raises(openai.BadRequestError) as caught:
                await create(model="m", messages=OPENAI_MESSAGES, stream=True, max_tokens=101)
            fits = await create(model="m", messages=OPENAI_MESSAGES, stream=True, max_tokens=100)
            assert content([c async for c in fits]) == ["ok"]
        message = str(caught.value.body)
    else:
        async with FakeAnthropic([Reply(["ok"])], context_window=100) as fake_a, anthropic_client(fake_a) as a:
            with pytest.raises(anthropic.BadRequestError) as caught_a:
                await a.messages.create(model="m", max_tokens=101, messages=ANTHROPIC_MESSAGES, stream=True)
        message = str(caught_a.value.body)
    assert "request (101 tokens) exceeds the available context size (100 tokens)" in message


async def test_anthropic_reports_cache_reads_and_writes_beside_input_tokens() -> None:
    reply = Reply(["a"], input_tokens=5, cache_read_tokens=61, cache_write_tokens=7)
    async with FakeAnthropic([reply]) as fake, anthropic_client(fake) as client:
        events = [event async for event in await anthropic_stream(client)]

    start = events[0]
    assert isinstance(start, RawMessageStartEvent)
    usage = start.message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (5, 61, 7)


async def test_openai_reports_cached_tokens_inside_prompt_tokens() -> None:
    async with FakeOpenAI([Reply(["a"], input_tokens=100, cache_read_tokens=80)]) as fake, openai_client(fake) as c:
        chunks = [chunk async for chunk in await openai_stream(c)]

    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == 100
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 80


async def test_a_chunk_of_the_wrong_shape_is_inserted_and_the_stream_goes_on() -> None:
    async with FakeOpenAI([Reply(["a", "b"], fault=Fault.wrong_shape(1, "[]"))]) as fake:
        body = b'{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}'
        raw = await raw_post(port_of(fake.base_url), "/v1/chat/completions", body, {"Authorization": "Bearer test-key"})

    text = raw.decode()
    assert text.index('"content":"a"') < text.index("data: []\n\n") < text.index('"content":"b"')
    assert "data: [DONE]" in text


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_no_terminal_sends_the_finish_and_usage_but_not_the_terminal_event(vendor: str) -> None:
    reply = Reply(["a"], fault=Fault.no_terminal())
    if vendor == "openai":
        async with FakeOpenAI([reply]) as fake, openai_client(fake) as client:
            chunks = [chunk async for chunk in await openai_stream(client)]
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].usage is not None
    else:
        async with FakeAnthropic([reply]) as fake_a, anthropic_client(fake_a) as a:
            events = [event async for event in await anthropic_stream(a)]
        assert [e.type for e in events][-2:] == ["content_block_stop", "message_delta"]
