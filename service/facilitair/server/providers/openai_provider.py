"""OpenAI chat completions, streamed, on the official async SDK (any OpenAI-compatible endpoint)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import openai

from facilitair.server.errors import ProviderError, ProviderFailure
from facilitair.server.providers.base import (
    CompletionRequest,
    StreamEnd,
    UsageReport,
    error_words,
    failure_for_status,
    host_of,
    retry_after_of,
)
from facilitair.server.providers.chat_chunks import ChatChunks
from facilitair.server.providers.transport import (
    POOL_LIMITS,
    error_class,
    resend_if_stale,
    transport_failure,
)


class OpenAIProvider:
    """Streams `chat.completions.create(stream=True)` with usage included."""

    name = "openai"

    def __init__(self, api_key: str, base_url: str | None, *, timeout: float) -> None:
        # The SDK's own retries are off: ours emit an event for each one, so clients see every retry.
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            # aiohttp (C parser) under the SDK, with the pool limits the stale re-sends count on: providers/transport.py
            http_client=openai.DefaultAioHttpClient(timeout=timeout, limits=POOL_LIMITS),
        )
        self.host = host_of(self._client.base_url)
        # api.openai.com wants max_completion_tokens (newer models reject max_tokens); compatible
        # servers (vLLM, Ollama, OpenRouter) reliably accept only the older max_tokens.
        self._max_tokens_param = "max_completion_tokens" if base_url is None else "max_tokens"

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | UsageReport | StreamEnd, None]:
        """Yield content deltas as they arrive, then the usage chunk's report, then usage and finish reason.

        The SDK opens the stream (auth, headers, retries off, status errors); the body's bytes are read by
        chat_chunks.ChatChunks, the one parser of the format (the local engine's too). Iterating the SDK's typed
        stream builds a model per chunk, the largest single cost in the server's profile, and its
        line iterator is four async generators deep per chunk (docs/benchmarks.md). The SDK's models also
        checked nothing: a chunk of the wrong shape (`[]`, `null`, `"choices": ["x"]`) is a broken
        stream here, as is a body that ends without `[DONE]`.
        """
        params = self._params(request)
        opening = self._client.chat.completions.with_streaming_response
        chunks = ChatChunks(self.name, request.model)
        try:
            async with contextlib.AsyncExitStack() as stack:
                response = await resend_if_stale(
                    lambda: stack.enter_async_context(opening.create(**params)), host=self.host
                )
                async for received in response.http_response.aiter_bytes():
                    for item in chunks.feed(received):
                        yield item
                    if chunks.done:
                        break
        except Exception as exc:
            raise self._error(exc, request.model) from None
        finish = chunks.end()
        if chunks.usage is None:
            yield StreamEnd(0, 0, finish, usage_reported=False)
        else:
            prompt, completion, cached = chunks.usage
            yield StreamEnd(prompt, completion, finish, cache_read_tokens=cached, response_model=chunks.model)

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        """The arguments of `chat.completions.create` for one request."""
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.prompt},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            self._max_tokens_param: request.max_tokens,
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.timeout is not None:
            params["timeout"] = request.timeout
        return params

    def _error(self, exc: Exception, model: str) -> ProviderError:
        """Classify an SDK or transport error; the vendor's text is never passed on."""
        if isinstance(exc, ProviderError):
            return exc
        cause = error_class(exc)
        if isinstance(exc, openai.APIStatusError):
            return ProviderError(
                self.name,
                model,
                failure_for_status(exc.status_code, said=error_words(exc.body)),
                http_status=exc.status_code,
                retry_after=retry_after_of(exc.response.headers),
                cause=cause,
            )
        kind = transport_failure(exc)
        if kind is not None:
            return ProviderError(self.name, model, kind, cause=cause)
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(self.name, model, ProviderFailure.TIMEOUT, cause=cause)
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(self.name, model, ProviderFailure.CONNECTION, cause=cause)
        if isinstance(exc, openai.APIError):
            # An error event inside an open stream: the vendor failed mid-response.
            return ProviderError(self.name, model, ProviderFailure.STREAM_BROKEN, cause=cause)
        raise exc
