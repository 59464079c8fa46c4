"""The health service's List (issue 20, item 10): every service set, with the status Check gives it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facilitair.server.transport.health import HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TIMEOUT = 10.0  # generous: detects a hang


@pytest.fixture
async def served() -> AsyncIterator[tuple[HealthServicer, health_pb2_grpc.HealthStub]]:
    server = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield health, health_pb2_grpc.HealthStub(channel)
    finally:
        await server.stop(None)


async def listed(stub: health_pb2_grpc.HealthStub) -> dict[str, int]:
    response = await stub.List(health_pb2.HealthListRequest(), timeout=TIMEOUT)
    return {name: s.status for name, s in response.statuses.items()}


async def test_list_reports_each_service_set_with_its_latest_status(
    served: tuple[HealthServicer, health_pb2_grpc.HealthStub],
) -> None:
    health, stub = served
    assert await listed(stub) == {"": SERVING}  # grpc's servicer starts with the server as a whole
    await health.set("a.A", SERVING)
    await health.set("b.B", NOT_SERVING)
    await health.set("a.A", NOT_SERVING)
    assert await listed(stub) == {"": SERVING, "a.A": NOT_SERVING, "b.B": NOT_SERVING}


async def test_after_the_graceful_shutdown_every_service_is_not_serving_and_sets_are_ignored(
    served: tuple[HealthServicer, health_pb2_grpc.HealthStub],
) -> None:
    health, stub = served
    await health.set("a.A", SERVING)
    await health.enter_graceful_shutdown()
    await health.set("a.A", SERVING)
    await health.set("late.Service", SERVING)  # grpc's servicer ignores it: List must not name it
    assert await listed(stub) == {"": NOT_SERVING, "a.A": NOT_SERVING}
    check = await stub.Check(health_pb2.HealthCheckRequest(service="a.A"), timeout=TIMEOUT)
    assert check.status == NOT_SERVING
