"""Anthropic messages, streamed, on the official async SDK (or any Anthropic-compatible endpoint)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import anthropic

from facilitair.server.errors import ProviderError, ProviderFailure
from facilitair.server.providers.base import (
    CompletionRequest,
    StreamEnd,
    UsageReport,
    broken,
    error_words,
    failure_for_status,
    host_of,
    is_count,
    retry_after_of,
)
from facilitair.server.providers.transport import (
    POOL_LIMITS,
    error_class,
    resend_if_stale,
    split_lines,
    transport_failure,
)


@dataclass(slots=True)
class _Events:
    """What a messages stream said so far: usage (input beside the cache reads and writes), stop reason, end."""

    input: int = 0
    cache_read: int = 0
    cache_write: int = 0
    output: int = 0
    output_reported: bool = False  # message_start's output count is a placeholder; message_delta's is real
    stop_reason: str = ""
    finished: bool = False
    model: str = ""  # the model message_start names (for traces: gen_ai.response.model)

    def read(self, event: object) -> str | None:
        """Take one event's data; return its text, if it carries some. WrongShape for data that is not an event."""
        if type(event) is not dict:
            raise WrongShapeError  # not an event at all: `[]`, `7`, `null`
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            text = delta.get("text") if type(delta) is dict else None
            if type(delta) is not dict or (delta.get("type") == "text_delta" and type(text) is not str):
                raise WrongShapeError
            return text or None
        if kind == "message_start":
            message = event.get("message")
            if type(message) is not dict or not self._take(message.get("usage"), start=True):
                raise WrongShapeError
            said = message.get("model")
            self.model = said[:200] if type(said) is str else ""
        elif kind == "message_delta":
            delta = event.get("delta")
            if type(delta) is not dict or not self._take(event.get("usage"), start=False):
                raise WrongShapeError
            reason = delta.get("stop_reason")
            self.stop_reason = reason if type(reason) is str else self.stop_reason
            self.output_reported = True
        elif kind == "message_stop":
            self.finished = True
        elif type(kind) is not str:
            raise WrongShapeError  # a dict without a type: a chunk of some other API
        return None

    def _take(self, usage: object, *, start: bool) -> bool:
        """Take the counts of a message_start (`start`) or message_delta; False when they are not counts."""
        if type(usage) is not dict:
            return False
        fields = {"input_tokens": "input", "cache_read_input_tokens": "cache_read",
                  "cache_creation_input_tokens": "cache_write", "output_tokens": "output"}  # fmt: skip
        for key, attribute in fields.items():
            value = usage.get(key)
            if is_count(value):
                setattr(self, attribute, value)  # cumulative where repeated: taken, never added up
            elif value is not None or key == "output_tokens" or (start and key == "input_tokens"):
                return False  # a required count missing, or a count that is not one
        return True

    def report(self) -> UsageReport:
        """The usage reported so far, for a stream that may yet be cut off."""
        return UsageReport(
            self.input + self.cache_read + self.cache_write,
            self.output if self.output_reported else None,
            cache_read_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
        )

    def end(self) -> StreamEnd:
        """The StreamEnd: the prompt is input_tokens plus the cached part reported beside it."""
        prompt = self.input + self.cache_read + self.cache_write
        return StreamEnd(
            prompt,
            self.output,
            self.stop_reason or "end_turn",
            cache_read_tokens=self.cache_read,
            cache_write_tokens=self.cache_write,
            response_model=self.model,
        )


class WrongShapeError(Exception):
    """Data in a messages stream that is not the event its type says (or no event at all)."""


