"""The facilitair client library: start runs, follow them (resume built in), ask about them.

Needs only grpcio and protobuf (and grpcio-status for error details); callers never import grpc::

    async with Client("127.0.0.1:50051") as client:
        async for event in client.collaborate("Write a function that reverses a string"):
            ...

`SyncClient` offers the same calls, blocking, for code that is not async.
"""

from facilitair.client._client import CHANNEL_OPTIONS, TERMINAL, Client
from facilitair.client._errors import FacilitairError, StatusCode
from facilitair.client._sync import SyncClient
from facilitair.v1.orchestrator_pb2 import RunEvent, RunSummary

__all__ = [
    "CHANNEL_OPTIONS",
    "TERMINAL",
    "Client",
    "FacilitairError",
    "RunEvent",
    "RunSummary",
    "StatusCode",
    "SyncClient",
]
