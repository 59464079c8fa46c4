"""Plan estimates learn from the runs the store holds (issue 21 item 12).

A local model was planned at ~6m23s from a table of vendor speeds for runs that took 51 s to 1m44s. Once runs
have finished, a new run's plan takes each stage's time and output length from the same model and agent in
those runs, and says how many earlier stages it learned from; with none it falls back to the table.
A real server on each store, the fake OpenAI behind the official SDK.
"""

from __future__ import annotations

import dataclasses

import pytest

from facilitair.server.pipeline.spec import StageOutput
from facilitair.server.pipeline.tokens import estimate_tokens
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import of_kind
from tests.harness.scripts import default_replies, scripted
from tests.harness.servers import ServerFactory
from tests.harness.stores import fetch

pytestmark = pytest.mark.both_stores

TASK = "Write a function that reverses a string"
# The table's estimate of the five planned stages on an OpenAI model: 1.5 s to the first token, then 80 tokens/s.
TABLE_SECONDS = 5 * 1.5 + (900 + 1800 + 500 + 1500 + 900) / 80.0


async def test_the_plan_learns_stage_times_and_lengths_from_finished_runs(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        first = await h.run(TASK, max_refinements=0)
        second = await h.run(TASK, max_refinements=0)  # learnt as the stages completed here
        await h.stop()  # a SQLite file has one server at a time: the next one learns from the store alone
        other = await make_server(openai=fake)  # a server started afresh (or another replica): the store's runs
        elsewhere = await other.run(TASK, max_refinements=0)

    before = first[0].run_started.plan
    assert before.history_stages == 0, "a store with no finished run: the table"
    assert before.estimated_seconds == pytest.approx(TABLE_SECONDS)

    done = of_kind(first, "stage_completed")
    assert len(done) == 5
    after = second[0].run_started.plan
    assert after.history_stages == 5
    # One earlier stage per agent and model: each planned stage takes as long as that stage did.
    assert [s.agent for s in after.stages] == [d.agent for d in done]
    assert [s.estimated_seconds for s in after.stages] == pytest.approx(
        [d.duration.ToNanoseconds() / 1e9 for d in done], abs=1e-3
    )
    assert after.estimated_seconds == pytest.approx(sum(s.estimated_seconds for s in after.stages))
    assert after.estimated_seconds < TABLE_SECONDS / 10

    # Read from the store: both runs' stages, the mean of the two for each agent.
    read = elsewhere[0].run_started.plan
    assert read.history_stages == 10
    both = zip(done, of_kind(second, "stage_completed"), strict=True)
    assert [s.estimated_seconds for s in read.stages] == pytest.approx(
        [(a.duration.ToNanoseconds() + b.duration.ToNanoseconds()) / 2e9 for a, b in both], abs=1e-3
    )


async def test_a_stage_whose_endpoint_reports_no_usage_is_learned_by_its_text(make_server: ServerFactory) -> None:
    # An OpenAI-compatible endpoint that sends no usage: its stages are 0 output tokens as reported, which the
    # plan must not learn (it would plan the next runs' outputs, prompts and costs as nothing).
    replies = {agent: dataclasses.replace(reply, report_usage=False) for agent, reply in default_replies().items()}
    async with FakeOpenAI(scripted(**replies)) as fake:
        h = await make_server(openai=fake)
        events = await h.run(TASK, max_refinements=0)
        rows = await fetch(h.store, "SELECT data FROM checkpoints WHERE run_id = ? ORDER BY stage", events[0].run_id)

    texts = {d.stage: "" for d in of_kind(events, "stage_completed")}
    for delta in of_kind(events, "token_delta"):
        texts[delta.stage] += delta.text
    learned = [StageOutput.from_json(data) for (data,) in rows]
    assert len(learned) == 5
    assert [s.output_tokens for s in learned] == [estimate_tokens(texts[s.stage]) for s in learned]
    assert all(s.output_tokens for s in learned)
