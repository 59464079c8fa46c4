"""The standard health service: grpc's asyncio servicer, with the List method it leaves out.

grpc's servicer answers List from the generated base class, which raises NotImplementedError: every
call logged an error with a traceback, and anyone may call health. List is the health protocol's
snapshot of every service's status, which a probe or grpcurl may well ask for.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]


class HealthServicer(health_aio.HealthServicer):  # type: ignore[misc]  # the stubs do not know the aio module
    """Check, Watch and List; `set` and `enter_graceful_shutdown` as in grpc's servicer."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> health_pb2.HealthListResponse:
        """The status of every service the server reports on."""
        statuses = dict(self._server_status)  # a copy: a concurrent `set` must not change it mid-answer
        return health_pb2.HealthListResponse(
            statuses={name: health_pb2.HealthCheckResponse(status=status) for name, status in statuses.items()}
        )
