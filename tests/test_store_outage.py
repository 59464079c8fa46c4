"""A store that cannot write (a full disk, a read-only file): said plainly, bounded, and recovered from by itself.

The disk is a real SQLite file whose server connection may hold at most a fixed number of pages (as a small
disk would); the test fills the rest with a table of its own from another connection, and frees it again. The
read-only file is made immutable (the test runs as root, who ignores file modes). Health is watched with the
standard health service's Watch stream, which reports every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from facilitair.client import Client, FacilitairError, StatusCode
from facilitair.server.settings import Settings
from facilitair.server.store.sqlite import SqliteStore
from facilitair.server.transport.app import create_server
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI, Fault, Reply
from tests.harness.events import RunStream, collect, kind, read_rest, read_until
from tests.harness.logs import captured_logs
from tests.harness.scripts import AGENTS, default_replies, held, scripted
from tests.harness.stores import read_only

TASK = "Write a function that reverses a string"
HANG_GUARD = 30.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CAP_PAGES = 512  # the server's "disk": 2 MiB of 4 KiB pages
# How long runs wait for the store before they are interrupted, where a test needs the interruption: long enough
# for the unfixed server to have asked for a next stage (it did within milliseconds), short for the suite.
GRACE = 1.0


def settings_for(db: Path, fake: FakeOpenAI, **extra: Any) -> Settings:
    """A server on the fake with a short grace for outages and frequent heartbeats (so writes keep coming)."""
    return Settings.model_validate(
        {
            "listen": "127.0.0.1:0",
            "db": db,
            "OPENAI_API_KEY": fake.api_key,
            "OPENAI_BASE_URL": fake.base_url,
            "heartbeat_interval": 0.1,
            "thinking_interval": 0.1,
            "store_grace_seconds": 0.3,
            # No gateway port and no Test run step: the stage numbers below are the five agents'.
            "http_listen": "off",
            "sandbox": "off",
            **extra,
        }
    )


class HealthWatch:
    """The server's overall health, as the Watch stream reports each change."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._call = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

    async def until(self, status: int) -> None:
        """Read changes until the server reports `status`."""
        async with asyncio.timeout(HANG_GUARD):
            async for response in self._call:
                if response.status == status:
                    return
        raise AssertionError("the health stream ended")

    def cancel(self) -> None:
        """Stop watching."""
        self._call.cancel()


async def drain(call: grpc.aio.UnaryStreamCall[pb.CollaborateRequest, pb.CollaborateResponse]) -> None:
    """Read a stream to its end (hang guard)."""
    async with asyncio.timeout(HANG_GUARD):
        async for _ in call:
            pass


def fill(db: Path) -> None:
    """Take every page the server may still use, from a connection of the test's own (no cap on it)."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ballast (data BLOB)")
        while conn.execute("PRAGMA page_count").fetchone()[0] < CAP_PAGES:
            conn.execute("INSERT INTO ballast VALUES (zeroblob(16384))")
            conn.commit()


def free(db: Path) -> None:
    """Give the pages back (they go to SQLite's free list, which the server's writes reuse)."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM ballast")


