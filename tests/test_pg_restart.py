"""PostgreSQL restarted and stopped under real replica processes: every replica finds its way back by itself.

The database is a throwaway cluster of this module's own (tests/harness/pg.py), never the machine's server, since
the tests restart it and stop it. Two replicas (`python -m facilitair.server`, as in test_replicas) share a fresh
database on it; what they do is read from their JSON logs and asked over gRPC. Waits are on log lines and
events, with timeouts as hang guards only. Last, what a replica that lost a run to a takeover logs (an
in-process server, so that the two reports of the loss can be made to arrive together).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from pydantic import SecretStr

from facilitair.client import Client
from facilitair.server.settings import Settings
from facilitair.server.store.postgres import PostgresStore
from facilitair.server.transport.app import create_server
from facilitair.v1 import orchestrator_pb2 as pb
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import RunStream, collect, kind
from tests.harness.logs import captured_logs
from tests.harness.pg import PgServer, Throwaway, system_bindir, wheel_bindir
from tests.harness.processes import server_processes
from tests.harness.scripts import default_replies, held, scripted
from tests.test_replicas import TASK, coder_streaming, replica, wire

HANG_GUARD = 60.0
LISTENERS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE datname = current_database() AND application_name = 'facilitair-listener'"
)


@pytest.fixture(scope="module")
def throwaway() -> Iterator[tuple[Throwaway, PgServer]]:
    """A PostgreSQL cluster of this module's own (the tests stop and restart it), and its admin URL."""
    bindir = system_bindir() or wheel_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries to start a throwaway cluster with")
    cluster = Throwaway(bindir)
    try:
        yield cluster, cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def cluster(throwaway: tuple[Throwaway, PgServer]) -> Throwaway:
    """The throwaway cluster, to restart."""
    return throwaway[0]


async def _admin(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


@pytest.fixture
async def db_url(throwaway: tuple[Throwaway, PgServer]) -> str:
    """A fresh database on the throwaway cluster (the cluster goes at the end of the module)."""
    server = throwaway[1]
    name = f"facilitair_test_{uuid.uuid4().hex[:16]}"
    await _admin(server.admin_url, f'CREATE DATABASE "{name}"')
    return server.url_for(name)


async def test_after_a_restart_every_listener_comes_back_and_a_cancel_travels_by_notification(
    cluster: Throwaway, db_url: str
) -> None:
    coder, _release = held(default_replies()["coder"], after=2)
    # A lease longer than the restart: the run stays with its owner, which must hear B's cancel.
    settings = {"FACILITAIR_LEASE_SECONDS": "10"}
    async with FakeOpenAI(scripted(coder=coder)) as fake, server_processes(
        replica(db_url, fake, "a") | settings, replica(db_url, fake, "b") | settings
    ) as (a, b):
        await asyncio.gather(a.start(), b.start())
        async with Client(a.target) as on_a, Client(b.target) as on_b:
            started = RunStream(on_a.collaborate(TASK))
            live = await started.until(coder_streaming)
            watcher = RunStream(on_b.watch(live.run_id))  # follows the run through the restart (resuming if told to)
            await watcher.until(lambda e: e.seq == live.seq)
            await asyncio.to_thread(cluster.pg_ctl, "restart", "-m", "fast")
            for proc in (a, b):
                await proc.until_logged("store_listener_restored", within=HANG_GUARD)
            assert await _admin(db_url, LISTENERS) == 2, "both replicas LISTEN again"
            # The restart closed every connection: the cancel below needs b's pool and the owner's writer again.
            summary = await on_b.cancel_run(live.run_id)
            assert summary.state == pb.RUN_STATE_CANCELLED
            events = await started.to_end(within=HANG_GUARD)
            watched = await watcher.to_end(within=HANG_GUARD)
        codes = [await a.terminate(), await b.terminate()]
    assert kind(events[-1]) == "run_cancelled"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert wire(watched) == wire(events)
    # The owner heard of the cancel by notification, not at its next lease renewal.
    assert a.records("cancel_noticed")[0]["via"] == "notification"
    assert a.records("run_lost") == b.records("run_claimed") == [], "the run stayed with its owner"
    for proc in (a, b):
        assert len(proc.records("store_listener_lost")) == 1
        assert len(proc.records("store_listener_restored")) == 1
    assert codes == [0, 0]
    assert [len(p.records("stopped")) for p in (a, b)] == [1, 1]


async def test_sigterm_while_the_database_is_down_stops_gracefully_and_the_run_goes_on_elsewhere(
    cluster: Throwaway, db_url: str
) -> None:
    coder, _release = held(default_replies()["coder"], after=2)
    async with FakeOpenAI(scripted(coder=[coder, default_replies()["coder"]])) as fake, server_processes(
        replica(db_url, fake, "a"), replica(db_url, fake, "b")
    ) as (a, b):
        await asyncio.gather(a.start(), b.start())
        async with Client(a.target) as on_a:
            started = RunStream(on_a.collaborate(TASK))
            live = await started.until(coder_streaming)
        await asyncio.to_thread(cluster.pg_ctl, "stop", "-m", "fast")
        try:
            await a.until_logged("store_listener_lost", within=HANG_GUARD)
            code = await a.terminate()  # the run cannot be stored, its lease cannot be released
        finally:
            await asyncio.to_thread(cluster.pg_ctl, "start")
        await b.until_logged("store_listener_restored", within=HANG_GUARD)
        async with Client(b.target) as on_b:
            events = await collect(on_b.watch(live.run_id), within=HANG_GUARD)  # b claims it once the lease is out
    assert code == 0, "\n".join(a.log[-20:])
    assert len(a.records("stopped")) == 1
    assert [r["run_id"] for r in b.records("run_claimed")] == [live.run_id]
    assert kind(events[-1]) == "run_completed"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert len(b.records("store_listener_lost")) == len(b.records("store_listener_restored")) == 1
    # Its claims failed for seconds, every lease_seconds/3: said once, and once that they work again.
    assert len(b.records("lease_renewal_failed")) == len(b.records("lease_renewal_recovered")) == 1


async def test_a_run_taken_over_is_logged_lost_once(db_url: str) -> None:
    """The writer's refusal and the lease renewal may both report a takeover before the run's task has ended
    (here in one loop turn, so that the test is deterministic): the run is logged lost once."""
    coder, _release = held(default_replies()["coder"], after=2)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        server = await create_server(
            Settings(
                listen="127.0.0.1:0",
                http_listen="off",
                sandbox="off",
                database_url=SecretStr(db_url),
                replica_id="a",
                thinking_interval=60,
                heartbeat_interval=60,
                openai_api_key=SecretStr(fake.api_key),
                openai_base_url=fake.base_url,
            )
        )
        other = PostgresStore(db_url)  # replica b's store
        try:
            await other.open()
            async with Client(f"127.0.0.1:{server.port}") as client:
                started = RunStream(client.collaborate(TASK))
                live = await started.until(coder_streaming)
                with captured_logs() as logs:
                    (claim,) = await other.claim_expired("b", 10, 1, ignore_leases=True)
                    assert claim.row.run_id == live.run_id
                    for _ in range(2):  # the writer's refusal and the renewal's "lost"
                        server.runs.lifecycle.lose({live.run_id})
                    async with asyncio.timeout(HANG_GUARD):
                        await fake.wait_disconnect(1)  # a closed the provider's stream: the run stopped here
                    await started.aclose()
        finally:
            await other.close()
            await server.stop(0)
    assert [e["run_id"] for e in logs.of("run_lost")] == [live.run_id]
