"""A fake OpenAI (or OpenAI-compatible server): ``POST /v1/chat/completions`` streaming chat completion chunks."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.faults import Reply
from tests.fakes.server import FakeProvider, _Stream, json_text, text_chars

# A fixed creation time keeps the OpenAI chunks byte-for-byte reproducible across runs.
_CREATED = 1_700_000_000


class FakeOpenAI(FakeProvider):
    """A fake OpenAI: ``POST /v1/chat/completions`` streaming chat completion chunks."""

    vendor = "openai"
    endpoint = "/v1/chat/completions"
    base_path = "/v1"
    request_id_header = "x-request-id"
    default_finish_reason = "stop"

    def _authorized(self, request: web.Request) -> bool:
        """OpenAI takes ``Authorization: Bearer KEY``."""
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _stream_id(self, number: int) -> str:
        """Chat completion ids look like ``chatcmpl-...``."""
        return f"chatcmpl-fake{number}"

    def _prompt_chars(self, body: dict[str, Any]) -> int:
        """Every message's content, the system message included."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            return 0
        return sum(text_chars(m.get("content")) for m in messages if isinstance(m, dict))

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        kind = {401: "invalid_request_error", 429: "requests"}.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        return {"error": {"message": message, "type": kind, "param": None, "code": code}}

    def _chunk(self, stream: _Stream, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        """One ``chat.completion.chunk`` with a single choice."""
        return self._data(
            {
                "id": stream.id,
                "object": "chat.completion.chunk",
                "created": _CREATED,
                "model": stream.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                "usage": None,
            }
        )

    @staticmethod
    def _data(payload: dict[str, Any]) -> bytes:
        """``data: <compact JSON>`` and the blank line; OpenAI sends no ``event:`` lines."""
        return f"data: {json_text(payload)}\n\n".encode()

    def _raw_event(self, payload: str) -> bytes:
        """``data: <payload>``, whatever the payload is."""
        return f"data: {payload}\n\n".encode()

    def _preamble(self, stream: _Stream, reply: Reply) -> list[bytes]:
        """The role delta, with empty content."""
        return [self._chunk(stream, {"role": "assistant", "content": ""})]

    def _text_event(self, stream: _Stream, index: int, text: str) -> bytes:
        """A content delta."""
        return self._chunk(stream, {"content": text})

    def _epilogue(self, stream: _Stream, body: dict[str, Any], reply: Reply) -> list[bytes]:
        """The finish chunk, the usage chunk when asked for, and ``[DONE]``."""
        events = [self._chunk(stream, {}, reply.finish_reason or self.default_finish_reason)]
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True and reply.report_usage:
            completion = len(reply.chunks) if reply.output_tokens is None else reply.output_tokens
            usage: dict[str, Any] = {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": completion,
                "total_tokens": reply.input_tokens + completion,
            }
            if reply.cache_read_tokens is not None:
                # OpenAI counts the cached part inside prompt_tokens and says how much of it was cached.
                usage["prompt_tokens_details"] = {"cached_tokens": reply.cache_read_tokens}
            events.append(
                self._data(
                    {
                        "id": stream.id,
                        "object": "chat.completion.chunk",
                        "created": _CREATED,
                        "model": stream.model,
                        "system_fingerprint": None,
                        "choices": [],
                        "usage": usage,
                    }
                )
            )
        events.append(b"data: [DONE]\n\n")
        return events

    def _error_event(self) -> bytes:
        """``data: {"error": {...}}``, as OpenAI sends when generation fails mid-stream."""
        return self._data(
            {
                "error": {
                    "message": "The server had an error while processing your request.",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        )
