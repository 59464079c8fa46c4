"""A run's life under callers that leave, race or retry, and under a store that is slow, corrupt or old.

Each test runs on a SQLite file and on a PostgreSQL database; a broken row or table is made with the same SQL on
both, from a connection of the test's own. A test that needs the server's commits held back (a slow or stuck
disk) takes SQLite's exclusive lock on the file from its own connection: the server's writer then waits, as it
would for a disk that does not answer, until the test lets go. Those stay on SQLite.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import grpc
import pytest

from facilitair.client import FacilitairError, StatusCode
from facilitair.server.runs.starts import RunStarter
from facilitair.server.store.base import Claim
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import RunStream, collect, kind
from tests.harness.logs import captured_logs
from tests.harness.scripts import AGENTS, agent_of, default_replies, held, scripted
from tests.harness.servers import ServerFactory
from tests.harness.stores import Target, commits_held, execute

TASK = "Write a function that reverses a string"
HANG_GUARD = 30.0

pytestmark = pytest.mark.both_stores
# The tests that hold SQLite's write lock: what they need is a writer that waits, and that lock is SQLite's own.
holds_sqlite_lock = pytest.mark.sqlite_only


def stub_of(target: str) -> tuple[grpc.aio.Channel, pb_grpc.OrchestratorServiceAsyncStub]:
    """A raw stub, for calls the client library would retry or resume by itself."""
    channel = grpc.aio.insecure_channel(target)
    return channel, pb_grpc.OrchestratorServiceStub(channel)


@holds_sqlite_lock
async def test_a_run_whose_caller_left_while_it_was_being_stored_is_still_driven_to_its_end(
    make_server: ServerFactory,
) -> None:
    """Item 1: a Collaborate cancelled (here by its deadline) while its run is committed must not orphan the run."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        channel, stub = stub_of(h.target)
        async with channel:
            with commits_held(h.settings.db):
                call = stub.Collaborate(pb.CollaborateRequest(task=TASK, client_request_id="retry-me"), timeout=0.5)
                with pytest.raises(grpc.aio.AioRpcError) as gone:
                    await call.read()
                assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The caller retries with its idempotency key, as the CLI and the client library do.
        events = await collect(h.client.collaborate(TASK, client_request_id="retry-me"), within=HANG_GUARD)
        assert kind(events[0]) == "run_started"
        assert kind(events[-1]) == "run_completed"
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        runs, _ = await h.client.list_runs()
        assert [r.run_id for r in runs] == [events[0].run_id]
        assert fake.requests, "the run was driven: its stages asked the provider"


@holds_sqlite_lock
async def test_concurrent_calls_with_one_request_id_attach_to_one_run(make_server: ServerFactory) -> None:
    """Item 2: two Collaborate calls with the same client_request_id at the same moment share one run."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        with commits_held(h.settings.db):
            calls = [
                asyncio.ensure_future(collect(h.client.collaborate(TASK, client_request_id="same")))
                for _ in range(2)
            ]
            # Keep the run's first commit back for a moment, as a slow disk does, while both calls arrive.
            done, _ = await asyncio.wait(calls, timeout=0.5)
            assert not done, "no call can see its run before the run is stored"
        first, second = await asyncio.gather(*calls)
        assert first[0].run_id == second[0].run_id
        assert kind(first[-1]) == kind(second[-1]) == "run_completed"
        assert [e.SerializeToString() for e in first] == [e.SerializeToString() for e in second]
        runs, _ = await h.client.list_runs()
        assert len(runs) == 1
        assert [agent_of(b) for b in fake.requests].count("architect") == 1


@holds_sqlite_lock
async def test_concurrent_starts_cannot_exceed_the_per_principal_limit(make_server: ServerFactory) -> None:
    """Item 17: a run counts against the limits from the moment it is admitted, not once it is stored."""
    architect, release = held(default_replies()["architect"], after=1)
    async with FakeOpenAI(scripted(architect=architect)) as fake:
        h = await make_server(openai=fake, max_runs_per_principal=2)
        streams = [h.client.collaborate(f"{TASK} #{i}") for i in range(6)]
        firsts = [asyncio.ensure_future(anext(s)) for s in streams]
        refused: list[FacilitairError] = []
        with commits_held(h.settings.db):
            # While nothing can be stored, four of the six calls are refused: two runs were admitted already.
            async with asyncio.timeout(HANG_GUARD):
                for future in asyncio.as_completed(firsts):
                    try:
                        await future
                    except FacilitairError as err:
                        refused.append(err)
                    if len(refused) == 4:
                        break
        assert [e.code for e in refused] == [StatusCode.RESOURCE_EXHAUSTED] * 4
        assert all("FACILITAIR_MAX_RUNS_PER_PRINCIPAL" in e.message for e in refused)
        admitted = [s for s, f in zip(streams, firsts, strict=True) if not (f.done() and f.exception())]
        assert len(admitted) == 2
        starts = await asyncio.gather(*(f for f in firsts if not (f.done() and f.exception())))
        assert [kind(e) for e in starts] == ["run_started"] * 2
        release.set()
        for stream in admitted:
            rest = await collect(stream)
            assert kind(rest[-1]) == "run_completed"
        runs, _ = await h.client.list_runs()
        assert len(runs) == 2


async def test_an_old_request_id_starts_a_new_run_once_retention_removed_its_run(make_server: ServerFactory) -> None:
    """Item 6: idempotency keys live in the store (its unique index), not in a map that only grows."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        first = await collect(h.client.collaborate(TASK, client_request_id="key-1"))
        again = await collect(h.client.collaborate(TASK, client_request_id="key-1"))
        assert again[0].run_id == first[0].run_id  # the same run while it is kept
        assert await h.server.runs.store.delete_finished_before(time.time() + 1) == 1
        fresh = await collect(h.client.collaborate(TASK, client_request_id="key-1"))
        assert fresh[0].run_id != first[0].run_id
        assert kind(fresh[-1]) == "run_completed"


