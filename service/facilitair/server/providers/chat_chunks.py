"""OpenAI-format chat completion streams, read and shape-checked: the one parser of that format, for every
provider that speaks it (OpenAI and compatible endpoints, and the local llama.cpp engine).

A stream is server-sent events: `data: <chunk JSON>` lines, blank separators, comments, and `data: [DONE]` at
the end. A chunk is the vendor's (or a local model server's) JSON, so it is untrusted: a part of the wrong shape
(`"choices": ["x"]`, a non-string delta, usage that is not a pair of counts, a payload that is not JSON, a line
past MAX_LINE) is a broken stream, which the attempts layer retries like any other, never an exception that
escapes as INTERNAL.

This is the per-token path: one call per network read, none per line, chunk or choice.
"""

from __future__ import annotations

import json

from facilitair.server.providers.base import UsageReport, broken
from facilitair.server.providers.transport import MAX_LINE

# What a stream's reader hands on: text deltas, in order, and (where asked for) the usage reported.
Item = str | UsageReport


class ChatChunks:
    """Reads one OpenAI-format stream's bytes as they arrive: its text, finish reason, usage and end."""

    __slots__ = ("_broken", "_model", "_pending", "_provider", "_reports", "done", "finish", "model", "usage")

    def __init__(self, provider: str, model: str, *, report_usage: bool = True) -> None:
        self._provider = provider
        self._model = model
        # Whether a usage chunk is handed on as a UsageReport the moment it arrives (before [DONE], so a stream
        # cut off after it still counts what it reported); a local model costs nothing, so it need not.
        self._reports = report_usage
        self._pending = b""
        self.done = False  # `data: [DONE]` (or a broken chunk) was read; nothing after it is read
        self._broken = False  # a broken chunk came after text of the same read, which is handed on first
        self.finish: str | None = None  # the last finish reason a choice gave
        self.usage: tuple[int, int, int] | None = None  # prompt (cached part included), completion, cached
        self.model = ""  # the model the usage chunk names, read once (for traces: gen_ai.response.model)

    def feed(self, received: bytes) -> list[Item]:
        """The text deltas (and usage reports) of the complete lines received so far, in order.

        A chunk of the wrong shape raises the broken stream, after the text before it: the text of the read it
        came in is returned first, and `end` raises it (a cut-off attempt's text counts in its usage estimate).
        """
        # transport.split_lines' two lines, without its call (this is once per read of every stream).
        *lines, rest = (self._pending + received).split(b"\n")
        if len(rest) > MAX_LINE:
            raise broken(self._provider, self._model)
        self._pending = rest
        out: list[Item] = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, keep-alives
            data = line[5:].strip()
            if data == b"[DONE]":
                self.done = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:  # not JSON (UnicodeDecodeError is a ValueError too)
                return self._break(out)
            if type(chunk) is not dict or "error" in chunk:
                # Not a chunk, or an error event inside an open stream (its text is the vendor's, never passed
                # on): the stream broke off either way.
                return self._break(out)
            if chunk.get("usage"):
                usage = usage_of(chunk["usage"])
                if usage is None:
                    return self._break(out)
                self.usage = usage
                self.model = model_of(chunk)
                if self._reports:
                    out.append(UsageReport(usage[0], usage[1], cache_read_tokens=usage[2]))
            choices = chunk.get("choices")
            if not choices:
                continue
            if type(choices) is not list:
                return self._break(out)
            for choice in choices:
                if type(choice) is not dict:
                    return self._break(out)
                delta = choice.get("delta")
                text = delta.get("content") if type(delta) is dict else None
                reason = choice.get("finish_reason")
                wrong_delta = bool(delta) and type(delta) is not dict
                if wrong_delta or (text and type(text) is not str) or (reason is not None and type(reason) is not str):
                    return self._break(out)
                if text:
                    out.append(text)
                if reason is not None:
                    self.finish = reason
        return out

    def _break(self, out: list[Item]) -> list[Item]:
        """A broken chunk: raised now, or, when text of this read came before it, once that text is handed on."""
        if not out:
            raise broken(self._provider, self._model)
        self.done = self._broken = True
        return out

    def end(self, *, until_done: bool = True) -> str:
        """The finish reason of a stream that ended well; a broken stream for one that broke or was cut short.

        A stream without its finish reason, or (`until_done`) without `[DONE]`, was truncated, not a success.
        """
        if self._broken or (until_done and not self.done) or self.finish is None:
            raise broken(self._provider, self._model)
        return self.finish


def usage_of(usage: object) -> tuple[int, int, int] | None:
    """Prompt, completion and cached tokens of a usage chunk; None for usage of the wrong shape."""
    if type(usage) is not dict:
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int or prompt < 0 or completion < 0:
        return None
    # prompt_tokens counts the cached part; the details, optional, say how much of it was cached.
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else None
    return prompt, completion, min(cached, prompt) if type(cached) is int and cached >= 0 else 0


def model_of(chunk: dict[str, object]) -> str:
    """The model a chunk says answered ("" when it does not say): gen_ai.response.model in traces."""
    said = chunk.get("model")
    return said[:200] if type(said) is str else ""
