"""A fake Anthropic (or Anthropic-compatible server): ``POST /v1/messages`` streaming message events."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.faults import Reply
from tests.fakes.server import FakeProvider, _Stream, json_text, text_chars


class FakeAnthropic(FakeProvider):
    """A fake Anthropic: ``POST /v1/messages`` streaming message events."""

    vendor = "anthropic"
    endpoint = "/v1/messages"
    base_path = ""
    request_id_header = "request-id"
    default_finish_reason = "end_turn"

    def _authorized(self, request: web.Request) -> bool:
        """Anthropic takes ``x-api-key: KEY`` or ``Authorization: Bearer KEY``."""
        # The API documents x-api-key, but anthropic 2.x sends an `api_key=` as `Authorization: Bearer`, so a
        # fake that only took x-api-key would turn the official SDK away.
        return (
            request.headers.get("x-api-key") == self.api_key
            or request.headers.get("Authorization") == f"Bearer {self.api_key}"
        )

    def _stream_id(self, number: int) -> str:
        """Message ids look like ``msg_...``."""
        return f"msg_fake{number}"

    def _prompt_chars(self, body: dict[str, Any]) -> int:
        """The system prompt (a string or text blocks) and every message's content."""
        messages = body.get("messages")
        chars = text_chars(body.get("system"))
        if isinstance(messages, list):
            chars += sum(text_chars(m.get("content")) for m in messages if isinstance(m, dict))
        return chars

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        """``{"type": "error", "error": {"type", "message"}}``."""
        kinds = {
            400: "invalid_request_error",
            401: "authentication_error",
            403: "permission_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
            529: "overloaded_error",
        }
        return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}

    @staticmethod
    def _event(payload: dict[str, Any]) -> bytes:
        """``event: <type>`` then ``data: <JSON>``: the event name always equals the JSON ``type``."""
        return f"event: {payload['type']}\ndata: {json_text(payload)}\n\n".encode()

    def _raw_event(self, payload: str) -> bytes:
        """A content_block_delta event whose data is `payload` as given."""
        return f"event: content_block_delta\ndata: {payload}\n\n".encode()

    def _preamble(self, stream: _Stream, reply: Reply) -> list[bytes]:
        """message_start, the text block's start, and a ping, as the real API opens a stream."""
        usage: dict[str, Any] = {"input_tokens": reply.input_tokens, "output_tokens": 1}
        # With prompt caching the cached part is reported beside input_tokens, not in it.
        if reply.cache_write_tokens is not None:
            usage["cache_creation_input_tokens"] = reply.cache_write_tokens
        if reply.cache_read_tokens is not None:
            usage["cache_read_input_tokens"] = reply.cache_read_tokens
        return [
            self._event(
                {
                    "type": "message_start",
                    "message": {
                        "id": stream.id,
                        "type": "message",
                        "role": "assistant",
                        "content": [],
                        "model": stream.model,
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": usage,
                    },
                }
            ),
            self._event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            # The real API sends a ping here; clients must skip it.
            self._event({"type": "ping"}),
        ]

    def _text_event(self, stream: _Stream, index: int, text: str) -> bytes:
        """A text_delta of block 0."""
        return self._event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})

    def _epilogue(self, stream: _Stream, body: dict[str, Any], reply: Reply) -> list[bytes]:
        """content_block_stop, message_delta with the cumulative output tokens, message_stop."""
        output = len(reply.chunks) if reply.output_tokens is None else reply.output_tokens
        return [
            self._event({"type": "content_block_stop", "index": 0}),
            self._event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reply.finish_reason or self.default_finish_reason, "stop_sequence": None},
                    "usage": {"output_tokens": output},
                }
            ),
            self._event({"type": "message_stop"}),
        ]

    def _error_event(self) -> bytes:
        """``event: error`` with an overloaded_error, as Anthropic sends when it sheds load mid-stream."""
        return self._event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