async def test_a_corrupt_stored_event_ends_the_watch_with_data_loss_and_no_internals(
    make_server: ServerFactory,
) -> None:
    """Item 4: an error while a stream is being sent goes through the one error map, like any setup error."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        events = await collect(h.client.collaborate(TASK))
        run_id = events[0].run_id
        await execute(h.store, ("UPDATE events SET data = ? WHERE run_id = ? AND seq = 3", (b"\x0a", run_id)))
        received: list[pb.RunEvent] = []

        async def watch() -> None:
            async for event in h.client.watch(run_id):
                received.append(event)

        with pytest.raises(FacilitairError) as err:
            await watch()
        assert [e.seq for e in received] == [1, 2]
        assert err.value.code == StatusCode.DATA_LOSS
        assert "event 3" in err.value.message
        assert "Error" not in err.value.message
        assert str(h.settings.db.parent) not in err.value.message


async def test_a_store_failure_during_a_stream_is_internal_with_a_generic_message(make_server: ServerFactory) -> None:
    """Item 4: no exception class, message or file path reaches the caller (it was UNKNOWN with all of them)."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        events = await collect(h.client.collaborate(TASK))
        # The run's last seq is still there (the watch is accepted), but its events come back unreadable:
        # the failure happens while the stream is being sent, not while it is set up.
        await execute(
            h.store,
            "ALTER TABLE events RENAME TO events_kept",
            "CREATE VIEW events AS SELECT run_id, seq, NULL AS data FROM events_kept",
        )
        with pytest.raises(FacilitairError) as err:
            await collect(h.client.watch(events[0].run_id))
        assert err.value.code == StatusCode.INTERNAL
        assert err.value.message == "internal error; the server log has the details"


async def _bad_row(store: Target, spec: str, summary: bytes | None = None) -> str:
    """Store an unfinished run whose spec (or summary) a server must fail to read."""
    run_id = str(uuid.uuid4())
    now = time.time()
    if summary is None:
        summary = pb.RunSummary(run_id=run_id, state=pb.RUN_STATE_RUNNING, task="t").SerializeToString()
    await execute(
        store,
        (
            "INSERT INTO runs (run_id, principal, client_request_id, state, created_at, updated_at, finished_at, "
            "summary, spec) VALUES (?, 'local', '', ?, ?, ?, NULL, ?, ?)",
            (run_id, pb.RUN_STATE_RUNNING, now, now, summary, spec),
        ),
    )
    return run_id


def _spec_with(**fields: object) -> str:
    """A stored spec every agent of which the fake serves, with `fields` replacing (or adding) its values."""
    models = {agent: "openai:gpt-4.1-mini" for agent in AGENTS}
    spec: dict[str, object] = {"version": 2, "task": TASK, "context": {}, "max_refinements": 0, "on_disconnect": 1}
    return json.dumps({**spec, "models": models, **fields})


