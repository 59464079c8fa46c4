"""A reused client_request_id: the same request attaches to the run the key started, a different task or
context is refused with ALREADY_EXISTS naming that run, instead of silently answering with the old run.

Each way a key is found is met: in the store (a retry after the run was stored), a creation still in flight
in the same server (commits held back), and the store's insert (two replicas on one PostgreSQL inserting at
the same moment, both past their look-up, held at the insert's lock until both wait there; raw calls, since
the client library would retry a broken attach and meet the key in the store instead).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import pytest
from prometheus_client import REGISTRY

from facilitair.client import Client, FacilitairError, RunEvent, StatusCode
from facilitair.server.store import pg_sql
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.cli import cli
from tests.harness.events import collect, kind
from tests.harness.scripts import scripted
from tests.harness.servers import ServerFactory
from tests.harness.stores import commits_held

TASK = "Write a function that reverses a string"
OTHER = "Write a function that sorts a list"
HANG_GUARD = 30.0


def refusal(key: str, run_id: str, what: str) -> str:
    """The message of a key reused for other work."""
    return (
        f"client_request_id {key!r} already started run {run_id} with a different {what}; send the same request "
        "again to attach to that run, or use a new client_request_id for a new run"
    )


async def outcome(client: Client, task: str, **options: Any) -> list[RunEvent] | FacilitairError:
    """A run's events, or the error its Collaborate ended with."""
    try:
        return await collect(client.collaborate(task, **options), within=HANG_GUARD)
    except FacilitairError as err:
        return err


async def test_a_reused_key_attaches_the_same_request_and_refuses_other_work(make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        first = await collect(h.client.collaborate(TASK, client_request_id="k1", context={"language": "python"}))
        run_id = first[0].run_id
        asked = len(fake.requests)
        # The same request again (the models may be spelled out or not: they are the server's resolution).
        again = await collect(
            h.client.collaborate(TASK, client_request_id="k1", context={"language": "python"}, model="openai:x")
        )
        refused: dict[str, FacilitairError] = {}
        for what, task, context in (
            ("task", OTHER, {"language": "python"}),
            ("context", TASK, {"language": "go"}),
            ("task and context", OTHER, None),
        ):
            with pytest.raises(FacilitairError) as raised:
                await collect(h.client.collaborate(task, client_request_id="k1", context=context))
            refused[what] = raised.value
        cli_refused = await cli(h.target, "run", OTHER, "--request-id", "k1", "--context", '{"language": "python"}')
        runs, _ = await h.client.list_runs()
    assert [e.SerializeToString() for e in again] == [e.SerializeToString() for e in first]
    for what, err in refused.items():
        assert err.code == StatusCode.ALREADY_EXISTS
        assert err.message == refusal("k1", run_id, what)
    assert cli_refused[0] == 1
    assert cli_refused[2] == f"facilitair: ALREADY_EXISTS: {refusal('k1', run_id, 'task')}\n"
    assert [r.run_id for r in runs] == [run_id]  # nothing else was stored
    assert len(fake.requests) == asked  # nor asked of the provider


async def test_a_reused_key_is_refused_while_its_run_is_being_created(make_server: ServerFactory) -> None:
    """The second call waits for the first one's creation (commits held back), then compares with its run."""
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake)
        streams = REGISTRY.get_sample_value("facilitair_watchers_active") or 0.0
        with commits_held(h.settings.db):
            calls = [asyncio.ensure_future(outcome(h.client, task, client_request_id="k2")) for task in (TASK, OTHER)]
            async with asyncio.timeout(HANG_GUARD):  # until both calls are in the server (hang guard only)
                # A gauge offers nothing to await: it is read until it moves.
                while (REGISTRY.get_sample_value("facilitair_watchers_active") or 0.0) < streams + 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        results = await asyncio.gather(*calls)
        runs, _ = await h.client.list_runs()
    [created] = [r for r in results if isinstance(r, list)]
    [error] = [r for r in results if isinstance(r, FacilitairError)]
    assert kind(created[-1]) == "run_completed"
    assert error.code == StatusCode.ALREADY_EXISTS
    assert error.message == refusal("k2", created[0].run_id, "task")
    assert [r.run_id for r in runs] == [created[0].run_id]


async def first_answer(target: str, task: str, key: str) -> pb.RunEvent | grpc.aio.AioRpcError:
    """The first event of a raw Collaborate (the client library would retry), or the error it ended with."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = pb_grpc.OrchestratorServiceStub(channel).Collaborate(
            pb.CollaborateRequest(task=task, client_request_id=key)
        )
        try:
            async with asyncio.timeout(HANG_GUARD):
                response = await call.read()
        except grpc.aio.AioRpcError as err:
            return err
        finally:
            call.cancel()
        assert isinstance(response, pb.CollaborateResponse)
        return response.event


async def test_two_replicas_inserting_one_key_at_once_refuse_the_other_task(
    pg_url: str, make_server: ServerFactory
) -> None:
    # pg_url first: fixtures end in reverse order, so the servers stop before their database is dropped.
    """Both replicas looked the key up and found nothing; the store's insert finds the other's run."""
    async with FakeOpenAI(scripted()) as fake:
        one = await make_server(openai=fake, database_url=pg_url)
        two = await make_server(openai=fake, database_url=pg_url)
        lock = await asyncpg.connect(pg_url)
        try:
            async with lock.transaction():
                # The advisory lock insert_run takes for the principal: both inserts wait for it.
                await lock.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", pg_sql.LOCK_CLASS, "local")
                calls = [
                    asyncio.ensure_future(first_answer(h.target, task, "k3")) for h, task in ((one, TASK), (two, OTHER))
                ]
                async with asyncio.timeout(HANG_GUARD):  # until both inserts wait (hang guard only)
                    # The waits are in the database's other sessions: read pg_locks until both show.
                    while await lock.fetchval(WAITING_FOR_ADVISORY_LOCKS) < 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
            results = await asyncio.gather(*calls)
            stored = await lock.fetch("SELECT run_id, client_request_id FROM runs")
        finally:
            await lock.close()
    [started] = [r for r in results if isinstance(r, pb.RunEvent)]
    [error] = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert kind(started) == "run_started"
    assert started.run_started.task in (TASK, OTHER)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error.details() == refusal("k3", started.run_id, "task")
    assert [(r["run_id"], r["client_request_id"]) for r in stored] == [(started.run_id, "k3")]


WAITING_FOR_ADVISORY_LOCKS = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
