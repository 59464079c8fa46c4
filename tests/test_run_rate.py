"""`runs_per_minute` across replicas: one rule, the store's window, counting the runs really created.

The rule on one server, on both stores, is in test_trust.py (`test_the_rate_of_new_runs_is_limited_per_principal`);
here two replicas share one PostgreSQL database (a SQLite file belongs to one process).
"""

from __future__ import annotations

from typing import Any

from facilitair.client import StatusCode
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import RunStream, collect, kind, refusal
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"


async def test_the_rate_holds_across_replicas_and_counts_only_the_runs_created(
    make_server: ServerFactory, pg_url: str
) -> None:
    architect, release = held(default_replies()["architect"], after=0)
    script = scripted(architect=[architect, default_replies()["architect"]])
    limits: dict[str, Any] = {"database_url": pg_url, "runs_per_minute": 2, "max_runs_per_principal": 1}
    async with FakeOpenAI(script) as fake:
        a = await make_server(openai=fake, replica_id="a", **limits)
        b = await make_server(openai=fake, replica_id="b", **limits)
        async with RunStream(a.client.collaborate(TASK)) as first:
            try:
                await first.until(lambda e: kind(e) == "run_started")
                # Replica b does not know of a's run: the store refuses these two (one run in flight already).
                for _ in range(2):
                    err = await refusal(b.client.collaborate(TASK))
                    assert err.code == StatusCode.RESOURCE_EXHAUSTED
                    assert "FACILITAIR_MAX_RUNS_PER_PRINCIPAL" in err.message
            finally:
                release.set()
            assert kind((await first.to_end())[-1]) == "run_completed"
        # One run was created in this minute: the refused calls did not use up b's share of the rate.
        second = await collect(b.client.collaborate(TASK))
        assert kind(second[-1]) == "run_completed"
        # Two runs were created, one on each replica: the third is refused on either, whoever counts.
        for harness in (a, b):
            err = await refusal(harness.client.collaborate(TASK))
            assert err.code == StatusCode.RESOURCE_EXHAUSTED
            assert "more than 2 runs a minute (across all servers)" in err.message
            assert err.retry_after is not None
            assert 0 < err.retry_after <= 60.0
        assert len((await a.client.list_runs())[0]) == 2
    assert len(script.requests("architect")) == 2  # the refused calls never reached the provider
