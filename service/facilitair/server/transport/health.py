"""The standard health service: grpc's asyncio servicer, with the List method it leaves out.

grpc's servicer answers List from the generated base class, which raises NotImplementedError: every
call logged an error with a traceback, and anyone may call health. List is the health protocol's
snapshot of every service's status, which a probe or grpcurl may well ask for.

grpc keeps the statuses in a private attribute, so List uses only the servicer's public methods: the names
reported on are those given to `set` (and "", which grpc's servicer starts with), and each name's status is
what `Check` answers for it.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]

ServingStatus: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus.ValueType


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]  # the stubs do not know the aio module
    """Check, Watch and List; `set` and `enter_graceful_shutdown` as in grpc's servicer."""

    def __init__(self) -> None:
        super().__init__()
        self._services: list[str] = [""]  # the names grpc's servicer holds a status for, in the order set
        # grpc's servicer ignores every `set` from the graceful shutdown on, new names included.
        self._shutting_down = False

    async def set(self, service: str, status: ServingStatus) -> None:
        """Set the status of `service` (ignored once shutting down, as in grpc's servicer)."""
        await super().set(service, status)
        if not self._shutting_down and service not in self._services:
            self._services.append(service)

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good."""
        self._shutting_down = True
        await super().enter_graceful_shutdown()

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> health_pb2.HealthListResponse:
        """The status of every service the server reports on."""
        statuses: dict[str, ServingStatus] = {}
        # Check answers a known name without awaiting anything, so no `set` comes between two names' answers.
        for name in list(self._services):
            checked: health_pb2.HealthCheckResponse = await self.Check(
                health_pb2.HealthCheckRequest(service=name), context
            )
            statuses[name] = checked.status
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()}
        )
