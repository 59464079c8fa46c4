"""The status table (transport/status.py): every reason has a code, and every error carries its details."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2

from facilitair.server.errors import (
    AlreadyExists,
    BudgetExceeded,
    DataCorrupt,
    FacilitairError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ProviderError,
    ProviderFailure,
    Reason,
    ResourceLimited,
    RunDeadlineExceeded,
    Unauthenticated,
    Unavailable,
)
from facilitair.server.transport.status import (
    CODE_OF_REASON,
    ERROR_DOMAIN,
    INTERNAL_MESSAGE,
    code_of,
    reason_of,
    status_number,
    status_of,
)

S = grpc.StatusCode


def test_every_reason_has_a_status_code() -> None:
    assert set(CODE_OF_REASON) == set(Reason)
    assert S.OK not in CODE_OF_REASON.values()
    assert S.UNKNOWN not in CODE_OF_REASON.values()


def unpacked(packed: any_pb2.Any) -> Message:
    """A detail, unpacked into its own type."""
    for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.BadRequest):
        if packed.Is(kind.DESCRIPTOR):
            detail: Message = kind()
            packed.Unpack(detail)
            return detail
    raise AssertionError(f"unexpected detail {packed.type_url}")


def info(reason: Reason) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo every error carries."""
    return error_details_pb2.ErrorInfo(reason=reason.value, domain=ERROR_DOMAIN)


def retry(seconds: float) -> error_details_pb2.RetryInfo:
    """A RetryInfo detail."""
    detail = error_details_pb2.RetryInfo()
    detail.retry_delay.FromNanoseconds(int(seconds * 1e9))
    return detail


def bad_request(*violations: tuple[str, str]) -> error_details_pb2.BadRequest:
    """A BadRequest detail."""
    return error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
    )


ERRORS: list[tuple[str, BaseException, S, str, list[Message]]] = [
    (
        "invalid-argument",
        InvalidArgument.many([("task", "is blank"), ("model", "is bad")]),
        S.INVALID_ARGUMENT,
        "task: is blank; model: is bad",
        [info(Reason.INVALID_ARGUMENT), bad_request(("task", "is blank"), ("model", "is bad"))],
    ),
    ("not-found", NotFound("run r not found"), S.NOT_FOUND, "run r not found", [info(Reason.RUN_NOT_FOUND)]),
    ("out-of-range", OutOfRange("after_seq 9 > 8"), S.OUT_OF_RANGE, "after_seq 9 > 8", [info(Reason.SEQ_OUT_OF_RANGE)]),
    ("precondition", FailedPrecondition("no"), S.FAILED_PRECONDITION, "no", [info(Reason.FAILED_PRECONDITION)]),
    (
        "precondition-with-its-reason",
        FailedPrecondition("no key", reason=Reason.PROVIDER_NOT_CONFIGURED),
        S.FAILED_PRECONDITION,
        "no key",
        [info(Reason.PROVIDER_NOT_CONFIGURED)],
    ),
    ("request-id-reused", AlreadyExists("reused"), S.ALREADY_EXISTS, "reused", [info(Reason.REQUEST_ID_REUSED)]),
    ("unauthenticated", Unauthenticated("key?"), S.UNAUTHENTICATED, "key?", [info(Reason.UNAUTHENTICATED)]),
    ("data-loss", DataCorrupt("event 3"), S.DATA_LOSS, "event 3", [info(Reason.STORED_DATA_CORRUPT)]),
    ("shutting-down", Unavailable("stopping"), S.UNAVAILABLE, "stopping", [info(Reason.SHUTTING_DOWN)]),
    (
        "store-unavailable",
        Unavailable("disk full", reason=Reason.STORE_UNAVAILABLE),
        S.UNAVAILABLE,
        "disk full",
        [info(Reason.STORE_UNAVAILABLE)],
    ),
    (
        "too-many-runs",
        ResourceLimited("too many", 2.5),
        S.RESOURCE_EXHAUSTED,
        "too many",
        [info(Reason.TOO_MANY_RUNS), retry(2.5)],
    ),
    (
        "rate-limited",
        ResourceLimited("slow down", 0.25, reason=Reason.RATE_LIMITED),
        S.RESOURCE_EXHAUSTED,
        "slow down",
        [info(Reason.RATE_LIMITED), retry(0.25)],
    ),
    ("budget", BudgetExceeded("spent"), S.RESOURCE_EXHAUSTED, "spent", [info(Reason.BUDGET_EXCEEDED)]),
    ("deadline", RunDeadlineExceeded("late"), S.DEADLINE_EXCEEDED, "late", [info(Reason.RUN_DEADLINE_EXCEEDED)]),
    (
        "provider-auth",
        ProviderError("openai", "gpt-4.1-mini", ProviderFailure.AUTH, http_status=401),
        S.FAILED_PRECONDITION,
        "",  # the provider's message is checked where it is made (test_faults, test_collaborate)
        [info(Reason.PROVIDER_AUTH_FAILED)],
    ),
    (
        "unexpected",
        ValueError("/var/lib/secret.db is locked"),
        S.INTERNAL,
        INTERNAL_MESSAGE,
        [info(Reason.INTERNAL)],
    ),
]


@pytest.mark.parametrize(("error", "code", "message", "details"), [r[1:] for r in ERRORS], ids=[r[0] for r in ERRORS])
def test_an_error_is_sent_with_its_code_message_and_details(
    error: BaseException, code: S, message: str, details: list[Message]
) -> None:
    status = status_of(error)
    assert code_of(error) == code
    assert status.code == status_number(error) == code.value[0]
    if message:
        assert status.message == message
    else:
        assert isinstance(error, FacilitairError)
        assert status.message == error.public_message
    assert reason_of(error).value == info(reason_of(error)).reason
    assert [unpacked(d) for d in status.details] == details
