"""`local:` models: llama.cpp on this machine, no key and no account; cost 0.

`local:default` is a tiny instruction-tuned model fetched by `facilitair models pull`; `local:<file>` is a
GGUF file in the models directory, and `local:<path>` any GGUF file the server's configuration names. Each
model file gets one engine process (providers/local/engine.py), started at its first request.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from facilitair.server.errors import FailedPrecondition, ProviderError, ProviderFailure, Reason
from facilitair.server.providers.base import CompletionRequest, StreamEnd, UsageReport, failure_for_status
from facilitair.server.providers.chat_chunks import ChatChunks
from facilitair.server.providers.local import models
from facilitair.server.providers.local.engine import EngineError, EngineOptions, LocalEngine

# A prompt that leaves less room than this for the answer fails instead of producing a stub.
MIN_OUTPUT_TOKENS = 16


class LocalModelError(ProviderError):
    """A local model cannot serve the request, however often it is retried (FAILED_PRECONDITION)."""

    def __init__(
        self, model: str, message: str, kind: ProviderFailure = ProviderFailure.NOT_FOUND, reason: Reason | None = None
    ) -> None:
        # Not retried; a fallback model in the agent's list, if any, takes over.
        super().__init__("local", model, kind)
        self.public_message = message
        self.args = (message,)
        if reason is not None:
            self.reason = reason


@dataclass(frozen=True, slots=True)
class LocalOptions:
    """The local provider's settings (FACILITAIR_LOCAL_*)."""

    models_dir: Path
    engine: EngineOptions
    max_tokens: int  # the most tokens one stage may write on a local model
    configured: frozenset[str] = frozenset()  # local model names the server's own configuration uses


class LocalProvider:
    """Streams chat completions from llama.cpp engines, one per model file."""

    name = "local"
    host = "127.0.0.1"  # the engines listen on loopback only

    def __init__(self, options: LocalOptions) -> None:
        self.options = options
        self._engines: dict[Path, LocalEngine] = {}
        self._starting: dict[Path, asyncio.Lock] = {}

    def check_model(self, model: str) -> None:
        """FailedPrecondition now (at admission) if `model` cannot be served, saying what to do."""
        models.resolve(model, self.options.models_dir, self.options.configured)

    async def engine(self, model: str) -> LocalEngine:
        """The running engine for `model`, started (or restarted after a crash) when needed."""
        try:
            path = models.resolve(model, self.options.models_dir, self.options.configured)
        except FailedPrecondition as exc:
            raise LocalModelError(model, exc.public_message, reason=exc.reason) from None
        lock = self._starting.setdefault(path, asyncio.Lock())
        async with lock:
            engine = self._engines.get(path)
            if engine is not None and engine.running:
                return engine
            if engine is not None:
                await engine.aclose()
            engine = LocalEngine(path, self.options.engine)
            try:
                await engine.start()
            except EngineError as exc:
                raise LocalModelError(model, f"local model {model!r}: {exc}; the server log has details") from None
            self._engines[path] = engine
            return engine

    async def aclose(self) -> None:
        """Stop every engine process."""
        engines, self._engines = list(self._engines.values()), {}
        await asyncio.gather(*(engine.aclose() for engine in engines))

    async def stream(self, request: CompletionRequest) -> AsyncGenerator[str | UsageReport | StreamEnd, None]:
        """Yield the model's text deltas as the engine streams them, then usage and finish reason."""
        engine = await self.engine(request.model)
        messages = [{"role": "system", "content": request.system}, {"role": "user", "content": request.prompt}]
        try:
            body = await self._body(engine, request, messages)
            # The engine speaks OpenAI's format: its stream is read by the same parser as OpenAI's. A local model
            # costs nothing, so its usage is not reported before the end.
            chunks = ChatChunks(self.name, request.model, report_usage=False)
            # aclosing: when this stream is closed, the engine's is closed at once, which cancels the request.
            async with contextlib.aclosing(engine.chat(body, request.timeout)) as received:
                async for data in received:
                    for item in chunks.feed(data):
                        yield item
                    if chunks.done:
                        break
        except Exception as exc:
            raise self._error(exc, request.model, engine) from None
        finish = chunks.end(until_done=False)
        if chunks.usage is None:
            yield StreamEnd(0, 0, finish, usage_reported=False)
        else:
            prompt, completion, _ = chunks.usage  # a local prompt cache costs nothing: not counted apart
            yield StreamEnd(prompt, completion, finish)

    async def _body(
        self, engine: LocalEngine, request: CompletionRequest, messages: list[dict[str, str]]
    ) -> dict[str, Any]:
        """The request for the engine, with max_tokens clamped to what the slot's context window has left."""
        window = engine.options.context
        prompt_tokens = await engine.prompt_tokens(messages)
        room = window - prompt_tokens
        if room < MIN_OUTPUT_TOKENS:
            message = self._too_long(request.model, prompt_tokens, window)
            raise LocalModelError(request.model, message, ProviderFailure.CONTEXT_EXCEEDED)
        body: dict[str, Any] = {
            "messages": messages,
            "max_tokens": min(request.max_tokens, self.options.max_tokens, room),
            "stream": True,
            "stream_options": {"include_usage": True},
            "cache_prompt": True,  # a slot keeps the KV cache of its last prompt; a shared prefix is not recomputed
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    def _too_long(self, model: str, prompt_tokens: int, window: int) -> str:
        return (
            f"the prompt for local model {model!r} is {prompt_tokens} tokens, and its context window is {window} "
            f"tokens per slot with at least {MIN_OUTPUT_TOKENS} kept for the answer: raise FACILITAIR_LOCAL_CONTEXT "
            "(if the model allows it), shorten the task or context, or use a model with a larger window"
        )

    def _error(self, exc: Exception, model: str, engine: LocalEngine) -> ProviderError:
        """Classify a failure; the engine's own text stays in the server log."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, EngineError):
            if exc.body.get("type") == "exceed_context_size_error":
                window = int(exc.body.get("n_ctx") or engine.options.context)
                message = self._too_long(model, int(exc.body.get("n_prompt_tokens") or 0), window)
                return LocalModelError(model, message, ProviderFailure.CONTEXT_EXCEEDED)
            if exc.status == 0:
                return ProviderError(self.name, model, ProviderFailure.CONNECTION)
            return ProviderError(self.name, model, failure_for_status(exc.status), http_status=exc.status)
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return ProviderError(self.name, model, ProviderFailure.TIMEOUT)
        if isinstance(exc, aiohttp.ClientError | ConnectionError):
            # The engine went away (crashed or killed): the next attempt starts a new one.
            return ProviderError(self.name, model, ProviderFailure.CONNECTION)
        if isinstance(exc, ValueError):  # a response aiohttp could not read
            return ProviderError(self.name, model, ProviderFailure.STREAM_BROKEN)
        raise exc
