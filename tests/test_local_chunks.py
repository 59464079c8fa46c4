"""The local provider reads its engine's chunks with the same shape checks as the OpenAI provider.

The engine here is a fake process in place of llama.cpp (tests/fakes/llama_engine.py: the same handshake and
HTTP routes, scripted `data:` payloads), started by the real LocalEngine over real HTTP, because a real model
cannot be made to send a chunk of the wrong shape. A bad chunk used to escape as AttributeError, KeyError or
ValueError (INTERNAL in a run, never retried) or pass a non-string on as text; it is now a broken stream
(retryable, so the attempts layer retries it like OpenAI's).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facilitair.server.errors import ProviderError, ProviderFailure
from facilitair.server.providers.base import CompletionRequest, StreamEnd, UsageReport
from facilitair.server.providers.local import engine
from facilitair.server.providers.local.engine import EngineOptions
from facilitair.server.providers.local.models import GGUF_MAGIC
from facilitair.server.providers.local_provider import LocalOptions, LocalProvider
from tests.fakes.llama_engine import child_args
from tests.harness.events import kind
from tests.harness.servers import ServerFactory

MODEL = "fake.gguf"
FINISH = '{"choices": [{"delta": {"content": "."}, "finish_reason": "stop"}]}'
USAGE = '{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
GOOD = ['{"choices": [{"delta": {"content": "Hel"}}]}', '{"choices": [{"delta": {"content": "lo"}}]}', FINISH, USAGE]

# Each stream: a chunk of the wrong shape among good ones; every one must end the stream as broken.
BAD_STREAMS = {
    "a list": ["[]", FINISH, USAGE],
    "null": ["null", FINISH, USAGE],
    "a number": ["5", FINISH, USAGE],
    "a string choice": ['{"choices": ["x"]}', FINISH, USAGE],
    "choices an object": ['{"choices": {"0": {"delta": {"content": "x"}}}}', FINISH, USAGE],
    "a string delta": ['{"choices": [{"delta": "x"}]}', FINISH, USAGE],
    "a number as text": ['{"choices": [{"delta": {"content": 5}}]}', FINISH, USAGE],
    "a number as finish reason": ['{"choices": [{"delta": {"content": "x"}, "finish_reason": 7}]}', USAGE],
    "usage of strings": [FINISH, '{"choices": [], "usage": {"prompt_tokens": "3", "completion_tokens": "2"}}'],
    "usage missing a count": [FINISH, '{"choices": [], "usage": {"prompt_tokens": 3}}'],
    "usage a list": [FINISH, '{"choices": [], "usage": [3, 2]}'],
    "an error event": ['{"choices": [{"delta": {"content": "x"}}]}', '{"error": {"message": "slot crashed"}}'],
}


def models_dir(tmp_path: Path) -> Path:
    """A models directory with one (empty) GGUF file: the fake engine never reads it."""
    directory = tmp_path / "models"
    directory.mkdir()
    (directory / MODEL).write_bytes(GGUF_MAGIC + bytes(28))
    return directory


def script(tmp_path: Path, *answers: list[str]) -> Path:
    """The fake engine's script: one list of payloads per chat request, each ending with [DONE]."""
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([[*payloads, "[DONE]"] for payloads in answers]))
    return path


async def streamed(provider: LocalProvider) -> list[str | UsageReport | StreamEnd]:
    """Everything one completion stream yields."""
    request = CompletionRequest(MODEL, "You are terse.", "Say hello.", max_tokens=64)
    return [item async for item in provider.stream(request)]


@pytest.fixture
def provider(tmp_path: Path) -> LocalProvider:
    """A local provider whose engines are the fake (its script written by each test)."""
    return LocalProvider(LocalOptions(models_dir(tmp_path), EngineOptions(slots=1, context=1024), max_tokens=64))


async def test_a_good_stream_reads_as_text_then_usage(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "CHILD", child_args(script(tmp_path, GOOD)))
    try:
        items = await streamed(provider)
    finally:
        await provider.aclose()
    assert items == ["Hel", "lo", ".", StreamEnd(3, 2, "stop")]


@pytest.mark.parametrize("chunks", list(BAD_STREAMS.values()), ids=list(BAD_STREAMS))
async def test_a_chunk_of_the_wrong_shape_is_a_broken_stream(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[str]
) -> None:
    monkeypatch.setattr(engine, "CHILD", child_args(script(tmp_path, chunks)))
    try:
        with pytest.raises(ProviderError) as caught:
            await streamed(provider)
    finally:
        await provider.aclose()
    assert caught.value.kind is ProviderFailure.STREAM_BROKEN
    assert caught.value.retryable
    assert caught.value.public_message == f"local stream broke off for model {MODEL}"


async def test_a_bad_chunk_in_a_run_is_retried_and_the_run_completes(
    make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first request the engine gets (the architect's first attempt) breaks; every later one is good.
    monkeypatch.setattr(engine, "CHILD", child_args(script(tmp_path, BAD_STREAMS["a string choice"], GOOD)))
    h = await make_server(model=f"local:{MODEL}", local_models_dir=models_dir(tmp_path), max_refinements=0)
    events = await h.run("Write a function that reverses a string")
    kinds = [kind(e) for e in events]
    assert kinds[-1] == "run_completed", [(kind(e), e.run_failed.message) for e in events if kind(e) == "run_failed"]
    resets = [e.attempt_reset for e in events if kind(e) == "attempt_reset"]
    assert len(resets) == 1
    assert resets[0].reason == f"local stream broke off for model {MODEL}"
    assert (resets[0].stage, resets[0].attempt) == (1, 2)  # the architect's stage, tried again
