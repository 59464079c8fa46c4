"""What real provider servers do that the wire formats do not say, and the shipped example config, end to end.

Each behaviour was seen against a real inference server (issue 11) and is played by the fakes: streamed
connections closed although answered keep-alive, a server that restarts in seconds, a small context window,
prompt caching counted beside `input_tokens`, and anthropic 2.x without a `temperature` argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from facilitair.server.pipeline.attempts import AttemptPolicy
from facilitair.server.settings import Settings
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Fault, Reply
from tests.harness.events import kind, of_kind, stage_text
from tests.harness.scripts import Script, default_replies, held, scripted, text_of
from tests.harness.servers import Harness, ServerFactory

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
SONNET = "anthropic:claude-sonnet-4-6"
EXAMPLE_PIPELINE = Path(__file__).resolve().parent.parent / "examples" / "pipeline.toml"
# A run whose first review approves has these stages, one request each.
AGENTS_OF_A_RUN = ["architect", "coder", "reviewer", "tester", "documenter"]


def fake_for(vendor: str, script: Script, *, context_window: int | None = None) -> FakeOpenAI | FakeAnthropic:
    """A fake of the named vendor answering from `script`."""
    cls = FakeOpenAI if vendor == "openai" else FakeAnthropic
    return cls(script, context_window=context_window)


async def serve(make_server: ServerFactory, fake: FakeOpenAI | FakeAnthropic, **settings: Any) -> Harness:
    """A server whose only provider is `fake`, asking it for its vendor's model."""
    if isinstance(fake, FakeOpenAI):
        return await make_server(openai=fake, model=MINI, **settings)
    return await make_server(anthropic=fake, model=SONNET, **settings)


# ----- the example pipeline file (issue 11, item 7) -----


async def test_the_example_pipeline_completes_and_its_temperature_reaches_the_wire(make_server: ServerFactory) -> None:
    openai_script, anthropic_script = scripted(), scripted()
    async with FakeOpenAI(openai_script) as oa, FakeAnthropic(anthropic_script) as an:
        h = await make_server(openai=oa, anthropic=an, pipeline=EXAMPLE_PIPELINE)
        events = await h.run(TASK)

    assert kind(events[-1]) == "run_completed", events[-1]
    assert of_kind(events, "attempt_reset") == []
    completed = {c.agent: c.model for c in of_kind(events, "stage_completed")}
    assert len(completed) == 5
    assert [c.model for c in of_kind(events, "stage_completed")] == [
        SONNET,  # architect
        "openai:gpt-4.1",  # coder
        SONNET,  # reviewer
        MINI,  # tester: the first of its fallback list
        MINI,  # documenter: the server default
    ]
    assert anthropic_script.agents() == ["architect", "reviewer"]
    architect, reviewer = (s.body for s in anthropic_script.served)
    # anthropic 2.x's create() has no temperature: it goes in the body, where the API reads it.
    assert reviewer["temperature"] == 0.0
    assert "temperature" not in architect
    assert architect["max_tokens"] == 4096
    coder = openai_script.requests("coder")[0]
    assert coder["max_tokens"] == 8192
    assert "temperature" not in coder
    tester = openai_script.requests("tester")[0]
    assert tester["messages"][0]["content"].startswith("You are the Tester of a software team. Write pytest tests")


async def test_a_model_that_refuses_the_temperature_fails_as_a_precondition_naming_it(
    make_server: ServerFactory,
) -> None:
    # Hosted models that no longer take sampling settings answer 400: the setting is the server's, not the caller's.
    def refuses_temperature(body: dict[str, Any]) -> Reply:
        if "temperature" in body:
            return Reply(chunks=["never sent"], fault=Fault.http_status(400))
        return script(body)

    script = scripted()
    async with FakeOpenAI(scripted()) as oa, FakeAnthropic(refuses_temperature) as an:
        h = await make_server(openai=oa, anthropic=an, pipeline=EXAMPLE_PIPELINE)
        events = await h.run(TASK)

    failed = events[-1].run_failed
    assert kind(events[-1]) == "run_failed"
    assert (failed.stage, failed.code, failed.retryable) == (3, grpc.StatusCode.FAILED_PRECONDITION.value[0], False)
    assert "anthropic refused the request the server built for model claude-sonnet-4-6 (HTTP 400)" in failed.message
    assert "temperature" in failed.message
    assert "pipeline file" in failed.message
    assert "Scripted HTTP 400" not in failed.message  # the vendor's words stay out