class AnthropicProvider:
    """Streams `messages.create(stream=True)`; text deltas pass through untouched."""

    name = "anthropic"

    def __init__(self, api_key: str, base_url: str | None, *, timeout: float) -> None:
        # The SDK's own retries are off: ours emit an event for each one, so clients see every retry.
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,
            timeout=timeout,
            # aiohttp (C parser) under the SDK, with the pool limits the stale re-sends count on: providers/transport.py
            http_client=anthropic.DefaultAioHttpClient(timeout=timeout, limits=POOL_LIMITS),
        )
        self.host = host_of(self._client.base_url)

    async def aclose(self) -> None:
        """Close the SDK's HTTP client."""
        await self._client.close()

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | UsageReport | StreamEnd, None]:
        """Yield text deltas as they arrive, the usage reported on the way, then usage and stop reason.

        The SDK opens the stream (auth, headers, status errors); the events are read here, as the
        OpenAI provider reads its chunks, so that an event of the wrong shape is a broken stream
        rather than an attribute error, and no model is built per token.
        """
        params = self._params(request)
        opening = self._client.messages.with_streaming_response
        said = _Events()
        try:
            async with contextlib.AsyncExitStack() as stack:
                response = await resend_if_stale(
                    lambda: stack.enter_async_context(opening.create(**params)), host=self.host
                )
                pending = b""
                async for received in response.http_response.aiter_bytes():
                    split = split_lines(pending, received)
                    if split is None:
                        raise broken(self.name, request.model)
                    lines, pending = split
                    for line in lines:
                        if not line.startswith(b"data:"):
                            continue  # `event:` lines (the data's `type` says the same), blank separators
                        event = json.loads(line[5:])
                        text = said.read(event)
                        if text is not None:
                            yield text
                        elif said.finished:
                            break
                        elif event["type"] == "error":
                            raise self._stream_error(event, request.model)
                        elif event["type"] in ("message_start", "message_delta"):
                            yield said.report()
                    if said.finished:
                        break
        except (ValueError, WrongShapeError):  # data that is not JSON, or not the event it says it is
            raise broken(self.name, request.model) from None
        except Exception as exc:
            raise self._error(exc, request.model) from None
        if not said.finished:
            # The SDK treats a body that ends without message_stop as success; we do not.
            raise broken(self.name, request.model)
        yield said.end()

    def _params(self, request: CompletionRequest) -> dict[str, Any]:
        """The arguments of `messages.create` for one request."""
        params: dict[str, Any] = {
            "model": request.model,
            "system": request.system,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
            "stream": True,
        }
        if request.temperature is not None:
            # anthropic 2.x dropped the sampling parameters from create(); its migration guide passes them in
            # the body, which is what the API and compatible servers read.
            params["extra_body"] = {"temperature": request.temperature}
        if request.timeout is not None:
            params["timeout"] = request.timeout
        return params

    def _stream_error(self, event: dict[str, Any], model: str) -> ProviderError:
        """An error event inside an open stream: retried as its type says (overloaded) or as a broken stream."""
        words = error_words(event)
        kind = failure_for_status(500, words[0] if words else None)
        return ProviderError(self.name, model, kind if kind.retryable else ProviderFailure.STREAM_BROKEN)

    def _error(self, exc: Exception, model: str) -> ProviderError:
        """Classify an SDK or transport error; the vendor's text is never passed on."""
        if isinstance(exc, ProviderError):
            return exc
        cause = error_class(exc)
        if isinstance(exc, anthropic.APIStatusError):
            words = error_words(exc.body)
            return ProviderError(
                self.name,
                model,
                failure_for_status(exc.status_code, words[0] if words else None, words),
                http_status=exc.status_code,
                retry_after=retry_after_of(exc.response.headers),
                cause=cause,
            )
        transport = transport_failure(exc)
        if isinstance(exc, anthropic.APIConnectionError):  # APITimeoutError included
            timed_out = ProviderFailure.TIMEOUT if isinstance(exc, anthropic.APITimeoutError) else None
            return ProviderError(self.name, model, transport or timed_out or ProviderFailure.CONNECTION, cause=cause)
        if transport is ProviderFailure.TIMEOUT:
            return ProviderError(self.name, model, ProviderFailure.TIMEOUT, cause=cause)
        if transport is not None:
            # Transport errors reading the body come unwrapped: the stream broke after its first byte.
            return ProviderError(self.name, model, ProviderFailure.STREAM_BROKEN, cause=cause)
        if isinstance(exc, anthropic.APIError):
            return ProviderError(self.name, model, ProviderFailure.STREAM_BROKEN, cause=cause)
        raise exc
