"""The one table from domain errors to gRPC statuses, and the rich status every error is sent with.

Every error a caller sees, during setup or in the middle of a stream, is built here and sent by the guard
(guard.py), the one place errors become statuses (the servicer maps none): the status code of its reason,
its caller-safe message, a google.rpc.ErrorInfo with the stable reason (domain "facilitair.v1"), and a
BadRequest or RetryInfo detail where one applies. Anything that is not a FacilitairError is INTERNAL with a
generic message; its traceback goes to the log, never to the caller.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
import structlog
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from facilitair.server.errors import FacilitairError, InvalidArgument, Reason, ResourceLimited

log = structlog.get_logger(__name__)

ERROR_DOMAIN = "facilitair.v1"
INTERNAL_MESSAGE = "internal error; the server log has the details"

CODE_OF_REASON: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.RUN_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Reason.PATH_NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    # The request cannot be served as it is, whatever the caller waits for: more characters are needed.
    Reason.RUN_ID_AMBIGUOUS: grpc.StatusCode.INVALID_ARGUMENT,
    Reason.SEQ_OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    Reason.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_NOT_CONFIGURED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PLAN_OVER_BUDGET: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.REQUEST_ID_REUSED: grpc.StatusCode.ALREADY_EXISTS,
    Reason.APPROVAL_ALREADY_DECIDED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.NOT_AWAITING_APPROVAL: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.RUN_NOT_RESUMABLE: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.SHUTTING_DOWN: grpc.StatusCode.UNAVAILABLE,
    Reason.RUN_NOT_DRIVEN: grpc.StatusCode.UNAVAILABLE,
    Reason.STORE_UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.STORED_DATA_CORRUPT: grpc.StatusCode.DATA_LOSS,
    Reason.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.TOO_MANY_RUNS: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.BUDGET_EXCEEDED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.RUN_DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.PROVIDER_RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Reason.PROVIDER_OVERLOADED: grpc.StatusCode.UNAVAILABLE,
    Reason.PROVIDER_SERVER_ERROR: grpc.StatusCode.UNAVAILABLE,
    Reason.PROVIDER_UNREACHABLE: grpc.StatusCode.UNAVAILABLE,
    Reason.PROVIDER_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    Reason.PROVIDER_STREAM_BROKEN: grpc.StatusCode.UNAVAILABLE,
    Reason.PROVIDER_AUTH_FAILED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.PROVIDER_MODEL_NOT_FOUND: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_REJECTED_REQUEST: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.PROVIDER_CONTEXT_EXCEEDED: grpc.StatusCode.FAILED_PRECONDITION,
    Reason.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Reason.CSRF_REFUSED: grpc.StatusCode.PERMISSION_DENIED,
    Reason.INTERNAL: grpc.StatusCode.INTERNAL,
}


# The HTTP status of each gRPC code, as grpc-gateway maps them (runtime.HTTPStatusFromCode), for the HTTP gateway:
# one table of errors for both, the HTTP status read off the gRPC code the reason has above.
HTTP_STATUS_OF_CODE: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def reason_of(exc: BaseException) -> Reason:
    """The stable reason of any exception (INTERNAL for the unexpected)."""
    return exc.reason if isinstance(exc, FacilitairError) else Reason.INTERNAL


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status code of any exception."""
    return CODE_OF_REASON[reason_of(exc)]


def status_number(exc: BaseException) -> int:
    """The status code's number (what a run_failed event carries)."""
    return int(code_of(exc).value[0])


def status_of(exc: BaseException) -> status_pb2.Status:
    """The google.rpc.Status sent for `exc`, with its details."""
    reason = reason_of(exc)
    message = exc.public_message if isinstance(exc, FacilitairError) else INTERNAL_MESSAGE
    status = status_pb2.Status(code=CODE_OF_REASON[reason].value[0], message=message)
    details: list[Message] = [error_details_pb2.ErrorInfo(reason=reason.value, domain=ERROR_DOMAIN)]
    if isinstance(exc, ResourceLimited):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromNanoseconds(int(exc.retry_after * 1e9))
        details.append(retry)
    if isinstance(exc, InvalidArgument):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in exc.violations
                ]
            )
        )
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return status


async def abort(context: grpc.aio.ServicerContext[object, object], exc: BaseException) -> NoReturn:
    """End the call with the status that fits `exc`; an unexpected exception is logged with its traceback."""
    if not isinstance(exc, FacilitairError):
        log.error("rpc_failed", exc_info=exc)
    await context.abort_with_status(rpc_status.to_status(status_of(exc)))  # type: ignore[attr-defined]
    raise AssertionError("abort_with_status returns only by raising")  # pragma: no cover


def http_status_of(exc: BaseException) -> int:
    """The HTTP status the gateway answers `exc` with (grpc-gateway's for its gRPC code)."""
    return HTTP_STATUS_OF_CODE[code_of(exc)]


def error_body(exc: BaseException) -> dict[str, object]:
    """The gateway's JSON error: the gRPC status (code, message, details in canonical JSON) and its reason.

    The same Status the gRPC caller gets, so the two cannot disagree; `reason` is the ErrorInfo's, lifted up
    so that a caller need not search the details for it. An unexpected exception is logged here, as by abort.
    """
    if not isinstance(exc, FacilitairError):
        log.error("http_request_failed", exc_info=exc)
    body: dict[str, object] = json_format.MessageToDict(status_of(exc), always_print_fields_with_no_presence=True)
    body["reason"] = reason_of(exc).value
    return body
