"""Budgets as a person meets them: refusals name the `facilitair run` flags next to the request fields, and the
plan's estimate follows the pipeline file's max_tokens.

Real servers on 127.0.0.1:0 with the fake OpenAI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from facilitair.client import FacilitairError, StatusCode
from facilitair.server.domain import AgentRole
from facilitair.server.pipeline.plan import PLANNED_ROLES, READS, SPEED, TYPICAL_OUTPUT
from tests.fakes.providers import FakeOpenAI, Reply
from tests.harness.events import kind
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"
CODER_MAX_TOKENS = 200


async def test_a_spent_token_budget_names_the_flag(make_server: ServerFactory) -> None:
    # The plan (about 18k tokens) fits 20k; an architect reporting 30k input tokens spends it all.
    script = scripted(architect=Reply(chunks=["design"], input_tokens=30_000, output_tokens=1))
    async with FakeOpenAI(script) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_tokens=20_000)
    assert kind(events[-1]) == "run_failed"
    assert events[-1].run_failed.message == (
        "the run's token budget of 20000 is spent (30001 used); stage 2 was not started. "
        "Raise max_tokens (--max-tokens for facilitair run) or FACILITAIR_BUDGET_TOKENS"
    )
    assert script.agents() == ["architect"]


async def test_a_smaller_max_tokens_in_the_pipeline_file_lowers_the_plans_estimates(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(f"[agents.coder]\nmax_tokens = {CODER_MAX_TOKENS}\n")
    plans, tokens = [], []
    async with FakeOpenAI(scripted()) as fake:
        for name, pipeline_file in (("default", None), ("small", pipeline)):
            h = await make_server(openai=fake, db=tmp_path / f"{name}.db", pipeline=pipeline_file)
            # A budget of 1 token refuses every plan, saying how many tokens it was estimated at. Both plans come
            # before any run completes: after one, the plan learns from its stages instead of the table.
            with pytest.raises(FacilitairError) as refused:
                await h.run(TASK, max_tokens=1)
            assert refused.value.code == StatusCode.FAILED_PRECONDITION
            found = re.search(r"the plan's estimated (\d+) tokens are over the budget of 1 ", refused.value.message)
            assert found is not None, refused.value.message
            tokens.append(int(found.group(1)))
            events = await h.run(TASK)
            plans.append(events[0].run_started.plan)
            assert plans[-1].history_stages == 0
    default, small = plans
    less_output = TYPICAL_OUTPUT[AgentRole.CODER] - CODER_MAX_TOKENS
    readers = sum(AgentRole.CODER in READS[role] for role in PLANNED_ROLES)  # later prompts carry its output
    assert tokens[0] - tokens[1] == less_output * (1 + readers)
    speed, _ = SPEED["openai"]
    assert [s.agent for s in default.stages] == [s.agent for s in small.stages]
    assert AgentRole(default.stages[1].agent) is AgentRole.CODER
    assert default.stages[1].estimated_seconds - small.stages[1].estimated_seconds == pytest.approx(less_output / speed)
    assert default.estimated_seconds - small.estimated_seconds == pytest.approx(less_output / speed)
    assert small.estimated_cost_usd < default.estimated_cost_usd
