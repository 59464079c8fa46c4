"""The provider interface: stream one completion as text deltas, then one StreamEnd.

The orchestrator only sees this module; vendor SDKs stay in the implementations.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Protocol

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


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a stream: usage as the provider reported it, and why it stopped.

    `usage_reported` is False when an OpenAI-compatible endpoint sent no usage chunk.
    """

    input_tokens: int
    output_tokens: int
    finish_reason: str
    usage_reported: bool = True


class Provider(Protocol):
    """A vendor's streaming completions API."""

    name: str

    def stream(self, request: CompletionRequest) -> AsyncGenerator[str | StreamEnd, None]:
        """Yield text deltas exactly as the vendor streams them, then one StreamEnd.

        Raises ProviderError for every failure, including a stream that ends without its terminal
        event. Closing the iterator (aclose) closes the HTTP response, so no more tokens are paid for.
        """
        ...

    async def aclose(self) -> None:
        """Release the HTTP client."""
        ...


def failure_for_status(status: int, error_type: str | None = None) -> ProviderFailure:
    """Classify an HTTP status (and the vendor's error type, when the status says nothing)."""
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


def broken(provider: str, model: str, kind: ProviderFailure = ProviderFailure.STREAM_BROKEN) -> ProviderError:
    """The error for a stream that stopped before its terminal event."""
    return ProviderError(provider, model, kind)
