"""The parts of an OpenAI-format chat completion chunk, shape-checked: one reading for every provider that
speaks that format (OpenAI and compatible endpoints, and the local llama.cpp engine).

A chunk is the vendor's (or a local model server's) JSON, so it is untrusted: a part of the wrong shape
(`"choices": ["x"]`, a non-string delta, usage that is not a pair of counts) is a broken stream, which the
attempts layer retries like any other, never an exception that escapes as INTERNAL.
"""

from __future__ import annotations

from facilitair.server.providers.base import broken


def choice_of(choice: object, provider: str, model: str) -> tuple[str | None, str | None]:
    """A choice's content delta and finish reason; a choice of the wrong shape is a broken stream."""
    if type(choice) is not dict:
        raise broken(provider, model)
    delta = choice.get("delta")
    text = delta.get("content") if type(delta) is dict else None
    reason = choice.get("finish_reason")
    wrong_delta = bool(delta) and type(delta) is not dict
    if wrong_delta or (text and type(text) is not str) or (reason is not None and type(reason) is not str):
        raise broken(provider, model)
    return text, reason


def usage_of(usage: object, provider: str, model: str) -> tuple[int, int, int]:
    """Prompt, completion and cached tokens of a usage chunk; usage of the wrong shape is a broken stream."""
    if type(usage) is not dict:
        raise broken(provider, model)
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int or prompt < 0 or completion < 0:
        raise broken(provider, model)
    # prompt_tokens counts the cached part; the details, optional, say how much of it was cached.
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if type(details) is dict else None
    return prompt, completion, min(cached, prompt) if type(cached) is int and cached >= 0 else 0


def model_of(chunk: dict[str, object]) -> str:
    """The model a chunk says answered ("" when it does not say): gen_ai.response.model in traces."""
    said = chunk.get("model")
    return said[:200] if type(said) is str else ""
