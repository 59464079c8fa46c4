"""The client's error type, so that callers never catch grpc exceptions.

FacilitairError          any failed call; `code` is a StatusCode, `message` is the server's text,
                         `field_violations` lists (field, description) for INVALID_ARGUMENT.
"""

from __future__ import annotations

import enum

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class StatusCode(enum.IntEnum):
    """gRPC status codes, by number."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class FacilitairError(Exception):
    """A call to the service failed."""

    def __init__(self, code: StatusCode, message: str, field_violations: list[tuple[str, str]] | None = None) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.field_violations = field_violations or []

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> FacilitairError:
        """Convert a grpc error, decoding a BadRequest detail when there is one."""
        code = StatusCode(err.code().value[0]) if err.code() is not None else StatusCode.UNKNOWN
        violations: list[tuple[str, str]] = []
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [(v.field, v.description) for v in bad.field_violations]
        return cls(code, err.details() or code.name, violations)
