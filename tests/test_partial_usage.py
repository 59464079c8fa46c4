"""Usage counts the stage a run was cut off in, and attempts that broke and were retried (issue 11, item 16).

A real server and client with the fake vendors behind the official SDKs. What the provider reported is counted
as it is (Anthropic's message_start gives the prompt's tokens at once; OpenAI says nothing before its end);
the rest is estimated, and the usage says so with `estimated`, in the events, in GetRun, in the server's log
and in the CLI ("~").
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from facilitair.server.pipeline.tokens import TEMPLATE_TOKENS, estimate_tokens
from tests.fakes.providers import FakeAnthropic, FakeOpenAI, Fault, Reply
from tests.harness.cli import cli
from tests.harness.events import kind, of_kind
from tests.harness.logs import captured_logs
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import Harness, ServerFactory

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
SONNET = "anthropic:claude-sonnet-4-6"
# USD per million input / output tokens, as published (pricing.py must agree).
PRICES = {MINI: (0.40, 1.60), SONNET: (3.00, 15.00)}
ARCHITECT = default_replies()["architect"]
CODER = default_replies()["coder"]
# The output tokens the fakes report for these replies (set in default_replies).
ARCHITECT_OUT, CODER_OUT = ARCHITECT.output_tokens or 0, CODER.output_tokens or 0


async def serve(make_server: ServerFactory, fake: FakeOpenAI | FakeAnthropic, **settings: Any) -> Harness:
    """A server whose only provider is `fake`, asking it for its vendor's model."""
    if isinstance(fake, FakeOpenAI):
        return await make_server(openai=fake, model=MINI, **settings)
    return await make_server(anthropic=fake, model=SONNET, **settings)


def vendor_fake(vendor: str, **replies: Reply | list[Reply]) -> FakeOpenAI | FakeAnthropic:
    """The fake of one vendor, answering from `scripted(**replies)`."""
    script = scripted(**replies)
    return FakeOpenAI(script) if vendor == "openai" else FakeAnthropic(script)


def cut_off_input(vendor: str, body: dict[str, Any]) -> int:
    """The input tokens counted for a cut-off attempt: Anthropic reported them, OpenAI's are estimated."""
    if vendor == "anthropic":
        return CODER.input_tokens
    system, prompt = (body["messages"][0]["content"], body["messages"][-1]["content"])
    return TEMPLATE_TOKENS + estimate_tokens(system) + estimate_tokens(prompt)


def cost(vendor: str, input_tokens: int, output_tokens: int) -> float:
    """What the vendor's model charges for these tokens."""
    per_input, per_output = PRICES[MINI if vendor == "openai" else SONNET]
    return (input_tokens * per_input + output_tokens * per_output) / 1e6


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_a_cancelled_run_counts_the_stage_it_cut_off(make_server: ServerFactory, vendor: str) -> None:
    coder, release = held(CODER, after=3)
    fake = vendor_fake(vendor, coder=coder)
    async with fake:
        h = await serve(make_server, fake)
        with captured_logs() as logs:
            async with h.stream(TASK) as run:
                seen = 0

                def third_coder_token(event: Any) -> bool:
                    nonlocal seen
                    seen += kind(event) == "token_delta" and event.token_delta.stage == 2
                    return seen == 3

                await run.until(third_coder_token)
                run_id = run.events[0].run_id
                await h.client.cancel_run(run_id)
                events = await run.to_end()
            # Logged once the terminal event is committed, so possibly after the client has read it.
            finished = await logs.until("run_finished", run_id=run_id)
        release.set()
        summary = await h.client.get_run(run_id)
        status = await cli(h.target, "status", run_id)
        watched = await cli(h.target, "watch", run_id, "--format", "plain")

    assert kind(events[-1]) == "run_cancelled"
    usage = events[-1].run_cancelled.usage
    streamed = "".join(CODER.chunks[:3])
    expected_in = ARCHITECT.input_tokens + cut_off_input(vendor, fake.requests[1])
    expected_out = ARCHITECT_OUT + estimate_tokens(streamed)
    assert (usage.input_tokens, usage.output_tokens, usage.estimated) == (expected_in, expected_out, True)
    assert usage.cost_usd == pytest.approx(cost(vendor, expected_in, expected_out))
    # Only the architect's stage completed, with what its provider reported: not an estimate.
    (architect,) = of_kind(events, "stage_completed")
    assert (architect.usage.input_tokens, architect.usage.estimated) == (ARCHITECT.input_tokens, False)
    # The stored summary says the same.
    assert summary.usage == usage
    assert len(logs.of("run_finished")) == 1
    assert finished["usage_estimated"] is True
    assert (finished["input_tokens"], finished["output_tokens"]) == (expected_in, expected_out)
    # The CLI shows the estimate as such.
    assert status[0] == 0
    assert f"usage    ~{expected_in} in / ~{expected_out} out tokens, ~$" in status[1]
    [cancelled] = [line for line in watched[1].splitlines() if line.startswith("Run cancelled:")]
    assert f"(~{expected_in} in / ~{expected_out} out tokens, ~$" in cancelled


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_a_run_failed_mid_stage_counts_every_attempt_it_cut_off(make_server: ServerFactory, vendor: str) -> None:
    broken = Reply(chunks=CODER.chunks, input_tokens=CODER.input_tokens, fault=Fault.reset(after_chunks=2))
    fake = vendor_fake(vendor, coder=broken)
    async with fake:
        h = await serve(make_server, fake, provider_attempts=2, retry_backoff=0.01)
        events = await h.run(TASK)
        watched = await cli(h.target, "watch", events[0].run_id, "--format", "plain")

    assert kind(events[-1]) == "run_failed"
    failed = events[-1].run_failed
    assert (failed.code, failed.stage) == (grpc.StatusCode.UNAVAILABLE.value[0], 2)
    attempt_in = [cut_off_input(vendor, body) for body in fake.requests[1:]]
    assert len(attempt_in) == 2
    attempt_out = estimate_tokens("".join(CODER.chunks[:2]))
    expected_in = ARCHITECT.input_tokens + sum(attempt_in)
    expected_out = ARCHITECT_OUT + 2 * attempt_out
    assert (failed.usage.input_tokens, failed.usage.output_tokens, failed.usage.estimated) == (
        expected_in,
        expected_out,
        True,
    )
    assert failed.usage.cost_usd == pytest.approx(cost(vendor, expected_in, expected_out))
    [line] = [line for line in watched[1].splitlines() if line.startswith("Run failed:")]
    assert line.endswith(f"(~{expected_in} in / ~{expected_out} out tokens, ~${failed.usage.cost_usd:.6f} spent)")


