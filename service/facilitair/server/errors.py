"""Domain errors and the one table that maps them to gRPC status codes.

FacilitairError                 base; `public_message` is safe to show a caller
├── InvalidArgument             a request field is wrong          -> INVALID_ARGUMENT (+ BadRequest)
├── NotFound                    no such run (for this caller)      -> NOT_FOUND
├── OutOfRange                  after_seq past a finished run      -> OUT_OF_RANGE
├── FailedPrecondition          e.g. a provider is not configured  -> FAILED_PRECONDITION
├── Unavailable                 the server is shutting down        -> UNAVAILABLE
└── ProviderError               a model call failed for good       -> by kind (see ProviderFailure)
"""

from __future__ import annotations

import enum

import grpc


class FacilitairError(Exception):
    """Base of the errors the service reports to callers; the message never holds secrets or tracebacks."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, public_message: str) -> None:
        super().__init__(public_message)
        self.public_message = public_message


class InvalidArgument(FacilitairError):
    """A request field is invalid; `field` names it for the BadRequest detail."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.violations: list[tuple[str, str]] = [(field, description)]

    @classmethod
    def many(cls, violations: list[tuple[str, str]]) -> InvalidArgument:
        """One error listing several field violations."""
        err = cls(*violations[0])
        err.violations = list(violations)
        err.public_message = "; ".join(f"{f}: {d}" for f, d in violations)
        err.args = (err.public_message,)
        return err


class NotFound(FacilitairError):
    """The run does not exist, has expired, or belongs to someone else."""

    code = grpc.StatusCode.NOT_FOUND


class OutOfRange(FacilitairError):
    """A position past the end of a finished run."""

    code = grpc.StatusCode.OUT_OF_RANGE


class FailedPrecondition(FacilitairError):
    """The server is not set up for what was asked (e.g. no key for the provider)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(FacilitairError):
    """The server cannot take the request now; retrying later may work."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceLimited(FacilitairError):
    """A limit on concurrent runs or on the rate of new runs; `retry_after` says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, public_message: str, retry_after: float) -> None:
        super().__init__(public_message)
        self.retry_after = retry_after


class BudgetExceeded(FacilitairError):
    """A run spent (or would spend) more than its cost or token budget."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class RunDeadlineExceeded(FacilitairError):
    """A run took longer than the server allows."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ProviderFailure(enum.Enum):
    """What kind of provider failure ended an attempt; decides retry and status code."""

    RATE_LIMITED = ("rate limited", grpc.StatusCode.RESOURCE_EXHAUSTED, True)
    OVERLOADED = ("overloaded or unavailable", grpc.StatusCode.UNAVAILABLE, True)
    SERVER_ERROR = ("server error", grpc.StatusCode.UNAVAILABLE, True)
    CONNECTION = ("connection failed", grpc.StatusCode.UNAVAILABLE, True)
    TIMEOUT = ("timed out", grpc.StatusCode.DEADLINE_EXCEEDED, True)
    STREAM_BROKEN = ("stream broke off", grpc.StatusCode.UNAVAILABLE, True)
    AUTH = ("rejected the API key", grpc.StatusCode.FAILED_PRECONDITION, False)
    PERMISSION = ("refused access to the model", grpc.StatusCode.PERMISSION_DENIED, False)
    NOT_FOUND = ("does not know the model", grpc.StatusCode.FAILED_PRECONDITION, False)
    # The server builds the request from its pipeline file, so a refusal is its setup's, not the caller's.
    BAD_REQUEST = ("refused the request the server built", grpc.StatusCode.FAILED_PRECONDITION, False)
    CONTEXT_EXCEEDED = ("refused the request: prompt plus max_tokens exceed the context window",
                        grpc.StatusCode.FAILED_PRECONDITION, False)  # fmt: skip

    def __init__(self, text: str, code: grpc.StatusCode, retryable: bool) -> None:
        self.text = text
        self.status_code = code
        self.retryable = retryable


class ProviderError(FacilitairError):
    """A provider call failed; the message names the provider and kind, never the vendor's raw text."""

    def __init__(
        self,
        provider: str,
        model: str,
        kind: ProviderFailure,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
        cause: str | None = None,
    ) -> None:
        detail = f" (HTTP {http_status})" if http_status else ""
        hint = ""
        if kind is ProviderFailure.AUTH:
            hint = f"; check {provider.upper()}_API_KEY"
        elif kind is ProviderFailure.NOT_FOUND:
            hint = "; check the model name in the request or pipeline config"
        elif kind is ProviderFailure.CONTEXT_EXCEEDED:
            hint = (
                "; lower this agent's max_tokens in the pipeline file ([agents.<agent>] max_tokens), "
                "or serve the model with a larger context window"
            )
        elif kind is ProviderFailure.BAD_REQUEST:
            hint = "; check this agent's settings in the pipeline file (max_tokens, temperature) against the model"
        super().__init__(f"{provider} {kind.text} for model {model}{detail}{hint}")
        self.provider = provider
        self.kind = kind
        self.code = kind.status_code
        self.retryable = kind.retryable
        self.http_status = http_status
        self.retry_after = retry_after
        self.cause = cause  # the class of the error beneath (e.g. ConnectionRefusedError), for the server log


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and caller-safe message for any exception: unknown ones become a generic INTERNAL."""
    if isinstance(exc, FacilitairError):
        return exc.code, exc.public_message
    return grpc.StatusCode.INTERNAL, "internal error; the server log has the details"
