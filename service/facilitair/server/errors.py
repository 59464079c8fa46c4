"""Domain errors: what went wrong, said safely to a caller, with a stable machine-readable reason.

No transport here: the gRPC status of each reason is decided in one table, transport/status.py.

FacilitairError                 base; `public_message` is safe to show a caller, `reason` is stable
├── InvalidArgument             a request field is wrong (lists every field violation)
│   └── AmbiguousRunId          a run id prefix that more than one of the caller's runs start with
├── NotFound                    no such run (for this caller); reason PATH_NOT_FOUND for an unknown HTTP path
├── OutOfRange                  after_seq past the end of a run
├── FailedPrecondition          the server or the request cannot work as set up (e.g. no provider key)
├── AlreadyExists               an idempotency key reused for a different request
├── Unauthenticated             no valid credentials
├── DataCorrupt                 stored data cannot be read
├── Unavailable                 the server cannot take the request now (stopping, store failing)
├── ResourceLimited             a limit on runs; `retry_after` says when to try again
├── BudgetExceeded              a run spent, or would spend, more than its budget
├── RunDeadlineExceeded         a run took longer than the server allows
└── ProviderError               a model call failed; `kind` (ProviderFailure) decides retry and reason
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Stable reasons a client can branch on (google.rpc.ErrorInfo.reason, RunFailed.reason)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    # An HTTP path the gateway does not serve (a typo, an old client): not a missing run.
    PATH_NOT_FOUND = "PATH_NOT_FOUND"
    RUN_ID_AMBIGUOUS = "RUN_ID_AMBIGUOUS"
    SEQ_OUT_OF_RANGE = "SEQ_OUT_OF_RANGE"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    PROVIDER_NOT_CONFIGURED = "PROVIDER_NOT_CONFIGURED"
    PLAN_OVER_BUDGET = "PLAN_OVER_BUDGET"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    APPROVAL_ALREADY_DECIDED = "APPROVAL_ALREADY_DECIDED"
    NOT_AWAITING_APPROVAL = "NOT_AWAITING_APPROVAL"
    RUN_NOT_RESUMABLE = "RUN_NOT_RESUMABLE"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    RUN_NOT_DRIVEN = "RUN_NOT_DRIVEN"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    STORED_DATA_CORRUPT = "STORED_DATA_CORRUPT"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_MANY_RUNS = "TOO_MANY_RUNS"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
    RUN_DEADLINE_EXCEEDED = "RUN_DEADLINE_EXCEEDED"
    PROVIDER_RATE_LIMITED = "PROVIDER_RATE_LIMITED"
    PROVIDER_OVERLOADED = "PROVIDER_OVERLOADED"
    PROVIDER_SERVER_ERROR = "PROVIDER_SERVER_ERROR"
    PROVIDER_UNREACHABLE = "PROVIDER_UNREACHABLE"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    PROVIDER_STREAM_BROKEN = "PROVIDER_STREAM_BROKEN"
    PROVIDER_AUTH_FAILED = "PROVIDER_AUTH_FAILED"
    PROVIDER_PERMISSION_DENIED = "PROVIDER_PERMISSION_DENIED"
    PROVIDER_MODEL_NOT_FOUND = "PROVIDER_MODEL_NOT_FOUND"
    PROVIDER_REJECTED_REQUEST = "PROVIDER_REJECTED_REQUEST"
    PROVIDER_CONTEXT_EXCEEDED = "PROVIDER_CONTEXT_EXCEEDED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    # A state-changing HTTP request that a browser could have been tricked into sending (no CSRF header with a
    # session cookie, or another site's origin).
    CSRF_REFUSED = "CSRF_REFUSED"
    INTERNAL = "INTERNAL"


class FacilitairError(Exception):
    """Base of the errors the service reports to callers; the message never holds secrets or tracebacks."""

    reason: Reason = Reason.INTERNAL
    #: True when trying again later may succeed (a run's failure says so in run_failed.retryable).
    retryable: bool = False

    def __init__(self, public_message: str, *, reason: Reason | None = None) -> None:
        super().__init__(public_message)
        self.public_message = public_message
        if reason is not None:
            self.reason = reason


class InvalidArgument(FacilitairError):
    """A request field is invalid; `violations` lists (field, description) for the BadRequest detail."""

    reason = Reason.INVALID_ARGUMENT

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


class AmbiguousRunId(InvalidArgument):
    """A prefix of a run id that several of the caller's runs start with; the message names some of them."""

    reason = Reason.RUN_ID_AMBIGUOUS


