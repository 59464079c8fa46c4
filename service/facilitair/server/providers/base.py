"""The provider interface: stream one completion as text deltas, then one StreamEnd.

The orchestrator only sees this module; vendor SDKs stay in the implementations.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from facilitair.server.errors import ProviderError, ProviderFailure


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One model call: a system prompt and one user message."""

    model: str
    system: str
    prompt: str
    max_tokens: int
    temperature: float | None = None
    timeout: float | None = None


# The finish reasons that mean the output reached max_tokens and was cut off.
TRUNCATED_REASONS = frozenset({"length", "max_tokens"})


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a stream: usage as the provider reported it, and why it stopped.

    `input_tokens` is the whole prompt, the cached part included (Anthropic reports that part beside its
    own `input_tokens`; OpenAI inside `prompt_tokens`). Of it, `cache_read_tokens` were read from the
    provider's prompt cache and `cache_write_tokens` written to it; each is priced at its own rate.
    `usage_reported` is False when an OpenAI-compatible endpoint sent no usage chunk.
    """

    input_tokens: int
    output_tokens: int
    finish_reason: str
    usage_reported: bool = True
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    response_model: str = ""  # the model the vendor says answered ("" when it did not say)

    @property
    def truncated(self) -> bool:
        """Whether the model stopped at max_tokens (OpenAI says "length", Anthropic "max_tokens")."""
        return self.finish_reason in TRUNCATED_REASONS


@dataclass(frozen=True, slots=True)
class UsageReport:
    """Usage a provider reported before its stream's end, so that a stream cut off later is counted right.

    Anthropic reports the prompt in `message_start` (output not yet: None) and the output in
    `message_delta`; OpenAI reports both in the usage chunk just before `[DONE]`. Counts mean what
    StreamEnd's mean. The StreamEnd of a stream that finishes supersedes every report.
    """

    input_tokens: int
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


class Provider(Protocol):
    """A vendor's streaming completions API."""

    name: str
    host: str  # the API's host[:port] for logs: no scheme, no path, no credentials

    def stream(self, request: CompletionRequest) -> AsyncGenerator[str | UsageReport | StreamEnd, None]:
        """Yield text deltas exactly as the vendor streams them, then one StreamEnd.

        A UsageReport may come between them whenever the vendor reports usage before the end.

        Raises ProviderError for every failure, including a stream that ends without its terminal
        event. Closing the iterator (aclose) closes the HTTP response, so no more tokens are paid for.
        """
        ...

    async def aclose(self) -> None:
        """Release the HTTP client."""
        ...


@runtime_checkable
class KnowsContextWindows(Protocol):
    """A provider that knows its models' context windows (a local server does; the vendors' APIs do not say).

    The pipeline fits each stage's request into the window (pipeline/context.py); a pipeline file's
    `context_window` for the agent wins over it.
    """

    def context_window(self, model: str) -> int | None:
        """The model's context window in tokens (prompt plus output), or None when it cannot tell."""
        ...


@runtime_checkable
class ChecksModels(Protocol):
    """A provider that can tell, before a run starts, that it cannot serve a model (e.g. a file is missing)."""

    def check_model(self, model: str) -> None:
        """Raise FailedPrecondition saying what to do when `model` cannot be served."""
        ...


def failure_for_status(status: int, error_type: str | None = None, said: Iterable[str] = ()) -> ProviderFailure:
    """Classify an HTTP status (and the vendor's error type and words, when the status says nothing).

    `said` holds the vendor's error type, code and message: read only to recognise a request that does
    not fit the model's context window, never passed on (it may echo the request, keys included).
    """
    if status in (400, 413, 422) and _is_context_refusal(said):
        return ProviderFailure.CONTEXT_EXCEEDED
    if status in (401,):
        return ProviderFailure.AUTH
    if status == 403:
        return ProviderFailure.PERMISSION
    if status == 404:
        return ProviderFailure.NOT_FOUND
    if status == 408:
        return ProviderFailure.TIMEOUT
    if status == 429 or error_type == "rate_limit_error":
        return ProviderFailure.RATE_LIMITED
    if status in (503, 529) or error_type == "overloaded_error":
        return ProviderFailure.OVERLOADED
    if 400 <= status < 500:
        return ProviderFailure.BAD_REQUEST
    return ProviderFailure.SERVER_ERROR


# How servers say that a prompt plus max_tokens does not fit: llama.cpp ("exceed_context_size_error",
# "exceeds the available context size"), OpenAI and vLLM ("context_length_exceeded", "maximum context
# length"), Anthropic ("prompt is too long", "exceed context limit"), others ("context window").
_CONTEXT_MARKERS = (
    "context size",
    "context_size",
    "context length",
    "context_length",
    "context window",
    "context limit",
    "prompt is too long",
)


def _is_context_refusal(said: Iterable[str]) -> bool:
    """Whether the vendor's words say the request does not fit the model's context window."""
    return any(marker in text.lower() for text in said for marker in _CONTEXT_MARKERS)


def error_words(body: object) -> list[str]:
    """The vendor's error type, code and message from an error body (`{"error": {...}}` or the inner dict)."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        return []
    return [str(inner[key]) for key in ("type", "code", "message") if isinstance(inner.get(key), str)]


def host_of(base_url: Any) -> str:
    """host[:port] of the SDK client's base URL (an httpx2.URL), for logs."""
    host = str(getattr(base_url, "host", "") or "unknown")
    port = getattr(base_url, "port", None)
    return f"{host}:{port}" if port else host


MAX_RETRY_AFTER = 120.0


def retry_after_of(headers: Mapping[str, str] | None) -> float | None:
    """The delay a 429/503/529 asks for (`retry-after-ms` or `retry-after` in seconds), capped."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) * scale
        except ValueError:
            continue  # an HTTP date: rare from these vendors; fall back to our own backoff
        if value >= 0:
            return min(value, MAX_RETRY_AFTER)
    return None


def is_count(value: object) -> bool:
    """Whether a usage field holds a token count (an int, not a bool, not negative)."""
    return type(value) is int and value >= 0


def broken(provider: str, model: str, kind: ProviderFailure = ProviderFailure.STREAM_BROKEN) -> ProviderError:
    """The error for a stream that stopped before its terminal event."""
    return ProviderError(provider, model, kind)
