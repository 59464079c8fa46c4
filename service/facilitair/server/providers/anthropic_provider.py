"""Anthropic messages, streamed, on the official async SDK."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import anthropic

from facilitair.server.errors import ProviderError, ProviderFailure
from facilitair.server.providers.base import CompletionRequest, StreamEnd, broken, failure_for_status, retry_after_of
from facilitair.server.providers.transport import transport_failure


class AnthropicProvider:
    """Streams the raw `messages.create(stream=True)` events; text deltas pass through untouched."""

    name = "anthropic"

    def __init__(self, api_key: str, base_url: str | None, *, timeout: float) -> None:
        # The SDK's own retries are off: ours emit an event for each one, so clients see every retry.
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            http_client=anthropic.DefaultAioHttpClient(timeout=timeout),  # see providers/transport.py
        )

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | StreamEnd, None]:
        """Yield text deltas as they arrive, then usage and stop reason."""
        extra: dict[str, Any] = {}
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        if request.timeout is not None:
            extra["timeout"] = request.timeout
        try:
            stream = await self._client.messages.create(
                model=request.model,
                system=request.system,
                messages=[{"role": "user", "content": request.prompt}],
                max_tokens=request.max_tokens,
                stream=True,
                **extra,
            )
        except Exception as exc:
            raise self._error(exc, request.model) from None
        input_tokens = 0
        output_tokens = 0
        stop_reason = ""
        finished = False
        try:
            async for event in stream:
                kind = event.type
                if kind == "content_block_delta":
                    if event.delta.type == "text_delta" and event.delta.text:
                        yield event.delta.text
                elif kind == "message_start":
                    input_tokens = event.message.usage.input_tokens
                    output_tokens = event.message.usage.output_tokens
                elif kind == "message_delta":
                    # Cumulative, not an increment: take it as it is.
                    output_tokens = event.usage.output_tokens
                    stop_reason = event.delta.stop_reason or stop_reason
                elif kind == "message_stop":
                    finished = True
        except Exception as exc:
            raise self._error(exc, request.model) from None
        finally:
            await stream.close()
        if not finished:
            # The SDK treats a body that ends without message_stop as success; we do not.
            raise broken(self.name, request.model)
        yield StreamEnd(input_tokens, output_tokens, stop_reason or "end_turn")

    def _error(self, exc: Exception, model: str) -> ProviderError:
        """Classify an SDK or transport error; the vendor's text is never passed on."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, anthropic.APIStatusError):
            error_type = _error_type(exc.body)
            if exc.status_code == 200:
                # An error event inside an open stream (status of the stream's response).
                kind = failure_for_status(500, error_type)
                return ProviderError(self.name, model, kind if kind.retryable else ProviderFailure.STREAM_BROKEN)
            return ProviderError(
                self.name,
                model,
                failure_for_status(exc.status_code, error_type),
                http_status=exc.status_code,
                retry_after=retry_after_of(exc.response.headers),
            )
        transport = transport_failure(exc)
        if isinstance(exc, anthropic.APIConnectionError):  # APITimeoutError included
            timed_out = ProviderFailure.TIMEOUT if isinstance(exc, anthropic.APITimeoutError) else None
            return ProviderError(self.name, model, transport or timed_out or ProviderFailure.CONNECTION)
        if transport is ProviderFailure.TIMEOUT:
            return ProviderError(self.name, model, ProviderFailure.TIMEOUT)
        if transport is not None:
            # The SDK lets transport errors after the first byte through unwrapped.
            return ProviderError(self.name, model, ProviderFailure.STREAM_BROKEN)
        if isinstance(exc, anthropic.APIError):
            return ProviderError(self.name, model, ProviderFailure.STREAM_BROKEN)
        raise exc


def _error_type(body: object) -> str | None:
    """The `error.type` of an Anthropic error body, if it has one."""
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and isinstance(inner.get("type"), str):
            return str(inner["type"])
    return None