# ----- stale keep-alive connections (item 8) -----


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_connections_closed_after_each_stream_cost_no_attempt(make_server: ServerFactory, vendor: str) -> None:
    # One attempt per model: a request lost to a closing pooled connection would fail the run at stage 2.
    script = scripted()
    async with fake_for(vendor, script) as fake:
        assert fake.close_after_stream  # the default, as real servers do
        h = await serve(make_server, fake, provider_attempts=1)
        events = await h.run(TASK)

    assert kind(events[-1]) == "run_completed", events[-1]
    assert of_kind(events, "attempt_reset") == []
    # No request was sent twice to the server: one per stage, each on its own connection.
    assert script.agents() == AGENTS_OF_A_RUN
    assert len(fake.requests) == len(AGENTS_OF_A_RUN)
    assert fake.connections == len(AGENTS_OF_A_RUN)


# ----- a provider restarting (item 9) -----


def test_the_default_retries_span_a_provider_restart_of_several_seconds() -> None:
    settings = Settings()
    policy = AttemptPolicy(
        attempts_per_model=settings.provider_attempts,
        retry_wait_max=settings.retry_wait_max,
        backoff_base=settings.retry_backoff,
    )
    assert policy == AttemptPolicy()  # the server's defaults and the policy's agree
    waits = [policy.backoff_range(tries) for tries in range(1, policy.attempts_per_model)]
    shortest = sum(low for low, _ in waits)
    longest = sum(high for _, high in waits)
    # Even with the shortest jitter the last attempt comes 5 s or more after the first failure (a server
    # that restarts in about 4 s is back by then), and the longest is within a minute and within the cap.
    assert shortest >= 5.0
    assert longest <= 60.0
    assert longest <= policy.retry_wait_max


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_a_provider_down_for_three_attempts_mid_run_is_ridden_out(
    make_server: ServerFactory, vendor: str
) -> None:
    # The coder's stream is held, then the provider goes down (the stream is cut, connections are refused)
    # for three attempts: two more than the old default of three attempts allowed after the cut.
    # The backoff is scaled down 40x from the default; the number of attempts is the default's.
    coder, _ = held(default_replies()["coder"], after=1)
    good = default_replies()["coder"]
    script = scripted(coder=[coder, good])
    async with fake_for(vendor, script) as fake:
        h = await serve(make_server, fake, retry_backoff=0.05)
        async with h.stream(TASK) as stream:
            await stream.until(lambda e: kind(e) == "token_delta" and e.token_delta.stage == 2)
            await fake.stop_listening()
            await stream.until(lambda e: kind(e) == "attempt_reset" and e.attempt_reset.attempt == 4)
            await fake.listen_again()
            events = await stream.to_end()

    assert kind(events[-1]) == "run_completed", events[-1]
    resets = of_kind(events, "attempt_reset")
    assert [r.attempt for r in resets][:3] == [2, 3, 4]
    assert all(r.stage == 2 for r in resets)
    assert all("connection failed" in r.reason or "stream broke off" in r.reason for r in resets), resets
    assert script.agents() == ["architect", "coder", "coder", "reviewer", "tester", "documenter"]
    last_reset = max(i for i, e in enumerate(events) if kind(e) == "attempt_reset")
    assert stage_text(events[last_reset + 1 :], 2) == text_of(good)