async def test_a_stored_request_of_the_wrong_types_fails_its_run_as_not_resumable(make_server: ServerFactory) -> None:
    """Issue 19 item 11: a stored budget of the wrong type was read as it was, and the run failed mid-way (INTERNAL)."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        await h.stop()
        corrupt: list[tuple[str, dict[str, object]]] = [
            ("budget_usd", {"budget_usd": "5"}),
            ("budget_usd", {"budget_usd": True}),
            ("budget_usd", {"budget_usd": -1.0}),
            ("budget_tokens", {"budget_tokens": 1.5}),
            ("budget_tokens", {"budget_tokens": "100"}),
            ("budget_tokens", {"budget_tokens": [100]}),
            ("max_refinements", {"max_refinements": -1}),
        ]
        bad = [(field, await _bad_row(h.store, _spec_with(**values))) for field, values in corrupt]
        good = await _bad_row(h.store, _spec_with(budget_usd=5, budget_tokens=100_000))  # 5: a whole number of USD
        again = await make_server(openai=fake)
        for field, run_id in bad:
            watched = await collect(again.client.watch(run_id))
            assert [kind(e) for e in watched] == ["run_failed"], field
            failed = watched[0].run_failed
            assert failed.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], (field, failed.message)
            assert failed.reason == "RUN_NOT_RESUMABLE", field
            assert failed.message.startswith("cannot resume the run: the run's stored request cannot be read"), field
            assert field in failed.message, failed.message
        resumed = await collect(again.client.watch(good))
        assert kind(resumed[-1]) == "run_completed", [kind(e) for e in resumed]


async def test_unreadable_stored_runs_fail_alone_and_the_server_starts(make_server: ServerFactory) -> None:
    """Item 5: one bad row used to make start-up raise; now that run ends with run_failed and the rest resume."""
    architect, release = held(default_replies()["architect"], after=1)
    async with FakeOpenAI(scripted(architect=[architect, default_replies()["architect"]])) as fake:
        h = await make_server(openai=fake)
        async with RunStream(h.client.collaborate(TASK)) as stream:
            good = (await stream.until(lambda e: kind(e) == "token_delta")).run_id
        await h.stop()
        release.set()
        spec = '{"version": 2, "task": "t", "context": {}, "max_refinements": 0, "on_disconnect": 1, "models": {}}'
        bad = {
            "not JSON": await _bad_row(h.store, "{not json"),
            "from the future": await _bad_row(h.store, '{"version": 99, "task": "t"}'),
            "missing keys": await _bad_row(h.store, '{"task": "t", "context": {}}'),
            "no models": await _bad_row(h.store, spec),
            "a corrupt summary": await _bad_row(h.store, spec, summary=b"\x0a\xff"),
        }
        again = await make_server(openai=fake)
        for what, run_id in bad.items():
            run = await again.client.get_run(run_id)
            assert run.state == pb.RUN_STATE_FAILED, what
            assert run.failure.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], what
            assert run.failure.reason == "RUN_NOT_RESUMABLE", what
            assert run.failure.message.startswith("cannot resume the run: "), what
            watched = await collect(again.client.watch(run_id))
            assert [kind(e) for e in watched] == ["run_failed"], what
        resumed = await collect(again.client.watch(good))
        assert kind(resumed[-1]) == "run_completed"


async def test_a_claimed_run_whose_resume_fails_gives_its_lease_back_and_the_others_are_driven(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault in one claimed run's resume left the rest of that batch claimed but undriven (and here, since the
    batch is claimed at start-up, stopped the server from starting)."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        await h.stop()
        first, faulty, last = [await _bad_row(h.store, _spec_with()) for _ in range(3)]
        resume = RunStarter.resume
        faults: list[str] = []

        async def resume_failing_once(self: RunStarter, claim: Claim) -> None:
            if claim.row.run_id == faulty and not faults:
                faults.append(faulty)
                raise RuntimeError("injected fault")
            await resume(self, claim)

        monkeypatch.setattr(RunStarter, "resume", resume_failing_once)
        with captured_logs() as logs:
            again = await make_server(openai=fake, lease_seconds=300)
            for run_id in (first, last):
                watched = await collect(again.client.watch(run_id))
                assert kind(watched[-1]) == "run_completed", [kind(e) for e in watched]
        [failed] = logs.of("run_resume_failed")
        assert (failed["run_id"], failed["log_level"]) == (faulty, "error")
        assert faults == [faulty]
        # Its lease was given back at once: the next claim (on PostgreSQL the release's notification already asked
        # for one) takes it; a five-minute lease kept would leave it undriven past the test's hang guard.
        again.server.runs._leases.claim_soon()
        resumed = await collect(again.client.watch(faulty))
        assert kind(resumed[-1]) == "run_completed", [kind(e) for e in resumed]


async def test_a_run_creation_that_fails_after_its_caller_left_is_logged_once(
    make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The creation was a bare ensure_future: failing after the client left, its error was lost behind a shield."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        entered, fail = asyncio.Event(), asyncio.Event()

        async def create_failing_late(self: RunStarter, *args: object) -> str:
            entered.set()
            await fail.wait()
            raise RuntimeError("creation failed late")

        monkeypatch.setattr(RunStarter, "_create", create_failing_late)
        channel, stub = stub_of(h.target)
        with captured_logs() as logs:
            async with channel:
                call = stub.Collaborate(pb.CollaborateRequest(task=TASK))
                await entered.wait()
                call.cancel()  # the client leaves while its run is being created
                await logs.until("stream_closed", rpc="Collaborate")
            fail.set()
            await logs.until("background_task_failed")
        failures = logs.of("background_task_failed")
        assert [(e["owner"], e["task"], str(e["exc_info"])) for e in failures] == [
            ("server", "create-run", "creation failed late")
        ]
