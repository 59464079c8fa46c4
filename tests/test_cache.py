"""The response cache end to end: a real server, the official SDKs against the fake vendors, the real stores.

A stage whose exact provider request was answered cleanly before (same caller, same model, same prompts and
parameters) is answered from the cache: no provider request (the fakes count them), a `cache_hit` event, the
stored text as at most HIT_EVENTS token deltas, files and verdicts parsed as from live output, cost 0.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import grpc
import pytest

from facilitair.client import Client, FacilitairError, RunEvent, StatusCode, SyncClient
from facilitair.server.pipeline.cache import HIT_EVENTS
from facilitair.server.runs.retention import Retention
from facilitair.server.settings import Settings
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI, Fault, Reply
from tests.harness.browser import chromium, new_context, open_run
from tests.harness.cli import cli, cli_environment
from tests.harness.events import (
    EventCall,
    RunStream,
    assert_complete_log,
    collect,
    kind,
    of_kind,
    read_rest,
    read_until,
    wire,
)
from tests.harness.processes import clean_environment, free_port, server_processes
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import Harness, ServerFactory, quiet_environment
from tests.harness.stores import Target, execute, fetch
from tests.harness.team import (
    STAGE_OF,
    Team,
    at_hold,
    collaborate_request,
    expected_texts,
    requests_per_agent,
    stage_texts,
)

TASK = "Write a function that reverses a string"
MINI = "openai:gpt-4.1-mini"
STAGES = [1, 2, 3, 4, 5]
ALICE_KEY = "alice-key-5d2e8f01c3b7a694"
BOB_KEY = "bob-key-0a9c7e3f58d1b246"


def texts(events: Sequence[RunEvent]) -> dict[int, str]:
    """Each stage's text as a client keeps it (an attempt_reset voids what the stage had)."""
    out: dict[int, str] = {}
    for e in events:
        if kind(e) == "token_delta":
            out[e.token_delta.stage] = out.get(e.token_delta.stage, "") + e.token_delta.text
        elif kind(e) == "attempt_reset":
            out[e.attempt_reset.stage] = ""
    return out


def outcome(events: Sequence[RunEvent]) -> tuple[Any, ...]:
    """What a run produced: its files (path, kind, content) and its verdicts (approved, summary, issues)."""
    done = events[-1].run_completed
    files = sorted((a.path, a.kind, a.content) for a in done.result.artifacts)
    verdicts = [(v.approved, v.summary, len(v.issues)) for v in of_kind(events, "review_verdict")]
    return files, verdicts, done.result.approved


async def entries(target: Target) -> list[tuple[Any, ...]]:
    """The stored entries: (run_id, stage, text), by stage."""
    return [tuple(r) for r in await fetch(target, "SELECT run_id, stage, text FROM response_cache ORDER BY stage")]


async def serve(make_server: ServerFactory, fake: FakeOpenAI, **settings: Any) -> Harness:
    return await make_server(openai=fake, model=MINI, **settings)


