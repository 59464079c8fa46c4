"""The facilitair client library: start runs, follow them (resume built in), ask about them.

Needs only grpcio and protobuf (and grpcio-status for error details); callers never import grpc::

    async with Client("127.0.0.1:50051") as client:
        result = await client.run("Write a function that reverses a string")   # or RunFailed / RunCancelled
        for file in result.files:
            print(file.path)

`collaborate`/`watch` yield every event (`event_kind(event)` says which); `SyncClient` offers the same
calls, blocking, for code that is not async. A run started with `pause_after` waits at approval gates:
answer with `submit_approval`, or decide in `run(..., on_approval=...)`::

    result = await client.run(task, pause_after=["architect"], on_approval=lambda gate: Approval.approve())
"""

from facilitair.client._client import (
    CHANNEL_OPTIONS,
    DECIDED_ALREADY,
    RECONNECT_GAVE_UP,
    TERMINAL,
    ApprovalCallback,
    Client,
    EventCallback,
)
from facilitair.client._errors import FacilitairError, RunCancelled, RunFailed, ServerUnreachable, StatusCode
from facilitair.client._sync import SyncClient
from facilitair.client._target import DEFAULT_PORT, Target, parse_target
from facilitair.client._types import (
    Agent,
    Approval,
    ApprovalRequest,
    ApprovalResult,
    ArtifactKind,
    CompletedRun,
    Decision,
    EventKind,
    OnApprovalTimeout,
    OnDisconnect,
    RunState,
    StoreKind,
    approval_request,
    event_kind,
    is_terminal,
    result_of,
)
from facilitair.v1.orchestrator_pb2 import Artifact, RunEvent, RunSummary, ServerLimits, Usage
from facilitair.v1.orchestrator_pb2 import GetServerInfoResponse as ServerInfo

__all__ = [
    "CHANNEL_OPTIONS",
    "DECIDED_ALREADY",
    "DEFAULT_PORT",
    "RECONNECT_GAVE_UP",
    "TERMINAL",
    "Agent",
    "Approval",
    "ApprovalCallback",
    "ApprovalRequest",
    "ApprovalResult",
    "Artifact",
    "ArtifactKind",
    "Client",
    "CompletedRun",
    "Decision",
    "EventCallback",
    "EventKind",
    "FacilitairError",
    "OnApprovalTimeout",
    "OnDisconnect",
    "RunCancelled",
    "RunEvent",
    "RunFailed",
    "RunState",
    "RunSummary",
    "ServerInfo",
    "ServerLimits",
    "ServerUnreachable",
    "StatusCode",
    "StoreKind",
    "SyncClient",
    "Target",
    "Usage",
    "approval_request",
    "event_kind",
    "is_terminal",
    "parse_target",
    "result_of",
]
