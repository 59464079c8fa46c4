"""Server reflection as generic tools meet it: grpc.reflection.v1alpha, the only version grpcio-reflection
serves (its 1.85 release has no v1 servicer; grpc/grpc#38576). `buf curl` and grpcurl ask for v1 first and
fall back to v1alpha on UNIMPLEMENTED, which is what a raw request shows here. When the library gains v1 and
the server serves it, the first assertion fails and the docs' sentence on it (docs/clients.md) must change with it.
"""

from __future__ import annotations

import grpc
from grpc_reflection.v1alpha import reflection_pb2

from tests.fakes.providers import FakeOpenAI
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory

METHOD = "/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"


async def list_services(target: str, version: str, *, ask: bool = True) -> list[str] | grpc.StatusCode:
    """The services a raw reflection request of `version` lists, or the status it ends with.

    v1 and v1alpha messages are the same on the wire (same fields, same numbers), so v1alpha's classes encode
    a v1 request too. With `ask=False` no message is sent: a method the server does not have is refused
    with UNIMPLEMENTED either way, but a request still being written when it is refused can surface as
    INTERNAL instead (a race in grpc seen before in this suite).
    """
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.stream_stream(
            METHOD.format(version=version),
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        try:
            asked = [reflection_pb2.ServerReflectionRequest(list_services="")] if ask else []
            responses = [r async for r in call(iter(asked))]
        except grpc.aio.AioRpcError as err:
            return err.code()
    return [s.name for r in responses for s in r.list_services_response.service]


async def test_reflection_is_v1alpha_only(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        v1 = await list_services(h.target, "v1", ask=False)
        v1alpha = await list_services(h.target, "v1alpha")
    assert v1 == grpc.StatusCode.UNIMPLEMENTED
    assert v1alpha == [
        "facilitair.v1.OrchestratorService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