class NotFound(FacilitairError):
    """The run does not exist, has expired, or belongs to someone else."""

    reason = Reason.RUN_NOT_FOUND


class OutOfRange(FacilitairError):
    """A position past the end of a run."""

    reason = Reason.SEQ_OUT_OF_RANGE


class FailedPrecondition(FacilitairError):
    """The server is not set up for what was asked (e.g. no key for the provider)."""

    reason = Reason.FAILED_PRECONDITION


class AlreadyExists(FacilitairError):
    """An idempotency key was reused for a different request."""

    reason = Reason.REQUEST_ID_REUSED


class Unauthenticated(FacilitairError):
    """The call carries no valid credentials."""

    reason = Reason.UNAUTHENTICATED


class DataCorrupt(FacilitairError):
    """Something the store holds cannot be read back."""

    reason = Reason.STORED_DATA_CORRUPT


class Unavailable(FacilitairError):
    """The server cannot take the request now; retrying later (or elsewhere) may work."""

    reason = Reason.SHUTTING_DOWN
    retryable = True


class ResourceLimited(FacilitairError):
    """A limit on concurrent runs or on the rate of new runs; `retry_after` says when to try again."""

    reason = Reason.TOO_MANY_RUNS
    retryable = True

    def __init__(self, public_message: str, retry_after: float, *, reason: Reason | None = None) -> None:
        super().__init__(public_message, reason=reason)
        self.retry_after = retry_after


class BudgetExceeded(FacilitairError):
    """A run spent (or would spend) more than its cost or token budget."""

    reason = Reason.BUDGET_EXCEEDED


class RunDeadlineExceeded(FacilitairError):
    """A run took longer than the server allows."""

    reason = Reason.RUN_DEADLINE_EXCEEDED


class ProviderFailure(enum.Enum):
    """What kind of provider failure ended an attempt: its words, its reason, and whether retrying may help."""

    RATE_LIMITED = ("rate limited", Reason.PROVIDER_RATE_LIMITED, True)
    OVERLOADED = ("overloaded or unavailable", Reason.PROVIDER_OVERLOADED, True)
    SERVER_ERROR = ("server error", Reason.PROVIDER_SERVER_ERROR, True)
    CONNECTION = ("connection failed", Reason.PROVIDER_UNREACHABLE, True)
    TIMEOUT = ("timed out", Reason.PROVIDER_TIMEOUT, True)
    STREAM_BROKEN = ("stream broke off", Reason.PROVIDER_STREAM_BROKEN, True)
    AUTH = ("rejected the API key", Reason.PROVIDER_AUTH_FAILED, False)
    PERMISSION = ("refused access to the model", Reason.PROVIDER_PERMISSION_DENIED, False)
    NOT_FOUND = ("does not know the model", Reason.PROVIDER_MODEL_NOT_FOUND, False)
    # The server builds the request from its pipeline file, so a refusal is its setup's, not the caller's.
    BAD_REQUEST = ("refused the request the server built", Reason.PROVIDER_REJECTED_REQUEST, False)
    CONTEXT_EXCEEDED = (
        "refused the request: prompt plus max_tokens exceed the context window",
        Reason.PROVIDER_CONTEXT_EXCEEDED,
        False,
    )

    def __init__(self, text: str, reason: Reason, retryable: bool) -> None:
        self.text = text
        self.reason = reason
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
        super().__init__(f"{provider} {kind.text} for model {model}{detail}{hint}", reason=kind.reason)
        self.provider = provider
        self.model = model
        self.kind = kind
        self.retryable = kind.retryable
        self.http_status = http_status
        self.retry_after = retry_after
        self.cause = cause  # the class of the error beneath (e.g. ConnectionRefusedError), for the server log
