"""The guard interceptor: every method of every service, whatever its shape, goes through it.

- Bad bytes sent to any method the server serves (ours, health, reflection) are INVALID_ARGUMENT with a
  message naming the request type: never UNKNOWN or INTERNAL, and never a log line at error level
  (health and reflection need no key, so anyone could otherwise flood the log).
- A method of any shape (unary or streaming requests and responses) needs a key when keys are set, and
  has its request parsed; only health and reflection are open. The shapes are checked on a server the
  test builds itself, with a test-only service of all four, since ours has no client-streaming method.

Raw bytes go over real channels with identity serializers (`channel.unary_unary(path)` and friends).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from google.protobuf.wrappers_pb2 import StringValue
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from facilitair.server.transport.app import SERVICE_NAME
from facilitair.server.transport.guard import ApiKeys, GuardInterceptor, current_principal
from tests.harness.events import EVENT_TIMEOUT
from tests.harness.logs import no_error_logs
from tests.harness.servers import ServerFactory

KEY = "guard-key-5d1f0a9c3b7e2468"
KEYS = f"alice:{KEY}"
Metadata = tuple[tuple[str, str], ...]
WITH_KEY: Metadata = (("authorization", f"Bearer {KEY}"),)
HEALTH = "grpc.health.v1.Health"
REFLECTION = "grpc.reflection.v1alpha.ServerReflection"

# Bytes no protobuf message parses from, whatever its fields.
MALFORMED: dict[str, bytes] = {
    "corrupt": b"\x0f\x01",  # field 1 with wire type 7, which does not exist
    "truncated": b"\x0a\x05he",  # a 5-byte length-delimited field that ends after 2
    "oversized-varint": b"\x08" + b"\xff" * 10 + b"\x01",  # a varint of 11 bytes (at most 10 exist)
}


@dataclass(frozen=True)
class Method:
    """One method a server serves, as its descriptor describes it."""

    service: str
    name: str
    request: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        """The method's HTTP/2 path."""
        return f"/{self.service}/{self.name}"

    @property
    def open(self) -> bool:
        """Whether the method needs no key (health and reflection)."""
        return self.service in (HEALTH, REFLECTION) or self.service.startswith("grpc.reflection.")


@dataclass
class Outcome:
    """How a call ended, and what it received first."""

    code: grpc.StatusCode
    details: str
    responses: list[Any]


async def call_answered_first(channel: grpc.aio.Channel, method: Method, good: bytes, corrupt: bytes) -> Outcome:
    """Stream `good` then `corrupt`; with a response stream, `corrupt` goes only once `good`'s answer is read.

    Sent together, the server's error for `corrupt` could reach the client before the answer to `good` had been
    read, and the answer would be lost with the call: the test would depend on timing, not on the guard.
    """
    shape = "stream_stream" if method.server_streaming else "stream_unary"
    multicallable: Any = getattr(channel, shape)(method.path)  # no serializers: bytes in, bytes out
    answered = asyncio.Event()

    async def requests() -> AsyncIterator[bytes]:
        yield good
        if method.server_streaming:
            await answered.wait()
        yield corrupt

    responses: list[Any] = []
    try:
        async with asyncio.timeout(EVENT_TIMEOUT):  # a hang guard only
            started = multicallable(requests(), metadata=WITH_KEY)
            if method.server_streaming:
                async for response in started:
                    responses.append(response)
                    answered.set()
            else:
                responses.append(await started)
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "", responses)
    return Outcome(grpc.StatusCode.OK, "", responses)


async def call(channel: grpc.aio.Channel, method: Method, messages: Sequence[bytes], md: Metadata) -> Outcome:
    """Send raw `messages` to `method` (as a request stream unless it takes exactly one); read it to its end."""
    single = not method.client_streaming and len(messages) == 1
    shape = f"{'unary' if single else 'stream'}_{'stream' if method.server_streaming else 'unary'}"
    multicallable: Any = getattr(channel, shape)(method.path)  # no serializers: bytes in, bytes out
    responses: list[Any] = []
    try:
        async with asyncio.timeout(EVENT_TIMEOUT):  # a hang guard only
            started = multicallable(messages[0] if single else iter(messages), metadata=md)
            if method.server_streaming:
                async for response in started:  # one by one: what came before an error is kept
                    responses.append(response)
            else:
                responses.append(await started)
    except grpc.aio.AioRpcError as err:
        return Outcome(err.code(), err.details() or "", responses)
    return Outcome(grpc.StatusCode.OK, "", responses)