# ----- a small context window (item 10) -----


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_a_request_past_the_context_window_fails_as_a_precondition_saying_what_to_change(
    make_server: ServerFactory, vendor: str
) -> None:
    # The window takes the architect's request (~120 prompt tokens + max_tokens 4096) but not the coder's,
    # which carries the architect's 8,000-character design.
    architect = Reply(chunks=["# Design\n", "x" * 8000])
    script = scripted(architect=architect)
    async with fake_for(vendor, script, context_window=4096 + 1000) as fake:
        h = await serve(make_server, fake, retry_backoff=0.01)
        events = await h.run(TASK)

    failed = events[-1].run_failed
    assert kind(events[-1]) == "run_failed"
    assert failed.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert not failed.retryable
    assert failed.stage == 2
    assert "context window" in failed.message
    assert "max_tokens" in failed.message
    assert "pipeline file" in failed.message
    assert "(HTTP 400)" in failed.message
    # The vendor's own words are recognised, never passed on.
    assert "exceeds the available context size" not in failed.message
    assert "try increasing it" not in failed.message
    assert of_kind(events, "attempt_reset") == []  # retrying the same request cannot fit it
    assert script.agents() == ["architect"]  # the refused coder request never reached the script
    assert len(fake.requests) == 2


async def test_a_model_with_a_larger_window_takes_over_a_refused_request(make_server: ServerFactory) -> None:
    # Every stage after the architect carries its long design: each falls back to the larger model.
    architect = Reply(chunks=["# Design\n", "x" * 8000])
    openai_script, anthropic_script = scripted(architect=architect), scripted()
    async with FakeOpenAI(openai_script, context_window=5096) as oa, FakeAnthropic(anthropic_script) as an:
        h = await make_server(openai=oa, anthropic=an, retry_backoff=0.01)
        events = await h.run(TASK, model=f"{MINI},{SONNET}")

    assert kind(events[-1]) == "run_completed", events[-1]
    fallbacks = of_kind(events, "model_fallback")
    assert [(f.stage, f.from_model, f.to_model) for f in fallbacks] == [(n, MINI, SONNET) for n in range(2, 6)]
    assert all("context window" in f.reason for f in fallbacks)
    assert openai_script.agents() == ["architect"]
    assert anthropic_script.agents() == AGENTS_OF_A_RUN[1:]


# ----- prompt caching (item 12) -----


async def test_anthropic_cache_reads_and_writes_are_counted_and_priced(make_server: ServerFactory) -> None:
    # message_start said input_tokens 5, cache_read_input_tokens 61 (a real server), and a cache write of 100.
    architect = Reply(chunks=["design"], input_tokens=5, cache_read_tokens=61, cache_write_tokens=100, output_tokens=9)
    async with FakeAnthropic(scripted(architect=architect)) as fake:
        h = await make_server(anthropic=fake, model=SONNET)
        events = await h.run(TASK)

    assert kind(events[-1]) == "run_completed"
    usage = of_kind(events, "stage_completed")[0].usage
    assert usage.input_tokens == 5 + 61 + 100  # the whole prompt, as input_tokens always means
    assert usage.cache_read_input_tokens == 61
    assert usage.cache_write_input_tokens == 100
    assert usage.output_tokens == 9
    # claude-sonnet-4-6 per million tokens: input $3, cache read $0.30, cache write (5 min) $3.75, output $15.
    assert usage.cost_usd == pytest.approx((5 * 3 + 61 * 0.30 + 100 * 3.75 + 9 * 15) / 1e6)
    total = events[-1].run_completed.usage
    stages = of_kind(events, "stage_completed")
    assert total.cache_read_input_tokens == sum(s.usage.cache_read_input_tokens for s in stages) == 61
    assert total.input_tokens == sum(s.usage.input_tokens for s in stages)


async def test_openai_cached_tokens_are_priced_at_the_cache_rate(make_server: ServerFactory) -> None:
    architect = Reply(chunks=["design"], input_tokens=100, cache_read_tokens=80, output_tokens=9)
    async with FakeOpenAI(scripted(architect=architect)) as fake:
        h = await make_server(openai=fake, model=MINI)
        events = await h.run(TASK)

    usage = of_kind(events, "stage_completed")[0].usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_write_input_tokens) == (100, 80, 0)
    # gpt-4.1-mini per million tokens: input $0.40, cached input $0.10, output $1.60.
    assert usage.cost_usd == pytest.approx((20 * 0.40 + 80 * 0.10 + 9 * 1.60) / 1e6)
