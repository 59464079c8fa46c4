"""One server per SQLite file: a second `facilitair serve` on the file is refused before it touches the runs.

At start a server on SQLite claims every unfinished run in its file (on a one-process store the server before
it is taken to be gone). A second server started by mistake on the same file, on another port or on the busy
one, used to claim the first server's live run before it failed or served: the first lost the run mid-stage
(`run_lost`), the stage ran again, and its watcher saw "server restarted" though nothing had. Now the port is
bound first, then the file's lock taken, and only then the store opened and the runs claimed.

Real server processes (`python -m facilitair.server`), a real SQLite file, the fake OpenAI. Each test holds
the first server's run mid-stage (the Coder's reply waits) while the second server tries to start, then lets
the run finish and checks that it went on untouched: one request per agent, no attempt_reset, no run_lost.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from facilitair.server.settings import ConfigError
from facilitair.server.store.sqlite_lock import SqliteFileLock, StoreInUse, lock_path
from facilitair.v1 import orchestrator_pb2 as pb
from facilitair.v1 import orchestrator_pb2_grpc as pb_grpc
from tests.fakes.providers import FakeOpenAI
from tests.harness.events import EventCall, assert_complete_log, kind, read_rest, read_until
from tests.harness.processes import ServerProcess, clean_environment, free_port, server_processes
from tests.harness.servers import quiet_environment
from tests.harness.stores import Target
from tests.harness.team import Team, collaborate_request, requests_per_agent
from tests.harness.team import at_hold as held

HANG_GUARD = 60.0
ONE_EACH = {"Architect": 1, "Coder": 1, "Reviewer": 1, "Tester": 1, "Documenter": 1}


async def refused(proc: ServerProcess) -> tuple[int, str]:
    """Start a server that must not serve: its exit code and what it wrote."""
    with pytest.raises(AssertionError, match="the server exited before serving"):
        await proc.start()
    assert proc.proc is not None
    code = await proc.proc.wait()
    return code, "\n".join(line.partition(" ")[2] for line in proc.log)


def assert_untouched(first: ServerProcess, events: list[pb.RunEvent], fake: FakeOpenAI) -> None:
    """The first server's run went on as if no second server had been started."""
    assert_complete_log(events)
    assert kind(events[-1]) == "run_completed"
    assert [kind(e) for e in events].count("attempt_reset") == 0, "no stage started over"
    assert requests_per_agent(fake) == ONE_EACH
    assert first.records("run_lost") == []
    assert first.records("run_lease_retaken") == []


async def test_a_second_server_on_the_same_file_is_refused_naming_the_file_and_the_first(tmp_path: Path) -> None:
    team = Team()
    release = team.hold_next("Coder")
    target = Target("sqlite", tmp_path / "runs.sqlite3")
    async with (
        asyncio.timeout(HANG_GUARD),
        FakeOpenAI(team) as fake,
        server_processes(
            clean_environment(**quiet_environment(target, fake.base_url)),
            clean_environment(**quiet_environment(target, fake.base_url)),  # port 0: a port of its own
        ) as [first, second],
    ):
        await first.start()
        async with grpc.aio.insecure_channel(first.target) as channel:
            call: EventCall = pb_grpc.OrchestratorServiceStub(channel).Collaborate(collaborate_request())
            head = await read_until(call, held)

            code, said = await refused(second)

            release.set()
            events = head + await read_rest(call)

    assert code == 1
    assert said == (
        f"facilitair: {target.db} is in use by another facilitair server (pid {first.pid}, serving "
        f"{first.target}): a SQLite file belongs to one server; stop that one, or give this one another --db "
        "(servers that share a store use PostgreSQL: --database-url)"
    )
    assert_untouched(first, events, fake)


async def test_a_second_server_on_the_busy_port_claims_nothing_and_creates_no_file(tmp_path: Path) -> None:
    team = Team()
    release = team.hold_next("Coder")
    listen = f"127.0.0.1:{free_port()}"
    target = Target("sqlite", tmp_path / "runs.sqlite3")
    fresh = Target("sqlite", tmp_path / "new" / "fresh.sqlite3")
    async with (
        asyncio.timeout(HANG_GUARD),
        FakeOpenAI(team) as fake,
        server_processes(
            clean_environment(**quiet_environment(target, fake.base_url, listen)),
            clean_environment(**quiet_environment(target, fake.base_url, listen)),  # the same file and port
            clean_environment(**quiet_environment(fresh, fake.base_url, listen)),  # a new file, the same port
        ) as [first, same_file, new_file],
    ):
        await first.start()
        async with grpc.aio.insecure_channel(first.target) as channel:
            call: EventCall = pb_grpc.OrchestratorServiceStub(channel).Collaborate(collaborate_request())
            head = await read_until(call, held)

            same = await refused(same_file)
            new = await refused(new_file)

            release.set()
            events = head + await read_rest(call)

    busy = (
        f"facilitair: configuration error: cannot listen on {listen}: address already in use (another server "
        "listens there; several servers on one port is what --workers is for)"
    )
    assert same == (2, busy)
    assert new == (2, busy)
    assert not fresh.db.parent.exists(), "a server that cannot listen creates no database file (nor its folder)"
    assert_untouched(first, events, fake)


def test_the_lock_is_one_holders_until_released(tmp_path: Path) -> None:
    """In one process too (flock belongs to the open file); the refused attempt leaves the holder's note."""
    db = tmp_path / "db" / "runs.sqlite3"
    first, second = SqliteFileLock(db), SqliteFileLock(db)
    first.acquire("127.0.0.1:50051")
    try:
        note = lock_path(db).read_text()
        with pytest.raises(StoreInUse, match=r"serving 127\.0\.0\.1:50051\)"):
            second.acquire("127.0.0.1:50052")
        assert lock_path(db).read_text() == note
    finally:
        first.release()
    assert lock_path(db).read_text() == ""
    second.acquire("127.0.0.1:50052")
    second.release()
    assert not db.exists(), "the lock is a file of its own: the database is the store's to create"


def test_a_lock_file_that_cannot_be_made_is_a_configuration_error(tmp_path: Path) -> None:
    """Not a traceback: `serve` prints ConfigError as one line (exit 2)."""
    (tmp_path / "plain").write_text("a file, not a folder")
    lock = SqliteFileLock(tmp_path / "plain" / "runs.sqlite3")
    with pytest.raises(ConfigError, match=r"^cannot create the lock file .*/plain/runs\.sqlite3\.lock: "):
        lock.acquire("127.0.0.1:50051")