async def served_methods(channel: grpc.aio.Channel) -> list[Method]:
    """Every method of every service the server lists through reflection, from the services' descriptors."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    answer = await channel.stream_stream(
        f"/{REFLECTION}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )(iter([request])).read()
    assert isinstance(answer, reflection_pb2.ServerReflectionResponse)
    pool = descriptor_pool.Default()
    return [
        Method(
            service.name,
            m.name,
            message_factory.GetMessageClass(m.input_type),
            m.client_streaming,
            m.server_streaming,
        )
        for service in answer.list_services_response.service
        for m in pool.FindServiceByName(service.name).methods
    ]


def random_garbage(request: type[Message], seed: int) -> bytes:
    """Random bytes that `request` cannot be parsed from (seeded: the same bytes on every run)."""
    rng = random.Random(seed)
    while True:
        data = rng.randbytes(rng.randint(1, 64))
        try:
            request.FromString(data)
        except DecodeError:
            return data


def not_valid(method: Method) -> str:
    """The message a request that does not parse gets."""
    return f"the request is not a valid {method.request.DESCRIPTOR.full_name} message"


async def test_bad_bytes_to_any_method_of_any_service_are_invalid_argument_and_log_no_error(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    h = await make_server(api_keys=KEYS)
    async with grpc.aio.insecure_channel(h.target) as channel:
        methods = await served_methods(channel)
        # Everything the server serves, so a service added later is covered here without a change.
        assert {m.service for m in methods} >= {SERVICE_NAME, HEALTH, REFLECTION}
        assert {m.path for m in methods} >= {f"/{HEALTH}/{n}" for n in ("Check", "List", "Watch")}
        assert any(m.client_streaming for m in methods)
        checked = 0
        with no_error_logs(caplog, capfd):
            for i, method in enumerate(methods):
                payloads = MALFORMED | {"random": random_garbage(method.request, seed=i)}
                for label, data in payloads.items():
                    where = f"{method.path} {label}"
                    with_key = await call(channel, method, [data], WITH_KEY)
                    assert (with_key.code, with_key.details) == (grpc.StatusCode.INVALID_ARGUMENT, not_valid(method)), (
                        where
                    )
                    assert with_key.responses == [], where
                    # Without a key: the open services still parse; ours refuse before reading anything.
                    keyless = await call(channel, method, [data], ())
                    if method.open:
                        assert (keyless.code, keyless.details) == (with_key.code, with_key.details), where
                    else:
                        assert keyless.code == grpc.StatusCode.UNAUTHENTICATED, where
                    checked += 2
                # No message at all: a unary method is told so; a request stream may be empty.
                empty = await call(channel, method, [], WITH_KEY)
                if method.client_streaming:
                    assert (empty.code, empty.responses) == (grpc.StatusCode.OK, []), method.path
                    # One good message, then a corrupt one: the first is answered, the second refused.
                    good = method.request().SerializeToString()
                    mixed = await call(channel, method, [good, MALFORMED["corrupt"]], WITH_KEY)
                    assert (mixed.code, mixed.details) == (grpc.StatusCode.INVALID_ARGUMENT, not_valid(method))
                    assert len(mixed.responses) == 1, method.path
                else:
                    expected = (grpc.StatusCode.INVALID_ARGUMENT, "the call ended without a request message")
                    assert (empty.code, empty.details) == expected, method.path
        # The server is still well and serving.
        check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert checked == 8 * len(methods)


async def test_health_list_reports_every_service(make_server: ServerFactory) -> None:
    h = await make_server(api_keys=KEYS)
    async with grpc.aio.insecure_channel(h.target) as channel:
        listed = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=EVENT_TIMEOUT)
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        SERVICE_NAME: health_pb2.HealthCheckResponse.SERVING,
    }


# ----- every shape of method -----------------------------------------------------------------------------

SHAPES = ("UnaryUnary", "UnaryStream", "StreamUnary", "StreamStream")
TEST_SERVICE = "facilitair.test.Shapes"


class Shapes:
    """A test-only service with one method of each shape; each answers "<principal>:<request value>"."""

    def __init__(self) -> None:
        self.calls: list[str] = []  # the methods whose code ran, in order

    def _answer(self, shape: str, values: Sequence[str]) -> StringValue:
        self.calls.append(shape)
        return StringValue(value=f"{current_principal()}:{'+'.join(values)}")

    async def unary_unary(self, request: StringValue, _: object) -> StringValue:
        return self._answer("UnaryUnary", [request.value])

    async def unary_stream(self, request: StringValue, _: object) -> AsyncIterator[StringValue]:
        for part in ("a", "b"):
            yield self._answer("UnaryStream", [request.value + part])

    async def stream_unary(self, requests: AsyncIterator[StringValue], _: object) -> StringValue:
        return self._answer("StreamUnary", [r.value async for r in requests])

    async def stream_stream(self, requests: AsyncIterator[StringValue], _: object) -> AsyncIterator[StringValue]:
        async for request in requests:
            yield self._answer("StreamStream", [request.value])

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The four methods, registered the way generated code does (typed messages, not bytes)."""
        codec: dict[str, Any] = {
            "request_deserializer": StringValue.FromString,
            "response_serializer": StringValue.SerializeToString,
        }
        return grpc.method_handlers_generic_handler(
            TEST_SERVICE,
            {
                "UnaryUnary": grpc.unary_unary_rpc_method_handler(self.unary_unary, **codec),
                "UnaryStream": grpc.unary_stream_rpc_method_handler(self.unary_stream, **codec),
                "StreamUnary": grpc.stream_unary_rpc_method_handler(self.stream_unary, **codec),
                "StreamStream": grpc.stream_stream_rpc_method_handler(self.stream_stream, **codec),
            },
        )


