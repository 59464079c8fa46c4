"""Whole runs on the real local model (SmolLM2-135M on llama.cpp) through the real gRPC server.

Small max_tokens keep them short on 2 cores. What the engine itself reports (its slots, its token counter, a
non-streamed completion of the same request) is the reference the streamed events are checked against.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from facilitair.server.domain import AgentRole
from facilitair.server.pipeline import prompts
from facilitair.server.providers.base import CompletionRequest
from facilitair.server.providers.local.engine import EngineOptions, LocalEngine
from facilitair.server.providers.local_provider import LocalOptions, LocalProvider
from facilitair.v1 import orchestrator_pb2 as pb
from tests.harness.events import kind, of_kind, stage_text
from tests.harness.local_model import models_dir
from tests.harness.scripts import AGENTS
from tests.harness.servers import Harness, ServerFactory

TASK = "Write a function that reverses a string"
# Hang guards only: a stage of at most 48 tokens takes seconds, a few more on a loaded machine.
RUN_GUARD = 600.0
COUNTING = "Count from 1 to 100000, one number per line. Never stop counting."


@pytest.fixture(scope="module")
def local_models() -> Path:
    """The models directory with `local:default` in it."""
    return models_dir()


def pipeline(tmp_path: Path, max_tokens: int, *, architect: str = "") -> Path:
    """A pipeline file: greedy decoding (temperature 0) and `max_tokens` for every agent, no refinement round."""
    lines = ["max_refinements = 0"]
    for agent in AGENTS:
        lines += [f"[agents.{agent}]", "temperature = 0.0", f"max_tokens = {max_tokens}"]
        if agent == "architect" and architect:
            lines.append(f'system_prompt = "{architect}"')
    path = tmp_path / "local.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def engine_of(h: Harness) -> LocalEngine:
    """The engine serving local:default in this server (already running once a run used it)."""
    provider = h.server.providers.get("local")
    assert isinstance(provider, LocalProvider)
    return await provider.engine("default")


def seconds(event: pb.RunEvent) -> float:
    """When the server recorded an event."""
    return event.time.ToNanoseconds() / 1e9


async def test_a_whole_run_streams_what_the_model_generates(
    make_server: ServerFactory, local_models: Path, tmp_path: Path
) -> None:
    h = await make_server(local_models_dir=local_models, pipeline=pipeline(tmp_path, 48))
    events = await h.stream(TASK).to_end(within=RUN_GUARD)

    assert kind(events[-1]) == "run_completed", events[-1]
    started = of_kind(events, "stage_started")
    assert [s.agent for s in started] == [pb.AGENT_ARCHITECT, pb.AGENT_CODER, pb.AGENT_REVIEWER, pb.AGENT_TESTER,
                                          pb.AGENT_DOCUMENTER]  # fmt: skip
    assert {s.model for s in started} == {"local:default"}
    completed = of_kind(events, "stage_completed")
    for stage in completed:
        assert 0 < stage.usage.output_tokens <= 48
        assert stage.usage.input_tokens > 0
        assert (stage.usage.cost_usd, stage.usage.cost_unknown) == (0.0, False)
    assert of_kind(events, "attempt_reset") == []
    final = events[-1].run_completed
    assert final.usage.cost_usd == 0.0
    assert not final.usage.cost_unknown

    engine = await engine_of(h)
    # The engine's own count of generated tokens is the usage the stages reported.
    counters = await engine.metrics()
    assert counters["llamacpp:tokens_predicted_total"] == sum(s.usage.output_tokens for s in completed)
    # The Architect's deltas are exactly what the model gives for the same request in one piece.
    architect = prompts.system_prompt(AgentRole.ARCHITECT)
    reference = await engine.complete({
        "messages": [{"role": "system", "content": architect}, {"role": "user", "content": f"# Task\n{TASK}"}],
        "max_tokens": 48, "temperature": 0.0, "cache_prompt": False,
    })  # fmt: skip
    assert stage_text(events, 1) == reference["choices"][0]["message"]["content"]
    assert completed[0].usage.output_tokens == reference["usage"]["completion_tokens"]
    assert completed[0].usage.input_tokens == reference["usage"]["prompt_tokens"]
    design = next(a.artifact for a in of_kind(events, "artifact_produced") if a.artifact.path == "DESIGN.md")
    assert design.content == stage_text(events, 1)
    readme = next(a.artifact for a in of_kind(events, "artifact_produced") if a.artifact.path == "README.md")
    assert readme.content == stage_text(events, 5)


async def test_cancelling_mid_stage_frees_the_engine_slot(
    make_server: ServerFactory, local_models: Path, tmp_path: Path
) -> None:
    # A model told to count never stops by itself: only the cancel can end this stage.
    h = await make_server(
        local_models_dir=local_models, local_max_tokens=3000, pipeline=pipeline(tmp_path, 3000, architect=COUNTING)
    )
    async with h.stream(TASK) as stream:
        await stream.until(lambda e: kind(e) == "token_delta")
        engine = await engine_of(h)
        assert [s["is_processing"] for s in await engine.slots()].count(True) == 1
        summary = await h.client.cancel_run(stream.events[0].run_id)
        events = await stream.to_end(within=RUN_GUARD)
    assert summary.state == pb.RUN_STATE_CANCELLED
    assert kind(events[-1]) == "run_cancelled"
    assert of_kind(events, "stage_completed") == []
    async with asyncio.timeout(10):  # hang guard; the engine notices the closed connection at its next token
        # The engine's state lives in another process: polled, not awaited.
        while any(s["is_processing"] for s in await engine.slots()):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    generated = (await engine.metrics())["llamacpp:tokens_predicted_total"]
    assert generated < 3000  # stopped by the cancel, far from its limit


async def test_closing_a_provider_stream_cancels_the_engine_request(local_models: Path) -> None:
    provider = LocalProvider(LocalOptions(local_models, EngineOptions(slots=1, context=1024), max_tokens=900))
    try:
        stream = provider.stream(CompletionRequest("default", COUNTING, "Count.", max_tokens=900, temperature=0.0))
        items = [await anext(stream) for _ in range(3)]
        assert all(isinstance(item, str) for item in items)
        engine = await provider.engine("default")
        assert [s["is_processing"] for s in await engine.slots()] == [True]
        await stream.aclose()  # what the stage runner does when a run is cancelled between two tokens
        async with asyncio.timeout(10):
            while (await engine.slots())[0]["is_processing"]:  # noqa: ASYNC110 - another process's state
                await asyncio.sleep(0.02)
        assert (await engine.metrics())["llamacpp:tokens_predicted_total"] < 900
    finally:
        await provider.aclose()
    assert not engine.running


async def test_two_runs_share_one_slot_and_the_waiting_one_only_thinks(
    make_server: ServerFactory, local_models: Path, tmp_path: Path
) -> None:
    h = await make_server(
        local_models_dir=local_models, local_slots=1, thinking_interval=0.05, pipeline=pipeline(tmp_path, 16)
    )
    first, second = h.stream(TASK), h.stream("Write a function that sums a list")
    async with first, second:
        runs = await asyncio.gather(first.to_end(within=RUN_GUARD), second.to_end(within=RUN_GUARD))
    assert [kind(events[-1]) for events in runs] == ["run_completed", "run_completed"]
    engine = await engine_of(h)
    assert len(await engine.slots()) == 1

    # With one slot, no two stages stream at the same time: each stage's tokens lie outside the other run's.
    windows: list[tuple[float, float, int]] = []
    for index, events in enumerate(runs):
        for stage in range(1, 6):
            times = [seconds(e) for e in events if kind(e) == "token_delta" and e.token_delta.stage == stage]
            windows.append((times[0], times[-1], index))
    windows.sort()
    for (_, end, run), (start, _, next_run) in itertools.pairwise(windows):
        if run != next_run:
            assert end <= start
    # The run whose first stage waited for the slot said so with thinking events and no tokens meanwhile.
    waited = max(runs, key=lambda events: _first_token(events, 1))
    before = [e for e in waited if seconds(e) < _first_token(waited, 1)]
    assert any(kind(e) == "thinking" and e.thinking.stage == 1 for e in before)
    assert not any(kind(e) == "token_delta" for e in before)


def _first_token(events: list[pb.RunEvent], stage: int) -> float:
    return min(seconds(e) for e in events if kind(e) == "token_delta" and e.token_delta.stage == stage)


async def test_a_prompt_past_the_context_window_fails_without_retrying(
    make_server: ServerFactory, local_models: Path, tmp_path: Path
) -> None:
    h = await make_server(local_models_dir=local_models, local_context=256, pipeline=pipeline(tmp_path, 16))
    long_task = TASK + ", handling " + ", ".join(f"case {n}" for n in range(200))
    events = await h.stream(long_task).to_end(within=RUN_GUARD)
    failed: Any = events[-1].run_failed
    assert kind(events[-1]) == "run_failed"
    assert failed.code == 9  # FAILED_PRECONDITION
    assert failed.reason == "PROVIDER_CONTEXT_EXCEEDED"
    assert "context window is 256 tokens per slot" in failed.message
    assert "FACILITAIR_LOCAL_CONTEXT" in failed.message
    assert of_kind(events, "attempt_reset") == []
    assert of_kind(events, "token_delta") == []


async def test_a_killed_engine_is_restarted_by_the_next_attempt(
    make_server: ServerFactory, local_models: Path, tmp_path: Path
) -> None:
    h = await make_server(
        local_models_dir=local_models, local_max_tokens=3000, retry_backoff=0.01,
        pipeline=pipeline(tmp_path, 3000, architect=COUNTING),
    )  # fmt: skip
    async with h.stream(TASK) as stream:
        await stream.until(lambda e: kind(e) == "token_delta")
        engine = await engine_of(h)
        assert engine.pid is not None
        os.kill(engine.pid, signal.SIGKILL)  # the real child process, killed as a crash would
        reset = await stream.until(lambda e: kind(e) == "attempt_reset", within=RUN_GUARD)
        await stream.until(lambda e: kind(e) == "token_delta" and e.seq > reset.seq, within=RUN_GUARD)
        replacement = await engine_of(h)
        assert replacement is not engine
        assert replacement.running
        await h.client.cancel_run(reset.run_id)
    assert reset.attempt_reset.reason.startswith("local ")  # the connection broke or the stream did
