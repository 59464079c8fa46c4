"""The client's error types, so that callers never catch grpc exceptions.

FacilitairError          any failed call; `code` is a StatusCode, `message` is the server's text,
 |                       `reason` a stable machine-readable reason to branch on (the server's
 |                       google.rpc.ErrorInfo, domain "facilitair.v1": "BUDGET_EXCEEDED", "RATE_LIMITED",
 |                       "STORE_UNAVAILABLE", ...; "" when the server sent none;
 |                       "RECONNECT_GAVE_UP" when a stream stopped re-attaching, the run going on),
 |                       `field_violations` lists (field, description) for INVALID_ARGUMENT (also for
 |                       arguments the library refuses before sending), `retry_after` is the server's
 |                       RetryInfo delay in seconds (or None).
 +-- ServerUnreachable   the first connection failed: nothing answers at `target` (code UNAVAILABLE).
 +-- RunFailed           the run ended with run_failed: `code`, `reason` and `message` from the event,
 |                       `retryable`, `stage`, `usage` so far, `run_id`.
 +-- RunCancelled        the run ended with run_cancelled: `cancel_reason` (by whom), `usage` so far,
                         `run_id` (code CANCELLED, reason "RUN_CANCELLED").
"""

from __future__ import annotations

import enum
import re

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from facilitair.v1 import orchestrator_pb2 as pb


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

    def __init__(
        self,
        code: StatusCode,
        message: str,
        field_violations: list[tuple[str, str]] | None = None,
        retry_after: float | None = None,
        reason: str = "",
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        #: The server's stable reason for the error (ErrorInfo.reason), e.g. "RATE_LIMITED"; "" when none.
        self.reason = reason
        self.field_violations = field_violations or []
        #: When the server says when to retry (RESOURCE_EXHAUSTED from a run limit): seconds to wait.
        self.retry_after = retry_after

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, target: str = "") -> FacilitairError:
        """Convert a grpc error, decoding ErrorInfo, BadRequest and RetryInfo details when there are some.

        A connection failure (UNAVAILABLE that no server of ours sent) is said in our words about `target`.
        """
        code = StatusCode(err.code().value[0]) if err.code() is not None else StatusCode.UNKNOWN
        violations: list[tuple[str, str]] = []
        retry_after: float | None = None
        reason = ""
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        if status is not None:
            for detail in status.details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    violations += [(v.field, v.description) for v in bad.field_violations]
                elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    retry = error_details_pb2.RetryInfo()
                    detail.Unpack(retry)
                    retry_after = retry.retry_delay.ToNanoseconds() / 1e9
                elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
        message = err.details() or code.name
        if code == StatusCode.RESOURCE_EXHAUSTED and not reason and (too_large := _TOO_LARGE.search(message)):
            # gRPC's own limit on a request message, enforced before any handler of ours sees it. The request
            # cannot succeed as it is, so it is a bad argument, said as the server says its own limits.
            size, limit = too_large.groups()
            why = f"is {size} bytes; the server's limit is {limit} (a task of at most 20000 characters, a context of "
            why += "64 KiB)"
            return cls(StatusCode.INVALID_ARGUMENT, f"request: {why}", [("request", why)])
        if code == StatusCode.UNAVAILABLE and not reason:
            message = connection_failure(message, target or "the server")
        return cls(code, message, violations, retry_after, reason)


# gRPC's words when a request message is over the server's limit: "Received message larger than max (X vs. Y)".
_TOO_LARGE = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")


# gRPC's words for a broken connection or a failed connect (a server of ours always sends an ErrorInfo reason
# with its own UNAVAILABLE), first match wins; "{target}" is where the client connects.
_CONNECTION_WORDS = (
    ("connection refused", "nothing listens at {target} (connection refused)"),
    ("cancelling all calls", "the server at {target} closed the connection (it is stopping or restarting)"),
    ("goaway", "the server at {target} closed the connection (it is stopping or restarting)"),
    ("keepalive", "the server at {target} stopped answering (keepalive)"),
    ("ping timeout", "the server at {target} stopped answering (keepalive)"),
    ("dns resolution failed", "the name in {target} does not resolve"),
    ("timed out", "connecting to {target} timed out"),
    ("no route to host", "no route to {target}"),
    ("socket closed", "the connection to {target} was cut"),
    ("connection reset", "the connection to {target} was cut"),
    ("broken pipe", "the connection to {target} was cut"),
    ("stream removed", "the connection to {target} was cut"),
    ("failed to connect", "cannot connect to {target}"),
    ("connections to all backends failing", "cannot connect to {target}"),
)


def connection_failure(message: str, target: str) -> str:
    """gRPC's message for a failed connection in our words (`message` itself when it is not one gRPC uses)."""
    lowered = message.lower()
    for words, ours in _CONNECTION_WORDS:
        if words in lowered:
            return ours.format(target=target)
    return message


class ServerUnreachable(FacilitairError):
    """The client has never reached the server: nothing answered at the target (or not with TLS)."""

    def __init__(self, target: str, *, tls: bool) -> None:
        running = "running with TLS" if tls else "running"
        message = f"cannot reach facilitair at {target} - is `facilitair serve` {running}?"
        super().__init__(StatusCode.UNAVAILABLE, message, reason="SERVER_UNREACHABLE")
        self.target = target


class RunFailed(FacilitairError):
    """A run ended with run_failed; `code`/`message` are the event's, `usage` what was spent."""

    def __init__(self, run_id: str, failure: pb.RunFailed) -> None:
        code = StatusCode(failure.code) if failure.code in StatusCode._value2member_map_ else StatusCode.UNKNOWN
        super().__init__(code, failure.message, reason=failure.reason)
        self.run_id = run_id
        self.retryable = failure.retryable
        self.stage = failure.stage
        self.usage = failure.usage


class RunCancelled(FacilitairError):
    """A run ended with run_cancelled; `cancel_reason` says by whom, `usage` what was spent."""

    def __init__(self, run_id: str, cancelled: pb.RunCancelled) -> None:
        super().__init__(StatusCode.CANCELLED, f"run cancelled: {cancelled.reason}", reason="RUN_CANCELLED")
        self.run_id = run_id
        self.cancel_reason = cancelled.reason
        self.usage = cancelled.usage
