"""OpenAI chat completions, streamed, on the official async SDK (any OpenAI-compatible endpoint)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import openai

from facilitair.server.errors import ProviderError, ProviderFailure
from facilitair.server.providers.base import CompletionRequest, StreamEnd, broken, failure_for_status, retry_after_of


class OpenAIProvider:
    """Streams `chat.completions.create(stream=True)` with usage included."""

    name = "openai"

    def __init__(self, api_key: str, base_url: str | None, *, timeout: float) -> None:
        # The SDK's own retries are off: ours emit an event for each one, so clients see every retry.
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout)
        # api.openai.com wants max_completion_tokens (newer models reject max_tokens); compatible
        # servers (vLLM, Ollama, OpenRouter) reliably accept only the older max_tokens.
        self._max_tokens_param = "max_completion_tokens" if base_url is None else "max_tokens"

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | StreamEnd, None]:
        """Yield content deltas as they arrive, then usage and finish reason."""
        extra: dict[str, Any] = {self._max_tokens_param: request.max_tokens}
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        if request.timeout is not None:
            extra["timeout"] = request.timeout
        try:
            stream = await self._client.chat.completions.create(
                model=request.model,
                messages=[
                    {"role": "system", "content": request.system},
                    {"role": "user", "content": request.prompt},
                ],
                stream=True,
                stream_options={"include_usage": True},
                **extra,
            )
        except Exception as exc:
            raise self._error(exc, request.model) from None
        finish: str | None = None
        usage: Any = None
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    text = choice.delta.content
                    if text:
                        yield text
                    if choice.finish_reason is not None:
                        finish = choice.finish_reason
        except Exception as exc:
            raise self._error(exc, request.model) from None
        finally:
            await stream.close()
        if finish is None:
            # The SDK treats a body that ends without [DONE] as success; we do not.
            raise broken(self.name, request.model)
        if usage is None:
            yield StreamEnd(0, 0, finish, usage_reported=False)
        else:
            yield StreamEnd(usage.prompt_tokens, usage.completion_tokens, finish)

    def _error(self, exc: Exception, model: str) -> ProviderError:
        """Classify an SDK or transport error; the vendor's text is never passed on."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, openai.APIStatusError):
            return ProviderError(
                self.name,
                model,
                failure_for_status(exc.status_code),
                http_status=exc.status_code,
                retry_after=retry_after_of(exc.response.headers),
            )
        if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
            return ProviderError(self.name, model, ProviderFailure.TIMEOUT)
        if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
            return ProviderError(self.name, model, ProviderFailure.CONNECTION)
        if isinstance(exc, openai.APIError):
            # An error event inside an open stream: the vendor failed mid-response.
            return ProviderError(self.name, model, ProviderFailure.STREAM_BROKEN)
        raise exc