@pytest.mark.both_stores
async def test_the_same_task_twice_is_answered_from_the_cache_at_no_cost(
    make_server: ServerFactory, store_target: Target
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await serve(make_server, fake)
        first = await h.run(TASK, cache="read-write")
        assert len(fake.requests) == 5
        second = await h.run(TASK, cache="read-write")
        assert len(fake.requests) == 5, "the second run asked no provider"

    assert kind(first[-1]) == kind(second[-1]) == "run_completed"
    assert not of_kind(first, "cache_hit")
    assert texts(second) == texts(first)
    assert outcome(second) == outcome(first)
    assert [e.seq for e in second] == list(range(1, len(second) + 1))

    hits = of_kind(second, "cache_hit")
    assert [(h.stage, h.model, h.source_run_id, h.source_stage) for h in hits] == [
        (s, MINI, first[0].run_id, s) for s in STAGES
    ]
    stage_usage = {c.stage: c.usage for c in of_kind(first, "stage_completed")}
    for hit in hits:
        made = stage_usage[hit.stage]
        assert (hit.saved.input_tokens, hit.saved.output_tokens) == (made.input_tokens, made.output_tokens)
        assert hit.saved.cost_usd == pytest.approx(made.cost_usd)
        assert hit.saved.cost_usd > 0
    # Each hit right after its stage_started, then its text in a bounded number of deltas, then its files.
    for stage in STAGES:
        at = next(i for i, e in enumerate(second) if kind(e) == "stage_started" and e.stage_started.stage == stage)
        assert kind(second[at + 1]) == "cache_hit"
        deltas = [e for e in second if kind(e) == "token_delta" and e.token_delta.stage == stage]
        assert 1 <= len(deltas) <= HIT_EVENTS
    for c in of_kind(second, "stage_completed"):
        assert (c.usage.input_tokens, c.usage.output_tokens, c.usage.cost_usd) == (0, 0, 0.0)
        assert not c.usage.cost_unknown
        assert not c.usage.estimated
    usage = second[-1].run_completed.usage
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (0, 0, 0.0)
    assert [r[:2] for r in await entries(store_target)] == [(first[0].run_id, s) for s in STAGES]


async def test_read_only_never_writes_and_refresh_never_reads(make_server: ServerFactory, store_target: Target) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await serve(make_server, fake)
        await h.run(TASK, cache="read-only")
        assert (len(fake.requests), await entries(store_target)) == (5, [])
        await h.run(TASK)  # the server's default: off
        assert (len(fake.requests), await entries(store_target)) == (10, [])
        refreshed = await h.run(TASK, cache="refresh")
        assert len(fake.requests) == 15
        assert [r[:2] for r in await entries(store_target)] == [(refreshed[0].run_id, s) for s in STAGES]
        again = await h.run(TASK, cache="refresh")  # entries exist: refresh still asks, and replaces them
        assert len(fake.requests) == 20
        assert not of_kind(again, "cache_hit")
        assert [r[:2] for r in await entries(store_target)] == [(again[0].run_id, s) for s in STAGES]
        hit = await h.run(TASK, cache="read-only")
        assert len(fake.requests) == 20
        assert [e.source_run_id for e in of_kind(hit, "cache_hit")] == [again[0].run_id] * 5


async def test_the_server_default_applies_to_a_request_that_says_nothing(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await serve(make_server, fake, cache_default="read-write")
        await h.run(TASK)
        second = await h.run(TASK)
        off = await h.run(TASK, cache="off")  # a request's own mode wins over the default
    assert len(fake.requests) == 10
    assert len(of_kind(second, "cache_hit")) == 5
    assert not of_kind(off, "cache_hit")


async def test_another_caller_never_hits_an_entry(make_server: ServerFactory, store_target: Target) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await serve(make_server, fake, api_keys=f"alice:{ALICE_KEY},bob:{BOB_KEY}")
        async with Client(h.target, api_key=ALICE_KEY) as alice, Client(h.target, api_key=BOB_KEY) as bob:
            await collect(alice.collaborate(TASK, cache="read-write"))
            theirs = await collect(bob.collaborate(TASK, cache="read-write"))
            assert len(fake.requests) == 10, "bob's run asked the provider for every stage"
            mine = await collect(alice.collaborate(TASK, cache="read-only"))
    assert not of_kind(theirs, "cache_hit")
    assert len(of_kind(mine, "cache_hit")) == 5
    assert len(fake.requests) == 10
    principals = await fetch(store_target, "SELECT principal, count(*) FROM response_cache GROUP BY principal")
    assert sorted(tuple(r) for r in principals) == [("alice", 5), ("bob", 5)]


@pytest.mark.both_stores
async def test_failed_broken_and_cancelled_attempts_write_no_entry(
    make_server: ServerFactory, store_target: Target
) -> None:
    replies = default_replies()
    coder = replies["coder"]
    broken = Reply(chunks=list(coder.chunks), fault=Fault.error_event(after_chunks=1))
    # A stream broken mid-way and retried: only the retry's clean answer is stored.
    async with FakeOpenAI(scripted(coder=[broken, coder])) as fake:
        h = await serve(make_server, fake, retry_backoff=0.01)
        retried = await h.run(TASK, cache="read-write")
        assert kind(retried[-1]) == "run_completed"
        assert len(of_kind(retried, "attempt_reset")) == 1
        stored = await entries(store_target)
        assert [r[1] for r in stored] == STAGES
        assert stored[1][2] == texts(retried)[2] == "".join(coder.chunks)
        await h.stop()

    # A run that fails at the coder: the architect's answer is stored, the coder's broken one never.
    async with FakeOpenAI(scripted(coder=Reply(chunks=list(coder.chunks), fault=Fault.error_event(1)))) as fake:
        h = await serve(make_server, fake, provider_attempts=1)
        failed = await h.run("Another task", cache="read-write")
        assert kind(failed[-1]) == "run_failed"
        assert [r[:2] for r in await entries(store_target) if r[0] == failed[0].run_id] == [(failed[0].run_id, 1)]
        await h.stop()

    # A run cancelled while its coder streams: nothing of the coder's is stored.
    reply, release = held(Reply(chunks=list(coder.chunks)), after=1)
    async with FakeOpenAI(scripted(coder=reply)) as fake:
        h = await serve(make_server, fake)
        async with RunStream(h.client.collaborate("A third task", cache="read-write")) as run:
            await run.until(lambda e: kind(e) == "token_delta" and e.token_delta.stage == 2)
            await h.client.cancel_run(run.events[0].run_id)
            events = await run.to_end()
        release.set()
        assert kind(events[-1]) == "run_cancelled"
        assert [r[:2] for r in await entries(store_target) if r[0] == events[0].run_id] == [(events[0].run_id, 1)]


# ----- a hit in a run resumed after its server was killed -----------------------------------------------------


@pytest.mark.both_stores
async def test_a_run_with_hits_resumed_after_a_kill_stays_gapless(store_target: Target) -> None:
    team = Team()
    environment = clean_environment(
        **quiet_environment(store_target, "http://placeholder"), FACILITAIR_CACHE_DEFAULT="read-write"
    )
    async with asyncio.timeout(90), FakeOpenAI(team) as fake:
        environment["OPENAI_BASE_URL"] = fake.base_url
        async with server_processes(environment) as [proc]:
            port = await proc.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                first = await read_rest(stub.Collaborate(collaborate_request()))
                # The Architect's and the Coder's answers stay cached; the later stages ask again.
                await execute(store_target, "DELETE FROM response_cache WHERE stage >= 3")
                release = team.hold_next("Reviewer")
                call: EventCall = stub.Collaborate(collaborate_request())
                before = await read_until(call, lambda events: at_hold(events, "Reviewer"))
                await proc.kill()
            assert not release.is_set()
            port = await proc.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                events = await read_rest(stub.WatchRun(pb.WatchRunRequest(run_id=before[0].run_id)))

    assert_complete_log(first)
    assert_complete_log(events)
    assert wire(events[: len(before)]) == wire(before), "what the client saw before the kill was stored as it"
    hits = [e.cache_hit for e in events if kind(e) == "cache_hit"]
    assert [(h.stage, h.source_run_id) for h in hits] == [(1, first[0].run_id), (2, first[0].run_id)]
    assert [e.attempt_reset.stage for e in events if kind(e) == "attempt_reset"] == [STAGE_OF["Reviewer"]]
    assert texts(events) == stage_texts(first) == expected_texts()
    # The cached stages never reached the provider; the interrupted one was asked again after the restart.
    assert requests_per_agent(fake) == {"Architect": 1, "Coder": 1, "Reviewer": 3, "Tester": 2, "Documenter": 2}
    usage = events[-1].run_completed.usage
    completed = [e.stage_completed for e in events if kind(e) == "stage_completed"]
    assert [c.usage.cost_usd for c in completed[:2]] == [0.0, 0.0]
    assert usage.input_tokens == sum(c.usage.input_tokens for c in completed[2:])


# ----- the CLI ---------------------------------------------------------------------------------------------------


@pytest.mark.both_stores
async def test_the_cli_runs_with_the_cache_and_shows_and_clears_it(
    make_server: ServerFactory, store_target: Target
) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await serve(make_server, fake)
        first = await cli(h.target, "run", TASK, "--cache", "read-write", "--format", "plain", env=cli_environment())
        second = await cli(h.target, "run", TASK, "--cache", "read-write", "--format", "plain", env=cli_environment())
    assert (first[0], second[0]) == (0, 0), (first[2], second[2])
    assert len(fake.requests) == 5
    assert "from the response cache" not in first[1]
    assert second[1].count("from the response cache (run ") == 5

    admin = cli_environment(**store_target.environment())
    code, out, err = await cli(None, "cache", "stats", env=admin)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["entries"] == 5
    assert stats["chars"] == sum(len(text) for *_, text in await entries(store_target))
    assert stats["cost_usd"] > 0
    code, out, _ = await cli(None, "cache", "stats", "--principal", "someone-else", env=admin)
    assert json.loads(out)["entries"] == 0
    code, out, _ = await cli(None, "cache", "clear", "--principal", "someone-else", env=admin)
    assert json.loads(out) == {"removed": 0}
    code, out, _ = await cli(None, "cache", "clear", env=admin)
    assert (code, json.loads(out)) == (0, {"removed": 5})
    assert await entries(store_target) == []


@pytest.mark.both_stores
async def test_entries_expire_by_retention(make_server: ServerFactory, store_target: Target) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await serve(make_server, fake)
        first = await h.run(TASK, cache="read-write")
        old = time.time() - 8 * 86400  # older than the default retention of 7 days
        await execute(store_target, ("UPDATE response_cache SET created_at = ? WHERE stage <= 2", (old,)))
        await Retention(Settings(), h.server.runs.store).run_once()
        assert [r[1] for r in await entries(store_target)] == [3, 4, 5]
        second = await h.run(TASK, cache="read-write")
    # The expired stages asked the provider again (and were stored again); the others were hits.
    assert len(fake.requests) == 7
    assert [e.stage for e in of_kind(second, "cache_hit")] == [3, 4, 5]
    assert [e.source_run_id for e in of_kind(second, "cache_hit")] == [first[0].run_id] * 3
    assert [r[:2] for r in await entries(store_target)] == [
        (second[0].run_id, 1), (second[0].run_id, 2), (first[0].run_id, 3), (first[0].run_id, 4), (first[0].run_id, 5)
    ]  # fmt: skip


# ----- the web page ------------------------------------------------------------------------------------------------


async def test_the_page_says_where_a_cached_stage_came_from(store_target: Target) -> None:
    http = free_port()
    async with FakeOpenAI(scripted()) as fake:
        given = quiet_environment(store_target, fake.base_url) | {
            "FACILITAIR_HTTP_LISTEN": f"127.0.0.1:{http}",
            "FACILITAIR_CACHE_DEFAULT": "read-write",
        }
        env = clean_environment(**given)
        async with server_processes(env) as (server,), chromium() as browser:
            await server.start()
            async with Client(server.target) as client:
                first = await collect(client.collaborate(TASK))
                second = await collect(client.collaborate(TASK))
            tab = await open_run(await new_context(browser), f"http://127.0.0.1:{http}", second[0].run_id)
            await tab.until_ended()
            notes = await tab.page.locator("section.stage[data-stage='1'] .notes").inner_text()
            shown = {stage: await tab.text(stage) for stage in STAGES}
    assert len(fake.requests) == 5
    assert f"from the response cache (run {first[0].run_id}, stage 1): saved $" in notes
    assert shown == texts(first)


async def test_an_unknown_cache_mode_is_refused_and_asks_no_provider(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await serve(make_server, fake)
        async with grpc.aio.insecure_channel(h.target) as channel:
            call = pb_grpc.OrchestratorServiceStub(channel).Collaborate(pb.CollaborateRequest(task=TASK, cache=99))  # type: ignore[arg-type]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.read()
        with pytest.raises(FacilitairError) as bad:
            await h.run(TASK, cache="sometimes")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cache: unknown value 99" in (refused.value.details() or "")
    assert bad.value.code == StatusCode.INVALID_ARGUMENT
    assert "cache" in str(bad.value)
    assert fake.requests == []


async def test_the_sync_client_takes_the_cache_mode(make_server: ServerFactory) -> None:
    def twice(target: str) -> list[list[str]]:
        kinds: list[list[str]] = []
        with SyncClient(target) as client:
            for _ in range(2):
                kinds.append([])
                client.run(TASK, cache="read-write", on_event=lambda e: kinds[-1].append(kind(e)))
        return kinds

    async with FakeOpenAI(scripted()) as fake:
        h = await serve(make_server, fake)
        first, second = await asyncio.to_thread(twice, h.target)
    assert len(fake.requests) == 5
    assert (first.count("cache_hit"), second.count("cache_hit")) == (0, 5)