async def test_an_attempt_that_broke_after_reporting_usage_counts_in_its_stage_as_reported(
    make_server: ServerFactory,
) -> None:
    # The usage chunk came, then the body ended without [DONE]: retried, and paid for as the provider said.
    no_end = Reply(chunks=CODER.chunks, input_tokens=240, output_tokens=42, fault=Fault.no_terminal())
    fake = vendor_fake("openai", coder=[no_end, CODER])
    async with fake:
        h = await serve(make_server, fake, retry_backoff=0.01)
        events = await h.run(TASK)

    assert kind(events[-1]) == "run_completed"
    assert len(of_kind(events, "attempt_reset")) == 1
    coder = of_kind(events, "stage_completed")[1]
    assert (coder.usage.input_tokens, coder.usage.output_tokens, coder.usage.estimated) == (480, 84, False)
    assert coder.usage.cost_usd == pytest.approx(cost("openai", 480, 84))
    total = events[-1].run_completed.usage
    stages = of_kind(events, "stage_completed")
    assert total.input_tokens == sum(s.usage.input_tokens for s in stages)
    assert not total.estimated


async def test_a_retried_attempt_without_usage_is_estimated_in_its_stage(make_server: ServerFactory) -> None:
    broken = Reply(chunks=CODER.chunks, fault=Fault.error_event(after_chunks=2))
    fake = vendor_fake("openai", coder=[broken, CODER])
    async with fake:
        h = await serve(make_server, fake, retry_backoff=0.01)
        events = await h.run(TASK)
        watched = await cli(h.target, "watch", events[0].run_id, "--format", "plain")

    assert kind(events[-1]) == "run_completed"
    coder = of_kind(events, "stage_completed")[1]
    expected_in = CODER.input_tokens + cut_off_input("openai", fake.requests[1])
    expected_out = CODER_OUT + estimate_tokens("".join(CODER.chunks[:2]))
    assert (coder.usage.input_tokens, coder.usage.output_tokens, coder.usage.estimated) == (
        expected_in,
        expected_out,
        True,
    )
    assert events[-1].run_completed.usage.estimated
    lines = watched[1].splitlines()
    [done] = [line for line in lines if line.startswith("-- [2] done in")]
    assert f": ~{expected_in} in / ~{expected_out} out tokens, ~$" in done
    assert not any("~" in line for line in lines if line.startswith("-- [1] done in"))
    [end] = [line for line in lines if line.startswith("Run completed")]
    assert " in / ~" in end
