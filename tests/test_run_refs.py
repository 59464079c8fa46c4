"""Naming a run by a unique prefix of its id (like git) or as "last", in GetRun, WatchRun and CancelRun.

Real servers on 127.0.0.1:0 with the fake OpenAI; the CLI runs as a subprocess and passes what it is given
through. Runs whose ids share a prefix with a real one are stored through the server's own store (ids are
random, so two real runs sharing 8 characters cannot be arranged otherwise).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from facilitair.client import Client, FacilitairError, RunState, StatusCode
from facilitair.server.store.base import EventStore, InsertOutcome, RunRow
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI
from tests.harness.cli import cli
from tests.harness.events import RunStream, collect, kind
from tests.harness.logs import captured_logs
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import ServerFactory

TASK = "Write a function that reverses a string"
ALICE_KEY = "alice-key-4c1d9e07b2a8f356"
BOB_KEY = "bob-key-81f0a3c6e95d2b47"
KEYS = f"alice:{ALICE_KEY},bob:{BOB_KEY}"


def twin(run_id: str, n: int) -> str:
    """An id that shares its first 9 characters ("abcd1234-") with `run_id` and differs right after them."""
    middle = f"{n:04x}" if f"{n:04x}" != run_id[9:13] else f"{n + 100:04x}"
    return run_id[:9] + middle + run_id[13:]


async def store_finished_run(store: EventStore, principal: str, run_id: str, task: str = "an older run") -> None:
    """A completed run with this id, an hour old (so never the newest), stored for `principal`."""
    then = time.time() - 3600
    summary = pb.RunSummary(run_id=run_id, state=pb.RUN_STATE_COMPLETED, task=task)
    summary.created_at.FromNanoseconds(int(then * 1e9))
    row = RunRow(run_id, principal, "", pb.RUN_STATE_COMPLETED, then, then, then, summary.SerializeToString(), "{}")
    inserted = await store.insert_run(row, owner="elsewhere", lease_seconds=3600, max_active_per_principal=100)
    assert inserted.outcome is InsertOutcome.CREATED


async def finished(client: Client, task: str = TASK) -> str:
    """Run a task to its end; its run id."""
    events = await collect(client.collaborate(task))
    assert kind(events[-1]) == "run_completed"
    return events[0].run_id


async def test_a_unique_prefix_names_the_run_in_get_watch_and_cancel(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        run_id = await finished(h.client)
        full = await collect(h.client.watch(run_id))
        got = await h.client.get_run(run_id[:6])
        replay = await collect(h.client.watch(run_id[:4], 3))
        cancelled = await h.client.cancel_run(run_id[:13].upper())
        spelled = await h.client.get_run(run_id.upper())
    assert (got.run_id, RunState(got.state)) == (run_id, RunState.COMPLETED)
    assert replay == full[3:]
    assert {e.run_id for e in replay} == {run_id}  # the events carry the full id
    assert (cancelled.run_id, RunState(cancelled.state)) == (run_id, RunState.COMPLETED)
    assert spelled.run_id == run_id


async def test_last_is_the_callers_newest_run(make_server: ServerFactory) -> None:
    architect, release = held(default_replies()["architect"], after=1)
    async with FakeOpenAI(scripted(architect=[default_replies()["architect"], architect])) as fake:
        h = await make_server(openai=fake, api_keys=KEYS)
        async with Client(h.target, api_key=ALICE_KEY) as alice, Client(h.target, api_key=BOB_KEY) as bob:
            first = await finished(alice)
            assert (await alice.get_run("last")).run_id == first
            async with RunStream(alice.collaborate(TASK)) as live:
                second = (await live.until(lambda e: kind(e) == "token_delta")).run_id
                assert (await alice.get_run("last")).run_id == second
                async with RunStream(alice.watch("last")) as watched:
                    await watched.until(lambda e: kind(e) == "token_delta")
                    cancelled = await alice.cancel_run("last")
                    watched_events = await watched.to_end()
                started_events = await live.to_end()
            release.set()
            with pytest.raises(FacilitairError) as none_yet:
                await bob.get_run("last")
    assert second != first
    assert (cancelled.run_id, RunState(cancelled.state)) == (second, RunState.CANCELLED)
    assert kind(watched_events[-1]) == kind(started_events[-1]) == "run_cancelled"
    assert {e.run_id for e in watched_events} == {second}
    assert none_yet.value.code == StatusCode.NOT_FOUND
    assert none_yet.value.message == "you have no runs yet, so there is no last one"


@pytest.mark.both_stores
async def test_a_prefix_of_several_runs_is_refused_naming_them(store_kind: str, make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        run_id = await finished(h.client)
        store = h.server.runs.store
        assert store.kind == store_kind
        await store_finished_run(store, "local", twin(run_id, 1))
        errors = []
        for call in (h.client.get_run, h.client.cancel_run, lambda rid: collect(h.client.watch(rid))):
            with pytest.raises(FacilitairError) as refused:
                await call(run_id[:8])
            errors.append(refused.value)
        longer = await h.client.get_run(run_id[:13])
        for n in (2, 3, 4):
            await store_finished_run(store, "local", twin(run_id, n))
        with pytest.raises(FacilitairError) as many:
            await h.client.get_run(run_id[:9])
    named = sorted([run_id, twin(run_id, 1)])
    for err in errors:
        assert err.code == StatusCode.INVALID_ARGUMENT
        assert err.message == (
            f"run_id: {run_id[:8]!r} is the start of several of your runs ({named[0]}, {named[1]}); "
            "give more of the id"
        )
        assert err.field_violations == [("run_id", err.message.removeprefix("run_id: "))]
    assert longer.run_id == run_id
    all_five = sorted([run_id, *(twin(run_id, n) for n in (1, 2, 3, 4))])
    assert f"({', '.join(all_five[:3])} and more)" in many.value.message


async def test_another_principals_runs_never_match(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, api_keys=KEYS)
        async with Client(h.target, api_key=ALICE_KEY) as alice, Client(h.target, api_key=BOB_KEY) as bob:
            run_id = await finished(alice)
            with pytest.raises(FacilitairError) as theirs:
                await bob.get_run(run_id[:8])
            nobodys_prefix = "0000" if not run_id.startswith("0000") else "1111"
            with pytest.raises(FacilitairError) as nobodys:
                await bob.cancel_run(nobodys_prefix)
            bobs_twin = twin(run_id, 1)
            await store_finished_run(h.server.runs.store, "bob", bobs_twin)
            bobs = await bob.get_run(run_id[:8])
            alices = await alice.get_run(run_id[:8])
    assert theirs.value.code == nobodys.value.code == StatusCode.NOT_FOUND
    assert theirs.value.message == f"no run of yours has an id starting with {run_id[:8]!r}"
    assert nobodys.value.message == f"no run of yours has an id starting with {nobodys_prefix!r}"
    assert (bobs.run_id, alices.run_id) == (bobs_twin, run_id)  # neither prefix is ambiguous: one run each


async def test_what_is_not_a_run_id_nor_a_prefix_is_not_found(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        run_id = await finished(h.client)
        refusals = {}
        for ref in (run_id[:3], "not-a-run-id", run_id[:8] + "x", run_id[:10] + "-", "LAST"):
            with pytest.raises(FacilitairError) as refused:
                await h.client.get_run(ref)
            refusals[ref] = refused.value
    assert {e.code for e in refusals.values()} == {StatusCode.NOT_FOUND}
    hint = "name a run by its id, by the first 4 or more characters of it (0-9, a-f and -), or as 'last'"
    assert refusals[run_id[:3]].message == f"run {run_id[:3]!r} not found: {hint}"
    assert refusals["not-a-run-id"].message == f"run 'not-a-run-id' not found: {hint}"
    # Hex and hyphens, but a hyphen where no run id has one: no run can start with it.
    assert refusals[run_id[:10] + "-"].message == f"no run of yours has an id starting with {run_id[:10] + '-'!r}"


async def test_the_cli_passes_prefixes_and_last_through(make_server: ServerFactory, tmp_path: Path) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        run_id = await finished(h.client)
        status = await cli(h.target, "status", run_id[:5])
        last = await cli(h.target, "status", "last", "--json")
        watch = await cli(h.target, "watch", run_id[:7], "--after", "2", "--format", "jsonl")
        files = await cli(h.target, "files", "last", str(tmp_path / "out"))
        cancel = await cli(h.target, "cancel", run_id[:4])
        await store_finished_run(h.server.runs.store, "local", twin(run_id, 1))
        ambiguous = await cli(h.target, "status", run_id[:8])
    assert status[0] == 0, status[2]
    assert status[1].splitlines()[0] == f"run      {run_id}"
    assert last[0] == 0
    assert json.loads(last[1])["runId"] == run_id
    assert watch[0] == 0, watch[2]
    events = [json.loads(line)["event"] for line in watch[1].splitlines()]
    assert [int(e["seq"]) for e in events] == list(range(3, len(events) + 3))
    assert {e["runId"] for e in events} == {run_id}
    assert files[0] == 0, files[2]
    assert (tmp_path / "out" / "src" / "rev.py").is_file()
    assert cancel[0] == 0
    assert cancel[1].splitlines()[:2] == [f"run      {run_id}", "state    completed"]
    assert ambiguous[0] == 2  # INVALID_ARGUMENT: a usage error
    assert ambiguous[2].startswith(f"facilitair: INVALID_ARGUMENT: run_id: {run_id[:8]!r} is the start of several")
    assert run_id in ambiguous[2]
    assert twin(run_id, 1) in ambiguous[2]


async def test_logs_name_the_run_by_its_full_id_whatever_the_caller_called_it(make_server: ServerFactory) -> None:
    # An operator searches the log by run id: a WatchRun (GetRun, CancelRun) that named the run "last" or by a
    # prefix logs the full id (it logged what the caller typed).
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        run_id = await finished(h.client)
        with captured_logs() as logs:
            await collect(h.client.watch("last"))
            by_last = await logs.until("stream_closed", rpc="WatchRun")
        with captured_logs() as logs:
            await collect(h.client.watch(run_id[:6]))
            by_prefix = await logs.until("stream_closed", rpc="WatchRun")
    assert by_last["run_id"] == run_id
    assert by_prefix["run_id"] == run_id