def shape_method(shape: str) -> Method:
    """One method of the test-only service."""
    return Method(TEST_SERVICE, shape, StringValue, shape.startswith("Stream"), shape.endswith("Stream"))


@pytest.fixture
async def shapes() -> AsyncIterator[tuple[Shapes, str]]:
    """A real grpc.aio server on 127.0.0.1:0 with the guard (alice's key) and the test-only service."""
    service = Shapes()
    server = grpc.aio.server(interceptors=[GuardInterceptor(ApiKeys({"alice": KEY}), mtls=False)])
    server.add_generic_rpc_handlers([service.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def values(outcome: Outcome) -> list[str]:
    """The answers a call received, decoded."""
    return [StringValue.FromString(r).value for r in outcome.responses]


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_method_of_any_shape_needs_a_key_and_has_its_request_parsed(
    shapes: tuple[Shapes, str], shape: str
) -> None:
    service, target = shapes
    method = shape_method(shape)
    hello = StringValue(value="hi").SerializeToString()
    async with grpc.aio.insecure_channel(target) as channel:
        for md in ((), (("authorization", "Bearer not-the-key-0000000000"),)):
            refused = await call(channel, method, [hello], md)
            assert refused.code == grpc.StatusCode.UNAUTHENTICATED, (shape, refused.code, refused.details)
            assert "authorization: Bearer <key>" in refused.details
            assert refused.responses == []
        assert service.calls == []  # the method's code never ran
        served = await call(channel, method, [hello], WITH_KEY)
        assert served.code == grpc.StatusCode.OK, (served.code, served.details)
        assert (
            values(served)
            == {
                "UnaryUnary": ["alice:hi"],
                "UnaryStream": ["alice:hia", "alice:hib"],
                "StreamUnary": ["alice:hi"],
                "StreamStream": ["alice:hi"],
            }[shape]
        )
        assert set(service.calls) == {shape}
        service.calls.clear()
        for label, data in MALFORMED.items():
            bad = await call(channel, method, [data], WITH_KEY)
            assert (bad.code, bad.details) == (grpc.StatusCode.INVALID_ARGUMENT, not_valid(method)), (shape, label)
        if method.client_streaming:
            # Every message of a request stream is parsed: a good one is answered, a corrupt one ends the call.
            mixed = await call_answered_first(channel, method, hello, MALFORMED["corrupt"])
            assert (mixed.code, mixed.details) == (grpc.StatusCode.INVALID_ARGUMENT, not_valid(method))
            assert values(mixed) == (["alice:hi"] if method.server_streaming else [])
    assert service.calls == (["StreamStream"] if shape == "StreamStream" else [])