async def test_a_full_disk_is_reported_bounded_and_recovered_from(tmp_path: Path) -> None:
    db = tmp_path / "small-disk.sqlite3"
    coder, release = held(default_replies()["coder"], after=2)
    script = scripted(coder=[coder, default_replies()["coder"]])
    async with FakeOpenAI(script) as fake:
        server = await create_server(settings_for(db, fake), store=SqliteStore(db, max_pages=CAP_PAGES))
        try:
            target = f"127.0.0.1:{server.port}"
            async with grpc.aio.insecure_channel(target) as channel, Client(target) as client:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                health = HealthWatch(channel)
                await health.until(SERVING)
                call = stub.Collaborate(pb.CollaborateRequest(task=TASK))
                first = None
                async with asyncio.timeout(HANG_GUARD):
                    async for response in call:
                        first = first or response.event
                        if kind(response.event) == "token_delta" and response.event.token_delta.stage == 2:
                            break
                assert first is not None
                with captured_logs() as logs:
                    fill(db)
                    # The store cannot write: NOT_SERVING, and the watcher is told (not left in silence).
                    await health.until(NOT_SERVING)
                    with pytest.raises(grpc.aio.AioRpcError) as told:
                        await drain(call)
                    assert told.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert "database or disk is full" in (told.value.details() or "")
                    async with asyncio.timeout(HANG_GUARD):
                        await fake.wait_disconnect(1)  # the interrupted stage's provider stream was closed
                    # New runs are refused with the cause, at once.
                    with pytest.raises(FacilitairError) as refused:
                        await collect(client.collaborate("another task", resume=False))
                    assert refused.value.code == StatusCode.UNAVAILABLE
                    assert refused.value.reason == "STORE_UNAVAILABLE"
                    assert "database or disk is full" in refused.value.message
                    # CancelRun is bounded: it answers while the store still cannot write.
                    with pytest.raises(FacilitairError) as cancel:
                        await client.cancel_run(first.run_id)
                    assert cancel.value.code == StatusCode.UNAVAILABLE
                    free(db)
                    await health.until(SERVING)
                    health.cancel()
                    release.set()
                unavailable = logs.of("event_store_unavailable")
                assert [e["cause"] for e in unavailable] == ["the SQLite store cannot write: database or disk is full"]
                assert not any("rollback" in str(e) for e in logs.entries)
                assert len(logs.of("event_store_recovered")) == 1
                # The run goes on by itself, from its last completed stage, and its log is whole.
                events = await collect(client.watch(first.run_id), within=HANG_GUARD)
        finally:
            await server.stop(0)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kind(events[-1]) in ("run_completed", "run_cancelled")
    assert [kind(e) for e in events].count(kind(events[-1])) == 1


async def test_stopping_while_the_disk_is_full_is_bounded(tmp_path: Path) -> None:
    db = tmp_path / "small-disk.sqlite3"
    coder, release = held(default_replies()["coder"], after=2)
    async with FakeOpenAI(scripted(coder=coder)) as fake:
        server = await create_server(settings_for(db, fake), store=SqliteStore(db, max_pages=CAP_PAGES))
        stopped = False
        try:
            target = f"127.0.0.1:{server.port}"
            async with grpc.aio.insecure_channel(target) as channel, Client(target) as client:
                health = HealthWatch(channel)
                stream = RunStream(client.collaborate(TASK))
                await stream.until(lambda e: kind(e) == "token_delta" and e.token_delta.stage == 2)
                fill(db)
                await health.until(NOT_SERVING)
                async with asyncio.timeout(HANG_GUARD):  # a hang guard: the stop itself is bounded
                    await server.stop(0)
                stopped = True
                await stream.aclose()
        finally:
            release.set()
            if not stopped:
                await server.stop(0)
    free(db)
    # Nothing stored was lost: a new server resumes the run from what the store holds.
    async with FakeOpenAI(scripted()) as fake:
        again = await create_server(settings_for(db, fake), store=SqliteStore(db))
        try:
            async with Client(f"127.0.0.1:{again.port}") as client:
                runs, _ = await client.list_runs()
                events = await collect(client.watch(runs[0].run_id), within=HANG_GUARD)
        finally:
            await again.stop(0)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kind(events[-1]) == "run_completed"


