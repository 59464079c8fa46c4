"""OpenAI chat completions, streamed, on the official async SDK (any OpenAI-compatible endpoint)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import openai

from facilitair.server.errors import ProviderError, ProviderFailure
from facilitair.server.providers.base import CompletionRequest, StreamEnd, broken, failure_for_status, retry_after_of
from facilitair.server.providers.transport import transport_failure

# A line longer than this is not an SSE event from a chat completions stream.
MAX_LINE = 1 << 20


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
            http_client=openai.DefaultAioHttpClient(timeout=timeout),  # see providers/transport.py
        )
        # api.openai.com wants max_completion_tokens (newer models reject max_tokens); compatible
        # servers (vLLM, Ollama, OpenRouter) reliably accept only the older max_tokens.
        self._max_tokens_param = "max_completion_tokens" if base_url is None else "max_tokens"

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | StreamEnd, None]:
        """Yield content deltas as they arrive, then usage and finish reason.

        The SDK opens the stream (auth, headers, retries off, status errors); the body's bytes are
        split into lines here and each `data:` decoded with json.loads. Iterating the SDK's typed
        stream builds a model per chunk, the largest single cost in the server's profile, and its
        line iterator is four async generators deep per chunk (bench/README).
        """
        extra: dict[str, Any] = {self._max_tokens_param: request.max_tokens}
        if request.temperature is not None:
            extra["temperature"] = request.temperature
        if request.timeout is not None:
            extra["timeout"] = request.timeout
        opened = self._client.chat.completions.with_streaming_response.create(
            model=request.model,
            messages=[
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.prompt},
            ],
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
        finish: str | None = None
        usage: dict[str, Any] | None = None
        try:
            async with opened as response:
                pending = b""
                done = False
                async for received in response.http_response.aiter_bytes():
                    # Events end with a blank line and fields with \n (\r\n: the \r goes with strip()).
                    *lines, pending = (pending + received).split(b"\n")
                    if len(pending) > MAX_LINE:
                        raise ProviderError(self.name, request.model, ProviderFailure.STREAM_BROKEN)
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue  # blank separators, comments, keep-alives
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            break
                        chunk = json.loads(data)
                        if "error" in chunk:
                            # An error event inside an open stream; its text is the vendor's, never passed on.
                            raise ProviderError(self.name, request.model, ProviderFailure.STREAM_BROKEN)
                        if chunk.get("usage"):
                            usage = chunk["usage"]
                        for choice in chunk.get("choices") or ():
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                yield text
                            if choice.get("finish_reason") is not None:
                                finish = choice["finish_reason"]
                    if done:
                        break
        except ValueError:  # a chunk that is not JSON
            raise ProviderError(self.name, request.model, ProviderFailure.STREAM_BROKEN) from None
        except Exception as exc:
            raise self._error(exc, request.model) from None
        if finish is None:
            # A body that ends without its finish chunk is a truncated stream, not a success.
            raise broken(self.name, request.model)
        if usage is None:
            yield StreamEnd(0, 0, finish, usage_reported=False)
        else:
            yield StreamEnd(int(usage["prompt_tokens"]), int(usage["completion_tokens"]), finish)

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
        kind = transport_failure(exc)
        if kind is not None:
            return ProviderError(self.name, model, kind)
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(self.name, model, ProviderFailure.TIMEOUT)
        if isinstance(exc, openai.APIConnectionError):
            return ProviderError(self.name, model, ProviderFailure.CONNECTION)
        if isinstance(exc, openai.APIError):
            # An error event inside an open stream: the vendor failed mid-response.
            return ProviderError(self.name, model, ProviderFailure.STREAM_BROKEN)
        raise exc
