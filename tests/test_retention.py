"""Retention: finished runs are removed after the retention time; runs still going never are. On both stores."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from facilitair.client import FacilitairError, StatusCode
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import RunStream, kind
from tests.harness.pg import Databases
from tests.harness.scripts import default_replies, held, scripted
from tests.harness.servers import ServerFactory

Database = Callable[[str], dict[str, Any]]


pytestmark = pytest.mark.both_stores


@pytest.fixture
def database(store_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """Settings that give a server a database of its own, by name: a SQLite file, or a PostgreSQL database."""
    if store_kind == "sqlite":
        return lambda name: {"db": tmp_path / f"{name}.db"}
    databases: Databases = request.getfixturevalue("pg_databases")
    return lambda name: {"database_url": SecretStr(databases.new())}


# `database` before `make_server`: the servers stop before their databases are dropped.
async def test_finished_runs_expire_and_live_ones_stay(database: Database, make_server: ServerFactory) -> None:
    async with FakeOpenAI(scripted()) as fake:
        h = await make_server(openai=fake, **database("first"))
        done = await h.run("finished before the cutoff")
        store = h.server.runs.store
        # Nothing has finished before an hour ago: nothing goes.
        assert await store.delete_finished_before(time.time() - 3600) == 0
        assert (await h.client.get_run(done[0].run_id)).state == pb.RUN_STATE_COMPLETED

    architect, release = held(default_replies()["architect"], after=1)
    # The first architect request (the live run) is held; later ones answer at once.
    async with FakeOpenAI(scripted(architect=[architect, default_replies()["architect"]])) as fake:
        h2 = await make_server(openai=fake, **database("second"))
        async with RunStream(h2.client.collaborate("still running")) as live:
            first = await live.until(lambda e: kind(e) == "token_delta")
            finished = await h2.run("finished")
            removed = await h2.server.runs.store.delete_finished_before(time.time() + 1)
            assert removed == 1
            with pytest.raises(FacilitairError) as gone:
                await h2.client.get_run(finished[0].run_id)
            assert gone.value.code == StatusCode.NOT_FOUND
            with pytest.raises(FacilitairError) as gone_watch:
                async for _ in h2.client.watch(finished[0].run_id):
                    pass
            assert gone_watch.value.code == StatusCode.NOT_FOUND
            release.set()
            rest = await live.to_end()
        assert kind(rest[-1]) == "run_completed"
        assert rest[-1].run_id == first.run_id  # the live run was untouched and finished
        runs, _ = await h2.client.list_runs()
        assert [r.run_id for r in runs] == [first.run_id]