async def test_a_server_started_on_a_read_only_database_serves_once_it_is_writable(tmp_path: Path) -> None:
    db = tmp_path / "read-only.sqlite3"
    async with FakeOpenAI(scripted()) as fake:
        first = await create_server(settings_for(db, fake))
        await first.stop(0)
        with read_only(db):
            server = await create_server(settings_for(db, fake))
            try:
                target = f"127.0.0.1:{server.port}"
                async with grpc.aio.insecure_channel(target) as channel, Client(target) as client:
                    health = HealthWatch(channel)
                    await health.until(NOT_SERVING)
                    with pytest.raises(FacilitairError) as refused:
                        # resume=False: the library would otherwise retry UNAVAILABLE until the store is back.
                        await collect(client.collaborate(TASK, resume=False))
                    assert refused.value.code == StatusCode.UNAVAILABLE
                    assert "read-only" in refused.value.message
            except BaseException:
                await server.stop(0)
                raise
        try:
            async with grpc.aio.insecure_channel(target) as channel, Client(target) as client:
                await HealthWatch(channel).until(SERVING)  # recovered by itself, no restart
                events = await collect(client.collaborate(TASK), within=HANG_GUARD)
        finally:
            await server.stop(0)
    assert kind(events[-1]) == "run_completed"


@dataclass
class Outage:
    """What the fake was asked for during an outage that outlasted the grace, and what the runs logged in the end."""

    asked_during: Counter[str]
    asked: Counter[str]
    disconnects: int
    logs: list[list[pb.RunEvent]]


async def outage_as_coders_end(tmp_path: Path, runs: int, coder: list[Reply], release: asyncio.Event) -> Outage:
    """Runs whose coder holds (its first reply, on `release`); the disk fills and then the coders end.

    The runs are interrupted after the grace (their watchers are told UNAVAILABLE); then the disk has room again
    and each run is watched to its end.
    """
    db = tmp_path / "small-disk.sqlite3"
    script = scripted(coder=coder)

    def coding(events: list[pb.RunEvent]) -> bool:
        return bool(events) and kind(events[-1]) == "token_delta" and events[-1].token_delta.stage == 2

    async with FakeOpenAI(script) as fake:
        settings = settings_for(db, fake, store_grace_seconds=GRACE, retry_backoff=0.01)
        server = await create_server(settings, store=SqliteStore(db, max_pages=CAP_PAGES))
        try:
            target = f"127.0.0.1:{server.port}"
            async with grpc.aio.insecure_channel(target) as channel, Client(target) as client:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                health = HealthWatch(channel)
                await health.until(SERVING)
                calls = [stub.Collaborate(pb.CollaborateRequest(task=f"{TASK} #{n}")) for n in range(runs)]
                run_ids = []
                async with asyncio.timeout(HANG_GUARD):
                    for call in calls:
                        run_ids.append((await read_until(call, coding))[0].run_id)
                fill(db)
                await health.until(NOT_SERVING)
                release.set()  # every coder's (first) reply ends now, while nothing can be stored
                for call in calls:  # after the grace the runs are interrupted and their watchers told
                    with pytest.raises(grpc.aio.AioRpcError) as told:
                        async with asyncio.timeout(HANG_GUARD):
                            await read_rest(call)
                    assert told.value.code() == grpc.StatusCode.UNAVAILABLE
                asked_during = Counter(script.agents())
                free(db)
                await health.until(SERVING)
                health.cancel()
                logs = [await collect(client.watch(run_id), within=HANG_GUARD) for run_id in run_ids]
        finally:
            await server.stop(0)
    for events in logs:
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert kind(events[-1]) == "run_completed"
        assert [e.stage_completed.stage for e in events if kind(e) == "stage_completed"] == [1, 2, 3, 4, 5]
    return Outage(asked_during, Counter(script.agents()), fake.disconnects, logs)


async def test_no_stage_is_requested_while_the_one_before_cannot_be_stored(tmp_path: Path) -> None:
    """Issue 19, item 4: a stage that completes while the disk is full is not followed by the next stage's request.

    Asked then, the next stage would be asked again after the recovery (the run resumes from what was stored),
    and billed twice. The runs wait, are interrupted after the grace, and go on from the stored checkpoint.
    """
    runs = 3
    coder, release = held(default_replies()["coder"], after=2)  # every run's coder holds on the same release
    outage = await outage_as_coders_end(tmp_path, runs, [coder], release)
    assert outage.asked_during == {"architect": runs, "coder": runs}, "no stage was requested during the outage"
    assert outage.disconnects == 0, "every coder stage ran to its end before the grace ran out"
    # After the recovery each run went on from the coder's checkpoint: every stage was requested once per run.
    assert outage.asked == {agent: runs for agent in AGENTS if agent != "refiner"}  # an approval: no refiner
    for events in outage.logs:
        assert not [e for e in events if kind(e) == "attempt_reset"], "no stage was cut off and asked again"


async def test_no_retry_is_requested_while_the_attempt_reset_cannot_be_stored(tmp_path: Path) -> None:
    """A coder attempt that fails while the disk is full is retried only once the store can write again."""
    runs = 2
    first, release = held(default_replies()["coder"], after=2)
    first.fault = Fault.error_event(after_chunks=2)  # a retryable failure as soon as it is released
    replies = [first] * runs + [default_replies()["coder"]]  # each run's first coder reply fails, the next ends
    outage = await outage_as_coders_end(tmp_path, runs, replies, release)
    assert outage.asked_during == {"architect": runs, "coder": runs}, "no retry was requested during the outage"
    # After the recovery the coder's stage ran again (it had not ended) and every other stage once.
    assert outage.asked == {agent: runs for agent in AGENTS if agent != "refiner"} | {"coder": 2 * runs}


async def test_a_run_that_ends_during_a_long_outage_is_not_taken_back_and_asked_again(tmp_path: Path) -> None:
    """A run whose last stage ends while the disk is full keeps its lease until its end is stored.

    The grace's interruption stops the run while it waits to store its terminal event. Were its lease then left to
    run out, this very server would claim the run back, the new epoch would refuse the queued events, and the run
    would resume from the stage before: the last stage asked for (and billed) twice.
    """
    db = tmp_path / "small-disk.sqlite3"
    lease = 1.0
    documenter, release = held(default_replies()["documenter"], after=1)
    script = scripted(documenter=documenter)

    def documenting(events: list[pb.RunEvent]) -> bool:
        return bool(events) and kind(events[-1]) == "token_delta" and events[-1].token_delta.stage == 5

    async with FakeOpenAI(script) as fake:
        settings = settings_for(db, fake, store_grace_seconds=GRACE, lease_seconds=lease)
        server = await create_server(settings, store=SqliteStore(db, max_pages=CAP_PAGES))
        try:
            target = f"127.0.0.1:{server.port}"
            async with grpc.aio.insecure_channel(target) as channel, Client(target) as client:
                stub = pb_grpc.OrchestratorServiceStub(channel)
                health = HealthWatch(channel)
                await health.until(SERVING)
                call = stub.Collaborate(pb.CollaborateRequest(task=TASK))
                async with asyncio.timeout(HANG_GUARD):
                    run_id = (await read_until(call, documenting))[0].run_id
                with captured_logs() as logs:
                    fill(db)
                    await health.until(NOT_SERVING)
                    release.set()  # the last stage ends; its completion and the run's end wait for the store
                    await logs.until("runs_interrupted")
                    # The outage outlasts the lease several times over (the lease is renewed every third of it).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(3 * lease):
                            await logs.until("run_claimed")
                    free(db)
                    await health.until(SERVING)
                    health.cancel()
                    events = await collect(client.watch(run_id), within=HANG_GUARD)
                call.cancel()
        finally:
            await server.stop(0)
    assert fake.disconnects == 0, "the last stage ran to its end before the grace ran out"
    assert Counter(script.agents()) == {agent: 1 for agent in AGENTS if agent != "refiner"}
    assert not logs.of("run_claimed"), "the run was taken back while its end was still to be stored"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kind(events[-1]) == "run_completed"
    assert [e.stage_completed.stage for e in events if kind(e) == "stage_completed"] == [1, 2, 3, 4, 5]
